//! The catalog: its SQL (tables, privileges, comments) and the vocabulary its rows use.
//!
//! The tables live in `sql/schema.sql`, loaded before any function; privileges and comments in
//! `sql/finalize.sql`, loaded after every function exists.  The Rust enums below mirror the SQL
//! domains' CHECK constraints; a unit test keeps the two in step.

use std::fmt;
use std::num::NonZeroUsize;

use pgrx::prelude::*;
use pgrx::{pg_sys::panic::ErrorReport, PgLogLevel, PgSqlErrorCode};

use crate::{checksum, security};

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

vocabulary!(
    /// `backup_records.status`.
    BackupStatus, "backup status" {
        Running => "running",
        Completed => "completed",
        Failed => "failed",
        Expired => "expired",
    }
);

vocabulary!(
    /// `backup_records.compression`: how the stored backup is compressed.
    Compression, "compression" {
        Uncompressed => "none",
        Gzip => "gzip",
        Lz4 => "lz4",
        Zstd => "zstd",
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

/// What the trigger reads of a `backup_records` row; `None` is SQL NULL (NOT NULL constraints,
/// checked after the trigger, refuse those with their own message).
#[derive(Default)]
pub struct RecordRow<'a> {
    pub database_name: Option<&'a str>,
    pub backup_type: Option<&'a str>,
    pub backup_method: Option<&'a str>,
    pub backup_file_path: Option<&'a str>,
    pub backup_size: Option<i64>,
    pub status: Option<&'a str>,
    pub checksum: Option<&'a str>,
    pub checksum_algorithm: Option<&'a str>,
    pub compression: Option<&'a str>,
    pub has_end_time_and_duration: bool,
    pub has_error_message: bool,
    pub has_parent: bool,
}

/// Every rule a `backup_records` row must satisfy, whoever writes it: the same vocabulary and
/// checks as the record functions' arguments, plus the row rule (a finished record says when it
/// finished, a failed one says why, only incremental and differential backups have a parent).
/// Returns what the row breaks.
pub fn check_record_row(row: &RecordRow<'_>) -> Result<(), String> {
    fn text<E: std::fmt::Display>(e: E) -> String {
        e.to_string()
    }
    if let Some(name) = row.database_name {
        validate_database_name(name).map_err(text)?;
    }
    let kind = row
        .backup_type
        .map(BackupType::parse)
        .transpose()
        .map_err(text)?;
    let method = row
        .backup_method
        .map(BackupMethod::parse)
        .transpose()
        .map_err(text)?;
    if let (Some(kind), Some(method)) = (kind, method) {
        if !method.can_take(kind) {
            return Err(CatalogError::MethodCannotTake { method, kind }.to_string());
        }
    }
    if let Some(path) = row.backup_file_path {
        security::validate_absolute(path).map_err(text)?;
    }
    if let Some(size) = row.backup_size.filter(|s| *s < 0) {
        return Err(format!("backup size {size} is negative"));
    }
    let status = row
        .status
        .map(BackupStatus::parse)
        .transpose()
        .map_err(text)?;
    if let Some(sum) = row.checksum {
        // Stored lower-case, so that equality with a computed digest is plain text equality.
        if checksum::normalize_sha256_hex(sum).map_err(text)? != sum {
            return Err(format!("checksum \"{sum}\" is not in lower case"));
        }
    }
    if let Some(algorithm) = row.checksum_algorithm.filter(|a| *a != "sha256") {
        return Err(format!("unknown checksum algorithm \"{algorithm}\""));
    }
    if let Some(compression) = row.compression {
        Compression::parse(compression).map_err(text)?;
    }
    if status.is_some_and(|s| s != BackupStatus::Running) && !row.has_end_time_and_duration {
        return Err("a finished backup record needs end_time and duration".into());
    }
    if status == Some(BackupStatus::Failed) && !row.has_error_message {
        return Err("a failed backup record needs its error_message".into());
    }
    if row.has_parent
        && !matches!(
            kind,
            Some(BackupType::Incremental | BackupType::Differential)
        )
    {
        return Err("only incremental and differential backups have a parent_backup_id".into());
    }
    Ok(())
}

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
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, std::convert::Infallible> {
    let Some(new_row) = trigger.new() else {
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
    // SAFETY: PostgreSQL passes a valid relation and the row being written; the values read
    // below live as long as that row.  Domain-typed or not, text columns have text's
    // representation and backup_size is an int8.
    let tupdesc = unsafe { pgrx::PgTupleDesc::from_pg_unchecked((*data.tg_relation).rd_att) };
    let mut row = RecordRow::default();
    let (mut has_end_time, mut has_duration) = (false, false);
    for att in tupdesc.iter().filter(|a| !a.is_dropped()) {
        let Some(attno) = NonZeroUsize::new(att.attnum as usize) else {
            continue;
        };
        let value = unsafe { pgrx::heap_getattr_raw(tuple, attno, tupdesc.as_ptr()) };
        let text = || {
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
                row.backup_size = value
                    .and_then(|d| unsafe { i64::from_polymorphic_datum(d, false, pg_sys::INT8OID) })
            }
            "status" => row.status = text(),
            "checksum" => row.checksum = text(),
            "checksum_algorithm" => row.checksum_algorithm = text(),
            "compression" => row.compression = text(),
            "end_time" => has_end_time = value.is_some(),
            "duration" => has_duration = value.is_some(),
            "error_message" => row.has_error_message = value.is_some(),
            "parent_backup_id" => row.has_parent = value.is_some(),
            _ => {}
        }
    }
    row.has_end_time_and_duration = has_end_time && has_duration;
    if let Err(rule) = check_record_row(&row) {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_CHECK_VIOLATION,
            format!("new row for relation \"backup_records\" violates backup_records_check: {rule}"),
            "backup_mgmt",
        )
        .set_hint("Record backups with record_backup_start(), record_backup_complete() and record_backup_failure().")
        .report(PgLogLevel::ERROR);
    }
    Ok(Some(new_row))
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

    fn finished(status: &'static str) -> RecordRow<'static> {
        RecordRow {
            database_name: Some("appdb"),
            backup_type: Some("full"),
            backup_method: Some("pg_dump"),
            backup_file_path: Some("/b/x.dump"),
            backup_size: Some(10),
            status: Some(status),
            checksum_algorithm: Some("sha256"),
            compression: Some("none"),
            has_end_time_and_duration: true,
            ..RecordRow::default()
        }
    }

    #[test]
    fn row_rule() {
        let running = RecordRow {
            has_end_time_and_duration: false,
            ..finished("running")
        };
        assert!(check_record_row(&running).is_ok());
        assert!(check_record_row(&finished("completed")).is_ok());
        assert!(check_record_row(&RecordRow {
            has_error_message: true,
            ..finished("failed")
        })
        .is_ok());
        let incremental = RecordRow {
            backup_type: Some("incremental"),
            backup_method: Some("native_physical"),
            has_parent: true,
            ..finished("completed")
        };
        assert!(check_record_row(&incremental).is_ok());

        let broken = |row: RecordRow<'_>, needle: &str| {
            let e = check_record_row(&row).unwrap_err();
            assert!(e.contains(needle), "{e:?} should mention {needle:?}");
        };
        broken(
            RecordRow {
                has_end_time_and_duration: false,
                ..finished("completed")
            },
            "end_time",
        );
        broken(
            RecordRow {
                has_end_time_and_duration: false,
                ..finished("expired")
            },
            "end_time",
        );
        broken(finished("failed"), "error_message");
        broken(
            RecordRow {
                has_parent: true,
                ..finished("completed")
            },
            "parent_backup_id",
        );
    }

    #[test]
    fn row_columns() {
        let broken = |row: RecordRow<'_>, needle: &str| {
            let e = check_record_row(&row).unwrap_err();
            assert!(e.contains(needle), "{e:?} should mention {needle:?}");
        };
        broken(
            RecordRow {
                database_name: Some(""),
                ..finished("completed")
            },
            "empty",
        );
        broken(
            RecordRow {
                backup_type: Some("weekly"),
                ..finished("completed")
            },
            "weekly",
        );
        broken(
            RecordRow {
                backup_method: Some("rsync"),
                ..finished("completed")
            },
            "rsync",
        );
        broken(
            RecordRow {
                backup_type: Some("wal"),
                ..finished("completed")
            },
            "cannot take",
        );
        broken(
            RecordRow {
                backup_file_path: Some("rel/x"),
                ..finished("completed")
            },
            "rel/x",
        );
        broken(
            RecordRow {
                backup_size: Some(-1),
                ..finished("completed")
            },
            "-1",
        );
        broken(
            RecordRow {
                status: Some("done"),
                ..finished("completed")
            },
            "done",
        );
        broken(
            RecordRow {
                checksum: Some("abc"),
                ..finished("completed")
            },
            "abc",
        );
        let upper = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
        broken(
            RecordRow {
                checksum: Some(upper),
                ..finished("completed")
            },
            "lower case",
        );
        broken(
            RecordRow {
                checksum_algorithm: Some("md5"),
                ..finished("completed")
            },
            "md5",
        );
        broken(
            RecordRow {
                compression: Some("bzip2"),
                ..finished("completed")
            },
            "bzip2",
        );
        // NULLs are left to the NOT NULL constraints.
        assert!(check_record_row(&RecordRow::default()).is_ok());
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
