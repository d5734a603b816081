//! Takes one backup: runs PostgreSQL's own programs with argument vectors (never a shell), and
//! writes what they produce under the backup roots, compressed and checksummed in the same pass.
//!
//! Plain Rust with no PostgreSQL calls: a backup runs on its own thread so that the worker's loop
//! (which alone talks to the catalog) is never blocked.  The thread publishes its progress and its
//! child's pid through atomics; the loop reads them, and cancels by setting a flag and signalling
//! the child.
//!
//! Durability: every file is written under a `.partial` name, fsynced, renamed, and its directory
//! fsynced, so a name without `.partial` is always complete.  On any failure the partial output is
//! removed before the error is returned.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::catalog::BackupMethod;
use crate::dumpfacts::{DumpFacts, RowCounter};

/// How much of a failing program's stderr is kept as the error message (its end, where the
/// reason is).
const STDERR_KEEP: usize = 8 * 1024;
/// Read size from a program's stdout (whose pipe is widened to 1 MB).  The buffer is allocated
/// once per backup and filled some ten thousand times; a 64 kB buffer measured slower here.
const CHUNK: usize = 1 << 20;
/// The manifest written into a directory-format backup, in `sha256sum -c` format.
pub const DIRECTORY_MANIFEST: &str = "backup_manifest.sha256";

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("could not start {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("{action} \"{path}\": {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cancelled: {0}")]
    Cancelled(String),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ExecError + 'a {
    move |source| ExecError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Output compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd(i32),
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd(_) => "zstd",
        }
    }
    fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Zstd(_) => ".zst",
        }
    }
}

/// Where and as whom the programs connect: the cluster's own socket and port, the worker's role.
#[derive(Debug, Clone)]
pub struct Connection {
    pub host: String,
    pub port: u16,
    pub user: String,
}

/// A libpq connection-string value, always quoted, so that a database named `host=evil` stays a
/// database name and cannot add keywords.
pub fn quote_conninfo_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

impl Connection {
    /// The connection string for `dbname` (None: a physical replication connection).
    pub fn conninfo(&self, dbname: Option<&str>) -> String {
        let mut s = format!(
            "host={} port={} user={} application_name='backup_mgmt' connect_timeout=30",
            quote_conninfo_value(&self.host),
            self.port,
            quote_conninfo_value(&self.user)
        );
        if let Some(db) = dbname {
            s.push_str(" dbname=");
            s.push_str(&quote_conninfo_value(db));
        }
        s
    }
}

/// Everything one backup needs, decided by the worker from the job and the server settings.
#[derive(Debug, Clone)]
pub struct Plan {
    pub method: BackupMethod,
    pub database: String,
    pub bindir: PathBuf,
    pub connection: Connection,
    pub compression: Compression,
    pub parallel_jobs: u32,
    pub fast_checkpoint: bool,
    /// The backup's final path, without compression suffix (see `output_path`).
    pub stem: PathBuf,
    /// The canonical backup root `stem` lies under.
    pub root: PathBuf,
}

/// A path component from a database or job name: anything but `[A-Za-z0-9_-]` (and a dot that
/// is not leading) is percent-encoded, so a name can never add a directory level or `..`.
pub fn path_component(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    out
}

/// `<root>/<database>/<job>/<YYYYMMDDTHHMMSSZ>-<execution id>`: the predictable layout.
pub fn backup_stem(
    root: &Path,
    database: &str,
    job: &str,
    started: chrono::DateTime<chrono::Utc>,
    execution_id: i64,
) -> PathBuf {
    root.join(path_component(database))
        .join(path_component(job))
        .join(format!(
            "{}-{execution_id}",
            started.format("%Y%m%dT%H%M%SZ")
        ))
}

/// The file or directory a plan produces (what the catalog's `backup_file_path` names).
pub fn output_path(method: BackupMethod, stem: &Path, compression: Compression) -> PathBuf {
    let ext = match method {
        BackupMethod::PgDump => format!(".dump{}", compression.suffix()),
        BackupMethod::PgDumpDirectory => ".dir".to_owned(),
        BackupMethod::PgBasebackup => format!(".tar{}", compression.suffix()),
        BackupMethod::NativePhysical => ".native".to_owned(),
        _ => format!(".globals.sql{}", compression.suffix()),
    };
    with_suffix(stem, &ext)
}

/// The globals file written beside a logical dump (roles and tablespaces are not in it).
pub fn globals_path(stem: &Path, compression: Compression) -> PathBuf {
    with_suffix(stem, &format!(".globals.sql{}", compression.suffix()))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
}

/// The temporary name of an output until it is complete and durable.
pub fn partial_path(path: &Path) -> PathBuf {
    with_suffix(path, ".partial")
}

