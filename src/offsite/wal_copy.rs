//! The copy thread of the off-site WAL copies (`offsite::wal` plans and records): one batch for
//! one target, with no catalog access: the archived files opened beneath their root's handle and
//! copied `parallel` at a time, each checked where it landed against the sha256 the archive module
//! recorded; expired copies removed; the catalog mirror replaced (format 2: its WAL list in
//! parts, only the changed ones uploaded).

use std::collections::BTreeSet;
use std::fs::File;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use backup_mgmt_core::restore::mirror_parts::{self, Check, Stored};
use backup_mgmt_core::storage::{self, Copied, Storage, StorageError};
use backup_mgmt_core::threads;
use backup_mgmt_core::verify::archive::{self, ArchivedFile};

/// Why a file could not be copied.
#[derive(Debug, thiserror::Error)]
pub(super) enum ShipError {
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

impl ShipError {
    /// Whether the failure is the file's (it is held back for `FILE_RETRY` while the others go
    /// on) rather than the target's (the whole target waits out a backoff): one file that fails
    /// every time must never stall a target's queue.
    pub(super) fn file_level(&self) -> bool {
        matches!(
            self,
            ShipError::NotInArchive(_)
                | ShipError::Unreadable(_)
                | ShipError::Changed { .. }
                | ShipError::Storage(
                    StorageError::Mismatch { .. }
                        | StorageError::Occupied { .. }
                        | StorageError::NotAFile(_)
                )
        )
    }
}

/// One archived file to copy.
pub(super) struct Pending {
    pub(super) system_identifier: i64,
    pub(super) file_name: String,
    pub(super) file_path: String,
    /// `archived_at` as text, handed back to the catalog as it was read.
    pub(super) archived_at: String,
    pub(super) sha256: String,
    /// Where it is (None: its recorded path is not the archive's, and it is never opened).
    pub(super) file: Option<ArchivedFile>,
}

/// A copy on the target whose archived file expired (or is gone from the catalog).
pub(super) struct Expired {
    pub(super) system_identifier: i64,
    pub(super) file_name: String,
    pub(super) key: String,
}

pub(super) struct Shipped {
    pub(super) system_identifier: i64,
    pub(super) file_name: String,
    pub(super) archived_at: String,
    pub(super) key: String,
    pub(super) result: Result<Copied, ShipError>,
}

/// The catalog mirror to put on a target: its fingerprint, key and text (every WAL file in
/// the one document, as the catalog query builds it; the copy thread splits it into parts).
pub(super) struct Mirror {
    pub(super) fingerprint: String,
    pub(super) key: String,
    pub(super) text: String,
    /// The name of the directory this target's WAL parts go to (`mirror_parts::parts_dir`).
    pub(super) writer: String,
    /// The parts of the documents replaced in the last minutes, which stay on the target
    /// (`mirror_parts::Written::keep`); None: none is removed.
    pub(super) keep: Option<BTreeSet<String>>,
    /// Whether the parts already there are read back (`Check::Content`) or only listed.
    pub(super) check: Check,
}

/// What became of a batch's mirror.
pub(super) struct MirrorOutcome {
    pub(super) fingerprint: String,
    pub(super) check: Check,
    /// The parts its document names and those put again, once it landed.
    pub(super) landed: Result<Stored, StorageError>,
}

/// What a batch did.
pub(super) struct Batch {
    pub(super) shipped: Vec<Shipped>,
    pub(super) removed: Vec<(Expired, Result<(), StorageError>)>,
    /// The mirror, when one was written.
    pub(super) mirror: Option<MirrorOutcome>,
    /// Why the target was not ready (nothing was tried), when it was not.
    pub(super) unready: Option<String>,
}

/// Removals that fail in one batch before the rest wait for the next: one object that cannot
/// be removed (a legal hold) does not stop the others, a bucket that refuses every delete is
/// not asked 128 times.
const REMOVAL_FAILURES: usize = 3;

/// The copy thread of one batch: the target prepared, the files copied `parallel` at a time
/// (no new one started after a failure of the target's: it is likely down), expired copies
/// removed, the catalog mirror replaced.
pub(super) fn ship(
    target: &dyn Storage,
    pending: Vec<Pending>,
    expired: Vec<Expired>,
    mirror: Option<Mirror>,
    parallel: usize,
) -> Batch {
    let shipped = Mutex::new(Vec::with_capacity(pending.len()));
    let push = |p: &Pending, key: String, result: Result<Copied, ShipError>| {
        // A failure of the target's stops the batch; a file's own lets the others go on.
        let failed = result.as_ref().is_err_and(|e| !e.file_level());
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
    // Removals wait for a target that answers (each one's retries would keep a down target's
    // batch busy long after it is back), and stop after a few failures.
    let target_failed = ready.is_err()
        || shipped
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|s| s.result.as_ref().is_err_and(|e| !e.file_level()));
    let mut removed = Vec::new();
    if !target_failed {
        let mut failed = 0;
        for e in expired {
            let gone = target.delete(&e.key);
            failed += usize::from(gone.is_err());
            removed.push((e, gone));
            if failed == REMOVAL_FAILURES {
                break;
            }
        }
    }
    let mirror = mirror.map(|m| {
        let landed = match &ready {
            Ok(()) => {
                mirror_parts::store(target, &m.key, &m.text, &m.writer, m.keep.as_ref(), m.check)
            }
            Err(why) => Err(StorageError::Config(why.to_string())),
        };
        MirrorOutcome {
            fingerprint: m.fingerprint,
            check: m.check,
            landed,
        }
    });
    Batch {
        shipped: shipped.into_inner().unwrap_or_else(|e| e.into_inner()),
        removed,
        mirror,
        unready: ready.err().map(|why| why.to_string()),
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
