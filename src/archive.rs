//! WAL archive module: with `archive_library = 'backup_mgmt'`, PostgreSQL's archiver calls this
//! library for every WAL segment and history file, with no process forked per segment.
//!
//! Each file is copied into `<first backup root>/wal/<system identifier>/` under a temporary
//! name, fsynced, renamed and the directory fsynced; only then is success reported.  A file
//! already archived with the same content is success (PostgreSQL retries after a crash); one
//! with different content is refused and logged, never overwritten.  A segment whose page header
//! names another cluster is refused.  Every archived file is appended, with its size and sha256,
//! to `archive_manifest.jsonl` in the same directory (the archiver has no database connection;
//! the worker can ingest it).
//!
//! On PG15 an ERROR inside an archive callback kills the archiver, so nothing here raises: every
//! failure is a WARNING and `false`, and PostgreSQL retries the segment.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::executor::hex;

/// Copy chunk: a 16 MB segment in 16 reads and writes (buffers are reused, see `BUFFERS`).
const CHUNK: usize = 1 << 20;
/// The manifest of archived files in each archive directory.
pub const MANIFEST: &str = "archive_manifest.jsonl";

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("\"{0}\" is not a WAL file name")]
    BadName(String),
    #[error("{name} is already archived with different content; refusing to overwrite it")]
    Conflict { name: String },
    #[error(
        "{name} belongs to another cluster (system identifier {found}, this cluster is {ours})"
    )]
    OtherCluster { name: String, found: u64, ours: u64 },
    #[error("{action} \"{path}\": {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ArchiveError + 'a {
    move |source| ArchiveError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// How archived files are stored (`backup_mgmt.archive_compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Plain,
    /// `<name>.zst`, at this zstd level.
    Zstd(i32),
}

/// What happened to a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Archived {
    /// Copied now, with this size and sha256.
    Copied { size: u64, sha256: String },
    /// Already there with identical content.
    AlreadyThere,
}

/// Names PostgreSQL archives: segments, partial segments, history and backup history files.
fn valid_name(name: &str) -> bool {
    let hex24 = |s: &str| s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let hex8 = |s: &str| s.len() == 8 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(tli) = name.strip_suffix(".history") {
        return hex8(tli);
    }
    if let Some(seg) = name.strip_suffix(".partial") {
        return hex24(seg);
    }
    if let Some(rest) = name.strip_suffix(".backup") {
        return rest.len() == 33 && hex24(&rest[..24]) && rest.as_bytes()[24] == b'.';
    }
    hex24(name)
}

/// The system identifier in a WAL segment's first (long) page header, if `head` holds one.
fn segment_system_identifier(head: &[u8]) -> Option<u64> {
    // XLogLongPageHeaderData: xlp_magic u16, xlp_info u16, xlp_tli u32, xlp_pageaddr u64,
    // xlp_rem_len u32 (+4 padding), then xlp_sysid u64 at offset 24.  XLP_LONG_HEADER = 0x0002.
    if head.len() < 32 || u16::from_le_bytes([head[2], head[3]]) & 0x0002 == 0 {
        return None;
    }
    Some(u64::from_le_bytes(head[24..32].try_into().ok()?))
}

/// Whether `source` has the same content as the archived `target` (a `.zst` one decompressed);
/// if so, the archived file's size and sha256.
fn same_content(source: &Path, target: &Path) -> Result<Option<(u64, String)>, ArchiveError> {
    let fa = File::open(source).map_err(io_err("could not open", source))?;
    let fb = File::open(target).map_err(io_err("could not open", target))?;
    let compressed = target.extension().is_some_and(|e| e == "zst");
    let equal = if compressed {
        let decoder =
            zstd::stream::read::Decoder::new(fb).map_err(io_err("could not read", target))?;
        same_bytes(fa, decoder, source, target)?
    } else {
        if fa.metadata().map(|m| m.len()).ok() != fb.metadata().map(|m| m.len()).ok() {
            return Ok(None);
        }
        same_bytes(fa, fb, source, target)?
    };
    if !equal {
        return Ok(None);
    }
    sha256_of(target).map(Some)
}

