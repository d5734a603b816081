//! File operations that resolve beneath an opened root directory, never through a symlink:
//! each path component is opened from its parent's descriptor with `O_NOFOLLOW`, so a symlink
//! planted anywhere below the root (or a directory swapped for one between a check and an act) is
//! refused instead of followed.  Used for everything backup_mgmt creates or deletes under a
//! backup root: output directories, scratch directories (created exclusively), removals.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// What a removal did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    Removed,
    AlreadyGone,
}

fn cstr(name: &std::ffi::OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `openat(dir, name, flags)` as a File: every open beneath a directory descriptor in this
/// module, the flags saying what may be followed, created or blocked on.  What is created is
/// mode 0600 (the mode is read only with `O_CREAT` or `O_TMPFILE`).
fn open_at(dir: &impl AsRawFd, name: &std::ffi::OsStr, flags: libc::c_int) -> io::Result<File> {
    let c = cstr(name)?;
    // SAFETY: a NUL-terminated name relative to a directory descriptor the caller holds; the
    // returned descriptor is owned by the File.
    let rc = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags, 0o600 as libc::c_uint) };
    let fd = check(rc)?;
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { File::from(OwnedFd::from_raw_fd(fd)) })
}

/// Opens directory `name` inside `dir` without following a symlink (a symlink is `ENOTDIR`).
pub fn open_dir_at(dir: &impl AsRawFd, name: &std::ffi::OsStr) -> io::Result<File> {
    open_at(
        dir,
        name,
        libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
    )
}

/// Opens file `name` inside `dir` for reading without following a symlink (`ELOOP`) and without
/// blocking on a FIFO planted under the name.
pub fn open_file_at(dir: &impl AsRawFd, name: &std::ffi::OsStr) -> io::Result<File> {
    open_at(
        dir,
        name,
        libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
    )
}

/// Creates directory `name` (mode 0700) inside `dir`; `AlreadyExists` when anything has the name.
pub fn mkdir_at(dir: &impl AsRawFd, name: &std::ffi::OsStr) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: a NUL-terminated name relative to a directory descriptor we hold.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), 0o700) }).map(|_| ())
}

/// The components of a relative path, each a plain name (no root, `.` or `..`).
fn plain_components(rel: &Path) -> io::Result<Vec<&std::ffi::OsStr>> {
    rel.components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("\"{}\" is not a plain relative path", rel.display()),
            )),
        })
        .collect()
}

/// A backup root, opened: every operation resolves beneath it.
#[derive(Debug)]
pub struct Root {
    dir: File,
    path: PathBuf,
}

