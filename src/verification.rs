//! `verify_backup_integrity(backup_id)`: the catalog side of native verification.
//!
//! Looks the backup up, confines its path to the backup roots (an escape is an error and a log
//! line; nothing outside the roots is opened), streams it through sha256 (`verify.rs`) on helper
//! threads while this backend keeps answering cancel requests, and records a
//! `backup_verifications` row for every outcome: a missing, truncated or changed file is a
//! recorded `failed` verification, not only an exception.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiError};
use pgrx::{pg_sys::panic::ErrorReport, PgSqlErrorCode};

use crate::events;
use crate::executor::Progress;
use crate::guc;
use crate::security::{self, PathError};
use crate::verify::{self, Reason, Report};

#[derive(Debug, thiserror::Error)]
pub enum VerificationError {
    #[error("backup_id must not be NULL")]
    Null,
    #[error("backup {0} does not exist")]
    UnknownBackup(i64),
    #[error("backup {id} is {status}: only completed backups can be verified")]
    NotCompleted { id: i64, status: String },
    #[error(transparent)]
    Path(#[from] PathError),
    #[error("catalog access failed: {0}")]
    Spi(#[from] SpiError),
}

impl From<VerificationError> for ErrorReport {
    fn from(e: VerificationError) -> Self {
        use PgSqlErrorCode::*;
        let message = e.to_string();
        let (code, hint) = match e {
            VerificationError::Path(inner) => return inner.into(),
            VerificationError::Null => (ERRCODE_NULL_VALUE_NOT_ALLOWED, "Pass a backup_id."),
            VerificationError::UnknownBackup(_) => (
                ERRCODE_UNDEFINED_OBJECT,
                "List backups with SELECT backup_id FROM backup_management.backup_records.",
            ),
            VerificationError::NotCompleted { .. } => (
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "Wait until the backup has completed; failed and expired backups have nothing to verify.",
            ),
            VerificationError::Spi(_) => (
                ERRCODE_INTERNAL_ERROR,
                "This is a bug in backup_mgmt; please report it.",
            ),
        };
        ErrorReport::new(code, message, "backup_mgmt").set_hint(hint)
    }
}

/// What verification needs from a backup record.
#[derive(Debug, Clone)]
pub struct Target {
    pub backup_id: i64,
    pub database_name: String,
    pub path: String,
    pub method: String,
    pub checksum: Option<String>,
    pub size: Option<u64>,
    /// A native physical backup's chain: the directory of each backup it needs (itself and its
    /// ancestors), confined to the backup roots; one that cannot be found is left out.
    pub chain: HashMap<i64, PathBuf>,
}

/// The directories of backup `id` and its ancestors (`parent_backup_id`), confined to the roots.
fn chain_of(c: &SpiClient<'_>, id: i64) -> Result<HashMap<i64, PathBuf>, VerificationError> {
    let roots = guc::backup_roots()?;
    Ok(crate::native_session::chain_members(c, id)?
        .into_iter()
        .filter_map(|(member, path)| {
            security::confine(&path, &roots, false)
                .ok()
                .map(|p| (member, p))
        })
        .collect())
}

/// Reads a completed backup's record (errors for an unknown or unfinished one).
pub fn load_target(backup_id: i64) -> Result<Target, VerificationError> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT database_name, backup_file_path, backup_method, status, checksum, backup_size \
               FROM backup_management.backup_records WHERE backup_id = $1",
            None,
            &[backup_id.into()],
        )?;
        if t.is_empty() {
            return Err(VerificationError::UnknownBackup(backup_id));
        }
        let row = t.first();
        let status = row.get::<String>(4)?.unwrap_or_default();
        if status != "completed" {
            return Err(VerificationError::NotCompleted {
                id: backup_id,
                status,
            });
        }
        let method = row.get::<String>(3)?.unwrap_or_default();
        let chain = if method == "native_physical" {
            chain_of(c, backup_id)?
        } else {
            HashMap::new()
        };
        Ok(Target {
            backup_id,
            database_name: row.get::<String>(1)?.unwrap_or_default(),
            path: row.get::<String>(2)?.unwrap_or_default(),
            method,
            checksum: row.get::<String>(5)?,
            size: row.get::<i64>(6)?.map(|s| s.max(0) as u64),
            chain,
        })
    })
}

