//! The worker's off-site copies: runs each active target's `sync_schedule` (cron, UTC), copies
//! the database's completed backups that the target does not hold yet (to a filesystem target or
//! S3-compatible object storage, `backup_mgmt_core::storage`), verifies every copy after it landed,
//! retries with backoff, records every attempt in `remote_backup_records`, and removes copies of
//! backups that retention expired.  One target at a time, on a helper thread, so the worker's
//! loop never waits for a copy, and no network call happens inside a transaction.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use backup_mgmt_core::backup::layout;
use backup_mgmt_core::cron::CronSchedule;
use backup_mgmt_core::paths::{self, PathError};
use backup_mgmt_core::storage::filesystem::FilesystemTarget;
use backup_mgmt_core::storage::{self, Copied, Storage, StorageError};
use backup_mgmt_core::storage::{azure, object, s3};
use backup_mgmt_core::stream::RateLimit;
use backup_mgmt_core::threads::{Helper, Throttle};
use chrono::{DateTime, Utc};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiError;

use self::backup_runs::{finish, record_run, Finished};
use crate::pg::log::escape_for_log;
use crate::pg::spi::in_transaction;
use crate::pg::time::from_timestamptz;
use crate::pg::{guc, server};

mod backup_runs;
pub mod limits;
mod target_hold;
pub mod wal;
mod wal_alarm;
mod wal_copy;
mod wal_queue;

#[derive(Debug, thiserror::Error)]
pub enum OffsiteError {
    #[error("config_name must not be NULL")]
    Null,
    #[error("off-site target \"{0}\" does not exist or is not active")]
    UnknownTarget(String),
    #[error("an s3 target needs credentials_ref")]
    NoCredentials,
    #[error("remote_type {0} is not supported yet")]
    Unsupported(String),
    #[error("option {0} must be {2}, not {1}")]
    BadOption(&'static str, String, &'static str),
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    Refused(#[from] limits::TargetRefused),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("catalog access failed: {0}")]
    Spi(#[from] SpiError),
}

/// How often due targets are looked for.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Attempts per copy, and the pause before each retry (doubling).
const ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Copies per sync run (the rest waits for the next run).
const BATCH: i64 = 50;

/// One copy to make.
struct Item {
    backup_id: i64,
    local: PathBuf,
    key: String,
    /// The checksum the catalog holds for the local backup.
    expected: Option<String>,
    /// A logical backup's globals file (part of the backup): where it is, its key on the
    /// target, its recorded checksum.
    globals: Option<(PathBuf, String, Option<String>)>,
    /// Why the record's files may not be read (a path that no longer resolves inside the
    /// roots, or into what backup_mgmt keeps for itself): recorded as the failed attempt.
    refused: Option<String>,
}

/// Why a copy attempt failed (recorded as its error_message).
#[derive(Debug, thiserror::Error)]
enum CopyError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The target could not be prepared (its bucket created): every copy of the run fails so.
    #[error("the target is not ready: {0}")]
    NotReady(String),
    #[error("not copied: {0}")]
    Refused(String),
    #[error(
        "\"{path}\" no longer matches its recorded sha256 {recorded} (read {read}); not copied"
    )]
    Changed {
        path: PathBuf,
        recorded: String,
        read: String,
    },
}

/// Copies one file of a backup and checks that what landed is what the catalog recorded.
fn copy_checked(
    target: &dyn Storage,
    local: &std::path::Path,
    key: &str,
    expected: Option<&str>,
) -> Result<Copied, CopyError> {
    let landed = match storage::put_backup_expecting(target, local, key, expected) {
        // A member of a directory that landed other than its manifest records: what landed is
        // not the backup, and left there it would block the next try (copies are never
        // replaced).  (An existing copy's member is never replaced by a different one: that is
        // `Occupied`, and nothing is removed; a directory whose files are not its manifest's is
        // `Manifest`, refused before anything is copied, as is a directory whose manifest is
        // not the catalog's.)
        Err(e @ StorageError::Member { .. }) => {
            let _ = target.delete(key);
            return Err(e.into());
        }
        other => other?,
    };
    match expected {
        Some(sha) if sha != landed.sha256 => {
            // What landed is not the backup the catalog recorded: it must not stand as its copy
            // (and, since copies are never replaced, would block the next try).
            let _ = target.delete(key);
            Err(CopyError::Changed {
                path: local.to_owned(),
                recorded: sha.to_owned(),
                read: landed.sha256,
            })
        }
        _ => Ok(landed),
    }
}