impl Root {
    /// Opens `path` (a configured root; a symlink there, e.g. to a mount point, is resolved
    /// once, here).
    pub fn open(path: &Path) -> io::Result<Root> {
        let path = path.canonicalize()?;
        let dir = File::open(&path)?;
        if !dir.metadata()?.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("\"{}\" is not a directory", path.display()),
            ));
        }
        Ok(Root { dir, path })
    }

    /// The root's canonical path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path` relative to the root, when it lies strictly below it (textually: the caller
    /// passes paths built from the root's canonical path).
    pub fn relative<'a>(&self, path: &'a Path) -> Option<&'a Path> {
        path.strip_prefix(&self.path)
            .ok()
            .filter(|r| !r.as_os_str().is_empty())
    }

    /// Opens the directory at `rel`, never through a symlink.
    pub fn open_dir(&self, rel: &Path) -> io::Result<File> {
        let mut dir = self.dir.try_clone()?;
        for name in plain_components(rel)? {
            dir = open_dir_at(&dir, name)?;
        }
        Ok(dir)
    }

    /// Opens the regular file at `rel` for reading, never through a symlink (on the way or at
    /// the end); anything but a regular file is refused.
    pub fn open_file(&self, rel: &Path) -> io::Result<File> {
        let (parent, name) = split(rel)?;
        let file = open_file_at(&self.open_dir(parent)?, name)?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("\"{}\" is not a regular file", rel.display()),
            ));
        }
        Ok(file)
    }

    /// The regular files below the directory `rel` (every level), relative to the root and
    /// sorted, each directory opened from its parent's handle: a symlink, on the way or inside,
    /// is neither followed nor listed, and a directory swapped for one while the walk runs is
    /// refused rather than listed through.
    pub fn files_below(&self, rel: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        walk_files(&self.open_dir(rel)?, rel, &mut out)?;
        out.sort();
        Ok(out)
    }

    /// Creates the directories of `rel` that are missing (mode 0700) and opens the last; a
    /// symlink on the way is refused.  Each new level's parent is fsynced, and a failure to is
    /// an error: a file recorded as written inside must not vanish with its directory.  (A
    /// level found already there is not fsynced again: one whose creation failed so is then
    /// trusted; the cost of an fsync per level per file is not worth that rare case.)
    pub fn create_dir_all(&self, rel: &Path) -> io::Result<File> {
        let mut dir = self.dir.try_clone()?;
        for name in plain_components(rel)? {
            match mkdir_at(&dir, name) {
                Ok(()) => dir.sync_all()?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            dir = open_dir_at(&dir, name)?;
        }
        Ok(dir)
    }

    /// Creates the directory `rel` itself exclusively (its parents as needed): it fails when
    /// anything, a planted symlink included, already has the name.  Returns its path and the
    /// opened directory.
    pub fn create_dir_exclusive(&self, rel: &Path) -> io::Result<(PathBuf, File)> {
        let (parent, name) = split(rel)?;
        let parent_dir = self.create_dir_all(parent)?;
        mkdir_at(&parent_dir, name)?;
        if let Err(e) = parent_dir.sync_all() {
            // Nobody holds it to remove it later, and a retry under the name would fail.
            let _ = remove_at(&parent_dir, name);
            return Err(e);
        }
        let dir = open_dir_at(&parent_dir, name)?;
        Ok((self.path.join(rel), dir))
    }

    /// Removes the file or directory tree at `rel`, never following a symlink (a symlink is
    /// removed itself, not what it points to); what is already gone is fine.
    pub fn remove(&self, rel: &Path) -> io::Result<Removed> {
        let (parent, name) = split(rel)?;
        let parent_dir = match self.open_dir(parent) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Removed::AlreadyGone),
            Err(e) => return Err(e),
        };
        let removed = remove_at(&parent_dir, name)?;
        // Best effort: a removal lost to a crash leaves the file to be removed again, while an
        // error here would report as failed a removal that happened.
        let _ = parent_dir.sync_all();
        Ok(removed)
    }
}

/// A scratch directory: created exclusively (mode 0700) beneath a root, never through a
/// symlink, and removed beneath the root again when dropped (unless kept).  Programs that need a
/// path get `path()`; `verify()` checks, right before such a use, that the path still names the
/// directory created (no component swapped for a symlink since).
#[derive(Debug)]
pub struct ScratchDir {
    root: Root,
    rel: PathBuf,
    path: PathBuf,
    dir: File,
    keep: bool,
}

impl ScratchDir {
    /// Creates `rel` (its parents as needed, none through a symlink) exclusively beneath the
    /// root at `root`.
    pub fn create(root: &Path, rel: &Path) -> io::Result<ScratchDir> {
        let root = Root::open(root)?;
        let (path, dir) = root.create_dir_exclusive(rel)?;
        Ok(ScratchDir {
            root,
            rel: rel.to_owned(),
            path,
            dir,
            keep: false,
        })
    }

    /// The directory's path (the root's canonical path and `rel`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fails unless `path()` still resolves to the directory created.
    pub fn verify(&self) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let held = self.dir.metadata()?;
        let named = std::fs::metadata(&self.path)?;
        if held.dev() == named.dev() && held.ino() == named.ino() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "\"{}\" no longer names the scratch directory created (replaced or swapped for a symlink)",
                self.path.display()
            )))
        }
    }

    /// Creates directory `name` (mode 0700) inside, exclusively; returns its path.
    pub fn create_subdir(&self, name: &str) -> io::Result<PathBuf> {
        let name = std::ffi::OsStr::new(name);
        plain_components(Path::new(name))?;
        mkdir_at(&self.dir, name)?;
        Ok(self.path.join(name))
    }

    /// Creates file `name` (mode 0600) inside, exclusively, never through a symlink.
    pub fn create_file(&self, name: &str) -> io::Result<File> {
        let parts = plain_components(Path::new(name))?;
        if parts.len() != 1 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("\"{name}\" is not a plain file name"),
            ));
        }
        open_at(
            &self.dir,
            std::ffi::OsStr::new(name),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    }

    /// A file inside with no name (read and write, mode 0600): gone when closed, whatever
    /// happens to the process, and nothing another program can open by path meanwhile.
    pub fn unnamed_file(&self) -> io::Result<File> {
        // O_EXCL: it can never be given a name (linkat).
        let e = match open_at(
            &self.dir,
            std::ffi::OsStr::new("."),
            libc::O_TMPFILE | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC,
        ) {
            Ok(file) => return Ok(file),
            Err(e) => e,
        };
        // Only a filesystem (EOPNOTSUPP) or kernel (EISDIR, before 3.11) without O_TMPFILE
        // gets a named file, unlinked at once (the scratch directory's removal takes it if the
        // process dies in between); any other failure is this one's.
        if !matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) {
            return Err(e);
        }
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A dot name and a number no other caller has: a file another program put here under
        // such a name is an EEXIST error, never opened.
        let name = format!(".unnamed-{}-{n}", std::process::id());
        let name = std::ffi::OsStr::new(&name);
        let file = open_at(
            &self.dir,
            name,
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )?;
        remove_file_at(&self.dir, name)?;
        Ok(file)
    }

    /// Leaves the directory in place when dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = self.root.remove(&self.rel);
        }
    }
}

