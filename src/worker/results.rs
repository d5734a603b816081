//! Recording what the worker's backups did: a finished backup is completed (size, checksum, row
//! counts, WAL range, globals) or failed with its error, its execution ended, the job's history
//! pruned; at start, what a crash interrupted is marked failed and its partial output removed.

use std::path::{Path, PathBuf};

use std::time::Duration;

use backup_mgmt_core::backup::{BackupError, Damage, Outcome};
use backup_mgmt_core::files::durable;
use backup_mgmt_core::verify::{Reason, Report};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiError};
use serde_json::{json, Value};

use super::Running;
use crate::catalog::mirror;
use crate::jobs::executions::{end_execution, prune_history};
use crate::methods::native as native_method;
use crate::pg::spi::in_transaction;
use crate::pg::{notify, roots, server};
use crate::verification::integrity;

const INTERRUPTED: &str = "interrupted: the server or the backup_mgmt worker stopped while this backup was running; its partial output was removed";

/// Marks executions left `running` (and their backup records) failed and removes their
/// partial output.  Returns false when the catalog could not be read.
pub(super) fn recover_interrupted() -> bool {
    let cleaned = in_transaction("recovering interrupted backups", || {
        Spi::connect_mut(|c| {
            let rows = c.update(
                "UPDATE enterprise_backup.backup_job_executions \
                    SET execution_status = 'failed', execution_end_time = now(), phase = NULL, \
                        error_message = $1 \
                  WHERE execution_status = 'running' \
              RETURNING backup_id",
                None,
                &[INTERRUPTED.into()],
            )?;
            let mut ids = Vec::new();
            for row in rows {
                if let Some(id) = row.get::<i64>(1)? {
                    ids.push(id);
                }
            }
            let mut count = 0;
            for id in ids {
                let t = c.select(
                    "SELECT backup_file_path, globals_file_path \
                       FROM backup_management.backup_records WHERE backup_id = $1 AND status = 'running'",
                    None,
                    &[id.into()],
                )?;
                if t.is_empty() {
                    continue;
                }
                let row = t.first();
                let path = row.get::<String>(1)?;
                let globals = row.get::<String>(2)?;
                for p in [path, globals].into_iter().flatten() {
                    remove_output(&p);
                }
                c.update(
                    "SELECT backup_mgmt.record_backup_failure($1, $2)",
                    None,
                    &[id.into(), INTERRUPTED.into()],
                )?;
                count += 1;
            }
            Ok::<_, SpiError>(count)
        })
    });
    match cleaned {
        Some(n) if n > 0 => {
            log!("backup_mgmt: marked {n} interrupted backup(s) failed and removed their partial files");
            true
        }
        Some(_) => true,
        None => false,
    }
}

/// Records a finished backup: complete with size and checksum, or failed with the reason.
pub(super) fn record_result(run: &Running, result: Result<Outcome, BackupError>) {
    let succeeded = result.is_ok();
    let bad_pages = result
        .as_ref()
        .ok()
        .and_then(|o| o.annotations.as_ref())
        .and_then(|a| a.get("bad_pages"))
        .filter(|b| b.as_array().is_some_and(|a| !a.is_empty()))
        .cloned();
    let damaged_parent = match &result {
        Err(BackupError::DamagedParent {
            id,
            path,
            damage,
            detail,
        }) => Some((*id, path.clone(), *damage, detail.clone())),
        _ => None,
    };
    record_in_catalog(run, result);
    if let Some((id, path, damage, detail)) = damaged_parent {
        // A parent whose stored file is not what was recorded is a failed verification of it:
        // the next run builds on another backup instead of failing on this one again.
        let reason = match damage {
            Damage::Missing => Reason::Missing,
            Damage::Unreadable => Reason::Unreadable,
            Damage::Changed => Reason::ChecksumMismatch,
        };
        let report = Report::failed(reason, detail, &path);
        in_transaction("recording the damaged parent backup", || {
            let database = Spi::get_one_with_args::<String>(
                "SELECT database_name FROM backup_management.backup_records WHERE backup_id = $1",
                &[id.into()],
            )?
            .unwrap_or_default();
            integrity::record(id, &database, "checksum", &report, Duration::ZERO)
        });
    }
    if let Some(pages) = bad_pages {
        // In a transaction of its own, after the backup is recorded: naming the relations must
        // not be able to undo the record of a completed backup.
        in_transaction("naming the relations of damaged pages", || {
            Spi::connect_mut(|c| {
                let named = native_method::describe_bad_pages(c, &pages)?;
                merge_annotations(c, run.backup_id, &json!({ "bad_pages": named }))
            })
        });
    }
    if succeeded {
        // Only after a new backup exists: the job's policy may now let older ones go.
        crate::retention::after_backup(&run.job_name);
    }
    // After the catalog changed (and committed): the copy that survives losing the database.
    mirror::refresh();
}

