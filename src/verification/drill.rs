//! Disaster-recovery drills: `run_recovery_drill(plan_name)`, and the worker of its own that a
//! scheduled drill job runs in.
//!
//! A drill restore-tests the newest restorable backup of the plan's database (a real restore,
//! `restore_test`) and records a `recovery_drills` row with the measured recovery time against
//! the plan's RTO and the data-loss window (how old the restored data is) against its RPO.  The
//! live picture is the view `backup_mgmt.recovery_status` and `monitoring::metrics()`.

use std::time::Duration;

use pgrx::datum::Interval;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiError;

use super::restore_test as restore;
use backup_mgmt_core::vocabulary::{CatalogError, DrillType};

use crate::jobs::executions::end_execution;
use crate::pg::time::interval;
use crate::pg::{guc, server, spi::in_transaction};

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("plan_name must not be NULL")]
    Null,
    #[error("recovery plan \"{0}\" does not exist or is not active")]
    UnknownPlan(String),
    #[error(transparent)]
    Type(#[from] CatalogError),
    #[error("catalog access failed: {0}")]
    Spi(#[from] SpiError),
}

/// Whole minutes, rounded up (a drill that took 20 s took "1 minute" against an RTO in minutes).
fn minutes_up(d: Duration) -> i32 {
    (d.as_secs_f64() / 60.0).ceil().min(f64::from(i32::MAX)) as i32
}

/// The drill's verdict: failed when the restore failed, partial when it worked but missed the
/// RTO or the RPO, success otherwise.
pub fn verdict(restored: bool, rto_met: bool, rpo_met: bool) -> &'static str {
    match (restored, rto_met && rpo_met) {
        (false, _) => "failed",
        (true, true) => "success",
        (true, false) => "partial",
    }
}

