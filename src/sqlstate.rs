//! The SQL boundary's one map from errors to SQLSTATEs and hints.  Every error below it is a
//! typed enum of its module (`thiserror`), in this crate or in `backup_mgmt_core`; each says here
//! what it is in SQL terms (`pg::sql_error::SqlError`), so the code, the message naming the bad
//! value and the hint an operator reads are decided in this one file.  A `#[pg_extern]` returns
//! `Result<_, ErrorReport>` and converts with `?` (this crate's errors) or `.map_err(report)`
//! (the core crate's, which cannot implement a foreign conversion into a foreign type).

use std::borrow::Cow;
use std::io;

use backup_mgmt_core::checksum::ChecksumError;
use backup_mgmt_core::cron::ScheduleError;
use backup_mgmt_core::job::OPTIONS_HELP;
use backup_mgmt_core::paths::PathError;
use backup_mgmt_core::vocabulary::CatalogError;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::PgSqlErrorCode;

use crate::pg::sql_error::{report, SqlError, BUG};

use crate::catalog::records::RecordError;
use crate::catalog::registration::RegistrationError;
use crate::jobs::api::JobError;
use crate::monitoring::metrics::MetricsError;
use crate::offsite::OffsiteError;
use crate::pg::server::BlockIncrementalError;
use crate::recovery::pitr::PitrError;
use crate::retention::ExpiryError;
use crate::verification::drill::DrillError;
use crate::verification::integrity::VerificationError;
use crate::verification::restore_outcome::RestoreError;

/// `?` from this crate's error enums into `ErrorReport`.
macro_rules! into_report {
    ($($t:ty),+ $(,)?) => {
        $(impl From<$t> for ErrorReport {
            fn from(e: $t) -> Self {
                report(e)
            }
        })+
    };
}

into_report!(
    RecordError,
    VerificationError,
    RestoreError,
    DrillError,
    JobError,
    ExpiryError,
    PitrError,
    OffsiteError,
    MetricsError,
);

impl SqlError for ChecksumError {
    fn classify(&self) -> (PgSqlErrorCode, Cow<'static, str>) {
        (
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "Pass the output of sha256sum (64 hex characters), or NULL when the checksum is not known.".into(),
        )
    }
}

impl SqlError for PathError {
    fn classify(&self) -> (PgSqlErrorCode, Cow<'static, str>) {
        let (code, hint) = match self {
            PathError::Empty | PathError::NotAbsolute(_) | PathError::ParentComponent(_) => (
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "Give an absolute path without \"..\" components, e.g. /var/backups/pg/db.dump.",
            ),
            PathError::BadRoot(_) => (
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "List absolute directories separated by commas, e.g. backup_mgmt.backup_roots = '/var/backups/pg'.",
            ),
            PathError::NoRoots => (
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "Set backup_mgmt.backup_roots in postgresql.conf and reload.",
            ),
            PathError::OutsideRoots { .. } => (
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                "Only files below backup_mgmt.backup_roots may be read or written; symlinks are followed before the check.",
            ),
            PathError::IsRoot(_) => (
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                "Name the backup's own file or directory, e.g. <root>/scripts/db-20261203.dump.",
            ),
            PathError::Reserved { .. } => (
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                "The WAL archive (<root>/wal), the scratch directories (<root>/.backup_mgmt_*) and the catalog mirror belong to backup_mgmt; use another directory under a root.",
            ),
            PathError::Resolve { source, .. } if source.kind() == io::ErrorKind::NotFound => (
                PgSqlErrorCode::ERRCODE_UNDEFINED_FILE,
                "Check that the file or its directory exists.",
            ),
            PathError::Resolve { .. } | PathError::Remove { .. } | PathError::Create { .. } => (
                PgSqlErrorCode::ERRCODE_IO_ERROR,
                "Check the file's permissions for the server's OS user.",
            ),
            PathError::NotFileOrDirectory(_) => (
                PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
                "Only regular files and directories are backups; remove anything else by hand.",
            ),
        };
        (code, hint.into())
    }
}

impl SqlError for ScheduleError {
    fn classify(&self) -> (PgSqlErrorCode, Cow<'static, str>) {
        let hint = match self {
            ScheduleError::TimeZone(_) => "Use an IANA time zone name such as 'Europe/Berlin' or 'UTC'.",
            _ => "Use pg_cron syntax: '30 2 * * *' (minute hour day month weekday, weekday 0-7 with 0 and 7 Sunday), \
                  a leading seconds field, or @hourly, @daily, @weekly, @monthly, @yearly.",
        };
        (PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, hint.into())
    }
}