/// One attempt, as recorded.
struct Attempt {
    backup_id: i64,
    key: String,
    attempt: i32,
    started: DateTime<Utc>,
    ended: DateTime<Utc>,
    result: Result<Copied, CopyError>,
}

struct Expiry {
    record_id: i64,
    key: String,
    /// The key of the backup's globals file, copied with it.
    globals_key: Option<String>,
}

/// What a sync run did: every copy attempt, and each expired copy's removal (by record).
type RunResult = (Vec<Attempt>, Vec<(i64, Result<(), StorageError>)>);

struct InFlight {
    config_id: i32,
    name: String,
    /// Where the run copies to (`TargetSpec::PLACE`), to record it only if it still does.
    place: String,
    helper: Helper<RunResult>,
}

#[derive(Default)]
pub struct Offsite {
    in_flight: Option<InFlight>,
    /// Finished runs whose target an open transaction held when they were to be recorded:
    /// recorded at a later tick; no new run for those targets starts meanwhile, the others'
    /// do.
    unrecorded: Vec<Finished>,
    last_check: Throttle,
}

/// Copies `item` to `target` and checks it where it landed; up to `ATTEMPTS` tries with
/// doubling pauses when the target failed, one when the failure is the backup's own.
fn copy_one(target: &dyn Storage, item: &Item, stop: &AtomicBool) -> Vec<Attempt> {
    let mut attempts = Vec::new();
    let mut pause = FIRST_BACKOFF;
    for n in 1..=ATTEMPTS {
        let started = Utc::now();
        if let Some(why) = &item.refused {
            attempts.push(Attempt {
                backup_id: item.backup_id,
                key: item.key.clone(),
                attempt: n as i32,
                started,
                ended: Utc::now(),
                result: Err(CopyError::Refused(why.clone())),
            });
            break;
        }
        // The backup, then its globals file: a copy is whole only with both.
        let result = copy_checked(target, &item.local, &item.key, item.expected.as_deref())
            .and_then(|landed| match &item.globals {
                None => Ok(landed),
                Some((local, key, expected)) => {
                    copy_checked(target, local, key, expected.as_deref()).map(|_| landed)
                }
            });
        let failed = result.is_err();
        // What does not heal by waiting is not retried: a local backup that no longer matches
        // its checksum, a directory whose files are not what its manifest records or that has
        // no manifest, a different object (or a directory) already under the key (copies are
        // never replaced).  The next sync run tries
        // again; the target's own failures (down, refusing) are retried with backoff.
        let lasting = matches!(
            &result,
            Err(CopyError::Changed { .. }
                | CopyError::Storage(
                    StorageError::Member { .. }
                        | StorageError::Manifest { .. }
                        | StorageError::Occupied { .. }
                        | StorageError::NotAFile(_)
                ))
        );
        attempts.push(Attempt {
            backup_id: item.backup_id,
            key: item.key.clone(),
            attempt: n as i32,
            started,
            ended: Utc::now(),
            result,
        });
        if !failed || lasting || stop.load(Ordering::SeqCst) {
            break;
        }
        if n < ATTEMPTS {
            std::thread::sleep(pause);
            pause *= 2;
        }
    }
    attempts
}

