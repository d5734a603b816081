//! Setting aside what occupies a WAL file's key on a target.  A copy is never replaced, so when a
//! target holds different bytes under an archived file's name (a second cluster with the same
//! system identifier wrote there, a copy restored from elsewhere) the extension's copy of that
//! file fails every time, and off-site recovery stops short of it.  Once the operator has looked,
//! the occupant is moved to `<system identifier>/.set-aside/<stored name>.<UTC time>`: copied,
//! checked where it landed, and only then removed from its key, so nothing is lost and the
//! extension's next try lands.  A restore never reads `.set-aside`.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::Path;

use crate::files::error::IoError;
use crate::storage::{wal_key, Storage, StorageError, WAL_DIR};
use crate::stream::Hash;
use crate::wal::is_archivable_name;

/// The level under a cluster's prefix that holds what was set aside (a leading dot, like
/// `.wal`: no database's copies can land there).
pub const SET_ASIDE_DIR: &str = ".set-aside";

/// What was moved, from where to where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    pub key: String,
    pub to: String,
    pub size: u64,
    pub sha256: String,
}

/// The key of archived WAL file `name` of cluster `system_identifier` on `target`: `name` as
/// PostgreSQL names it (its copy may be stored compressed, `.zst`) or as stored.  None when the
/// target holds neither; a name that is not a WAL file's is refused.
pub fn wal_occupant(
    target: &dyn Storage,
    system_identifier: i64,
    name: &str,
) -> Result<Option<String>, StorageError> {
    let base = name.strip_suffix(".zst").unwrap_or(name);
    if !is_archivable_name(base) {
        return Err(StorageError::Config(format!(
            "\"{name}\" is not the name of an archived WAL file (a segment, a .partial, a \
             .history or a .backup file, as PostgreSQL names it, optionally with .zst)"
        )));
    }
    let wanted: Vec<String> = if base == name {
        vec![
            wal_key(system_identifier, name),
            wal_key(system_identifier, &format!("{name}.zst")),
        ]
    } else {
        vec![wal_key(system_identifier, name)]
    };
    let mut found: Vec<String> = target
        .list(&format!("{system_identifier}/{WAL_DIR}/{base}"))?
        .into_iter()
        .filter(|k| wanted.contains(k))
        .collect();
    found.sort();
    found.dedup();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(StorageError::Config(format!(
            "the target holds both {} and {}: name the one to set aside",
            found[0], found[1]
        ))),
    }
}

/// Where the occupant of `key` (a WAL key of cluster `system_identifier`) goes when set aside
/// at `stamp` (UTC, `YYYYMMDDTHHMMSSZ`).
pub fn aside_key(system_identifier: i64, key: &str, stamp: &str) -> String {
    let stored = key.rsplit('/').next().unwrap_or(key);
    format!("{system_identifier}/{SET_ASIDE_DIR}/{stored}.{stamp}")
}

/// Why an object was not set aside.  Until the last step nothing has left its key.
#[derive(Debug, thiserror::Error)]
pub enum SetAsideError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{key} is larger than {limit} bytes, more than any WAL file: not set aside (look at it by hand)")]
    TooLarge { key: String, limit: u64 },
    #[error("{key} is this cluster's own copy (sha256 {sha256}, as the catalog mirror lists it): nothing to set aside")]
    OwnCopy { key: String, sha256: String },
    #[error("{key} changed while it was set aside (read sha256 {read}, now {now}); it was left under its key, and the copy in {to} kept")]
    Changed {
        key: String,
        to: String,
        read: String,
        now: String,
    },
}

/// The largest object set aside: a WAL segment is at most 1 GiB, its zstd frame a little more.
pub const SPOOL_LIMIT: u64 = (1 << 30) + (1 << 24);

