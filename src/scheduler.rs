//! The pg_cron-like job API: `schedule_backup`, `alter_job`, `unschedule`, `next_runs`, and the
//! design's `schedule_backup_jobs()`.
//!
//! A job can only take a backup of a named kind: there is no command column, so a row in
//! `enterprise_backup.backup_jobs` can never run an arbitrary program or SQL.  Every change
//! recomputes `next_run_at` with the cron engine (`schedule.rs`) in the job's time zone (NULL: the
//! server's `TimeZone` from postgresql.conf, not the session's).

use chrono::Utc;
use chrono_tz::Tz;
use pgrx::prelude::*;
use pgrx::spi::SpiError;
use pgrx::{pg_sys::panic::ErrorReport, JsonB, PgSqlErrorCode};
use serde_json::{Map, Value};

use crate::catalog::{self, BackupMethod, CatalogError};
use crate::guc;
use crate::schedule::{self, CronSchedule, ScheduleError};

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job name must not be empty")]
    EmptyJobName,
    #[error("backup job \"{0}\" does not exist")]
    UnknownJob(String),
    #[error("recovery plan \"{0}\" does not exist or is not active")]
    UnknownPlan(String),
    #[error("backup job \"{0}\" already exists")]
    DuplicateJob(String),
    #[error("backup method \"{0}\" cannot be scheduled as a job")]
    NotSchedulable(BackupMethod),
    #[error("database \"{0}\" does not exist")]
    UnknownDatabase(String),
    #[error(
        "backup jobs live in database \"{catalog}\" (backup_mgmt.database_name), not in \"{here}\""
    )]
    WrongDatabase { here: String, catalog: String },
    #[error("backup_mgmt is not in shared_preload_libraries, so no worker would run this job")]
    NotPreloaded,
    #[error("job option \"{key}\" {problem}")]
    BadOption { key: String, problem: String },
    #[error("job options must be a JSON object")]
    OptionsNotObject,
    #[error("{0} must not be NULL")]
    Null(&'static str),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("catalog access failed: {0}")]
    Spi(#[from] SpiError),
}

impl From<JobError> for ErrorReport {
    fn from(e: JobError) -> Self {
        use PgSqlErrorCode::*;
        let message = e.to_string();
        let (code, hint) = match e {
            JobError::Schedule(inner) => return inner.into(),
            JobError::Catalog(inner) => return inner.into(),
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
                format!("Jobs can use: {}.", SCHEDULABLE.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ")),
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
            JobError::BadOption { .. } | JobError::OptionsNotObject => (
                ERRCODE_INVALID_PARAMETER_VALUE,
                "Options: compression ('zstd' or 'none'), compression_level (1-22), parallel_jobs (1-64, \
                 pg_dump_directory and native_physical), timeout_seconds (1-604800), include_globals \
                 (pg_dump methods), fast_checkpoint (pg_basebackup, native_physical)."
                    .to_owned(),
            ),
            JobError::Null(what) => (ERRCODE_NULL_VALUE_NOT_ALLOWED, format!("Pass a non-NULL {what}.")),
            JobError::Spi(_) => (ERRCODE_INTERNAL_ERROR, "This is a bug in backup_mgmt; please report it.".to_owned()),
        };
        ErrorReport::new(code, message, "backup_mgmt").set_hint(hint)
    }
}

/// Methods a job may use.  WAL archiving is continuous, not scheduled.
const SCHEDULABLE: [BackupMethod; 5] = [
    BackupMethod::PgDump,
    BackupMethod::PgDumpDirectory,
    BackupMethod::PgBasebackup,
    BackupMethod::PgDumpallGlobals,
    BackupMethod::NativePhysical,
];

/// Validates job options and returns them with defaults filled in, as stored.
pub fn normalize_options(options: &Value, method: BackupMethod) -> Result<Value, JobError> {
    let Value::Object(given) = options else {
        return Err(JobError::OptionsNotObject);
    };
    let bad = |key: &str, problem: &str| JobError::BadOption {
        key: key.to_owned(),
        problem: problem.to_owned(),
    };
    let int_in = |key: &str, v: &Value, lo: i64, hi: i64| -> Result<i64, JobError> {
        v.as_i64()
            .filter(|n| (lo..=hi).contains(n))
            .ok_or_else(|| bad(key, &format!("must be an integer from {lo} to {hi}")))
    };
    let mut out = Map::new();
    out.insert("compression".into(), Value::from("zstd"));
    out.insert("compression_level".into(), Value::from(3));
    // The native physical method copies on every core unless told otherwise.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get().min(64));
    out.insert(
        "parallel_jobs".into(),
        Value::from(if method == BackupMethod::NativePhysical {
            cores
        } else {
            1
        }),
    );
    // Roles and tablespaces are not in a database's dump; a logical backup without them cannot
    // be restored on a new cluster.
    if matches!(method, BackupMethod::PgDump | BackupMethod::PgDumpDirectory) {
        out.insert("include_globals".into(), Value::from(true));
    }
    if method == BackupMethod::PgBasebackup {
        out.insert("fast_checkpoint".into(), Value::from(false));
    }
    if method == BackupMethod::NativePhysical {
        // pg_backup_start runs in the worker's own session and waits there for its checkpoint:
        // a spread one would hold the worker's loop (and a server shutdown) for minutes.
        out.insert("fast_checkpoint".into(), Value::from(true));
    }
    for (key, v) in given {
        match key.as_str() {
            "compression" => match v.as_str() {
                Some(c @ ("zstd" | "none")) => {
                    out.insert(key.clone(), Value::from(c));
                }
                _ => return Err(bad(key, "must be \"zstd\" or \"none\"")),
            },
            "compression_level" => {
                out.insert(key.clone(), Value::from(int_in(key, v, 1, 22)?));
            }
            "parallel_jobs" => {
                let n = int_in(key, v, 1, 64)?;
                if n > 1
                    && !matches!(
                        method,
                        BackupMethod::PgDumpDirectory | BackupMethod::NativePhysical
                    )
                {
                    return Err(bad(
                        key,
                        "above 1 needs backup method pg_dump_directory or native_physical",
                    ));
                }
                out.insert(key.clone(), Value::from(n));
            }
            "timeout_seconds" => {
                out.insert(key.clone(), Value::from(int_in(key, v, 1, 604_800)?));
            }
            "include_globals" | "fast_checkpoint" => {
                let Some(b) = v.as_bool() else {
                    return Err(bad(key, "must be true or false"));
                };
                let applies = if key == "include_globals" {
                    matches!(method, BackupMethod::PgDump | BackupMethod::PgDumpDirectory)
                } else {
                    matches!(
                        method,
                        BackupMethod::PgBasebackup | BackupMethod::NativePhysical
                    )
                };
                if !applies {
                    return Err(bad(
                        key,
                        &format!("does not apply to backup method {method}"),
                    ));
                }
                out.insert(key.clone(), Value::from(b));
            }
            _ => return Err(bad(key, "is not a known option")),
        }
    }
    Ok(Value::Object(out))
}

/// The parts of a job that decide what it does and when.
struct JobSpec {
    schedule: String,
    time_zone: Option<String>,
    database_name: String,
    backup_type: String,
    backup_method: String,
    options: Value,
    active: bool,
}

impl JobSpec {
    /// Validates everything and returns the normalised options and the next run (None when
    /// inactive, or when the schedule never fires).
    fn check(&self) -> Result<(Value, Option<TimestampWithTimeZone>), JobError> {
        let cron: CronSchedule = self.schedule.parse()?;
        let zone = job_zone(self.time_zone.as_deref())?;
        catalog::validate_database_name(&self.database_name)?;
        let database = std::ffi::CString::new(self.database_name.as_str())
            .map_err(|_| JobError::UnknownDatabase(self.database_name.clone()))?;
        if unsafe { pg_sys::get_database_oid(database.as_ptr(), true) } == pg_sys::InvalidOid {
            return Err(JobError::UnknownDatabase(self.database_name.clone()));
        }
        let (_, method) = catalog::parse_kind(&self.backup_type, &self.backup_method)?;
        if !SCHEDULABLE.contains(&method) {
            return Err(JobError::NotSchedulable(method));
        }
        let options = normalize_options(&self.options, method)?;
        let next = if self.active {
            next_run(&cron, zone)
        } else {
            None
        };
        Ok((options, next))
    }
}

/// The server's TimeZone as configured (not as SET in this session): what the worker uses.
fn server_time_zone() -> String {
    guc::configured(c"TimeZone").unwrap_or_else(|| "UTC".into())
}

/// The zone a job's schedule is evaluated in: its own, or the server's configured TimeZone.
pub(crate) fn job_zone(time_zone: Option<&str>) -> Result<Tz, ScheduleError> {
    match time_zone {
        Some(z) => schedule::parse_time_zone(z),
        None => schedule::parse_time_zone(&server_time_zone()),
    }
}

/// When a job with this schedule fires next, from now (None if it never fires).
pub(crate) fn next_run(cron: &CronSchedule, zone: Tz) -> Option<TimestampWithTimeZone> {
    cron.next_after(zone, Utc::now(), 1)
        .into_iter()
        .next()
        .and_then(schedule::to_timestamptz)
}

/// Jobs are only seen by the worker in `backup_mgmt.database_name`; scheduling elsewhere would
/// silently never run.
fn require_catalog_database() -> Result<(), JobError> {
    let catalog = guc::current(c"backup_mgmt.database_name").ok_or(JobError::NotPreloaded)?;
    let here = unsafe { std::ffi::CStr::from_ptr(pg_sys::get_database_name(pg_sys::MyDatabaseId)) }
        .to_string_lossy()
        .into_owned();
    if here == catalog {
        Ok(())
    } else {
        Err(JobError::WrongDatabase { here, catalog })
    }
}

fn job_name(name: Option<&str>) -> Result<&str, JobError> {
    match name {
        None => Err(JobError::Null("job_name")),
        Some(n) if n.trim().is_empty() => Err(JobError::EmptyJobName),
        Some(n) => Ok(n),
    }
}

/// Asks the worker to run a job once, as soon as it can (within a second when it is idle), on
/// top of its schedule.  Returns the job id.  The backup is taken by the worker, never by this
/// session: a pg_dump spawned from a session that holds locks can wait on them forever.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn run_job_now(job_name: Option<&str>) -> Result<i64, ErrorReport> {
    let name = self::job_name(job_name)?;
    require_catalog_database()?;
    let (id, worker_running) = Spi::connect_mut(|client| -> Result<_, JobError> {
        let t = client.update(
            "UPDATE enterprise_backup.backup_jobs SET run_requested_at = coalesce(run_requested_at, now()), \
             updated_at = now() WHERE job_name = $1 RETURNING job_id",
            None,
            &[name.into()],
        )?;
        let id = if t.is_empty() {
            None
        } else {
            t.first().get::<i64>(1)?
        };
        let worker = client
            .select(
                "SELECT EXISTS (SELECT FROM pg_catalog.pg_stat_activity WHERE backend_type = $1)",
                None,
                &[crate::worker::WORKER_TYPE.into()],
            )?
            .first()
            .get::<bool>(1)?
            .unwrap_or(false);
        Ok((id, worker))
    })?;
    let Some(id) = id else {
        return Err(JobError::UnknownJob(name.to_owned()).into());
    };
    if !worker_running {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_WARNING,
            "the backup_mgmt scheduler is not running; the job will run when it starts",
            "backup_mgmt",
        )
        .set_hint(
            "Check that backup_mgmt is in shared_preload_libraries and look for its log lines.",
        )
        .report(PgLogLevel::WARNING);
    }
    Ok(id)
}