/// The argument vector for one program of a plan (program path first).
pub fn argv(plan: &Plan, step: Step, target: &Path) -> Vec<OsString> {
    let method = match step {
        Step::Globals => BackupMethod::PgDumpallGlobals,
        Step::Main => plan.method,
    };
    let (program, flags): (&str, Vec<OsString>) = match method {
        BackupMethod::PgDump => (
            "pg_dump",
            // Compression is ours (zstd, same pass as the checksum), not pg_dump's gzip.
            vec!["--format=custom".into(), "--compress=0".into()],
        ),
        BackupMethod::PgDumpDirectory => {
            let mut file = OsString::from("--file=");
            file.push(target.as_os_str());
            (
                "pg_dump",
                vec![
                    "--format=directory".into(),
                    format!("--jobs={}", plan.parallel_jobs.max(1)).into(),
                    "--compress=0".into(),
                    file,
                ],
            )
        }
        // A tar stream on stdout, with the WAL needed for consistency inside it and the backup
        // manifest appended to it (for pg_verifybackup).
        // pg_basebackup compresses its own stream (client-side zstd, the same as a bare
        // `pg_basebackup --compress=client-zstd:N`); this side only checksums and writes it.
        BackupMethod::PgBasebackup => {
            let mut flags: Vec<OsString> = vec![
                "--pgdata=-".into(),
                // For the WAL start and end points it prints (see WalRange).
                "--verbose".into(),
                "--format=tar".into(),
                "--wal-method=fetch".into(),
                if plan.fast_checkpoint {
                    "--checkpoint=fast"
                } else {
                    "--checkpoint=spread"
                }
                .into(),
            ];
            if let Compression::Zstd(level) = plan.compression {
                flags.push(format!("--compress=client-zstd:{level}").into());
            }
            ("pg_basebackup", flags)
        }
        _ => ("pg_dumpall", vec!["--globals-only".into()]),
    };
    // A physical backup uses a replication connection, which has no database.  For pg_dumpall
    // the database only picks where it connects first.
    let database = (method != BackupMethod::PgBasebackup).then_some(plan.database.as_str());
    let mut v = vec![plan.bindir.join(program).into_os_string()];
    v.extend(flags);
    v.push("--no-password".into());
    v.push(format!("--dbname={}", plan.connection.conninfo(database)).into());
    v
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Globals,
    Main,
}

/// What a running backup is doing, for the progress view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Starting = 0,
    DumpingGlobals = 1,
    Streaming = 2,
    WaitingForPgDump = 3,
    CompressingFiles = 4,
    Syncing = 5,
    Done = 6,
    CopyingFiles = 7,
    StoppingBackup = 8,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::DumpingGlobals => "dumping globals",
            Phase::Streaming => "streaming backup",
            Phase::WaitingForPgDump => "waiting for pg_dump",
            Phase::CompressingFiles => "compressing and checksumming files",
            Phase::Syncing => "syncing to disk",
            Phase::Done => "finishing",
            Phase::CopyingFiles => "copying data files",
            Phase::StoppingBackup => "stopping backup and copying its WAL",
        }
    }
    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::DumpingGlobals,
            2 => Phase::Streaming,
            3 => Phase::WaitingForPgDump,
            4 => Phase::CompressingFiles,
            5 => Phase::Syncing,
            6 => Phase::Done,
            7 => Phase::CopyingFiles,
            8 => Phase::StoppingBackup,
            _ => Phase::Starting,
        }
    }
}

/// Shared between a backup's thread and the worker loop.
#[derive(Debug, Default)]
pub struct Progress {
    bytes: AtomicU64,
    phase: AtomicU8,
    child: AtomicI32,
    cancelled: AtomicBool,
    finished: AtomicBool,
}

impl Progress {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }
    pub(crate) fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Relaxed);
    }
    /// Stops the backup: its running program gets `signal`, and no further step starts.
    pub fn cancel(&self, signal: i32) {
        self.cancelled.store(true, Ordering::SeqCst);
        let pid = self.child.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill(2) on a pid we spawned and have not reaped (the thread clears it before
            // waiting returns), so it cannot name a recycled process.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }
    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
    /// The byte counter, for copies that count as they go.
    pub(crate) fn bytes_counter(&self) -> &AtomicU64 {
        &self.bytes
    }
    /// The flag `cancel` sets, for loops that poll it.
    pub fn cancel_flag(&self) -> &AtomicBool {
        &self.cancelled
    }
}

/// A file the backup produced, with its size and sha256 as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

/// A finished backup: the main output (for a directory, the manifest's sha256 and the total
/// size) and the globals file beside a logical dump.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub main: Written,
    pub globals: Option<Written>,
    /// Row counts per table read off a custom-format dump as it was written (or why not).
    pub facts: Option<Result<std::collections::BTreeMap<String, u64>, String>>,
    /// Where a base backup's WAL starts and ends (what point-in-time recovery replays from).
    pub wal: Option<WalRange>,
    /// More facts for the record's annotations (a native backup's file counts, bad pages).
    pub annotations: Option<serde_json::Value>,
}

