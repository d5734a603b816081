//! Where PostgreSQL's own programs are found on a restore host: `pg_restore` and `psql` for a
//! logical restore, `pg_combinebackup` for a chain of block-level incremental `pg_basebackup`
//! backups, `postgres` to read a restored configuration as its server will.  The program runs
//! with no server, so nothing tells it where they are: `--pg-bin`, else Debian's
//! `/usr/lib/postgresql/<major>/bin` for the backup's major version, else `$PATH`.

use std::path::{Path, PathBuf};

use backup_mgmt_core::process;

use crate::CliError;

/// The directory holding `program` for backups of PostgreSQL `version` (`150014`: 15), or None
/// when neither Debian's directory for that version nor `$PATH` has it.  `explicit` (from
/// `--pg-bin`) is taken as given.
pub fn find(explicit: Option<&Path>, version: Option<i64>, program: &str) -> Option<PathBuf> {
    if let Some(d) = explicit {
        return Some(std::path::absolute(d).unwrap_or_else(|_| d.to_owned()));
    }
    if let Some(v) = version.filter(|v| *v >= 100000) {
        let debian = PathBuf::from(format!("/usr/lib/postgresql/{}/bin", v / 10000));
        if debian.join(program).is_file() {
            return Some(debian);
        }
    }
    // Only absolute entries: an empty one or `.` would run whatever the current directory (a
    // mounted target, perhaps) holds under that name.
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .find(|d| d.is_absolute() && d.join(program).is_file())
}

/// As `find`, or a usage error naming `program` and `--pg-bin`.
pub fn bindir(
    explicit: Option<&Path>,
    version: Option<i64>,
    program: &str,
) -> Result<PathBuf, CliError> {
    find(explicit, version, program).ok_or_else(|| {
        CliError::Usage(format!(
            "{program} is not on $PATH; name its directory with --pg-bin"
        ))
    })
}

/// The directory of a `pg_combinebackup` that can combine backups of PostgreSQL `version`:
/// one of the same major version (it refuses others).  A `--pg-bin` without one is a usage
/// error; when none is found otherwise, None (the restore passes chains over).
pub fn combiner(
    explicit: Option<&Path>,
    version: Option<i64>,
) -> Result<Option<PathBuf>, CliError> {
    let Some(dir) = find(explicit, version, "pg_combinebackup") else {
        return Ok(None);
    };
    let program = dir.join("pg_combinebackup");
    let major = program
        .is_file()
        .then(|| process::major_version(&program))
        .flatten();
    let wanted = version.filter(|v| *v >= 100000).map(|v| v / 10000);
    let fits = program.is_file() && (wanted.is_none() || major == wanted);
    match (fits, explicit) {
        (true, _) => Ok(Some(dir)),
        (false, None) => Ok(None),
        (false, Some(_)) => Err(CliError::Usage(format!(
            "--pg-bin {}: no pg_combinebackup{} there{}",
            dir.display(),
            wanted
                .map(|w| format!(" of PostgreSQL {w}"))
                .unwrap_or_default(),
            major
                .map(|m| format!(" (it has PostgreSQL {m}'s)"))
                .unwrap_or_default()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_directory_without_pg_combinebackup_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let e = combiner(Some(tmp.path()), Some(180001)).unwrap_err();
        assert!(
            e.to_string()
                .contains("no pg_combinebackup of PostgreSQL 18"),
            "{e}"
        );
        assert_eq!(e.exit_code(), 2);
    }
}
