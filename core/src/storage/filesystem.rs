//! A filesystem target: a directory (inside the backup roots), such as an NFS mount or a second
//! disk.  Each copy is a `DurableFile` hashed as it is written, then read back and hashed again.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::{open_local, Copied, Storage, StorageError};
use crate::files::beneath::{entries_of, open_file_at, remove_at, remove_file_at, Kind, Root};
use crate::files::durable::{self, DurableFile, Install, Temp};
use crate::files::error::IoError;
use crate::stream::{self, Hash};

/// Copy chunk (buffers are allocated once per copy).
const CHUNK: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct FilesystemTarget {
    pub dir: PathBuf,
    /// The target's bandwidth limit (`options.max_rate_mb`), shared by its copies in flight.
    pub rate: Option<std::sync::Arc<stream::RateLimit>>,
}

impl FilesystemTarget {
    fn path_of(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// The directory `key` goes in, opened beneath the target's directory and created there
    /// (mode 0700) where missing, never through a symlink: what else is on the target may be
    /// anyone's (an NFS server's), so a `<cluster>/.wal` planted as a symlink to pg_wal or to an
    /// archive is refused rather than written through.  The target's own directory is
    /// configuration (inside the backup roots) and is created by path.
    fn dir_for(&self, key: &str) -> Result<(fs::File, PathBuf), StorageError> {
        let key = super::plain_key(key)?;
        let dest = self.path_of(key);
        durable::create_private_dir(&self.dir, true)?;
        let fail = |e| IoError::new("could not create the directory of", &dest, e);
        let root = Root::open(&self.dir).map_err(fail)?;
        let dir = root
            .create_dir_all(Path::new(key).parent().unwrap_or(Path::new("")))
            .map_err(fail)?;
        Ok((dir, dest))
    }

    /// The target's directory opened as the root of every listing, or None while it does not
    /// exist yet (nothing was copied).
    fn root_if_any(&self) -> Result<Option<Root>, StorageError> {
        match Root::open(&self.dir) {
            Ok(root) => Ok(Some(root)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(IoError::new("could not open", &self.dir, e).into()),
        }
    }

    /// The directory holding `key` (a plain key), opened beneath the target's directory without
    /// following a symlink, and the key's last component: where reads and removals start.
    fn parent_beneath<'k>(&self, key: &'k str) -> io::Result<(fs::File, &'k std::ffi::OsStr)> {
        let rel = Path::new(key);
        let dir = Root::open(&self.dir)?.open_dir(rel.parent().unwrap_or(Path::new("")))?;
        Ok((dir, rel.file_name().unwrap_or_default()))
    }

    /// The regular file under `key`, opened beneath the target's directory without following
    /// a symlink on the way or at the end.
    fn open_beneath(&self, key: &str) -> Result<fs::File, StorageError> {
        let key = super::plain_key(key)?;
        let path = self.path_of(key);
        let fail = |e| IoError::new("could not open", &path, e);
        let (dir, name) = self.parent_beneath(key).map_err(fail)?;
        let file = match open_file_at(&dir, name) {
            // A symlink where the object should be is this key's problem, not the target's
            // (a WAL file is held back, the rest of the queue goes on).
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(StorageError::NotAFile(path))
            }
            other => other.map_err(fail)?,
        };
        if !file.metadata().map_err(fail)?.is_file() {
            return Err(StorageError::NotAFile(path));
        }
        Ok(file)
    }

