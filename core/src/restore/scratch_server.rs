//! A restored data directory, tested for real: a `pg_basebackup` tar (zstd or not, with its WAL
//! and its backup manifest inside) is extracted into a scratch directory under the backup roots
//! (a chain of block-level incrementals is combined with `pg_combinebackup`; a native backup's
//! chain is materialised there by the caller), checked with
//! `pg_verifybackup`, and started as a temporary postmaster (this server's OS user, a free port,
//! a socket in the scratch directory, no TCP, nothing preloaded, no archiving) that must recover
//! and accept connections in every database; then it is stopped and the directory removed.
//! Plain Rust, run on a helper thread; the programs are spawned with argument vectors (no
//! `pg_ctl`, which goes through a shell).

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::backup::layout;
use crate::conninfo::Connection;
use crate::files::beneath::ScratchDir;
use crate::files::error::{Context, IoError};
use crate::pgformat::datadir::{RECOVERY_SIGNAL, STANDBY_SIGNAL};
use crate::process::{self, ProcessError};
use crate::progress::Progress;
use crate::stream;

#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Program(#[from] ProcessError),
    #[error("extracting: {0}")]
    Extract(String),
    /// A stored backup that is not what the catalog recorded.
    #[error("{0}")]
    Damaged(String),
    /// The stored backup could not be read to its end (a download broken off).
    #[error("reading the stored backup: {0}")]
    Source(String),
    #[error("no free port")]
    NoPort,
    #[error("could not start postgres: {0}")]
    Start(std::io::Error),
    #[error("pg_verifybackup did not pass, so the restored directory is not started")]
    NotVerified,
    #[error("the restored cluster did not start: {0}")]
    DidNotStart(String),
    #[error("the restored cluster is still in recovery")]
    StillInRecovery,
    #[error("database \"{db}\" does not answer: {error}")]
    DatabaseSilent { db: String, error: ProcessError },
    /// The caller's preparation (materialising a chain) failed.
    #[error("{0}")]
    Prepare(String),
}

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

/// Extracts the tar stream (decompressing zstd on a thread) into `dir` with the system's tar;
/// with `expected`, the stored bytes are checked against that sha256 in the same pass.
fn extract(
    file: File,
    zstd: bool,
    expected: Option<String>,
    dir: &Path,
    progress: &Progress,
) -> Result<(), ScratchError> {
    extract_with(dir, progress, move |sink| match expected {
        None => feed(file, zstd, sink).map_err(|e| ScratchError::Extract(e.to_string())),
        Some(sha) => feed_checked(file, zstd, sink, &sha),
    })
}

/// Extracts a tar stream read from anywhere (an off-site target) into `dir` with the system's
/// tar, the bytes as stored checked against `sha256` in the same pass and added to
/// `progress`'s byte count as they are read.
pub fn extract_stream(
    input: Box<dyn std::io::Read + Send>,
    zstd: bool,
    sha256: String,
    dir: &Path,
    progress: &Progress,
) -> Result<(), ScratchError> {
    let counter = progress.bytes_counter();
    let cancelled = progress.cancel_flag();
    extract_with(dir, progress, move |sink| {
        let watched = Watched {
            inner: input,
            error: None,
        };
        let mut hashed = stream::Hash::new(stream::CountRead::new(watched, counter));
        let fed = feed(&mut hashed, zstd, sink);
        // Cancelled (tar was signalled): nothing more is downloaded to explain it.
        if cancelled.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ScratchError::Extract("cancelled".into()));
        }
        // Whatever stopped the stream (a damaged zstd frame, tar giving up), the rest of the
        // stored bytes is read, so that the error says whether they are the recorded ones.
        let _ = std::io::copy(&mut hashed, &mut std::io::sink());
        let (counted, got) = hashed.finish();
        // A download that broke off is no damage: its bytes were never all there to check.
        if let Some(e) = counted.into_inner().error {
            return Err(ScratchError::Source(e));
        }
        if got != sha256 {
            return Err(ScratchError::Damaged(format!(
                "its sha256 is {got}, not the recorded {sha256}"
            )));
        }
        fed.map_err(|e| ScratchError::Extract(e.to_string()))
    })
}

/// A reader that keeps the first error its source returned (a download broken off), so that
/// it is told apart from bytes other than the recorded ones.
struct Watched<R> {
    inner: R,
    error: Option<String>,
}

impl<R: std::io::Read> std::io::Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let read = self.inner.read(buf);
        if let Err(e) = &read {
            if e.kind() != std::io::ErrorKind::Interrupted && self.error.is_none() {
                self.error = Some(e.to_string());
            }
        }
        read
    }
}