/// The WAL a base backup needs to be consistent, as pg_basebackup reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRange {
    pub start_lsn: u64,
    pub stop_lsn: u64,
    pub timeline: u32,
}

impl WalRange {
    /// Reads `pg_basebackup --verbose`'s "write-ahead log start point: 0/2000028 on timeline 1"
    /// and "write-ahead log end point: 0/2000100" lines.
    pub fn from_basebackup_log(log: &str) -> Option<WalRange> {
        let mut start = None;
        let mut stop = None;
        for line in log.lines() {
            if let Some(rest) = line.split("write-ahead log start point: ").nth(1) {
                let mut words = rest.split_whitespace();
                let lsn = words.next().and_then(parse_lsn);
                let tli = words.nth(2).and_then(|t| t.parse::<u32>().ok());
                start = lsn.zip(tli);
            } else if let Some(rest) = line.split("write-ahead log end point: ").nth(1) {
                stop = rest.split_whitespace().next().and_then(parse_lsn);
            }
        }
        let ((start_lsn, timeline), stop_lsn) = (start?, stop?);
        Some(WalRange {
            start_lsn,
            stop_lsn,
            timeline,
        })
    }

    /// The WAL file name holding `lsn` on this range's timeline (`segment_size` bytes a file).
    pub fn segment_name(&self, lsn: u64, segment_size: u64) -> String {
        let segno = lsn / segment_size;
        let per_log = 0x1_0000_0000 / segment_size;
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            segno / per_log,
            segno % per_log
        )
    }

    /// The numbers of the WAL files the backup needs, first to last.  The stop position is just
    /// past the last record, so a stop exactly on a file boundary needs only the file before it.
    pub fn segment_numbers(&self, segment_size: u64) -> std::ops::RangeInclusive<u64> {
        let last = self.stop_lsn.saturating_sub(1).max(self.start_lsn);
        self.start_lsn / segment_size..=last / segment_size
    }

    /// The first and the last WAL file the backup needs.
    pub fn segments(&self, segment_size: u64) -> (String, String) {
        let numbers = self.segment_numbers(segment_size);
        (
            self.segment_name(numbers.start() * segment_size, segment_size),
            self.segment_name(numbers.end() * segment_size, segment_size),
        )
    }
}

/// `X/Y` as PostgreSQL prints a WAL location.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// A WAL location as PostgreSQL prints it.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// A backup running on its own thread.
pub struct RunHandle {
    pub progress: Arc<Progress>,
    thread: Option<JoinHandle<Result<Outcome, ExecError>>>,
    pub started: Instant,
}

impl RunHandle {
    /// A placeholder with no thread (reported finished).
    pub fn idle() -> RunHandle {
        RunHandle {
            progress: Arc::default(),
            thread: None,
            started: Instant::now(),
        }
    }
    pub fn is_finished(&self) -> bool {
        self.progress.finished.load(Ordering::SeqCst)
            || self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
    /// The result; call once `is_finished()` (it blocks otherwise).
    pub fn join(&mut self) -> Result<Outcome, ExecError> {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(ExecError::Cancelled("the backup thread panicked".into())),
            None => Err(ExecError::Cancelled("already collected".into())),
        }
    }
}

/// Starts `plan` on a new thread, which calls `on_done` when it has finished.  The thread blocks
/// every signal, so that PostgreSQL's handlers only ever run on the worker's own thread; programs
/// it starts get a clean signal mask from the standard library.
pub fn start(plan: Plan, with_globals: bool, on_done: fn()) -> RunHandle {
    start_work(move |p| run(&plan, with_globals, p), on_done)
}

/// Runs `work` on a new backup thread (signals blocked), which calls `on_done` when finished.
pub fn start_work(
    work: impl FnOnce(&Progress) -> Result<Outcome, ExecError> + Send + 'static,
    on_done: fn(),
) -> RunHandle {
    let progress = Arc::new(Progress::default());
    let p = Arc::clone(&progress);
    let thread = std::thread::Builder::new()
        .name("backup_mgmt backup".into())
        .spawn(move || {
            block_all_signals();
            let result = work(&p);
            // Before waking the loop: it checks this flag, and the thread may take a moment more
            // to end after on_done() returns.
            p.finished.store(true, Ordering::SeqCst);
            on_done();
            result
        });
    let thread = match thread {
        Ok(t) => Some(t),
        Err(e) => {
            // Report the failure through join() rather than panicking in the worker loop.
            let err = e.to_string();
            Some(std::thread::spawn(move || {
                Err(ExecError::Cancelled(format!(
                    "could not start backup thread: {err}"
                )))
            }))
        }
    };
    RunHandle {
        progress,
        thread,
        started: Instant::now(),
    }
}