/// Whether two streams have the same bytes.
fn same_bytes(
    mut a: impl Read,
    mut b: impl Read,
    source: &Path,
    target: &Path,
) -> Result<bool, ArchiveError> {
    let (mut ba, mut bb) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        let n = read_full(&mut a, &mut ba).map_err(io_err("could not read", source))?;
        let m = read_full(&mut b, &mut bb[..n.max(1)]).map_err(io_err("could not read", target))?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Size and sha256 of a file.
fn sha256_of(path: &Path) -> Result<(u64, String), ArchiveError> {
    let mut f = File::open(path).map_err(io_err("could not open", path))?;
    let mut h = Sha256::new();
    let size = io::copy(&mut f, &mut h).map_err(io_err("could not read", path))?;
    Ok((size, hex(&h.finalize())))
}

/// Appends a file's line to the directory's manifest, durably.
/// `file` is the name it is stored under (`name`, or `name.zst`); size and sha256 are the
/// stored file's, so that `sha256sum -c` checks what is on disk.
fn append_manifest(
    dir: &Path,
    name: &str,
    file: &str,
    size: u64,
    sha256: &str,
) -> Result<(), ArchiveError> {
    let line = format!(
        "{{\"name\":\"{name}\",\"file\":\"{file}\",\"size\":{size},\"sha256\":\"{sha256}\",\"archived_at\":\"{}\"}}\n",
        chrono::Utc::now().to_rfc3339()
    );
    let manifest = dir.join(MANIFEST);
    let mut m = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&manifest)
        .map_err(io_err("could not open", &manifest))?;
    m.write_all(line.as_bytes())
        .and_then(|_| m.sync_all())
        .map_err(io_err("could not write", &manifest))
}

