//! Off-site copy targets, in plain Rust (no PostgreSQL calls): where a backup goes on a target,
//! how it is copied there durably and verified after it landed, and how a copy is removed.
//!
//! Targets so far: `filesystem` (an NFS mount or a second disk; it must lie inside
//! `backup_mgmt.backup_roots`, like every path backup_mgmt touches).  Object keys start with the
//! cluster's system identifier, so that a fleet of clusters can share one target.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::executor::{hex, path_component};

/// Copy chunk (buffers are allocated once per copy).
const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{action} \"{path}\": {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("\"{0}\" is not a regular file; only single-file backups are copied")]
    NotAFile(PathBuf),
    #[error("the copy on the target differs: sha256 {found}, expected {expected}")]
    Mismatch { expected: String, found: String },
    #[error("{0}")]
    Credential(String),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Http(String),
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> RemoteError + 'a {
    move |source| RemoteError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Where a backup's copy lives on a target: `<system identifier>/<database>/<file name>`, each
/// part percent-encoded so that no name can add a level or climb out.
pub fn object_key(system_identifier: i64, database: &str, local: &Path) -> String {
    let name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(
        "{}/{}/{}",
        system_identifier,
        path_component(database),
        path_component(&name)
    )
}

/// What a copy produced on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub size: u64,
    pub sha256: String,
}

/// Opens a local backup for reading with verification's own opener (no symlink at the end, no
/// FIFO or device: checked on the open descriptor).
pub(crate) fn open_backup(path: &Path) -> Result<File, RemoteError> {
    crate::verify::open_regular(path).map_err(|(reason, why)| match reason {
        crate::verify::Reason::NotRegularFile => RemoteError::NotAFile(path.to_owned()),
        _ => RemoteError::Io {
            action: "could not open",
            path: path.to_owned(),
            source: io::Error::other(why),
        },
    })
}

/// A filesystem target: a directory (inside the backup roots).
#[derive(Debug, Clone)]
pub struct FilesystemTarget {
    pub dir: PathBuf,
}

impl FilesystemTarget {
    fn path_of(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    /// Copies `local` to `key`: a `.partial` file, sha256 while writing, fsync, rename (never
    /// over a different file), directory fsync.  An identical copy already there is success.
    pub fn put(&self, local: &Path, key: &str) -> Result<Copied, RemoteError> {
        let dest = self.path_of(key);
        let parent = dest.parent().unwrap_or(&self.dir).to_owned();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&parent)
            .map_err(io_err("could not create", &parent))?;
        let mut input = open_backup(local)?;
        let partial = PathBuf::from(format!("{}.partial", dest.display()));
        let _ = fs::remove_file(&partial);
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&partial)
            .map_err(io_err("could not create", &partial))?;
        let result = (|| {
            let mut h = Sha256::new();
            let mut size = 0u64;
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_err("could not read", local)(e)),
                };
                out.write_all(&buf[..n])
                    .map_err(io_err("could not write", &partial))?;
                h.update(&buf[..n]);
                size += n as u64;
            }
            out.sync_all()
                .map_err(io_err("could not fsync", &partial))?;
            let copied = Copied {
                size,
                sha256: hex(&h.finalize()),
            };
            if dest.exists() {
                let there = self.checksum(key)?;
                if there != copied {
                    return Err(RemoteError::Mismatch {
                        expected: copied.sha256,
                        found: there.sha256,
                    });
                }
                let _ = fs::remove_file(&partial);
            } else {
                fs::rename(&partial, &dest).map_err(io_err("could not rename", &partial))?;
            }
            File::open(&parent)
                .and_then(|d| d.sync_all())
                .map_err(io_err("could not fsync", &parent))?;
            Ok(copied)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&partial);
        }
        result
    }

    /// Reads the copy back and returns its size and sha256 (the verification after landing).
    pub fn checksum(&self, key: &str) -> Result<Copied, RemoteError> {
        let path = self.path_of(key);
        let mut f = open_backup(&path)?;
        let mut h = Sha256::new();
        let size = io::copy(&mut f, &mut h).map_err(io_err("could not read", &path))?;
        Ok(Copied {
            size,
            sha256: hex(&h.finalize()),
        })
    }

    /// Removes a copy (retention), a directory backup's whole directory; one already gone is
    /// fine.  Keys are made of percent-encoded components, so the path stays inside `dir`.
    pub fn delete(&self, key: &str) -> Result<(), RemoteError> {
        let path = self.path_of(key);
        let removed = match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        match removed {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("could not remove", &path)(e)),
        }
    }
}