/// Blocks every signal on the calling helper thread, so that PostgreSQL's handlers only ever
/// run on the backend's (or worker's) own thread.
pub(crate) fn block_all_signals() {
    // SAFETY: plain libc calls on a local, initialised signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Runs the whole plan on the calling thread.
pub fn run(plan: &Plan, with_globals: bool, progress: &Progress) -> Result<Outcome, ExecError> {
    if let Some(dir) = plan.stem.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("could not create directory", dir))?;
        // The names are sanitised, but a symlink planted inside the root could still lead out.
        let resolved = dir
            .canonicalize()
            .map_err(io_err("could not resolve", dir))?;
        if !resolved.starts_with(&plan.root) {
            return Err(ExecError::Io {
                action: "refusing to write outside backup_mgmt.backup_roots through",
                path: dir.to_owned(),
                source: io::Error::from(io::ErrorKind::PermissionDenied),
            });
        }
    }
    let globals = if with_globals || plan.method == BackupMethod::PgDumpallGlobals {
        progress.set_phase(Phase::DumpingGlobals);
        let target = globals_path(&plan.stem, plan.compression);
        let cmd = command(&argv(plan, Step::Globals, &target));
        Some(stream_to_file(cmd, &target, plan.compression, progress, None)?.0)
    } else {
        None
    };
    if plan.method == BackupMethod::PgDumpallGlobals {
        let main = globals.ok_or_else(|| ExecError::Cancelled("no globals written".into()))?;
        return Ok(Outcome {
            main,
            globals: None,
            facts: None,
            wal: None,
            annotations: None,
        });
    }
    let target = output_path(plan.method, &plan.stem, plan.compression);
    let mut facts = DumpFacts::default();
    let mut directory_facts: Facts = None;
    let mut wal = None;
    let main = if plan.method == BackupMethod::PgDumpDirectory {
        directory_dump(plan, &target, progress).map(|(written, f)| {
            directory_facts = f;
            written
        })
    } else {
        progress.set_phase(Phase::Streaming);
        let cmd = command(&argv(plan, Step::Main, &target));
        let ours = if plan.method == BackupMethod::PgBasebackup {
            Compression::None
        } else {
            plan.compression
        };
        let observer = (plan.method == BackupMethod::PgDump).then_some(&mut facts);
        stream_to_file(cmd, &target, ours, progress, observer).map(|(written, said)| {
            if plan.method == BackupMethod::PgBasebackup {
                wal = WalRange::from_basebackup_log(&said);
            }
            written
        })
    };
    let main = match main {
        Ok(m) => m,
        Err(e) => {
            // A logical backup is the dump and its globals: do not leave half of it behind.
            if let Some(g) = &globals {
                let _ = fs::remove_file(&g.path);
            }
            return Err(e);
        }
    };
    progress.set_phase(Phase::Done);
    let facts = match plan.method {
        BackupMethod::PgDump => Some(facts.finish()),
        _ => directory_facts,
    };
    Ok(Outcome {
        main,
        globals,
        facts,
        wal,
        annotations: None,
    })
}

/// A command with an empty environment (nothing of the server's environment, secrets included,
/// leaks into it) and with every inherited descriptor above stderr closed on exec.
pub(crate) fn command(argv: &[OsString]) -> Command {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .env_clear()
        .env("PGAPPNAME", "backup_mgmt")
        .env("LC_ALL", "C")
        .stdin(Stdio::null());
    // SAFETY: close_range is async-signal-safe; the closure runs between fork and exec.  The
    // worker holds the postmaster-death pipe, relation files and sockets, which a backup program
    // must not keep open (it would keep them alive past the server).
    unsafe {
        cmd.pre_exec(|| {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            Ok(())
        });
    }
    cmd
}

fn program_name(cmd: &Command) -> String {
    Path::new(cmd.get_program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Collects the end of a program's stderr on a helper thread.
pub(crate) fn collect_stderr(child: &mut Child) -> Option<JoinHandle<String>> {
    let mut err = child.stderr.take()?;
    std::thread::Builder::new()
        .name("backup_mgmt stderr".into())
        .spawn(move || {
            let mut kept: Vec<u8> = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * STDERR_KEEP {
                    kept.drain(..kept.len() - STDERR_KEEP);
                }
            }
            let start = kept.len().saturating_sub(STDERR_KEEP);
            String::from_utf8_lossy(&kept[start..]).trim().to_owned()
        })
        .ok()
}

pub(crate) fn spawn(
    mut cmd: Command,
    progress: &Progress,
    stdout: Stdio,
) -> Result<Child, ExecError> {
    if progress.is_cancelled() {
        return Err(ExecError::Cancelled("before start".into()));
    }
    let child = cmd
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ExecError::Spawn {
            program: program_name(&cmd),
            source,
        })?;
    progress.child.store(child.id() as i32, Ordering::SeqCst);
    Ok(child)
}

