//! A filesystem target: a directory (inside the backup roots), such as an NFS mount or a second
//! disk.  Each copy is a `DurableFile` hashed as it is written, then read back and hashed again.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{open_local, Copied, Storage, StorageError};
use crate::files::beneath::{open_file_at, Root};
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

    /// Copies `local` to `key` (durably, never over a different file); an identical copy
    /// already there is success.
    pub fn put(&self, local: &Path, key: &str) -> Result<Copied, StorageError> {
        self.put_from(open_local(local)?, key).map(|(c, _)| c)
    }

    /// The copy, and whether this call created it (false: an identical one was there).
    fn put_from(&self, input: fs::File, key: &str) -> Result<(Copied, bool), StorageError> {
        let mut input = stream::Limited::new(input, self.rate.clone());
        let dest = self.path_of(key);
        durable::create_private_dir(dest.parent().unwrap_or(&self.dir), true)?;
        let mut out = DurableFile::create(&dest, Temp::Suffix)?;
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
        let mut f = open_local(&path)?;
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
                let _ = fs::remove_file(self.path_of(key));
            }
            return Err(StorageError::Mismatch {
                expected: copied.sha256,
                found: landed.sha256,
            });
        }
        Ok(landed)
    }

    fn replace(&self, bytes: &[u8], key: &str) -> Result<(), StorageError> {
        let dest = self.path_of(key);
        durable::create_private_dir(dest.parent().unwrap_or(&self.dir), true)?;
        durable::write_file(&dest, bytes, Temp::Hidden, Install::Replace)?;
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

    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut files = Vec::new();
        if self.dir.is_dir() {
            super::list_files(&self.dir, Path::new(""), &mut files)?;
        }
        Ok(files
            .into_iter()
            .filter_map(|p| p.to_str().map(str::to_owned))
            .filter(|k| k.starts_with(prefix))
            .collect())
    }

    /// Opened beneath the target's directory, component by component without following a
    /// symlink (a key is input; so is whatever else was put on the target).
    fn get(&self, key: &str) -> Result<Box<dyn std::io::Read + Send>, StorageError> {
        let key = super::plain_key(key)?;
        let path = self.path_of(key);
        let fail = |e| IoError::new("could not open", &path, e);
        let root =
            Root::open(&self.dir).map_err(|e| IoError::new("could not open", &self.dir, e))?;
        let rel = Path::new(key);
        let dir = root
            .open_dir(rel.parent().unwrap_or(Path::new("")))
            .map_err(fail)?;
        let name = rel.file_name().unwrap_or_default();
        let file = open_file_at(&dir, name).map_err(fail)?;
        if !file.metadata().map_err(fail)?.is_file() {
            return Err(StorageError::NotAFile(path));
        }
        Ok(Box::new(stream::Limited::new(file, self.rate.clone())))
    }

    fn children(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let dir = if prefix.is_empty() {
            self.dir.clone()
        } else {
            self.path_of(super::plain_key(prefix.trim_end_matches('/'))?)
        };
        let mut names = Vec::new();
        match fs::read_dir(&dir) {
            Ok(entries) => {
                for e in entries {
                    let e = e.map_err(|e| IoError::new("could not list", &dir, e))?;
                    names.push(e.file_name().to_string_lossy().into_owned());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(IoError::new("could not list", &dir, e).into()),
        }
        names.sort();
        Ok(names)
    }

    /// Removes a copy, a directory backup's whole directory.  Keys are made of
    /// percent-encoded components, so the path stays inside `dir`.
    fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path_of(key);
        let removed = match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        match removed {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(IoError::new("could not remove", &path, e).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::object_key;

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
        // No partial file left; deleting twice is fine.
        assert!(!Path::new(&format!("{}.partial", target.path_of(&key).display())).exists());
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