impl Offsite {
    pub fn tick(&mut self) {
        if let Some(job) = self.in_flight.take_if(|j| j.helper.is_finished()) {
            self.unrecorded.extend(finish(job));
        }
        if self.in_flight.is_some() || !self.last_check.ready(CHECK_EVERY) {
            return;
        }
        self.unrecorded.retain(|run| !record_run(run));
        let waiting: Vec<i32> = self.unrecorded.iter().map(|r| r.config_id).collect();
        let Some((config_id, name, place, target, items, expiries)) = next_due(&waiting) else {
            return;
        };
        let helper = Helper::spawn(
            move || {
                let target: &dyn Storage = target.as_ref();
                let stop = AtomicBool::new(false);
                let mut attempts = Vec::new();
                // Network work happens here, never in the worker's loop or transaction.
                let ready = target.prepare().map_err(|e| e.to_string());
                for item in &items {
                    match &ready {
                        Ok(()) => attempts.extend(copy_one(target, item, &stop)),
                        Err(why) => attempts.push(Attempt {
                            backup_id: item.backup_id,
                            key: item.key.clone(),
                            attempt: 1,
                            started: Utc::now(),
                            ended: Utc::now(),
                            result: Err(CopyError::NotReady(why.clone())),
                        }),
                    }
                }
                let removed = expiries
                    .iter()
                    .map(|e| {
                        let gone = e
                            .globals_key
                            .iter()
                            .try_for_each(|g| target.delete(g))
                            .and_then(|()| target.delete(&e.key));
                        (e.record_id, gone)
                    })
                    .collect();
                (attempts, removed)
            },
            server::wake_worker,
        );
        self.in_flight = Some(InFlight {
            config_id,
            name,
            place,
            helper,
        });
    }

    /// At shutdown: a copy in flight is left to the next start (on a filesystem target its
    /// uniquely named temporary file stays behind, hidden and never read as a copy).
    pub fn abandon(&mut self) {
        self.in_flight = None;
    }
}

type Due = (
    i32,
    String,
    String,
    Box<dyn Storage>,
    Vec<Item>,
    Vec<Expiry>,
);

