//! Archived WAL leaves the host: every file of the local WAL archive (`wal_archive`) is copied to
//! every active off-site target, as soon as the worker has recorded it, and verified where it
//! landed (its sha256 must be the one recorded when it was archived).  The archiver never waits
//! on the network: the local archive is the queue, and `remote_wal_records` says what each
//! target holds.
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
//! backup, which WAL it holds, with every sha256.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use backup_mgmt_core::storage::{self, Copied, Storage, StorageError};
use backup_mgmt_core::threads::{self, Helper, Throttle};
use backup_mgmt_core::verify::archive::{self, ArchivedFile};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiError};

use super::{OffsiteError, TargetSpec};
use crate::catalog::mirror;
use crate::pg::log::escape_for_log;
use crate::pg::notify::{self, Event};
use crate::pg::spi::in_transaction;
use crate::pg::{guc, server};

/// How often lags are looked at and idle targets given new files.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// Files per batch and target (the rest waits for the next batch, a second later at most).
const BATCH: i64 = 128;
/// The pause after a failed batch, doubling up to the maximum.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The catalog mirror is replaced on a target at most this often (when it changed), and at
/// least this often while anything changes.
const MIRROR_EVERY: Duration = Duration::from_secs(10);

/// Why a file could not be copied.
#[derive(Debug, thiserror::Error)]
enum ShipError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the target is not ready: {0}")]
    NotReady(String),
    #[error("not copied: its recorded path \"{0}\" is not in the WAL archive of a backup root")]
    NotInArchive(String),
    #[error("could not open the archived file: {0}")]
    Unreadable(String),
    #[error("the archived file no longer matches its recorded sha256 {recorded} (read {read}); the copy was removed from the target")]
    Changed { recorded: String, read: String },
}

/// One archived file to copy.
struct Pending {
    system_identifier: i64,
    file_name: String,
    file_path: String,
    /// `archived_at` as text, handed back to the catalog as it was read.
    archived_at: String,
    sha256: String,
    /// Where it is (None: its recorded path is not the archive's, and it is never opened).
    file: Option<ArchivedFile>,
}

/// A copy on the target whose archived file expired (or is gone from the catalog).
struct Expired {
    system_identifier: i64,
    file_name: String,
    key: String,
}

struct Shipped {
    system_identifier: i64,
    file_name: String,
    archived_at: String,
    key: String,
    result: Result<Copied, ShipError>,
}

/// The catalog mirror to put on a target: its fingerprint, key and text.
struct Mirror {
    fingerprint: String,
    key: String,
    text: String,
}

/// What a batch did.
struct Batch {
    shipped: Vec<Shipped>,
    removed: Vec<(Expired, Result<(), StorageError>)>,
    /// The mirror's fingerprint and whether it landed.
    mirror: Option<(String, Result<(), StorageError>)>,
}

/// A target as the worker tracks it between batches.
struct Target {
    name: String,
    helper: Option<Helper<Batch>>,
    next_try: Option<Instant>,
    backoff: Duration,
    /// The fingerprint of the mirror last copied there, and when.
    mirrored: Option<(String, Instant)>,
}

