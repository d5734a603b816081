//! Claiming a due job, in one transaction: the job is read and locked, the decision taken
//! (`backup_mgmt_core::job::decide`: run, skip the slot, wait), the slot claimed under the
//! unique (job, slot) key of `backup_job_executions` (a restart never runs a slot twice), the
//! job's `next_run_at` moved on, and, for a backup, its record started.  What to start is handed
//! over once the transaction has committed.

use std::time::Duration;

use backup_mgmt_core::backup::incremental_base::ParentTar;
use backup_mgmt_core::backup::layout;
use backup_mgmt_core::backup::logical::Plan;
use backup_mgmt_core::cron::CronSchedule;
use backup_mgmt_core::job::{self, Decision, Due, JobOptions};
use backup_mgmt_core::paths::PathError;
use backup_mgmt_core::vocabulary::{BackupMethod, BackupOrigin};
use chrono::{DateTime, Utc};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use super::{Running, WorkerError};
use crate::catalog::queries::{choose_parent, Parent};
use crate::catalog::records;
use crate::jobs::executions::{end_execution, prune_history};
use crate::jobs::preview::{job_zone, next_run};
use crate::methods::native::NativeStart;
use crate::pg::time::{from_timestamptz, to_timestamptz};
use crate::pg::{roots, server};

/// What a claim hands over once its transaction committed.
pub(super) enum Claimed {
    /// Nothing to start: the slot was skipped or already taken, the job changed, or it waits.
    Nothing,
    /// A backup by one of PostgreSQL's programs, on a backup thread.
    Backup(Box<Plan>, Running),
    /// A native physical backup: started in this session once the claim committed.
    Native(Box<NativeStart>, Running),
    /// A drill job's execution, run by a worker of its own.
    Drill { job_id: i64, execution_id: i64 },
}

/// A due job as read (and locked) in the claim transaction.
struct DueJob {
    job_id: i64,
    name: String,
    database: String,
    backup_type: String,
    method: String,
    options: Value,
    is_drill: bool,
    due: Due,
    next_after_now: Option<DateTime<Utc>>,
}

/// Reads and locks `job_id` if it is still due (None: not due any more, or locked by another
/// claim).
fn read_due(c: &mut SpiClient<'_>, job_id: i64) -> Result<Option<DueJob>, WorkerError> {
    let t = c.update(
        "SELECT job_name, database_name::text, backup_type::text, backup_method::text, schedule_cron, \
                timezone, options::text, next_run_at, \
                (is_active AND next_run_at <= now()) AS scheduled, run_requested_at IS NOT NULL AS requested, \
                job_kind \
           FROM enterprise_backup.backup_jobs \
          WHERE job_id = $1 AND ((is_active AND next_run_at <= now()) OR run_requested_at IS NOT NULL) \
            FOR UPDATE SKIP LOCKED",
        None,
        &[job_id.into()],
    )?;
    if t.is_empty() {
        return Ok(None);
    }
    let row = t.first();
    let cron: CronSchedule = row.get::<String>(5)?.unwrap_or_default().parse()?;
    let zone = job_zone(row.get::<String>(6)?.as_deref())?;
    let options: Value = serde_json::from_str(&row.get::<String>(7)?.unwrap_or_default())?;
    let due = Due {
        scheduled: row.get::<bool>(9)?.unwrap_or(false),
        requested: row.get::<bool>(10)?.unwrap_or(false),
        slot: row.get::<TimestampWithTimeZone>(8)?.map(from_timestamptz),
    };
    Ok(Some(DueJob {
        job_id,
        name: row.get::<String>(1)?.unwrap_or_default(),
        database: row.get::<String>(2)?.unwrap_or_default(),
        backup_type: row.get::<String>(3)?.unwrap_or_default(),
        method: row.get::<String>(4)?.unwrap_or_default(),
        options,
        is_drill: row.get::<String>(11)?.as_deref() == Some("drill"),
        due,
        next_after_now: next_run(&cron, zone).map(from_timestamptz),
    }))
}

