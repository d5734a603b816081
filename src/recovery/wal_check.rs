//! The worker's check of the WAL archive against the disk: the catalog is filled from the archive
//! manifests, so a file deleted, truncated or rewritten in the archive afterwards would otherwise
//! go unnoticed while `plan_recovery` hands out recipes that need it.
//!
//! - **Presence and size**, often: every `backup_mgmt.wal_check_interval` a pass walks every
//!   unexpired row (1,000 a second, one open and `fstat` each, beneath the root's handle).
//! - **sha256**, over time: one file every 10 s on a helper thread, never-checked first, then each
//!   once per `backup_mgmt.verify_interval`.
//!
//! A file found gone, of another size or with other bytes is recorded as lost (`lost_at`,
//! `lost_reason`, a warning and a `NOTIFY`); the ranges' trigger then takes it out of
//! `wal_ranges`, so it is missing for `wal_gaps`, `plan_recovery`, `recovery_status` and
//! `metrics()`.  A lost file that is back with its size is read again at once, and counts again
//! when its sha256 matches.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use backup_mgmt_core::threads::{Helper, Throttle};
use backup_mgmt_core::verify::archive::{self, ArchivedFile, Found};
use pgrx::prelude::*;
use pgrx::spi::SpiError;

use crate::pg::log::escape_for_log;
use crate::pg::notify::{self, Event};
use crate::pg::spi::in_transaction;
use crate::pg::{guc, server};

/// Rows per presence batch, one batch a second at most.
const BATCH: i64 = 1000;
const BATCH_EVERY: Duration = Duration::from_secs(1);
/// How often the next file is read through sha256.
const HASH_EVERY: Duration = Duration::from_secs(10);

/// One archived file as the catalog records it.
struct Row {
    system_identifier: i64,
    file_name: String,
    file_path: String,
    size: u64,
    sha256: String,
    /// `lost_at` as text when the row was read (NULL: intact).
    lost_at: Option<String>,
    /// Whether it was lost for its bytes (a same-size file is only judged again by a read).
    lost_by_digest: bool,
}

/// What was found for a row.
struct Finding {
    system_identifier: i64,
    file_name: String,
    found: Found,
    size: u64,
    /// Whether the sha256 was compared (the content check) or only the size.
    read: bool,
    /// `lost_at` as text when the check started: a read that finds the file intact clears a
    /// loss only if no other check recorded one meanwhile.
    was_lost: Option<String>,
    lost_by_digest: bool,
}

#[derive(Default)]
pub struct WalCheck {
    /// Where the running presence pass is (the last row checked); None between passes.
    cursor: Option<(i64, String)>,
    pass: Throttle,
    batch: Throttle,
    hash: Throttle,
    in_flight: Option<Helper<Option<Finding>>>,
    /// Lost files found back with their size wait for a read: read them without the pause.
    recheck: bool,
}

impl WalCheck {
    pub fn tick(&mut self) {
        let interval = guc::wal_check_interval_seconds();
        if let Some(h) = self.in_flight.take_if(|h| h.is_finished()) {
            match h.join() {
                Some(Some(finding)) => {
                    record(&[finding]);
                }
                // A read that panicked records nothing: no hurry for the next one.
                _ => self.recheck = false,
            }
        }
        if interval == 0 {
            self.cursor = None;
            return;
        }
        let Ok(roots) = guc::backup_roots() else {
            return;
        };
        self.presence(interval, &roots);
        if self.in_flight.is_none() && (self.recheck || self.hash.ready(HASH_EVERY)) {
            self.start_content_check(roots);
        }
    }

    pub fn abandon(&mut self) {
        self.in_flight = None;
    }

