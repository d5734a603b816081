//! Archived WAL leaves the host: every file of the local WAL archive (`wal_archive`) is copied to
//! every active off-site target, as soon as the worker has recorded it, and verified where it
//! landed (its sha256 must be the one recorded when it was archived).  The archiver never waits
//! on the network: the local archive is the queue, `remote_wal_records` says what each target
//! holds, and `remote_wal_queue` (kept by triggers, 0.13.0) what waits for each: the files to
//! copy and the expired copies to remove, oldest first, so that a check costs what waits, not
//! the size of the archive.  Every `REPAIR_EVERY` the queue is compared with its definition and
//! mended if a race between two transactions left it out of step (said in a LOG line).
//!
//! Each target has its own copy thread (so a target that is down never holds up another), with
//! `backup_mgmt.offsite_wal_parallel` uploads in flight; a failed batch is retried after a pause
//! that doubles from 1 s to 60 s.  Every second the worker looks at each target's lag (how long
//! the oldest file not yet there has waited since it was archived); past
//! `backup_mgmt.offsite_wal_lag_alarm` it logs a WARNING and sends a NOTIFY, and again when the
//! target is back under it, long before `pg_wal` would fill.  Copies of files that expired from
//! the local archive are removed from the target.
//!
//! The same thread replaces this cluster's catalog mirror on the target
//! (`catalog::mirror::offsite_text`, under `<system identifier>/.catalog/`) when what it shows
//! changed, at most every `MIRROR_EVERY`: the target alone then says which object is which
//! backup, which WAL it holds, with every sha256.  Its WAL list goes in parts (format 2,
//! `mirror_parts`): a change uploads the parts that changed, not the whole archive's list.
//! The first write after a start, and the first after each `PARTS_CHECK_EVERY`, also reads
//! every part already there back: one damaged in place is put again (a WARNING names it), since
//! a part's key is its content and nothing else would ever rewrite it.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use backup_mgmt_core::restore::mirror_parts::{Check, Written};
use backup_mgmt_core::storage::Storage;
use backup_mgmt_core::threads::{Helper, Throttle};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiError};

use super::target_hold::{target_held, Hold};
use super::wal_alarm::{check_alarm, clear_disabled_alarms};
use super::wal_copy::{ship, Batch, Expired, Mirror, Pending, ShipError};
use super::wal_queue::{expired_copies, pending_files, queue_ready};
use super::{OffsiteError, TargetSpec};
use crate::catalog::mirror;
use crate::pg::log::escape_for_log;
use crate::pg::spi::in_transaction;
use crate::pg::{guc, server};

/// How often lags are looked at and idle targets given new files.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// The pause after a failed batch, doubling up to the maximum.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The catalog mirror is replaced on a target at most this often (when it changed), and at
/// least this often while anything changes.
const MIRROR_EVERY: Duration = Duration::from_secs(10);
/// How often a mirror written to a target (after a change) also reads every WAL part already
/// there back and puts again one damaged in place: a part is otherwise never rewritten.  A part
/// is at most 64 kB for 256 segments, so this reads about 250 bytes per WAL file kept there.
const PARTS_CHECK_EVERY: Duration = Duration::from_secs(15 * 60);
/// A file whose copy failed for its own sake (unreadable, changed, a different object under its
/// key) is tried again after this long; the rest of the queue goes on meanwhile.
const FILE_RETRY: Duration = Duration::from_secs(60);
/// An expired copy whose removal failed is tried again after this long.
const REMOVAL_RETRY: Duration = Duration::from_secs(600);
/// How often the queue is compared with what it should hold (a whole-archive comparison, the
/// cost the queue saves on every other check).
const REPAIR_EVERY: Duration = Duration::from_secs(60);

/// A target as the worker tracks it between batches.
struct Target {
    name: String,
    helper: Option<Helper<Batch>>,
    next_try: Option<Instant>,
    backoff: Duration,
    /// The fingerprint of the mirror last copied there (empty after a failure), and when.
    mirrored: Option<(String, Instant)>,
    /// The mirrors copied there: their WAL parts, kept a while after being replaced.
    written: Written,
    /// When a mirror written there last read every part back (`Check::Content`); None: not
    /// since the worker started.
    parts_checked: Option<Instant>,
    /// Files held back after a failure of their own, until when.
    held: HashMap<(i64, String), Instant>,
    /// Removals of expired copies wait until then after one failed (a bucket that refuses
    /// deletes is asked once a minute, not at every check).
    removals_wait: Option<Instant>,
    /// Expired copies whose removal failed, by key, left alone until then (one object that
    /// cannot go, a legal hold, does not come first in every batch and block the rest).
    removals_held: HashMap<String, Instant>,
    /// The target's identity (`remote_wal_state.target_identity`) when its batch was planned:
    /// copies are recorded only while it still names the same place.
    identity: String,
}