/// A relative path's parent and last component.
fn split(rel: &Path) -> io::Result<(&Path, &std::ffi::OsStr)> {
    let parts = plain_components(rel)?;
    let name = *parts
        .last()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "an empty path"))?;
    Ok((rel.parent().unwrap_or(Path::new("")), name))
}

/// What a directory entry is, never following a symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    /// A symlink, FIFO, socket or device.
    Other,
}

/// The entries of the directory `dir` holds open (not of whatever has its name now), with
/// their kinds.
pub fn entries_of(dir: &File) -> io::Result<Vec<(std::ffi::OsString, Kind)>> {
    // Through /proc the listing is of the directory the handle holds; an entry's type comes
    // from the directory itself (or an lstat beneath it), never from a link's target.
    let listing = format!("/proc/self/fd/{}", dir.as_raw_fd());
    let mut out = Vec::new();
    for e in std::fs::read_dir(&listing)? {
        let e = e?;
        let t = e.file_type()?;
        let kind = if t.is_dir() {
            Kind::Dir
        } else if t.is_file() {
            Kind::File
        } else {
            Kind::Other
        };
        out.push((e.file_name(), kind));
    }
    Ok(out)
}

fn walk_files(dir: &File, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for (name, kind) in entries_of(dir)? {
        match kind {
            Kind::Dir => match open_dir_at(dir, &name) {
                Ok(sub) => walk_files(&sub, &rel.join(&name), out)?,
                // Removed since it was listed: nothing below it to list.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            },
            Kind::File => out.push(rel.join(&name)),
            Kind::Other => {}
        }
    }
    Ok(())
}

/// Whether `name` in `dir` is a directory (not following a symlink); None when it is gone.
fn is_dir_at(dir: &impl AsRawFd, name: &std::ffi::OsStr) -> io::Result<Option<bool>> {
    let c = cstr(name)?;
    // SAFETY: an all-zero stat is a valid value to be overwritten by fstatat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated name relative to a directory we hold, into a local stat.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::NotFound {
            Ok(None)
        } else {
            Err(e)
        };
    }
    Ok(Some((st.st_mode & libc::S_IFMT) == libc::S_IFDIR))
}

/// Removes what is at `path` as `remove_at` does, from a handle on its parent: a directory
/// with everything below it whatever its modes, a symlink as itself.
pub fn remove_path(path: &Path) -> io::Result<Removed> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("\"{}\" has no parent to remove it from", path.display()),
        ));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    remove_at(&File::open(parent)?, name)
}

/// Opens directory `name` in `dir` (never through a symlink) to list and empty it, first giving
/// its owner every right on it when it lacks one: a tar extracted from a backup (input) may
/// leave a directory of mode 000 or 0500, which could otherwise be neither read nor emptied.
fn open_to_empty(dir: &impl AsRawFd, name: &std::ffi::OsStr) -> io::Result<File> {
    // An O_PATH descriptor needs no right on the directory.
    let handle = open_at(
        dir,
        name,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
    )?;
    let proc_path = format!("/proc/self/fd/{}", handle.as_raw_fd());
    let mode = std::fs::metadata(&proc_path)?.permissions().mode();
    if mode & 0o700 != 0o700 {
        // Through /proc, the directory the handle holds is changed, whatever has its name now.
        std::fs::set_permissions(&proc_path, std::fs::Permissions::from_mode(0o700))?;
    }
    open_dir_at(&handle, std::ffi::OsStr::new("."))
}