/// Claims `job_id` (see the module comment).  `busy`: the job is running; `native_busy`: this
/// session already runs a native backup.
pub(super) fn claim_in_transaction(
    c: &mut SpiClient<'_>,
    job_id: i64,
    busy: bool,
    native_busy: bool,
) -> Result<Claimed, WorkerError> {
    let Some(job) = read_due(c, job_id)? else {
        return Ok(Claimed::Nothing);
    };
    let no_place = native_busy && job.method == BackupMethod::NativePhysical.as_str();
    match job::decide(job.due, job.next_after_now, busy, no_place) {
        Decision::Wait => Ok(Claimed::Nothing),
        Decision::Skip {
            scheduled_for,
            next_run_at,
        } => {
            c.update(
                "INSERT INTO enterprise_backup.backup_job_executions \
                     (job_id, scheduled_for, execution_status, execution_end_time, error_message) \
                 VALUES ($1, $2, 'skipped', now(), 'the previous run of this job was still running') \
                 ON CONFLICT (job_id, scheduled_for) DO NOTHING",
                None,
                &[job_id.into(), scheduled_for.and_then(to_timestamptz).into()],
            )?;
            c.update(
                "UPDATE enterprise_backup.backup_jobs SET next_run_at = $2 WHERE job_id = $1",
                None,
                &[job_id.into(), next_run_at.and_then(to_timestamptz).into()],
            )?;
            prune_history(c, job_id)?;
            Ok(Claimed::Nothing)
        }
        Decision::Run {
            scheduled_for,
            next_run_at,
            clear_request,
        } => {
            let inserted = c.update(
                "INSERT INTO enterprise_backup.backup_job_executions (job_id, scheduled_for, execution_status, phase) \
                 VALUES ($1, $2, 'running', 'starting') \
                 ON CONFLICT (job_id, scheduled_for) DO NOTHING RETURNING execution_id",
                None,
                &[job_id.into(), scheduled_for.and_then(to_timestamptz).into()],
            )?;
            let execution_id = if inserted.is_empty() {
                None
            } else {
                inserted.first().get::<i64>(1)?
            };
            c.update(
                "UPDATE enterprise_backup.backup_jobs \
                    SET last_run_at = now(), next_run_at = $2, \
                        run_requested_at = CASE WHEN $3 THEN NULL ELSE run_requested_at END \
                  WHERE job_id = $1",
                None,
                &[
                    job_id.into(),
                    next_run_at.and_then(to_timestamptz).into(),
                    clear_request.into(),
                ],
            )?;
            // This slot already has an execution: never run it twice.
            let Some(execution_id) = execution_id else {
                return Ok(Claimed::Nothing);
            };
            start(c, &job, execution_id)
        }
    }
}