/// Runs the system's tar extracting into `dir`, its stdin fed by `feeder` on a thread.
fn extract_with(
    dir: &Path,
    progress: &Progress,
    feeder: impl FnOnce(std::process::ChildStdin) -> Result<(), ScratchError> + Send,
) -> Result<(), ScratchError> {
    let mut argv: Vec<OsString> = vec!["/bin/tar".into(), "--extract".into(), "--file=-".into()];
    argv.push("--no-same-owner".into());
    let mut d = OsString::from("--directory=");
    d.push(dir.as_os_str());
    argv.push(d);
    let mut cmd = process::command(&argv);
    cmd.stdin(Stdio::piped());
    let mut child = process::spawn(cmd, progress, Stdio::null())?;
    let stderr = process::collect_stderr(&mut child);
    // A scoped thread: the feeder may borrow (the progress counter a download adds to).
    let (done, fed) = std::thread::scope(|s| {
        let feeder = child.stdin.take().map(|sink| s.spawn(move || feeder(sink)));
        let done = process::finish(child, "tar".into(), stderr, progress);
        let fed = feeder
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(ScratchError::Extract("decompressor panicked".into())))
            })
            .unwrap_or(Ok(()));
        (done, fed)
    });
    // A member that is not what was recorded, or that could not be read to its end, says so,
    // whatever tar made of it; otherwise tar's own error explains more than a broken pipe does.
    if let Err(ScratchError::Damaged(_) | ScratchError::Source(_)) = &fed {
        return fed;
    }
    done?;
    fed
}

/// Feeds a backup file, decompressed when it is zstd, into a program's stdin.
pub fn feed(
    file: impl std::io::Read,
    zstd: bool,
    mut sink: impl Write,
) -> Result<(), stream::PumpError> {
    let mut buf = vec![0u8; 1 << 20];
    if zstd {
        let mut dec = stream::decompress(file)
            .map_err(|source| stream::PumpError::Read { after: 0, source })?;
        stream::pump(&mut dec, &mut sink, &mut buf, None)?;
    } else {
        let mut file = file;
        stream::pump(&mut file, &mut sink, &mut buf, None)?;
    }
    sink.flush()
        .map_err(|source| stream::PumpError::Write { after: 0, source })
}

/// `feed`, checking the bytes as stored (before decompression) against `sha256`.  When the
/// stream breaks (a damaged zstd frame, tar giving up), the whole file is hashed again so that
/// the error says whether the stored bytes are the recorded ones.
fn feed_checked(
    mut file: File,
    zstd: bool,
    sink: impl Write,
    sha256: &str,
) -> Result<(), ScratchError> {
    let fed = match file.try_clone() {
        Ok(f) => feed_hashed(f, zstd, sink),
        Err(e) => return Err(ScratchError::Extract(e.to_string())),
    };
    let got = match fed {
        Ok(got) => got,
        Err(e) => {
            let mut buf = vec![0u8; 1 << 20];
            let rehashed = std::io::Seek::rewind(&mut file)
                .map_err(|source| stream::PumpError::Read { after: 0, source })
                .and_then(|_| stream::hash_all(&mut file, &mut buf, None, None));
            match rehashed {
                Ok((_, got)) if got != sha256 => got,
                _ => return Err(ScratchError::Extract(e.to_string())),
            }
        }
    };
    if got == sha256 {
        Ok(())
    } else {
        Err(ScratchError::Damaged(format!(
            "its sha256 is {got}, not the recorded {sha256}"
        )))
    }
}

/// `feed`, returning the sha256 of the bytes as stored (before decompression).
fn feed_hashed(
    file: impl std::io::Read,
    zstd: bool,
    sink: impl Write,
) -> Result<String, stream::PumpError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut file = file;
    let write_err = |source| stream::PumpError::Write { after: 0, source };
    if zstd {
        let mut chain = stream::Hash::new(stream::decompress_into(sink).map_err(write_err)?);
        stream::pump(&mut file, &mut chain, &mut buf, None)?;
        let (mut dec, sha) = chain.finish();
        dec.flush().map_err(write_err)?;
        dec.into_inner().flush().map_err(write_err)?;
        Ok(sha)
    } else {
        let mut chain = stream::Hash::new(sink);
        stream::pump(&mut file, &mut chain, &mut buf, None)?;
        let (mut sink, sha) = chain.finish();
        sink.flush().map_err(write_err)?;
        Ok(sha)
    }
}

/// One backup of a pg_basebackup chain, as stored: its tar and its recorded sha256.
pub struct TarMember {
    pub id: i64,
    pub file: File,
    pub zstd: bool,
    pub sha256: String,
}