/// Waits for the program and turns a failure into an error carrying its stderr; on success,
/// returns the end of what it said on stderr (pg_basebackup's WAL positions are there).
pub(crate) fn finish(
    mut child: Child,
    program: String,
    stderr: Option<JoinHandle<String>>,
    progress: &Progress,
) -> Result<String, ExecError> {
    let status = child.wait();
    progress.child.store(0, Ordering::SeqCst);
    let stderr = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    let status = status.map_err(|source| ExecError::Spawn {
        program: program.clone(),
        source,
    })?;
    if progress.is_cancelled() {
        return Err(ExecError::Cancelled(format!("{program} was stopped")));
    }
    if !status.success() {
        return Err(ExecError::Failed {
            program,
            status: describe_status(status),
            stderr: if stderr.is_empty() {
                "(no error output)".into()
            } else {
                stderr
            },
        });
    }
    Ok(stderr)
}

fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".into(),
    }
}

/// The end of a program's message, at most 4000 bytes, cut on a character boundary.
pub(crate) fn tail(s: &str) -> String {
    let s = s.trim();
    let mut i = s.len().saturating_sub(4000);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    s[i..].to_owned()
}

/// Runs a program to completion (stopped when `progress` is cancelled) and returns its stdout;
/// a failure is the end of its error.
pub(crate) fn run_to_end(
    argv: &[OsString],
    stdin: Option<Stdio>,
    progress: &Progress,
) -> Result<String, String> {
    let mut cmd = command(argv);
    if let Some(s) = stdin {
        cmd.stdin(s);
    }
    let program = program_name(&cmd);
    let mut child = spawn(cmd, progress, Stdio::piped()).map_err(|e| e.to_string())?;
    let stderr = collect_stderr(&mut child);
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    finish(child, program, stderr, progress)
        .map(|_| out)
        .map_err(|e| tail(&e.to_string()))
}

/// Writes through to a file, hashing and counting exactly the bytes written.
struct HashingWriter<'a> {
    file: File,
    hasher: Sha256,
    written: u64,
    progress: &'a Progress,
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        self.progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Creates `path`'s partial file, refusing anything that is not a fresh regular file.
fn create_partial(path: &Path) -> Result<(PathBuf, File), ExecError> {
    let partial = partial_path(path);
    // A partial file left by a crash is garbage; the worker removes those at start, and a
    // leftover here can only be ours.
    match fs::symlink_metadata(&partial) {
        Ok(m) if m.is_file() => {
            fs::remove_file(&partial).map_err(io_err("could not remove", &partial))?
        }
        _ => {}
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&partial)
        .map_err(io_err("could not create", &partial))?;
    Ok((partial, file))
}

/// fsync the file, rename it to its final name, fsync the directory.
fn commit_file(file: &File, partial: &Path, path: &Path) -> Result<(), ExecError> {
    file.sync_all()
        .map_err(io_err("could not fsync", partial))?;
    if path.exists() {
        // Never replace an existing backup.
        return Err(ExecError::Io {
            action: "refusing to overwrite",
            path: path.to_owned(),
            source: io::Error::from(io::ErrorKind::AlreadyExists),
        });
    }
    fs::rename(partial, path).map_err(io_err("could not rename", partial))?;
    sync_parent(path)
}

fn sync_parent(path: &Path) -> Result<(), ExecError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("could not fsync directory", dir))
}

/// Grows a pipe from the default 64 kB to 1 MB (the unprivileged maximum), so that the program
/// and this thread hand over large blocks instead of waking each other every 64 kB.
fn widen_pipe(pipe: &impl std::os::fd::AsRawFd) {
    // SAFETY: fcntl on a descriptor we own; failure leaves the default size.
    unsafe {
        libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20);
    }
}

/// Runs `cmd`, streaming its stdout through zstd (optional) and sha256 into `path`.
fn stream_to_file(
    cmd: Command,
    path: &Path,
    compression: Compression,
    progress: &Progress,
    facts: Option<&mut DumpFacts>,
) -> Result<(Written, String), ExecError> {
    let (partial, file) = create_partial(path)?;
    let program = program_name(&cmd);
    let result = (|| {
        let mut child = spawn(cmd, progress, Stdio::piped())?;
        let stderr = collect_stderr(&mut child);
        if let Some(out) = &child.stdout {
            widen_pipe(out);
        }
        let copied = match child.stdout.take() {
            Some(out) => copy_through(out, file, compression, progress, &partial, facts),
            None => Err(ExecError::Cancelled("no stdout".into())),
        };
        if copied.is_err() {
            // The program may be blocked writing to us: stop it before waiting for it.
            let _ = child.kill();
        }
        let finished = finish(child, program, stderr, progress);
        let (file, written, sha256) = copied?;
        let said = finished?;
        progress.set_phase(Phase::Syncing);
        commit_file(&file, &partial, path)?;
        Ok((
            Written {
                path: path.to_owned(),
                size: written,
                sha256,
            },
            said,
        ))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&partial);
    }
    result
}