#[derive(Default)]
pub struct WalShipping {
    targets: HashMap<i32, Target>,
    last_check: Throttle,
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
                if let Some(batch) = t.helper.take().and_then(Helper::join) {
                    let failed = record(id, &t.name, &batch);
                    if let Some((fingerprint, Ok(()))) = batch.mirror {
                        t.mirrored = Some((fingerprint, Instant::now()));
                    }
                    t.backoff = if failed {
                        (t.backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF)
                    } else {
                        Duration::ZERO
                    };
                    t.next_try = failed.then(|| Instant::now() + t.backoff);
                }
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
        let Some(work) = in_transaction("looking for archived WAL to copy off site", || {
            Spi::connect_mut(|c| plan(c, &busy, &mirrored))
        }) else {
            return;
        };
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
            });
            t.name = w.name;
            match w.storage {
                Some(Err(why)) => {
                    // The row names no usable target: recorded like a failed batch.
                    fail_target(w.config_id, &t.name, &why);
                    t.backoff = (t.backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
                    t.next_try = Some(Instant::now() + t.backoff);
                }
                Some(Ok(storage)) => {
                    let (pending, expired, mirror) = (w.pending, w.expired, w.mirror);
                    t.helper = Some(Helper::spawn(
                        move || ship(storage.as_ref(), pending, expired, mirror, parallel),
                        server::wake_worker,
                    ));
                }
                _ => {}
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
}

/// In one transaction: every active target's lag against the alarm, and, for each target that is
/// not `busy`, the files to copy and the copies to remove.
fn plan(
    c: &mut SpiClient<'_>,
    busy: &[i32],
    mirrored: &HashMap<i32, (String, Instant)>,
) -> Result<Vec<Work>, SpiError> {
    let configs = c.select(
        "SELECT config_id, config_name, remote_type, remote_endpoint, remote_path, \
                credentials_ref, options::text, encryption_key_ref, configured_by_superuser \
           FROM backup_management.remote_backup_configs WHERE is_active ORDER BY config_id",
        None,
        &[],
    )?;
    let mut rows = Vec::new();
    for r in configs {
        rows.push((
            r.get::<i32>(1)?.unwrap_or_default(),
            r.get::<String>(2)?.unwrap_or_default(),
            TargetSpec {
                kind: r.get::<String>(3)?.unwrap_or_default(),
                endpoint: r.get::<String>(4)?.unwrap_or_default(),
                path: r.get::<String>(5)?.unwrap_or_default(),
                credentials: r.get::<String>(6)?,
                options: r.get::<String>(7)?.unwrap_or_else(|| "{}".into()),
                key_ref: r.get::<String>(8)?,
                by_superuser: r.get::<bool>(9)?.unwrap_or(false),
            },
        ));
    }
    let roots = guc::backup_roots().unwrap_or_default();
    let mut work = Vec::new();
    for (id, name, spec) in rows {
        check_alarm(c, id, &name)?;
        if busy.contains(&id) {
            work.push(Work {
                config_id: id,
                name,
                storage: None,
                pending: Vec::new(),
                expired: Vec::new(),
                mirror: None,
            });
            continue;
        }
        let pending = pending_files(c, id, &roots)?;
        let expired = expired_copies(c, id)?;
        let fingerprint = mirror::offsite_fingerprint(c, id)?;
        let mirror = match mirrored.get(&id) {
            Some((done, _)) if *done == fingerprint => None,
            Some((_, at)) if at.elapsed() < MIRROR_EVERY => None,
            _ => Some(Mirror {
                key: mirror::offsite_key(server::system_identifier() as i64),
                text: mirror::offsite_text(c, id)?,
                fingerprint,
            }),
        };
        let storage = if pending.is_empty() && expired.is_empty() && mirror.is_none() {
            None
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
        });
    }
    Ok(work)
}

/// The oldest archived files the target does not hold yet (lost files are gaps, not work).
fn pending_files(
    c: &SpiClient<'_>,
    config_id: i32,
    roots: &[PathBuf],
) -> Result<Vec<Pending>, SpiError> {
    let t = c.select(
        "SELECT a.system_identifier, a.file_name, a.file_path, a.archived_at::text, a.checksum \
           FROM backup_management.wal_archive a \
          WHERE a.expired_at IS NULL AND a.lost_at IS NULL \
            AND NOT EXISTS (SELECT FROM backup_management.remote_wal_records r \
                             WHERE r.config_id = $1 AND r.system_identifier = a.system_identifier \
                               AND r.file_name = a.file_name) \
          ORDER BY a.archived_at, a.file_name LIMIT $2",
        None,
        &[config_id.into(), BATCH.into()],
    )?;
    let mut out = Vec::new();
    for r in t {
        let system_identifier = r.get::<i64>(1)?.unwrap_or_default();
        let file_name = r.get::<String>(2)?.unwrap_or_default();
        let file_path = r.get::<String>(3)?.unwrap_or_default();
        // The row's path is input: only a file exactly where the archive module puts it is read.
        let file = archive::locate(&file_path, &file_name, system_identifier, roots);
        out.push(Pending {
            system_identifier,
            file_name,
            file_path,
            archived_at: r.get::<String>(4)?.unwrap_or_default(),
            sha256: r.get::<String>(5)?.unwrap_or_default(),
            file,
        });
    }
    Ok(out)
}

