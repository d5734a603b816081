//! Durable files: the one way backup_mgmt writes a file or a directory that must survive a crash
//! whole or not at all.
//!
//! A file is written under a temporary name, fsynced, moved to its name, and its directory
//! fsynced; only then does it exist under its name.  A name without the temporary mark is
//! therefore always complete, and a crash leaves at most a temporary file (which the next
//! attempt, or the worker's start-up, removes).  Installing never replaces an existing file
//! unless the caller says so (`Install::Replace`, for a file that is rewritten as a whole, like
//! the catalog mirror): link(2) and renameat2(RENAME_NOREPLACE) fail when the name exists, with
//! no window between a check and the move.
//!
//! Temporary names: `<name>.partial` (backups: visible, and what the worker's crash recovery
//! looks for), or `.<name>.tmp` in the WAL archive, where `<segment>.partial` is itself a name
//! PostgreSQL archives (the end of a timeline), or `.<name>.<pid>-<n>.tmp` on a filesystem
//! target, which several writers may fill at once: a crash leaves that one behind (hidden,
//! never read as the file) rather than risk removing another writer's.

use std::ffi::{CStr, CString};
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::files::error::{Context, IoError};
use crate::paths::with_suffix;

/// How a temporary file is named beside its final name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temp {
    /// `<name>.partial`.
    Suffix,
    /// `.<name>.tmp` (hidden; for directories where `.partial` names are real files).
    Hidden,
    /// `.<name>.<pid>-<n>.tmp`, a name no other writer uses: for a place several writers may
    /// fill at once under the same final name (off-site targets configured once per database
    /// at one place), where a shared temporary name would let one writer remove the other's
    /// file and install a half-written one.  Never treated as stale: a crash leaves it behind,
    /// hidden and never read as the file.
    Unique,
}

/// What installing does when the final name already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Install {
    /// Fail with `AlreadyExists`: a backup or an archived file is never overwritten.
    NoReplace,
    /// Replace it atomically (a file that is always rewritten whole).
    Replace,
}

/// `<path>.partial`: where a backup is written until it is complete.
pub fn partial_path(path: &Path) -> PathBuf {
    with_suffix(path, ".partial")
}

/// The temporary name of `target` in the given style.
pub fn temp_path(target: &Path, style: Temp) -> PathBuf {
    match style {
        Temp::Suffix => partial_path(target),
        Temp::Hidden | Temp::Unique => {
            let name = target
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if style == Temp::Hidden {
                return target.with_file_name(format!(".{name}.tmp"));
            }
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            target.with_file_name(format!(".{name}.{}-{n}.tmp", std::process::id()))
        }
    }
}

/// fsync a directory, so that names created, renamed or removed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), IoError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .at("could not fsync directory", dir)
}

/// fsync the directory holding `path`.
pub fn sync_parent(path: &Path) -> Result<(), IoError> {
    sync_dir(path.parent().unwrap_or(Path::new("/")))
}

/// Creates `dir` (and, with `recursive`, its missing parents) with mode 0700; an existing
/// directory is fine.  The new directory's parent is fsynced, so the name survives a crash.
pub fn create_private_dir(dir: &Path, recursive: bool) -> Result<(), IoError> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(recursive)
        .mode(0o700)
        .create(dir)
        .at("could not create directory", dir)?;
    sync_parent(dir)
}

/// Creates `dir` with mode 0700 where nothing has its name yet (exclusively: what a failure
/// removes afterwards is only ever the caller's), and fsyncs its parent; when that fsync fails
/// the directory is removed again (as `Root::create_dir_exclusive` does), so an error always
/// means nothing was made.
pub fn create_new_private_dir(dir: &Path) -> Result<(), IoError> {
    DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .at("could not create directory", dir)?;
    sync_parent(dir).inspect_err(|_| {
        let _ = std::fs::remove_dir(dir);
    })
}

/// Creates a new file with mode 0600 that must not exist yet, never through a symlink.
pub fn create_new(path: &Path) -> Result<File, IoError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .at("could not create", path)
}

/// A file being written whose bytes are handed to the kernel's writeback as they come
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, as PostgreSQL's `pg_flush_data`), every
/// `WRITE_BEHIND` bytes and at the end.  Without it, hundreds of megabytes stay dirty in the page
/// cache (far below the kernel's own writeback thresholds on a large machine) until the final
/// `sync_filesystem`, which then writes them all while nothing else happens; with it the disk
/// works while the next files are fetched and decompressed.  Only a hint: durability still comes
/// from the fsync or syncfs that follows, which reports any write error.
pub struct WriteBehind {
    file: File,
    written: u64,
    handed: u64,
}