    fn presence(&mut self, interval: u64, roots: &[PathBuf]) {
        if self.cursor.is_none() {
            if !self.pass.ready(Duration::from_secs(interval)) {
                return;
            }
            self.cursor = Some((i64::MIN, String::new()));
        }
        if !self.batch.ready(BATCH_EVERY) {
            return;
        }
        let Some((sysid, name)) = self.cursor.clone() else {
            return;
        };
        let rows = load(
            "SELECT system_identifier, file_name, file_path, file_size, checksum, lost_at::text, \
                    lost_reason \
               FROM backup_management.wal_archive \
              WHERE expired_at IS NULL AND (system_identifier, file_name) > ($1, $2) \
              ORDER BY system_identifier, file_name LIMIT $3",
            &[sysid.into(), name.as_str().into(), BATCH.into()],
        );
        let Some(rows) = rows else {
            return;
        };
        self.cursor = match rows.last() {
            Some(r) if rows.len() as i64 == BATCH => {
                Some((r.system_identifier, r.file_name.clone()))
            }
            _ => None,
        };
        let mut dirs: HashMap<(PathBuf, PathBuf), std::io::Result<File>> = HashMap::new();
        let findings: Vec<Finding> = rows
            .into_iter()
            .map(|row| {
                let found = match archive::locate(
                    &row.file_path,
                    &row.file_name,
                    row.system_identifier,
                    roots,
                ) {
                    None => Found::NotInArchive,
                    Some(file) => {
                        let dir = dirs
                            .entry((file.root.clone(), file.dir.clone()))
                            .or_insert_with(|| archive::open_dir(&file));
                        match dir {
                            Ok(d) => archive::check_size(d, &file.stored, row.size),
                            Err(e) => dir_error(e),
                        }
                    }
                };
                Finding {
                    system_identifier: row.system_identifier,
                    file_name: row.file_name,
                    found,
                    size: row.size,
                    read: false,
                    was_lost: row.lost_at,
                    lost_by_digest: row.lost_by_digest,
                }
            })
            .collect();
        if record(&findings) {
            self.recheck = true;
        }
    }

    /// Starts the next read: first a lost file found back with its size (whatever
    /// `verify_interval`, history files included), then the file read longest ago.
    fn start_content_check(&mut self, roots: Vec<PathBuf>) {
        let mut row = load(
            "SELECT system_identifier, file_name, file_path, file_size, checksum, lost_at::text, \
                    lost_reason \
               FROM backup_management.wal_archive \
              WHERE lost_at IS NOT NULL AND expired_at IS NULL AND checked_at IS NULL \
              ORDER BY system_identifier, lost_at LIMIT 1",
            &[],
        )
        .and_then(|mut r| r.pop());
        if row.is_none() {
            self.recheck = false;
            let interval = guc::verify_interval_seconds();
            if interval > 0 {
                row = load(
                    "SELECT system_identifier, file_name, file_path, file_size, checksum, lost_at::text, \
                            lost_reason \
                       FROM backup_management.wal_archive \
                      WHERE expired_at IS NULL AND segment_number IS NOT NULL \
                        AND (checked_at IS NULL OR checked_at < now() - make_interval(secs => $1)) \
                      ORDER BY checked_at NULLS FIRST LIMIT 1",
                    &[(interval as f64).into()],
                )
                .and_then(|mut r| r.pop());
            }
        }
        let Some(row) = row else {
            return;
        };
        self.in_flight = Some(Helper::spawn(
            move || {
                let found = match archive::locate(
                    &row.file_path,
                    &row.file_name,
                    row.system_identifier,
                    &roots,
                ) {
                    None => Found::NotInArchive,
                    Some(file) => content(&file, row.size, &row.sha256),
                };
                Some(Finding {
                    system_identifier: row.system_identifier,
                    file_name: row.file_name,
                    found,
                    size: row.size,
                    read: true,
                    was_lost: row.lost_at,
                    lost_by_digest: row.lost_by_digest,
                })
            },
            server::wake_worker,
        ));
    }
}

fn content(file: &ArchivedFile, size: u64, sha256: &str) -> Found {
    let (cancel, progress) = (AtomicBool::new(false), AtomicU64::new(0));
    match archive::open_dir(file) {
        Ok(dir) => archive::check_content(&dir, &file.stored, size, sha256, &cancel, &progress),
        Err(e) => dir_error(&e),
    }
}

/// An archive directory that cannot be opened says its files are missing only when it is not
/// there; anything else (permissions, I/O, a symlink in its place, a root not mounted yet: the
/// root itself then fails) says nothing about the files.
fn dir_error(e: &std::io::Error) -> Found {
    if e.kind() == std::io::ErrorKind::NotFound {
        Found::Missing
    } else {
        Found::Unreadable(format!("its archive directory cannot be opened: {e}"))
    }
}