/// A chain of pg_basebackup backups (a full, then the incrementals built on it, oldest first)
/// made into one data directory: each tar is extracted into `scratch/chain/<id>`, checked
/// against its recorded sha256 as it is read, then `pg_combinebackup` (this server's) writes
/// `scratch/data` from them, and the members' directories are removed.
pub fn unpack_chain(
    members: Vec<TarMember>,
    scratch: &ScratchDir,
    bindir: &Path,
    progress: &Progress,
) -> Result<PathBuf, ScratchError> {
    let chain = scratch
        .create_subdir("chain")
        .at("could not create", &scratch.path().join("chain"))?;
    scratch.verify().at("could not use", scratch.path())?;
    let mut dirs = Vec::new();
    for m in members {
        let dir = chain.join(m.id.to_string());
        fs::create_dir(&dir).at("could not create", &dir)?;
        extract(m.file, m.zstd, Some(m.sha256), &dir, progress)
            .map_err(|e| ScratchError::Prepare(format!("backup {} of the chain: {e}", m.id)))?;
        dirs.push(dir);
    }
    let data = scratch
        .create_subdir("data")
        .at("could not create", &scratch.path().join("data"))?;
    combine(bindir, &dirs, &data, progress)
        .map_err(|e| ScratchError::Prepare(format!("pg_combinebackup: {e}")))?;
    // The members are not needed once combined; the scratch directory goes anyway, but a large
    // chain would double the space the test holds while the server runs.
    let _ = fs::remove_dir_all(&chain);
    Ok(data)
}

/// `pg_combinebackup` (of `bindir`) writing `output` (absent or empty) from extracted
/// `members`, the full first, which are removed afterwards by every caller.  Without its own
/// fsync of every file: a restore test's scratch copy needs none, and a restore syncs the whole
/// filesystem once when it is done.  From 18 on, a file no incremental changed is hard-linked
/// from its member instead of copied (`--link`; the members are on `output`'s filesystem): on a
/// cluster whose changes are in a few tables that is most of the bytes.
pub fn combine(
    bindir: &Path,
    members: &[PathBuf],
    output: &Path,
    progress: &Progress,
) -> Result<String, ProcessError> {
    let program = bindir.join("pg_combinebackup");
    let link = process::major_version(&program).is_some_and(|m| m >= 18);
    let mut argv: Vec<OsString> = vec![program.into_os_string()];
    argv.extend(members.iter().map(|m| m.as_os_str().to_owned()));
    argv.push("--no-sync".into());
    if link {
        argv.push("--link".into());
    }
    argv.push("--output".into());
    argv.push(output.as_os_str().to_owned());
    process::run_to_end(&argv, None, progress)
}

/// Extracts the base backup into `scratch/data` (created exclusively).
fn unpack(
    file: File,
    zstd: bool,
    scratch: &ScratchDir,
    progress: &Progress,
) -> Result<PathBuf, ScratchError> {
    let data = scratch
        .create_subdir("data")
        .at("could not create", &scratch.path().join("data"))?;
    scratch.verify().at("could not use", scratch.path())?;
    extract(file, zstd, None, &data, progress)?;
    Ok(data)
}

/// `pg_verifybackup` against the manifest that came inside the tar (WAL included): its verdict
/// and its output.
fn pg_verifybackup(data: &Path, bindir: &Path, progress: &Progress) -> (bool, String) {
    match process::run_to_end(
        &[
            bindir.join("pg_verifybackup").into_os_string(),
            "--exit-on-error".into(),
            data.as_os_str().to_owned(),
        ],
        None,
        progress,
    ) {
        Ok(o) => (true, process::tail(&o)),
        Err(e) => (false, process::tail(&e.to_string())),
    }
}

/// Extracts a base backup into `scratch`, runs pg_verifybackup on it; the scratch directory
/// goes when the caller drops it.
pub fn verify_only(
    file: File,
    zstd: bool,
    scratch: &ScratchDir,
    bindir: &Path,
    progress: &Progress,
) -> (bool, String) {
    match unpack(file, zstd, scratch, progress) {
        Ok(data) => pg_verifybackup(&data, bindir, progress),
        Err(e) => (false, e.to_string()),
    }
}

/// Restore-tests a pg_basebackup tar.  `scratch` is a new directory path inside the roots.
pub fn restore_test(
    file: File,
    zstd: bool,
    scratch: &ScratchDir,
    server: &ScratchServer,
    progress: &Progress,
) -> PhysicalOutcome {
    restore_test_with(
        |scratch, progress| unpack(file, zstd, scratch, progress),
        scratch,
        server,
        progress,
    )
}

