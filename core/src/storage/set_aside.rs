//! Setting aside what occupies a WAL file's key on a target.  A copy is never replaced, so when a
//! target holds different bytes under an archived file's name (a second cluster with the same
//! system identifier wrote there, a copy restored from elsewhere) the extension's copy of that
//! file fails every time, and off-site recovery stops short of it.  Once the operator has looked,
//! the occupant is moved to `<system identifier>/.set-aside/<stored name>.<UTC time>`: copied,
//! checked where it landed, and only then removed from its key, so nothing is lost and the
//! extension's next try lands.  A restore never reads `.set-aside`.

use std::fs::File;
use std::io::{self, Seek};
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

/// Moves the object under `key` to `to`: read into `spool` (an unlinked temporary file, as
/// large as the object) while hashed, stored under `to` (never over a different object) and
/// checked there, and only then removed from `key`.  A failure before the removal leaves the
/// object where it was.
pub fn set_aside(
    target: &dyn Storage,
    key: &str,
    to: &str,
    spool: File,
) -> Result<SetAside, StorageError> {
    let shown = Path::new(key);
    let mut from = target.get(key)?;
    let mut hashed = Hash::new(spool);
    let size =
        io::copy(&mut from, &mut hashed).map_err(|e| IoError::new("could not read", shown, e))?;
    let (mut spool, sha256) = hashed.finish();
    spool
        .rewind()
        .map_err(|e| IoError::new("could not rewind the copy of", shown, e))?;
    let landed = target.put_opened(spool, shown, to)?;
    if landed.sha256 != sha256 || landed.size != size {
        return Err(StorageError::Mismatch {
            expected: sha256,
            found: landed.sha256,
        });
    }
    target.delete(key)?;
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
        let moved = set_aside(&target, &key, &to, tempfile::tempfile().unwrap()).unwrap();
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
        let e = set_aside(&target, &key, &to, tempfile::tempfile().unwrap()).unwrap_err();
        assert!(matches!(e, StorageError::Occupied { .. }), "{e}");
        assert_eq!(
            std::fs::read(tmp.path().join("offsite").join(&key)).unwrap(),
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