/// Copies on the target whose archived file expired or left the catalog.  The key removed is the
/// one this cluster's naming gives the file, never a key read back from a row as it stands.
fn expired_copies(c: &SpiClient<'_>, config_id: i32) -> Result<Vec<Expired>, SpiError> {
    let t = c.select(
        "SELECT r.system_identifier, r.file_name, r.remote_key \
           FROM backup_management.remote_wal_records r \
          WHERE r.config_id = $1 \
            AND NOT EXISTS (SELECT FROM backup_management.wal_archive a \
                             WHERE a.system_identifier = r.system_identifier \
                               AND a.file_name = r.file_name AND a.expired_at IS NULL) \
          LIMIT $2",
        None,
        &[config_id.into(), BATCH.into()],
    )?;
    let mut out = Vec::new();
    for r in t {
        let system_identifier = r.get::<i64>(1)?.unwrap_or_default();
        let file_name = r.get::<String>(2)?.unwrap_or_default();
        let recorded = r.get::<String>(3)?.unwrap_or_default();
        let key = [
            storage::wal_key(system_identifier, &file_name),
            storage::wal_key(system_identifier, &format!("{file_name}.zst")),
        ]
        .into_iter()
        .find(|k| *k == recorded);
        if let Some(key) = key {
            out.push(Expired {
                system_identifier,
                file_name,
                key,
            });
        }
    }
    Ok(out)
}

/// The copy thread of one batch: the target prepared, the files copied `parallel` at a time
/// (no new one started after a failure: the target is likely down), expired copies removed.
fn ship(
    target: &dyn Storage,
    pending: Vec<Pending>,
    expired: Vec<Expired>,
    mirror: Option<Mirror>,
    parallel: usize,
) -> Batch {
    let shipped = Mutex::new(Vec::with_capacity(pending.len()));
    let push = |p: &Pending, key: String, result: Result<Copied, ShipError>| {
        let failed = result.is_err();
        shipped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Shipped {
                system_identifier: p.system_identifier,
                file_name: p.file_name.clone(),
                archived_at: p.archived_at.clone(),
                key,
                result,
            });
        if failed {
            Err(())
        } else {
            Ok(())
        }
    };
    let ready = target.prepare();
    match &ready {
        Err(why) => {
            if let Some(p) = pending.first() {
                let _ = push(p, String::new(), Err(ShipError::NotReady(why.to_string())));
            }
        }
        Ok(()) => {
            let cancel = AtomicBool::new(false);
            threads::in_parallel(&pending, parallel.min(pending.len()), 0, &cancel, |p, _| {
                let (key, result) = copy_one(target, p);
                push(p, key, result)
            });
        }
    }
    let removed = expired
        .into_iter()
        .map(|e| {
            let gone = target.delete(&e.key);
            (e, gone)
        })
        .collect();
    let mirror = mirror.map(|m| {
        let landed = match &ready {
            Ok(()) => target.replace(m.text.as_bytes(), &m.key),
            Err(why) => Err(StorageError::Config(why.to_string())),
        };
        (m.fingerprint, landed)
    });
    Batch {
        shipped: shipped.into_inner().unwrap_or_else(|e| e.into_inner()),
        removed,
        mirror,
    }
}

/// Copies one archived file, opened beneath its root, and checks what landed against the sha256
/// recorded when it was archived.
fn copy_one(target: &dyn Storage, p: &Pending) -> (String, Result<Copied, ShipError>) {
    let Some(file) = &p.file else {
        return (
            String::new(),
            Err(ShipError::NotInArchive(p.file_path.clone())),
        );
    };
    let key = storage::wal_key(p.system_identifier, &file.stored);
    let opened: Result<File, ShipError> = archive::open_archived(file).map_err(|found| {
        ShipError::Unreadable(found.lost_reason(0).unwrap_or_else(|| format!("{found:?}")))
    });
    let result = opened.and_then(|f| {
        let shown = file.root.join(&file.dir).join(&file.stored);
        let landed = target.put_opened(f, &shown, &key)?;
        if landed.sha256 != p.sha256 {
            // What we put there is not the archived file: it must not stand as its copy.
            let _ = target.delete(&key);
            return Err(ShipError::Changed {
                recorded: p.sha256.clone(),
                read: landed.sha256,
            });
        }
        Ok(landed)
    });
    (key, result)
}