fn record_in_catalog(run: &Running, result: Result<Outcome, BackupError>) {
    let what = format!("recording the backup of job \"{}\"", run.job_name);
    in_transaction(&what, || {
        Spi::connect_mut(|c| {
            match &result {
                Ok(outcome) => record_completed(c, run, outcome)?,
                Err(e) => {
                    let message = match &run.stopped {
                        Some(why) => format!("{why}: {e}"),
                        None => e.to_string(),
                    };
                    // Also logs, and notifies listeners.
                    c.update(
                        "SELECT backup_mgmt.record_backup_failure($1, $2)",
                        None,
                        &[run.backup_id.into(), message.as_str().into()],
                    )?;
                    end_execution(c, run.execution_id, "failed", None, Some(&message))?;
                }
            }
            prune_history(c, run.job_id)
        })
    });
}

fn record_completed(
    c: &mut SpiClient<'_>,
    run: &Running,
    outcome: &Outcome,
) -> Result<(), SpiError> {
    let size = outcome.main.size as i64;
    c.update(
        "SELECT backup_mgmt.record_backup_complete($1, $2, $3)",
        None,
        &[
            run.backup_id.into(),
            size.into(),
            outcome.main.sha256.as_str().into(),
        ],
    )?;
    if let Some(facts) = &outcome.facts {
        let value = match facts {
            Ok(rows) => json!({ "row_counts": rows }),
            Err(why) => json!({ "row_counts_unavailable": why.to_string() }),
        };
        merge_annotations(c, run.backup_id, &value)?;
    }
    if let Some(owners) = &outcome.owners {
        merge_annotations(c, run.backup_id, &json!({ "owners": owners }))?;
    }
    if let Some(w) = &outcome.wal {
        let (first, last) = w.first_and_last(server::segment_size());
        c.update(
            "UPDATE backup_management.backup_records \
                SET start_lsn = $2::text::pg_lsn, stop_lsn = $3::text::pg_lsn, \
                    start_wal_segment = $4, stop_wal_segment = $5, timeline_id = $6 \
              WHERE backup_id = $1",
            None,
            &[
                run.backup_id.into(),
                w.start.to_string().into(),
                w.stop.to_string().into(),
                first.into(),
                last.into(),
                (w.timeline as i32).into(),
            ],
        )?;
    }
    if let Some(extra) = &outcome.annotations {
        merge_annotations(c, run.backup_id, extra)?;
    }
    if let Some(g) = &outcome.globals {
        c.update(
            "UPDATE backup_management.backup_records \
                SET globals_size = $2, globals_checksum = $3 \
              WHERE backup_id = $1",
            None,
            &[
                run.backup_id.into(),
                (g.size as i64).into(),
                g.sha256.as_str().into(),
            ],
        )?;
    }
    end_execution(c, run.execution_id, "completed", Some(size), None)?;
    notify::notify(&notify::Event::BackupCompleted {
        backup_id: run.backup_id,
    });
    Ok(())
}

/// Adds `value`'s keys to a backup record's annotations.
pub(super) fn merge_annotations(
    c: &mut SpiClient<'_>,
    backup_id: i64,
    value: &Value,
) -> Result<(), SpiError> {
    c.update(
        "UPDATE backup_management.backup_records \
            SET annotations = coalesce(annotations, '{}') || $2::text::jsonb \
          WHERE backup_id = $1",
        None,
        &[backup_id.into(), value.to_string().into()],
    )
    .map(|_| ())
}

/// Removes an interrupted backup's output (final name, if the rename happened before the crash,
/// and its `.partial`), only inside the backup roots, and only regular files or directories.
fn remove_output(path: &str) {
    let partial = durable::partial_path(Path::new(path));
    for candidate in [PathBuf::from(path), partial] {
        let text = candidate.to_string_lossy();
        if let Err(e) = roots::remove(&text) {
            warning!("backup_mgmt: not removing \"{text}\": {e}");
        }
    }
}
