//! Native record functions: `record_backup_start`, `record_backup_complete`,
//! `record_backup_failure`, with the seed's names, arguments and timing semantics (end_time is
//! the transaction time, duration is end_time - start_time).
//!
//! They are SECURITY DEFINER with a pinned search_path: `backup_admin` members may call them
//! without holding write access to the catalog, so every row passes through the checks below.
//! Plans are prepared once per backend and kept (SPI_keepplan), not parsed per call.

use std::cell::Cell;

use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiError};
use pgrx::{pg_sys::panic::ErrorReport, PgOid};

use backup_mgmt_core::checksum::{self, ChecksumError};
use backup_mgmt_core::paths::{self, PathError};
use backup_mgmt_core::vocabulary::{self as catalog, BackupOrigin, CatalogError};

use super::registration::{self, RegistrationError};
use crate::pg::log::escape_for_log;
use crate::pg::{guc, notify, server};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{0} must not be NULL")]
    Null(&'static str),
    #[error("backup {0} does not exist")]
    UnknownBackup(i64),
    #[error("backup {id} is {status}, not running")]
    NotRunning { id: i64, status: String },
    #[error("backup size {0} is negative")]
    NegativeSize(i64),
    #[error("error message must not be empty")]
    EmptyErrorMessage,
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Checksum(#[from] ChecksumError),
    #[error(transparent)]
    Registration(#[from] RegistrationError),
    #[error("catalog access failed: {0}")]
    Spi(#[from] SpiError),
}

/// The statements, prepared once per backend.  Leaked on purpose: they live as long as the
/// backend, and freeing them from a thread-local destructor during process exit would run
/// PostgreSQL code after it has shut down.
struct Plans {
    start: OwnedPreparedStatement,
    complete: OwnedPreparedStatement,
    fail: OwnedPreparedStatement,
    status: OwnedPreparedStatement,
    register: OwnedPreparedStatement,
    overlap: OwnedPreparedStatement,
}

thread_local! {
    static PLANS: Cell<Option<&'static Plans>> = const { Cell::new(None) };
}

const START_SQL: &str = "INSERT INTO backup_management.backup_records
        (database_name, backup_type, backup_method, backup_file_path, system_identifier, pg_version, origin)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     RETURNING backup_id";
// `(status = 'running') IS TRUE` rather than `status = 'running'`: given any index on status (the
// design had one), the plain form lets the planner scan it and filter on backup_id, visiting every
// running record, and the index entries of every record that was once running, on each call; 50,000
// starts and completions in one transaction took 99 s instead of 2 s.  The primary key is always
// the right access path here.
const COMPLETE_SQL: &str = "UPDATE backup_management.backup_records
        SET end_time = now(), duration = now() - start_time,
            backup_size = $2, checksum = $3, status = 'completed'
      WHERE backup_id = $1 AND (status = 'running') IS TRUE
  RETURNING backup_id";
const FAIL_SQL: &str = "UPDATE backup_management.backup_records
        SET end_time = now(), duration = now() - start_time,
            status = 'failed', error_message = $2
      WHERE backup_id = $1 AND (status = 'running') IS TRUE
  RETURNING database_name::text";
const STATUS_SQL: &str =
    "SELECT status::text FROM backup_management.backup_records WHERE backup_id = $1";

fn plans(client: &SpiClient<'_>) -> Result<&'static Plans, SpiError> {
    if let Some(p) = PLANS.with(Cell::get) {
        return Ok(p);
    }
    let text = PgOid::from(pg_sys::TEXTOID);
    let int8 = PgOid::from(pg_sys::INT8OID);
    let int4 = PgOid::from(pg_sys::INT4OID);
    let p: &'static Plans = Box::leak(Box::new(Plans {
        start: client
            .prepare_mut(START_SQL, &[text, text, text, text, int8, int4, text])?
            .keep(),
        complete: client
            .prepare_mut(COMPLETE_SQL, &[int8, int8, text])?
            .keep(),
        fail: client.prepare_mut(FAIL_SQL, &[int8, text])?.keep(),
        status: client.prepare(STATUS_SQL, &[int8])?.keep(),
        register: client
            .prepare_mut(
                registration::INSERT_SQL,
                &[
                    text,
                    text,
                    text,
                    text,
                    int8,
                    int4,
                    text,
                    PgOid::from(pg_sys::TEXTARRAYOID),
                    text,
                    text,
                ],
            )?
            .keep(),
        overlap: client
            .prepare(registration::OVERLAP_SQL, &registration::overlap_types())?
            .keep(),
    }));
    PLANS.with(|c| c.set(Some(p)));
    Ok(p)
}

fn required<T>(value: Option<T>, what: &'static str) -> Result<T, RecordError> {
    value.ok_or(RecordError::Null(what))
}

/// Explains why an UPDATE of a running record touched no row.
fn not_running(client: &SpiClient<'_>, plans: &Plans, id: i64) -> RecordError {
    let status = client
        .select(&plans.status, Some(1), &[id.into()])
        .and_then(|t| {
            if t.is_empty() {
                Ok(None)
            } else {
                t.first().get_one::<String>()
            }
        });
    match status {
        Ok(Some(status)) => RecordError::NotRunning { id, status },
        Ok(None) => RecordError::UnknownBackup(id),
        Err(e) => RecordError::Spi(e),
    }
}

fn start(
    database_name: Option<&str>,
    backup_type: Option<&str>,
    backup_method: Option<&str>,
    backup_file_path: Option<&str>,
) -> Result<i64, RecordError> {
    let database_name = required(database_name, "database_name")?;
    let backup_type = required(backup_type, "backup_type")?;
    let backup_method = required(backup_method, "backup_method")?;
    let path = required(backup_file_path, "backup_file_path")?;
    Spi::connect_mut(|client| {
        insert(
            client,
            database_name,
            backup_type,
            backup_method,
            path,
            BackupOrigin::Registered,
        )
    })
}

/// Inserts a running backup record and returns its id.  A registered path is checked
/// (`registration::check`) and stored resolved; the worker's own paths come from its layout
/// under a root it resolved itself.
pub(crate) fn insert(
    client: &mut SpiClient<'_>,
    database_name: &str,
    backup_type: &str,
    backup_method: &str,
    path: &str,
    origin: BackupOrigin,
) -> Result<i64, RecordError> {
    catalog::validate_database_name(database_name)?;
    let (kind, method) = catalog::parse_kind(backup_type, backup_method)?;
    paths::validate_absolute(path)?;
    // The cluster's identity: what makes a backup restorable onto the right cluster.  Read from
    // shared memory, no query needed.
    let system_identifier = server::system_identifier() as i64;
    // The running server's version (its minor may differ from the headers this was built with).
    let pg_version = server::version_num();
    let plans = plans(client)?;
    let row = |path: &str| -> Vec<pgrx::datum::DatumWithOid<'_>> {
        vec![
            database_name.into(),
            kind.as_str().into(),
            method.as_str().into(),
            path.into(),
            system_identifier.into(),
            pg_version.into(),
            origin.as_str().into(),
        ]
    };
    let refused = |e: RegistrationError| -> RecordError {
        // Refusals belong in the server log too (escape attempts above all).
        pgrx::log!(
            "backup_mgmt: refused to record a backup: {}",
            escape_for_log(&e.to_string())
        );
        e.into()
    };
    let inserted = match origin {
        // The worker's own paths come from its layout under a root it resolved itself.
        BackupOrigin::Worker => client.update(&plans.start, None, &row(path))?,
        BackupOrigin::Registered => {
            let candidate = registration::check(path).map_err(refused)?;
            let mut args = row(&candidate.resolved);
            args.extend([
                candidate.ancestors.clone().into(),
                candidate.below_from.as_str().into(),
                candidate.below_to.as_str().into(),
            ]);
            let t = guc::with_settings(&registration::PLANNING, || {
                client.update(&plans.register, None, &args)
            })?;
            if t.is_empty() {
                return Err(refused(registration::overlap(
                    client,
                    &plans.overlap,
                    path,
                    &candidate,
                )));
            }
            t
        }
    };
    let id = inserted.first().get_one::<i64>()?;
    id.ok_or(RecordError::Spi(SpiError::NoTupleTable))
}

