//! The worker's integrity upkeep, one backup at a time on a helper thread:
//!
//! - a completed single-file backup recorded without a checksum (an external script called
//!   `record_backup_complete` with none) gets one computed and stored, with a `checksum`
//!   verification row saying so;
//! - every completed backup is verified again once its last checksum verification is older than
//!   `backup_mgmt.verify_interval` (bit rot), each run recorded.
//!
//! Every backup gets its turn: the next one is the one due first (`backup_mgmt.upkeep_queue`).  A
//! backup whose verification failed is tried again after a back-off that doubles with each failure
//! in a row (from the shorter of `verify_interval` and an hour, up to a day), so one unreadable
//! file is one recorded failure per attempt and cannot starve the others.

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

/// How often the catalog is searched for work while nothing is running.
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
        let mut finished = false;
        if let Some(job) = self.in_flight.take_if(|j| j.helper.is_finished()) {
            // Only a recorded outcome moves the backup back in the queue; one that was not
            // recorded (a panicked read, a failed transaction) waits for the next search.
            finished = finish(job);
        }
        if self.in_flight.is_some() {
            return;
        }
        // Right after a verification the next due one starts at once (a backlog is worked
        // through, not one backup per search interval).
        if !self.last_search.ready(SEARCH_EVERY) && !finished {
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

/// Records a finished verification; whether it was recorded.
fn finish(job: InFlight) -> bool {
    let Some(report) = job.helper.join() else {
        return false;
    };
    let id = job.target.backup_id;
    let stored_checksum = job.kind == Kind::Backfill && report.passed;
    let recorded = in_transaction(
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
    recorded.is_some()
}

/// The next backup to work on: the one due first in `backup_mgmt.upkeep_queue`, found with three
/// index probes of `backup_management.verification_state` (a backup without a checksum, the
/// longest unverified one, the failing one whose back-off ends first), so that the search costs
/// the same with a million backups as with ten, and a backup that keeps failing waits longer
/// each time instead of taking every turn.
fn next_candidate() -> Option<(Target, Kind)> {
    let interval = guc::verify_interval_seconds().max(0);
    in_transaction("looking for backups to verify", || -> Result<_, VerificationError> {
        let found = Spi::connect(|c| -> Result<_, SpiError> {
            let t = c.select(
                "SELECT backup_id, upkeep FROM ( \
                   (SELECT backup_id, upkeep, '-infinity'::timestamptz AS due \
                      FROM backup_management.verification_state \
                     WHERE upkeep = 'checksum' AND failures = 0 ORDER BY backup_id LIMIT 1) \
                   UNION ALL \
                   (SELECT backup_id, upkeep, reverify_from + make_interval(secs => $1) \
                      FROM backup_management.verification_state \
                     WHERE upkeep = 'reverify' AND failures = 0 AND $1 > 0 ORDER BY reverify_from LIMIT 1) \
                   UNION ALL \
                   (SELECT backup_id, upkeep, last_checksum_at + backup_mgmt.upkeep_backoff(failures) \
                      FROM backup_management.verification_state \
                     WHERE upkeep IS NOT NULL AND failures > 0 \
                     ORDER BY 3 LIMIT 1)) next \
                  WHERE due <= now() ORDER BY due LIMIT 1",
                None,
                &[(interval as f64).into()],
            )?;
            if t.is_empty() {
                return Ok(None);
            }
            let row = t.first();
            let kind = match row.get::<String>(2)?.as_deref() {
                Some("checksum") => Kind::Backfill,
                _ => Kind::Reverify,
            };
            Ok(row.get::<i64>(1)?.map(|id| (id, kind)))
        });
        let Some((id, kind)) = found? else {
            return Ok(None);
        };
        match verification::load_target(id) {
            Ok(t) => Ok(Some((t, kind))),
            Err(_) => {
                // The state said it was due, the record says otherwise (it changed under it):
                // the state is recomputed (and committed), so the backup does not stay first in
                // line.
                Spi::run_with_args(
                    "SELECT backup_mgmt.verification_state_refresh(ARRAY[$1])",
                    &[id.into()],
                )?;
                Ok(None)
            }
        }
    })
    .flatten()
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[allow(unused_imports)]
    use crate::testing::*;

    /// The maintained state and what `verification_state_of` computes from the two tables, as
    /// text, for every backup.
    fn assert_state_in_step(step: &str) {
        let row =
            "format('%s %s %s %s %s %s %s %s %s', backup_id, database_name, upkeep, reverify_from,
                          last_verified_at, last_status, last_checksum_at, failures, last_error)";
        let maintained = Spi::get_one::<String>(&format!(
            "SELECT coalesce(string_agg({row}, E'\\n' ORDER BY backup_id), '')
               FROM backup_management.verification_state"
        ))
        .unwrap()
        .unwrap_or_default();
        let computed = Spi::get_one::<String>(&format!(
            "SELECT coalesce(string_agg({row}, E'\\n' ORDER BY backup_id), '')
               FROM backup_mgmt.verification_state_of(
                        (SELECT array_agg(backup_id) FROM backup_management.backup_records))"
        ))
        .unwrap()
        .unwrap_or_default();
        assert_eq!(maintained, computed, "after {step}");
    }

    /// A completed backup of `db` that ended `days` ago, with a checksum or without.
    fn backup(db: &str, days: i32, checksum: bool) -> i64 {
        let sha = if checksum { "repeat('c', 64)" } else { "NULL" };
        // Through a read-write SPI call: a read-only one (Spi::get_one) does not advance the
        // command counter, so the statement's own AFTER triggers would not see its rows.
        Spi::connect_mut(|c| {
            c.update(
                &format!(
                    "INSERT INTO backup_management.backup_records
                 (database_name, backup_type, backup_method, backup_file_path, status, start_time,
                  end_time, duration, checksum, origin)
             VALUES ('{db}', 'full', 'pg_dump', '/nowhere/{db}-' || {days} || '-' || random() || '.dump',
                     'completed', now() - interval '{days} days', now() - interval '{days} days', '0',
                     {sha}, 'worker')
             RETURNING backup_id"
                ),
                None,
                &[],
            )?
            .first()
            .get_one::<i64>()
        })
        .unwrap()
        .unwrap()
    }

    fn verification(id: i64, passed: bool, ago: &str) {
        add_verification(
            id,
            "checksum",
            if passed { "passed" } else { "failed" },
            r#"{"reason": "missing", "detail": "the backup file is missing"}"#,
            ago,
        );
    }

    fn next() -> Option<(i64, super::Kind)> {
        super::next_candidate().map(|(t, k)| (t.backup_id, k))
    }

    #[pg_test]
    fn maintained_verification_state_equals_a_full_scan() {
        let a = backup("sa", 30, true);
        let b = backup("sa", 20, false);
        let c = backup("sb", 10, true);
        assert_state_in_step("three backups");
        verification(a, true, "1 day");
        verification(a, false, "1 hour");
        verification(b, false, "2 hours");
        verification(b, false, "1 hour");
        assert_state_in_step("verifications passed and failed");
        // A checksum computed for b; a restore test of c; a verification deleted.
        Spi::run(&format!(
            "UPDATE backup_management.backup_records SET checksum = repeat('d', 64) WHERE backup_id = {b}"
        ))
        .unwrap();
        add_verification(c, "restore_test", "passed", "{}", "0");
        Spi::run(&format!(
            "DELETE FROM backup_management.backup_verifications
              WHERE backup_id = {a} AND verification_status = 'failed'"
        ))
        .unwrap();
        assert_state_in_step("a checksum stored, a restore test, a deletion");
        // Expiry takes a backup out; a note changes nothing; deleting a record removes it.
        Spi::run(&format!(
            "UPDATE backup_management.backup_records SET status = 'expired' WHERE backup_id = {a}"
        ))
        .unwrap();
        Spi::run("UPDATE backup_management.backup_records SET label = 'note'").unwrap();
        Spi::run(&format!(
            "DELETE FROM backup_management.backup_records WHERE backup_id = {c}"
        ))
        .unwrap();
        assert_state_in_step("expiry, a note, a deletion");
        let left = Spi::get_one::<i64>("SELECT count(*) FROM backup_management.verification_state")
            .unwrap()
            .unwrap_or_default();
        assert_eq!(left, 1);
        // Many at once.
        Spi::run(
            "INSERT INTO backup_management.backup_records
                 (database_name, backup_type, backup_method, backup_file_path, status, end_time, duration, checksum, origin)
             SELECT 'bulk', 'full', 'pg_dump', '/nowhere/bulk-' || n, 'completed', now(), '0', repeat('e', 64), 'worker'
               FROM generate_series(1, 500) n",
        )
        .unwrap();
        Spi::run(
            "INSERT INTO backup_management.backup_verifications (backup_id, verification_type, verification_status)
             SELECT backup_id, 'checksum', CASE WHEN backup_id % 3 = 0 THEN 'failed' ELSE 'passed' END
               FROM backup_management.backup_records WHERE database_name = 'bulk'",
        )
        .unwrap();
        assert_state_in_step("bulk records and verifications");
    }

    /// A failed verification stands until a later one at least as thorough passes: the
    /// worker's routine checksum pass (the bytes are the ones recorded) does not turn a backup
    /// that a restore test or pg_verifybackup found bad back into a verified one.
    #[pg_test]
    fn a_failure_stands_until_a_verification_as_thorough_passes() {
        let id = backup("verdict", 3, true);
        let add = |kind: &str, status: &str, result: &str| {
            add_verification(id, kind, status, result, "0");
        };
        let verdict = || {
            let (status, only_local) = Spi::get_two::<String, bool>(&format!(
                "SELECT status, only_local FROM backup_mgmt.verification_verdict({id})"
            ))
            .unwrap();
            let kept = Spi::get_one::<String>(&format!(
                "SELECT last_status FROM backup_management.verification_state WHERE backup_id = {id}"
            ))
            .unwrap();
            assert_eq!(kept, status, "the state keeps the verdict");
            (status, only_local)
        };
        let failed = |local: bool| (Some("failed".to_owned()), Some(local));
        let passed = (Some("passed".to_owned()), None);
        assert_eq!(verdict(), (None, None), "never verified");
        // The file missing on this host: a failure that only says so.
        add("checksum", "failed", r#"{"reason": "missing"}"#);
        assert_eq!(verdict(), failed(true));
        // The same failure seen by a restore test that stopped at the checksum.
        add(
            "restore_test",
            "failed",
            r#"{"stage": "integrity", "reason": "refused_path"}"#,
        );
        assert_eq!(verdict(), failed(true));
        // Back, and read again: the bytes are the recorded ones.
        add("checksum", "passed", "{}");
        assert_eq!(verdict(), passed);
        // A restore test that restored and found the data wrong; the routine checksum pass and
        // pg_verifybackup after it are less thorough and leave it standing.
        add(
            "restore_test",
            "failed",
            r#"{"stage": "data_verification"}"#,
        );
        add("checksum", "passed", "{}");
        assert_eq!(verdict(), failed(false));
        add("pg_verifybackup", "passed", "{}");
        assert_eq!(verdict(), failed(false));
        // The file missing now too: the content failure still stands, not only a local one.
        add("checksum", "failed", r#"{"reason": "missing"}"#);
        assert_eq!(verdict(), failed(false));
        // A restore test that passes clears everything before it.
        add(
            "restore_test",
            "passed",
            r#"{"stage": "data_verification"}"#,
        );
        assert_eq!(verdict(), passed);
        // pg_verifybackup failing stands over checksum passes, and falls to its own pass.
        add("pg_verifybackup", "failed", r#"{"output": "bad"}"#);
        add("checksum", "passed", "{}");
        assert_eq!(verdict(), failed(false));
        add("pg_verifybackup", "passed", "{}");
        assert_eq!(verdict(), passed);
        // A mismatch (not the host's copy missing: different bytes) falls to a checksum pass.
        add("checksum", "failed", r#"{"reason": "checksum_mismatch"}"#);
        assert_eq!(verdict(), failed(false));
        add("checksum", "passed", "{}");
        assert_eq!(verdict(), passed);
        // A logical restore test that restored cleanly but had no row counts to compare (a
        // dump recorded by a script) found nothing wrong: any pass clears it.  With an error
        // it found something, and stands.
        let no_counts = r#"{"stage": "data_verification", "facts_captured": false, "error": null}"#;
        add("restore_test", "failed", no_counts);
        assert_eq!(verdict(), failed(false));
        add("checksum", "passed", "{}");
        assert_eq!(verdict(), passed);
        // Such a dump's restore tests never pass: one that restored cleanly clears a restore
        // test that failed before it (a scratch database that could not be created).
        add(
            "restore_test",
            "failed",
            r#"{"stage": "restore", "error": "no space left"}"#,
        );
        add("checksum", "passed", "{}");
        assert_eq!(verdict(), failed(false));
        add("restore_test", "failed", no_counts);
        add("checksum", "passed", "{}");
        assert_eq!(verdict(), passed);
        let with_error = r#"{"stage": "data_verification", "facts_captured": false, "error": "pg_restore failed"}"#;
        add("restore_test", "failed", with_error);
        add("checksum", "passed", "{}");
        assert_eq!(verdict(), failed(false));
        assert_state_in_step("verdicts");
    }

    /// The starvation the issue describes: a backup whose file cannot be read, first in line on
    /// every search, kept every other backup from being verified again.  Now each backup gets its
    /// turn, the failing one waits longer after each failure, and the queue shows it.
    #[pg_test]
    fn a_failing_backup_cannot_starve_the_others() {
        let unreadable = backup("starve", 40, false);
        let due: Vec<i64> = (0..3).map(|i| backup("starve", 30 - i, true)).collect();
        // First the backup without a checksum; its attempt fails.
        assert_eq!(next(), Some((unreadable, super::Kind::Backfill)));
        verification(unreadable, false, "0 seconds");
        // Then every due re-verification, oldest first, each passing.
        for id in &due {
            assert_eq!(next(), Some((*id, super::Kind::Reverify)));
            verification(*id, true, "0 seconds");
        }
        assert_eq!(next(), None, "the failing backup waits for its back-off");
        // Once its back-off has passed it is tried again; a second failure doubles the wait.
        Spi::run(&format!(
            "UPDATE backup_management.backup_verifications SET verified_at = verified_at - interval '90 minutes'
              WHERE backup_id = {unreadable}"
        ))
        .unwrap();
        assert_eq!(next(), Some((unreadable, super::Kind::Backfill)));
        verification(unreadable, false, "0 seconds");
        assert_eq!(next(), None);
        let (failures, error, wait) = Spi::get_three::<i32, String, f64>(&format!(
            "SELECT consecutive_failures, last_error, extract(epoch FROM due_at - last_attempt_at)::float8
               FROM backup_mgmt.upkeep_queue WHERE backup_id = {unreadable}"
        ))
        .unwrap();
        assert_eq!(failures, Some(2));
        assert_eq!(error.as_deref(), Some("the backup file is missing"));
        assert_eq!(wait, Some(7200.0));
        assert_state_in_step("upkeep");
    }
}