#[derive(Default)]
pub struct WalShipping {
    targets: HashMap<i32, Target>,
    /// Active targets an open transaction holds: since when, and whether that was said.
    locked_since: HashMap<i32, (Instant, bool)>,
    last_check: Throttle,
    last_repair: Throttle,
}

impl WalShipping {
    pub fn tick(&mut self) {
        let finished: Vec<i32> = self
            .targets
            .iter()
            .filter(|(_, t)| t.helper.as_ref().is_some_and(Helper::is_finished))
            .map(|(id, _)| *id)
            .collect();
        for id in finished {
            if let Some(t) = self.targets.get_mut(&id) {
                let failed = match t.helper.take().and_then(Helper::join) {
                    Some(batch) => {
                        let outcome = record(id, &t.name, &t.identity, &batch);
                        let now = Instant::now();
                        match batch.mirror.map(|m| (m.fingerprint, m.check, m.landed)) {
                            Some((fingerprint, check, Ok(stored))) => {
                                t.mirrored = Some((fingerprint, now));
                                t.written.landed(stored.named, now);
                                if check == Check::Content {
                                    t.parts_checked = Some(now);
                                }
                                for key in &stored.repaired {
                                    warning!(
                                        "backup_mgmt: off-site target \"{}\": the catalog mirror's part \"{}\" did not hold what its key says (damaged or unreadable on the target); it was put again",
                                        escape_for_log(&t.name),
                                        escape_for_log(key)
                                    );
                                }
                            }
                            // Tried again after MIRROR_EVERY, without holding up the WAL.
                            // The document may have landed all the same (a failed check after
                            // the upload): what it names is not known, so nothing is removed
                            // for a while.
                            Some((_, _, Err(_))) => {
                                t.mirrored = Some((String::new(), now));
                                t.written.restart(now);
                            }
                            None => {}
                        }
                        for file in outcome.held {
                            t.held.insert(file, now + FILE_RETRY);
                        }
                        if !outcome.removals_failed.is_empty() {
                            t.removals_wait = Some(now + FILE_RETRY);
                        }
                        for key in outcome.removals_failed {
                            t.removals_held.insert(key, now + REMOVAL_RETRY);
                        }
                        outcome.target_failed
                    }
                    None => {
                        warning!(
                            "backup_mgmt: the WAL copy thread of off-site target \"{}\" panicked",
                            escape_for_log(&t.name)
                        );
                        true
                    }
                };
                t.backoff = if failed {
                    (t.backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF)
                } else {
                    Duration::ZERO
                };
                t.next_try = failed.then(|| Instant::now() + t.backoff);
            }
        }
        if !self.last_check.ready(CHECK_EVERY) {
            return;
        }
        let busy: Vec<i32> = self
            .targets
            .iter()
            .filter(|(_, t)| t.helper.is_some() || t.next_try.is_some_and(|at| at > Instant::now()))
            .map(|(id, _)| *id)
            .collect();
        let mirrored: HashMap<i32, (String, Instant)> = self
            .targets
            .iter()
            .filter_map(|(id, t)| t.mirrored.clone().map(|m| (*id, m)))
            .collect();
        let parts_fresh: HashSet<i32> = self
            .targets
            .iter()
            .filter(|(_, t)| {
                t.parts_checked
                    .is_some_and(|at| at.elapsed() < PARTS_CHECK_EVERY)
            })
            .map(|(id, _)| *id)
            .collect();
        // A held file's time runs out whether or not a batch finishes meanwhile: when it is the
        // only file pending (an idle cluster) no batch would ever run to let it go.
        let now = Instant::now();
        for t in self.targets.values_mut() {
            t.held.retain(|_, until| *until > now);
        }
        let held: HashMap<i32, HashSet<(i64, String)>> = self
            .targets
            .iter()
            .map(|(id, t)| (*id, t.held.keys().cloned().collect()))
            .collect();
        for t in self.targets.values_mut() {
            t.removals_held.retain(|_, until| *until > now);
        }
        // Per target: None when its removals wait, else the keys left alone.
        let removals: HashMap<i32, Option<HashSet<String>>> = self
            .targets
            .iter()
            .map(|(id, t)| {
                let waits = t.removals_wait.is_some_and(|at| at > now);
                (
                    *id,
                    (!waits).then(|| t.removals_held.keys().cloned().collect()),
                )
            })
            .collect();
        let repair = self.last_repair.ready(REPAIR_EVERY);
        let Some(work) = in_transaction("looking for archived WAL to copy off site", || {
            Spi::connect_mut(|c| {
                let queued = queue_ready(c, repair)?;
                plan(c, queued, &busy, &mirrored, &parts_fresh, &held, &removals)
            })
        }) else {
            return;
        };
        self.warn_locked(&work);
        let active: Vec<i32> = work.iter().map(|w| w.config_id).collect();
        self.targets
            .retain(|id, t| active.contains(id) || t.helper.is_some());
        let parallel = guc::offsite_wal_parallel();
        for w in work {
            let t = self.targets.entry(w.config_id).or_insert_with(|| Target {
                name: w.name.clone(),
                helper: None,
                next_try: None,
                backoff: Duration::ZERO,
                mirrored: None,
                written: Written::new(Instant::now()),
                parts_checked: None,
                held: HashMap::new(),
                removals_wait: None,
                removals_held: HashMap::new(),
                identity: String::new(),
            });
            t.name = w.name;
            if w.moved {
                // The target now names another place: what was held back may well copy there.
                t.held.clear();
                t.mirrored = None;
                t.written = Written::new(Instant::now());
                t.parts_checked = None;
                t.removals_wait = None;
                t.removals_held.clear();
            }
            match w.storage {
                Some(Err(why)) => {
                    // The row names no usable target: recorded like a failed batch.
                    fail_target(w.config_id, &t.name, &why);
                    t.backoff = (t.backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
                    t.next_try = Some(Instant::now() + t.backoff);
                }
                Some(Ok(storage)) => {
                    t.identity = w.identity;
                    let (pending, expired) = (w.pending, w.expired);
                    let mirror = w.mirror.map(|m| Mirror {
                        keep: t.written.keep(Instant::now()),
                        ..m
                    });
                    t.helper = Some(Helper::spawn(
                        move || ship(storage.as_ref(), pending, expired, mirror, parallel),
                        server::wake_worker,
                    ));
                }
                _ => {}
            }
        }
    }

    /// A target passed over because an open transaction holds it is said so (a WARNING) once
    /// it has been for as long as the lag alarm allows (a minute without one): its WAL waits.
    fn warn_locked(&mut self, work: &[Work]) {
        let now = Instant::now();
        let locked: HashSet<i32> = work
            .iter()
            .filter(|w| w.held)
            .map(|w| w.config_id)
            .collect();
        self.locked_since.retain(|id, _| locked.contains(id));
        let limit = guc::offsite_wal_lag_alarm().unwrap_or(Duration::from_secs(60));
        for id in locked {
            let (since, warned) = self.locked_since.entry(id).or_insert((now, false));
            if !*warned && now.duration_since(*since) >= limit {
                *warned = true;
                warning!(
                    "backup_mgmt: off-site target {id} has been held by another transaction (changing or deleting it) for {} s: its WAL waits until that transaction ends",
                    now.duration_since(*since).as_secs()
                );
            }
        }
    }

    /// At shutdown: copies in flight are left to the next start (an identical copy already on
    /// the target is success, so nothing is copied twice).
    pub fn abandon(&mut self) {
        self.targets.clear();
    }
}

/// One active target's share of a check.
struct Work {
    config_id: i32,
    name: String,
    /// None: the target is busy or waiting out its backoff.
    storage: Option<Result<Box<dyn Storage>, OffsiteError>>,
    pending: Vec<Pending>,
    expired: Vec<Expired>,
    mirror: Option<Mirror>,
    /// The target's identity now, and whether it changed since its copies were recorded.
    identity: String,
    moved: bool,
    /// An open transaction holds it (changing or deleting it): passed over.
    held: bool,
}

impl Work {
    /// A target passed over: an open transaction holds it.
    fn held(config_id: i32, name: String, identity: String) -> Work {
        Work {
            config_id,
            name,
            storage: None,
            pending: Vec::new(),
            expired: Vec::new(),
            mirror: None,
            identity,
            moved: false,
            held: true,
        }
    }
}

/// In one transaction: every active target's lag against the alarm, and, for each target that is
/// not `busy`, the files to copy and the copies to remove (none where `removals` says they wait,
/// none of the keys it holds back).
fn plan(
    c: &mut SpiClient<'_>,
    queued: bool,
    busy: &[i32],
    mirrored: &HashMap<i32, (String, Instant)>,
    parts_fresh: &HashSet<i32>,
    held: &HashMap<i32, HashSet<(i64, String)>>,
    removals: &HashMap<i32, Option<HashSet<String>>>,
) -> Result<Vec<Work>, SpiError> {
    let configs = c.select(
        &format!(
            "SELECT {}, {} AS place \
               FROM backup_management.remote_backup_configs WHERE is_active ORDER BY config_id",
            TargetSpec::COLUMNS,
            TargetSpec::PLACE
        ),
        None,
        &[],
    )?;
    let mut rows = Vec::new();
    for r in configs {
        let (name, spec) = TargetSpec::from_row(&r)?;
        rows.push((
            spec.config_id,
            name,
            r.get_by_name::<String, _>("place")?.unwrap_or_default(),
            spec,
        ));
    }
    clear_disabled_alarms(c)?;
    let roots = guc::backup_roots().unwrap_or_default();
    let mut work = Vec::new();
    for (id, name, identity, spec) in rows {
        // A target an open transaction is changing or deleting is passed over until it ends:
        // what is written for it (its state, its copies, whose queue rows that transaction may
        // have deleted) would wait on it, and with it every other target's WAL.  It is locked
        // only when something is to be written or copied (a lock writes WAL, and an idle
        // cluster must stay idle: archive_timeout would switch segments for nothing).
        let mut hold = Hold::new(id);
        let Some(moved) = same_place(c, &mut hold, id, &name, &identity)? else {
            work.push(Work::held(id, name, identity));
            continue;
        };
        check_alarm(c, &mut hold, id, &name)?;
        if busy.contains(&id) {
            work.push(Work {
                moved,
                held: false,
                ..Work::held(id, name, identity)
            });
            continue;
        }
        let no_held = HashSet::new();
        let pending = pending_files(c, queued, id, &roots, held.get(&id).unwrap_or(&no_held))?;
        let expired = match removals.get(&id) {
            Some(None) => Vec::new(),
            Some(Some(held)) => {
                let mut expired = expired_copies(c, queued, id)?;
                expired.retain(|e| !held.contains(&e.key));
                expired
            }
            None => expired_copies(c, queued, id)?,
        };
        let fingerprint = mirror::offsite_fingerprint(c, id)?;
        // A write reads the parts back when that was not done for a while.  Only a write
        // that is due anyway: an unchanged mirror is not written for it (an idle cluster
        // writes no WAL, and on an idle cluster nothing rewrites a part either).
        let check = match parts_fresh.contains(&id) {
            true => Check::Listed,
            false => Check::Content,
        };
        let mirror = match mirrored.get(&id) {
            Some((done, _)) if *done == fingerprint => None,
            Some((_, at)) if at.elapsed() < MIRROR_EVERY => None,
            _ => {
                let sysid = server::system_identifier() as i64;
                Some(Mirror {
                    key: backup_mgmt_core::restore::offsite::mirror_key(sysid),
                    text: mirror::offsite_text(c, id)?,
                    fingerprint,
                    writer: id.to_string(),
                    keep: None,
                    check,
                })
            }
        };
        let storage = if pending.is_empty() && expired.is_empty() && mirror.is_none() {
            None
        } else if !hold.get(c)? {
            work.push(Work::held(id, name, identity));
            continue;
        } else {
            Some(spec.open())
        };
        work.push(Work {
            config_id: id,
            name,
            storage,
            pending,
            expired,
            mirror,
            identity,
            moved,
            held: false,
        });
    }
    Ok(work)
}

/// Whether the target still names the place its copies were recorded for; when its type,
/// endpoint or path changed, its copy records are forgotten (the copies are at the old place)
/// and everything is copied again.  Returns whether it moved.
fn same_place(
    c: &mut SpiClient<'_>,
    hold: &mut Hold,
    config_id: i32,
    name: &str,
    identity: &str,
) -> Result<Option<bool>, SpiError> {
    let recorded = c
        .select(
            "SELECT target_identity FROM backup_management.remote_wal_state WHERE config_id = $1",
            None,
            &[config_id.into()],
        )?
        .next()
        .map(|r| r.get::<String>(1))
        .transpose()?
        .flatten();
    match recorded {
        Some(known) if known == identity => Ok(Some(false)),
        _ if !hold.get(c)? => Ok(None),
        known => {
            let moved = known.is_some();
            if moved {
                c.update(
                    "DELETE FROM backup_management.remote_wal_records WHERE config_id = $1",
                    None,
                    &[config_id.into()],
                )?;
                // Its backup copies are at the old place: no mirror at the new one may list
                // them (and they are copied there again).
                c.update(
                    "UPDATE backup_management.remote_backup_records SET sync_status = 'expired' \
                      WHERE config_id = $1 AND sync_status = 'completed'",
                    None,
                    &[config_id.into()],
                )?;
                log!(
                    "backup_mgmt: off-site target \"{}\" names another place now: its WAL and backups are copied there again",
                    escape_for_log(name)
                );
            }
            c.update(
                "INSERT INTO backup_management.remote_wal_state (config_id, target_identity) \
                 VALUES ($1, $2) \
                 ON CONFLICT (config_id) DO UPDATE \
                    SET target_identity = excluded.target_identity, last_copied_file = NULL, \
                        last_copied_at = NULL, catalog_copied_at = NULL",
                None,
                &[config_id.into(), identity.into()],
            )?;
            Ok(Some(moved))
        }
    }
}

/// What recording a batch found.
struct Recorded {
    /// A failure of the target's (it waits out a backoff).
    target_failed: bool,
    /// Files that failed for their own sake (held back for `FILE_RETRY`).
    held: Vec<(i64, String)>,
    /// The keys whose removal failed: removals wait `FILE_RETRY`, those keys `REMOVAL_RETRY`
    /// (the WAL does not wait).
    removals_failed: Vec<String>,
}

/// Records a batch: each verified copy (only while the target still names the place the batch
/// was planned for, `identity`), each removal, the newest copy, the mirror, the first failure.
fn record(config_id: i32, name: &str, identity: &str, batch: &Batch) -> Recorded {
    let mut failures: Vec<(String, String, bool)> = batch
        .shipped
        .iter()
        .filter_map(|s| {
            s.result.as_ref().err().map(|e| {
                (
                    format!("WAL file {}", escape_for_log(&s.file_name)),
                    e.to_string(),
                    !e.file_level(),
                )
            })
        })
        .collect();
    failures.extend(batch.removed.iter().filter_map(|(e, r)| {
        r.as_ref().err().map(|why| {
            // Never holds up the WAL: a copy not yet removed costs space, not recovery.
            (
                format!("the removal of expired {}", escape_for_log(&e.key)),
                why.to_string(),
                false,
            )
        })
    }));
    // A target that did not answer with nothing to copy (only removals or the mirror waiting)
    // is still the target's failure: heard, and backed off.
    if let (Some(why), true) = (&batch.unready, batch.shipped.is_empty()) {
        failures.push(("the target".to_owned(), why.clone(), true));
    }
    if let (Some(Err(e)), None) = (batch.mirror.as_ref().map(|m| &m.landed), &batch.unready) {
        // The mirror has its own cadence: its failure never holds up the WAL.
        failures.push(("the catalog mirror".to_owned(), e.to_string(), false));
    }
    let held = batch
        .shipped
        .iter()
        .filter(|s| s.result.as_ref().is_err_and(ShipError::file_level))
        .map(|s| (s.system_identifier, s.file_name.clone()))
        .collect();
    let copied_any = batch.shipped.iter().any(|s| s.result.is_ok());
    let name = escape_for_log(name);
    let what = format!("recording WAL copied to \"{name}\"");
    in_transaction(&what, || {
        Spi::connect_mut(|c| {
            if !target_held(c, config_id)? {
                // Being changed or deleted by an open transaction: nothing is recorded (what was
                // copied is copied again should it stay, and an identical copy on the target is
                // success).
                return Ok(());
            }
            for s in &batch.shipped {
                let Ok(copied) = &s.result else { continue };
                c.update(
                    "INSERT INTO backup_management.remote_wal_records \
                         (config_id, system_identifier, file_name, remote_key, file_size, \
                          remote_checksum, archived_at) \
                     SELECT $1, $2, $3, $4, $5, $6, $7::timestamptz \
                      WHERE EXISTS (SELECT FROM backup_management.remote_wal_state \
                                     WHERE config_id = $1 AND target_identity = $8) \
                     ON CONFLICT (config_id, system_identifier, file_name) DO NOTHING",
                    None,
                    &[
                        config_id.into(),
                        s.system_identifier.into(),
                        s.file_name.as_str().into(),
                        s.key.as_str().into(),
                        (copied.size as i64).into(),
                        copied.sha256.as_str().into(),
                        s.archived_at.as_str().into(),
                        identity.into(),
                    ],
                )?;
            }
            for (e, result) in &batch.removed {
                if result.is_ok() {
                    c.update(
                        "DELETE FROM backup_management.remote_wal_records \
                          WHERE config_id = $1 AND system_identifier = $2 AND file_name = $3",
                        None,
                        &[
                            config_id.into(),
                            e.system_identifier.into(),
                            e.file_name.as_str().into(),
                        ],
                    )?;
                }
            }
            if copied_any {
                // The newest by the catalog's own order (timestamps compared as timestamps).
                c.update(
                    "UPDATE backup_management.remote_wal_state s \
                        SET (last_copied_file, last_copied_at) = \
                            (SELECT r.file_name, r.copied_at FROM backup_management.remote_wal_records r \
                              WHERE r.config_id = $1 ORDER BY r.archived_at DESC, r.file_name DESC LIMIT 1), \
                            failures = 0 \
                      WHERE s.config_id = $1",
                    None,
                    &[config_id.into()],
                )?;
            }
            if batch.mirror.as_ref().is_some_and(|m| m.landed.is_ok()) {
                c.update(
                    "UPDATE backup_management.remote_wal_state SET catalog_copied_at = now() \
                      WHERE config_id = $1",
                    None,
                    &[config_id.into()],
                )?;
            }
            if let Some((what, why, _)) = failures.first() {
                note_failure(c, config_id, &format!("{what}: {why}"))?;
            }
            Ok::<(), SpiError>(())
        })
    });
    // One line per batch, however many files failed.
    if let Some((what, why, _)) = failures.first() {
        let more = match failures.len() {
            1 => String::new(),
            n => format!(" ({} more failures in this batch)", n - 1),
        };
        log!(
            "backup_mgmt: copying to off-site target \"{name}\": {what} failed{more}: {}",
            escape_for_log(why)
        );
    }
    Recorded {
        target_failed: failures.iter().any(|f| f.2),
        held,
        removals_failed: batch
            .removed
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|(e, _)| e.key.clone())
            .collect(),
    }
}

fn note_failure(c: &mut SpiClient<'_>, config_id: i32, why: &str) -> Result<(), SpiError> {
    c.update(
        "INSERT INTO backup_management.remote_wal_state \
             (config_id, failures, last_error, last_error_at) VALUES ($1, 1, $2, now()) \
         ON CONFLICT (config_id) DO UPDATE \
            SET failures = remote_wal_state.failures + 1, last_error = excluded.last_error, \
                last_error_at = excluded.last_error_at",
        None,
        &[config_id.into(), why.into()],
    )?;
    Ok(())
}

/// A target whose row names nothing usable (refused by the limits, bad credentials reference).
fn fail_target(config_id: i32, name: &str, why: &OffsiteError) {
    let text = why.to_string();
    let name = escape_for_log(name);
    in_transaction("recording an off-site target's WAL failure", || {
        Spi::connect_mut(|c| match target_held(c, config_id)? {
            true => note_failure(c, config_id, &text),
            false => Ok(()),
        })
    });
    warning!(
        "backup_mgmt: off-site target \"{name}\": WAL not copied: {}",
        escape_for_log(&text)
    );
}
