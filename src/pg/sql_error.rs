//! What an error is in SQL terms, and the ERROR it becomes.  The impls for every error type are
//! in `crate::sqlstate`, the one place SQLSTATEs and hints are decided.

use std::borrow::Cow;

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::PgSqlErrorCode;

/// The hint for an internal failure (a catalog query that should not fail).
pub const BUG: &str = "This is a bug in backup_mgmt; please report it.";

/// An error as SQL reports it.
pub trait SqlError: std::fmt::Display {
    /// Its SQLSTATE and the hint an operator reads.
    fn classify(&self) -> (PgSqlErrorCode, Cow<'static, str>);
    /// More about it, when there is more.
    fn detail(&self) -> Option<String> {
        None
    }
}

/// The ERROR for `e`: its SQLSTATE, its message (which names the bad value), hint and detail.
pub fn report(e: impl SqlError) -> ErrorReport {
    let (code, hint) = e.classify();
    let mut r = ErrorReport::new(code, e.to_string(), "backup_mgmt").set_hint(hint);
    if let Some(d) = e.detail() {
        r = r.set_detail(d);
    }
    r
}