/// Schedules a disaster-recovery drill of an active recovery plan as a job; returns its id.
/// The worker runs `run_recovery_drill(plan_name)` at each fire time, in a worker of its own.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn schedule_drill(
    job_name: Option<&str>,
    schedule: Option<&str>,
    plan_name: Option<&str>,
    time_zone: default!(Option<&str>, "NULL"),
) -> Result<i64, ErrorReport> {
    let name = self::job_name(job_name)?;
    require_catalog_database()?;
    let plan_name = plan_name.ok_or(JobError::Null("plan_name"))?;
    let cron: CronSchedule = schedule
        .ok_or(JobError::Null("schedule"))?
        .parse()
        .map_err(JobError::from)?;
    let zone = job_zone(time_zone).map_err(JobError::from)?;
    let next = next_run(&cron, zone);
    Ok(Spi::connect_mut(|client| -> Result<i64, JobError> {
        let plan = client.select(
            "SELECT plan_id, database_name FROM disaster_recovery.recovery_plans WHERE plan_name = $1 AND is_active",
            None,
            &[plan_name.into()],
        )?;
        if plan.is_empty() {
            return Err(JobError::UnknownPlan(plan_name.to_owned()));
        }
        let row = plan.first();
        let plan_id = row.get::<i32>(1)?;
        let database = row.get::<String>(2)?;
        let table = client.update(
            "INSERT INTO enterprise_backup.backup_jobs
                 (job_name, database_name, backup_type, backup_method, schedule_cron, timezone, next_run_at,
                  job_kind, plan_id)
             VALUES ($1, $2, 'full', 'pg_dump', $3, $4, $5, 'drill', $6)
             ON CONFLICT (job_name) DO NOTHING
             RETURNING job_id",
            None,
            &[
                name.into(),
                database.into(),
                schedule.into(),
                time_zone.into(),
                next.into(),
                plan_id.into(),
            ],
        )?;
        inserted_job_id(table, name)
    })?)
}

