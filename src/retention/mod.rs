//! Retention in the catalog: `retention_preview`, `apply_retention`, `pin_backup`,
//! `unpin_backup`, `set_retention_policy`.
//!
//! The selection itself is `backup_mgmt_core::retention` (plain Rust).  Applying marks the expired records
//! `expired` (kept for audit, with the reasons in their annotations) and removes their files
//! only **after the transaction commits** (a commit callback): a rolled-back expiry leaves
//! every file in place, so the catalog never names a completed backup whose file is gone.
//! Files are removed only for backups the worker made (a registered backup's record expires, its
//! files stay where their owner put them), only strictly inside `backup_mgmt.backup_roots` and
//! outside the areas backup_mgmt keeps for itself, walking down from the opened root without
//! following symlinks (`layout::remove_backup`); archived WAL only inside the WAL archive.  WAL segments older than the oldest retained base backup's start are expired
//! the same way.

use chrono::{DateTime, Duration, Utc};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiError};

use backup_mgmt_core::backup::layout;
use backup_mgmt_core::cron::parse_time_zone;
use std::collections::{HashMap, HashSet};

use backup_mgmt_core::retention::{self, Backup, NamedPath, Policy, Verdict};
use backup_mgmt_core::vocabulary::BackupOrigin;

use crate::catalog::queries::chain_unverified;
use crate::pg::guc;
use crate::pg::spi::in_transaction;
use crate::pg::srf;
use crate::pg::time::{from_timestamptz, to_timestamptz};