/// The claimed execution: a drill's, or a backup's (its record started, its plan made).
fn start(c: &mut SpiClient<'_>, job: &DueJob, execution_id: i64) -> Result<Claimed, WorkerError> {
    if job.is_drill {
        c.update(
            "UPDATE enterprise_backup.backup_job_executions SET phase = 'drill' WHERE execution_id = $1",
            None,
            &[execution_id.into()],
        )?;
        return Ok(Claimed::Drill {
            job_id: job.job_id,
            execution_id,
        });
    }
    let cannot_run = |c: &mut SpiClient<'_>, why: String| -> Result<Claimed, WorkerError> {
        warning!("backup_mgmt: job \"{}\" cannot run: {why}", job.name);
        end_execution(c, execution_id, "failed", None, Some(&why))?;
        Ok(Claimed::Nothing)
    };
    let root = match roots::first_root() {
        Ok(r) => r,
        Err(PathError::NoRoots) => {
            return cannot_run(
                c,
                "backup_mgmt.backup_roots names no existing directory to write backups to".into(),
            )
        }
        Err(e) => return cannot_run(c, format!("backup_mgmt.backup_roots is invalid: {e}")),
    };
    let method = BackupMethod::parse(&job.method)?;
    let options = match JobOptions::normalize(&job.options, method) {
        Ok(o) => o,
        Err(e) => return cannot_run(c, e.to_string()),
    };
    let compression = options.compression();
    let stem = layout::backup_stem(&root, &job.database, &job.name, Utc::now(), execution_id);
    let output = layout::output_path(method, &stem, compression);
    let with_globals = options.with_globals();
    let globals = with_globals.then(|| layout::globals_path(&stem, compression));
    // What an incremental or differential backup builds on; with nothing to build on, a full
    // backup is taken (and the record says what was asked for).
    let chained = matches!(
        method,
        BackupMethod::NativePhysical | BackupMethod::PgBasebackup
    ) && job.backup_type != "full";
    if chained && method == BackupMethod::PgBasebackup {
        if let Err(e) = server::block_incrementals() {
            return cannot_run(c, e.to_string());
        }
    }
    let mut parent = if chained {
        choose_parent(c, method, &job.backup_type)?
            .filter(|p| method != BackupMethod::PgBasebackup || summaries_cover(c, p.id))
    } else {
        None
    };
    // A pg_basebackup parent as its backup thread reads it; one that cannot be read (its file
    // gone from the roots, no sha256 recorded) is not built on: a full is taken, and it says why.
    let mut incremental = None;
    if method == BackupMethod::PgBasebackup {
        if let Some(p) = parent.clone() {
            match parent_tar(p) {
                Ok(t) => incremental = Some(t),
                Err(why) => {
                    warning!(
                        "backup_mgmt: job \"{}\" takes a full backup: {why}",
                        job.name
                    );
                    parent = None;
                }
            }
        }
    }
    let backup_type = if chained && parent.is_none() {
        "full"
    } else {
        job.backup_type.as_str()
    };
    let output_text = output.to_string_lossy().into_owned();
    // The worker's own record: origin 'worker', its path from the layout under the root it
    // resolved (what registration checks for others' paths holds by construction).
    let backup_id = records::insert(
        c,
        &job.database,
        backup_type,
        &job.method,
        &output_text,
        BackupOrigin::Worker,
    )?;
    let annotations = json!({
        "job_name": job.name,
        "execution_id": execution_id,
        "compression_level": compression.level(),
        "requested_type": (job.backup_type != backup_type).then_some(&job.backup_type),
    })
    .to_string();
    let globals_text = globals.as_ref().map(|g| g.to_string_lossy().into_owned());
    // The record's identity (system identifier, server version) is record_backup_start's.
    c.update(
        "UPDATE backup_management.backup_records \
            SET compression = $2, label = $3, annotations = $4::jsonb, globals_file_path = $5, \
                timeline_id = (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()) \
          WHERE backup_id = $1",
        None,
        &[
            backup_id.into(),
            compression.as_str().into(),
            job.name.as_str().into(),
            annotations.as_str().into(),
            globals_text.into(),
        ],
    )?;
    c.update(
        "UPDATE enterprise_backup.backup_job_executions SET backup_id = $2 WHERE execution_id = $1",
        None,
        &[execution_id.into(), backup_id.into()],
    )?;
    let run = Running {
        execution_id,
        backup_id,
        job_id: job.job_id,
        job_name: job.name.clone(),
        timeout: options.timeout_seconds.map(Duration::from_secs),
        // Replaced by the real handle once this transaction has committed.
        handle: backup_mgmt_core::backup::RunHandle::idle(),
        stopped: None,
        native: None,
    };
    if let Some(p) = &parent {
        c.update(
            "UPDATE backup_management.backup_records SET parent_backup_id = $2 WHERE backup_id = $1",
            None,
            &[backup_id.into(), p.id.into()],
        )?;
    }
    if method == BackupMethod::NativePhysical {
        let start = NativeStart {
            backup_id,
            final_dir: output,
            parent,
            level: compression.level(),
            threads: options.parallel_jobs.max(1) as usize,
            fast: options.fast_checkpoint(),
            label: format!("backup_mgmt {} {backup_id}", job.name),
        };
        return Ok(Claimed::Native(Box::new(start), run));
    }
    let plan = Plan {
        method,
        database: job.database.clone(),
        bindir: server::bindir(),
        connection: server::local_connection(current_user(c)?),
        compression,
        parallel_jobs: options.parallel_jobs,
        fast_checkpoint: options.fast_checkpoint(),
        basebackup_zstd: method == BackupMethod::PgBasebackup && server_has_zstd(c),
        with_globals,
        incremental,
        stem,
        root,
    };
    Ok(Claimed::Backup(Box::new(plan), run))
}