/// The first active target whose schedule is due (or that `sync_remote_now` asked for), marked
/// `syncing`, with its work.
fn next_due(waiting: &[i32]) -> Option<Due> {
    in_transaction("looking for due off-site copies", || {
        Spi::connect_mut(|c| {
            let configs = c.select(
                "SELECT config_id, sync_schedule, coalesce(last_sync_at, created_at), \
                        sync_status = 'requested' \
                   FROM backup_management.remote_backup_configs \
                  WHERE is_active AND (sync_schedule IS NOT NULL OR sync_status = 'requested') \
                    AND config_id <> ALL ($1) \
                  ORDER BY config_id",
                None,
                &[waiting.to_vec().into()],
            )?;
            let now = Utc::now();
            let mut due = Vec::new();
            for r in configs {
                let id: i32 = r.get(1)?.unwrap_or_default();
                let cron: Option<String> = r.get(2)?;
                let since: Option<TimestampWithTimeZone> = r.get(3)?;
                let requested: bool = r.get(4)?.unwrap_or(false);
                let scheduled = cron
                    .as_deref()
                    .and_then(|c| c.parse::<CronSchedule>().ok())
                    .zip(since)
                    .and_then(|(s, since)| {
                        s.next_after(chrono_tz::Tz::UTC, from_timestamptz(since), 1)
                            .first()
                            .copied()
                    })
                    .is_some_and(|next| next <= now);
                if requested || scheduled {
                    due.push(id);
                }
            }
            // The first due target no open transaction is changing or deleting (locked for the
            // status written below, which would otherwise wait on it, and the worker with it);
            // locked only when due, so an idle cluster writes no WAL.  Its spec and place are
            // read under the lock: a change committed since the first read is the one copied
            // to, and the place `record_run` compares with.
            let mut chosen = None;
            for id in due {
                let locked = c.update(
                    &format!(
                        "SELECT {}, {} AS place, database_name \
                           FROM backup_management.remote_backup_configs \
                          WHERE config_id = $1 AND is_active FOR NO KEY UPDATE SKIP LOCKED",
                        TargetSpec::COLUMNS,
                        TargetSpec::PLACE
                    ),
                    None,
                    &[id.into()],
                )?;
                if let Some(r) = locked.into_iter().next() {
                    let (name, spec) = TargetSpec::from_row(&r)?;
                    let place: String = r.get_by_name("place")?.unwrap_or_default();
                    let database: String = r.get_by_name("database_name")?.unwrap_or_default();
                    chosen = Some((name, spec, place, database));
                    break;
                }
            }
            let Some((name, spec, place, database)) = chosen else {
                return Ok(None);
            };
            let id = spec.config_id;
            let target = match spec.open() {
                Ok(t) => t,
                Err(why) => {
                    c.update(
                        "UPDATE backup_management.remote_backup_configs \
                            SET sync_status = 'failed', last_sync_at = now() WHERE config_id = $1",
                        None,
                        &[id.into()],
                    )?;
                    warning!(
                        "backup_mgmt: off-site target \"{}\": {}",
                        escape_for_log(&name),
                        escape_for_log(&why.to_string())
                    );
                    return Ok(None);
                }
            };
            c.update(
                "UPDATE backup_management.remote_backup_configs SET sync_status = 'syncing' WHERE config_id = $1",
                None,
                &[id.into()],
            )?;
            let rows = c.select(
                "SELECT r.backup_id, r.backup_file_path, r.checksum, \
                        coalesce(r.system_identifier, (SELECT system_identifier FROM pg_control_system())), \
                        r.globals_file_path, r.globals_checksum \
                   FROM backup_management.backup_records r \
                  WHERE r.expired_at IS NULL AND r.status = 'completed' AND r.database_name = $2 \
                    AND r.backup_type <> 'wal' \
                    AND NOT EXISTS (SELECT FROM backup_management.remote_backup_records x \
                                     WHERE x.backup_id = r.backup_id AND x.config_id = $1 \
                                       AND x.sync_status = 'completed') \
                  ORDER BY r.backup_id LIMIT $3",
                None,
                &[id.into(), database.as_str().into(), BATCH.into()],
            )?;
            let mut items = Vec::new();
            let roots = guc::backup_roots().unwrap_or_default();
            for r in rows {
                let local: String = r.get(2)?.unwrap_or_default();
                let sysid: i64 = r.get(4)?.unwrap_or_default();
                let globals = r.get::<String>(5)?.map(|g| {
                    let key = storage::object_key(sysid, &database, std::path::Path::new(&g));
                    (PathBuf::from(g), key, r.get::<String>(6).ok().flatten())
                });
                // A record's paths are input: only what resolves strictly inside the roots, and
                // outside what backup_mgmt keeps there, is ever read and sent.
                let refused = std::iter::once(local.as_str())
                    .chain(globals.as_ref().and_then(|g| g.0.to_str()))
                    .find_map(|p| layout::confine_backup(p, &roots, false).err())
                    .map(|e| {
                        warning!("backup_mgmt: off-site target \"{name}\": {}", escape_for_log(&e.to_string()));
                        e.to_string()
                    });
                items.push(Item {
                    refused,
                    backup_id: r.get(1)?.unwrap_or_default(),
                    key: storage::object_key(sysid, &database, std::path::Path::new(&local)),
                    local: PathBuf::from(local),
                    expected: r.get(3)?,
                    globals,
                });
            }
            let rows = c.select(
                "SELECT x.record_id, x.remote_file_path, r.globals_file_path, \
                        coalesce(r.system_identifier, (SELECT system_identifier FROM pg_control_system())), \
                        r.database_name \
                   FROM backup_management.remote_backup_records x \
                   JOIN backup_management.backup_records r USING (backup_id) \
                  WHERE x.config_id = $1 AND x.sync_status = 'completed' AND r.status = 'expired'",
                None,
                &[id.into()],
            )?;
            let mut expiries = Vec::new();
            for r in rows {
                let sysid: i64 = r.get(4)?.unwrap_or_default();
                let db: String = r.get(5)?.unwrap_or_default();
                expiries.push(Expiry {
                    record_id: r.get(1)?.unwrap_or_default(),
                    key: r.get(2)?.unwrap_or_default(),
                    globals_key: r.get::<String>(3)?.map(|g| {
                        storage::object_key(sysid, &db, std::path::Path::new(&g))
                    }),
                });
            }
            Ok::<_, SpiError>(Some((id, name, place, target, items, expiries)))
        })
    })
    .flatten()
}

