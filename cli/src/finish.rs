//! What `restore` does after the files are in place and before the directory can start: the
//! recovery settings (this program's `wal-fetch`, with a spool beside the data directory), the
//! check of the configuration the backup brought (`backed_up_config`), the control file last,
//! and the report.

use std::path::{Path, PathBuf};

use backup_mgmt_core::restore::backed_up_config::{self, ConfigError, Reset};
use backup_mgmt_core::restore::fetch::{self, FetchError};
use backup_mgmt_core::restore::materialize;
use backup_mgmt_core::restore::offsite::{self, Goal};

use crate::{output, programs, Cli, CliError, Output, RestoreArgs};

/// The read-ahead spool of a restored data directory: beside it.
pub fn spool_of(dest: &Path) -> PathBuf {
    PathBuf::from(format!("{}.wal-spool", dest.display()))
}

/// Whether the backed-up configuration was read as its server will read it, and what was
/// reset because of it.
pub enum Checked {
    Yes(Vec<Reset>),
    /// Why not (no `postgres` of the backup's version here, run as root, a configuration the
    /// server cannot read either).
    No(String),
}

/// After the files: the recovery settings, the configuration check, the control file, the
/// report.
pub fn finish(
    cli: &Cli,
    r: &RestoreArgs,
    command: &str,
    goal: &Goal,
    choice: &offsite::Choice,
    restored: &fetch::Restored,
    started: std::time::Instant,
) -> Result<(), CliError> {
    let dest = &restored.data_directory;
    let spool = spool_of(dest);
    // A spool left by an earlier restore to this place may hold another cluster's files.
    match std::fs::remove_dir_all(&spool) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(CliError::Incomplete(format!(
                "could not empty the WAL spool {}: {e}",
                spool.display()
            )))
        }
    }
    if let Some(reference) = cli.target.credentials_from_env() {
        eprintln!(
            "backup-mgmt: restore_command reads the credentials from {reference}: start the server with that variable in its environment (or restore with --s3-credentials file:...)"
        );
    }
    fetch::write_recovery_settings(
        dest,
        command,
        goal,
        choice.path.recovery_target(),
        choice.backup.pg_version,
    )?;
    let checked = check_config(r.pg_bin.as_deref(), choice.backup.pg_version, dest)?;
    // Only now can the directory start: with its recovery settings, to the goal.
    materialize::install_control(dest).map_err(FetchError::from)?;
    output::restored(
        restored,
        choice,
        dest,
        started.elapsed(),
        &checked,
        cli.output == Output::Json,
    );
    Ok(())
}

/// Reads the configuration `dest` brought with the restore host's `postgres` of the backup's
/// major version: a directory it would move the server to is refused (exit 3, and a new
/// restore is removed); what it could not read is said, and the restore stands.
fn check_config(
    pg_bin: Option<&Path>,
    version: Option<i64>,
    dest: &Path,
) -> Result<Checked, CliError> {
    // Another major version reads the configuration with other settings (one it does not
    // know is an error to it).
    let postgres = match programs::of_version(pg_bin, version, "postgres") {
        Ok(postgres) => postgres,
        Err(e) if pg_bin.is_some() => return Ok(Checked::No(format!("--pg-bin: {e}"))),
        Err(e) => {
            return Ok(Checked::No(format!(
                "{e}: name the directory of one with --pg-bin"
            )));
        }
    };
    match backed_up_config::check(&postgres, dest) {
        Ok(resets) => Ok(Checked::Yes(resets)),
        Err(e @ ConfigError::Moved { .. }) => Err(FetchError::Damaged {
            detail: e.to_string(),
            file: "postgresql.conf".into(),
        }
        .into()),
        Err(ConfigError::Io(e)) => Err(FetchError::from(e).into()),
        Err(e @ (ConfigError::NotRead { .. } | ConfigError::AsRoot)) => {
            Ok(Checked::No(e.to_string()))
        }
    }
}
