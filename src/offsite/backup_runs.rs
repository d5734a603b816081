//! A finished run of backup copies to one target, recorded: one row per attempt, the expired
//! copies removed, the target's status.  While an open transaction is changing or deleting the
//! target the run waits (the worker does not), and it is not recorded at all when the target
//! was deleted or moved to another place meanwhile.

use pgrx::prelude::*;
use pgrx::spi::SpiError;

use super::{InFlight, RunResult};
use crate::pg::log::escape_for_log;
use crate::pg::spi::in_transaction;
use crate::pg::time::to_timestamptz;

/// A finished run, to record.
pub(super) struct Finished {
    pub(super) config_id: i32,
    name: String,
    /// `TargetSpec::PLACE` when the run started.
    place: String,
    run: RunResult,
}

/// The outcome of a finished copy thread (None, said so, when it panicked).
pub(super) fn finish(job: InFlight) -> Option<Finished> {
    let Some(run) = job.helper.join() else {
        warning!(
            "backup_mgmt: the off-site copy thread of \"{}\" panicked",
            escape_for_log(&job.name)
        );
        return None;
    };
    Some(Finished {
        config_id: job.config_id,
        name: job.name,
        place: job.place,
        run,
    })
}

/// Records a finished run; false (nothing written) while an open transaction is changing or
/// deleting its target: the worker does not wait on it (every other target and job would wait
/// too), it tries again at the next tick.
pub(super) fn record_run(job: &Finished) -> bool {
    let (attempts, removed) = &job.run;
    let failures = attempts
        .iter()
        .filter_map(|a| {
            a.result
                .as_ref()
                .err()
                .map(|why| (a.backup_id, a.attempt, why.to_string()))
        })
        .collect::<Vec<_>>();
    let what = format!("recording off-site copies to \"{}\"", job.name);
    let recorded = in_transaction(&what, || {
        Spi::connect_mut(|c| {
            // Locked by an open transaction (not recorded yet); gone, or moved to another place
            // meanwhile (its copies are at the old one): nothing to record.
            let held = c.update(
                &format!(
                    "SELECT (SELECT {} FROM backup_management.remote_backup_configs \
                              WHERE config_id = $1 FOR NO KEY UPDATE SKIP LOCKED), \
                            EXISTS (SELECT FROM backup_management.remote_backup_configs WHERE config_id = $1)",
                    super::TargetSpec::PLACE
                ),
                None,
                &[job.config_id.into()],
            )?;
            let row = held.first();
            match row.get::<String>(1)? {
                None => return Ok(!row.get::<bool>(2)?.unwrap_or(false)),
                Some(place) if place != job.place => return Ok(true),
                Some(_) => {}
            }
            for a in attempts {
                let (status, bytes, sha, error) = match &a.result {
                    Ok(copied) => (
                        "completed",
                        Some(copied.size as i64),
                        Some(copied.sha256.clone()),
                        None,
                    ),
                    Err(why) => ("failed", None, None, Some(why.to_string())),
                };
                c.update(
                    "INSERT INTO backup_management.remote_backup_records \
                         (backup_id, config_id, remote_file_path, sync_start_time, sync_end_time, \
                          sync_status, attempt, bytes_transferred, remote_checksum, error_message) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    None,
                    &[
                        a.backup_id.into(),
                        job.config_id.into(),
                        a.key.as_str().into(),
                        to_timestamptz(a.started).into(),
                        to_timestamptz(a.ended).into(),
                        status.into(),
                        a.attempt.into(),
                        bytes.into(),
                        sha.into(),
                        error.into(),
                    ],
                )?;
            }
            for (record_id, result) in removed {
                match result {
                    Ok(()) => {
                        c.update(
                            "UPDATE backup_management.remote_backup_records SET sync_status = 'expired' WHERE record_id = $1",
                            None,
                            &[(*record_id).into()],
                        )?;
                    }
                    Err(why) => warning!(
                        "backup_mgmt: could not remove an expired off-site copy from \"{}\": {}",
                        escape_for_log(&job.name),
                        escape_for_log(&why.to_string())
                    ),
                }
            }
            // Failed when a copy's last attempt failed.
            let last_failed = attempts.iter().any(|a| {
                a.result.is_err()
                    && !attempts
                        .iter()
                        .any(|b| b.backup_id == a.backup_id && b.attempt > a.attempt)
            });
            c.update(
                "UPDATE backup_management.remote_backup_configs \
                    SET sync_status = $2, last_sync_at = now() WHERE config_id = $1",
                None,
                &[
                    job.config_id.into(),
                    if last_failed { "failed" } else { "completed" }.into(),
                ],
            )?;
            Ok::<bool, SpiError>(true)
        })
    });
    // A failed transaction was logged by in_transaction; the run is not tried again.
    if recorded == Some(false) {
        return false;
    }
    for (backup_id, attempt, why) in failures {
        log!(
            "backup_mgmt: off-site copy of backup {backup_id} to \"{}\" failed (attempt {attempt}): {}",
            escape_for_log(&job.name),
            escape_for_log(&why)
        );
    }
    true
}
