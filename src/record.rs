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
use pgrx::{pg_sys::panic::ErrorReport, PgOid, PgSqlErrorCode};

use crate::catalog::{self, CatalogError};
use crate::checksum::{self, ChecksumError};
use crate::events;
use crate::security::{self, PathError};

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
    #[error("catalog access failed: {0}")]
    Spi(#[from] SpiError),
}

impl From<RecordError> for ErrorReport {
    fn from(e: RecordError) -> Self {
        use PgSqlErrorCode::*;
        // Errors of other modules carry their own SQLSTATE and hint.
        let (code, hint) = match e {
            RecordError::Catalog(inner) => return inner.into(),
            RecordError::Path(inner) => return inner.into(),
            RecordError::Checksum(inner) => return inner.into(),
            RecordError::Null(what) => (ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("Pass a non-NULL {what}.")),
            RecordError::UnknownBackup(_) => (
                ERRCODE_UNDEFINED_OBJECT,
                "Use the backup_id returned by record_backup_start(); recent ones are listed by \
                 SELECT backup_id, status FROM backup_management.backup_records ORDER BY backup_id DESC LIMIT 10."
                    .to_owned(),
            ),
            RecordError::NotRunning { .. } => (
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "Only a running backup can be completed or failed; record a new attempt with record_backup_start()."
                    .to_owned(),
            ),
            RecordError::NegativeSize(_) => {
                (ERRCODE_INVALID_PARAMETER_VALUE, "backup_size is the number of bytes written, 0 or more.".to_owned())
            }
            RecordError::EmptyErrorMessage => (
                ERRCODE_INVALID_PARAMETER_VALUE,
                "Record what went wrong (e.g. the program's stderr): it is what an operator reads later.".to_owned(),
            ),
            RecordError::Spi(_) => (ERRCODE_INTERNAL_ERROR, "This is a bug in backup_mgmt; please report it.".to_owned()),
        };
        ErrorReport::new(code, e.to_string(), "backup_mgmt").set_hint(hint)
    }
}

/// The statements, prepared once per backend.  Leaked on purpose: they live as long as the
/// backend, and freeing them from a thread-local destructor during process exit would run
/// PostgreSQL code after it has shut down.
struct Plans {
    start: OwnedPreparedStatement,
    complete: OwnedPreparedStatement,
    fail: OwnedPreparedStatement,
    status: OwnedPreparedStatement,
}

thread_local! {
    static PLANS: Cell<Option<&'static Plans>> = const { Cell::new(None) };
}

const START_SQL: &str = "INSERT INTO backup_management.backup_records
        (database_name, backup_type, backup_method, backup_file_path, system_identifier, pg_version)
     VALUES ($1, $2, $3, $4, $5, $6)
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
            .prepare_mut(START_SQL, &[text, text, text, text, int8, int4])?
            .keep(),
        complete: client
            .prepare_mut(COMPLETE_SQL, &[int8, int8, text])?
            .keep(),
        fail: client.prepare_mut(FAIL_SQL, &[int8, text])?.keep(),
        status: client.prepare(STATUS_SQL, &[int8])?.keep(),
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
    catalog::validate_database_name(database_name)?;
    let (kind, method) = catalog::parse_kind(
        required(backup_type, "backup_type")?,
        required(backup_method, "backup_method")?,
    )?;
    let path = required(backup_file_path, "backup_file_path")?;
    security::validate_absolute(path)?;
    // The cluster's identity: what makes a backup restorable onto the right cluster.  Read from
    // shared memory, no query needed.
    let system_identifier = unsafe { pg_sys::GetSystemIdentifier() } as i64;
    let pg_version = pg_sys::PG_VERSION_NUM as i32;
    Spi::connect_mut(|client| {
        let plans = plans(client)?;
        let id = client
            .update(
                &plans.start,
                None,
                &[
                    database_name.into(),
                    kind.as_str().into(),
                    method.as_str().into(),
                    path.into(),
                    system_identifier.into(),
                    pg_version.into(),
                ],
            )?
            .first()
            .get_one::<i64>()?;
        id.ok_or(RecordError::Spi(SpiError::NoTupleTable))
    })
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
    // Failures reach the server log as well as listeners: a DBA greps the log first.
    pgrx::log!("backup_mgmt: backup {id} of database \"{database}\" failed: {message}");
    events::notify(&events::Event::BackupFailed {
        backup_id: id,
        database_name: &database,
        error: message,
    });
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