thread_local! {
    /// Copy buffers, kept between segments: the archiver copies one 16 MB segment after another,
    /// and fresh megabyte buffers would be page-faulted in again every time.
    static BUFFERS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// zstd worker threads for compressed archiving.
const ZSTD_WORKERS: u32 = 2;

/// Buffers in flight: one being read, one being written, one being hashed.
const BUFFERS_IN_FLIGHT: usize = 3;

/// Copies `input` to `out` and returns the size and sha256 of what was written.  The first
/// chunk is shown to `check_head` before anything is written.  The sha256 is computed on a
/// helper thread while this one reads and writes the next chunk (hashing is a third of the
/// work); without a thread, it is computed inline.
fn copy_hashing(
    input: &mut File,
    out: &mut File,
    source: &Path,
    temp: &Path,
    check_head: &dyn Fn(&[u8]) -> Result<(), ArchiveError>,
) -> Result<(u64, String), ArchiveError> {
    use std::sync::mpsc;
    let mut pool = BUFFERS.with(|b| std::mem::take(&mut *b.borrow_mut()));
    let (to_hasher, hasher_in) = mpsc::sync_channel::<(Vec<u8>, usize)>(BUFFERS_IN_FLIGHT);
    let (hasher_out, returned) = mpsc::channel::<Vec<u8>>();
    let hash = |chunks: mpsc::Receiver<(Vec<u8>, usize)>, back: mpsc::Sender<Vec<u8>>| {
        let mut h = Sha256::new();
        for (buf, n) in chunks {
            h.update(&buf[..n]);
            let _ = back.send(buf);
        }
        hex(&h.finalize())
    };
    let result = std::thread::scope(|scope| {
        let helper = with_signals_blocked(|| {
            std::thread::Builder::new()
                .name("backup_mgmt archive hash".into())
                .spawn_scoped(scope, move || hash(hasher_in, hasher_out))
        });
        let Ok(helper) = helper else {
            return Err(None);
        };
        let mut size = 0u64;
        let mut allocated = pool.len();
        let mut first = true;
        let copied = (|| loop {
            let mut buf = match pool.pop() {
                Some(b) => b,
                None if allocated < BUFFERS_IN_FLIGHT => {
                    allocated += 1;
                    vec![0u8; CHUNK]
                }
                None => returned.recv().map_err(|_| {
                    io_err("could not hash", source)(io::ErrorKind::BrokenPipe.into())
                })?,
            };
            let n = read_full(input, &mut buf).map_err(io_err("could not read", source))?;
            if n == 0 {
                pool.push(buf);
                return Ok(size);
            }
            if std::mem::take(&mut first) {
                check_head(&buf[..n])?;
            }
            out.write_all(&buf[..n])
                .map_err(io_err("could not write", temp))?;
            size += n as u64;
            if to_hasher.send((buf, n)).is_err() {
                return Err(io_err("could not hash", source)(
                    io::ErrorKind::BrokenPipe.into(),
                ));
            }
        })();
        drop(to_hasher);
        let sha256 = helper.join().map_err(|_| {
            Some(io_err("could not hash", source)(
                io::ErrorKind::Other.into(),
            ))
        })?;
        pool.extend(returned.try_iter());
        copied.map(|size| (size, sha256)).map_err(Some)
    });
    let result = match result {
        Ok(r) => Ok(r),
        Err(Some(e)) => Err(e),
        // No thread to be had: hash inline.
        Err(None) => copy_hashing_inline(input, out, source, temp, check_head, &mut pool),
    };
    pool.truncate(BUFFERS_IN_FLIGHT);
    BUFFERS.with(|b| *b.borrow_mut() = pool);
    result
}

/// `copy_hashing` on one thread: the fallback when no helper thread can be started.
fn copy_hashing_inline(
    input: &mut File,
    out: &mut File,
    source: &Path,
    temp: &Path,
    check_head: &dyn Fn(&[u8]) -> Result<(), ArchiveError>,
    pool: &mut Vec<Vec<u8>>,
) -> Result<(u64, String), ArchiveError> {
    let mut buf = pool.pop().unwrap_or_else(|| vec![0u8; CHUNK]);
    let mut h = Sha256::new();
    let mut size = 0u64;
    let result = loop {
        let n = match read_full(input, &mut buf) {
            Ok(n) => n,
            Err(e) => break Err(io_err("could not read", source)(e)),
        };
        if n == 0 {
            break Ok((size, hex(&h.finalize())));
        }
        if size == 0 {
            if let Err(e) = check_head(&buf[..n]) {
                break Err(e);
            }
        }
        if let Err(e) = out.write_all(&buf[..n]) {
            break Err(io_err("could not write", temp)(e));
        }
        h.update(&buf[..n]);
        size += n as u64;
    };
    pool.push(buf);
    result
}

/// A file that hashes and counts what is written to it (the compressed bytes).
struct HashingFile<'a> {
    file: &'a mut File,
    hasher: Sha256,
    written: u64,
}

impl Write for HashingFile<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Copies `input` to `out` through zstd; returns the size and sha256 of the compressed file.
fn copy_compressing(
    input: &mut File,
    out: &mut File,
    source: &Path,
    temp: &Path,
    level: i32,
    check_head: &dyn Fn(&[u8]) -> Result<(), ArchiveError>,
) -> Result<(u64, String), ArchiveError> {
    let sink = HashingFile {
        file: out,
        hasher: Sha256::new(),
        written: 0,
    };
    let werr = io_err("could not write", temp);
    let mut encoder = zstd::stream::write::Encoder::new(sink, level).map_err(werr)?;
    // zstd's own worker threads compress while this thread reads and writes (a 16 MB segment
    // is split into jobs).  zstd starts them on the first write and ends them when the encoder
    // is dropped, so the caller runs all of this with the archiver's signals blocked.
    encoder
        .multithread(ZSTD_WORKERS)
        .map_err(io_err("could not start zstd workers for", temp))?;
    let mut buf = BUFFERS
        .with(|b| b.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; CHUNK]);
    let mut first = true;
    let result = loop {
        let n = match read_full(input, &mut buf) {
            Ok(n) => n,
            Err(e) => break Err(io_err("could not read", source)(e)),
        };
        if n == 0 {
            break Ok(());
        }
        if std::mem::take(&mut first) {
            if let Err(e) = check_head(&buf[..n]) {
                break Err(e);
            }
        }
        if let Err(e) = encoder.write_all(&buf[..n]) {
            break Err(io_err("could not write", temp)(e));
        }
    };
    BUFFERS.with(|b| b.borrow_mut().push(buf));
    result?;
    let sink = encoder.finish().map_err(io_err("could not write", temp))?;
    Ok((sink.written, hex(&sink.hasher.finalize())))
}

