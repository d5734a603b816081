//! The pg_cron-like job API: `schedule_backup`, `alter_job`, `unschedule`, `next_runs`, and the
//! design's `schedule_backup_jobs()`.
//!
//! A job can only take a backup of a named kind: there is no command column, so a row in
//! `enterprise_backup.backup_jobs` can never run an arbitrary program or SQL.  Every change
//! recomputes `next_run_at` with the cron engine (`backup_mgmt_core::cron`) in the job's time zone
//! (NULL: the server's `TimeZone` from postgresql.conf, not the session's); options are
//! `backup_mgmt_core::job::JobOptions`, validated with their defaults filled in.

use backup_mgmt_core::cron::{CronSchedule, ScheduleError};
use backup_mgmt_core::job::{JobOptions, OptionError};
use backup_mgmt_core::vocabulary::{
    self as catalog, BackupMethod, BackupType, CatalogError, DrillType,
};
use pgrx::prelude::*;
use pgrx::spi::SpiError;
use pgrx::{pg_sys::panic::ErrorReport, JsonB};
use serde_json::{Map, Value};

use super::preview::{job_zone, next_run, schedule_preview, server_time_zone};
use crate::pg::{guc, server};

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
    #[error(transparent)]
    Options(#[from] OptionError),
    #[error("{0} must not be NULL")]
    Null(&'static str),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    BlockIncremental(#[from] server::BlockIncrementalError),
    #[error("catalog access failed: {0}")]
    Spi(#[from] SpiError),
}

/// Methods a job may use.  WAL archiving is continuous, not scheduled.
pub(crate) const SCHEDULABLE: [BackupMethod; 5] = [
    BackupMethod::PgDump,
    BackupMethod::PgDumpDirectory,
    BackupMethod::PgBasebackup,
    BackupMethod::PgDumpallGlobals,
    BackupMethod::NativePhysical,
];

/// The parts of a job that decide what it does and when.
struct JobSpec {
    schedule: String,
    time_zone: Option<String>,
    database_name: String,
    backup_type: String,
    backup_method: String,
    options: Value,
    active: bool,
    /// A drill job (`schedule_drill`): its options are its drill type, not a method's.
    drill: bool,
}

/// A drill job's options: its drill type only (what `schedule_drill` writes; none means `full`).
fn drill_options(given: &Value) -> Result<Value, JobError> {
    let Value::Object(given) = given else {
        return Err(OptionError::NotObject.into());
    };
    let mut out = Map::new();
    for (key, v) in given {
        match (key.as_str(), v.as_str()) {
            ("drill_type", Some(t)) => {
                out.insert(key.clone(), Value::from(DrillType::parse(t)?.as_str()));
            }
            _ => {
                return Err(OptionError::Bad {
                    key: key.clone(),
                    problem:
                        "a drill job's only option is \"drill_type\" (\"full\" or \"host_loss\")"
                            .to_owned(),
                }
                .into())
            }
        }
    }
    Ok(Value::Object(out))
}

impl JobSpec {
    /// Validates everything and returns the normalised options and the next run (None when
    /// inactive, or when the schedule never fires).
    fn check(&self) -> Result<(Value, Option<TimestampWithTimeZone>), JobError> {
        let cron: CronSchedule = self.schedule.parse()?;
        let zone = job_zone(self.time_zone.as_deref())?;
        catalog::validate_database_name(&self.database_name)?;
        if !server::database_exists(&self.database_name) {
            return Err(JobError::UnknownDatabase(self.database_name.clone()));
        }
        let (kind, method) = catalog::parse_kind(&self.backup_type, &self.backup_method)?;
        let next = || {
            if self.active {
                next_run(&cron, zone)
            } else {
                None
            }
        };
        if self.drill {
            return Ok((drill_options(&self.options)?, next()));
        }
        if !SCHEDULABLE.contains(&method) {
            return Err(JobError::NotSchedulable(method));
        }
        // Said now rather than at the first run: the worker checks again each time.
        if method == BackupMethod::PgBasebackup && kind != BackupType::Full {
            server::block_incrementals()?;
        }
        let options = JobOptions::normalize(&self.options, method)?.to_json();
        Ok((options, next()))
    }
}

/// Jobs are only seen by the worker in `backup_mgmt.database_name`; scheduling elsewhere would
/// silently never run.
fn require_catalog_database() -> Result<(), JobError> {
    let catalog = guc::current(c"backup_mgmt.database_name").ok_or(JobError::NotPreloaded)?;
    let here = server::current_database();
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
                &[server::WORKER_TYPE.into()],
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
/// The worker runs `run_recovery_drill(plan_name, drill_type)` at each fire time, in a worker
/// of its own.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn schedule_drill(
    job_name: Option<&str>,
    schedule: Option<&str>,
    plan_name: Option<&str>,
    time_zone: default!(Option<&str>, "NULL"),
    drill_type: default!(Option<&str>, "'full'"),
) -> Result<i64, ErrorReport> {
    let name = self::job_name(job_name)?;
    require_catalog_database()?;
    let plan_name = plan_name.ok_or(JobError::Null("plan_name"))?;
    let drill_type = drill_type.ok_or(JobError::Null("drill_type"))?;
    // Kept in the job's options, read by the drill worker when the job runs.
    let options = JsonB(drill_options(
        &serde_json::json!({ "drill_type": drill_type }),
    )?);
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
                  job_kind, plan_id, options)
             VALUES ($1, $2, 'full', 'pg_dump', $3, $4, $5, 'drill', $6, $7)
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
                options.into(),
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
        drill: false,
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
                    options, is_active, job_kind = 'drill'
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
            drill: row.get::<bool>(8)?.unwrap_or(false),
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
    schedule_preview(&cron, Some(&zone), n)
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

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[allow(unused_imports)]
    use crate::testing::*;

    #[pg_test]
    fn schedule_backup_creates_a_job_with_its_next_run() {
        let id = Spi::get_one::<i64>(
            "SELECT backup_mgmt.schedule_backup('nightly', '30 2 * * *', 'pgrx_tests', 'full', 'pg_dump',
                                                '{\"timeout_seconds\": 600}', 'Europe/Berlin')",
        )
        .unwrap();
        assert!(id.is_some());
        let ok = Spi::get_one::<bool>(
            "SELECT next_run_at = (SELECT t FROM backup_mgmt.schedule_preview('30 2 * * *', 'Europe/Berlin', 1) t)
                    AND next_run_at > now() AND is_active
                    AND options = '{\"compression\": \"zstd\", \"compression_level\": 3, \"parallel_jobs\": 1,
                                    \"timeout_seconds\": 600, \"include_globals\": true}'::jsonb
               FROM enterprise_backup.backup_jobs WHERE job_name = 'nightly'",
        )
        .unwrap();
        assert_eq!(ok, Some(true));
        let runs = Spi::get_one::<i64>(
            "SELECT count(*) FROM backup_mgmt.next_runs('nightly', 3) t
              WHERE extract(hour FROM t AT TIME ZONE 'Europe/Berlin') = 2
                AND extract(minute FROM t AT TIME ZONE 'Europe/Berlin') = 30",
        )
        .unwrap();
        assert_eq!(runs, Some(3));
    }

    #[pg_test]
    fn schedule_backup_refuses_bad_jobs() {
        Spi::run("SELECT backup_mgmt.schedule_backup('dup', '@daily', 'pgrx_tests')").unwrap();
        assert_fails(
            "SELECT backup_mgmt.schedule_backup('dup', '@daily', 'pgrx_tests')",
            "42710",
            "dup",
        );
        assert_fails(
            "SELECT backup_mgmt.schedule_backup('j', '0 24 * * *', 'pgrx_tests')",
            "22023",
            "hour",
        );
        assert_fails(
            "SELECT backup_mgmt.schedule_backup('j', '@daily', 'pgrx_tests', time_zone => 'Nowhere/City')",
            "22023",
            "Nowhere/City",
        );
        assert_fails(
            "SELECT backup_mgmt.schedule_backup('j', '@daily', 'no_such_db')",
            "3D000",
            "no_such_db",
        );
        assert_fails(
            "SELECT backup_mgmt.schedule_backup('j', '@daily', 'pgrx_tests', 'wal', 'continuous_archiving')",
            "22023",
            "continuous_archiving",
        );
        assert_fails(
            "SELECT backup_mgmt.schedule_backup('j', '@daily', 'pgrx_tests', options => '{\"compresion\": 1}')",
            "22023",
            "compresion",
        );
        assert_fails(
            "SELECT backup_mgmt.schedule_backup(' ', '@daily', 'pgrx_tests')",
            "22023",
            "empty",
        );
        let n = Spi::get_one::<i64>("SELECT count(*) FROM enterprise_backup.backup_jobs").unwrap();
        assert_eq!(n, Some(1), "only the first, valid job was written");
    }

    #[pg_test]
    fn alter_job_and_unschedule() {
        Spi::run("SELECT backup_mgmt.schedule_backup('hourly', '@hourly', 'pgrx_tests')").unwrap();
        Spi::run(
            "SELECT backup_mgmt.alter_job('hourly', schedule => '15 4 * * *', time_zone => 'UTC')",
        )
        .unwrap();
        let ok = Spi::get_one::<bool>(
            "SELECT schedule_cron = '15 4 * * *' AND timezone = 'UTC'
                    AND extract(hour FROM next_run_at AT TIME ZONE 'UTC') = 4
               FROM enterprise_backup.backup_jobs WHERE job_name = 'hourly'",
        )
        .unwrap();
        assert_eq!(ok, Some(true));
        Spi::run("SELECT backup_mgmt.alter_job('hourly', active => false)").unwrap();
        let next = Spi::get_one::<bool>(
            "SELECT next_run_at IS NULL AND NOT is_active FROM enterprise_backup.backup_jobs WHERE job_name = 'hourly'",
        )
        .unwrap();
        assert_eq!(next, Some(true), "an inactive job has no next run");
        assert_fails(
            "SELECT backup_mgmt.alter_job('hourly', schedule => 'often')",
            "22023",
            "often",
        );
        assert_fails(
            "SELECT backup_mgmt.alter_job('nope', active => true)",
            "42704",
            "nope",
        );
        assert_eq!(
            Spi::get_one::<bool>("SELECT backup_mgmt.unschedule('hourly')").unwrap(),
            Some(true)
        );
        assert_fails("SELECT backup_mgmt.unschedule('hourly')", "42704", "hourly");
        assert_fails(
            "SELECT * FROM backup_mgmt.next_runs('hourly')",
            "42704",
            "hourly",
        );
    }

    #[pg_test]
    fn run_job_now_queues_a_run_for_the_worker() {
        Spi::run("SELECT backup_mgmt.schedule_backup('later', '@yearly', 'pgrx_tests')").unwrap();
        let id = Spi::get_one::<i64>("SELECT backup_mgmt.run_job_now('later')").unwrap();
        let queued = Spi::get_one::<bool>(
            "SELECT run_requested_at IS NOT NULL FROM enterprise_backup.backup_jobs WHERE job_name = 'later'",
        )
        .unwrap();
        assert_eq!(queued, Some(true));
        assert!(id.is_some_and(|i| i > 0));
        assert_fails("SELECT backup_mgmt.run_job_now('nope')", "42704", "nope");
        assert_fails("SELECT backup_mgmt.run_job_now(NULL)", "22004", "job_name");
        assert_fails("SELECT backup_mgmt.run_job_now(' ')", "22023", "job name");
    }

    #[pg_test]
    fn job_options_for_the_worker_are_validated() {
        assert_fails(
            "SELECT backup_mgmt.schedule_backup('b', '@daily', 'pgrx_tests', 'full', 'pg_basebackup', '{\"include_globals\": true}')",
            "22023",
            "include_globals",
        );
        Spi::run("SELECT backup_mgmt.schedule_backup('b', '@daily', 'pgrx_tests', 'full', 'pg_basebackup', '{\"fast_checkpoint\": true}')").unwrap();
        let o = Spi::get_one::<String>(
            "SELECT options::text FROM enterprise_backup.backup_jobs WHERE job_name = 'b'",
        )
        .unwrap()
        .unwrap_or_default();
        assert!(o.contains("\"fast_checkpoint\": true"), "{o}");
    }

    #[pg_test]
    fn schedule_backup_jobs_recomputes_next_runs() {
        Spi::run("SELECT backup_mgmt.schedule_backup('a', '*/10 * * * *', 'pgrx_tests')").unwrap();
        Spi::run("UPDATE enterprise_backup.backup_jobs SET next_run_at = NULL").unwrap();
        Spi::run("SELECT backup_mgmt.schedule_backup_jobs()").unwrap();
        let ok = Spi::get_one::<bool>(
            "SELECT next_run_at > now() AND next_run_at <= now() + interval '10 minutes'
               FROM enterprise_backup.backup_jobs WHERE job_name = 'a'",
        )
        .unwrap();
        assert_eq!(ok, Some(true));
    }
}