/// The programs and identity a restore test starts and connects with.
#[derive(Debug, Clone)]
pub struct ScratchServer {
    /// The running server's bin directory (postgres, psql, pg_verifybackup).
    pub bindir: PathBuf,
    /// The role the checks connect as (the server's own superuser).
    pub user: String,
    /// The running server's `server_version_num` (the backup's cluster is the same major).
    pub version_num: i32,
}

/// Every setting that can make a server run a program, load a library or reach out, with the
/// value the restored cluster gets on its command line (which outranks postgresql.conf and
/// postgresql.auto.conf, both of which came with the backup): a base backup's configuration is
/// input, and the checks that follow must run nothing but our own queries.
fn neutralised_settings(version_num: i32) -> Vec<(&'static str, String)> {
    let mut s: Vec<(&'static str, String)> = vec![
        ("archive_mode", "off".into()),
        ("archive_command", String::new()),
        ("restore_command", String::new()),
        ("archive_cleanup_command", String::new()),
        ("recovery_end_command", String::new()),
        ("ssl_passphrase_command", String::new()),
        ("shared_preload_libraries", String::new()),
        ("local_preload_libraries", String::new()),
        ("session_preload_libraries", String::new()),
        ("dynamic_library_path", "$libdir".into()),
        ("jit", "off".into()),
        ("jit_provider", "llvmjit".into()),
        ("primary_conninfo", String::new()),
        ("primary_slot_name", String::new()),
        ("external_pid_file", String::new()),
        ("recovery_target_action", "promote".into()),
        ("hot_standby", "off".into()),
        ("max_wal_senders", "0".into()),
        ("logging_collector", "off".into()),
        ("ssl", "off".into()),
        ("listen_addresses", String::new()),
        ("unix_socket_permissions", "0700".into()),
        ("unix_socket_group", String::new()),
        ("shared_buffers", "32MB".into()),
        ("max_connections", "10".into()),
        ("default_transaction_read_only", "on".into()),
        ("statement_timeout", "0".into()),
    ];
    if version_num >= 150000 {
        s.push(("archive_library", String::new()));
    }
    if version_num >= 170000 {
        // Login event triggers (PostgreSQL 17) would run user code when the checks connect.
        s.push(("event_triggers", "off".into()));
    }
    s
}

/// Server options of every checking session: client options outrank the per-database and
/// per-role settings the restored catalog may hold (`ALTER DATABASE ... SET
/// session_preload_libraries`), which in turn outrank the server's command line: so no library
/// is loaded and no login event trigger runs when the checks connect.
fn check_options(version_num: i32) -> String {
    let mut o = String::from(" -c session_preload_libraries= -c local_preload_libraries=");
    if version_num >= 170000 {
        o.push_str(" -c event_triggers=off");
    }
    o
}