/// Records a batch; returns whether any copy failed.
fn record(config_id: i32, name: &str, batch: &Batch) -> bool {
    let failure = batch
        .shipped
        .iter()
        .find_map(|s| {
            s.result
                .as_ref()
                .err()
                .map(|e| (format!("WAL file {}", s.file_name), e.to_string()))
        })
        .or_else(|| match &batch.mirror {
            Some((_, Err(e))) => Some(("the catalog mirror".to_owned(), e.to_string())),
            _ => None,
        });
    let newest = batch
        .shipped
        .iter()
        .filter(|s| s.result.is_ok())
        .max_by(|a, b| (&a.archived_at, &a.file_name).cmp(&(&b.archived_at, &b.file_name)));
    let name = escape_for_log(name);
    let what = format!("recording WAL copied to \"{name}\"");
    in_transaction(&what, || {
        Spi::connect_mut(|c| {
            for s in &batch.shipped {
                let Ok(copied) = &s.result else { continue };
                c.update(
                    "INSERT INTO backup_management.remote_wal_records \
                         (config_id, system_identifier, file_name, remote_key, file_size, \
                          remote_checksum, archived_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7::timestamptz) \
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
                    ],
                )?;
            }
            for (e, result) in &batch.removed {
                match result {
                    Ok(()) => {
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
                    Err(why) => warning!(
                        "backup_mgmt: could not remove the expired WAL copy \"{}\" from \"{name}\": {}",
                        e.key,
                        escape_for_log(&why.to_string())
                    ),
                }
            }
            if let Some(n) = newest {
                c.update(
                    "INSERT INTO backup_management.remote_wal_state \
                         (config_id, last_copied_file, last_copied_at, failures) \
                     VALUES ($1, $2, now(), 0) \
                     ON CONFLICT (config_id) DO UPDATE \
                        SET last_copied_file = excluded.last_copied_file, \
                            last_copied_at = excluded.last_copied_at, failures = 0",
                    None,
                    &[config_id.into(), n.file_name.as_str().into()],
                )?;
            }
            if let Some((_, Ok(()))) = &batch.mirror {
                c.update(
                    "INSERT INTO backup_management.remote_wal_state (config_id, catalog_copied_at) \
                     VALUES ($1, now()) \
                     ON CONFLICT (config_id) DO UPDATE SET catalog_copied_at = now()",
                    None,
                    &[config_id.into()],
                )?;
            }
            if let Some((_, why)) = &failure {
                note_failure(c, config_id, why)?;
            }
            Ok::<(), SpiError>(())
        })
    });
    if let Some((file, why)) = &failure {
        log!(
            "backup_mgmt: copying {file} to off-site target \"{name}\" failed (retried with backoff): {}",
            escape_for_log(why)
        );
    }
    failure.is_some()
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
        Spi::connect_mut(|c| note_failure(c, config_id, &text))
    });
    warning!(
        "backup_mgmt: off-site target \"{name}\": WAL not copied: {}",
        escape_for_log(&text)
    );
}

/// Raises or clears a target's lag alarm (a WARNING or LOG line and a NOTIFY, sent at commit).
fn check_alarm(c: &mut SpiClient<'_>, config_id: i32, name: &str) -> Result<(), SpiError> {
    let t = c.select(
        "SELECT lag_seconds, pending_segments, alarm_since IS NOT NULL \
           FROM backup_mgmt.offsite_wal_status WHERE config_id = $1",
        None,
        &[config_id.into()],
    )?;
    let Some(r) = t.into_iter().next() else {
        return Ok(());
    };
    let lag = r.get::<f64>(1)?.unwrap_or_default();
    let pending = r.get::<i64>(2)?.unwrap_or_default();
    let raised = r.get::<bool>(3)?.unwrap_or(false);
    let over = guc::offsite_wal_lag_alarm().is_some_and(|limit| lag > limit.as_secs_f64());
    let name = escape_for_log(name);
    if over && !raised {
        c.update(
            "INSERT INTO backup_management.remote_wal_state (config_id, alarm_since) \
             VALUES ($1, now()) ON CONFLICT (config_id) DO UPDATE SET alarm_since = now()",
            None,
            &[config_id.into()],
        )?;
        warning!(
            "backup_mgmt: off-site target \"{name}\" is {lag:.0} s behind the WAL archive ({pending} files not copied yet)",
        );
        notify::notify(&Event::OffsiteWalLagging {
            config_id,
            lag_seconds: lag as i64,
            pending_segments: pending,
        });
    } else if !over && raised {
        c.update(
            "UPDATE backup_management.remote_wal_state SET alarm_since = NULL WHERE config_id = $1",
            None,
            &[config_id.into()],
        )?;
        log!("backup_mgmt: off-site target \"{name}\" caught up with the WAL archive ({pending} files pending, {lag:.0} s behind)");
        notify::notify(&Event::OffsiteWalCaughtUp { config_id });
    }
    Ok(())
}