/// How many written bytes are handed to writeback at once.
pub(crate) const WRITE_BEHIND: u64 = 4 << 20;

impl WriteBehind {
    pub fn new(file: File) -> WriteBehind {
        WriteBehind {
            file,
            written: 0,
            handed: 0,
        }
    }

    /// The file being written.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn hand_over(&mut self) {
        start_writeback(&self.file, self.handed, self.written - self.handed);
        self.handed = self.written;
    }
}

/// Starts writeback of `len` bytes of `file` from `offset` (`sync_file_range(SYNC_FILE_RANGE_WRITE)`):
/// a hint, whose result is ignored on purpose; the later fsync/syncfs reports real failures.
pub(crate) fn start_writeback(file: &File, offset: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    if len == 0 {
        return;
    }
    // SAFETY: the descriptor is open and owned by `file`; the call only starts writeback of
    // pages already written and touches no memory of ours.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Writes back `len` bytes of `file` from `offset` and waits until the device has them
/// (`sync_file_range` with both waits): how long writing through the page cache really takes,
/// which `files::direct::Pace` measures.  Not durability (no metadata, no device cache flush).
pub(crate) fn wait_writeback(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return Err(io::ErrorKind::InvalidInput.into());
    };
    let how = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: the descriptor is open and owned by `file`; the call writes back pages already
    // written and touches no memory of ours.
    if unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, how) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.handed >= WRITE_BEHIND {
            self.hand_over();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for WriteBehind {
    fn drop(&mut self) {
        self.hand_over();
    }
}

/// Flushes the whole filesystem holding `path` (`syncfs`): after a restore has written
/// thousands of files, one call makes them all durable instead of one fsync each.
pub fn sync_filesystem(path: &Path) -> Result<(), IoError> {
    FilesystemSync::open(path)?.sync()
}

/// A descriptor on the filesystem holding `path`, opened before a restore writes and synced
/// (`syncfs`) when it is done.  Linux samples the filesystem's writeback-error state when a
/// descriptor is opened: one opened only at the end could miss an error that early writeback
/// (`WriteBehind`) met and another process's syncfs had already consumed.
pub struct FilesystemSync {
    file: File,
    path: PathBuf,
}

impl FilesystemSync {
    pub fn open(path: &Path) -> Result<FilesystemSync, IoError> {
        Ok(FilesystemSync {
            file: File::open(path).at("could not open", path)?,
            path: path.to_path_buf(),
        })
    }

    /// `syncfs`: every write to the filesystem durable, any writeback error since `open` reported.
    pub fn sync(&self) -> Result<(), IoError> {
        // SAFETY: the descriptor is open and owned by `self.file` for the duration of the call.
        if unsafe { libc::syncfs(self.file.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error())
                .at("could not sync the filesystem of", &self.path);
        }
        Ok(())
    }
}

/// Writes `bytes` into a new file and fsyncs it (inside a directory that is itself installed
/// with `install_dir` later, so needs no name of its own).
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    let mut f = create_new(path)?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .at("could not write", path)
}

/// `renameat2(RENAME_NOREPLACE)` of `from` to `to` in one directory.
fn rename_noreplace_at(dir: &File, from: &CStr, to: &CStr) -> io::Result<()> {
    // SAFETY: two NUL-terminated names relative to a directory descriptor we hold.
    let rc = unsafe {
        libc::renameat2(
            dir.as_raw_fd(),
            from.as_ptr(),
            dir.as_raw_fd(),
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EINVAL) {
        return Err(err);
    }
    // A file system without RENAME_NOREPLACE (some network file systems): the closest
    // equivalent is to check and rename; the worker is the only writer of its backup layout.
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: as above, into a local stat buffer.
    let exists = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            to.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    } == 0;
    if exists {
        return Err(io::Error::from(io::ErrorKind::AlreadyExists));
    }
    // SAFETY: as above.
    cvt(unsafe { libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr()) })
}

