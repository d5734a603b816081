//! A real S3-compatible server on loopback for end-to-end tests: s3rver (npm, installed by
//! scripts/setup.sh into target/test-tools), an HTTP server that stores objects on disk and
//! speaks the S3 API (multipart included).  It knows one access key, `S3RVER` (secret `S3RVER`),
//! and refuses others; it does not recompute V4 signatures.  Dropping the value stops it.
//!
//! `S3Server::start_checking_signatures` starts s3s-fs instead (crates.io, built by
//! scripts/setup.sh into target/test-tools/s3s), which recomputes every request's AWS Signature
//! V4 with the one key pair it is given and refuses a request signed with anything else.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cluster::Cluster;

/// Which server.
#[derive(Clone)]
enum Kind {
    S3rver,
    /// s3s-fs with its access key id and secret.
    SigV4(String, String),
}

pub struct S3Server {
    child: Child,
    kind: Kind,
    pub port: u16,
    /// The certificate and key it serves HTTPS with, if any.
    tls: Option<(PathBuf, PathBuf)>,
    /// Where s3rver keeps the buckets: `<dir>/<bucket>/<key>._S3rver_object`.
    pub dir: tempfile::TempDir,
}

/// The s3rver program: `BACKUP_MGMT_S3RVER`, or the one scripts/setup.sh installs.
pub fn program() -> PathBuf {
    std::env::var_os("BACKUP_MGMT_S3RVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/test-tools/node_modules/.bin/s3rver")
        })
}

/// The s3s-fs program: `BACKUP_MGMT_S3S_FS`, or the one scripts/setup.sh builds.
pub fn sigv4_program() -> PathBuf {
    std::env::var_os("BACKUP_MGMT_S3S_FS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/test-tools/s3s/bin/s3s-fs")
        })
}

impl S3Server {
    pub fn start() -> S3Server {
        S3Server::start_with(None)
    }

    /// s3s-fs, which checks every request's V4 signature against this one key pair.
    pub fn start_checking_signatures(access_key: &str, secret: &str) -> S3Server {
        S3Server::launch(Kind::SigV4(access_key.into(), secret.into()), None)
    }

    /// Serving HTTPS with this certificate and key (PEM files).
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> S3Server {
        S3Server::start_with(Some((cert, key)))
    }

    fn start_with(tls: Option<(&std::path::Path, &std::path::Path)>) -> S3Server {
        S3Server::launch(Kind::S3rver, tls)
    }

    fn launch(kind: Kind, tls: Option<(&std::path::Path, &std::path::Path)>) -> S3Server {
        let dir = tempfile::Builder::new()
            .prefix("bm-s3-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let port = crate::cluster::free_port();
        let tls = tls.map(|(c, k)| (c.to_owned(), k.to_owned()));
        let child = S3Server::spawn(&kind, port, dir.path(), tls.as_ref());
        S3Server {
            child,
            kind,
            port,
            tls,
            dir,
        }
    }

    fn spawn(
        kind: &Kind,
        port: u16,
        dir: &std::path::Path,
        tls: Option<&(PathBuf, PathBuf)>,
    ) -> Child {
        let mut cmd = match kind {
            Kind::S3rver => {
                let mut cmd = Command::new(program());
                cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "--silent", "-d"])
                    .arg(dir);
                if let Some((cert, key)) = tls {
                    cmd.arg("--cert").arg(cert).arg("--key").arg(key);
                }
                cmd
            }
            Kind::SigV4(access, secret) => {
                let mut cmd = Command::new(sigv4_program());
                cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--access-key", access, "--secret-key", secret])
                    .arg(dir);
                cmd
            }
        };
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start the S3 server ({}, {}): {e}; run scripts/setup.sh",
                    program().display(),
                    sigv4_program().display()
                )
            });
        // The server's own process must be the one listening: if another test (in this file or
        // one running beside it) took the port first, the server exits, and a connection would
        // reach that other server.
        let up = Cluster::wait_for(Duration::from_secs(30), || {
            matches!(child.try_wait(), Ok(None)) && TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(
            up && matches!(child.try_wait(), Ok(None)),
            "the S3 server did not start on port {port} (or another process holds it)"
        );
        child
    }

    /// kill -9 of the server (what a crash or a lost machine does to a client mid-request).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port with the same stored buckets.
    pub fn restart(&mut self) {
        self.kill();
        self.child = S3Server::spawn(&self.kind, self.port, self.dir.path(), self.tls.as_ref());
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The stored object for `key` in `bucket`, as the server lays it out on disk.
    /// Creates a bucket the way both servers keep one: a directory under their data directory
    /// (backup_mgmt leaves creating buckets to the provider's tools).
    pub fn create_bucket(&self, name: &str) -> &S3Server {
        std::fs::create_dir_all(self.dir.path().join(name)).expect("bucket directory");
        self
    }

    pub fn object_file(&self, bucket: &str, key: &str) -> PathBuf {
        match self.kind {
            Kind::S3rver => self
                .dir
                .path()
                .join(bucket)
                .join(format!("{key}._S3rver_object")),
            Kind::SigV4(..) => self.dir.path().join(bucket).join(key),
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
