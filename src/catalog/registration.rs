//! What a path recorded with `record_backup_start` may be.  A backup record is input: whoever
//! holds `backup_admin` may register one, and the worker later reads, copies off site, verifies
//! and deletes what it names.  So a registered path must resolve (symlinks followed) strictly
//! inside a backup root, must not be a root itself, nor lie in what backup_mgmt keeps under a
//! root for itself (the WAL archive, scratch directories, the catalog mirror), nor inside this
//! cluster's data directory or tablespaces, nor overlap the file or directory of another running
//! or completed backup.  The record stores the resolved path.

use std::path::PathBuf;

use backup_mgmt_core::backup::layout;
use backup_mgmt_core::paths::PathError;
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiError};

use crate::pg::{guc, server};

#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("path \"{path}\" lies inside this cluster's {what} \"{dir}\"")]
    InsideCluster {
        path: String,
        what: &'static str,
        dir: String,
    },
    #[error("path \"{path}\" overlaps the files of backup {other} ({status})")]
    Overlap {
        path: String,
        other: i64,
        status: String,
    },
    #[error("catalog access failed: {0}")]
    Spi(#[from] SpiError),
}

/// Running or completed backups whose file (or globals file) is `$1` or one of its ancestors
/// (`$1` is the path and every directory above it), or lies below `$2` (the path and a slash) up
/// to `$3` (the path and the character after the slash): the text_pattern_ops indexes answer
/// each part.
pub const OVERLAP_SQL: &str = "SELECT backup_id, status FROM backup_management.backup_records
     WHERE status IN ('running', 'completed')
       AND (backup_file_path = ANY ($1)
            OR (backup_file_path OPERATOR(pg_catalog.~>=~) $2 AND backup_file_path OPERATOR(pg_catalog.~<~) $3)
            OR globals_file_path = ANY ($1)
            OR (globals_file_path OPERATOR(pg_catalog.~>=~) $2 AND globals_file_path OPERATOR(pg_catalog.~<~) $3))
     LIMIT 1";

/// Checks a path about to be registered and returns it resolved.
pub fn check(
    client: &SpiClient<'_>,
    overlap: &pgrx::spi::OwnedPreparedStatement,
    path: &str,
) -> Result<PathBuf, RegistrationError> {
    let roots = guc::backup_roots()?;
    let (resolved, _root) = layout::confine_backup(path, &roots, true)?;
    for (what, dir) in cluster_directories() {
        if resolved.starts_with(&dir) || dir.starts_with(&resolved) {
            return Err(RegistrationError::InsideCluster {
                path: path.to_owned(),
                what,
                dir: dir.display().to_string(),
            });
        }
    }
    let text = resolved.to_string_lossy().into_owned();
    let ancestors: Vec<String> = resolved
        .ancestors()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let t = client.select(
        overlap,
        Some(1),
        &[
            ancestors.into(),
            format!("{text}/").into(),
            format!("{text}0").into(),
        ],
    )?;
    if !t.is_empty() {
        let row = t.first();
        return Err(RegistrationError::Overlap {
            path: path.to_owned(),
            other: row.get::<i64>(1)?.unwrap_or_default(),
            status: row.get::<String>(2)?.unwrap_or_default(),
        });
    }
    Ok(resolved)
}

/// This cluster's data directory and its tablespaces' directories (the symlinks in
/// `pg_tblspc`), resolved: read from the file system, no query needed.
fn cluster_directories() -> Vec<(&'static str, PathBuf)> {
    let data = server::data_directory();
    let mut dirs = Vec::new();
    if let Ok(entries) = std::fs::read_dir(data.join("pg_tblspc")) {
        for e in entries.flatten() {
            if let Ok(target) = e.path().canonicalize() {
                dirs.push(("tablespace", target));
            }
        }
    }
    dirs.push(("data directory", data.canonicalize().unwrap_or(data)));
    dirs
}

/// The prepared overlap query's argument types: text[], text, text.
pub fn overlap_types() -> [PgOid; 3] {
    [
        PgOid::from(pg_sys::TEXTARRAYOID),
        PgOid::from(pg_sys::TEXTOID),
        PgOid::from(pg_sys::TEXTOID),
    ]
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[allow(unused_imports)]
    use crate::testing::*;

    fn register(path: &str) -> String {
        format!("SELECT backup_mgmt.record_backup_start('appdb', 'full', 'pg_dump', '{path}')")
    }

    #[pg_test]
    fn registered_paths_are_backups_of_their_own_inside_a_root() {
        let root = std::path::Path::new(TEST_ROOT);
        let base = std::path::PathBuf::from(fresh_path(".reg"));
        std::fs::create_dir_all(base.join("real")).unwrap();
        std::fs::create_dir_all(root.join("wal")).unwrap();
        let b = base.display();

        // The root itself (retention would delete everything under it), and what backup_mgmt
        // keeps there for itself.
        assert_fails(&register(TEST_ROOT), "42501", TEST_ROOT);
        assert_fails(
            &register(&format!("{TEST_ROOT}/wal/x.dump")),
            "42501",
            "WAL archive",
        );
        assert_fails(
            &register(&format!("{TEST_ROOT}/.backup_mgmt_restore/x")),
            "42501",
            "scratch",
        );
        // Outside the roots, directly or through a symlink inside one.
        assert_fails(&register("/etc/passwd"), "42501", "/etc/passwd");
        let link = base.join("to-etc");
        std::os::unix::fs::symlink("/etc", &link).unwrap();
        assert_fails(
            &register(&format!("{}/passwd", link.display())),
            "42501",
            "to-etc",
        );
        let up = base.join("to-root");
        std::os::unix::fs::symlink(root, &up).unwrap();
        assert_fails(&register(&up.display().to_string()), "42501", "to-root");

        // A path through a symlink inside the roots is stored resolved, as registered.
        let alias = base.join("alias");
        std::os::unix::fs::symlink(base.join("real"), &alias).unwrap();
        let id = Spi::get_one::<i64>(&register(&format!("{}/a.dump", alias.display())))
            .unwrap()
            .unwrap();
        let (path, origin) = Spi::get_two_with_args::<String, String>(
            "SELECT backup_file_path, origin FROM backup_management.backup_records WHERE backup_id = $1",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(path.unwrap(), format!("{b}/real/a.dump"));
        assert_eq!(origin.as_deref(), Some("registered"));

        // No two running or completed records share files: the same file, one inside a
        // registered directory, a directory holding a registered file.
        assert_fails(&register(&format!("{b}/real/a.dump")), "42710", "overlaps");
        let dir = Spi::get_one::<i64>(&register(&format!("{b}/real/d.dir")))
            .unwrap()
            .unwrap();
        std::fs::create_dir_all(base.join("real/d.dir")).unwrap();
        assert_fails(
            &register(&format!("{b}/real/d.dir/inner")),
            "42710",
            &format!("backup {dir}"),
        );
        assert_fails(&register(&format!("{b}/real")), "42710", "overlaps");
        // A failed record's files are nobody's: the name can be registered again.
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_failure($1, 'gone')",
            &[id.into()],
        )
        .unwrap();
        assert!(Spi::get_one::<i64>(&register(&format!("{b}/real/a.dump")))
            .unwrap()
            .is_some());
    }
}