/// Reads until `buf` is full or the file ends.
pub(crate) fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Runs `f` (which starts threads) with every signal blocked, so that new threads start with
/// them blocked: PostgreSQL's handlers must only ever run on the archiver's own thread.  Signals
/// that arrive meanwhile wait until `f` returns.
fn with_signals_blocked<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: plain libc calls on local, initialised signal sets.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let r = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

/// Archives `source` as `name` into `dir` (created if needed), durably, never overwriting.
/// `system_identifier` is this cluster's; a segment naming another one is refused.
pub fn archive_file(
    source: &Path,
    name: &str,
    dir: &Path,
    system_identifier: u64,
    stored: Stored,
) -> Result<Archived, ArchiveError> {
    if !valid_name(name) {
        return Err(ArchiveError::BadName(name.to_owned()));
    }
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err("could not create", dir))?;
        if let Some(parent) = dir.parent() {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io_err("could not fsync", parent))?;
        }
    }
    // Already archived, in either form (compression may have been turned on or off since)?
    for existing in [name.to_owned(), format!("{name}.zst")] {
        let path = dir.join(&existing);
        if !path.exists() {
            continue;
        }
        return match same_content(source, &path)? {
            // A crash between the link and the manifest line would leave the file out of the
            // manifest (and the catalog) for good: the retry writes the line again.  The worker
            // ignores duplicates.
            Some((size, sha256)) => {
                append_manifest(dir, name, &existing, size, &sha256)?;
                Ok(Archived::AlreadyThere)
            }
            None => Err(ArchiveError::Conflict {
                name: name.to_owned(),
            }),
        };
    }
    let file_name = match stored {
        Stored::Plain => name.to_owned(),
        Stored::Zstd(_) => format!("{name}.zst"),
    };
    let target = dir.join(&file_name);
    let temp = dir.join(format!(".{file_name}.tmp"));
    let _ = fs::remove_file(&temp);
    let mut input = File::open(source).map_err(io_err("could not open", source))?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temp)
        .map_err(io_err("could not create", &temp))?;
    let result = (|| {
        let check_head = |head: &[u8]| match segment_system_identifier(head) {
            Some(found) if name.len() == 24 && found != system_identifier => {
                Err(ArchiveError::OtherCluster {
                    name: name.to_owned(),
                    found,
                    ours: system_identifier,
                })
            }
            _ => Ok(()),
        };
        let (size, sha256) = match stored {
            Stored::Plain => copy_hashing(&mut input, &mut out, source, &temp, &check_head)?,
            Stored::Zstd(level) => with_signals_blocked(|| {
                copy_compressing(&mut input, &mut out, source, &temp, level, &check_head)
            })?,
        };
        out.sync_all().map_err(io_err("could not fsync", &temp))?;
        // link(2), not rename(2): it fails if the name appeared meanwhile, so nothing is ever
        // overwritten, even by a concurrent archiver of the same directory.
        fs::hard_link(&temp, &target).map_err(io_err("could not link", &target))?;
        let _ = fs::remove_file(&temp);
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("could not fsync", dir))?;
        // Listed only once the file is durable under its name.
        append_manifest(dir, name, &file_name, size, &sha256)?;
        Ok(Archived::Copied { size, sha256 })
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// This cluster's system identifier, from `global/pg_control` (the archiver runs in the data
/// directory; the identifier is the control file's first field).
fn system_identifier() -> io::Result<u64> {
    let mut head = [0u8; 8];
    File::open("global/pg_control")?.read_exact(&mut head)?;
    Ok(u64::from_le_bytes(head))
}

/// The archive directory: `<first backup root>/wal/<system identifier>`.
fn archive_dir(system_identifier: u64) -> Result<PathBuf, String> {
    let roots = crate::guc::backup_roots().map_err(|e| e.to_string())?;
    let root = roots
        .first()
        .ok_or("backup_mgmt.backup_roots is empty")?
        .canonicalize()
        .map_err(|e| format!("backup root: {e}"))?;
    Ok(root.join("wal").join(system_identifier.to_string()))
}

#[cfg(any(feature = "pg15", feature = "pg16", feature = "pg17", feature = "pg18"))]
mod callbacks {
    use std::ffi::{c_char, CStr};
    use std::path::Path;

    use pgrx::prelude::*;

    fn archive_one(file: &str, path: &str) -> Result<(), String> {
        let sysid = super::system_identifier().map_err(|e| format!("pg_control: {e}"))?;
        let dir = super::archive_dir(sysid)?;
        let stored = match crate::guc::archive_compression() {
            Some(level) => super::Stored::Zstd(level),
            None => super::Stored::Plain,
        };
        match super::archive_file(Path::new(path), file, &dir, sysid, stored) {
            Ok(super::Archived::Copied { .. }) => Ok(()),
            Ok(super::Archived::AlreadyThere) => {
                pgrx::log!("backup_mgmt: {file} was already archived with the same content");
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn check_configured() -> bool {
        let ok = PgTryBuilder::new(|| super::archive_dir(0).is_ok())
            .catch_others(|_| false)
            .execute();
        if !ok {
            warning!("backup_mgmt: archiving needs backup_mgmt.backup_roots to name an existing directory");
        }
        ok
    }

    /// # Safety
    /// `file` and `path` are NUL-terminated strings from the archiver.
    unsafe fn archive_file_cb(file: *const c_char, path: *const c_char) -> bool {
        // Nothing may raise here: an ERROR would kill the archiver (PG15; PG16+ survives it but
        // logs it as an ERROR, while this is a WARNING and a retry).
        PgTryBuilder::new(|| {
            let file = unsafe { CStr::from_ptr(file) }
                .to_string_lossy()
                .into_owned();
            let path = unsafe { CStr::from_ptr(path) }
                .to_string_lossy()
                .into_owned();
            match archive_one(&file, &path) {
                Ok(()) => true,
                Err(why) => {
                    warning!("backup_mgmt: could not archive {file}: {why}");
                    false
                }
            }
        })
        .catch_others(|e| {
            let message = match e {
                pgrx::pg_sys::panic::CaughtError::PostgresError(r)
                | pgrx::pg_sys::panic::CaughtError::ErrorReport(r) => r.message().to_owned(),
                pgrx::pg_sys::panic::CaughtError::RustPanic { ereport, .. } => {
                    ereport.message().to_owned()
                }
            };
            warning!("backup_mgmt: archiving failed: {message}");
            false
        })
        .execute()
    }

    #[cfg(feature = "pg15")]
    unsafe extern "C-unwind" fn check_configured_pg15() -> bool {
        check_configured()
    }

    #[cfg(feature = "pg15")]
    unsafe extern "C-unwind" fn archive_file_pg15(
        file: *const c_char,
        path: *const c_char,
    ) -> bool {
        unsafe { archive_file_cb(file, path) }
    }

    /// PostgreSQL 15's archive module entry point (`archive_library = 'backup_mgmt'`): it fills
    /// in the struct the archiver passes.
    ///
    /// # Safety
    /// Called by PostgreSQL's archiver with a valid callbacks struct.
    #[cfg(feature = "pg15")]
    #[unsafe(no_mangle)]
    pub unsafe extern "C-unwind" fn _PG_archive_module_init(
        cb: *mut pgrx::pg_sys::ArchiveModuleCallbacks,
    ) {
        unsafe {
            (*cb).check_configured_cb = Some(check_configured_pg15);
            (*cb).archive_file_cb = Some(archive_file_pg15);
            (*cb).shutdown_cb = None;
        }
    }

    #[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
    unsafe extern "C-unwind" fn check_configured_pg16(
        _state: *mut pgrx::pg_sys::ArchiveModuleState,
    ) -> bool {
        check_configured()
    }

    #[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
    unsafe extern "C-unwind" fn archive_file_pg16(
        _state: *mut pgrx::pg_sys::ArchiveModuleState,
        file: *const c_char,
        path: *const c_char,
    ) -> bool {
        unsafe { archive_file_cb(file, path) }
    }

    /// The callbacks PostgreSQL 16 and later read from the pointer the entry point returns.
    #[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
    static CALLBACKS: pgrx::pg_sys::ArchiveModuleCallbacks = pgrx::pg_sys::ArchiveModuleCallbacks {
        startup_cb: None,
        check_configured_cb: Some(check_configured_pg16),
        archive_file_cb: Some(archive_file_pg16),
        shutdown_cb: None,
    };

    /// PostgreSQL 16+'s archive module entry point: returns the callbacks (the state argument
    /// of each callback is unused; nothing is kept between files).
    #[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
    #[unsafe(no_mangle)]
    pub extern "C-unwind" fn _PG_archive_module_init() -> *const pgrx::pg_sys::ArchiveModuleCallbacks
    {
        &raw const CALLBACKS
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn segment(sysid: u64, fill: u8) -> Vec<u8> {
        let mut v = vec![fill; 64 * 1024];
        v[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        v[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
        v[24..32].copy_from_slice(&sysid.to_le_bytes());
        v
    }

    #[test]
    fn archives_once_accepts_identical_refuses_different() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("000000010000000000000003");
        std::fs::write(&src, segment(42, 7)).unwrap();
        let dir = tmp.path().join("wal").join("42");
        let name = "000000010000000000000003";
        let first = archive_file(&src, name, &dir, 42, Stored::Plain).unwrap();
        let Archived::Copied { size, sha256 } = first else {
            panic!("not copied: {first:?}")
        };
        assert_eq!(size, 64 * 1024);
        assert_eq!(sha256, hex(&Sha256::digest(std::fs::read(&src).unwrap())));
        assert_eq!(
            std::fs::read(dir.join(name)).unwrap(),
            std::fs::read(&src).unwrap()
        );
        // The same file again (a retry after a crash): success, nothing rewritten.
        assert_eq!(
            archive_file(&src, name, &dir, 42, Stored::Plain).unwrap(),
            Archived::AlreadyThere
        );
        // Different content under the same name: refused, the archived copy untouched.
        std::fs::write(&src, segment(42, 8)).unwrap();
        let e = archive_file(&src, name, &dir, 42, Stored::Plain).unwrap_err();
        assert!(matches!(e, ArchiveError::Conflict { .. }), "{e}");
        assert_eq!(std::fs::read(dir.join(name)).unwrap(), segment(42, 7));
        // Another cluster's segment: refused.
        let other = tmp.path().join("000000010000000000000004");
        std::fs::write(&other, segment(99, 1)).unwrap();
        let e =
            archive_file(&other, "000000010000000000000004", &dir, 42, Stored::Plain).unwrap_err();
        assert!(
            matches!(e, ArchiveError::OtherCluster { found: 99, .. }),
            "{e}"
        );
        assert!(!dir.join("000000010000000000000004").exists());
        // The manifest lists the file copied (again for the identical retry), nothing else.
        let manifest = std::fs::read_to_string(dir.join(MANIFEST)).unwrap();
        assert_eq!(manifest.lines().count(), 2);
        assert!(manifest
            .lines()
            .all(|l| l.contains(&sha256) && l.contains(name)));
        // No temporary file is left behind.
        assert!(std::fs::read_dir(&dir).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
    }

    /// zstd storage: `<name>.zst` that decompresses to the segment, listed with the compressed
    /// file's sha256; an identical retry in either form is success, a different file refused.
    #[test]
    fn compressed_archive_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("000000010000000000000007");
        std::fs::write(&src, segment(42, 3)).unwrap();
        let dir = tmp.path().join("wal");
        let name = "000000010000000000000007";
        let Archived::Copied { size, sha256 } =
            archive_file(&src, name, &dir, 42, Stored::Zstd(3)).unwrap()
        else {
            panic!("not copied")
        };
        let stored = dir.join(format!("{name}.zst"));
        assert!(!dir.join(name).exists());
        let bytes = std::fs::read(&stored).unwrap();
        assert_eq!(
            (size, sha256.clone()),
            (bytes.len() as u64, hex(&Sha256::digest(&bytes)))
        );
        assert!(size < 64 * 1024 / 10, "not compressed: {size}");
        assert_eq!(zstd::decode_all(&bytes[..]).unwrap(), segment(42, 3));
        // Compression turned off meanwhile: the compressed copy still counts.
        assert_eq!(
            archive_file(&src, name, &dir, 42, Stored::Plain).unwrap(),
            Archived::AlreadyThere
        );
        std::fs::write(&src, segment(42, 4)).unwrap();
        assert!(matches!(
            archive_file(&src, name, &dir, 42, Stored::Zstd(3)),
            Err(ArchiveError::Conflict { .. })
        ));
        let manifest = std::fs::read_to_string(dir.join(MANIFEST)).unwrap();
        assert_eq!(manifest.lines().count(), 2);
        assert!(manifest
            .lines()
            .all(|l| l.contains(&format!("\"file\":\"{name}.zst\"")) && l.contains(&sha256)));
        // Another cluster's segment is refused before anything is kept.
        let other = tmp.path().join("000000010000000000000008");
        std::fs::write(&other, segment(99, 1)).unwrap();
        assert!(matches!(
            archive_file(
                &other,
                "000000010000000000000008",
                &dir,
                42,
                Stored::Zstd(3)
            ),
            Err(ArchiveError::OtherCluster { .. })
        ));
        assert!(!dir.join("000000010000000000000008.zst").exists());
    }

    /// The threaded copy and the inline fallback write and hash the same bytes, over several
    /// chunks and a short last one, and both show the first chunk to the head check.
    #[test]
    fn threaded_and_inline_copies_agree() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let data: Vec<u8> = (0..(5 * CHUNK / 2)).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let expected = hex(&Sha256::digest(&data));
        let refuse = |head: &[u8]| {
            if head[0] == 0 {
                Err(ArchiveError::BadName("head seen".into()))
            } else {
                Ok(())
            }
        };
        for threaded in [true, false] {
            let dst = tmp.path().join(format!("dst-{threaded}"));
            let mut input = File::open(&src).unwrap();
            let mut out = File::create(&dst).unwrap();
            let accept = |_: &[u8]| Ok(());
            let got = if threaded {
                copy_hashing(&mut input, &mut out, &src, &dst, &accept).unwrap()
            } else {
                copy_hashing_inline(&mut input, &mut out, &src, &dst, &accept, &mut Vec::new())
                    .unwrap()
            };
            assert_eq!(got, (data.len() as u64, expected.clone()));
            assert_eq!(std::fs::read(&dst).unwrap(), data);
            let mut input = File::open(&src).unwrap();
            let e = if threaded {
                copy_hashing(&mut input, &mut out, &src, &dst, &refuse).unwrap_err()
            } else {
                copy_hashing_inline(&mut input, &mut out, &src, &dst, &refuse, &mut Vec::new())
                    .unwrap_err()
            };
            assert!(e.to_string().contains("head seen"), "{e}");
        }
    }

    #[test]
    fn only_wal_names_are_archived() {
        assert!(valid_name("000000010000000000000003"));
        assert!(valid_name("00000002.history"));
        assert!(valid_name("000000010000000000000003.partial"));
        assert!(valid_name("000000010000000000000003.00000028.backup"));
        assert!(!valid_name("../etc/passwd"));
        assert!(!valid_name("00000001000000000000000G"));
        assert!(!valid_name(""));
    }
}

/// Timeline and segment number of a WAL segment name (16 MB segments: 256 per log file).
pub fn segment_position(name: &str) -> Option<(i32, i64)> {
    if name.len() != 24 || !valid_name(name) {
        return None;
    }
    let tli = i64::from_str_radix(&name[0..8], 16).ok()?;
    let log = i64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = i64::from_str_radix(&name[16..24], 16).ok()?;
    Some((tli as i32, log * 256 + seg))
}

/// One line of an archive manifest.
#[derive(Debug, serde::Deserialize)]
pub struct ManifestLine {
    pub name: String,
    /// The name it is stored under (`name` or `name.zst`); older lines have none.
    #[serde(default)]
    pub file: Option<String>,
    pub size: i64,
    pub sha256: String,
    pub archived_at: String,
}

/// The worker's side: reads what the archive module appended to each archive directory's
/// manifest since the last look, and records it in `backup_management.wal_archive`.
#[derive(Default)]
pub struct Ingest {
    /// Bytes of each manifest already ingested.
    offsets: std::collections::HashMap<PathBuf, u64>,
    last: crate::worker::Throttle,
}

impl Ingest {
    pub fn tick(&mut self) {
        if !self.last.ready(std::time::Duration::from_secs(5)) {
            return;
        }
        let Ok(roots) = crate::guc::backup_roots() else {
            return;
        };
        for root in roots {
            let Ok(clusters) = fs::read_dir(root.join("wal")) else {
                continue;
            };
            for cluster in clusters.filter_map(Result::ok) {
                let dir = cluster.path();
                let Some(sysid) = dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                self.ingest_dir(&dir, sysid);
            }
        }
    }

    fn ingest_dir(&mut self, dir: &Path, sysid: u64) {
        let manifest = dir.join(MANIFEST);
        let offset = self.offsets.get(&manifest).copied().unwrap_or(0);
        let Ok(mut f) = File::open(&manifest) else {
            return;
        };
        let mut text = String::new();
        use std::io::Seek;
        if f.seek(io::SeekFrom::Start(offset)).is_err() || f.read_to_string(&mut text).is_err() {
            return;
        }
        // Only whole lines: the archiver may be appending right now.
        let Some(end) = text.rfind('\n') else {
            return;
        };
        let lines: Vec<ManifestLine> = text[..end]
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let dir_text = dir.to_string_lossy().into_owned();
        let stored = crate::worker::in_transaction("recording archived WAL", || {
            pgrx::Spi::connect_mut(|c| {
                for l in &lines {
                    let position = segment_position(&l.name);
                    // Only the names the archive module writes: the WAL name, or it plus `.zst`.
                    let file = match l.file.as_deref() {
                        None => l.name.clone(),
                        Some(f) if f == l.name || f == format!("{}.zst", l.name) => f.to_owned(),
                        Some(_) => continue,
                    };
                    let path = format!("{dir_text}/{file}");
                    c.update(
                        "INSERT INTO backup_management.wal_archive \
                             (system_identifier, file_name, timeline_id, segment_number, file_path, \
                              file_size, checksum, archived_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::timestamptz) \
                         ON CONFLICT (system_identifier, file_name) DO NOTHING",
                        None,
                        &[
                            (sysid as i64).into(),
                            l.name.as_str().into(),
                            position.map(|p| p.0).into(),
                            position.map(|p| p.1).into(),
                            path.as_str().into(),
                            l.size.into(),
                            l.sha256.as_str().into(),
                            l.archived_at.as_str().into(),
                        ],
                    )?;
                }
                Ok::<(), pgrx::spi::SpiError>(())
            })
            .map_err(|e| e.to_string())
        });
        if stored.is_some() {
            self.offsets.insert(manifest, offset + end as u64 + 1);
            if !lines.is_empty() {
                crate::mirror::refresh();
            }
        }
    }
}

#[cfg(test)]
mod positions {
    #[test]
    fn segment_names_map_to_positions() {
        assert_eq!(
            super::segment_position("00000001000000020000000A"),
            Some((1, 2 * 256 + 10))
        );
        assert_eq!(super::segment_position("00000002.history"), None);
    }
}
