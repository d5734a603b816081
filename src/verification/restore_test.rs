//! `test_backup_restore(backup_id, test_database_name, keep_database)`: a real restore test,
//! logical (`logical_test`) or physical (`physical_test`) by the backup's method.
//!
//! A logical (`pg_dump` custom or directory format) backup is first checked against its sha256,
//! then restored by an unprivileged role of its own into a freshly created scratch database that
//! role owns (an existing database is never touched), and every table's row count in the
//! restored database is compared with the counts captured from the dump while it was written
//! (`dumpfacts.rs`).  A physical backup is restore-tested only when the worker made it.  The
//! scratch database is dropped afterwards unless asked to keep it.  Every outcome is a
//! `restore_test` row in `backup_verifications`; a corrupted backup is a recorded failure, never
//! a crash.
//!
//! The programs run on a helper thread as separate sessions over the server's socket; this
//! backend waits on its latch and stops them on cancel or `statement_timeout`.

use backup_mgmt_core::vocabulary::BackupOrigin;
use pgrx::datum::Interval;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use super::integrity::{self as verification, VerificationError};
use super::restore_outcome::{RestoreError, RestoreResult};
use super::{logical_test, physical_test};
use crate::pg::time::interval;

/// Restores a backup into a new scratch database and checks its data; records a `restore_test`
/// verification.  Returns one row: test_status ('passed' or 'failed'), restore_time, and
/// data_verification (every table's row count equals the count captured at backup time).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn test_backup_restore(
    backup_id: Option<i64>,
    test_database_name: default!(Option<&str>, "NULL"),
    keep_database: default!(bool, false),
) -> Result<
    TableIterator<
        'static,
        (
            name!(test_status, String),
            name!(restore_time, Option<Interval>),
            name!(data_verification, bool),
        ),
    >,
    ErrorReport,
> {
    let id = backup_id.ok_or(VerificationError::Null)?;
    let r = restore_test(id, test_database_name, keep_database)?;
    Ok(TableIterator::once((
        if r.passed { "passed" } else { "failed" }.to_owned(),
        r.restore_time.map(interval),
        r.data_verified,
    )))
}

/// The restore test itself (see `test_backup_restore`).
pub fn restore_test(
    id: i64,
    test_database_name: Option<&str>,
    keep_database: bool,
) -> Result<RestoreResult, RestoreError> {
    let target = verification::load_target(id)?;
    let physical = matches!(target.method.as_str(), "pg_basebackup" | "native_physical");
    if physical && target.origin != BackupOrigin::Worker {
        // Starting a server on a directory runs what its configuration says; only a directory
        // the worker wrote, checked against the checksums it recorded, is started.
        pgrx::log!("backup_mgmt: refused to restore-test registered physical backup {id}");
        return Err(RestoreError::Untrusted(id));
    }
    match target.method.as_str() {
        "pg_basebackup" => physical_test::physical_restore_test(target),
        "native_physical" => physical_test::native_restore_test(target),
        "pg_dump" | "pg_dump_directory" => {
            logical_test::logical_restore_test(target, test_database_name, keep_database)
        }
        _ => Err(RestoreError::Unsupported(target.method.clone())),
    }
}