fn copy_through(
    mut input: impl Read,
    file: File,
    compression: Compression,
    progress: &Progress,
    partial: &Path,
    facts: Option<&mut DumpFacts>,
) -> Result<(File, u64, String), ExecError> {
    let writer = HashingWriter {
        file,
        hasher: Sha256::new(),
        written: 0,
        progress,
    };
    let werr = io_err("could not write", partial);
    let mut buf = vec![0u8; CHUNK];
    let writer = match compression {
        Compression::None => {
            let mut w = writer;
            pump(&mut input, &mut w, &mut buf, partial, facts)?;
            w
        }
        Compression::Zstd(level) => {
            let mut enc = zstd::stream::write::Encoder::new(writer, level)
                .map_err(io_err("could not start zstd for", partial))?;
            // Single-threaded on purpose: the server backend and the program already keep two
            // cores busy, and a zstd worker thread measured slower on this 2-core machine.
            pump(&mut input, &mut enc, &mut buf, partial, facts)?;
            enc.finish().map_err(werr)?
        }
    };
    let HashingWriter {
        file,
        hasher,
        written,
        ..
    } = writer;
    Ok((file, written, hex(&hasher.finalize())))
}

fn pump(
    input: &mut impl Read,
    out: &mut impl Write,
    buf: &mut [u8],
    partial: &Path,
    mut facts: Option<&mut DumpFacts>,
) -> Result<(), ExecError> {
    loop {
        let n = match input.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("could not read program output for", partial)(e)),
        };
        if let Some(f) = facts.as_deref_mut() {
            f.feed(&buf[..n]);
        }
        out.write_all(&buf[..n])
            .map_err(io_err("could not write", partial))?;
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `pg_dump --format=directory --jobs=N` into a partial directory; then each file is compressed
/// (or not) and checksummed as it is written, in parallel, and a manifest in `sha256sum -c`
/// format is written last.  pg_dump 15 writes these files itself, so this is the one method where
/// the data is read again after the program wrote it.
type Facts = Option<Result<std::collections::BTreeMap<String, u64>, String>>;

fn directory_dump(
    plan: &Plan,
    target: &Path,
    progress: &Progress,
) -> Result<(Written, Facts), ExecError> {
    let partial = partial_path(target);
    if fs::symlink_metadata(&partial).is_ok_and(|m| m.is_dir()) {
        fs::remove_dir_all(&partial).map_err(io_err("could not remove", &partial))?;
    }
    let result = (|| {
        progress.set_phase(Phase::WaitingForPgDump);
        let cmd = command(&argv(plan, Step::Main, &partial));
        let program = program_name(&cmd);
        let mut child = spawn(cmd, progress, Stdio::null())?;
        let stderr = collect_stderr(&mut child);
        finish(child, program, stderr, progress)?;
        // Which table each "<dump id>.dat" holds, from pg_dump's table of contents.
        let tables = fs::read(partial.join("toc.dat"))
            .map_err(|e| format!("toc.dat: {e}"))
            .and_then(|toc| crate::dumpfacts::directory_tables(&toc));
        progress.set_phase(Phase::CompressingFiles);
        let mut names: Vec<PathBuf> = fs::read_dir(&partial)
            .map_err(io_err("could not list", &partial))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        names.sort();
        let threads = plan.parallel_jobs.clamp(1, 64) as usize;
        let next = AtomicU64::new(0);
        type Sealed = (String, Written, Option<u64>);
        let results: Vec<Result<Vec<Sealed>, ExecError>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    s.spawn(|| {
                        block_all_signals();
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                            let Some(raw) = names.get(i) else {
                                return Ok(done);
                            };
                            if progress.is_cancelled() {
                                return Err(ExecError::Cancelled("stopped".into()));
                            }
                            done.push(seal_file(raw, plan.compression, progress)?);
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(ExecError::Cancelled("thread panicked".into())))
                })
                .collect()
        });
        let mut files = Vec::new();
        for r in results {
            files.extend(r?);
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let total: u64 = files.iter().map(|(_, w, _)| w.size).sum();
        let manifest: String = files
            .iter()
            .map(|(name, w, _)| format!("{}  {}\n", w.sha256, name))
            .collect();
        let facts = tables.map(|tables| {
            let mut rows: std::collections::BTreeMap<String, u64> =
                tables.values().map(|t| (t.clone(), 0)).collect();
            for (name, _, counted) in &files {
                let id = name
                    .trim_end_matches(".zst")
                    .trim_end_matches(".dat")
                    .parse::<i64>()
                    .ok();
                if let (Some(n), Some(table)) = (counted, id.and_then(|i| tables.get(&i))) {
                    rows.insert(table.clone(), *n);
                }
            }
            rows
        });
        progress.set_phase(Phase::Syncing);
        let manifest_path = partial.join(DIRECTORY_MANIFEST);
        let mut m = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&manifest_path)
            .map_err(io_err("could not create", &manifest_path))?;
        m.write_all(manifest.as_bytes())
            .and_then(|_| m.sync_all())
            .map_err(io_err("could not write", &manifest_path))?;
        File::open(&partial)
            .and_then(|d| d.sync_all())
            .map_err(io_err("could not fsync directory", &partial))?;
        if target.exists() {
            return Err(ExecError::Io {
                action: "refusing to overwrite",
                path: target.to_owned(),
                source: io::Error::from(io::ErrorKind::AlreadyExists),
            });
        }
        fs::rename(&partial, target).map_err(io_err("could not rename", &partial))?;
        sync_parent(target)?;
        Ok((
            Written {
                path: target.to_owned(),
                size: total + manifest.len() as u64,
                sha256: hex(&Sha256::digest(manifest.as_bytes())),
            },
            Some(facts),
        ))
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&partial);
    }
    result
}