fn complete(
    backup_id: Option<i64>,
    backup_size: Option<i64>,
    checksum: Option<&str>,
) -> Result<(), RecordError> {
    let id = required(backup_id, "backup_id")?;
    let size = required(backup_size, "backup_size")?;
    if size < 0 {
        return Err(RecordError::NegativeSize(size));
    }
    let checksum = checksum.map(checksum::normalize_sha256_hex).transpose()?;
    // No NOTIFY here: PostgreSQL serialises the commits of all notifying transactions on one
    // database-wide lock, which cost 11% of record throughput under 4 clients (BENCHMARKS.md).
    // Failures, which are rare and need attention, are notified.
    Spi::connect_mut(|client| {
        let plans = plans(client)?;
        let table = client.update(
            &plans.complete,
            None,
            &[id.into(), size.into(), checksum.into()],
        )?;
        if table.is_empty() {
            return Err(not_running(client, plans, id));
        }
        Ok(())
    })
}

fn fail(backup_id: Option<i64>, error_message: Option<&str>) -> Result<(), RecordError> {
    let id = required(backup_id, "backup_id")?;
    let message = required(error_message, "error_message")?;
    if message.trim().is_empty() {
        return Err(RecordError::EmptyErrorMessage);
    }
    let database = Spi::connect_mut(|client| {
        let plans = plans(client)?;
        let table = client.update(&plans.fail, None, &[id.into(), message.into()])?;
        if table.is_empty() {
            return Err(not_running(client, plans, id));
        }
        Ok(table.first().get_one::<String>()?.unwrap_or_default())
    })?;
    // Failures reach the server log as well as listeners: a DBA greps the log first.  The
    // message is the caller's text: escaped, so that it cannot forge log lines.
    pgrx::log!(
        "backup_mgmt: backup {id} of database \"{}\" failed: {}",
        escape_for_log(&database),
        escape_for_log(message)
    );
    notify::notify(&notify::Event::BackupFailed { backup_id: id });
    Ok(())
}

