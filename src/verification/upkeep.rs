//! The worker's integrity upkeep, one backup at a time on a helper thread:
//!
//! - a completed single-file backup recorded without a checksum (an external script called
//!   `record_backup_complete` with none) gets one computed and stored, with a `checksum`
//!   verification row saying so;
//! - every completed backup is verified again once its last checksum verification is older than
//!   `backup_mgmt.verify_interval` (bit rot), each run recorded.
//!
//! A backup whose checksum could not be computed is tried again after an hour (or after
//! `verify_interval` when that is shorter), so a missing file is one recorded failure an hour, not
//! a failure every few seconds.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use backup_mgmt_core::threads::{Helper, Throttle};
use backup_mgmt_core::verify::{self, Reason, Report};
use pgrx::prelude::*;
use pgrx::spi::SpiError;

use super::integrity::{self as verification, Target, VerificationError};
use crate::catalog::mirror;
use crate::pg::spi::in_transaction;
use crate::pg::{guc, server};

/// How often the catalog is searched for work when none was found.
const SEARCH_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Compute and store a missing checksum.
    Backfill,
    /// Verify against the stored checksum.
    Reverify,
}

struct InFlight {
    target: Target,
    kind: Kind,
    started: Instant,
    helper: Helper<Report>,
}

#[derive(Default)]
pub struct Upkeep {
    in_flight: Option<InFlight>,
    last_search: Throttle,
}

impl Upkeep {
    /// Records a finished verification, or starts the next one.  Cheap when there is nothing to do.
    pub fn tick(&mut self) {
        if let Some(job) = self.in_flight.take_if(|j| j.helper.is_finished()) {
            finish(job);
        }
        if self.in_flight.is_some() {
            return;
        }
        if !self.last_search.ready(SEARCH_EVERY) {
            return;
        }
        let Some((target, kind)) = next_candidate() else {
            return;
        };
        let resolved = match verification::confine(&target) {
            Ok(p) => p,
            Err(e) => {
                // Refused (and logged) without opening anything; recorded so that it is visible
                // and not retried every few seconds.
                let report = Report::failed(
                    Reason::RefusedPath,
                    e.to_string(),
                    std::path::Path::new(&target.path),
                );
                in_transaction("recording a refused verification", || {
                    verification::record(
                        target.backup_id,
                        &target.database_name,
                        "checksum",
                        &report,
                        Duration::ZERO,
                    )
                });
                return;
            }
        };
        let moved = target.clone();
        let helper = Helper::spawn(
            move || {
                let cancel = AtomicBool::new(false);
                let progress = AtomicU64::new(0);
                match kind {
                    Kind::Reverify => verification::run(&moved, &resolved, &cancel, &progress),
                    Kind::Backfill => {
                        backfill(resolved.main, &moved.path, moved.size, &cancel, &progress)
                    }
                }
            },
            server::wake_worker,
        );
        self.in_flight = Some(InFlight {
            target,
            kind,
            started: Instant::now(),
            helper,
        });
    }

    /// On shutdown: a running verification only reads, so it is simply abandoned.
    pub fn abandon(&mut self) {
        self.in_flight = None;
    }
}

/// Hashes a backup that has no recorded checksum; the report's `actual_sha256` is what gets
/// stored when it passes (its size matches the recorded one, when one was recorded).
fn backfill(
    path: Option<PathBuf>,
    shown: &str,
    size: Option<u64>,
    cancel: &AtomicBool,
    progress: &AtomicU64,
) -> Report {
    let Some(path) = path else {
        return Report::failed(
            Reason::Missing,
            "the backup file is missing".into(),
            std::path::Path::new(shown),
        );
    };
    let file = match verify::open_regular(&path) {
        Ok(f) => f,
        Err((reason, detail)) => return Report::failed(reason, detail, &path),
    };
    let mut buf = vec![0u8; verify::CHUNK];
    match verify::hash_reader(file, &mut buf, cancel, progress) {
        Err((reason, detail)) => Report::failed(reason, detail, &path),
        Ok((bytes, sha)) => {
            let recorded = size.filter(|s| *s > 0);
            let mut r = Report::failed(Reason::SizeMismatch, String::new(), &path);
            r.bytes = bytes;
            r.files = 1;
            r.expected_bytes = recorded;
            r.actual_sha256 = Some(sha);
            if recorded.is_none_or(|s| s == bytes) {
                r.passed = true;
                r.reason = None;
                r.failing_file = None;
                r.detail = Some("no checksum was recorded: computed by the worker".into());
            } else {
                r.detail = Some(format!(
                    "{bytes} bytes on disk, {} recorded; no checksum stored",
                    recorded.unwrap_or_default()
                ));
            }
            r
        }
    }
}