/// Reads `input` to its end in pieces, counts rows in them when asked, and hands each on.
fn read_pieces(
    mut input: File,
    raw: &Path,
    rows: &mut Option<RowCounter>,
    mut each: impl FnMut(&[u8]) -> Result<(), ExecError>,
) -> Result<File, ExecError> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = input
            .read(&mut buf)
            .map_err(io_err("could not read", raw))?;
        if n == 0 {
            return Ok(input);
        }
        if let Some(r) = rows.as_mut() {
            r.feed(&buf[..n]);
        }
        each(&buf[..n])?;
    }
}

/// Compresses (or only checksums) one file written by pg_dump; returns its manifest name.
fn seal_file(
    raw: &Path,
    compression: Compression,
    progress: &Progress,
) -> Result<(String, Written, Option<u64>), ExecError> {
    let name = raw
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // "<dump id>.dat" holds a table's COPY data: count its rows on the way.
    let mut rows = name
        .strip_suffix(".dat")
        .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        .then(RowCounter::default);
    let input = File::open(raw).map_err(io_err("could not open", raw))?;
    match compression {
        Compression::None => {
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let input = read_pieces(input, raw, &mut rows, |piece| {
                hasher.update(piece);
                size += piece.len() as u64;
                progress
                    .bytes
                    .fetch_add(piece.len() as u64, Ordering::Relaxed);
                Ok(())
            })?;
            input.sync_all().map_err(io_err("could not fsync", raw))?;
            Ok((
                name,
                Written {
                    path: raw.to_owned(),
                    size,
                    sha256: hex(&hasher.finalize()),
                },
                rows.map(|r| r.rows),
            ))
        }
        Compression::Zstd(level) => {
            let target = with_suffix(raw, ".zst");
            let out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&target)
                .map_err(io_err("could not create", &target))?;
            let mut writer = HashingWriter {
                file: out,
                hasher: Sha256::new(),
                written: 0,
                progress,
            };
            {
                let mut enc = zstd::stream::write::Encoder::new(&mut writer, level)
                    .map_err(io_err("could not start zstd for", &target))?;
                read_pieces(input, raw, &mut rows, |piece| {
                    enc.write_all(piece)
                        .map_err(io_err("could not write", &target))
                })?;
                enc.finish().map_err(io_err("could not write", &target))?;
            }
            writer
                .file
                .sync_all()
                .map_err(io_err("could not fsync", &target))?;
            fs::remove_file(raw).map_err(io_err("could not remove", raw))?;
            Ok((
                format!("{name}.zst"),
                Written {
                    path: target,
                    size: writer.written,
                    sha256: hex(&writer.hasher.finalize()),
                },
                rows.map(|r| r.rows),
            ))
        }
    }
}

/// How long a cancelled program gets after SIGTERM before SIGKILL.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

#[cfg(test)]
mod unit {
    #[test]
    fn basebackup_wal_positions_are_read_from_its_log() {
        let log = "pg_basebackup: initiating base backup, waiting for checkpoint to complete\n\
                   pg_basebackup: checkpoint completed\n\
                   pg_basebackup: write-ahead log start point: 1/FE000028 on timeline 3\n\
                   pg_basebackup: write-ahead log end point: 1/FF000000\n\
                   pg_basebackup: base backup completed";
        let r = super::WalRange::from_basebackup_log(log).unwrap();
        assert_eq!(r.start_lsn, 0x1_FE00_0028);
        assert_eq!(r.stop_lsn, 0x1_FF00_0000);
        assert_eq!(r.timeline, 3);
        // The stop point sits on a file boundary: the last file needed is the one before it.
        assert_eq!(
            r.segments(16 << 20),
            (
                "0000000300000001000000FE".to_owned(),
                "0000000300000001000000FE".to_owned()
            )
        );
        assert_eq!(
            r.segment_name(0x2_0000_0001, 16 << 20),
            "000000030000000200000000"
        );
        assert_eq!(super::format_lsn(r.start_lsn), "1/FE000028");
        assert!(super::WalRange::from_basebackup_log("pg_basebackup: done").is_none());
    }

    use super::*;