impl SqlError for RecordError {
    fn classify(&self) -> (PgSqlErrorCode, Cow<'static, str>) {
        use PgSqlErrorCode::*;
        // Errors of other modules carry their own SQLSTATE and hint.
        let (code, hint) = match self {
            RecordError::Catalog(inner) => return inner.classify(),
            RecordError::Path(inner) => return inner.classify(),
            RecordError::Checksum(inner) => return inner.classify(),
            RecordError::Registration(inner) => return inner.classify(),
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
            RecordError::Spi(_) => (ERRCODE_INTERNAL_ERROR, BUG.to_owned()),
        };
        (code, hint.into())
    }
}

impl SqlError for RegistrationError {
    fn classify(&self) -> (PgSqlErrorCode, Cow<'static, str>) {
        use PgSqlErrorCode::*;
        let (code, hint) = match self {
            RegistrationError::Path(inner) => return inner.classify(),
            RegistrationError::InsideCluster { .. } => (
                ERRCODE_INSUFFICIENT_PRIVILEGE,
                "A backup must live outside the cluster it is a backup of; write it under a backup root.",
            ),
            RegistrationError::Overlap { .. } => (
                ERRCODE_DUPLICATE_OBJECT,
                "Each backup has files of its own: give this one a new file or directory name.",
            ),
            RegistrationError::Spi(_) => (ERRCODE_INTERNAL_ERROR, BUG),
        };
        (code, hint.into())
    }
}

impl SqlError for CatalogError {
    fn classify(&self) -> (PgSqlErrorCode, Cow<'static, str>) {
        let hint = match self {
            CatalogError::UnknownValue { what, allowed, .. } => format!("Valid {what}s are: {allowed}."),
            CatalogError::MethodCannotTake { .. } => "pg_dump, pg_dump_directory and pg_dumpall_globals take full backups; \
                 continuous_archiving records wal; native_physical and pg_basebackup (PostgreSQL 17+) take full, incremental and differential backups."
                .to_owned(),
            CatalogError::EmptyDatabaseName | CatalogError::DatabaseNameTooLong(_) => {
                "Give the name of the database the backup is of, as in pg_database.datname.".to_owned()
            }
        };
        (PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, hint.into())
    }
}

impl SqlError for VerificationError {
    fn classify(&self) -> (PgSqlErrorCode, Cow<'static, str>) {
        use PgSqlErrorCode::*;
        let (code, hint) = match self {
            VerificationError::Path(inner) => return inner.classify(),
            VerificationError::Null => (ERRCODE_NULL_VALUE_NOT_ALLOWED, "Pass a backup_id."),
            VerificationError::UnknownBackup(_) => (
                ERRCODE_UNDEFINED_OBJECT,
                "List backups with SELECT backup_id FROM backup_management.backup_records.",
            ),
            VerificationError::NotCompleted { .. } => (
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "Wait until the backup has completed; failed and expired backups have nothing to verify.",
            ),
            VerificationError::Spi(_) => (
                ERRCODE_INTERNAL_ERROR,
                BUG,
            ),
        };
        (code, hint.into())
    }
}

impl SqlError for RestoreError {
    fn classify(&self) -> (PgSqlErrorCode, Cow<'static, str>) {
        use PgSqlErrorCode::*;
        let (code, hint) = match self {
            RestoreError::Verification(inner) => return inner.classify(),
            RestoreError::Catalog(inner) => return inner.classify(),
            RestoreError::DatabaseExists(_) => (
                ERRCODE_DUPLICATE_DATABASE,
                "Name a database that does not exist, or leave test_database_name NULL for a generated name.",
            ),
            RestoreError::Untrusted(_) => (
                ERRCODE_INSUFFICIENT_PRIVILEGE,
                "Physical restore tests start a server on the backup, so they run only on the worker's own backups; verify a registered one with verify_backup_integrity().",
            ),
            RestoreError::Unsupported(_) => (
                ERRCODE_FEATURE_NOT_SUPPORTED,
                "Restore tests cover pg_dump (custom and directory format) and pg_basebackup backups; use verify_backup_integrity() for globals.",
            ),
            RestoreError::Spi(_) => (
                ERRCODE_INTERNAL_ERROR,
                BUG,
            ),
        };
        (code, hint.into())
    }
}