/// The id an `INSERT … ON CONFLICT (job_name) DO NOTHING RETURNING job_id` produced, or the
/// duplicate-name error when it inserted nothing.
fn inserted_job_id(table: pgrx::spi::SpiTupleTable<'_>, name: &str) -> Result<i64, JobError> {
    if table.is_empty() {
        return Err(JobError::DuplicateJob(name.to_owned()));
    }
    table
        .first()
        .get_one::<i64>()?
        .ok_or(JobError::Spi(SpiError::NoTupleTable))
}

/// Creates a backup job and returns its id.  The job first runs at the schedule's next fire time.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn schedule_backup(
    job_name: Option<&str>,
    schedule: Option<&str>,
    database_name: Option<&str>,
    backup_type: default!(Option<&str>, "'full'"),
    backup_method: default!(Option<&str>, "'pg_dump'"),
    options: default!(Option<JsonB>, "'{}'"),
    time_zone: default!(Option<&str>, "NULL"),
) -> Result<i64, ErrorReport> {
    Ok(create_job(
        job_name,
        schedule,
        database_name,
        backup_type,
        backup_method,
        options,
        time_zone,
    )?)
}

fn create_job(
    name: Option<&str>,
    schedule: Option<&str>,
    database_name: Option<&str>,
    backup_type: Option<&str>,
    backup_method: Option<&str>,
    options: Option<JsonB>,
    time_zone: Option<&str>,
) -> Result<i64, JobError> {
    let name = job_name(name)?;
    require_catalog_database()?;
    let spec = JobSpec {
        schedule: schedule.ok_or(JobError::Null("schedule"))?.to_owned(),
        time_zone: time_zone.map(str::to_owned),
        database_name: database_name
            .ok_or(JobError::Null("database_name"))?
            .to_owned(),
        backup_type: backup_type.unwrap_or("full").to_owned(),
        backup_method: backup_method.unwrap_or("pg_dump").to_owned(),
        options: options
            .map(|j| j.0)
            .unwrap_or_else(|| Value::Object(Map::new())),
        active: true,
    };
    let (options, next) = spec.check()?;
    Spi::connect_mut(|client| {
        let table = client.update(
            "INSERT INTO enterprise_backup.backup_jobs
                 (job_name, database_name, backup_type, backup_method, schedule_cron, timezone, options, next_run_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (job_name) DO NOTHING
             RETURNING job_id",
            None,
            &[
                name.into(),
                spec.database_name.as_str().into(),
                spec.backup_type.as_str().into(),
                spec.backup_method.as_str().into(),
                spec.schedule.as_str().into(),
                spec.time_zone.as_deref().into(),
                JsonB(options).into(),
                next.into(),
            ],
        )?;
        inserted_job_id(table, name)
    })
}

/// Changes a job; NULL arguments leave that part unchanged.  `next_run_at` is recomputed.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn alter_job(
    job_name: Option<&str>,
    schedule: default!(Option<&str>, "NULL"),
    database_name: default!(Option<&str>, "NULL"),
    backup_type: default!(Option<&str>, "NULL"),
    backup_method: default!(Option<&str>, "NULL"),
    options: default!(Option<JsonB>, "NULL"),
    time_zone: default!(Option<&str>, "NULL"),
    active: default!(Option<bool>, "NULL"),
) -> Result<(), ErrorReport> {
    let name = self::job_name(job_name)?;
    require_catalog_database()?;
    Spi::connect_mut(|client| -> Result<(), JobError> {
        // update(), not select(): pgrx runs select() read-only, and FOR UPDATE locks.
        let current = client.update(
            "SELECT schedule_cron, timezone, database_name::text, backup_type::text, backup_method::text,
                    options, is_active
               FROM enterprise_backup.backup_jobs WHERE job_name = $1 FOR UPDATE",
            Some(1),
            &[name.into()],
        )?;
        if current.is_empty() {
            return Err(JobError::UnknownJob(name.to_owned()));
        }
        let row = current.first();
        let text = |i: usize| -> Result<String, JobError> {
            Ok(row.get::<String>(i)?.unwrap_or_default())
        };
        let spec = JobSpec {
            schedule: schedule.map(str::to_owned).map_or_else(|| text(1), Ok)?,
            time_zone: match time_zone {
                Some(z) => Some(z.to_owned()),
                None => row.get::<String>(2)?,
            },
            database_name: database_name
                .map(str::to_owned)
                .map_or_else(|| text(3), Ok)?,
            backup_type: backup_type.map(str::to_owned).map_or_else(|| text(4), Ok)?,
            backup_method: backup_method
                .map(str::to_owned)
                .map_or_else(|| text(5), Ok)?,
            options: match options {
                Some(j) => j.0,
                None => row
                    .get::<JsonB>(6)?
                    .map(|j| j.0)
                    .unwrap_or(Value::Object(Map::new())),
            },
            active: active.or(row.get::<bool>(7)?).unwrap_or(true),
        };
        let (options, next) = spec.check()?;
        client.update(
            "UPDATE enterprise_backup.backup_jobs
                SET schedule_cron = $2, timezone = $3, database_name = $4, backup_type = $5, backup_method = $6,
                    options = $7, is_active = $8, next_run_at = $9, updated_at = now()
              WHERE job_name = $1",
            None,
            &[
                name.into(),
                spec.schedule.as_str().into(),
                spec.time_zone.as_deref().into(),
                spec.database_name.as_str().into(),
                spec.backup_type.as_str().into(),
                spec.backup_method.as_str().into(),
                JsonB(options).into(),
                spec.active.into(),
                next.into(),
            ],
        )?;
        Ok(())
    })?;
    Ok(())
}

