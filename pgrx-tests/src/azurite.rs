//! Azurite (Microsoft's Azure Storage emulator, npm, installed by scripts/setup.sh): its blob
//! service on a loopback port, storing into a temporary directory, stopped when dropped.  It
//! checks every request's SharedKey signature.  Containers are created here, with a request
//! signed the same way (backup_mgmt leaves creating containers to the provider's tools).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::cluster::Cluster;

/// Azurite's well-known development account and key.
pub const ACCOUNT: &str = "devstoreaccount1";
pub const KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

pub struct Azurite {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

pub fn program() -> PathBuf {
    std::env::var_os("BACKUP_MGMT_AZURITE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/test-tools/azurite/node_modules/.bin/azurite-blob")
        })
}

impl Azurite {
    pub fn start() -> Azurite {
        let dir = tempfile::Builder::new()
            .prefix("bm-azurite-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let port = crate::cluster::free_port();
        let mut child = Command::new(program())
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .arg("--location")
            .arg(dir.path())
            .args(["--silent", "--disableTelemetry", "--skipApiVersionCheck"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "start Azurite ({}): {e}; run scripts/setup.sh",
                    program().display()
                )
            });
        // Azurite's own process must be the one listening: if another test's server took the
        // port first, Azurite exits and a connection would reach that other server.
        let up = Cluster::wait_for(Duration::from_secs(30), || {
            matches!(child.try_wait(), Ok(None)) && TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(
            up && matches!(child.try_wait(), Ok(None)),
            "Azurite did not start on port {port}"
        );
        Azurite { child, port, dir }
    }

    /// The account's blob endpoint, path-style (as a `remote_endpoint`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }

    /// Creates a container: `PUT /ACCOUNT/NAME?restype=container`, SharedKey-signed.
    pub fn create_container(&self, name: &str) -> &Azurite {
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let version = "2021-08-06";
        // VERB, eleven empty standard headers, the x-ms- headers, the resource (path-style: the
        // account twice) and its query.
        let to_sign = format!(
            "PUT\n{}x-ms-date:{date}\nx-ms-version:{version}\n/{ACCOUNT}/{ACCOUNT}/{name}\nrestype:container",
            "\n".repeat(11)
        );
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut mac = Hmac::<Sha256>::new_from_slice(&b64.decode(KEY).unwrap()).unwrap();
        mac.update(to_sign.as_bytes());
        let signature = b64.encode(mac.finalize().into_bytes());
        let request = format!(
            "PUT /{ACCOUNT}/{name}?restype=container HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
             x-ms-date: {date}\r\nx-ms-version: {version}\r\n\
             Authorization: SharedKey {ACCOUNT}:{signature}\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        // Azurite accepts connections a moment before it answers them: a CI run once got an
        // empty reply to its first request.  An empty reply is retried for a few seconds; any
        // answer at all is final.
        let mut reply = String::new();
        for _ in 0..40 {
            reply.clear();
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                if s.write_all(request.as_bytes()).is_ok() {
                    let _ = s.read_to_string(&mut reply);
                }
            }
            if !reply.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        assert!(
            reply.starts_with("HTTP/1.1 201"),
            "creating container {name}: {reply:?}"
        );
        self
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
