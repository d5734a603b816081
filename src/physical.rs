//! Restore test of a `pg_basebackup` backup (a tar stream, zstd or not, with its WAL and its
//! backup manifest inside): extract it into a scratch data directory under the backup roots,
//! check it with `pg_verifybackup`, start a temporary postmaster on it (this server's OS user, a
//! free port, a socket in the scratch directory, no TCP, nothing preloaded, no archiving), wait
//! until it has recovered and accepts connections, check every database answers, stop it, and
//! remove the directory.  Plain Rust, run on a helper thread; the programs are spawned with
//! argument vectors (no `pg_ctl`, which goes through a shell).

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::executor::{self, Progress};

/// How long a restored cluster may take to reach consistency and accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// What the physical restore test found.
pub struct PhysicalOutcome {
    pub restored: bool,
    pub restore_time: Duration,
    pub verifybackup: Option<(bool, String)>,
    pub databases_checked: usize,
    pub error: Option<String>,
    pub details: Value,
}

fn free_port() -> Option<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .ok()
}

/// Extracts the tar stream (decompressing zstd on a thread) into `dir` with the system's tar.
fn extract(file: File, zstd: bool, dir: &Path, progress: &Progress) -> Result<(), String> {
    let mut argv: Vec<OsString> = vec!["/bin/tar".into(), "--extract".into(), "--file=-".into()];
    argv.push("--no-same-owner".into());
    let mut d = OsString::from("--directory=");
    d.push(dir.as_os_str());
    argv.push(d);
    let mut cmd = executor::command(&argv);
    cmd.stdin(Stdio::piped());
    let mut child = executor::spawn(cmd, progress, Stdio::null()).map_err(|e| e.to_string())?;
    let stderr = executor::collect_stderr(&mut child);
    let feeder = child.stdin.take().map(|mut sink| {
        std::thread::spawn(move || -> Result<(), String> {
            let mut file = file;
            if zstd {
                let mut dec =
                    zstd::stream::read::Decoder::new(file).map_err(|e| format!("zstd: {e}"))?;
                std::io::copy(&mut dec, &mut sink).map_err(|e| format!("decompressing: {e}"))?;
            } else {
                std::io::copy(&mut file, &mut sink).map_err(|e| format!("reading: {e}"))?;
            }
            sink.flush().map_err(|e| e.to_string())
        })
    });
    let done = executor::finish(child, "tar".into(), stderr, progress)
        .map_err(|e| executor::tail(&e.to_string()));
    let fed = feeder
        .map(|t| {
            t.join()
                .unwrap_or_else(|_| Err("decompressor panicked".into()))
        })
        .unwrap_or(Ok(()));
    done.and(fed)
}

/// Creates `scratch` (mode 0700) and extracts the base backup into `scratch/data`.
fn unpack(file: File, zstd: bool, scratch: &Path, progress: &Progress) -> Result<PathBuf, String> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(scratch)
        .map_err(|e| format!("could not create {}: {e}", scratch.display()))?;
    let data = scratch.join("data");
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&data)
        .map_err(|e| format!("could not create {}: {e}", data.display()))?;
    extract(file, zstd, &data, progress).map_err(|e| format!("extracting: {e}"))?;
    Ok(data)
}

/// `pg_verifybackup` against the manifest that came inside the tar (WAL included): its verdict
/// and its output.
fn pg_verifybackup(data: &Path, bindir: &Path, progress: &Progress) -> (bool, String) {
    match executor::run_to_end(
        &[
            bindir.join("pg_verifybackup").into_os_string(),
            "--exit-on-error".into(),
            data.as_os_str().to_owned(),
        ],
        None,
        progress,
    ) {
        Ok(o) => (true, executor::tail(&o)),
        Err(e) => (false, e),
    }
}

/// Extracts a base backup into `scratch`, runs pg_verifybackup on it, removes it again.
pub fn verify_only(
    file: File,
    zstd: bool,
    scratch: &Path,
    bindir: &Path,
    progress: &Progress,
) -> (bool, String) {
    let verdict = match unpack(file, zstd, scratch, progress) {
        Ok(data) => pg_verifybackup(&data, bindir, progress),
        Err(e) => (false, e),
    };
    let _ = fs::remove_dir_all(scratch);
    verdict
}

/// Restore-tests a pg_basebackup tar.  `scratch` is a new directory path inside the roots.
pub fn restore_test(
    file: File,
    zstd: bool,
    scratch: &Path,
    bindir: &Path,
    user: &str,
    progress: &Progress,
) -> PhysicalOutcome {
    restore_test_with(
        |scratch, progress| unpack(file, zstd, scratch, progress),
        scratch,
        bindir,
        user,
        progress,
    )
}