    /// Removes `key` beneath the target's directory handle; a directory with everything below
    /// it only when `tree`.  What is already gone is fine.
    fn remove(&self, key: &str, tree: bool) -> Result<(), StorageError> {
        let key = super::plain_key(key)?;
        let path = self.path_of(key);
        let gone = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
        let fail = |e| StorageError::from(IoError::new("could not remove", &path, e));
        let (dir, name) = match self.parent_beneath(key) {
            Ok(found) => found,
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(fail(e)),
        };
        if tree {
            return remove_at(&dir, name).map(|_| ()).map_err(fail);
        }
        // One unlink, no look first: a name that became a directory meanwhile is refused by
        // the kernel (EISDIR), not removed with what is below it.
        match remove_file_at(&dir, name) {
            Ok(()) => Ok(()),
            Err(e) if gone(&e) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EISDIR) => Err(StorageError::NotAFile(path)),
            Err(e) => Err(fail(e)),
        }
    }

    /// Copies `local` to `key` (durably, never over a different file); an identical copy
    /// already there is success.
    pub fn put(&self, local: &Path, key: &str) -> Result<Copied, StorageError> {
        self.put_from(open_local(local)?, key).map(|(c, _)| c)
    }

    /// The copy, and whether this call created it (false: an identical one was there).
    fn put_from(&self, input: fs::File, key: &str) -> Result<(Copied, bool), StorageError> {
        let mut input = stream::Limited::new(input, self.rate.clone());
        let (dir, dest) = self.dir_for(key)?;
        let mut out = DurableFile::create_in(dir, &dest, Temp::Unique)?;
        let mut chain = Hash::new(out.file());
        let mut buf = vec![0u8; CHUNK];
        let size = stream::pump(&mut input, &mut chain, &mut buf, None)
            .map_err(|e| IoError::new("could not copy to", &dest, io::Error::other(e)))?;
        let copied = Copied {
            size,
            sha256: chain.finish().1,
        };
        match out.commit(Install::NoReplace) {
            Ok(()) => Ok((copied, true)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let there = self.checksum(key)?;
                if there == copied {
                    Ok((copied, false))
                } else {
                    Err(StorageError::Occupied {
                        key: dest.display().to_string(),
                        found: format!("{} bytes, sha256 {}", there.size, there.sha256),
                        ours: copied.sha256,
                    })
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the copy back and returns its size and sha256 (the verification after landing).
    pub fn checksum(&self, key: &str) -> Result<Copied, StorageError> {
        let path = self.path_of(key);
        let mut f = self.open_beneath(key)?;
        let mut buf = vec![0u8; CHUNK];
        let (size, sha256) = stream::hash_all(&mut f, &mut buf, None, None)
            .map_err(|e| IoError::new("could not read", &path, io::Error::other(e)))?;
        Ok(Copied { size, sha256 })
    }
}

impl Storage for FilesystemTarget {
    fn put_opened(&self, file: fs::File, _shown: &Path, key: &str) -> Result<Copied, StorageError> {
        let (copied, created) = self.put_from(file, key)?;
        let landed = self.checksum(key)?;
        if landed != copied {
            // What this call wrote reads back wrong: removed, so that the next try can write
            // it again (a copy is never replaced).
            if created {
                let _ = self.delete_one(key);
            }
            return Err(StorageError::Mismatch {
                expected: copied.sha256,
                found: landed.sha256,
            });
        }
        Ok(landed)
    }

    fn replace(&self, bytes: &[u8], key: &str) -> Result<(), StorageError> {
        let (dir, dest) = self.dir_for(key)?;
        let mut out = DurableFile::create_in(dir, &dest, Temp::Unique)?;
        out.write_all(bytes)
            .map_err(|e| IoError::new("could not write", out.temp_path(), e))?;
        out.commit(Install::Replace)?;
        let landed = self.checksum(key)?;
        let sent = crate::checksum::hex(&<sha2::Sha256 as sha2::Digest>::digest(bytes));
        if landed.sha256 != sent {
            return Err(StorageError::Mismatch {
                expected: sent,
                found: landed.sha256,
            });
        }
        Ok(())
    }

    /// Walks only the directory the prefix names (`<cluster>/.wal/` of one cluster, not the
    /// whole target), beneath the target's directory handle: a symlink planted on the target,
    /// on the way or inside, is neither followed nor listed.
    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let start = prefix.rfind('/').map_or("", |at| &prefix[..at]);
        if !start.is_empty() {
            super::plain_key(start)?;
        }
        let Some(root) = self.root_if_any()? else {
            return Ok(Vec::new());
        };
        let fail = |e| IoError::new("could not list", &self.path_of(start), e);
        // Only the start may be absent; a failure further down (a directory swapped for a
        // symlink during the walk) is an error, not an empty listing.
        match root.open_dir(Path::new(start)) {
            Err(e) if absent(&e) => return Ok(Vec::new()),
            other => drop(other.map_err(fail)?),
        }
        let files = root.files_below(Path::new(start)).map_err(fail)?;
        Ok(files
            .into_iter()
            .filter_map(|p| p.to_str().map(str::to_owned))
            .filter(|k| k.starts_with(prefix))
            .collect())
    }

    /// Opened beneath the target's directory, component by component without following a
    /// symlink (a key is input; so is whatever else was put on the target).
    fn get(&self, key: &str) -> Result<Box<dyn std::io::Read + Send>, StorageError> {
        let file = self.open_beneath(key)?;
        Ok(Box::new(stream::Limited::new(file, self.rate.clone())))
    }

    /// Directories and regular files only, listed beneath the target's directory handle (a
    /// planted `<cluster>` symlink is not a cluster of this target).
    fn children(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let rel = prefix.trim_end_matches('/');
        if !rel.is_empty() {
            super::plain_key(rel)?;
        }
        let Some(root) = self.root_if_any()? else {
            return Ok(Vec::new());
        };
        let fail = |e| IoError::new("could not list", &self.path_of(rel), e);
        let dir = match root.open_dir(Path::new(rel)) {
            Ok(dir) => dir,
            Err(e) if absent(&e) => return Ok(Vec::new()),
            Err(e) => return Err(fail(e).into()),
        };
        let mut names: Vec<String> = entries_of(&dir)
            .map_err(fail)?
            .into_iter()
            .filter(|(_, kind)| *kind != Kind::Other)
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Removes a copy, a directory backup's whole directory.  Keys are made of
    /// percent-encoded components, so the path stays inside `dir`.
    /// Beneath the target's directory, component by component without following a symlink
    /// (a key is input, and what else is on the target may be anyone's): a symlink on the way
    /// is an error, a symlink at the end is removed as itself.
    fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.remove(key, true)
    }

    fn delete_one(&self, key: &str) -> Result<(), StorageError> {
        self.remove(key, false)
    }
}

/// A listing's start that is not there, or is not a directory one may list through (a
/// symlink, a file): nothing below it belongs to the target.
fn absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || matches!(e.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::object_key;

    /// A copy is written beneath the target's directory: a `<cluster>/.wal` planted as a
    /// symlink (to pg_wal, to an archive) is refused and nothing lands past it; a symlink where
    /// the copy would go is not read back as the copy.
    #[test]
    fn copies_are_never_written_through_a_symlink_on_the_target() {
        let tmp = tempfile::tempdir().unwrap();
        let target = FilesystemTarget {
            dir: tmp.path().join("offsite"),
            rate: None,
        };
        let local = tmp.path().join("seg");
        std::fs::write(&local, b"wal bytes").unwrap();
        let outside = tmp.path().join("pg_wal");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::create_dir_all(tmp.path().join("offsite/7")).unwrap();
        std::os::unix::fs::symlink(&outside, tmp.path().join("offsite/7/.wal")).unwrap();
        assert!(target
            .put_file(&local, "7/.wal/000000010000000000000005")
            .is_err());
        assert!(target.replace(b"{}", "7/.wal/mirror.json").is_err());
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // A symlink at the end, to a file with the very bytes: not taken for the copy.
        std::fs::create_dir_all(tmp.path().join("offsite/8/.wal")).unwrap();
        std::fs::write(outside.join("same"), b"wal bytes").unwrap();
        std::os::unix::fs::symlink(
            outside.join("same"),
            tmp.path().join("offsite/8/.wal/000000010000000000000005"),
        )
        .unwrap();
        assert!(matches!(
            target.put_file(&local, "8/.wal/000000010000000000000005"),
            Err(StorageError::NotAFile(_))
        ));
        assert!(matches!(
            target.get("8/.wal/000000010000000000000005"),
            Err(StorageError::NotAFile(_))
        ));
        // Beneath, with nothing planted, both work.
        target
            .put_file(&local, "9/.wal/000000010000000000000005")
            .unwrap();
        target.replace(b"{}", "9/.catalog/mirror.json").unwrap();
        target.replace(b"{ }", "9/.catalog/mirror.json").unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("offsite/9/.catalog/mirror.json")).unwrap(),
            b"{ }"
        );
    }

    /// Listings stay beneath the target's directory: a `<cluster>` or `<cluster>/.wal` planted
    /// as a symlink (to another cluster's archive, to pg_wal) is neither a cluster of the target
    /// nor listed through; a listing walks only the directory its prefix names.
    #[test]
    fn listings_never_follow_a_symlink_on_the_target() {
        let tmp = tempfile::tempdir().unwrap();
        let target = FilesystemTarget {
            dir: tmp.path().join("offsite"),
            rate: None,
        };
        // Nothing copied yet: empty listings, not errors.
        assert!(target.list("").unwrap().is_empty());
        assert!(target.children("").unwrap().is_empty());
        let local = tmp.path().join("seg");
        std::fs::write(&local, b"wal bytes").unwrap();
        target
            .put_file(&local, "7/.wal/000000010000000000000005")
            .unwrap();
        let outside = tmp.path().join("elsewhere");
        std::fs::create_dir_all(outside.join(".wal")).unwrap();
        std::fs::write(outside.join(".wal/000000010000000000000009"), b"x").unwrap();
        let offsite = tmp.path().join("offsite");
        std::os::unix::fs::symlink(&outside, offsite.join("8")).unwrap();
        std::fs::create_dir_all(offsite.join("6")).unwrap();
        std::os::unix::fs::symlink(outside.join(".wal"), offsite.join("6/.wal")).unwrap();
        assert_eq!(target.children("").unwrap(), vec!["6", "7"]);
        assert_eq!(
            target.list("").unwrap(),
            vec!["7/.wal/000000010000000000000005"]
        );
        assert!(target.list("8/.wal/").unwrap().is_empty());
        assert!(target.list("6/.wal/0000").unwrap().is_empty());
        assert!(target.children("8/").unwrap().is_empty());
        assert_eq!(
            target.list("7/.wal/00000001").unwrap(),
            vec!["7/.wal/000000010000000000000005"]
        );
        assert!(target.list("7/.wal/00000002").unwrap().is_empty());
        // A prefix that climbs out is refused, not listed.
        assert!(target.list("../elsewhere/").is_err());
        assert!(target.children("7/../../").is_err());
    }

    /// A key is removed beneath the target's directory: a symlink on the way (planted on the
    /// target to point at pg_wal or an archive) is an error and nothing past it is touched; a
    /// symlink at the end goes as itself; `delete_one` leaves a directory alone.
    #[test]
    fn removal_never_follows_a_symlink_on_the_target() {
        let tmp = tempfile::tempdir().unwrap();
        let target = FilesystemTarget {
            dir: tmp.path().join("offsite"),
            rate: None,
        };
        let outside = tmp.path().join("pg_wal");
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("000000010000000000000005"), b"live wal").unwrap();
        std::fs::create_dir_all(tmp.path().join("offsite/7")).unwrap();
        std::os::unix::fs::symlink(&outside, tmp.path().join("offsite/7/.wal")).unwrap();
        for remove in [FilesystemTarget::delete, FilesystemTarget::delete_one] {
            assert!(remove(&target, "7/.wal/000000010000000000000005").is_err());
            assert!(outside.join("000000010000000000000005").exists());
        }
        target.delete("7/.wal").unwrap();
        assert!(outside.join("000000010000000000000005").exists());
        assert!(!tmp.path().join("offsite/7/.wal").exists());
        std::fs::create_dir_all(tmp.path().join("offsite/7/.wal/sub")).unwrap();
        assert!(matches!(
            target.delete_one("7/.wal/sub"),
            Err(StorageError::NotAFile(_))
        ));
        target.delete_one("7/.wal/gone").unwrap();
        target.delete("7/.wal").unwrap();
        assert!(!tmp.path().join("offsite/7/.wal").exists());
    }

    #[test]
    fn filesystem_copy_is_verified_and_never_replaces_a_different_file() {
        let tmp = tempfile::tempdir().unwrap();
        let local = tmp.path().join("b.dump");
        std::fs::write(&local, vec![7u8; 3 * CHUNK + 5]).unwrap();
        let target = FilesystemTarget {
            dir: tmp.path().join("offsite"),
            rate: None,
        };
        let key = object_key(1, "shop", &local);
        let c = target.put(&local, &key).unwrap();
        assert_eq!(c.size, 3 * CHUNK as u64 + 5);
        assert_eq!(target.checksum(&key).unwrap(), c);
        // Again: identical, success.
        assert_eq!(target.put(&local, &key).unwrap(), c);
        // A different local file under the same key: refused, the copy untouched.
        std::fs::write(&local, b"other").unwrap();
        assert!(matches!(
            target.put(&local, &key),
            Err(StorageError::Occupied { .. })
        ));
        assert_eq!(target.checksum(&key).unwrap(), c);
        // No temporary file left beside the copy; deleting twice is fine.
        let dir = target.path_of(&key).parent().unwrap().to_owned();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        target.delete(&key).unwrap();
        target.delete(&key).unwrap();
        assert!(target.checksum(&key).is_err());
        // A FIFO is never read.
        let fifo = tmp.path().join("fifo");
        let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a NUL-terminated path.
        unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
        assert!(matches!(
            target.put(&fifo, "1/x/fifo"),
            Err(StorageError::NotAFile(_))
        ));
    }
}