fn cvt(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn name_of(path: &Path) -> io::Result<CString> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// The directory holding `path`, opened.
fn parent_dir(path: &Path) -> io::Result<File> {
    File::open(path.parent().unwrap_or(Path::new("/")))
}

/// Installs a complete directory (every file in it already fsynced) under its final name: the
/// directory is fsynced, renamed without replacing anything (both names in one directory), and
/// that directory fsynced.
pub fn install_dir(partial: &Path, target: &Path) -> Result<(), IoError> {
    sync_dir(partial)?;
    rename_new(partial, target)
}

/// Moves what is complete and durable at `from` to `to` in the same directory, never over
/// anything already there, and fsyncs that directory.
pub fn rename_new(from: &Path, to: &Path) -> Result<(), IoError> {
    let parent = parent_dir(to).at("could not open the directory of", to)?;
    let (f, t) = (name_of(from), name_of(to));
    f.and_then(|f| t.map(|t| (f, t)))
        .and_then(|(f, t)| rename_noreplace_at(&parent, &f, &t))
        .at("could not rename into place", from)?;
    parent.sync_all().at("could not fsync directory of", to)
}

/// A file being written durably, every step relative to its opened directory (so a directory
/// renamed or swapped for a symlink meanwhile cannot redirect it).  Dropped without `commit`,
/// its temporary file is removed.
pub struct DurableFile {
    file: Option<File>,
    dir: File,
    temp: CString,
    name: CString,
    temp_path: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl DurableFile {
    /// Starts writing `target`.  A temporary file left by a crash is removed first (only a
    /// regular file: a symlink or directory planted under the name makes creation fail).
    pub fn create(target: &Path, style: Temp) -> Result<DurableFile, IoError> {
        let dir = parent_dir(target).at("could not open the directory of", target)?;
        DurableFile::create_in(dir, target, style)
    }

    /// Starts writing `target` in the already opened directory `dir` (which must be the
    /// directory of `target`; `target` names it in messages).
    pub fn create_in(dir: File, target: &Path, style: Temp) -> Result<DurableFile, IoError> {
        let temp_path = temp_path(target, style);
        let temp = name_of(&temp_path).at("could not name", &temp_path)?;
        let name = name_of(target).at("could not name", target)?;
        let mut st = MaybeUninit::<libc::stat>::uninit();
        // SAFETY: a NUL-terminated name relative to the directory we hold, into a local stat.
        let stale = style != Temp::Unique
            && unsafe {
            libc::fstatat(dir.as_raw_fd(), temp.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW)
        } == 0
            // SAFETY: fstatat succeeded, so the buffer is initialised.
            && (unsafe { st.assume_init() }.st_mode & libc::S_IFMT) == libc::S_IFREG;
        if stale {
            // SAFETY: as above; unlinkat removes the name, never follows it.
            cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), temp.as_ptr(), 0) })
                .at("could not remove", &temp_path)?;
        }
        // SAFETY: as above; O_EXCL|O_NOFOLLOW: a new regular file or nothing.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                temp.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            return Err(IoError::new(
                "could not create",
                &temp_path,
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        let file = unsafe { File::from(OwnedFd::from_raw_fd(fd)) };
        Ok(DurableFile {
            file: Some(file),
            dir,
            temp,
            name,
            temp_path,
            target: target.to_owned(),
            committed: false,
        })
    }

    /// The open temporary file.
    pub fn file(&mut self) -> &mut File {
        // Only `commit` takes the file, and it consumes self.
        self.file.as_mut().expect("DurableFile used after commit")
    }

    /// Where it is being written.
    pub fn temp_path(&self) -> &Path {
        &self.temp_path
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// fsync, move to the final name (never over an existing file with `NoReplace`), fsync the
    /// directory.
    pub fn commit(self, install: Install) -> Result<(), IoError> {
        self.install(install, true)
    }

    /// Moves to the final name without any fsync: whole or absent to every reader, but not
    /// durable.  For a file whose reader copes with its loss after a crash (a WAL file handed to
    /// `restore_command`, which recovery asks for again).
    pub fn commit_atomically(self, install: Install) -> Result<(), IoError> {
        self.install(install, false)
    }

    fn install(mut self, install: Install, sync: bool) -> Result<(), IoError> {
        let file = self.file.take().expect("DurableFile committed twice");
        if sync {
            file.sync_all().at("could not fsync", &self.temp_path)?;
        }
        drop(file);
        let d = self.dir.as_raw_fd();
        match install {
            // link(2) fails if the name appeared meanwhile, even from another process.
            Install::NoReplace => {
                // SAFETY: two NUL-terminated names relative to the directory we hold.
                cvt(unsafe { libc::linkat(d, self.temp.as_ptr(), d, self.name.as_ptr(), 0) })
                    .at("could not link", &self.target)?;
                // SAFETY: as above.
                let _ = unsafe { libc::unlinkat(d, self.temp.as_ptr(), 0) };
            }
            Install::Replace => {
                // SAFETY: as above.
                cvt(unsafe { libc::renameat(d, self.temp.as_ptr(), d, self.name.as_ptr()) })
                    .at("could not rename", &self.temp_path)?
            }
        }
        self.committed = true;
        if !sync {
            return Ok(());
        }
        self.dir
            .sync_all()
            .at("could not fsync directory of", &self.target)
    }
}

impl Write for DurableFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file().write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}

