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
    if let Some(major) = major(version) {
        let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
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

/// The major version of a `server_version_num` (`150014`: 15); None for none, or one from
/// before PostgreSQL 10's numbering.
fn major(version: Option<i64>) -> Option<i64> {
    version.filter(|v| *v >= 100000).map(|v| v / 10000)
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

/// Why no `program` of the wanted major version was found (`of_version`).
#[derive(Debug, thiserror::Error)]
pub enum Unfit {
    #[error("no {program}{}{}", of(*wanted), in_dir(dir.as_deref()))]
    Missing {
        program: &'static str,
        wanted: Option<i64>,
        dir: Option<PathBuf>,
    },
    #[error("no {program} of PostgreSQL {wanted}: {} is{}", path.display(), found.map_or(" of an unknown version".to_owned(), |f| of(Some(f))))]
    OtherVersion {
        program: &'static str,
        path: PathBuf,
        wanted: i64,
        found: Option<i64>,
    },
}

fn of(wanted: Option<i64>) -> String {
    wanted
        .map(|w| format!(" of PostgreSQL {w}"))
        .unwrap_or_default()
}

fn in_dir(dir: Option<&Path>) -> String {
    dir.map(|d| format!(" in {}", d.display()))
        .unwrap_or_default()
}

/// `program` (its path) of the same major version as backups of PostgreSQL `version`, found as
/// `find` does.  Another major version reads a configuration with other settings and
/// `pg_combinebackup` refuses backups of another version, so a program of the wrong version is
/// as good as none; `version` None (not recorded) takes whichever is found.
pub fn of_version(
    explicit: Option<&Path>,
    version: Option<i64>,
    program: &'static str,
) -> Result<PathBuf, Unfit> {
    let wanted = major(version);
    let dir = find(explicit, version, program);
    let path = match &dir {
        Some(d) if d.join(program).is_file() => d.join(program),
        _ => {
            return Err(Unfit::Missing {
                program,
                wanted,
                dir,
            });
        }
    };
    let found = process::major_version(&path);
    match wanted {
        Some(wanted) if found != Some(wanted) => Err(Unfit::OtherVersion {
            program,
            path,
            wanted,
            found,
        }),
        _ => Ok(path),
    }
}

/// The directory of a `pg_combinebackup` that can combine backups of PostgreSQL `version`
/// (`of_version`).  A `--pg-bin` without one is a usage error; when none is found otherwise,
/// None (the restore passes chains over).
pub fn combiner(
    explicit: Option<&Path>,
    version: Option<i64>,
) -> Result<Option<PathBuf>, CliError> {
    match of_version(explicit, version, "pg_combinebackup") {
        Ok(path) => Ok(path.parent().map(Path::to_owned)),
        Err(_) if explicit.is_none() => Ok(None),
        Err(e) => Err(CliError::Usage(format!("--pg-bin: {e}"))),
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

    /// A program of another major version is as good as none: a usage error naming both
    /// versions when --pg-bin named it, passed over otherwise; the matching version is taken.
    #[test]
    fn a_program_of_another_version_is_not_taken() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let program = tmp.path().join("pg_combinebackup");
        std::fs::write(
            &program,
            "#!/bin/sh\necho 'pg_combinebackup (PostgreSQL) 17.6'\n",
        )
        .unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = combiner(Some(tmp.path()), Some(180001)).unwrap_err();
        let said = e.to_string();
        assert!(
            said.contains("no pg_combinebackup of PostgreSQL 18")
                && said.contains("is of PostgreSQL 17"),
            "{said}"
        );
        assert_eq!(e.exit_code(), 2);
        let found = of_version(Some(tmp.path()), Some(170002), "pg_combinebackup").unwrap();
        assert_eq!(found, program);
        assert_eq!(
            combiner(Some(tmp.path()), Some(170002)).unwrap().as_deref(),
            Some(tmp.path())
        );
    }
}
