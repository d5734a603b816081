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

use crate::pg::{guc, roots, server};

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

/// The condition "overlaps a running or completed backup's files", on the parameters `$n`
/// (ancestors: the path and every directory above it inside its root), `$n+1` (the path and a
/// slash) and `$n+2` (the path and the character after the slash): a backup whose file (or
/// globals file) is the path or one of its ancestors, or lies below it.  The text_pattern_ops
/// indexes answer each part.
macro_rules! overlaps {
    ($a:literal, $b:literal, $c:literal) => {
        concat!(
            "status IN ('running', 'completed')
               AND (backup_file_path = ANY ($",
            $a,
            ")
                    OR (backup_file_path OPERATOR(pg_catalog.~>=~) $",
            $b,
            " AND backup_file_path OPERATOR(pg_catalog.~<~) $",
            $c,
            ")
                    OR globals_file_path = ANY ($",
            $a,
            ")
                    OR (globals_file_path OPERATOR(pg_catalog.~>=~) $",
            $b,
            " AND globals_file_path OPERATOR(pg_catalog.~<~) $",
            $c,
            "))"
        )
    };
}

/// Inserts a registered running record unless it overlaps another backup's files, in one
/// statement: `$1`..`$7` as the record functions' start, `$8`..`$10` as `overlaps!`.
pub const INSERT_SQL: &str = concat!(
    "INSERT INTO backup_management.backup_records
        (database_name, backup_type, backup_method, backup_file_path, system_identifier, pg_version, origin)
     SELECT $1, $2, $3, $4, $5, $6, $7
      WHERE NOT EXISTS (SELECT FROM backup_management.backup_records WHERE ",
    overlaps!(8, 9, 10),
    ")
     RETURNING backup_id"
);

/// Which backup a refused registration overlaps (`$1`..`$3` as `overlaps!`).
pub const OVERLAP_SQL: &str = concat!(
    "SELECT backup_id, status FROM backup_management.backup_records WHERE ",
    overlaps!(1, 2, 3),
    " LIMIT 1"
);

/// Settings for the overlap check's statements.  Always the indexes, planned once per session: a
/// plan made while the table was small (a fresh install, a bulk registration in one
/// transaction) would otherwise scan the whole table on every call from then on, and the plan
/// cache, finding a generic plan dearer than custom ones for the array of ancestors, would plan
/// every call again (measured: 240 µs a pair instead of 40, BENCHMARKS.md).
pub const PLANNING: [(&std::ffi::CStr, &std::ffi::CStr); 2] = [
    (c"enable_seqscan", c"off"),
    (c"plan_cache_mode", c"force_generic_plan"),
];

/// A path that may be registered, resolved, with the overlap check's parameters.
pub struct Candidate {
    pub resolved: String,
    pub ancestors: Vec<String>,
    pub below_from: String,
    pub below_to: String,
}

/// Checks a path about to be registered (everything but the overlap, which the insert checks).
pub fn check(path: &str) -> Result<Candidate, RegistrationError> {
    let (resolved, root) = layout::confine_backup_in(path, &roots::resolved()?, true)?;
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
    // Only the ancestors strictly inside the root can be another backup's path.
    let ancestors = resolved
        .ancestors()
        .take_while(|a| *a != root)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    Ok(Candidate {
        below_from: format!("{text}/"),
        below_to: format!("{text}0"),
        ancestors,
        resolved: text,
    })
}

/// The refusal of a candidate the insert found overlapping: which backup it overlaps.
pub fn overlap(
    client: &SpiClient<'_>,
    overlap: &pgrx::spi::OwnedPreparedStatement,
    path: &str,
    c: &Candidate,
) -> RegistrationError {
    let found = guc::with_settings(&PLANNING, || {
        client.select(
            overlap,
            Some(1),
            &[
                c.ancestors.clone().into(),
                c.below_from.as_str().into(),
                c.below_to.as_str().into(),
            ],
        )
    });
    let (other, status) = match found {
        Ok(t) if !t.is_empty() => {
            let row = t.first();
            (
                row.get::<i64>(1).ok().flatten().unwrap_or_default(),
                row.get::<String>(2).ok().flatten().unwrap_or_default(),
            )
        }
        Ok(_) => (0, "running".to_owned()),
        Err(e) => return e.into(),
    };
    RegistrationError::Overlap {
        path: path.to_owned(),
        other,
        status,
    }
}

/// This cluster's data directory and its tablespaces' directories (the symlinks in
/// `pg_tblspc`), resolved: read from the file system, no query needed.
fn cluster_directories() -> Vec<(&'static str, PathBuf)> {
    // The data directory does not move while the server runs: resolved once per session.
    static DATA: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let data = DATA.get_or_init(|| {
        let d = server::data_directory();
        d.canonicalize().unwrap_or(d)
    });
    let mut dirs = Vec::new();
    if let Ok(entries) = std::fs::read_dir(data.join("pg_tblspc")) {
        for e in entries.flatten() {
            if let Ok(target) = e.path().canonicalize() {
                dirs.push(("tablespace", target));
            }
        }
    }
    dirs.push(("data directory", data.clone()));
    dirs
}

/// The argument types of `OVERLAP_SQL`: text[], text, text.
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
