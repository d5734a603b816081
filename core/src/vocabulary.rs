//! The catalog's vocabulary: backup types, methods, statuses and compressions as the SQL
//! domains spell them, the database-name rule, and the row rule every `backup_records` row must
//! satisfy (checked by the extension's trigger, whoever writes the row).  A unit test keeps the
//! enums in step with the SQL domains in `sql/schema.sql`.

use std::fmt;

use crate::{checksum, paths};

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

vocabulary!(
    /// `backup_records.origin`: who made a backup.  `worker`: the background worker wrote it,
    /// in its own layout under a root; `registered`: someone recorded it with the record
    /// functions.  Only the worker's own backups become parents of native chains, are restore
    /// tested by starting a server, or are deleted as directories by retention.
    BackupOrigin, "backup origin" {
        Worker => "worker",
        Registered => "registered",
    }
);

vocabulary!(
    /// The drills `run_recovery_drill` and `schedule_drill` run (`recovery_drills.drill_type`
    /// also accepts `partial` and `table_level`, recorded by hand).  `full`: the newest pg_dump
    /// of the plan's database restore-tested; `host_loss`: the cluster restored from an
    /// off-site target alone and started.
    DrillType, "drill type" {
        Full => "full",
        HostLoss => "host_loss",
    }
);

impl BackupMethod {
    /// A dump of one database (`pg_dump`, `pg_dump_directory`): restored into a database of a
    /// running server (`restore-logical`), with no WAL to replay after it.
    pub fn is_dump(self) -> bool {
        matches!(self, BackupMethod::PgDump | BackupMethod::PgDumpDirectory)
    }

    /// A copy of the whole cluster (`native_physical`, `pg_basebackup`): what a physical
    /// restore starts from before replaying WAL.
    pub fn is_cluster_copy(self) -> bool {
        matches!(
            self,
            BackupMethod::NativePhysical | BackupMethod::PgBasebackup
        )
    }

    /// Whether this method can produce a backup of `kind`: logical dumps are always full, WAL
    /// comes only from continuous archiving, and the physical methods take full, incremental
    /// and differential backups (pg_basebackup's block-level ones need PostgreSQL 17, which the
    /// job API and the worker check: the catalog may also hold backups of other servers).
    pub fn can_take(self, kind: BackupType) -> bool {
        use BackupMethod::*;
        use BackupType::*;
        match self {
            PgDump | PgDumpDirectory | PgDumpallGlobals => kind == Full,
            ContinuousArchiving => kind == Wal,
            NativePhysical | PgBasebackup => matches!(kind, Full | Incremental | Differential),
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
    pub globals_file_path: Option<&'a str>,
    pub globals_size: Option<i64>,
    pub globals_checksum: Option<&'a str>,
    pub origin: Option<&'a str>,
}

/// What a `backup_records` row breaks.
#[derive(Debug, thiserror::Error)]
pub enum RowViolation {
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Path(#[from] paths::PathError),
    #[error(transparent)]
    Checksum(#[from] checksum::ChecksumError),
    #[error("backup size {0} is negative")]
    NegativeSize(i64),
    #[error("checksum \"{0}\" is not in lower case")]
    UpperCaseChecksum(String),
    #[error("unknown checksum algorithm \"{0}\"")]
    ChecksumAlgorithm(String),
    #[error("a finished backup record needs end_time and duration")]
    NoEndTime,
    #[error("a failed backup record needs its error_message")]
    NoErrorMessage,
    #[error("only incremental and differential backups have a parent_backup_id")]
    ParentOfFull,
    #[error("globals size {0} is negative")]
    NegativeGlobalsSize(i64),
    #[error(
        "globals_checksum and globals_size describe a globals file: globals_file_path is missing"
    )]
    GlobalsWithoutPath,
}

/// Every rule a `backup_records` row must satisfy, whoever writes it: the same vocabulary and
/// checks as the record functions' arguments, plus the row rule (a finished record says when it
/// finished, a failed one says why, only incremental and differential backups have a parent).
/// Returns what the row breaks.
pub fn check_record_row(row: &RecordRow<'_>) -> Result<(), RowViolation> {
    if let Some(name) = row.database_name {
        validate_database_name(name)?;
    }
    let kind = row.backup_type.map(BackupType::parse).transpose()?;
    let method = row.backup_method.map(BackupMethod::parse).transpose()?;
    if let (Some(kind), Some(method)) = (kind, method) {
        if !method.can_take(kind) {
            return Err(CatalogError::MethodCannotTake { method, kind }.into());
        }
    }
    if let Some(path) = row.backup_file_path {
        paths::validate_absolute(path)?;
    }
    if let Some(size) = row.backup_size.filter(|s| *s < 0) {
        return Err(RowViolation::NegativeSize(size));
    }
    let status = row.status.map(BackupStatus::parse).transpose()?;
    if let Some(sum) = row.checksum {
        // Stored lower-case, so that equality with a computed digest is plain text equality.
        if checksum::normalize_sha256_hex(sum)? != sum {
            return Err(RowViolation::UpperCaseChecksum(sum.to_owned()));
        }
    }
    if let Some(algorithm) = row.checksum_algorithm.filter(|a| *a != "sha256") {
        return Err(RowViolation::ChecksumAlgorithm(algorithm.to_owned()));
    }
    if let Some(compression) = row.compression {
        Compression::parse(compression)?;
    }
    if status.is_some_and(|s| s != BackupStatus::Running) && !row.has_end_time_and_duration {
        return Err(RowViolation::NoEndTime);
    }
    if status == Some(BackupStatus::Failed) && !row.has_error_message {
        return Err(RowViolation::NoErrorMessage);
    }
    if row.has_parent
        && !matches!(
            kind,
            Some(BackupType::Incremental | BackupType::Differential)
        )
    {
        return Err(RowViolation::ParentOfFull);
    }
    if let Some(path) = row.globals_file_path {
        paths::validate_absolute(path)?;
    }
    if let Some(size) = row.globals_size.filter(|s| *s < 0) {
        return Err(RowViolation::NegativeGlobalsSize(size));
    }
    if let Some(sum) = row.globals_checksum {
        if checksum::normalize_sha256_hex(sum)? != sum {
            return Err(RowViolation::UpperCaseChecksum(sum.to_owned()));
        }
    }
    if let Some(origin) = row.origin {
        BackupOrigin::parse(origin)?;
    }
    if row.globals_file_path.is_none()
        && (row.globals_checksum.is_some() || row.globals_size.is_some())
    {
        return Err(RowViolation::GlobalsWithoutPath);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = include_str!("../../sql/schema.sql");

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
            let e = check_record_row(&row).unwrap_err().to_string();
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
            let e = check_record_row(&row).unwrap_err().to_string();
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
        broken(
            RecordRow {
                globals_file_path: Some("relative.sql"),
                ..finished("completed")
            },
            "relative.sql",
        );
        broken(
            RecordRow {
                globals_file_path: Some("/b/x.globals.sql"),
                globals_checksum: Some("abc"),
                ..finished("completed")
            },
            "abc",
        );
        broken(
            RecordRow {
                globals_file_path: Some("/b/x.globals.sql"),
                globals_size: Some(-5),
                ..finished("completed")
            },
            "-5",
        );
        broken(
            RecordRow {
                globals_checksum: Some(&"a".repeat(64)),
                ..finished("completed")
            },
            "globals_file_path",
        );
        assert!(check_record_row(&RecordRow {
            globals_file_path: Some("/b/x.globals.sql"),
            globals_size: Some(10),
            globals_checksum: Some(&"a".repeat(64)),
            ..finished("completed")
        })
        .is_ok());
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
