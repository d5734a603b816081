//! Transactions of the worker's own: each catalog step runs in one, and a PostgreSQL ERROR or a
//! returned error is logged and rolled back instead of ending the worker.

use std::fmt::Display;
use std::panic::AssertUnwindSafe;

use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;

/// Runs `body` in a transaction of its own.  A PostgreSQL ERROR or a returned error is logged
/// as a WARNING naming `what`, and the transaction rolled back; the caller carries on.
pub fn in_transaction<R, E: Display>(what: &str, body: impl FnOnce() -> Result<R, E>) -> Option<R> {
    // SAFETY: the worker is not inside a transaction here (every step runs in one of its own,
    // ended below on every path); these are PostgreSQL's own begin-transaction steps.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let outcome = PgTryBuilder::new(AssertUnwindSafe(move || {
        let r = body().map_err(|e| e.to_string())?;
        // SAFETY: the snapshot pushed above is still the active one, and the transaction is
        // ours to commit.
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        }
        Ok(r)
    }))
    .catch_others(|e| {
        Err(match e {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r.message().to_owned(),
            CaughtError::RustPanic { ereport, .. } => ereport.message().to_owned(),
        })
    })
    .execute();
    match outcome {
        Ok(r) => Some(r),
        Err(message) => {
            // SAFETY: aborting the transaction begun above (PostgreSQL cleans up the snapshot).
            unsafe { pg_sys::AbortCurrentTransaction() };
            warning!("backup_mgmt: {what}: {message}");
            None
        }
    }
}