/// Why a pg_basebackup parent is not built on (a full backup is taken instead, and says why).
#[derive(Debug, thiserror::Error)]
enum ParentUnusable {
    #[error("the parent backup {id} cannot be built on: {source}")]
    Outside {
        id: i64,
        source: backup_mgmt_core::paths::PathError,
    },
    #[error("the parent backup {0} has no recorded sha256")]
    NoSha256(i64),
}

/// The parent of a pg_basebackup incremental as the backup thread reads it: its path confined
/// to the roots again (the catalog row is input), its recorded sha256 (a worker's completed
/// backup always has one).
fn parent_tar(p: Parent) -> Result<ParentTar, ParentUnusable> {
    let path = roots::confine_backup(&p.path, false)
        .map_err(|source| ParentUnusable::Outside { id: p.id, source })?;
    let sha256 = p.checksum.ok_or(ParentUnusable::NoSha256(p.id))?;
    Ok(ParentTar {
        id: p.id,
        path,
        sha256,
        zstd: p.compression == "zstd",
    })
}

/// Whether this server's WAL summaries reach back to backup `id`'s start on its timeline: what
/// pg_basebackup --incremental needs to build on it.  A parent taken before summarize_wal was
/// turned on (or older than wal_summary_keep_time) is not built on; a full is taken instead.
/// Summaries are written as the summarizer passes checkpoints, so a parent taken moments ago
/// may have none past it yet: while the summarizer has not reached the parent's start on its
/// timeline, it began before it, and pg_basebackup waits for it to catch up.
fn summaries_cover(c: &SpiClient<'_>, id: i64) -> bool {
    // Covered: the summaries that reach the parent's start (or past it) begin at or before it and
    // have no hole between them (summarize_wal off for a while leaves one, and pg_basebackup would
    // then fail on every run until a full is taken).
    c.select(
        "WITH r AS (SELECT timeline_id, start_lsn FROM backup_management.backup_records WHERE backup_id = $1), \
              s AS (SELECT s.start_lsn, s.end_lsn, \
                           pg_catalog.max(s.end_lsn) OVER (ORDER BY s.start_lsn \
                               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reached \
                      FROM pg_catalog.pg_available_wal_summaries() s, r \
                     WHERE s.tli = r.timeline_id AND s.end_lsn >= r.start_lsn) \
         SELECT coalesce((SELECT pg_catalog.min(s.start_lsn) <= r.start_lsn \
                                 AND NOT EXISTS (SELECT FROM s WHERE s.reached < s.start_lsn) FROM s), false) \
                OR coalesce((SELECT w.summarized_tli = r.timeline_id \
                                    AND w.summarized_lsn > '0/0' AND w.summarized_lsn <= r.start_lsn \
                               FROM pg_catalog.pg_get_wal_summarizer_state() w), false) \
           FROM r",
        None,
        &[id.into()],
    )
    .ok()
    .and_then(|t| t.first().get::<bool>(1).ok().flatten())
    .unwrap_or(false)
}

/// Whether this server was built with zstd (`--with-zstd`), and so its pg_basebackup compresses
/// with it.  `pg_config` is readable by superusers only; when it cannot be read the answer is no,
/// and the backup compresses on its own side, which works with any build.
fn server_has_zstd(c: &SpiClient<'_>) -> bool {
    // Two statements: a query naming pg_config fails at its start without the privilege.
    let readable = c
        .select(
            "SELECT pg_catalog.has_table_privilege('pg_catalog.pg_config', 'SELECT')",
            None,
            &[],
        )
        .ok()
        .and_then(|t| t.first().get::<bool>(1).ok().flatten())
        .unwrap_or(false);
    readable
        && c.select(
            "SELECT coalesce(bool_or(setting LIKE '%--with-zstd%'), false) \
               FROM pg_catalog.pg_config WHERE name = 'CONFIGURE'",
            None,
            &[],
        )
        .ok()
        .and_then(|t| t.first().get::<bool>(1).ok().flatten())
        .unwrap_or(false)
}

/// The role the worker runs as (what its programs connect as).
fn current_user(c: &SpiClient<'_>) -> Result<String, WorkerError> {
    Ok(c.select("SELECT current_user::text", None, &[])?
        .first()
        .get::<String>(1)?
        .unwrap_or_default())
}