/// Removes `name` in `dir` when it is not a directory (a symlink as itself); a directory is
/// EISDIR, a name already gone ENOENT.
pub fn remove_file_at(dir: &impl AsRawFd, name: &std::ffi::OsStr) -> io::Result<()> {
    let c = cstr(name)?;
    // SAFETY: a NUL-terminated name relative to a directory we hold; unlinkat without
    // AT_REMOVEDIR never removes a directory and never follows a symlink.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) }).map(|_| ())
}

/// Removes `name` in `dir`: a directory with everything below it (whatever its modes), anything
/// else as itself.
pub fn remove_at(dir: &impl AsRawFd, name: &std::ffi::OsStr) -> io::Result<Removed> {
    let Some(is_dir) = is_dir_at(dir, name)? else {
        return Ok(Removed::AlreadyGone);
    };
    let c = cstr(name)?;
    if is_dir {
        let sub = open_to_empty(dir, name)?;
        for (n, _) in entries_of(&sub)? {
            remove_at(&sub, &n)?;
        }
        // SAFETY: a NUL-terminated name relative to a directory we hold.
        check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) })?;
    } else {
        // SAFETY: as above; unlinkat never follows a symlink, it removes the link.
        check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) })?;
    }
    Ok(Removed::Removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn directories_are_created_beneath_and_never_through_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = Root::open(tmp.path()).unwrap();
        root.create_dir_all(Path::new("db/job")).unwrap();
        assert!(tmp.path().join("db/job").is_dir());
        // A symlink planted on the way is refused, and nothing appears outside.
        symlink(outside.path(), tmp.path().join("evil")).unwrap();
        assert!(root.create_dir_all(Path::new("evil/x")).is_err());
        assert!(!outside.path().join("x").exists());
        assert!(root.open_dir(Path::new("evil")).is_err());
        // Exclusive creation refuses what exists, a planted symlink included.
        let (path, _) = root
            .create_dir_exclusive(Path::new(".scratch/1-2"))
            .unwrap();
        assert_eq!(path, root.path().join(".scratch/1-2"));
        assert!(root
            .create_dir_exclusive(Path::new(".scratch/1-2"))
            .is_err());
        symlink(outside.path(), tmp.path().join(".scratch/3-4")).unwrap();
        assert!(root
            .create_dir_exclusive(Path::new(".scratch/3-4"))
            .is_err());
        // `..` never leaves.
        assert!(root.create_dir_all(Path::new("../x")).is_err());
    }

    #[test]
    fn files_are_listed_and_opened_beneath_never_through_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        std::fs::create_dir_all(tmp.path().join("a/b")).unwrap();
        std::fs::write(tmp.path().join("a/b/f"), b"f").unwrap();
        std::fs::write(tmp.path().join("top"), b"t").unwrap();
        symlink(outside.path(), tmp.path().join("a/link")).unwrap();
        symlink(outside.path().join("secret"), tmp.path().join("a/b/s")).unwrap();
        let root = Root::open(tmp.path()).unwrap();
        assert_eq!(
            root.files_below(Path::new("")).unwrap(),
            vec![PathBuf::from("a/b/f"), PathBuf::from("top")]
        );
        assert_eq!(
            root.files_below(Path::new("a")).unwrap(),
            vec![PathBuf::from("a/b/f")]
        );
        assert!(root.files_below(Path::new("a/link")).is_err());
        assert!(root.files_below(Path::new("..")).is_err());
        assert_eq!(
            std::io::read_to_string(root.open_file(Path::new("a/b/f")).unwrap()).unwrap(),
            "f"
        );
        assert!(root.open_file(Path::new("a/b/s")).is_err());
        assert!(root.open_file(Path::new("a/link/secret")).is_err());
        assert!(root.open_file(Path::new("a/b")).is_err());
    }

    #[test]
    fn directories_without_rights_are_removed_and_symlinks_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let locked = tmp.path().join("locked");
        std::fs::create_dir_all(locked.join("sub")).unwrap();
        std::fs::write(locked.join("sub/f"), b"x").unwrap();
        symlink(outside.path(), locked.join("link")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        std::fs::set_permissions(locked.join("sub"), std::fs::Permissions::from_mode(0o500))
            .unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        let top = File::open(tmp.path()).unwrap();
        // Its owner's rights are given back before it is listed (root needs none, so this is
        // what shows it).
        drop(open_to_empty(&top, std::ffi::OsStr::new("locked")).unwrap());
        assert_eq!(mode(&locked), 0o700);
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        remove_at(&top, std::ffi::OsStr::new("locked")).unwrap();
        assert!(!locked.exists());
        // The link was removed, not followed: what it pointed at is untouched.
        assert_eq!(mode(outside.path()), 0o750);
        // A symlink to a directory is never opened as one to be emptied.
        symlink(outside.path(), tmp.path().join("l2")).unwrap();
        assert!(open_to_empty(&top, std::ffi::OsStr::new("l2")).is_err());
    }

    #[test]
    fn scratch_directories_are_exclusive_and_removed_beneath_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        // A planted symlink where the scratch parent would be: refused, nothing written outside.
        symlink(outside.path(), tmp.path().join(".scratch")).unwrap();
        assert!(ScratchDir::create(tmp.path(), Path::new(".scratch/1")).is_err());
        assert!(!outside.path().join("1").exists());
        std::fs::remove_file(tmp.path().join(".scratch")).unwrap();

        let path = {
            let s = ScratchDir::create(tmp.path(), Path::new(".scratch/1")).unwrap();
            s.verify().unwrap();
            let data = s.create_subdir("data").unwrap();
            assert!(data.is_dir());
            std::io::Write::write_all(&mut s.create_file("f").unwrap(), b"x").unwrap();
            assert!(s.create_file("f").is_err(), "files are created exclusively");
            assert!(s.create_file("../g").is_err());
            s.path().to_owned()
        };
        assert!(!path.exists(), "dropped, so removed");

        // Swapped for a symlink after creation: verify() says so, and the drop removes the
        // symlink, not what it points to.
        let s = ScratchDir::create(tmp.path(), Path::new(".scratch/2")).unwrap();
        std::fs::write(outside.path().join("precious"), b"keep").unwrap();
        std::fs::rename(s.path(), tmp.path().join("moved")).unwrap();
        symlink(outside.path(), s.path()).unwrap();
        assert!(s.verify().is_err());
        drop(s);
        assert!(outside.path().join("precious").exists());
    }

    #[test]
    fn removal_never_follows_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("precious"), b"keep").unwrap();
        let root = Root::open(tmp.path()).unwrap();
        root.create_dir_all(Path::new("b/x.dir/sub")).unwrap();
        std::fs::write(tmp.path().join("b/x.dir/sub/f"), b"1").unwrap();
        // A symlink inside the tree to remove points outside: the link goes, its target stays.
        symlink(outside.path(), tmp.path().join("b/x.dir/link")).unwrap();
        assert_eq!(root.remove(Path::new("b/x.dir")).unwrap(), Removed::Removed);
        assert!(!tmp.path().join("b/x.dir").exists());
        assert!(outside.path().join("precious").exists());
        assert_eq!(
            root.remove(Path::new("b/x.dir")).unwrap(),
            Removed::AlreadyGone
        );
        // A parent swapped for a symlink: refused, nothing outside touched.
        std::fs::remove_dir_all(tmp.path().join("b")).unwrap();
        symlink(outside.path(), tmp.path().join("b")).unwrap();
        assert!(root.remove(Path::new("b/precious")).is_err());
        assert!(outside.path().join("precious").exists());
    }

    /// An unnamed file reads back what was written and never shows in its directory.
    #[test]
    fn an_unnamed_file_has_no_name() {
        use std::io::{Read, Seek, Write};
        let tmp = tempfile::tempdir().unwrap();
        let s = ScratchDir::create(tmp.path(), Path::new("s")).unwrap();
        let mut files: Vec<File> = (0..2).map(|_| s.unnamed_file().unwrap()).collect();
        for (i, f) in files.iter_mut().enumerate() {
            write!(f, "file {i}").unwrap();
            f.rewind().unwrap();
        }
        let mut text = String::new();
        files[1].read_to_string(&mut text).unwrap();
        assert_eq!(text, "file 1");
        assert_eq!(std::fs::read_dir(s.path()).unwrap().count(), 0);
    }
}
