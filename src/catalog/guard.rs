//! The trigger that holds every `backup_records` row, whoever writes it (superusers included), to
//! the catalog's row rule (`backup_mgmt_core::vocabulary::check_record_row`).

use std::num::NonZeroUsize;

use backup_mgmt_core::vocabulary::{self, RecordRow};
use pgrx::prelude::*;
use pgrx::{pg_sys::panic::ErrorReport, PgLogLevel, PgSqlErrorCode};

/// BEFORE INSERT OR UPDATE trigger `backup_records_check`: no writer, superuser included, can
/// store a backup record that breaks `check_record_row`.
///
/// A trigger rather than CHECK constraints and domains: PostgreSQL re-reads a table's CHECK
/// expressions from their stored text on every INSERT and UPDATE statement, and prepares every
/// domain coercion per statement; for the record functions that cost 15% and 6-12% of throughput
/// (BENCHMARKS.md).  The trigger is one native call per row, uses the same Rust vocabulary as the
/// record functions, and says exactly what a row breaks.
#[pg_trigger]
fn backup_records_guard<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByRust>>, std::convert::Infallible> {
    let Some(new_row) = trigger.new() else {
        // Not a row-level INSERT or UPDATE (it is only created for those): nothing to check.
        // Returning the old row, not NULL, so that a row-level DELETE would still proceed.
        return Ok(trigger.old().map(|t| t.into_owned()));
    };
    let data = trigger.trigger_data();
    let tuple = if row_is_update(data) {
        data.tg_newtuple
    } else {
        data.tg_trigtuple
    };
    // SAFETY: PostgreSQL passes a valid relation and the row being written; the values read
    // below live as long as that row.  Domain-typed or not, text columns have text's
    // representation and backup_size is an int8.
    let tupdesc = unsafe { pgrx::PgTupleDesc::from_pg_unchecked((*data.tg_relation).rd_att) };
    let mut row = RecordRow::default();
    let (mut has_end_time, mut has_duration, mut has_expired_at) = (false, false, false);
    // A catalog being upgraded from 0.1.0 has no expired_at yet.
    let mut expired_at_column = false;
    for att in tupdesc.iter().filter(|a| !a.is_dropped()) {
        let Some(attno) = NonZeroUsize::new(att.attnum as usize) else {
            continue;
        };
        // SAFETY: (for the reads below) see above: a valid tuple and descriptor, attno in range.
        let value = unsafe { pgrx::heap_getattr_raw(tuple, attno, tupdesc.as_ptr()) };
        let text = || {
            // SAFETY: a non-NULL text (or text-domain) datum of this row.
            value.and_then(|d| unsafe {
                <&str as FromDatum>::from_polymorphic_datum(d, false, pg_sys::TEXTOID)
            })
        };
        match att.name() {
            "database_name" => row.database_name = text(),
            "backup_type" => row.backup_type = text(),
            "backup_method" => row.backup_method = text(),
            "backup_file_path" => row.backup_file_path = text(),
            "backup_size" => {
                // SAFETY: backup_size is an int8 column.
                row.backup_size = value
                    .and_then(|d| unsafe { i64::from_polymorphic_datum(d, false, pg_sys::INT8OID) })
            }
            "status" => row.status = text(),
            "checksum" => row.checksum = text(),
            "checksum_algorithm" => row.checksum_algorithm = text(),
            "compression" => row.compression = text(),
            "end_time" => has_end_time = value.is_some(),
            "expired_at" => {
                expired_at_column = true;
                has_expired_at = value.is_some();
            }
            "duration" => has_duration = value.is_some(),
            "error_message" => row.has_error_message = value.is_some(),
            "parent_backup_id" => row.has_parent = value.is_some(),
            "globals_file_path" => row.globals_file_path = text(),
            "origin" => row.origin = text(),
            "globals_checksum" => row.globals_checksum = text(),
            "globals_size" => {
                // SAFETY: globals_size is an int8 column.
                row.globals_size = value
                    .and_then(|d| unsafe { i64::from_polymorphic_datum(d, false, pg_sys::INT8OID) })
            }
            _ => {}
        }
    }
    row.has_end_time_and_duration = has_end_time && has_duration;
    if let Err(rule) = vocabulary::check_record_row(&row) {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
            format!("new row for relation \"backup_records\" violates backup_records_check: {rule}"),
            "backup_mgmt",
        )
        .set_hint("Record backups with record_backup_start(), record_backup_complete() and record_backup_failure().")
        .report(PgLogLevel::ERROR);
    }
    // `expired_at` says when retention expired the record, and is set exactly when its status
    // is 'expired': the partial index of live records (`idx_backup_records_live`) reads it,
    // while completion, which must stay a HOT update, never touches it.  Kept in step here for
    // every writer, a superuser's direct UPDATE included; the usual row passes unchanged.
    let expired = row.status == Some("expired");
    if expired_at_column && expired != has_expired_at {
        let mut owned = new_row.into_owned();
        let when = if expired {
            // SAFETY: reads this transaction's start time; no preconditions.
            let now = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
            TimestampWithTimeZone::try_from(now).ok()
        } else {
            None
        };
        if let Err(e) = owned.set_by_name("expired_at", when) {
            ErrorReport::new(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("backup_records_check could not set expired_at: {e}"),
                "backup_mgmt",
            )
            .report(PgLogLevel::ERROR);
        }
        return Ok(Some(owned));
    }
    // (A copy: the one tuple type this function returns; a row is a few hundred bytes.)
    Ok(Some(new_row.into_owned()))
}