/// A full drill: the newest `pg_dump` backup of `database` restore-tested for real.  Returns
/// (backup, recovery time, data-loss window, restored).
#[allow(clippy::type_complexity)]
fn logical_drill(
    database: &str,
    issues: &mut Vec<String>,
) -> Result<(Option<i64>, Option<Duration>, Option<Duration>, bool), DrillError> {
    // The newest backup a drill can restore, and how old its data is now.
    let newest = Spi::connect(|c| -> Result<Option<(i64, f64)>, SpiError> {
        let t = c.select(
            "SELECT backup_id, extract(epoch FROM clock_timestamp() - start_time)::float8 \
               FROM backup_management.backup_records \
              WHERE database_name = $1 AND expired_at IS NULL AND status = 'completed' \
                AND backup_method IN ('pg_dump', 'pg_dump_directory') \
              ORDER BY end_time DESC LIMIT 1",
            None,
            &[database.into()],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        let r = t.first();
        Ok(Some((
            r.get::<i64>(1)?.unwrap_or_default(),
            r.get::<f64>(2)?.unwrap_or_default(),
        )))
    })
    .map_err(DrillError::from)?;

    Ok(match newest {
        None => {
            issues.push(format!(
                "no completed pg_dump backup of database \"{database}\" to restore"
            ));
            (None, None, None, false)
        }
        Some((id, age_seconds)) => {
            let data_loss = Duration::from_secs_f64(age_seconds.max(0.0));
            match restore::restore_test(id, None, false) {
                Ok(r) => {
                    if !r.passed {
                        issues.push(format!(
                            "the restore test of backup {id} failed (see backup_verifications)"
                        ));
                    }
                    (Some(id), r.restore_time, Some(data_loss), r.passed)
                }
                Err(e) => {
                    issues.push(format!("backup {id} could not be restore-tested: {e}"));
                    (Some(id), None, Some(data_loss), false)
                }
            }
        }
    })
}

/// Runs a disaster-recovery drill for an active plan and records the measured recovery time and
/// data-loss window in `disaster_recovery.recovery_drills`: `full` restore-tests the newest
/// completed `pg_dump` backup of its database; `host_loss` restores the cluster from an off-site
/// target alone (its own mirror, not this catalog) and starts it (`host_loss.rs`).
// pgrx's name!() columns cannot go through a type alias.
#[allow(clippy::type_complexity)]
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn run_recovery_drill(
    plan_name: Option<&str>,
    drill_type: default!(&str, "'full'"),
) -> Result<
    TableIterator<
        'static,
        (
            name!(drill_id, i64),
            name!(status, String),
            name!(recovery_time, Option<Interval>),
            name!(data_loss_window, Option<Interval>),
            name!(rto_met, bool),
            name!(rpo_met, bool),
        ),
    >,
    ErrorReport,
> {
    let name = plan_name.ok_or(DrillError::Null)?;
    let drill_type = DrillType::parse(drill_type).map_err(DrillError::from)?;
    let plan = Spi::connect(|c| -> Result<Option<(i32, String, i64, i64)>, SpiError> {
        let t = c.select(
            "SELECT plan_id, database_name, rto_minutes, rpo_minutes \
               FROM disaster_recovery.recovery_plans WHERE plan_name = $1 AND is_active",
            None,
            &[name.into()],
        )?;
        if t.is_empty() {
            return Ok(None);
        }
        let r = t.first();
        Ok(Some((
            r.get::<i32>(1)?.unwrap_or_default(),
            r.get::<String>(2)?.unwrap_or_default(),
            i64::from(r.get::<i32>(3)?.unwrap_or_default()),
            i64::from(r.get::<i32>(4)?.unwrap_or_default()),
        )))
    })
    .map_err(DrillError::from)?;
    let Some((plan_id, database, rto_minutes, rpo_minutes)) = plan else {
        return Err(DrillError::UnknownPlan(name.to_owned()).into());
    };
    let mut issues: Vec<String> = Vec::new();
    let mut restored_from = None;
    let (backup_id, recovery_time, data_loss, restored) = if drill_type == DrillType::HostLoss {
        let h = super::host_loss::host_loss_drill(&database).map_err(DrillError::from)?;
        issues.extend(h.issues);
        restored_from = h.target;
        (h.backup_id, h.recovery_time, h.data_loss, h.restored)
    } else {
        logical_drill(&database, &mut issues)?
    };
    let rto_met = recovery_time.is_some_and(|t| t.as_secs_f64() <= rto_minutes as f64 * 60.0);
    let rpo_met = data_loss.is_some_and(|d| d.as_secs_f64() <= rpo_minutes as f64 * 60.0);
    if let Some(t) = recovery_time.filter(|_| !rto_met) {
        issues.push(format!(
            "RTO breached: recovery took {:.1} s, the plan allows {rto_minutes} min",
            t.as_secs_f64()
        ));
    }
    if let Some(d) = data_loss.filter(|_| !rpo_met) {
        issues.push(format!(
            "RPO breached: the newest backup's data is {:.1} min old, the plan allows {rpo_minutes} min",
            d.as_secs_f64() / 60.0
        ));
    }
    let status = verdict(restored, rto_met, rpo_met);
    let issues_text = (!issues.is_empty()).then(|| issues.join("; "));
    let drill_id = Spi::connect_mut(|c| -> Result<i64, SpiError> {
        Ok(c.update(
            "INSERT INTO disaster_recovery.recovery_drills \
                 (plan_id, backup_id, drill_type, recovery_time_minutes, data_loss_minutes, \
                  recovery_time, data_loss_window, status, issues, restored_from) \
             VALUES ($1, $2, $3, $4, $5, make_interval(secs => $6), make_interval(secs => $7), $8, $9, $10) \
             RETURNING drill_id",
            None,
            &[
                plan_id.into(),
                backup_id.into(),
                drill_type.as_str().into(),
                recovery_time.map(minutes_up).into(),
                data_loss.map(minutes_up).into(),
                recovery_time.map(|t| t.as_secs_f64()).into(),
                data_loss.map(|d| d.as_secs_f64()).into(),
                status.into(),
                issues_text.as_deref().into(),
                restored_from.as_deref().into(),
            ],
        )?
        .first()
        .get::<i64>(1)?
        .unwrap_or_default())
    })
    .map_err(DrillError::from)?;
    if status != "success" {
        pgrx::log!(
            "backup_mgmt: recovery drill {drill_id} of plan \"{name}\": {status}: {}",
            issues_text.as_deref().unwrap_or("")
        );
    }
    Ok(TableIterator::once((
        drill_id,
        status.to_owned(),
        recovery_time.map(interval),
        data_loss.map(interval),
        rto_met,
        rpo_met,
    )))
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// A host-loss drill with no off-site target to restore from fails, recorded with the
    /// reason, like any drill that could not restore.
    #[pg_test]
    fn a_host_loss_drill_without_a_target_is_recorded_failed() {
        Spi::run(
            "INSERT INTO disaster_recovery.recovery_plans
                 (plan_name, database_name, rto_minutes, rpo_minutes, backup_strategy, recovery_procedure)
             VALUES ('hl', 'pgrx_tests', 30, 60, 'native', 'backup-mgmt restore')",
        )
        .unwrap();
        let id = Spi::get_one::<i64>(
            "SELECT drill_id FROM backup_mgmt.run_recovery_drill('hl', 'host_loss')",
        )
        .unwrap()
        .unwrap();
        let (status, issues) = Spi::get_two_with_args::<String, String>(
            "SELECT status || '/' || drill_type, issues FROM disaster_recovery.recovery_drills WHERE drill_id = $1",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(status.as_deref(), Some("failed/host_loss"));
        assert!(issues
            .unwrap_or_default()
            .contains("no active off-site target"));
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn drill_verdicts() {
        assert_eq!(verdict(false, true, true), "failed");
        assert_eq!(verdict(true, true, true), "success");
        assert_eq!(verdict(true, false, true), "partial");
        assert_eq!(verdict(true, true, false), "partial");
        assert_eq!(minutes_up(Duration::from_secs(61)), 2);
        assert_eq!(minutes_up(Duration::ZERO), 0);
        assert_eq!(minutes_up(Duration::from_millis(400)), 1);
    }
}

/// Starts a worker of its own for a drill job's execution (drills restore whole databases and
/// take minutes: the scheduler's loop must not wait for them).
pub fn start_worker(
    execution_id: i64,
) -> Result<pgrx::bgworkers::DynamicBackgroundWorker, NoWorkerSlot> {
    pgrx::bgworkers::BackgroundWorkerBuilder::new("backup_mgmt drill")
        .set_type("backup_mgmt drill")
        .set_function("backup_mgmt_drill_main")
        .set_library("backup_mgmt")
        .enable_spi_access()
        .set_argument(Some(pg_sys::Datum::from(execution_id)))
        .set_notify_pid(server::pid())
        .load_dynamic()
        .map_err(|_| NoWorkerSlot)
}

/// Why a drill worker could not be started.
#[derive(Debug, thiserror::Error)]
#[error("no background worker slot is free for the drill (max_worker_processes)")]
pub struct NoWorkerSlot;

/// The drill worker: runs `run_recovery_drill` for the plan of the job behind `execution_id`
/// and records the outcome on the execution.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn backup_mgmt_drill_main(arg: pg_sys::Datum) {
    use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(Some(&guc::database_name()), None);
    // Before any query: this session is a superuser's (CVE-2018-1058).
    guc::pin_search_path();
    let execution_id = arg.value() as i64;
    let outcome = in_transaction("running a scheduled drill", || {
        Spi::connect_mut(|c| -> Result<(String, Option<String>), SpiError> {
            // The job's drill type (`schedule_drill` keeps it in the job's options; a job
            // scheduled before 0.7.0 has none and runs a full drill, as it always did).  An
            // unknown type in a hand-edited row fails the execution with the type's error.
            let job = c.select(
                "SELECT p.plan_name, coalesce(j.options->>'drill_type', 'full') \
                   FROM enterprise_backup.backup_job_executions e \
                   JOIN enterprise_backup.backup_jobs j USING (job_id) \
                   JOIN disaster_recovery.recovery_plans p ON p.plan_id = j.plan_id \
                  WHERE e.execution_id = $1",
                None,
                &[execution_id.into()],
            )?;
            let row = job.first();
            let plan = row.get::<String>(1)?.unwrap_or_default();
            let drill_type = row.get::<String>(2)?.unwrap_or_default();
            if let Err(e) = DrillType::parse(&drill_type) {
                // A hand-edited job: said on the execution, not only in the server log.
                return Ok((String::from("not run"), Some(e.to_string())));
            }
            // Two statements: the drill's own row is not visible to the statement that made it.
            let t = c.update(
                "SELECT drill_id, status FROM backup_mgmt.run_recovery_drill($1, $2)",
                None,
                &[plan.as_str().into(), drill_type.as_str().into()],
            )?;
            let row = t.first();
            let drill_id = row.get::<i64>(1)?.unwrap_or_default();
            let status = row.get::<String>(2)?.unwrap_or_default();
            let issues = c
                .select(
                    "SELECT issues FROM disaster_recovery.recovery_drills WHERE drill_id = $1",
                    None,
                    &[drill_id.into()],
                )?
                .first()
                .get::<String>(1)?;
            Ok((status, issues))
        })
    });
    let (status, error) = match outcome {
        Some((status, issues)) if status == "success" => ("completed", issues),
        Some((status, issues)) => (
            "failed",
            Some(format!("drill {status}: {}", issues.unwrap_or_default())),
        ),
        None => (
            "failed",
            Some("the drill raised an error (see the server log)".to_owned()),
        ),
    };
    in_transaction("recording a scheduled drill", || {
        Spi::connect_mut(|c| end_execution(c, execution_id, status, None, error.as_deref()))
    });
}