impl SqlError for DrillError {
    fn classify(&self) -> (PgSqlErrorCode, Cow<'static, str>) {
        use PgSqlErrorCode::*;
        let (code, hint) = match self {
            DrillError::Null => (ERRCODE_NULL_VALUE_NOT_ALLOWED, "Pass a plan name."),
            DrillError::UnknownPlan(_) => (
                ERRCODE_UNDEFINED_OBJECT,
                "List plans with SELECT plan_name FROM disaster_recovery.recovery_plans WHERE is_active.",
            ),
            DrillError::Type(inner) => return inner.classify(),
            DrillError::Spi(_) => (
                ERRCODE_INTERNAL_ERROR,
                BUG,
            ),
        };
        (code, hint.into())
    }
}

impl SqlError for BlockIncrementalError {
    fn classify(&self) -> (PgSqlErrorCode, Cow<'static, str>) {
        use PgSqlErrorCode::*;
        match self {
            BlockIncrementalError::TooOld(_) => (
                ERRCODE_FEATURE_NOT_SUPPORTED,
                "On this server take incremental backups with backup_method 'native_physical', or full ones with pg_basebackup.".into(),
            ),
            BlockIncrementalError::SummarizeWalOff => (
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "ALTER SYSTEM SET summarize_wal = on; SELECT pg_reload_conf(); incrementals build on backups taken after that, so the first one is taken as a full.".into(),
            ),
        }
    }
}

