//! Where the worker puts a backup: `<root>/<database>/<job>/<YYYYMMDDTHHMMSSZ>-<execution id>`
//! plus a suffix per method, every name component percent-encoded so that no database or job
//! name can add a directory level.  What the worker wrote is recognisable by this layout alone.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::files::beneath::{Removed, Root};
use crate::paths::{self, path_component, with_suffix, PathError, Roots};
use crate::vocabulary::BackupMethod;

/// Output compression of a backup the worker takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd(i32),
}

impl Compression {
    /// As `backup_records.compression` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd(_) => "zstd",
        }
    }
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Zstd(_) => ".zst",
        }
    }
    pub fn level(self) -> Option<i32> {
        match self {
            Compression::None => None,
            Compression::Zstd(l) => Some(l),
        }
    }
}

/// The WAL archive, under each root.
pub const WAL_ARCHIVE: &str = "wal";

/// A cluster's WAL archive directory, relative to a root: `wal/<system identifier>`, the
/// identifier as PostgreSQL prints it (unsigned; the catalog stores it as a bigint).
pub fn wal_archive_dir(system_identifier: u64) -> PathBuf {
    PathBuf::from(WAL_ARCHIVE).join(system_identifier.to_string())
}
/// Where restore tests work, under the first root.
pub const RESTORE_SCRATCH: &str = ".backup_mgmt_restore";
/// Where the WAL scan decompresses segments, under the first root.
pub const WALSCAN_SCRATCH: &str = ".backup_mgmt_walscan";
/// The catalog mirror, in the first root.
pub const CATALOG_MIRROR: &str = "catalog_mirror.json";

/// What a top-level name under a root is when backup_mgmt keeps it for itself.
pub fn reserved(first: &OsStr) -> Option<&'static str> {
    let name = first.to_str()?;
    match name {
        WAL_ARCHIVE => Some("the WAL archive"),
        RESTORE_SCRATCH | WALSCAN_SCRATCH => Some("a scratch directory"),
        CATALOG_MIRROR => Some("the catalog mirror"),
        _ if name == format!(".{CATALOG_MIRROR}.tmp") => Some("the catalog mirror"),
        _ => None,
    }
}

/// `path` resolved (symlinks followed) strictly inside one of `roots`, neither a root itself nor
/// in what backup_mgmt keeps for itself there: where a backup that someone registered, or an
/// off-site directory someone configured, may be.  Returns the resolved path and the canonical
/// root it lies in.
pub fn confine_backup(
    path: &str,
    roots: &[PathBuf],
    may_be_new: bool,
) -> Result<(PathBuf, PathBuf), PathError> {
    confine_backup_in(path, &Roots::resolve(roots), may_be_new)
}

/// `confine_backup` with the roots already resolved.
pub fn confine_backup_in(
    path: &str,
    roots: &Roots,
    may_be_new: bool,
) -> Result<(PathBuf, PathBuf), PathError> {
    // Lexically first, as given (so that what does not exist yet is refused for what it is),
    // then as resolved.
    let area = |p: &Path, root: &Path| -> Result<bool, PathError> {
        let Ok(rel) = p.strip_prefix(root) else {
            return Ok(false);
        };
        let Some(first) = rel.components().next() else {
            return Err(PathError::IsRoot(path.to_owned()));
        };
        if let Some(what) = reserved(first.as_os_str()) {
            return Err(PathError::Reserved {
                path: path.to_owned(),
                what,
            });
        }
        Ok(true)
    };
    let given = paths::validate_absolute(path)?;
    for root in roots.given.iter().chain(&roots.canonical) {
        area(given, root)?;
    }
    let resolved = paths::confine_in(path, roots, may_be_new)?;
    for root in &roots.canonical {
        if area(&resolved, root)? {
            return Ok((resolved, root.clone()));
        }
    }
    Err(PathError::OutsideRoots {
        path: path.to_owned(),
        resolved: Some(resolved),
    })
}

/// Removes a backup's file or directory: it must be what `confine_backup` accepts, and the
/// removal walks down from the opened root without following any symlink (a directory swapped
/// for a symlink after the check is refused, not followed).  What is already gone is fine.
pub fn remove_backup(path: &str, roots: &[PathBuf]) -> Result<Removed, PathError> {
    let (resolved, root) = match confine_backup(path, roots, false) {
        Ok(r) => r,
        Err(PathError::Resolve { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Removed::AlreadyGone)
        }
        Err(e) => return Err(e),
    };
    remove_beneath(path, &root, &resolved)
}

/// Removes an archived WAL file: only a file in the WAL archive of a root, never a directory.
pub fn remove_archived_wal(path: &str, roots: &[PathBuf]) -> Result<Removed, PathError> {
    let resolved = match paths::confine(path, roots, false) {
        Ok(r) => r,
        Err(PathError::Resolve { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Removed::AlreadyGone)
        }
        Err(e) => return Err(e),
    };
    for root in roots.iter().filter_map(|r| r.canonicalize().ok()) {
        let Ok(rel) = resolved.strip_prefix(&root) else {
            continue;
        };
        let mut parts = rel.components();
        let in_archive = parts.next().map(|c| c.as_os_str()) == Some(OsStr::new(WAL_ARCHIVE))
            && parts.count() >= 2
            && resolved.is_file();
        if !in_archive {
            return Err(PathError::NotFileOrDirectory(path.to_owned()));
        }
        return remove_beneath(path, &root, &resolved);
    }
    Err(PathError::OutsideRoots {
        path: path.to_owned(),
        resolved: None,
    })
}