fn finish(job: InFlight) {
    let Some(report) = job.helper.join() else {
        return;
    };
    let id = job.target.backup_id;
    let stored_checksum = job.kind == Kind::Backfill && report.passed;
    in_transaction(
        &format!("recording the verification of backup {id}"),
        || {
            if job.kind == Kind::Backfill && report.passed {
                if let Some(sha) = &report.actual_sha256 {
                    Spi::connect_mut(|c| {
                        c.update(
                            "UPDATE backup_management.backup_records SET checksum = $2 \
                              WHERE backup_id = $1 AND checksum IS NULL",
                            None,
                            &[id.into(), sha.as_str().into()],
                        )
                        .map(|_| ())
                    })?;
                }
            }
            verification::record(
                id,
                &job.target.database_name,
                "checksum",
                &report,
                job.started.elapsed(),
            )
        },
    );
    if stored_checksum {
        mirror::refresh();
    }
}

/// The next backup to work on: first one without a checksum, then the one whose last checksum
/// verification is oldest beyond `backup_mgmt.verify_interval`.
fn next_candidate() -> Option<(Target, Kind)> {
    let interval = guc::verify_interval_seconds();
    // A backup that could not be checksummed is tried again after this.
    let retry = format!(
        "{} seconds",
        if interval > 0 {
            interval.min(3600)
        } else {
            3600
        }
    );
    in_transaction("looking for backups to verify", || -> Result<_, VerificationError> {
        let found = Spi::connect(|c| -> Result<_, SpiError> {
            let backfill = c.select(
                "SELECT r.backup_id FROM backup_management.backup_records r \
                  WHERE r.expired_at IS NULL AND r.status = 'completed' AND r.checksum IS NULL \
                    AND r.backup_method NOT IN ('pg_dump_directory', 'continuous_archiving', 'native_physical') \
                    AND NOT EXISTS (SELECT FROM backup_management.backup_verifications v \
                                     WHERE v.backup_id = r.backup_id AND v.verified_at > now() - $1::interval) \
                  ORDER BY r.backup_id LIMIT 1",
                None,
                &[retry.as_str().into()],
            )?;
            if !backfill.is_empty() {
                return Ok(backfill.first().get::<i64>(1)?.map(|id| (id, Kind::Backfill)));
            }
            if interval <= 0 {
                return Ok(None);
            }
            let due = c.select(
                "SELECT r.backup_id FROM backup_management.backup_records r \
                   LEFT JOIN LATERAL (SELECT max(v.verified_at) AS last FROM backup_management.backup_verifications v \
                                       WHERE v.backup_id = r.backup_id AND v.verification_type = 'checksum') v ON true \
                  WHERE r.expired_at IS NULL AND r.status = 'completed' AND r.checksum IS NOT NULL \
                    AND coalesce(v.last, r.end_time) < now() - make_interval(secs => $1) \
                  ORDER BY coalesce(v.last, r.end_time) LIMIT 1",
                None,
                &[(interval as f64).into()],
            )?;
            if due.is_empty() {
                return Ok(None);
            }
            Ok(due.first().get::<i64>(1)?.map(|id| (id, Kind::Reverify)))
        });
        let Some((id, kind)) = found? else {
            return Ok(None);
        };
        verification::load_target(id).map(|t| Some((t, kind)))
    })
    .flatten()
}
