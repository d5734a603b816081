//! The catalog: its SQL (tables, privileges, comments) and the vocabulary its rows use.
//!
//! The tables live in `sql/schema.sql`, loaded before any function; privileges and comments in
//! `sql/finalize.sql`, loaded after every function exists.  The Rust enums below mirror the SQL
//! domains' CHECK constraints; a unit test keeps the two in step.

use std::fmt;
use std::num::NonZeroUsize;

use pgrx::prelude::*;
use pgrx::{pg_sys::panic::ErrorReport, PgLogLevel, PgSqlErrorCode};

extension_sql_file!("../sql/schema.sql", name = "catalog_schema", bootstrap);
extension_sql_file!("../sql/finalize.sql", name = "catalog_finalize", finalize);

/// Longest database name PostgreSQL accepts (NAMEDATALEN - 1 bytes).
pub const MAX_DATABASE_NAME_BYTES: usize = 63;

macro_rules! vocabulary {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(s: &str) -> Result<Self, CatalogError> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(CatalogError::UnknownValue {
                        what: $what,
                        value: s.to_owned(),
                        allowed: Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "),
                    }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

vocabulary!(
    /// `backup_records.backup_type`.
    BackupType, "backup type" {
        Full => "full",
        Incremental => "incremental",
        Differential => "differential",
        Wal => "wal",
    }
);

vocabulary!(
    /// `backup_records.backup_method`: the program or mechanism that produced a backup.
    BackupMethod, "backup method" {
        PgDump => "pg_dump",
        PgDumpDirectory => "pg_dump_directory",
        PgBasebackup => "pg_basebackup",
        PgDumpallGlobals => "pg_dumpall_globals",
        ContinuousArchiving => "continuous_archiving",
        NativePhysical => "native_physical",
    }
);

impl BackupMethod {
    /// Whether this method can produce a backup of `kind`: logical dumps are always full, WAL
    /// comes only from continuous archiving, and only the native physical method can take
    /// incremental or differential backups.
    pub fn can_take(self, kind: BackupType) -> bool {
        use BackupMethod::*;
        use BackupType::*;
        match self {
            PgDump | PgDumpDirectory | PgDumpallGlobals | PgBasebackup => kind == Full,
            ContinuousArchiving => kind == Wal,
            NativePhysical => matches!(kind, Full | Incremental | Differential),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("unknown {what} \"{value}\"")]
    UnknownValue {
        what: &'static str,
        value: String,
        allowed: String,
    },
    #[error("backup method \"{method}\" cannot take a \"{kind}\" backup")]
    MethodCannotTake {
        method: BackupMethod,
        kind: BackupType,
    },
    #[error("database name must not be empty")]
    EmptyDatabaseName,
    #[error("database name \"{0}\" is longer than 63 bytes")]
    DatabaseNameTooLong(String),
}

impl From<CatalogError> for ErrorReport {
    fn from(e: CatalogError) -> Self {
        let hint = match &e {
            CatalogError::UnknownValue { what, allowed, .. } => format!("Valid {what}s are: {allowed}."),
            CatalogError::MethodCannotTake { .. } => "pg_dump, pg_dump_directory, pg_dumpall_globals and pg_basebackup take full backups; \
                 continuous_archiving records wal; native_physical takes full, incremental and differential backups."
                .to_owned(),
            CatalogError::EmptyDatabaseName | CatalogError::DatabaseNameTooLong(_) => {
                "Give the name of the database the backup is of, as in pg_database.datname.".to_owned()
            }
        };
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            e.to_string(),
            "backup_mgmt",
        )
        .set_hint(hint)
    }
}

/// Checks a database name as PostgreSQL would accept it.
pub fn validate_database_name(name: &str) -> Result<(), CatalogError> {
    if name.is_empty() {
        Err(CatalogError::EmptyDatabaseName)
    } else if name.len() > MAX_DATABASE_NAME_BYTES {
        Err(CatalogError::DatabaseNameTooLong(name.to_owned()))
    } else {
        Ok(())
    }
}

/// Parses and cross-checks a type and method pair.
pub fn parse_kind(
    backup_type: &str,
    backup_method: &str,
) -> Result<(BackupType, BackupMethod), CatalogError> {
    let kind = BackupType::parse(backup_type)?;
    let method = BackupMethod::parse(backup_method)?;
    if method.can_take(kind) {
        Ok((kind, method))
    } else {
        Err(CatalogError::MethodCannotTake { method, kind })
    }
}

/// The row rule of `backup_records`, returning the part that a row breaks.
pub fn check_record_row(
    status: &str,
    has_end_time_and_duration: bool,
    has_error_message: bool,
    has_parent: bool,
    backup_type: &str,
) -> Result<(), &'static str> {
    if status != "running" && !has_end_time_and_duration {
        Err("a finished backup record needs end_time and duration")
    } else if status == "failed" && !has_error_message {
        Err("a failed backup record needs its error_message")
    } else if has_parent && !matches!(backup_type, "incremental" | "differential") {
        Err("only incremental and differential backups have a parent_backup_id")
    } else {
        Ok(())
    }
}

/// Attribute number of column `name` in `tupdesc`.
fn attnum(tupdesc: &pgrx::PgTupleDesc<'_>, name: &str) -> Option<NonZeroUsize> {
    tupdesc
        .iter()
        .find(|a| !a.is_dropped() && a.name() == name)
        .and_then(|a| NonZeroUsize::new(a.attnum as usize))
}

/// BEFORE INSERT OR UPDATE trigger `backup_records_finished_check`: no writer, superuser included,
/// can store a half-written backup record.
///
/// A trigger rather than a CHECK constraint: PostgreSQL re-reads a table's CHECK expressions from
/// their stored text on every INSERT and UPDATE statement, which cost ~15% of record throughput
/// even as a single function call (BENCHMARKS.md).  A trigger is looked up once per statement and
/// also lets the error say which part of the rule a row breaks.
#[pg_trigger]
fn backup_records_guard<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
    let Some(row) = trigger.new() else {
        // Not a row-level INSERT or UPDATE (it is only created for those): nothing to check.
        // Returning the old row, not NULL, so that a row-level DELETE would still proceed.
        return Ok(trigger.old());
    };
    let data = trigger.trigger_data();
    let tuple = if row_is_update(data) {
        data.tg_newtuple
    } else {
        data.tg_trigtuple
    };
    // SAFETY: PostgreSQL passes a valid relation and the row being written.
    let tupdesc = unsafe { pgrx::PgTupleDesc::from_pg_unchecked((*data.tg_relation).rd_att) };
    let raw = |name: &str| {
        attnum(&tupdesc, name)
            .and_then(|n| unsafe { pgrx::heap_getattr_raw(tuple, n, tupdesc.as_ptr()) })
    };
    // Domain-typed text columns: read as text (a domain has its base type's representation).
    let text = |name: &str| {
        raw(name).and_then(|d| unsafe {
            <&str as FromDatum>::from_polymorphic_datum(d, false, pg_sys::TEXTOID)
        })
    };
    let verdict = check_record_row(
        text("status").unwrap_or("running"),
        raw("end_time").is_some() && raw("duration").is_some(),
        raw("error_message").is_some(),
        raw("parent_backup_id").is_some(),
        text("backup_type").unwrap_or(""),
    );
    if let Err(rule) = verdict {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
            format!("new row for relation \"backup_records\" violates backup_records_finished_check: {rule}"),
            "backup_mgmt",
        )
        .set_hint("Record backups with record_backup_start(), record_backup_complete() and record_backup_failure().")
        .report(PgLogLevel::ERROR);
    }
    Ok(Some(row))
}