#[derive(Debug, thiserror::Error)]
pub enum ExpiryError {
    #[error("{0} must not be NULL")]
    Null(&'static str),
    #[error("backup job \"{0}\" does not exist")]
    UnknownJob(String),
    #[error("retention policy \"{0}\" does not exist")]
    UnknownPolicy(String),
    #[error("retention policy \"{policy}\" has an unknown time zone \"{zone}\"")]
    BadTimeZone { policy: String, zone: String },
    #[error("backup {0} does not exist")]
    UnknownBackup(i64),
    #[error("backup {id} is {status}: only completed backups can be pinned")]
    NotCompleted { id: i64, status: String },
    #[error("catalog access failed: {0}")]
    Spi(#[from] SpiError),
}

/// Loads a policy by name.
fn load_policy(c: &SpiClient<'_>, name: &str) -> Result<Policy, ExpiryError> {
    let t = c.select(
        "SELECT keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly, \
                extract(epoch FROM recovery_window)::float8, time_zone \
           FROM backup_management.retention_policies WHERE policy_name = $1",
        None,
        &[name.into()],
    )?;
    if t.is_empty() {
        return Err(ExpiryError::UnknownPolicy(name.to_owned()));
    }
    let r = t.first();
    let zone: String = r.get(7)?.unwrap_or_else(|| "UTC".into());
    let time_zone = parse_time_zone(&zone).map_err(|_| ExpiryError::BadTimeZone {
        policy: name.to_owned(),
        zone: zone.clone(),
    })?;
    let count = |v: Option<i32>| v.unwrap_or(0).max(0) as u32;
    Ok(Policy {
        name: name.to_owned(),
        keep_last: r.get::<i32>(1)?.map(|n| n.max(0) as u32),
        keep_daily: count(r.get(2)?),
        keep_weekly: count(r.get(3)?),
        keep_monthly: count(r.get(4)?),
        keep_yearly: count(r.get(5)?),
        recovery_window: r
            .get::<f64>(6)?
            .map(|s| Duration::milliseconds((s * 1000.0) as i64)),
        time_zone,
    })
}

/// The policy governing `job` (its own, or `default`), or the one named.
fn policy_for(
    c: &SpiClient<'_>,
    job: Option<&str>,
    named: Option<&str>,
) -> Result<Policy, ExpiryError> {
    if let Some(name) = named {
        return load_policy(c, name);
    }
    let Some(job) = job else {
        return load_policy(c, "default");
    };
    let t = c.select(
        "SELECT coalesce(retention_policy, 'default') FROM enterprise_backup.backup_jobs WHERE job_name = $1",
        None,
        &[job.into()],
    )?;
    if t.is_empty() {
        return Err(ExpiryError::UnknownJob(job.to_owned()));
    }
    let name: String = t.first().get(1)?.unwrap_or_else(|| "default".into());
    load_policy(c, &name)
}

/// The files of the completed backups: (what the record names, whether the worker made it).
type Files = Vec<(NamedPath, bool)>;

/// Every completed backup (what the safety rules look at), marked in scope when it belongs to
/// `job` (or, without a job, to no job), and the files they name.
fn load_backups(c: &SpiClient<'_>, job: Option<&str>) -> Result<(Vec<Backup>, Files), ExpiryError> {
    // Verifications are looked up afterwards, only as far as retention needs them
    // (`mark_newest_verified`): one probe per live backup was most of the time at a large catalog.
    let t = c.select(
        "SELECT r.backup_id, r.database_name, r.end_time, \
                r.backup_method IN ('pg_basebackup', 'native_physical'), \
                r.pinned, r.pin_reason, r.keep_until, r.parent_backup_id, \
                CASE WHEN $1::text IS NULL THEN r.annotations->>'job_name' IS NULL \
                     ELSE r.annotations->>'job_name' = $1 END, \
                r.backup_file_path, r.globals_file_path, r.origin = 'worker' \
           FROM backup_management.backup_records r \
          WHERE r.expired_at IS NULL AND r.status = 'completed' AND r.end_time IS NOT NULL AND r.backup_type <> 'wal'",
        None,
        &[job.into()],
    )?;
    let mut out = Vec::with_capacity(t.len());
    let mut files = Vec::with_capacity(t.len());
    for r in t {
        let id: i64 = r.get(1)?.unwrap_or_default();
        let worker = r.get::<bool>(12)?.unwrap_or(false);
        for path in [r.get::<String>(10)?, r.get::<String>(11)?]
            .into_iter()
            .flatten()
        {
            files.push((
                NamedPath {
                    backup_id: id,
                    path,
                },
                worker,
            ));
        }
        let end: Option<TimestampWithTimeZone> = r.get(3)?;
        let keep_until: Option<TimestampWithTimeZone> = r.get(7)?;
        out.push(Backup {
            id,
            database: r.get(2)?.unwrap_or_default(),
            end_time: end.map(from_timestamptz).unwrap_or_else(Utc::now),
            is_base: r.get(4)?.unwrap_or(false),
            // Set by `mark_newest_verified` below.
            verified: false,
            pinned: r.get(5)?.unwrap_or(false),
            pin_reason: r.get(6)?,
            keep_until: keep_until.map(from_timestamptz),
            parent: r.get(8)?,
            in_scope: r.get(9)?.unwrap_or(false),
        });
    }
    mark_newest_verified(c, &mut out)?;
    Ok((out, files))
}

/// Sets `verified` on each database's newest backup verified as a whole (its verdict and every
/// ancestor's passed, `verification_verdict`): all that the selection asks of verifications
/// (`retention::Backup::verified`).  Verification state is read newest first, a batch per
/// database at a time, until each database has its backup; the usual catalog needs one batch.
fn mark_newest_verified(c: &SpiClient<'_>, backups: &mut [Backup]) -> Result<(), ExpiryError> {
    const BATCH: usize = 64;
    let order: Vec<Vec<i64>> = retention::newest_first_by_database(backups)
        .into_values()
        .collect();
    let mut next = vec![0usize; order.len()];
    let mut found: HashSet<i64> = HashSet::new();
    loop {
        let asked: Vec<i64> = order
            .iter()
            .zip(&next)
            .flat_map(|(ids, &from)| ids.iter().skip(from).take(BATCH).copied())
            .collect();
        if asked.is_empty() {
            break;
        }
        // Verified as a whole: the backup and every ancestor it is restored with passed (an
        // incremental whose full failed restores nothing, so it must not stand in for a
        // verified backup while an older chain that does restore expires).
        let passed: HashSet<i64> = c
            .select(
                concat!(
                    // Its own verdict first: only a backup that passed has its chain walked.
                    "SELECT r.backup_id FROM backup_management.backup_records r \
                       JOIN backup_management.verification_state s0 \
                         ON s0.backup_id = r.backup_id AND s0.last_status = 'passed' \
                      WHERE r.backup_id = ANY($1) AND ",
                    chain_unverified!(),
                    " IS NULL"
                ),
                None,
                &[asked.into()],
            )?
            .map(|r| r.get::<i64>(1))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .flatten()
            .collect();
        for (ids, from) in order.iter().zip(next.iter_mut()) {
            let batch = ids.iter().skip(*from).take(BATCH);
            match batch.clone().find(|id| passed.contains(id)) {
                Some(id) => {
                    found.insert(*id);
                    *from = ids.len();
                }
                None => *from = (*from + BATCH).min(ids.len()),
            }
        }
    }
    for b in backups.iter_mut() {
        b.verified = found.contains(&b.id);
    }
    Ok(())
}

fn now_utc() -> Result<DateTime<Utc>, ExpiryError> {
    let now = Spi::get_one::<TimestampWithTimeZone>("SELECT now()")?;
    Ok(now.map(from_timestamptz).unwrap_or_else(Utc::now))
}

/// The verdicts for `job` (or for backups made by no job) under its policy (or the one named).
fn verdicts(
    job: Option<&str>,
    policy: Option<&str>,
) -> Result<(Policy, Vec<Backup>, Vec<Verdict>, Files), ExpiryError> {
    let now = now_utc()?;
    Spi::connect(|c| {
        let policy = policy_for(c, job, policy)?;
        let (backups, files) = load_backups(c, job)?;
        let v = retention::select(&policy, &backups, now);
        Ok((policy, backups, v, files))
    })
}

/// The files of expiring backups (`expiring`) that the worker made, and those of the others
/// (which stay): what retention by reference compares.
fn split_files(files: &Files, expiring: &HashSet<i64>) -> (Vec<NamedPath>, Vec<NamedPath>) {
    let mut doomed = Vec::new();
    let mut kept = Vec::new();
    for (f, worker) in files {
        if !expiring.contains(&f.backup_id) {
            kept.push(f.clone());
        } else if *worker {
            doomed.push(f.clone());
        }
    }
    (doomed, kept)
}

type PreviewRow = (
    i64,
    String,
    Option<TimestampWithTimeZone>,
    String,
    Vec<String>,
    String,
);

/// The verdicts as rows, and the files of the completed backups that stay.
fn preview_rows(
    job: Option<&str>,
    policy: Option<&str>,
) -> Result<(Vec<PreviewRow>, Vec<NamedPath>), ExpiryError> {
    let (policy, backups, mut verdicts, files) = verdicts(job, policy)?;
    // Retention deletes by reference: say which files of expiring backups stay, and why.
    let expiring: HashSet<i64> = verdicts.iter().filter(|v| !v.keep).map(|v| v.id).collect();
    let (doomed, kept) = split_files(&files, &expiring);
    let mut stays: HashMap<i64, Vec<String>> = HashMap::new();
    for (id, path, other) in retention::kept_by_reference(&doomed, &kept) {
        stays.entry(id).or_default().push(format!(
            "its file \"{path}\" stays: backup {other}, which is kept, names it"
        ));
    }
    for v in verdicts.iter_mut() {
        if let Some(reasons) = stays.remove(&v.id) {
            v.reasons.extend(reasons);
        }
    }
    let by_id: HashMap<i64, &Backup> = backups.iter().map(|b| (b.id, b)).collect();
    let rows = verdicts
        .into_iter()
        .filter_map(|v| {
            let b = by_id.get(&v.id)?;
            let end = to_timestamptz(b.end_time);
            Some((
                v.id,
                b.database.clone(),
                end,
                if v.keep { "keep" } else { "expire" }.to_owned(),
                v.reasons,
                policy.name.clone(),
            ))
        })
        .collect();
    Ok((rows, kept))
}

/// The verdict rows as the result of `retention_preview`/`apply_retention`: all at once (a large
/// catalog has thousands of live backups; see `pg::srf`).
fn return_rows(fcinfo: pg_sys::FunctionCallInfo, rows: Vec<PreviewRow>) {
    let rows = rows
        .into_iter()
        .map(|(id, database, end, action, reasons, policy)| {
            vec![
                srf::column(id),
                srf::column(database),
                srf::column(end),
                srf::column(action),
                srf::column(reasons),
                srf::column(policy),
            ]
        })
        .collect();
    srf::materialize(fcinfo, rows);
}

/// Dry run: what retention would keep (and by which rules) and what it would expire (and why)
/// for a job's backups (or, with no job, for backups recorded by no job).
#[pg_extern(
    stable,
    parallel_safe,
    security_definer,
    sql = "CREATE FUNCTION backup_mgmt.retention_preview(job_name text DEFAULT NULL, policy_name text DEFAULT NULL)
    RETURNS TABLE (backup_id bigint, database_name text, end_time timestamptz, action text,
                   reasons text[], policy_name text)
    STABLE SECURITY DEFINER PARALLEL SAFE
    SET search_path TO pg_catalog, pg_temp
    LANGUAGE c AS 'MODULE_PATHNAME', 'retention_preview_wrapper';"
)]
fn retention_preview(
    job_name: Option<&str>,
    policy_name: Option<&str>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Result<(), ErrorReport> {
    return_rows(fcinfo, preview_rows(job_name, policy_name)?.0);
    Ok(())
}

/// Applies retention: marks what the policy expires `expired` and removes its files after
/// commit; expires archived WAL older than the oldest retained base backup.  Returns the
/// verdicts (as `retention_preview`).
#[pg_extern(
    volatile,
    parallel_unsafe,
    security_definer,
    sql = "CREATE FUNCTION backup_mgmt.apply_retention(job_name text DEFAULT NULL, policy_name text DEFAULT NULL)
    RETURNS TABLE (backup_id bigint, database_name text, end_time timestamptz, action text,
                   reasons text[], policy_name text)
    VOLATILE SECURITY DEFINER PARALLEL UNSAFE
    SET search_path TO pg_catalog, pg_temp
    LANGUAGE c AS 'MODULE_PATHNAME', 'apply_retention_wrapper';"
)]
fn apply_retention(
    job_name: Option<&str>,
    policy_name: Option<&str>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Result<(), ErrorReport> {
    let (rows, mut kept) = preview_rows(job_name, policy_name)?;
    let roots = guc::backup_roots().unwrap_or_default();
    // (path, whether it is archived WAL rather than a backup's file or directory)
    let mut doomed: Vec<(String, bool)> = Vec::new();
    let mut expired_ids: Vec<i64> = Vec::new();
    Spi::connect_mut(|c| -> Result<(), ExpiryError> {
        for (id, _, _, action, reasons, policy) in &rows {
            if action != "expire" {
                continue;
            }
            expired_ids.push(*id);
            let t = c.update(
                "UPDATE backup_management.backup_records \
                    SET status = 'expired', \
                        annotations = coalesce(annotations, '{}') || jsonb_build_object( \
                            'expired_at', now(), 'expired_by_policy', $2::text, 'expired_because', $3::text[]) \
                  WHERE backup_id = $1 AND status = 'completed' \
                  RETURNING backup_file_path, globals_file_path, origin",
                None,
                &[(*id).into(), policy.as_str().into(), reasons.clone().into()],
            )?;
            for r in t {
                // Only what the worker made is deleted: a registered backup's files belong to
                // whoever wrote them (and a record's path is input); its record expires, its
                // files stay.
                if r.get::<String>(3)?.as_deref() != Some(BackupOrigin::Worker.as_str()) {
                    if let Some(p) = r.get::<String>(1)? {
                        notice!(
                            "backup_mgmt: backup {id} was registered, not made by the worker: its record expires, \"{p}\" is left in place"
                        );
                    }
                    continue;
                }
                if let Some(p) = r.get::<String>(1)? {
                    doomed.push((p, false));
                }
                if let Some(g) = r.get::<String>(2)? {
                    doomed.push((g, false));
                }
            }
        }
        // By reference: a file or directory is deleted only when no record that is kept (running,
        // completed, pinned: every record this run did not expire) names it, lies inside it or
        // holds it.  Checked after every expiry of this run, so that a chain expired as a unit
        // still goes.
        // The completed backups this run keeps, and the running ones (registered or being taken).
        kept.retain(|k| !expired_ids.contains(&k.backup_id));
        let running = c.select(
            "SELECT backup_id, unnest(ARRAY[backup_file_path, globals_file_path]) \
               FROM backup_management.backup_records WHERE expired_at IS NULL AND status = 'running'",
            None,
            &[],
        )?;
        for r in running {
            if let (Some(id), Some(path)) = (r.get::<i64>(1)?, r.get::<String>(2)?) {
                kept.push(NamedPath {
                    backup_id: id,
                    path,
                });
            }
        }
        let named: Vec<NamedPath> = doomed
            .iter()
            .filter(|(_, wal)| !wal)
            .map(|(p, _)| NamedPath {
                backup_id: 0,
                path: p.clone(),
            })
            .collect();
        let kept_files: Vec<(String, i64)> = retention::kept_by_reference(&named, &kept)
            .into_iter()
            .map(|(_, path, other)| (path, other))
            .collect();
        doomed.retain(|(p, _)| !kept_files.iter().any(|(k, _)| k == p));
        for (path, other) in kept_files {
            notice!(
                "backup_mgmt: \"{path}\" is not removed: backup {other}, which is kept, still names it"
            );
        }
        // WAL older than the oldest retained base backup of this cluster: nothing can replay it.
        let t = c.update(
            "WITH oldest AS ( \
                SELECT timeline_id, \
                       floor((start_lsn - '0/0'::pg_lsn) / pg_size_bytes(current_setting('wal_segment_size')))::bigint AS seg \
                  FROM backup_management.backup_records \
                 WHERE expired_at IS NULL AND status = 'completed' \
                   AND backup_method IN ('pg_basebackup', 'native_physical') AND start_lsn IS NOT NULL \
                   AND system_identifier = (SELECT system_identifier FROM pg_control_system()) \
                 ORDER BY start_lsn LIMIT 1) \
             UPDATE backup_management.wal_archive w SET expired_at = now() \
               FROM oldest o \
              WHERE w.expired_at IS NULL \
                AND w.system_identifier = (SELECT system_identifier FROM pg_control_system()) \
                AND w.segment_number IS NOT NULL \
                AND (w.timeline_id < o.timeline_id OR (w.timeline_id = o.timeline_id AND w.segment_number < o.seg)) \
            RETURNING w.file_path",
            None,
            &[],
        )?;
        for r in t {
            if let Some(p) = r.get::<String>(1)? {
                doomed.push((p, true));
            }
        }
        Ok(())
    })?;
    if !doomed.is_empty() {
        // Only once the expiry is committed; a rollback keeps every file.
        pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, move || {
            for (path, wal) in &doomed {
                let removed = if *wal {
                    layout::remove_archived_wal(path, &roots)
                } else {
                    layout::remove_backup(path, &roots)
                };
                match removed {
                    Ok(_) => {}
                    Err(why) => {
                        warning!("backup_mgmt: retention could not remove \"{path}\": {why}")
                    }
                }
            }
        });
    }
    return_rows(fcinfo, rows);
    Ok(())
}