/// Records that a backup has started and returns its `backup_id`.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn record_backup_start(
    database_name: Option<&str>,
    backup_type: Option<&str>,
    backup_method: Option<&str>,
    backup_file_path: Option<&str>,
) -> Result<i64, ErrorReport> {
    Ok(start(
        database_name,
        backup_type,
        backup_method,
        backup_file_path,
    )?)
}

/// Marks a running backup completed, with its size in bytes and (optionally) its sha256.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn record_backup_complete(
    backup_id: Option<i64>,
    backup_size: Option<i64>,
    checksum: default!(Option<&str>, "NULL"),
) -> Result<(), ErrorReport> {
    Ok(complete(backup_id, backup_size, checksum)?)
}

/// Marks a running backup failed, with the reason.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn record_backup_failure(
    backup_id: Option<i64>,
    error_message: Option<&str>,
) -> Result<(), ErrorReport> {
    Ok(fail(backup_id, error_message)?)
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[allow(unused_imports)]
    use crate::testing::*;

    #[pg_test]
    fn start_then_complete_records_everything() {
        let id = start();
        assert_eq!(status_of(id), ("running".into(), 0));
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_complete($1, 1024, $2)",
            &[id.into(), SHA.to_uppercase().into()],
        )
        .unwrap();
        let row = Spi::get_one_with_args::<bool>(
            "SELECT status = 'completed' AND backup_size = 1024 AND checksum = $2
                    AND end_time = now() AND duration = now() - start_time
                    AND system_identifier = (SELECT system_identifier FROM pg_control_system())
                    AND pg_version = current_setting('server_version_num')::int
                    AND checksum_algorithm = 'sha256' AND recorded_by = session_user
               FROM backup_management.backup_records WHERE backup_id = $1",
            &[id.into(), SHA.into()],
        )
        .unwrap();
        assert_eq!(
            row,
            Some(true),
            "checksum stored lower-case, times as the seed computes them"
        );
    }

    #[pg_test]
    fn completing_is_a_hot_update() {
        // No index covers a column that completion changes (sql/schema.sql explains why), so the
        // row's new version stays on its page and no index is written.
        let id = start();
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_complete($1, 1)",
            &[id.into()],
        )
        .unwrap();
        let hot = Spi::get_one::<i64>(
            "SELECT pg_stat_get_xact_tuples_hot_updated('backup_management.backup_records'::regclass)",
        )
        .unwrap();
        assert_eq!(hot, Some(1));
    }

    #[pg_test]
    fn complete_without_checksum_leaves_it_null() {
        let id = start();
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_complete($1, 0)",
            &[id.into()],
        )
        .unwrap();
        let c = Spi::get_one_with_args::<String>(
            "SELECT checksum FROM backup_management.backup_records WHERE backup_id = $1",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(c, None);
    }

    #[pg_test]
    fn failure_records_message() {
        let id = start();
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_failure($1, 'pg_dump: connection refused')",
            &[id.into()],
        )
        .unwrap();
        let ok = Spi::get_one_with_args::<bool>(
            "SELECT status = 'failed' AND error_message = 'pg_dump: connection refused' AND end_time IS NOT NULL
               FROM backup_management.backup_records WHERE backup_id = $1",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(ok, Some(true));
    }

    #[pg_test]
    fn unknown_backup_id_is_undefined_object() {
        assert_fails(
            "SELECT backup_mgmt.record_backup_complete(987654321, 1)",
            "42704",
            "987654321",
        );
        assert_fails(
            "SELECT backup_mgmt.record_backup_failure(987654321, 'x')",
            "42704",
            "987654321",
        );
    }

    #[pg_test]
    fn completing_a_finished_record_is_refused() {
        let id = start();
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_complete($1, 10)",
            &[id.into()],
        )
        .unwrap();
        let sql = format!("SELECT backup_mgmt.record_backup_complete({id}, 99)");
        assert_fails(&sql, "55000", "completed");
        assert_eq!(
            status_of(id),
            ("completed".into(), 10),
            "first completion kept"
        );
    }

    #[pg_test]
    fn failing_a_finished_record_is_refused() {
        let id = start();
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_complete($1, 10)",
            &[id.into()],
        )
        .unwrap();
        assert_fails(
            &format!("SELECT backup_mgmt.record_backup_failure({id}, 'late')"),
            "55000",
            "not running",
        );
        assert_eq!(status_of(id).0, "completed");
    }

    #[pg_test]
    fn negative_size_is_refused_and_nothing_written() {
        let id = start();
        assert_fails(
            &format!("SELECT backup_mgmt.record_backup_complete({id}, -5)"),
            "22023",
            "-5",
        );
        assert_eq!(status_of(id), ("running".into(), 0));
    }

    #[pg_test]
    fn malformed_checksum_is_refused() {
        let id = start();
        assert_fails(
            &format!("SELECT backup_mgmt.record_backup_complete({id}, 1, 'abc123')"),
            "22023",
            "abc123",
        );
        let not_hex = format!("{}zz", &SHA[..62]);
        assert_fails(
            &format!("SELECT backup_mgmt.record_backup_complete({id}, 1, '{not_hex}')"),
            "22023",
            &not_hex,
        );
        assert_eq!(status_of(id), ("running".into(), 0));
    }

    #[pg_test]
    fn unknown_backup_type_is_refused() {
        assert_fails(
            "SELECT backup_mgmt.record_backup_start('appdb', 'weekly', 'pg_dump', '/b/x')",
            "22023",
            "weekly",
        );
    }

    #[pg_test]
    fn unknown_backup_method_is_refused() {
        assert_fails(
            "SELECT backup_mgmt.record_backup_start('appdb', 'full', 'rsync', '/b/x')",
            "22023",
            "rsync",
        );
    }

    #[pg_test]
    fn method_that_cannot_take_the_type_is_refused() {
        assert_fails(
            "SELECT backup_mgmt.record_backup_start('appdb', 'incremental', 'pg_dump', '/b/x')",
            "22023",
            "incremental",
        );
    }

    #[pg_test]
    fn relative_path_is_refused() {
        assert_fails(
            "SELECT backup_mgmt.record_backup_start('appdb', 'full', 'pg_dump', 'backups/x.dump')",
            "22023",
            "backups/x.dump",
        );
        assert_fails(
            "SELECT backup_mgmt.record_backup_start('appdb', 'full', 'pg_dump', '/b/../etc/x')",
            "22023",
            "/b/../etc/x",
        );
    }

    #[pg_test]
    fn empty_database_name_is_refused() {
        assert_fails(
            "SELECT backup_mgmt.record_backup_start('', 'full', 'pg_dump', '/b/x')",
            "22023",
            "empty",
        );
        let before =
            Spi::get_one::<i64>("SELECT count(*) FROM backup_management.backup_records").unwrap();
        assert_eq!(before, Some(0), "no row was written by the refused calls");
    }

    #[pg_test]
    fn null_arguments_are_refused() {
        assert_fails(
            "SELECT backup_mgmt.record_backup_start(NULL, 'full', 'pg_dump', '/b/x')",
            "22004",
            "database_name",
        );
        assert_fails(
            "SELECT backup_mgmt.record_backup_complete(NULL, 1)",
            "22004",
            "backup_id",
        );
        assert_fails(
            "SELECT backup_mgmt.record_backup_failure(1, NULL)",
            "22004",
            "error_message",
        );
    }

    #[pg_test]
    fn failure_needs_a_message() {
        let id = start();
        assert_fails(
            &format!("SELECT backup_mgmt.record_backup_failure({id}, '  ')"),
            "22023",
            "empty",
        );
    }

    #[pg_test(error = "backup 424242 does not exist")]
    fn unknown_backup_raises() {
        Spi::run("SELECT backup_mgmt.record_backup_complete(424242, 1)").unwrap();
    }
}