/// Deletes a job (and its execution history; the backups it took stay in the catalog).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn unschedule(job_name: Option<&str>) -> Result<bool, ErrorReport> {
    let name = self::job_name(job_name)?;
    let deleted = Spi::connect_mut(|client| -> Result<bool, JobError> {
        let t = client.update(
            "DELETE FROM enterprise_backup.backup_jobs WHERE job_name = $1 RETURNING job_id",
            None,
            &[name.into()],
        )?;
        Ok(!t.is_empty())
    })?;
    if deleted {
        Ok(true)
    } else {
        Err(JobError::UnknownJob(name.to_owned()).into())
    }
}

/// The next `n` times a job will fire, from now.
#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn next_runs(
    job_name: Option<&str>,
    n: default!(i32, 5),
) -> Result<SetOfIterator<'static, TimestampWithTimeZone>, ErrorReport> {
    let name = self::job_name(job_name)?;
    let found = Spi::connect(
        |client| -> Result<Option<(String, Option<String>)>, JobError> {
            let t = client.select(
            "SELECT schedule_cron, timezone FROM enterprise_backup.backup_jobs WHERE job_name = $1",
            Some(1),
            &[name.into()],
        )?;
            if t.is_empty() {
                return Ok(None);
            }
            let row = t.first();
            Ok(Some((
                row.get::<String>(1)?.unwrap_or_default(),
                row.get::<String>(2)?,
            )))
        },
    )?;
    let (cron, zone) = found.ok_or_else(|| JobError::UnknownJob(name.to_owned()))?;
    let zone = zone.unwrap_or_else(server_time_zone);
    schedule::schedule_preview(&cron, Some(&zone), n)
}