fn remove_beneath(path: &str, root: &Path, resolved: &Path) -> Result<Removed, PathError> {
    let failed = |source| PathError::Remove {
        path: path.to_owned(),
        source,
    };
    let root = Root::open(root).map_err(failed)?;
    let rel = resolved
        .strip_prefix(root.path())
        .map_err(|_| PathError::IsRoot(path.to_owned()))?;
    root.remove(rel).map_err(failed)
}

/// A database's directory under a root: its name as a path component, with the first byte
/// percent-encoded when the name is one backup_mgmt keeps for itself (a database named `wal`
/// must not write into the WAL archive).
fn database_component(database: &str) -> String {
    let c = path_component(database);
    if reserved(OsStr::new(&c)).is_some() {
        format!("%{:02X}{}", c.as_bytes()[0], &c[1..])
    } else {
        c
    }
}

/// `<root>/<database>/<job>/<YYYYMMDDTHHMMSSZ>-<execution id>`: the predictable layout.
pub fn backup_stem(
    root: &Path,
    database: &str,
    job: &str,
    started: chrono::DateTime<chrono::Utc>,
    execution_id: i64,
) -> PathBuf {
    root.join(database_component(database))
        .join(path_component(job))
        .join(format!(
            "{}-{execution_id}",
            started.format("%Y%m%dT%H%M%SZ")
        ))
}

/// The file or directory a backup produces (what the catalog's `backup_file_path` names).
pub fn output_path(method: BackupMethod, stem: &Path, compression: Compression) -> PathBuf {
    let ext = match method {
        BackupMethod::PgDump => format!(".dump{}", compression.suffix()),
        BackupMethod::PgDumpDirectory => ".dir".to_owned(),
        BackupMethod::PgBasebackup => format!(".tar{}", compression.suffix()),
        BackupMethod::NativePhysical => ".native".to_owned(),
        BackupMethod::PgDumpallGlobals | BackupMethod::ContinuousArchiving => {
            format!(".globals.sql{}", compression.suffix())
        }
    };
    with_suffix(stem, &ext)
}

/// The globals file written beside a logical dump (roles and tablespaces are not in it).
pub fn globals_path(stem: &Path, compression: Compression) -> PathBuf {
    with_suffix(stem, &format!(".globals.sql{}", compression.suffix()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_add_path_levels() {
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
        let wal = backup_stem(Path::new("/b"), "wal", "j", when, 1);
        assert_eq!(wal, Path::new("/b/%77al/j/20261127T083005Z-1"));
        assert!(reserved(OsStr::new("wal")).is_some());
        assert!(reserved(OsStr::new("shop")).is_none());
        assert_eq!(
            globals_path(&stem, Compression::None),
            Path::new("/b/%2E.%2Fx/nightly%2F1/20261127T083005Z-42.globals.sql")
        );
    }

    #[test]
    fn registered_paths_and_removals_stay_out_of_roots_and_reserved_areas() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let roots = vec![root.clone()];
        std::fs::create_dir_all(root.join("wal/42")).unwrap();
        std::fs::write(root.join("wal/42/000000010000000000000001"), b"w").unwrap();
        std::fs::create_dir_all(root.join("scripts")).unwrap();
        std::fs::write(root.join("scripts/a.dump"), b"d").unwrap();
        let text = |p: &Path| p.to_string_lossy().into_owned();

        assert!(matches!(
            confine_backup(&text(&root), &roots, false),
            Err(PathError::IsRoot(_))
        ));
        assert!(matches!(
            confine_backup(&text(&root.join("wal/42")), &roots, false),
            Err(PathError::Reserved { .. })
        ));
        assert!(confine_backup(&text(&root.join("scripts/a.dump")), &roots, false).is_ok());
        // A symlink inside the root that points at the root, or into the archive.
        std::os::unix::fs::symlink(&root, root.join("scripts/all")).unwrap();
        assert!(matches!(
            confine_backup(&text(&root.join("scripts/all")), &roots, false),
            Err(PathError::IsRoot(_))
        ));
        assert!(remove_backup(&text(&root.join("scripts/all")), &roots).is_err());
        assert!(remove_backup(&text(&root), &roots).is_err());
        assert!(remove_backup(&text(&root.join("wal")), &roots).is_err());
        assert!(root.join("wal/42/000000010000000000000001").exists());

        assert_eq!(
            remove_backup(&text(&root.join("scripts/a.dump")), &roots).unwrap(),
            Removed::Removed
        );
        assert_eq!(
            remove_backup(&text(&root.join("scripts/a.dump")), &roots).unwrap(),
            Removed::AlreadyGone
        );
        // WAL expiry removes archived files only, not the archive or a backup.
        std::fs::write(root.join("scripts/b.dump"), b"d").unwrap();
        assert!(remove_archived_wal(&text(&root.join("scripts/b.dump")), &roots).is_err());
        assert!(remove_archived_wal(&text(&root.join("wal/42")), &roots).is_err());
        assert_eq!(
            remove_archived_wal(&text(&root.join("wal/42/000000010000000000000001")), &roots)
                .unwrap(),
            Removed::Removed
        );
        assert!(root.join("scripts/b.dump").exists());
    }
}