fn row_is_update(data: &pg_sys::TriggerData) -> bool {
    (data.tg_event & pg_sys::TRIGGER_EVENT_OPMASK) == pg_sys::TRIGGER_EVENT_UPDATE
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[allow(unused_imports)]
    use crate::testing::*;

    #[pg_test]
    fn table_constraints_stop_half_written_rows_from_any_writer() {
        // Even a superuser writing directly cannot store a completed row without an end time,
        // or a failed one without its error.
        assert_refused(
            "INSERT INTO backup_management.backup_records (database_name, backup_type, backup_method, backup_file_path, status)
             VALUES ('d', 'full', 'pg_dump', '/b/x', 'completed')",
            "23514",
            "backup_records_check",
        );
        assert_refused(
            "INSERT INTO backup_management.backup_records
                 (database_name, backup_type, backup_method, backup_file_path, status, end_time, duration)
             VALUES ('d', 'full', 'pg_dump', '/b/x', 'failed', now(), '0')",
            "23514",
            "a failed backup record needs its error_message",
        );
        // The same vocabulary and formats as the record functions' arguments.
        for (values, broken) in [
            ("'d', 'weekly', 'pg_dump', '/b/x', 'running'", "weekly"),
            ("'d', 'wal', 'pg_dump', '/b/x', 'running'", "cannot take"),
            ("'d', 'full', 'pg_dump', 'b/x', 'running'", "b/x"),
            ("'d', 'full', 'pg_dump', '/b/x', 'done'", "done"),
        ] {
            assert_refused(
                &format!(
                    "INSERT INTO backup_management.backup_records
                         (database_name, backup_type, backup_method, backup_file_path, status)
                     VALUES ({values})"
                ),
                "23514",
                broken,
            );
        }
        let (s, m, _) = outcome(
            "INSERT INTO backup_management.backup_records
                 (database_name, backup_type, backup_method, backup_file_path, status, end_time, duration, error_message)
             VALUES ('d', 'full', 'pg_dump', '/b/x', 'failed', now(), '0', 'boom')",
        );
        assert_eq!(s, "ok", "a complete failed row is accepted: {m}");
    }

    #[pg_test]
    fn expired_at_follows_the_status_for_every_writer() {
        let id = Spi::get_one::<i64>(
            "INSERT INTO backup_management.backup_records
                 (database_name, backup_type, backup_method, backup_file_path, status, end_time, duration)
             VALUES ('d', 'full', 'pg_dump', '/b/e', 'completed', now(), '0') RETURNING backup_id",
        )
        .unwrap()
        .unwrap();
        let expired_at = |sql: &str| {
            Spi::run_with_args(sql, &[id.into()]).unwrap();
            Spi::get_one_with_args::<bool>(
                "SELECT expired_at IS NOT NULL FROM backup_management.backup_records WHERE backup_id = $1",
                &[id.into()],
            )
            .unwrap()
            .unwrap()
        };
        assert!(!expired_at("SELECT $1"));
        // A superuser expiring by hand, as retention does: the time is set.
        assert!(expired_at(
            "UPDATE backup_management.backup_records SET status = 'expired' WHERE backup_id = $1"
        ));
        // A time without the status is not kept, nor the status back without clearing it.
        assert!(!expired_at(
            "UPDATE backup_management.backup_records SET status = 'completed' WHERE backup_id = $1"
        ));
        assert!(!expired_at(
            "UPDATE backup_management.backup_records SET expired_at = now() WHERE backup_id = $1"
        ));
    }
}