/// Pins a completed backup: no retention policy removes it (a legal hold), until `keep_until`
/// when given.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn pin_backup(
    backup_id: Option<i64>,
    reason: Option<&str>,
    keep_until: default!(Option<TimestampWithTimeZone>, "NULL"),
) -> Result<bool, ErrorReport> {
    let id = backup_id.ok_or(ExpiryError::Null("backup_id"))?;
    let reason = reason
        .filter(|r| !r.trim().is_empty())
        .ok_or(ExpiryError::Null("reason"))?;
    set_pin(id, true, Some(reason), keep_until)?;
    Ok(true)
}

/// Removes a backup's pin (and its keep_until).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn unpin_backup(backup_id: Option<i64>) -> Result<bool, ErrorReport> {
    let id = backup_id.ok_or(ExpiryError::Null("backup_id"))?;
    set_pin(id, false, None, None)?;
    Ok(true)
}

fn set_pin(
    id: i64,
    pinned: bool,
    reason: Option<&str>,
    keep_until: Option<TimestampWithTimeZone>,
) -> Result<(), ExpiryError> {
    Spi::connect_mut(|c| {
        let t = c.update(
            "SELECT status FROM backup_management.backup_records WHERE backup_id = $1 FOR UPDATE",
            None,
            &[id.into()],
        )?;
        if t.is_empty() {
            return Err(ExpiryError::UnknownBackup(id));
        }
        let status: String = t.first().get(1)?.unwrap_or_default();
        if pinned && status != "completed" {
            return Err(ExpiryError::NotCompleted { id, status });
        }
        c.update(
            "UPDATE backup_management.backup_records \
                SET pinned = $2, pin_reason = $3, keep_until = $4 WHERE backup_id = $1",
            None,
            &[id.into(), pinned.into(), reason.into(), keep_until.into()],
        )?;
        Ok(())
    })
}