fn row_is_update(data: &pg_sys::TriggerData) -> bool {
    (data.tg_event & pg_sys::TRIGGER_EVENT_OPMASK) == pg_sys::TRIGGER_EVENT_UPDATE
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = include_str!("../sql/schema.sql");

    /// The CHECK of domain `name` in schema.sql, up to the end of its statement.
    fn domain_check(name: &str) -> &'static str {
        let start = SCHEMA
            .find(&format!("CREATE DOMAIN backup_management.{name} "))
            .unwrap_or_else(|| panic!("domain {name} not in schema.sql"));
        let rest = &SCHEMA[start..];
        &rest[..rest.find(';').unwrap()]
    }

    fn quoted_values(check: &str) -> usize {
        check.matches('\'').count() / 2
    }

    #[test]
    fn enums_match_sql_domains() {
        let types = domain_check("backup_type");
        let methods = domain_check("backup_method");
        for v in BackupType::ALL {
            assert!(
                types.contains(&format!("'{v}'")),
                "{v} missing from the backup_type domain"
            );
        }
        for v in BackupMethod::ALL {
            assert!(
                methods.contains(&format!("'{v}'")),
                "{v} missing from the backup_method domain"
            );
        }
        assert_eq!(
            quoted_values(types),
            BackupType::ALL.len(),
            "SQL lists a type Rust does not know"
        );
        assert_eq!(
            quoted_values(methods),
            BackupMethod::ALL.len(),
            "SQL lists a method Rust does not know"
        );
        // Tables use the domains rather than their own copies of the lists.
        assert!(!SCHEMA.contains("backup_type IN ('full', 'incremental', 'differential', 'wal')"));
    }

    #[test]
    fn parse_round_trips_and_names_bad_values() {
        for v in BackupMethod::ALL {
            assert_eq!(BackupMethod::parse(v.as_str()).unwrap(), *v);
        }
        let err = BackupType::parse("Full").unwrap_err().to_string();
        assert_eq!(err, "unknown backup type \"Full\"");
        let err = BackupMethod::parse("rsync").unwrap_err();
        assert!(
            matches!(&err, CatalogError::UnknownValue { allowed, .. } if allowed.contains("pg_basebackup"))
        );
    }

    #[test]
    fn method_type_pairs() {
        assert!(parse_kind("full", "pg_dump").is_ok());
        assert!(parse_kind("wal", "continuous_archiving").is_ok());
        assert!(parse_kind("incremental", "native_physical").is_ok());
        assert!(matches!(
            parse_kind("incremental", "pg_dump"),
            Err(CatalogError::MethodCannotTake { .. })
        ));
        assert!(matches!(
            parse_kind("full", "continuous_archiving"),
            Err(CatalogError::MethodCannotTake { .. })
        ));
    }

    #[test]
    fn row_rule() {
        assert!(check_record_row("running", false, false, false, "full").is_ok());
        assert!(check_record_row("completed", true, false, false, "full").is_ok());
        assert!(check_record_row("failed", true, true, false, "full").is_ok());
        assert!(check_record_row("running", false, false, true, "incremental").is_ok());
        assert!(check_record_row("running", false, false, true, "differential").is_ok());
        let e = check_record_row("completed", false, false, false, "full").unwrap_err();
        assert!(e.contains("end_time"), "completed without end time: {e}");
        let e = check_record_row("expired", false, false, false, "full").unwrap_err();
        assert!(
            e.contains("end_time"),
            "finished states need an end time: {e}"
        );
        let e = check_record_row("failed", true, false, false, "full").unwrap_err();
        assert!(e.contains("error_message"), "failed without its error: {e}");
        let e = check_record_row("running", false, false, true, "full").unwrap_err();
        assert!(
            e.contains("parent_backup_id"),
            "a full backup has no parent: {e}"
        );
    }

    #[test]
    fn database_names() {
        assert!(validate_database_name("postgres").is_ok());
        assert!(validate_database_name(&"x".repeat(63)).is_ok());
        assert!(matches!(
            validate_database_name(""),
            Err(CatalogError::EmptyDatabaseName)
        ));
        assert!(matches!(
            validate_database_name(&"x".repeat(64)),
            Err(CatalogError::DatabaseNameTooLong(_))
        ));
    }
}