/// Confines the backup's path to the roots.  An escape attempt is an error (and a log line); a
/// path that does not resolve because the file is gone is `Ok(None)`: a recorded failure.
pub fn confine(target: &Target) -> Result<Option<PathBuf>, VerificationError> {
    let roots = guc::backup_roots()?;
    match security::confine(&target.path, &roots, false) {
        Ok(p) => Ok(Some(p)),
        Err(PathError::Resolve { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(None)
        }
        Err(e) => {
            pgrx::log!(
                "backup_mgmt: refused to verify backup {}: {e}",
                target.backup_id
            );
            Err(e.into())
        }
    }
}

/// Runs the verification of `target`, whose path `confine` resolved to `path` (pure Rust, any
/// thread).
pub fn run(
    target: &Target,
    path: Option<&Path>,
    cancel: &AtomicBool,
    progress: &AtomicU64,
) -> Report {
    let checksum = target.checksum.as_deref();
    let size = target.size;
    let Some(path) = path else {
        let mut r = Report::failed(
            Reason::Missing,
            "the backup file is missing".into(),
            Path::new(&target.path),
        );
        r.expected_sha256 = checksum.map(str::to_owned);
        r.expected_bytes = size;
        return r;
    };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    if target.method == "pg_dump_directory" {
        verify::verify_directory(path, checksum, size, threads, cancel, progress)
    } else if target.method == "native_physical" {
        let counters = crate::native::Counters {
            bytes: progress,
            cancel,
        };
        crate::native::verify_backup(path, checksum, &target.chain, threads, &counters)
    } else {
        verify::verify_file(path, checksum, size, cancel, progress)
    }
}

/// Inserts a `backup_verifications` row; returns its id.
pub fn insert(
    backup_id: i64,
    kind: &str,
    status: &str,
    result_json: &str,
    elapsed: Duration,
) -> Result<i64, SpiError> {
    Ok(Spi::connect_mut(|c| {
        c.update(
            "INSERT INTO backup_management.backup_verifications \
                 (backup_id, verification_type, verification_status, verification_result, duration) \
             VALUES ($1, $2, $3, $4::text::jsonb, make_interval(secs => $5)) RETURNING verification_id",
            None,
            &[
                backup_id.into(),
                kind.into(),
                status.into(),
                result_json.into(),
                elapsed.as_secs_f64().into(),
            ],
        )?
        .first()
        .get::<i64>(1)
    })?
    .unwrap_or_default())
}

/// Records a verification row (and, for a failure, a log line and a NOTIFY).  Returns its id.
pub fn record(
    backup_id: i64,
    database_name: &str,
    kind: &str,
    report: &Report,
    elapsed: Duration,
) -> Result<i64, SpiError> {
    let mut result = serde_json::to_value(report).unwrap_or_default();
    if let Some(o) = result.as_object_mut() {
        o.insert(
            "duration_ms".into(),
            serde_json::Value::from(elapsed.as_millis() as u64),
        );
    }
    let status = if report.passed { "passed" } else { "failed" };
    let id = insert(backup_id, kind, status, &result.to_string(), elapsed)?;
    if !report.passed {
        let why = report.detail.clone().unwrap_or_default();
        pgrx::log!("backup_mgmt: verification of backup {backup_id} failed: {why}");
        events::notify(&events::Event::VerificationFailed {
            backup_id,
            database_name,
            reason: report
                .reason
                .map(|r| serde_json::to_value(r).unwrap_or_default())
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            detail: &why,
        });
    }
    Ok(id)
}

/// Runs `work` on a helper thread while this backend waits on its latch, so that a cancel
/// request (or statement_timeout) stops it (its programs get SIGTERM, its loops see the flag)
/// instead of waiting for it to end.
pub fn in_background<T: Send + 'static>(
    work: impl FnOnce(Arc<Progress>) -> T + Send + 'static,
) -> T {
    let progress = Arc::new(Progress::default());
    let p = Arc::clone(&progress);
    let handle = std::thread::spawn(move || {
        crate::executor::block_all_signals();
        work(p)
    });
    while !handle.is_finished() {
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                20,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        if unsafe { pg_sys::InterruptPending == 0 && pg_sys::ShutdownRequestPending == 0 } {
            continue;
        }
        // (ShutdownRequestPending: SIGTERM to a backup_mgmt worker running a drill.)
        if unsafe {
            pg_sys::QueryCancelPending != 0
                || pg_sys::ProcDiePending != 0
                || pg_sys::ShutdownRequestPending != 0
        } {
            // Cancel or terminate: stop the work first, then let PostgreSQL raise its error.
            progress.cancel(libc::SIGTERM);
            let _ = handle.join();
            pg_sys::check_for_interrupts!();
            pgrx::error!("backup_mgmt: interrupted");
        }
        // Anything else must be served while we wait, or the work itself can hang: DROP
        // DATABASE (run by the work) waits until every backend, this one included, has absorbed
        // its procsignal barrier.
        pg_sys::check_for_interrupts!();
    }
    match handle.join() {
        Ok(v) => v,
        Err(_) => pgrx::error!("backup_mgmt: helper thread panicked"),
    }
}

/// Verifies a completed backup against its recorded sha256 (and size), records the outcome in
/// `backup_verifications`, and returns whether it passed.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn verify_backup_integrity(backup_id: Option<i64>) -> Result<bool, ErrorReport> {
    let id = backup_id.ok_or(VerificationError::Null)?;
    let target = load_target(id)?;
    let path = confine(&target)?;
    let started = Instant::now();
    let moved = target.clone();
    let report = in_background(move |progress| {
        run(
            &moved,
            path.as_deref(),
            progress.cancel_flag(),
            &AtomicU64::new(0),
        )
    });
    record(
        id,
        &target.database_name,
        "checksum",
        &report,
        started.elapsed(),
    )
    .map_err(VerificationError::from)?;
    if report.passed && target.method == "pg_basebackup" {
        return Ok(crate::restore::verify_base_backup(&target)?);
    }
    Ok(report.passed)
}