/// Restore-tests the data directory that `prepare` builds inside `scratch` (which it creates,
/// mode 0700, and returns the data directory of): pg_verifybackup against the manifest in it,
/// then a temporary postmaster that must reach consistency and answer in every database.
pub fn restore_test_with(
    prepare: impl FnOnce(&Path, &Progress) -> Result<PathBuf, String>,
    scratch: &Path,
    bindir: &Path,
    user: &str,
    progress: &Progress,
) -> PhysicalOutcome {
    let started = Instant::now();
    let mut out = PhysicalOutcome {
        restored: false,
        restore_time: Duration::ZERO,
        verifybackup: None,
        databases_checked: 0,
        error: None,
        details: json!({}),
    };
    let result = (|| -> Result<(), String> {
        let data = prepare(scratch, progress)?;
        out.verifybackup = Some(pg_verifybackup(&data, bindir, progress));

        // Configuration may live outside the data directory (Debian keeps it in /etc): the
        // restored cluster gets what it needs to start, and nothing of the original's duties.
        let conf = data.join("postgresql.conf");
        if !conf.exists() {
            fs::write(&conf, "").map_err(|e| format!("writing postgresql.conf: {e}"))?;
        }
        // Its own authentication: only the server's OS user can reach the socket (0700
        // directory and socket), so trust on it is safe, whatever the backup's pg_hba.conf says.
        let hba = scratch.join("hba.conf");
        let ident = scratch.join("ident.conf");
        fs::write(&hba, "local all all trust\n").map_err(|e| format!("writing hba: {e}"))?;
        fs::write(&ident, "").map_err(|e| format!("writing ident: {e}"))?;
        let port = free_port().ok_or("no free port")?;
        let socket = scratch.to_path_buf();
        let setting =
            |k: &str, v: &str| -> [OsString; 2] { ["-c".into(), format!("{k}={v}").into()] };
        let mut argv: Vec<OsString> = vec![
            bindir.join("postgres").into_os_string(),
            "-D".into(),
            data.clone().into_os_string(),
        ];
        for (k, v) in [
            ("port", port.to_string()),
            ("listen_addresses", String::new()),
            (
                "unix_socket_directories",
                socket.to_string_lossy().into_owned(),
            ),
            // Above all, no backup_mgmt worker: the restored catalog's jobs must not run.
            ("shared_preload_libraries", String::new()),
            ("archive_mode", "off".into()),
            ("archive_command", String::new()),
            ("max_wal_senders", "0".into()),
            ("hot_standby", "off".into()),
            ("logging_collector", "off".into()),
            ("ssl", "off".into()),
            ("shared_buffers", "32MB".into()),
            ("max_connections", "10".into()),
            ("unix_socket_permissions", "0700".into()),
            ("hba_file", hba.to_string_lossy().into_owned()),
            ("ident_file", ident.to_string_lossy().into_owned()),
            ("config_file", conf.to_string_lossy().into_owned()),
        ] {
            argv.extend(setting(k, &v));
        }
        let log_path = scratch.join("postmaster.log");
        let log = File::create(&log_path).map_err(|e| format!("log file: {e}"))?;
        let mut cmd = executor::command(&argv);
        cmd.stderr(log.try_clone().map_err(|e| e.to_string())?);
        let mut postmaster = cmd
            .stdout(Stdio::from(log))
            .spawn()
            .map_err(|e| format!("could not start postgres: {e}"))?;
        // The restored cluster, over its private socket; quoted like every conninfo we build.
        let server = executor::Connection {
            host: socket.to_string_lossy().into_owned(),
            port,
            user: user.to_owned(),
        };
        let conn = server.conninfo(Some("postgres"));
        let query = |sql: &str, db_conn: &str| -> Result<String, String> {
            executor::run_to_end(
                &[
                    bindir.join("psql").into_os_string(),
                    "--no-psqlrc".into(),
                    "--no-password".into(),
                    "--no-align".into(),
                    "--tuples-only".into(),
                    "--set=ON_ERROR_STOP=1".into(),
                    format!("--dbname={db_conn}").into(),
                    format!("--command={sql}").into(),
                ],
                None,
                progress,
            )
        };
        let mut ready = false;
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline
            && !progress
                .cancel_flag()
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            if let Ok(Some(_)) = postmaster.try_wait() {
                break;
            }
            if query("SELECT 1", &conn).is_ok() {
                ready = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let check = (|| -> Result<(), String> {
            if !ready {
                return Err(format!(
                    "the restored cluster did not start: {}",
                    executor::tail(&fs::read_to_string(&log_path).unwrap_or_default())
                ));
            }
            out.restore_time = started.elapsed();
            let recovering = query("SELECT pg_is_in_recovery()", &conn)?;
            if recovering.trim() != "f" {
                return Err("the restored cluster is still in recovery".into());
            }
            let dbs = query(
                "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1",
                &conn,
            )?;
            let names: Vec<&str> = dbs.lines().filter(|l| !l.is_empty()).collect();
            for db in &names {
                let c = server.conninfo(Some(db));
                query("SELECT count(*) FROM pg_class", &c)
                    .map_err(|e| format!("database \"{db}\" does not answer: {e}"))?;
            }
            out.databases_checked = names.len();
            Ok(())
        })();
        // Fast shutdown, then make sure it is gone.
        // SAFETY: signals to the child we started and have not reaped.
        unsafe {
            libc::kill(postmaster.id() as i32, libc::SIGINT);
        }
        let stop_deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match postmaster.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > stop_deadline => {
                    let _ = postmaster.kill();
                    let _ = postmaster.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        check
    })();
    if let Err(e) = result {
        out.error = Some(e);
    } else {
        out.restored = true;
    }
    out.details = json!({
        "scratch_directory": scratch.to_string_lossy(),
        "databases_checked": out.databases_checked,
        "pg_verifybackup_passed": out.verifybackup.as_ref().map(|v| v.0),
    });
    let _ = fs::remove_dir_all(scratch);
    out
}

/// The scratch directory for restore-testing backup `id`: a hidden directory in the first root.
pub fn scratch_dir(root: &Path, id: i64) -> PathBuf {
    root.join(".backup_mgmt_restore")
        .join(format!("{id}-{}", std::process::id()))
}
