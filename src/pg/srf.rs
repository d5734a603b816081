//! Set-returning functions in materialize mode: every row put in a tuplestore in one call.
//!
//! pgrx's `TableIterator` returns one row per call (value-per-call mode), and for a function
//! declared `SECURITY DEFINER` with `SET search_path` (every function of this extension) each
//! call goes through PostgreSQL's `fmgr_security_definer`: a GUC nest level, `search_path` set
//! and restored, the user switched and back, for every row.  For a function that returns
//! thousands of rows (`retention_preview` at a large catalog) that was most of its time.  A
//! function built on [`materialize`] is called once and hands PostgreSQL the whole result.

use pgrx::pg_sys;
use pgrx::IntoDatum;

/// One row: its columns as datums (`None` is NULL), in the declared order.
pub type Row = Vec<Option<pg_sys::Datum>>;

/// Converts a column value to what [`materialize`] stores.
pub fn column<T: IntoDatum>(value: T) -> Option<pg_sys::Datum> {
    value.into_datum()
}

/// Returns `rows` as the result of the set-returning function called through `fcinfo`.
///
/// Every row must have as many columns as the function's declared result, of its types (the
/// caller builds them with [`column`] from the Rust types that map to them).
pub fn materialize(fcinfo: pg_sys::FunctionCallInfo, rows: Vec<Row>) {
    // SAFETY: fcinfo is the live call of a set-returning function (the caller is its pgrx
    // wrapper); InitMaterializedSRF checks that the caller accepts materialize mode and ereports
    // otherwise, and leaves a tuplestore and the result's tuple descriptor in its ReturnSetInfo.
    unsafe {
        pg_sys::InitMaterializedSRF(fcinfo, 0);
        let rsinfo = (*fcinfo).resultinfo as *mut pg_sys::ReturnSetInfo;
        let store = (*rsinfo).setResult;
        let desc = (*rsinfo).setDesc;
        let width = (*desc).natts as usize;
        let mut values = vec![pg_sys::Datum::from(0); width];
        let mut nulls = vec![true; width];
        for row in rows {
            if row.len() != width {
                pgrx::error!(
                    "backup_mgmt: internal error: a row of {} columns for a result of {width}",
                    row.len()
                );
            }
            for (i, v) in row.into_iter().enumerate() {
                nulls[i] = v.is_none();
                values[i] = v.unwrap_or(pg_sys::Datum::from(0));
            }
            // tuplestore_putvalues copies the values into the store's own memory.
            pg_sys::tuplestore_putvalues(store, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        }
    }
}