impl SqlError for JobError {
    fn classify(&self) -> (PgSqlErrorCode, Cow<'static, str>) {
        use PgSqlErrorCode::*;
        let (code, hint) = match self {
            JobError::Schedule(inner) => return inner.classify(),
            JobError::Catalog(inner) => return inner.classify(),
            JobError::BlockIncremental(inner) => return inner.classify(),
            JobError::EmptyJobName => (ERRCODE_INVALID_PARAMETER_VALUE, "Give the job a name.".to_owned()),
            JobError::UnknownJob(_) => (
                ERRCODE_UNDEFINED_OBJECT,
                "List jobs with SELECT job_name FROM enterprise_backup.backup_jobs.".to_owned(),
            ),
            JobError::UnknownPlan(_) => (
                ERRCODE_UNDEFINED_OBJECT,
                "List plans with SELECT plan_name FROM disaster_recovery.recovery_plans WHERE is_active.".to_owned(),
            ),
            JobError::DuplicateJob(_) => (
                ERRCODE_DUPLICATE_OBJECT,
                "Change it with backup_mgmt.alter_job(), or pick another name.".to_owned(),
            ),
            JobError::NotSchedulable(_) => (
                ERRCODE_INVALID_PARAMETER_VALUE,
                format!("Jobs can use: {}.", crate::jobs::api::SCHEDULABLE.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")),
            ),
            JobError::UnknownDatabase(_) => (
                ERRCODE_INVALID_CATALOG_NAME,
                "Name a database of this cluster (SELECT datname FROM pg_database).".to_owned(),
            ),
            JobError::WrongDatabase { .. } => (
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "Connect to the catalog database to schedule jobs; a job may back up any database of the cluster."
                    .to_owned(),
            ),
            JobError::NotPreloaded => (
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "Add backup_mgmt to shared_preload_libraries in postgresql.conf and restart the server.".to_owned(),
            ),
            JobError::Options(_) => (ERRCODE_INVALID_PARAMETER_VALUE, OPTIONS_HELP.to_owned()),
            JobError::Null(what) => (ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("Pass a non-NULL {what}.")),
            JobError::Spi(_) => (ERRCODE_INTERNAL_ERROR, BUG.to_owned()),
        };
        (code, hint.into())
    }
}

impl SqlError for ExpiryError {
    fn classify(&self) -> (PgSqlErrorCode, Cow<'static, str>) {
        use PgSqlErrorCode::*;
        let (code, hint) = match self {
            ExpiryError::Null(_) => (ERRCODE_NULL_VALUE_NOT_ALLOWED, "Pass a value."),
            ExpiryError::UnknownJob(_) => (
                ERRCODE_UNDEFINED_OBJECT,
                "List jobs with SELECT job_name FROM enterprise_backup.backup_jobs.",
            ),
            ExpiryError::UnknownPolicy(_) => (
                ERRCODE_UNDEFINED_OBJECT,
                "List policies with SELECT policy_name FROM backup_management.retention_policies.",
            ),
            ExpiryError::BadTimeZone { .. } => (
                ERRCODE_INVALID_PARAMETER_VALUE,
                "Use an IANA zone name from pg_timezone_names, e.g. 'Europe/Berlin' or 'UTC'.",
            ),
            ExpiryError::UnknownBackup(_) => (
                ERRCODE_UNDEFINED_OBJECT,
                "List backups with SELECT backup_id FROM backup_management.backup_records.",
            ),
            ExpiryError::NotCompleted { .. } => (
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                "Only completed backups are kept or expired by retention.",
            ),
            ExpiryError::Spi(_) => (ERRCODE_INTERNAL_ERROR, BUG),
        };
        (code, hint.into())
    }
}

impl SqlError for PitrError {
    fn classify(&self) -> (PgSqlErrorCode, Cow<'static, str>) {
        use PgSqlErrorCode::*;
        let (code, hint) = match self {
            PitrError::Null => (
                ERRCODE_NULL_VALUE_NOT_ALLOWED,
                "Pass a time, e.g. plan_recovery(now() - interval '10 minutes').",
            ),
            PitrError::Recipe(_) => (
                ERRCODE_INVALID_PARAMETER_VALUE,
                "Rename the backup root or the file so that it has no line break; a value refused \
                 from the catalog means a record or the WAL archive's manifest was tampered with.",
            ),
            PitrError::UnknownBackup(_) => (
                ERRCODE_UNDEFINED_OBJECT,
                "List completed backups with SELECT backup_id FROM backup_management.backup_records WHERE status = 'completed'.",
            ),
            PitrError::Registered(_) => (
                ERRCODE_INSUFFICIENT_PRIVILEGE,
                "Restore a registered backup with the tools that made it; recipes are generated for the worker's own backups, whose manifests it wrote.",
            ),
            PitrError::NotNative { .. } => (
                ERRCODE_WRONG_OBJECT_TYPE,
                "For pg_basebackup backups use plan_recovery(target_time); for logical dumps use pg_restore.",
            ),
            PitrError::Spi(_) => (
                ERRCODE_INTERNAL_ERROR,
                BUG,
            ),
        };
        (code, hint.into())
    }
}

impl SqlError for OffsiteError {
    fn classify(&self) -> (PgSqlErrorCode, Cow<'static, str>) {
        use PgSqlErrorCode::*;
        let (code, hint) = match self {
            OffsiteError::Path(inner) => return inner.classify(),
            OffsiteError::Refused(crate::offsite::limits::TargetRefused::Path(inner)) => return inner.classify(),
            OffsiteError::Refused(_) => (
                ERRCODE_INSUFFICIENT_PRIVILEGE,
                "Targets configured by roles that are not superusers are held to backup_mgmt.offsite_endpoints, offsite_allow_http, credentials_env_prefix and credentials_directory.",
            ),
            OffsiteError::Null => (
                ERRCODE_NULL_VALUE_NOT_ALLOWED,
                "Pass the name of a row of backup_management.remote_backup_configs.",
            ),
            OffsiteError::UnknownTarget(_) => (
                ERRCODE_UNDEFINED_OBJECT,
                "List targets with SELECT config_name, is_active FROM backup_management.remote_backup_configs.",
            ),
            OffsiteError::NoCredentials => (
                ERRCODE_INVALID_PARAMETER_VALUE,
                "Set credentials_ref to env:NAME or file:/path holding ACCESS_KEY_ID:SECRET_ACCESS_KEY (S3) or ACCOUNT:KEY (Azure).",
            ),
            OffsiteError::Unsupported(_) => (
                ERRCODE_FEATURE_NOT_SUPPORTED,
                "Targets can be of remote_type filesystem, s3 or azure.",
            ),
            OffsiteError::BadOption("io_timeout_s", ..) => (
                ERRCODE_INVALID_PARAMETER_VALUE,
                "io_timeout_s is how long a download from the target waits for a byte, or a listing for a page, before it asks again, e.g. {\"io_timeout_s\": 60}.",
            ),
            OffsiteError::BadOption(..) => (
                ERRCODE_INVALID_PARAMETER_VALUE,
                "max_rate_mb is the target's bandwidth limit in MB/s, e.g. {\"max_rate_mb\": 20}.",
            ),
            OffsiteError::Storage(_) => (
                ERRCODE_CONNECTION_FAILURE,
                "Check the target's endpoint, bucket and credentials.",
            ),
            OffsiteError::Spi(_) => (ERRCODE_INTERNAL_ERROR, BUG),
        };
        (code, hint.into())
    }
}

impl SqlError for MetricsError {
    fn classify(&self) -> (PgSqlErrorCode, Cow<'static, str>) {
        (PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, BUG.into())
    }
}
