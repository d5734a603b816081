//! Disaster recovery: `run_recovery_drill(plan_name)` and `metrics()`.
//!
//! A drill restore-tests the newest restorable backup of the plan's database (a real restore,
//! `restore.rs`) and records a `recovery_drills` row with the measured recovery time against the
//! plan's RTO and the data-loss window (how old the restored data is) against its RPO.  The live
//! picture is the view `backup_mgmt.recovery_status`; `metrics()` publishes it, and the backups'
//! state, in Prometheus text format.

use std::fmt::Write as _;
use std::time::Duration;

use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::spi::SpiError;
use pgrx::{pg_sys::panic::ErrorReport, PgSqlErrorCode};

use crate::restore;

#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("plan_name must not be NULL")]
    Null,
    #[error("recovery plan \"{0}\" does not exist or is not active")]
    UnknownPlan(String),
    #[error("drill type \"{0}\" is not supported yet")]
    UnsupportedType(String),
    #[error("catalog access failed: {0}")]
    Spi(#[from] SpiError),
}

impl From<DrillError> for ErrorReport {
    fn from(e: DrillError) -> Self {
        use PgSqlErrorCode::*;
        let message = e.to_string();
        let (code, hint) = match e {
            DrillError::Null => (ERRCODE_NULL_VALUE_NOT_ALLOWED, "Pass a plan name."),
            DrillError::UnknownPlan(_) => (
                ERRCODE_UNDEFINED_OBJECT,
                "List plans with SELECT plan_name FROM disaster_recovery.recovery_plans WHERE is_active.",
            ),
            DrillError::UnsupportedType(_) => (
                ERRCODE_FEATURE_NOT_SUPPORTED,
                "Drills restore a whole database: use drill_type 'full'.",
            ),
            DrillError::Spi(_) => (
                ERRCODE_INTERNAL_ERROR,
                "This is a bug in backup_mgmt; please report it.",
            ),
        };
        ErrorReport::new(code, message, "backup_mgmt").set_hint(hint)
    }
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

/// Runs a disaster-recovery drill for an active plan: restore-tests the newest completed
/// `pg_dump` backup of its database and records the measured recovery time and data-loss window
/// in `disaster_recovery.recovery_drills`.
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
    if drill_type != "full" {
        return Err(DrillError::UnsupportedType(drill_type.to_owned()).into());
    }
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
    // The newest backup a drill can restore, and how old its data is now.
    let newest = Spi::connect(|c| -> Result<Option<(i64, f64)>, SpiError> {
        let t = c.select(
            "SELECT backup_id, extract(epoch FROM clock_timestamp() - start_time)::float8 \
               FROM backup_management.backup_records \
              WHERE database_name = $1 AND status = 'completed' AND backup_method IN ('pg_dump', 'pg_dump_directory') \
              ORDER BY end_time DESC LIMIT 1",
            None,
            &[database.as_str().into()],
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

    let mut issues: Vec<String> = Vec::new();
    let (backup_id, recovery_time, data_loss, restored) = match newest {
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
                  recovery_time, data_loss_window, status, issues) \
             VALUES ($1, $2, $3, $4, $5, make_interval(secs => $6), make_interval(secs => $7), $8, $9) \
             RETURNING drill_id",
            None,
            &[
                plan_id.into(),
                backup_id.into(),
                drill_type.into(),
                recovery_time.map(minutes_up).into(),
                data_loss.map(minutes_up).into(),
                recovery_time.map(|t| t.as_secs_f64()).into(),
                data_loss.map(|d| d.as_secs_f64()).into(),
                status.into(),
                issues_text.as_deref().into(),
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
        recovery_time.map(restore::interval),
        data_loss.map(restore::interval),
        rto_met,
        rpo_met,
    )))
}

/// One sample of a metric: its labels and value.
pub struct Sample {
    pub labels: Vec<(&'static str, String)>,
    pub value: f64,
}

/// A metric family in the Prometheus text exposition format.
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: &'static str,
    pub samples: Vec<Sample>,
}

/// A label value escaped as the exposition format requires (backslash, double quote, newline).
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Renders metric families as Prometheus text.
pub fn render(families: &[Family]) -> String {
    let mut out = String::new();
    for f in families {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for s in &f.samples {
            out.push_str(f.name);
            if !s.labels.is_empty() {
                let labels: Vec<String> = s
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                    .collect();
                let _ = write!(out, "{{{}}}", labels.join(","));
            }
            let _ = writeln!(out, " {}", s.value);
        }
    }
    out
}

/// Per-database and per-plan metrics for a Prometheus scrape (postgres_exporter custom query, or
/// `psql -Atc 'SELECT backup_mgmt.metrics()'` behind a text-file collector).
#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn metrics() -> Result<String, ErrorReport> {
    let families = Spi::connect(|c| -> Result<Vec<Family>, SpiError> {
        let mut last_success = Vec::new();
        let mut size = Vec::new();
        let mut duration = Vec::new();
        let mut failures = Vec::new();
        let mut verified = Vec::new();
        let rows = c.select(
            "SELECT d.database_name, \
                    (SELECT extract(epoch FROM max(end_time))::float8 FROM backup_management.backup_records r \
                      WHERE r.database_name = d.database_name AND r.status = 'completed'), \
                    (SELECT backup_size::float8 FROM backup_management.backup_records r \
                      WHERE r.database_name = d.database_name AND r.status = 'completed' ORDER BY end_time DESC LIMIT 1), \
                    (SELECT extract(epoch FROM duration)::float8 FROM backup_management.backup_records r \
                      WHERE r.database_name = d.database_name AND r.status = 'completed' ORDER BY end_time DESC LIMIT 1), \
                    (SELECT count(*)::float8 FROM backup_management.backup_records r \
                      WHERE r.database_name = d.database_name AND r.status = 'failed'), \
                    (SELECT CASE v.verification_status WHEN 'passed' THEN 1 ELSE 0 END::float8 \
                       FROM backup_management.backup_verifications v JOIN backup_management.backup_records r USING (backup_id) \
                      WHERE r.database_name = d.database_name ORDER BY v.verified_at DESC LIMIT 1) \
               FROM (SELECT DISTINCT database_name FROM backup_management.backup_records WHERE backup_type <> 'wal') d \
              ORDER BY 1",
            None,
            &[],
        )?;
        for r in rows {
            let db = r.get::<String>(1)?.unwrap_or_default();
            let label = || vec![("database", db.clone())];
            let push = |into: &mut Vec<Sample>, v: Option<f64>| {
                if let Some(value) = v {
                    into.push(Sample {
                        labels: label(),
                        value,
                    });
                }
            };
            push(&mut last_success, r.get::<f64>(2)?);
            push(&mut size, r.get::<f64>(3)?);
            push(&mut duration, r.get::<f64>(4)?);
            push(&mut failures, r.get::<f64>(5)?);
            push(&mut verified, r.get::<f64>(6)?);
        }
        let mut exposure = Vec::new();
        let mut rpo_breached = Vec::new();
        let mut rto = Vec::new();
        let plans = c.select(
            "SELECT plan_name, database_name, extract(epoch FROM rpo_exposure)::float8, \
                    (rpo_status = 'breached')::int::float8, extract(epoch FROM last_measured_rto)::float8 \
               FROM backup_mgmt.recovery_status ORDER BY 1",
            None,
            &[],
        )?;
        for r in plans {
            let labels = vec![
                ("plan", r.get::<String>(1)?.unwrap_or_default()),
                ("database", r.get::<String>(2)?.unwrap_or_default()),
            ];
            if let Some(v) = r.get::<f64>(3)? {
                exposure.push(Sample {
                    labels: labels.clone(),
                    value: v,
                });
            }
            if let Some(v) = r.get::<f64>(4)? {
                rpo_breached.push(Sample {
                    labels: labels.clone(),
                    value: v,
                });
            }
            if let Some(v) = r.get::<f64>(5)? {
                rto.push(Sample { labels, value: v });
            }
        }
        Ok(vec![
            Family { name: "backup_mgmt_last_success_timestamp_seconds", help: "Unix time the newest completed backup of the database ended.", kind: "gauge", samples: last_success },
            Family { name: "backup_mgmt_last_backup_size_bytes", help: "Size of the newest completed backup as stored.", kind: "gauge", samples: size },
            Family { name: "backup_mgmt_last_backup_duration_seconds", help: "How long the newest completed backup took.", kind: "gauge", samples: duration },
            Family { name: "backup_mgmt_backups_failed", help: "Failed backups recorded in the catalog.", kind: "gauge", samples: failures },
            Family { name: "backup_mgmt_last_verification_passed", help: "1 if the newest verification of the database's backups passed, 0 if it failed.", kind: "gauge", samples: verified },
            Family { name: "backup_mgmt_rpo_exposure_seconds", help: "Age of the newest verified backup (or archived WAL), per recovery plan.", kind: "gauge", samples: exposure },
            Family { name: "backup_mgmt_rpo_breached", help: "1 if the RPO exposure exceeds the plan's RPO.", kind: "gauge", samples: rpo_breached },
            Family { name: "backup_mgmt_last_drill_recovery_seconds", help: "Recovery time measured by the newest drill, per recovery plan.", kind: "gauge", samples: rto },
        ])
    })
    .map_err(DrillError::from)?;
    Ok(render(&families))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn exposition_format_escapes_labels() {
        let text = render(&[Family {
            name: "backup_mgmt_x",
            help: "Help.",
            kind: "gauge",
            samples: vec![Sample {
                labels: vec![("database", "we\"ird\\db\nname".into())],
                value: 1.5,
            }],
        }]);
        assert_eq!(
            text,
            "# HELP backup_mgmt_x Help.\n# TYPE backup_mgmt_x gauge\nbackup_mgmt_x{database=\"we\\\"ird\\\\db\\nname\"} 1.5\n"
        );
    }

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
pub fn start_worker(execution_id: i64) -> Result<pgrx::bgworkers::DynamicBackgroundWorker, String> {
    pgrx::bgworkers::BackgroundWorkerBuilder::new("backup_mgmt drill")
        .set_type("backup_mgmt drill")
        .set_function("backup_mgmt_drill_main")
        .set_library("backup_mgmt")
        .enable_spi_access()
        .set_argument(Some(pg_sys::Datum::from(execution_id)))
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic()
        .map_err(|_| {
            "no background worker slot is free for the drill (max_worker_processes)".to_owned()
        })
}

/// The drill worker: runs `run_recovery_drill` for the plan of the job behind `execution_id`
/// and records the outcome on the execution.
#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn backup_mgmt_drill_main(arg: pg_sys::Datum) {
    use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(Some(&crate::guc::database_name()), None);
    let execution_id = arg.value() as i64;
    let outcome = crate::worker::in_transaction("running a scheduled drill", || {
        Spi::connect_mut(|c| -> Result<(String, Option<String>), SpiError> {
            let plan = c
                .select(
                    "SELECT p.plan_name FROM enterprise_backup.backup_job_executions e \
                       JOIN enterprise_backup.backup_jobs j USING (job_id) \
                       JOIN disaster_recovery.recovery_plans p ON p.plan_id = j.plan_id \
                      WHERE e.execution_id = $1",
                    None,
                    &[execution_id.into()],
                )?
                .first()
                .get::<String>(1)?
                .unwrap_or_default();
            // Two statements: the drill's own row is not visible to the statement that made it.
            let t = c.update(
                "SELECT drill_id, status FROM backup_mgmt.run_recovery_drill($1)",
                None,
                &[plan.as_str().into()],
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
        .map_err(|e| e.to_string())
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
    crate::worker::in_transaction("recording a scheduled drill", || {
        Spi::connect_mut(|c| {
            crate::worker::end_execution(c, execution_id, status, None, error.as_deref())
        })
    });
}