/// Recomputes `next_run_at` of every active job from now (e.g. after changing the server's
/// TimeZone).  The design's function of the same name, done with a real cron engine.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn schedule_backup_jobs() -> Result<(), ErrorReport> {
    Spi::connect_mut(|client| -> Result<(), JobError> {
        // update(), not select(): pgrx runs select() read-only, and FOR UPDATE locks.
        let jobs = client.update(
            "SELECT job_id, schedule_cron, timezone FROM enterprise_backup.backup_jobs WHERE is_active FOR UPDATE",
            None,
            &[],
        )?;
        let mut updates = Vec::new();
        for row in jobs {
            let id = row.get::<i64>(1)?.unwrap_or_default();
            let cron: CronSchedule = row.get::<String>(2)?.unwrap_or_default().parse()?;
            let zone = job_zone(row.get::<String>(3)?.as_deref())?;
            updates.push((id, next_run(&cron, zone)));
        }
        for (id, next) in updates {
            client.update(
                "UPDATE enterprise_backup.backup_jobs SET next_run_at = $2 WHERE job_id = $1",
                None,
                &[id.into(), next.into()],
            )?;
        }
        Ok(())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn options_get_defaults_and_are_validated() {
        let o = normalize_options(&json!({}), BackupMethod::PgDump).unwrap();
        assert_eq!(
            o,
            json!({"compression": "zstd", "compression_level": 3, "parallel_jobs": 1, "include_globals": true})
        );
        let o = normalize_options(
            &json!({"fast_checkpoint": true}),
            BackupMethod::PgBasebackup,
        )
        .unwrap();
        assert_eq!(o["fast_checkpoint"], true);
        assert!(o.get("include_globals").is_none());
        let o = normalize_options(
            &json!({"compression": "none", "timeout_seconds": 3600, "parallel_jobs": 4}),
            BackupMethod::PgDumpDirectory,
        )
        .unwrap();
        assert_eq!(o["compression"], "none");
        assert_eq!(o["timeout_seconds"], 3600);
        assert_eq!(o["parallel_jobs"], 4);

        let problem = |v: Value, m: BackupMethod| normalize_options(&v, m).unwrap_err().to_string();
        assert!(problem(json!({"compresion": "zstd"}), BackupMethod::PgDump)
            .contains("\"compresion\" is not a known option"));
        assert!(
            problem(json!({"compression": "gzip"}), BackupMethod::PgDump)
                .contains("\"compression\"")
        );
        assert!(
            problem(json!({"compression_level": 23}), BackupMethod::PgDump).contains("1 to 22")
        );
        assert!(
            problem(json!({"compression_level": "3"}), BackupMethod::PgDump).contains("integer")
        );
        assert!(
            problem(json!({"include_globals": true}), BackupMethod::PgBasebackup)
                .contains("does not apply to backup method pg_basebackup")
        );
        assert!(
            problem(json!({"fast_checkpoint": 1}), BackupMethod::PgBasebackup)
                .contains("true or false")
        );
        assert!(problem(json!({"parallel_jobs": 4}), BackupMethod::PgDump)
            .contains("pg_dump_directory"));
        assert!(problem(json!({"timeout_seconds": 0}), BackupMethod::PgDump)
            .contains("timeout_seconds"));
        assert!(matches!(
            normalize_options(&json!([1]), BackupMethod::PgDump),
            Err(JobError::OptionsNotObject)
        ));
    }
}