/// Sets the retention policy of a job (NULL: the default policy).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn set_retention_policy(
    job_name: Option<&str>,
    policy_name: Option<&str>,
) -> Result<bool, ErrorReport> {
    let job = job_name.ok_or(ExpiryError::Null("job_name"))?;
    Spi::connect_mut(|c| -> Result<(), ExpiryError> {
        if let Some(p) = policy_name {
            load_policy(c, p)?;
        }
        let t = c.update(
            "UPDATE enterprise_backup.backup_jobs SET retention_policy = $2, updated_at = now() \
              WHERE job_name = $1 RETURNING job_id",
            None,
            &[job.into(), policy_name.into()],
        )?;
        if t.is_empty() {
            return Err(ExpiryError::UnknownJob(job.to_owned()));
        }
        Ok(())
    })?;
    Ok(true)
}

/// The worker's call after a job's backup completed: applies the job's policy, in its own
/// transaction (a failure is a WARNING; the backup stays recorded).
pub fn after_backup(job: &str) {
    let what = format!("applying retention after job \"{job}\"");
    in_transaction(&what, || {
        Spi::connect(|c| {
            c.select(
                "SELECT count(*) FROM backup_mgmt.apply_retention($1) WHERE action = 'expire'",
                None,
                &[job.into()],
            )
            .map(|_| ())
        })
    });
}

#[cfg(any(test, feature = "pg_test"))]
mod tests;