impl Drop for DurableFile {
    fn drop(&mut self) {
        if !self.committed {
            // SAFETY: a NUL-terminated name relative to the directory we hold.
            let _ = unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.temp.as_ptr(), 0) };
        }
    }
}

/// Writes a whole file durably in one go.
pub fn write_file(
    target: &Path,
    bytes: &[u8],
    style: Temp,
    install: Install,
) -> Result<(), IoError> {
    let mut f = DurableFile::create(target, style)?;
    f.write_all(bytes).at("could not write", f.temp_path())?;
    f.commit(install)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Writing behind changes nothing of what is written, in pieces of any size across the
    /// hand-over points.
    #[test]
    fn a_file_written_behind_holds_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rel");
        let data: Vec<u8> = (0..(WRITE_BEHIND as usize * 2 + 777))
            .map(|i| (i % 251) as u8)
            .collect();
        {
            let mut w = WriteBehind::new(create_new(&path).unwrap());
            for piece in data.chunks(65_521) {
                w.write_all(piece).unwrap();
            }
            assert!(w.handed >= WRITE_BEHIND, "never handed to writeback");
        }
        assert!(fs::read(&path).unwrap() == data);
    }

    #[test]
    fn a_file_appears_whole_and_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x.dump");
        let mut f = DurableFile::create(&target, Temp::Suffix).unwrap();
        f.write_all(b"hello").unwrap();
        assert!(!target.exists(), "visible before commit");
        assert!(partial_path(&target).exists());
        f.commit(Install::NoReplace).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"hello");
        assert!(!partial_path(&target).exists());

        // An existing file is never replaced, and the attempt leaves nothing behind.
        let mut again = DurableFile::create(&target, Temp::Suffix).unwrap();
        again.write_all(b"other").unwrap();
        let e = again.commit(Install::NoReplace).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&target).unwrap(), b"hello");
        assert!(!partial_path(&target).exists());

        // Replace rewrites it whole.
        write_file(&target, b"new", Temp::Hidden, Install::Replace).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert!(!dir.path().join(".x.dump.tmp").exists());
    }

    #[test]
    fn dropped_without_commit_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("seg");
        {
            let mut f = DurableFile::create(&target, Temp::Hidden).unwrap();
            f.write_all(b"half").unwrap();
            assert!(dir.path().join(".seg.tmp").exists());
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// Two writers of one name at once (targets configured per database at one place): with
    /// unique temporary names neither removes the other's file, each installs only its own
    /// whole file, and a half-written one is never installed.
    #[test]
    fn writers_of_one_name_at_once_never_install_each_others_half_written_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("catalog_mirror.json");
        let mut a = DurableFile::create(&target, Temp::Unique).unwrap();
        a.write_all(b"whole mirror A").unwrap();
        let mut b = DurableFile::create(&target, Temp::Unique).unwrap();
        assert_ne!(a.temp_path(), b.temp_path());
        b.write_all(b"whole mir").unwrap();
        a.commit(Install::Replace).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"whole mirror A");
        b.write_all(b"ror B").unwrap();
        b.commit(Install::Replace).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"whole mirror B");
        // Never replaced: the second writer of a WAL file finds the first's.
        let wal = dir.path().join("000000010000000000000001");
        let mut a = DurableFile::create(&wal, Temp::Unique).unwrap();
        let mut b = DurableFile::create(&wal, Temp::Unique).unwrap();
        a.write_all(b"segment").unwrap();
        b.write_all(b"segment").unwrap();
        a.commit(Install::NoReplace).unwrap();
        let e = b.commit(Install::NoReplace).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }

    #[test]
    fn a_stale_temp_file_is_replaced_but_a_planted_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x");
        fs::write(partial_path(&target), b"left by a crash").unwrap();
        write_file(&target, b"ok", Temp::Suffix, Install::NoReplace).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"ok");

        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        fs::write(&victim, b"untouched").unwrap();
        let other = dir.path().join("y");
        std::os::unix::fs::symlink(&victim, partial_path(&other)).unwrap();
        assert!(DurableFile::create(&other, Temp::Suffix).is_err());
        assert_eq!(fs::read(&victim).unwrap(), b"untouched");
    }

    #[test]
    fn directories_install_without_replacing() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("b.native.partial");
        create_private_dir(&partial, false).unwrap();
        write_new(&partial.join("f"), b"1").unwrap();
        let target = dir.path().join("b.native");
        install_dir(&partial, &target).unwrap();
        assert_eq!(fs::read(target.join("f")).unwrap(), b"1");

        let second = dir.path().join("c.partial");
        create_private_dir(&second, false).unwrap();
        let e = install_dir(&second, &target).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert!(target.join("f").exists());
    }
}