/// A target's row as read for use (`remote_backup_configs`, `options` as text).
pub(crate) struct TargetSpec {
    pub config_id: i32,
    pub kind: String,
    pub endpoint: String,
    pub path: String,
    pub credentials: Option<String>,
    pub options: String,
    pub key_ref: Option<String>,
    pub by_superuser: bool,
}

impl TargetSpec {
    /// The columns `from_row` reads, by name (a `SELECT` list over
    /// `backup_management.remote_backup_configs`, which may go on with other columns).
    pub(crate) const COLUMNS: &'static str =
        "config_id, config_name, remote_type, remote_endpoint, \
        remote_path, credentials_ref, options::text AS options, encryption_key_ref, \
        configured_by_superuser";

    /// Where a target's copies go, as one value (an expression over
    /// `backup_management.remote_backup_configs`): when it changes, the copies made so far are
    /// at the old place.  Stored in `remote_wal_state.target_identity`, so it must keep giving
    /// an unchanged target the same value (every target would look moved, and be copied again).
    pub(crate) const PLACE: &'static str =
        "pg_catalog.md5(remote_type || '|' || remote_endpoint || '|' || remote_path)";

    /// A target's name and spec from a row that has `COLUMNS`; read by name, so that what a
    /// query selects besides them (before or after) cannot shift them.
    pub(crate) fn from_row(
        r: &pgrx::spi::SpiHeapTupleData<'_>,
    ) -> Result<(String, TargetSpec), pgrx::spi::SpiError> {
        Ok((
            r.get_by_name::<String, _>("config_name")?
                .unwrap_or_default(),
            TargetSpec {
                config_id: r.get_by_name::<i32, _>("config_id")?.unwrap_or_default(),
                kind: r
                    .get_by_name::<String, _>("remote_type")?
                    .unwrap_or_default(),
                endpoint: r
                    .get_by_name::<String, _>("remote_endpoint")?
                    .unwrap_or_default(),
                path: r
                    .get_by_name::<String, _>("remote_path")?
                    .unwrap_or_default(),
                credentials: r.get_by_name::<String, _>("credentials_ref")?,
                options: r
                    .get_by_name::<String, _>("options")?
                    .unwrap_or_else(|| "{}".into()),
                key_ref: r.get_by_name::<String, _>("encryption_key_ref")?,
                by_superuser: r
                    .get_by_name::<bool, _>("configured_by_superuser")?
                    .unwrap_or(false),
            },
        ))
    }

    /// The storage the row names, its limits checked again at use: they may have been
    /// tightened since the row was written by a role that is not a superuser.
    pub(crate) fn open(&self) -> Result<Box<dyn Storage>, OffsiteError> {
        let options: serde_json::Value = serde_json::from_str(&self.options).unwrap_or_default();
        let row = limits::TargetRow {
            remote_type: &self.kind,
            endpoint: &self.endpoint,
            path: &self.path,
            credentials_ref: self.credentials.as_deref(),
            encryption_key_ref: self.key_ref.as_deref(),
            options: &options,
        };
        if !self.by_superuser {
            limits::check_unprivileged(&row)?;
        }
        target_of(&row, rate_of(self.config_id, &options)?)
    }
}

/// Each target's bandwidth limit, shared by every copy thread of the worker (the backup sync and
/// the WAL copies draw from one budget), replaced when the option changes.
static RATES: std::sync::Mutex<Vec<(i32, f64, Arc<RateLimit>)>> = std::sync::Mutex::new(Vec::new());