/// Every regular file below `dir`, relative to it (symlinks and special files are not followed
/// and not listed; `open_backup` would refuse them anyway).
fn list_files(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), RemoteError> {
    let dir = root.join(rel);
    for e in fs::read_dir(&dir).map_err(io_err("could not list", &dir))? {
        let e = e.map_err(io_err("could not list", &dir))?;
        let kind = e.file_type().map_err(io_err("could not stat", &e.path()))?;
        let path = rel.join(e.file_name());
        if kind.is_dir() {
            list_files(root, &path, out)?;
        } else if kind.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// A configured target.
pub enum Target {
    Filesystem(FilesystemTarget),
    S3(crate::s3::S3Target),
}

impl Target {
    /// Copies `local` to `key` and checks the copy where it landed: the filesystem copy is read
    /// back and hashed; an object's size and server-computed ETag are compared.
    pub fn put_verified(&self, local: &Path, key: &str) -> Result<Copied, RemoteError> {
        if fs::symlink_metadata(local).is_ok_and(|m| m.is_dir()) {
            return self.put_directory(local, key);
        }
        self.put_file(local, key)
    }

    /// A directory backup (pg_dump's directory format, or a native physical backup with its
    /// subdirectories): each file under `<key>/<relative path>`, each verified.  The result's
    /// sha256 is its manifest's, which is what the catalog records for it.
    fn put_directory(&self, local: &Path, key: &str) -> Result<Copied, RemoteError> {
        let mut files = Vec::new();
        list_files(local, Path::new(""), &mut files)?;
        files.sort();
        let mut size = 0u64;
        let mut manifest = None;
        for rel in &files {
            let rel_key: Vec<String> = rel
                .iter()
                .map(|c| path_component(&c.to_string_lossy()))
                .collect();
            let copied =
                self.put_file(&local.join(rel), &format!("{key}/{}", rel_key.join("/")))?;
            size += copied.size;
            let top = rel.to_str().unwrap_or_default();
            if top == crate::executor::DIRECTORY_MANIFEST || top == crate::native::FILES_MANIFEST {
                manifest = Some(copied.sha256);
            }
        }
        let sha256 = manifest.ok_or_else(|| {
            RemoteError::NotAFile(local.join(crate::executor::DIRECTORY_MANIFEST))
        })?;
        Ok(Copied { size, sha256 })
    }

    fn put_file(&self, local: &Path, key: &str) -> Result<Copied, RemoteError> {
        match self {
            Target::Filesystem(t) => {
                let copied = t.put(local, key)?;
                let landed = t.checksum(key)?;
                if landed != copied {
                    return Err(RemoteError::Mismatch {
                        expected: copied.sha256,
                        found: landed.sha256,
                    });
                }
                Ok(landed)
            }
            Target::S3(t) => {
                let (copied, etag) = t.put(local, key)?;
                t.verify(key, copied.size, &etag)?;
                Ok(copied)
            }
        }
    }

    /// Removes a copy, a directory backup's files included.
    pub fn delete(&self, key: &str) -> Result<(), RemoteError> {
        match self {
            Target::Filesystem(t) => t.delete(key),
            Target::S3(t) => {
                for object in t.list(&format!("{key}/"))? {
                    t.delete(&object)?;
                }
                t.delete(key)
            }
        }
    }

    /// Before a run: creates the bucket when the target asks for it.
    pub fn prepare(&self) -> Result<(), RemoteError> {
        match self {
            Target::S3(t) if t.create_bucket => t.ensure_bucket(),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn directory_backups_are_copied_file_by_file() {
        let tmp = tempfile::tempdir().unwrap();
        let local = tmp.path().join("b.dir");
        std::fs::create_dir(&local).unwrap();
        std::fs::write(local.join("toc.dat.zst"), b"toc").unwrap();
        std::fs::write(local.join("3001.dat.zst"), vec![1u8; 5000]).unwrap();
        let manifest = b"aa  toc.dat.zst\n";
        std::fs::write(local.join(crate::executor::DIRECTORY_MANIFEST), manifest).unwrap();
        let target = Target::Filesystem(FilesystemTarget {
            dir: tmp.path().join("offsite"),
        });
        let key = object_key(1, "shop", &local);
        let c = target.put_verified(&local, &key).unwrap();
        assert_eq!(c.size, 3 + 5000 + manifest.len() as u64);
        assert_eq!(c.sha256, hex(&Sha256::digest(manifest)));
        let copy = tmp.path().join("offsite").join(&key);
        assert_eq!(
            std::fs::read(copy.join("3001.dat.zst")).unwrap(),
            vec![1u8; 5000]
        );
        // Without its manifest a directory is not a backup.
        std::fs::remove_file(local.join(crate::executor::DIRECTORY_MANIFEST)).unwrap();
        assert!(target
            .put_verified(&local, &object_key(1, "shop", Path::new("/x/c.dir")))
            .is_err());
        target.delete(&key).unwrap();
        assert!(!copy.exists());

        // A native physical backup: nested directories, its chain manifest as the checksum.
        let native = tmp.path().join("n.native");
        std::fs::create_dir_all(native.join("data/base/5")).unwrap();
        std::fs::write(native.join("data/base/5/16384.zst"), b"rel").unwrap();
        std::fs::write(native.join("backup_manifest"), b"{}").unwrap();
        let chain = b"# backup_mgmt native physical backup 1; parent none\n";
        std::fs::write(native.join(crate::native::FILES_MANIFEST), chain).unwrap();
        let key = object_key(1, "postgres", &native);
        let c = target.put_verified(&native, &key).unwrap();
        assert_eq!(c.sha256, hex(&Sha256::digest(chain)));
        let copy = tmp.path().join("offsite").join(&key);
        assert_eq!(
            std::fs::read(copy.join("data/base/5/16384.zst")).unwrap(),
            b"rel"
        );
        target.delete(&key).unwrap();
        assert!(!copy.exists());
    }

    #[test]
    fn keys_are_per_cluster_and_cannot_climb_out() {
        assert_eq!(
            object_key(
                7,
                "shop",
                Path::new("/b/shop/nightly/20261127T010000Z-4.dump.zst")
            ),
            "7/shop/20261127T010000Z-4.dump.zst"
        );
        let k = object_key(7, "../etc", Path::new("/b/x/../passwd"));
        assert!(!k.split('/').any(|p| p == ".."), "{k}");
    }

    #[test]
    fn filesystem_copy_is_verified_and_never_replaces_a_different_file() {
        let tmp = tempfile::tempdir().unwrap();
        let local = tmp.path().join("b.dump");
        std::fs::write(&local, vec![7u8; 3 * CHUNK + 5]).unwrap();
        let target = FilesystemTarget {
            dir: tmp.path().join("offsite"),
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
            Err(RemoteError::Mismatch { .. })
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
        unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
        assert!(matches!(
            target.put(&fifo, "1/x/fifo"),
            Err(RemoteError::NotAFile(_))
        ));
    }
}
