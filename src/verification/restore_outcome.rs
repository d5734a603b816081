//! What a restore test found, and how it is recorded: the errors it raises, its result (what a
//! drill builds on), the integrity check it starts with, and its `restore_test` verification row
//! (with a log line and a NOTIFY when it failed).

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use backup_mgmt_core::progress::Progress;
use backup_mgmt_core::verify::{self, Report};
use backup_mgmt_core::vocabulary::CatalogError;
use pgrx::spi::SpiError;
use serde_json::Value;

use super::integrity::{self as verification, VerificationError};
use crate::pg::log::escape_for_log;
use crate::pg::notify;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Verification(#[from] VerificationError),
    #[error("database \"{0}\" already exists: a restore test only restores into a new database")]
    DatabaseExists(String),
    #[error("restore tests of {0} backups are not supported yet")]
    Unsupported(String),
    #[error("backup {0} was registered, not made by the worker: its directory is not started as a server")]
    Untrusted(i64),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("catalog access failed: {0}")]
    Spi(#[from] SpiError),
}

/// What a restore test found (also what a disaster-recovery drill builds on).
pub struct RestoreResult {
    pub passed: bool,
    pub restore_time: Option<Duration>,
    pub data_verified: bool,
}

/// The backup's bytes against its checksum, first: a backup that fails it is not worth
/// restoring.  Err carries the failed report.
pub fn integrity_first(
    target: &verification::Target,
    resolved: &verification::Resolved,
    progress: &Progress,
) -> Result<Report, Report> {
    let report = verification::run(target, resolved, progress.cancel_flag(), &AtomicU64::new(0));
    if report.passed {
        Ok(report)
    } else {
        Err(report)
    }
}

/// Opens a single-file backup for reading (a regular file only), or the report of why not.
pub fn open_backup(path: Option<&Path>, shown: &str) -> Result<std::fs::File, Report> {
    path.ok_or_else(|| "the backup file is missing".to_owned())
        .and_then(|p| verify::open_regular(p).map_err(|(_, d)| d))
        .map_err(|d| Report::failed(verify::Reason::Unreadable, d, Path::new(shown)))
}

pub fn record_restore_test(
    id: i64,
    database: &str,
    status: &str,
    result: &Value,
    elapsed: Duration,
) -> Result<(), SpiError> {
    let verification_id =
        verification::insert(id, "restore_test", status, &result.to_string(), elapsed)?;
    if status != "passed" {
        let detail = result.to_string();
        pgrx::log!(
            "backup_mgmt: restore test of backup {id} of database \"{}\" failed: {}",
            escape_for_log(database),
            escape_for_log(&detail)
        );
        notify::notify(&notify::Event::VerificationFailed {
            backup_id: id,
            verification_id,
        });
    }
    Ok(())
}