/// Moves the object under `key` to `to`: read into `spool` (an unlinked temporary file, at most
/// `SPOOL_LIMIT` bytes) while hashed; refused when its sha256 is `own` (what the catalog mirror
/// lists for the key: this cluster's own copy); stored under `to` (never over a different
/// object) and checked there; read again under `key` and removed from it only if it is still
/// the same object (another run, or the worker, may have changed the key meanwhile), and only
/// that one object.  A failure leaves the object under its key.
pub fn set_aside(
    target: &dyn Storage,
    key: &str,
    to: &str,
    own: Option<&str>,
    spool: File,
) -> Result<SetAside, SetAsideError> {
    let shown = Path::new(key);
    let read = |e| StorageError::from(IoError::new("could not read", shown, e));
    let mut hashed = Hash::new(spool);
    let size = io::copy(&mut target.get(key)?.take(SPOOL_LIMIT + 1), &mut hashed).map_err(read)?;
    if size > SPOOL_LIMIT {
        return Err(SetAsideError::TooLarge {
            key: key.to_owned(),
            limit: SPOOL_LIMIT,
        });
    }
    let (mut spool, sha256) = hashed.finish();
    if own == Some(sha256.as_str()) {
        return Err(SetAsideError::OwnCopy {
            key: key.to_owned(),
            sha256,
        });
    }
    spool
        .rewind()
        .map_err(|e| IoError::new("could not rewind the copy of", shown, e))
        .map_err(StorageError::from)?;
    let landed = target.put_opened(spool, shown, to)?;
    if landed.sha256 != sha256 || landed.size != size {
        return Err(StorageError::Mismatch {
            expected: sha256,
            found: landed.sha256,
        }
        .into());
    }
    let mut again = Hash::new(io::sink());
    io::copy(&mut target.get(key)?.take(SPOOL_LIMIT + 1), &mut again).map_err(read)?;
    let (_, now) = again.finish();
    if now != sha256 {
        return Err(SetAsideError::Changed {
            key: key.to_owned(),
            to: to.to_owned(),
            read: sha256,
            now,
        });
    }
    target.delete_one(key)?;
    Ok(SetAside {
        key: key.to_owned(),
        to: to.to_owned(),
        size,
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::filesystem::FilesystemTarget;

    #[test]
    fn an_occupant_is_kept_aside_and_its_key_freed() {
        let tmp = tempfile::tempdir().unwrap();
        let target = FilesystemTarget {
            dir: tmp.path().join("offsite"),
            rate: None,
        };
        let seg = "000000010000000000000005";
        let local = tmp.path().join("theirs");
        std::fs::write(&local, b"their bytes").unwrap();
        let key = wal_key(7, &format!("{seg}.zst"));
        target.put_file(&local, &key).unwrap();
        // Named as PostgreSQL names it or as stored; another cluster's or a missing one is None.
        assert_eq!(wal_occupant(&target, 7, seg).unwrap(), Some(key.clone()));
        assert_eq!(
            wal_occupant(&target, 7, &format!("{seg}.zst")).unwrap(),
            Some(key.clone())
        );
        assert_eq!(wal_occupant(&target, 8, seg).unwrap(), None);
        assert_eq!(
            wal_occupant(&target, 7, "000000010000000000000006").unwrap(),
            None
        );
        for bad in [
            "../../etc/passwd",
            "catalog_mirror.json",
            "",
            "0000000100000000000000050",
        ] {
            assert!(
                matches!(wal_occupant(&target, 7, bad), Err(StorageError::Config(_))),
                "{bad}"
            );
        }
        let to = aside_key(7, &key, "20261206T031500Z");
        assert_eq!(to, format!("7/.set-aside/{seg}.zst.20261206T031500Z"));
        // This cluster's own copy (the mirror's sha256) is refused, and stays.
        let theirs = crate::checksum::hex(&<sha2::Sha256 as sha2::Digest>::digest(b"their bytes"));
        let e = set_aside(
            &target,
            &key,
            &to,
            Some(&theirs),
            tempfile::tempfile().unwrap(),
        )
        .unwrap_err();
        assert!(matches!(e, SetAsideError::OwnCopy { .. }), "{e}");
        assert!(tmp.path().join("offsite").join(&key).exists());
        assert!(!tmp.path().join("offsite").join(&to).exists());
        let moved = set_aside(&target, &key, &to, None, tempfile::tempfile().unwrap()).unwrap();
        assert_eq!(moved.sha256, theirs);
        assert_eq!(moved.size, 11);
        assert_eq!(
            std::fs::read(tmp.path().join("offsite").join(&to)).unwrap(),
            b"their bytes"
        );
        assert!(!tmp.path().join("offsite").join(&key).exists());
        assert_eq!(wal_occupant(&target, 7, seg).unwrap(), None);
        // The key is free: our copy lands.
        std::fs::write(&local, b"our bytes").unwrap();
        target.put_file(&local, &key).unwrap();
        // Setting aside to where a different object already is fails, and the occupant stays.
        let e = set_aside(&target, &key, &to, None, tempfile::tempfile().unwrap()).unwrap_err();
        assert!(
            matches!(e, SetAsideError::Storage(StorageError::Occupied { .. })),
            "{e}"
        );
        assert_eq!(
            std::fs::read(tmp.path().join("offsite").join(&key)).unwrap(),
            b"our bytes"
        );
        // Another writer changes the key between the copy and the removal: the key is left
        // as it is now, and the copy set aside is kept.
        struct Racing<'a>(&'a FilesystemTarget, std::path::PathBuf);
        impl Storage for Racing<'_> {
            fn put_opened(
                &self,
                file: File,
                shown: &Path,
                key: &str,
            ) -> Result<crate::storage::Copied, StorageError> {
                let landed = self.0.put_opened(file, shown, key);
                std::fs::write(&self.1, b"the worker's copy").unwrap();
                landed
            }
            fn replace(&self, bytes: &[u8], key: &str) -> Result<(), StorageError> {
                self.0.replace(bytes, key)
            }
            fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
                self.0.list(prefix)
            }
            fn delete(&self, key: &str) -> Result<(), StorageError> {
                self.0.delete(key)
            }
            fn delete_one(&self, key: &str) -> Result<(), StorageError> {
                self.0.delete_one(key)
            }
            fn get(&self, key: &str) -> Result<Box<dyn io::Read + Send>, StorageError> {
                self.0.get(key)
            }
        }
        let racing = Racing(&target, tmp.path().join("offsite").join(&key));
        let later = aside_key(7, &key, "20261206T031600Z");
        let e = set_aside(&racing, &key, &later, None, tempfile::tempfile().unwrap()).unwrap_err();
        assert!(matches!(e, SetAsideError::Changed { .. }), "{e}");
        assert_eq!(
            std::fs::read(tmp.path().join("offsite").join(&key)).unwrap(),
            b"the worker's copy"
        );
        assert_eq!(
            std::fs::read(tmp.path().join("offsite").join(&later)).unwrap(),
            b"our bytes"
        );
        // Both forms stored: the operator names one.
        target.put_file(&local, &wal_key(7, seg)).unwrap();
        assert!(matches!(
            wal_occupant(&target, 7, seg),
            Err(StorageError::Config(_))
        ));
    }
}