/// Restore-tests the data directory that `prepare` builds inside `scratch` (returning its
/// path): pg_verifybackup against the manifest in it, and only if that passes, a temporary
/// postmaster with every command and library setting neutralised, which must reach consistency
/// and answer in every database.
pub fn restore_test_with(
    prepare: impl FnOnce(&ScratchDir, &Progress) -> Result<PathBuf, ScratchError>,
    scratch_dir: &ScratchDir,
    server_programs: &ScratchServer,
    progress: &Progress,
) -> PhysicalOutcome {
    let scratch = scratch_dir.path();
    let bindir = server_programs.bindir.as_path();
    let user = server_programs.user.as_str();
    let started = Instant::now();
    let mut out = PhysicalOutcome {
        restored: false,
        restore_time: Duration::ZERO,
        verifybackup: None,
        databases_checked: 0,
        error: None,
        details: json!({}),
    };
    let result = (|| -> Result<(), ScratchError> {
        let data = prepare(scratch_dir, progress)?;
        let verdict = pg_verifybackup(&data, bindir, progress);
        let verified = verdict.0;
        out.verifybackup = Some(verdict);
        // A directory that does not match its manifest is not started: whatever was added to
        // it (a recovery.signal, a postgresql.auto.conf) is not ours.
        if !verified {
            return Err(ScratchError::NotVerified);
        }
        // Files pg_verifybackup does not check (the manifest leaves them out) that would change
        // how the server starts: the restored cluster recovers as itself, not as a standby.
        for name in [RECOVERY_SIGNAL, STANDBY_SIGNAL] {
            let _ = fs::remove_file(data.join(name));
        }
        // Nor the backed-up postgresql.auto.conf: its include lines could make the server read
        // (and quote into its log) any file it can read.  An empty one in its place.
        let auto = data.join("postgresql.auto.conf");
        let _ = fs::remove_file(&auto);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&auto)
            .at("could not create", &auto)?;

        // The restored cluster's own configuration file (empty: the command line below sets
        // everything), its own authentication: only the server's OS user can reach the socket
        // (0700 directory and socket), so trust on it is safe, whatever the backup's
        // pg_hba.conf says.
        let write = |name: &str, text: &str| -> Result<PathBuf, ScratchError> {
            let path = scratch.join(name);
            let mut f = scratch_dir
                .create_file(name)
                .at("could not create", &path)?;
            f.write_all(text.as_bytes()).at("could not write", &path)?;
            Ok(path)
        };
        let conf = write("postgresql.conf", "")?;
        let hba = write("hba.conf", "local all all trust\n")?;
        let ident = write("ident.conf", "")?;
        let port = free_port().ok_or(ScratchError::NoPort)?;
        let socket = scratch.to_path_buf();
        let setting =
            |k: &str, v: &str| -> [OsString; 2] { ["-c".into(), format!("{k}={v}").into()] };
        let mut argv: Vec<OsString> = vec![
            bindir.join("postgres").into_os_string(),
            "-D".into(),
            data.clone().into_os_string(),
        ];
        // Above all no backup_mgmt worker (shared_preload_libraries is emptied): the restored
        // catalog's jobs must not run.
        let mut settings = neutralised_settings(server_programs.version_num);
        settings.extend([
            ("port", port.to_string()),
            (
                "unix_socket_directories",
                socket.to_string_lossy().into_owned(),
            ),
            ("hba_file", hba.to_string_lossy().into_owned()),
            ("ident_file", ident.to_string_lossy().into_owned()),
            ("config_file", conf.to_string_lossy().into_owned()),
            ("data_directory", data.to_string_lossy().into_owned()),
        ]);
        for (k, v) in &settings {
            argv.extend(setting(k, v));
        }
        let log_path = scratch.join("postmaster.log");
        let log = scratch_dir
            .create_file("postmaster.log")
            .at("could not create", &log_path)?;
        scratch_dir.verify().at("could not use", scratch)?;
        let mut cmd = process::command(&argv);
        cmd.stderr(log.try_clone().at("could not open", &log_path)?);
        let mut postmaster = cmd
            .stdout(Stdio::from(log))
            .spawn()
            .map_err(ScratchError::Start)?;
        // The restored cluster, over its private socket; quoted like every conninfo we build.
        let server = Connection {
            host: socket.to_string_lossy().into_owned(),
            port,
            user: user.to_owned(),
        };
        let options = check_options(server_programs.version_num);
        let conn = server.conninfo_with(Some("postgres"), &options);
        // The checks run only our own, fully qualified catalog queries, with search_path
        // pinned by the client (which outranks the restored databases' and roles' settings).
        let query = |sql: &str, db_conn: &str| -> Result<String, ProcessError> {
            process::run_to_end(
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
        let check = (|| -> Result<(), ScratchError> {
            if !ready {
                return Err(ScratchError::DidNotStart(process::tail(
                    &fs::read_to_string(&log_path).unwrap_or_default(),
                )));
            }
            out.restore_time = started.elapsed();
            let recovering = query("SELECT pg_catalog.pg_is_in_recovery()", &conn)?;
            if recovering.trim() != "f" {
                return Err(ScratchError::StillInRecovery);
            }
            let dbs = query(
                "SELECT datname FROM pg_catalog.pg_database WHERE datallowconn ORDER BY 1",
                &conn,
            )?;
            let names: Vec<&str> = dbs.lines().filter(|l| !l.is_empty()).collect();
            for db in &names {
                let c = server.conninfo_with(Some(db), &options);
                query("SELECT pg_catalog.count(*) FROM pg_catalog.pg_class", &c).map_err(
                    |error| ScratchError::DatabaseSilent {
                        db: (*db).to_owned(),
                        error,
                    },
                )?;
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
        out.error = Some(process::tail(&e.to_string()));
    } else {
        out.restored = true;
    }
    out.details = json!({
        "scratch_directory": scratch.to_string_lossy(),
        "databases_checked": out.databases_checked,
        "pg_verifybackup_passed": out.verifybackup.as_ref().map(|v| v.0),
    });
    out
}

/// A new scratch directory's name for restore-testing backup `id`, relative to the first root
/// (unique: an old one left by a crash is never reused).
pub fn scratch_dir(id: i64) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    Path::new(layout::RESTORE_SCRATCH).join(format!("{id}-{}-{nanos}", std::process::id()))
}

#[cfg(test)]
#[path = "scratch_server_tests.rs"]
mod tests;