fn load(sql: &str, args: &[pgrx::datum::DatumWithOid]) -> Option<Vec<Row>> {
    in_transaction("reading the WAL archive's catalog", || {
        Spi::connect(|c| {
            let mut out = Vec::new();
            for r in c.select(sql, None, args)? {
                out.push(Row {
                    system_identifier: r.get(1)?.unwrap_or_default(),
                    file_name: r.get(2)?.unwrap_or_default(),
                    file_path: r.get(3)?.unwrap_or_default(),
                    size: r.get::<i64>(4)?.unwrap_or_default().max(0) as u64,
                    sha256: r.get(5)?.unwrap_or_default(),
                    lost_at: r.get(6)?,
                    lost_by_digest: r
                        .get::<String>(7)?
                        .is_some_and(|why| why.starts_with(archive::DIGEST_REASON)),
                });
            }
            Ok::<_, SpiError>(out)
        })
    })
}

/// Records what the checks found: newly lost files (logged, notified), lost files found back
/// (read again next), content checks (their time).  Unchanged intact files cost nothing.
/// Returns whether a lost file was found back (to be read next).
fn record(findings: &[Finding]) -> bool {
    let mut newly_lost = Vec::new();
    let mut back = false;
    in_transaction("recording what the WAL archive check found", || {
        Spi::connect_mut(|c| {
            for f in findings {
                let key = [f.system_identifier.into(), f.file_name.as_str().into()];
                match (&f.found, f.found.lost_reason(f.size)) {
                    // The check could not tell (permissions, I/O): nothing is concluded.
                    (Found::Unreadable(why), _) => {
                        pgrx::warning!(
                            "backup_mgmt: could not check archived WAL file {} of cluster {}: {}",
                            f.file_name,
                            f.system_identifier,
                            escape_for_log(why)
                        );
                        if f.read {
                            c.update(
                                "UPDATE backup_management.wal_archive SET checked_at = now() \
                                  WHERE system_identifier = $1 AND file_name = $2",
                                None,
                                &key,
                            )?;
                        }
                    }
                    (_, Some(reason)) => {
                        let t = c.update(
                            "UPDATE backup_management.wal_archive \
                                SET lost_reason = $3, checked_at = CASE WHEN $4 THEN now() ELSE checked_at END, \
                                    lost_at = coalesce(lost_at, now()) \
                              WHERE system_identifier = $1 AND file_name = $2 AND expired_at IS NULL \
                                AND (lost_at IS NULL OR lost_reason IS DISTINCT FROM $3 OR $4) \
                             RETURNING 1",
                            None,
                            &[
                                f.system_identifier.into(),
                                f.file_name.as_str().into(),
                                reason.as_str().into(),
                                f.read.into(),
                            ],
                        )?;
                        if !t.is_empty() && f.was_lost.is_none() {
                            newly_lost.push((f.system_identifier, f.file_name.clone(), reason));
                        }
                    }
                    // Intact as read; a loss another check recorded while this one read (the
                    // open file outlives a deletion) stands.
                    (_, None) if f.read => {
                        c.update(
                            "UPDATE backup_management.wal_archive \
                                SET checked_at = now(), lost_at = NULL, lost_reason = NULL \
                              WHERE system_identifier = $1 AND file_name = $2 \
                                AND lost_at::text IS NOT DISTINCT FROM $3",
                            None,
                            &[
                                f.system_identifier.into(),
                                f.file_name.as_str().into(),
                                f.was_lost.clone().into(),
                            ],
                        )?;
                    }
                    // Back with its size: its bytes are read next, and it counts again only when
                    // they match.  One lost for its bytes keeps its size: only the regular reads
                    // judge it again (not every pass).
                    (_, None) if f.was_lost.is_some() && !f.lost_by_digest => {
                        back = true;
                        c.update(
                            "UPDATE backup_management.wal_archive SET checked_at = NULL \
                              WHERE system_identifier = $1 AND file_name = $2 AND lost_at IS NOT NULL",
                            None,
                            &key,
                        )?;
                    }
                    (_, None) => {}
                }
            }
            for (sysid, name, _) in &newly_lost {
                notify::notify(&Event::WalLost {
                    system_identifier: *sysid,
                    file_name: name.clone(),
                });
            }
            Ok::<(), SpiError>(())
        })
    });
    for (sysid, name, reason) in newly_lost {
        pgrx::warning!(
            "backup_mgmt: archived WAL file {name} of cluster {sysid} is lost: {reason}; a recovery that needs it cannot be made from this archive"
        );
    }
    back
}