    #[test]
    fn conninfo_quotes_every_value() {
        let c = Connection {
            host: "/var/run/postgresql".into(),
            port: 5432,
            user: "postgres".into(),
        };
        let s = c.conninfo(Some("host=evil port=1"));
        assert!(s.ends_with(" dbname='host=evil port=1'"), "{s}");
        assert_eq!(quote_conninfo_value(r"a'b\c"), r"'a\'b\\c'");
        assert!(!c.conninfo(None).contains("dbname"));
    }

    #[test]
    fn names_cannot_add_path_levels() {
        assert_eq!(path_component("../etc"), "%2E.%2Fetc");
        assert_eq!(path_component("sales db"), "sales%20db");
        assert_eq!(path_component("a.b-c_d"), "a.b-c_d");
        assert_eq!(path_component(""), "%00");
        let when = chrono::DateTime::parse_from_rfc3339("2026-11-27T08:30:05Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let stem = backup_stem(Path::new("/b"), "../x", "nightly/1", when, 42);
        assert_eq!(
            stem,
            Path::new("/b/%2E.%2Fx/nightly%2F1/20261127T083005Z-42")
        );
        assert_eq!(
            output_path(BackupMethod::PgDump, &stem, Compression::Zstd(3)),
            Path::new("/b/%2E.%2Fx/nightly%2F1/20261127T083005Z-42.dump.zst")
        );
    }

    #[test]
    fn argv_has_no_shell_and_quoted_database() {
        let plan = Plan {
            method: BackupMethod::PgDump,
            database: "host=evil".into(),
            bindir: "/usr/lib/postgresql/15/bin".into(),
            connection: Connection {
                host: "/tmp".into(),
                port: 5433,
                user: "postgres".into(),
            },
            compression: Compression::Zstd(3),
            parallel_jobs: 1,
            fast_checkpoint: false,
            stem: "/b/x".into(),
            root: "/b".into(),
        };
        let v = argv(&plan, Step::Main, Path::new("/b/x.dump.zst"));
        assert_eq!(v[0], "/usr/lib/postgresql/15/bin/pg_dump");
        assert!(v.iter().any(|a| a == "--compress=0"));
        let db = v.last().unwrap().to_string_lossy().into_owned();
        assert!(db.ends_with("dbname='host=evil'"), "{db}");
        let base = Plan {
            method: BackupMethod::PgBasebackup,
            ..plan.clone()
        };
        let v = argv(&base, Step::Main, Path::new("/b/x.tar.zst"));
        assert!(v.iter().any(|a| a == "--compress=client-zstd:3"), "{v:?}");
        assert!(!v.last().unwrap().to_string_lossy().contains(" dbname='"));
    }

    /// The streaming pass: the recorded digest equals an independent hash of the file, a failing
    /// program leaves no file behind, and its stderr is the error.
    #[test]
    fn stream_hashes_what_it_writes_and_cleans_up_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let progress = Progress::default();
        for compression in [Compression::None, Compression::Zstd(3)] {
            let path = dir.path().join(format!("out{}", compression.suffix()));
            let mut cmd = Command::new("/bin/sh");
            cmd.args(["-c", "seq 1 200000"]);
            let (w, _) = stream_to_file(cmd, &path, compression, &progress, None).unwrap();
            let bytes = fs::read(&path).unwrap();
            assert_eq!(w.size, bytes.len() as u64);
            assert_eq!(w.sha256, hex(&Sha256::digest(&bytes)));
            let plain = match compression {
                Compression::None => bytes,
                Compression::Zstd(_) => zstd::decode_all(&bytes[..]).unwrap(),
            };
            assert!(plain.starts_with(b"1\n2\n3\n"));
            assert!(plain.ends_with(b"200000\n"));
            assert!(!partial_path(&path).exists());
        }
        let path = dir.path().join("bad");
        let mut cmd = Command::new("/bin/sh");
        cmd.args([
            "-c",
            "echo partial; echo 'pg_dump: error: boom' >&2; exit 3",
        ]);
        let err = stream_to_file(cmd, &path, Compression::None, &progress, None).unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        assert!(err.to_string().contains("exit code 3"), "{err}");
        assert!(!path.exists() && !partial_path(&path).exists());
        // An existing backup is never replaced.
        fs::write(&path, b"old").unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo new"]);
        assert!(stream_to_file(cmd, &path, Compression::None, &progress, None).is_err());
        assert_eq!(fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn cancel_stops_the_program() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slow");
        let progress = Arc::new(Progress::default());
        let p = Arc::clone(&progress);
        let t = std::thread::spawn(move || {
            let mut cmd = Command::new("/bin/sh");
            cmd.args(["-c", "exec sleep 30"]);
            stream_to_file(cmd, &path, Compression::None, &p, None)
        });
        let t0 = Instant::now();
        while progress.child.load(Ordering::SeqCst) == 0 && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        progress.cancel(libc::SIGTERM);
        let err = t.join().unwrap().unwrap_err();
        assert!(matches!(err, ExecError::Cancelled(_)), "{err}");
        assert!(t0.elapsed() < Duration::from_secs(20));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