/// The limit `options.max_rate_mb` (MB/s) sets for target `config_id`, if any.
fn rate_of(
    config_id: i32,
    options: &serde_json::Value,
) -> Result<Option<Arc<RateLimit>>, OffsiteError> {
    let Some(value) = options.get("max_rate_mb") else {
        return Ok(None);
    };
    let mb = value
        .as_f64()
        .filter(|mb| *mb > 0.0 && mb.is_finite())
        .ok_or_else(|| {
            OffsiteError::BadOption("max_rate_mb", value.to_string(), "a positive number")
        })?;
    let mut rates = RATES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, limit)) = rates.iter().find(|(id, r, _)| *id == config_id && *r == mb) {
        return Ok(Some(Arc::clone(limit)));
    }
    let limit = Arc::new(RateLimit::new(mb * 1_048_576.0));
    rates.retain(|(id, _, _)| *id != config_id);
    rates.push((config_id, mb, Arc::clone(&limit)));
    Ok(Some(limit))
}

/// The target a configuration names.  A filesystem target must lie inside the backup roots,
/// outside what backup_mgmt keeps there; an object store's (S3, Azure) credentials are resolved
/// here, by reference (never logged).
fn target_of(
    row: &limits::TargetRow<'_>,
    rate: Option<Arc<RateLimit>>,
) -> Result<Box<dyn Storage>, OffsiteError> {
    let options = row.options;
    match row.remote_type {
        "filesystem" => {
            let text = row.directory().to_string_lossy().into_owned();
            let roots = guc::backup_roots()?;
            let dir = match layout::confine_backup(&text, &roots, true) {
                Ok((dir, _)) => dir,
                // A whole root (a second disk listed in backup_roots) is a fine target: its
                // keys start with the system identifier.
                Err(PathError::IsRoot(_)) => paths::confine(&text, &roots, true)?,
                Err(e) => return Err(e.into()),
            };
            Ok(Box::new(FilesystemTarget { dir, rate }))
        }
        "s3" | "azure" => {
            let credentials = row.credentials_ref.ok_or(OffsiteError::NoCredentials)?;
            let part_size = options
                .get("part_size_mb")
                .and_then(|v| v.as_u64())
                .map(|mb| (mb as usize) << 20);
            let ca_file = options
                .get("ca_file")
                .and_then(|v| v.as_str())
                .map(std::path::Path::new);
            let io_timeout = match options.get("io_timeout_s") {
                None => object::DEFAULT_IO_TIMEOUT,
                Some(v) => v.as_f64().and_then(object::io_timeout).ok_or_else(|| {
                    OffsiteError::BadOption(
                        "io_timeout_s",
                        v.to_string(),
                        "a number of seconds from 1 to 1800",
                    )
                })?,
            };
            let mut t = if row.remote_type == "s3" {
                let region = options
                    .get("region")
                    .and_then(|v| v.as_str())
                    .unwrap_or("us-east-1");
                s3::open(
                    row.endpoint,
                    row.path,
                    region,
                    credentials,
                    part_size,
                    ca_file,
                )?
            } else {
                azure::open(row.endpoint, row.path, credentials, part_size, ca_file)?
            };
            t.rate = rate;
            t.io_timeout = io_timeout;
            Ok(Box::new(t))
        }
        other => Err(OffsiteError::Unsupported(other.to_owned())),
    }
}

/// Asks the worker to copy to a target now, whatever its schedule.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn sync_remote_now(config_name: Option<&str>) -> Result<bool, ErrorReport> {
    let name = config_name.ok_or(OffsiteError::Null)?;
    let found = Spi::connect_mut(|c| {
        c.update(
            "UPDATE backup_management.remote_backup_configs SET sync_status = 'requested' \
              WHERE config_name = $1 AND is_active RETURNING config_id",
            None,
            &[name.into()],
        )
        .map(|t| !t.is_empty())
    })
    .map_err(OffsiteError::from)?;
    if !found {
        return Err(OffsiteError::UnknownTarget(name.to_owned()).into());
    }
    // The worker looks for due targets every few seconds.
    Ok(true)
}
