//! The worker's side of a native physical backup (`backup_mgmt_core::backup::native` has the
//! copy engine).
//!
//! PostgreSQL's non-exclusive backup belongs to the session that starts it and lasts across its
//! transactions, so the worker's own session is the backup's session and no client connection
//! is needed:
//! 1. in the claim transaction the job's parent is chosen (incremental: the newest completed
//!    native backup of this cluster; differential: the newest full one; with none, a full backup
//!    is taken and the record says so);
//! 2. the worker creates a temporary physical replication slot (so the WAL from the backup's
//!    start cannot be recycled before it is copied; skipped with a LOG line when no slot is
//!    free) and calls `pg_backup_start`;
//! 3. a backup thread copies the data files (`native::copy_data`) while the loop goes on;
//! 4. the worker calls `pg_backup_stop(false)` (also when the copy failed: the session must not
//!    stay in backup mode), copies the WAL from start to stop out of `pg_wal`, writes
//!    backup_label and the manifests (`native::finish`), renames `<stem>.native.partial` into
//!    place and drops the slot.
//!
//! If the worker dies, PostgreSQL ends the backup with the session and drops the temporary slot;
//! the next start marks the run failed and removes the partial directory.  One native backup runs
//! at a time (a session has one backup).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use backup_mgmt_core::backup::native::{self, Copied, CopySpec, WalFile, WalSpan};
use backup_mgmt_core::backup::{self, BackupError, Outcome, RunHandle, Written};
use backup_mgmt_core::files::durable;
use backup_mgmt_core::progress::{Phase, Progress};
use backup_mgmt_core::verify::native::load_manifest;
use backup_mgmt_core::wal::{Lsn, WalRange};
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiError};
use serde_json::{json, Value};

use crate::catalog::queries::Parent;
use crate::pg::spi::in_transaction;
use crate::pg::{guc, server};

/// Starting and stopping a non-exclusive backup: PostgreSQL 15 renamed the functions (and
/// dropped the exclusive mode, which 13 and 14 take as an argument).
#[cfg(any(feature = "pg13", feature = "pg14"))]
const BACKUP_START: &str = "SELECT pg_catalog.pg_start_backup($1, $2, false)::text, \
     current_setting('data_directory'), current_setting('data_checksums')";
#[cfg(not(any(feature = "pg13", feature = "pg14")))]
const BACKUP_START: &str = "SELECT pg_catalog.pg_backup_start($1, $2)::text, \
     current_setting('data_directory'), current_setting('data_checksums')";
#[cfg(any(feature = "pg13", feature = "pg14"))]
const BACKUP_STOP: &str =
    "SELECT lsn::text, labelfile, spcmapfile FROM pg_catalog.pg_stop_backup(false, false)";
#[cfg(not(any(feature = "pg13", feature = "pg14")))]
const BACKUP_STOP: &str =
    "SELECT lsn::text, labelfile, spcmapfile FROM pg_catalog.pg_backup_stop(false)";

/// What the claim transaction decided.
#[derive(Debug, Clone)]
pub(crate) struct NativeStart {
    pub backup_id: i64,
    pub final_dir: PathBuf,
    pub parent: Option<Parent>,
    pub level: Option<i32>,
    pub threads: usize,
    pub fast: bool,
    pub label: String,
}

/// A native backup between pg_backup_start and pg_backup_stop.
pub(crate) struct Session {
    start: NativeStart,
    slot: Option<String>,
    data_dir: PathBuf,
    start_lsn: Lsn,
    copied: Arc<Mutex<Option<Copied>>>,
}

fn query_text(
    what: &str,
    sql: &str,
    args: Vec<pgrx::datum::DatumWithOid>,
) -> Option<Vec<Option<String>>> {
    in_transaction(what, || {
        Spi::connect_mut(|c| {
            let t = c.update(sql, None, &args)?;
            if t.is_empty() {
                return Ok::<_, SpiError>(Vec::new());
            }
            let row = t.first();
            let mut out = Vec::new();
            for i in 1..=row.columns()? {
                out.push(row.get::<String>(i)?);
            }
            Ok(out)
        })
    })
}

/// Starts the backup in this session and its copy on a backup thread.
pub(crate) fn begin(
    start: NativeStart,
    on_done: fn(),
) -> Result<(Session, RunHandle), BackupError> {
    let slot_name = format!("backup_mgmt_native_{}", server::pid());
    let slot = match query_text(
        "creating a temporary replication slot for a native backup",
        "SELECT slot_name::text FROM pg_catalog.pg_create_physical_replication_slot($1, true, true)",
        vec![slot_name.as_str().into()],
    ) {
        Some(_) => Some(slot_name),
        None => {
            log!("backup_mgmt: native backup {} runs without a replication slot; WAL it needs may be recycled before it is copied", start.backup_id);
            None
        }
    };
    let started = query_text(
        "starting a native backup",
        BACKUP_START,
        vec![start.label.as_str().into(), start.fast.into()],
    );
    let Some([Some(lsn), Some(data_dir), Some(checksums)]) = started
        .as_deref()
        .map(|v| <[Option<String>; 3]>::try_from(v.to_vec()).unwrap_or_default())
    else {
        drop_slot(slot.as_deref());
        return Err(BackupError::Native(
            "pg_backup_start failed (see the server log)".into(),
        ));
    };
    let start_lsn = Lsn::parse(&lsn).unwrap_or_default();
    fault_pause("native_start", guc::fault_pause_at("native_start"));
    let session = Session {
        start: start.clone(),
        slot,
        data_dir: PathBuf::from(data_dir),
        start_lsn,
        copied: Arc::default(),
    };
    let spec = CopySpec {
        data_dir: session.data_dir.clone(),
        out: durable::partial_path(&start.final_dir),
        backup_id: start.backup_id,
        parent: None,
        level: start.level,
        threads: start.threads,
        check_pages: checksums == "on",
        start_lsn,
    };
    let parent = start.parent.clone();
    let slot_out = Arc::clone(&session.copied);
    let pause = guc::fault_pause_at("native_copy");
    if pause {
        log!("backup_mgmt: fault injection: pausing at native_copy");
    }
    let handle = backup::start_work(
        move |progress| copy(spec, parent, progress, &slot_out, pause),
        on_done,
    );
    Ok((session, handle))
}

/// The backup thread: loads the parent's manifest (checked against its catalog sha256) and
/// copies the data files.
fn copy(
    mut spec: CopySpec,
    parent: Option<Parent>,
    progress: &Progress,
    out: &Mutex<Option<Copied>>,
    pause: bool,
) -> Result<Outcome, BackupError> {
    progress.set_phase(Phase::CopyingFiles);
    if pause {
        fault_hold();
    }
    if let Some(p) = parent {
        let dir = Path::new(&p.path);
        let m = load_manifest(dir, p.checksum.as_deref()).map_err(|r| {
            BackupError::Native(format!(
                "the parent backup {} cannot be built on: {}; take a full backup",
                p.id,
                r.detail.unwrap_or_default()
            ))
        })?;
        spec.parent = Some((m, p.started));
    }
    let copied = native::copy_data(&spec, &progress.counters())
        .map_err(|e| BackupError::Native(e.to_string()))?;
    let stored = copied.bytes_stored;
    *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(copied);
    progress.set_phase(Phase::StoppingBackup);
    Ok(Outcome::of(Written {
        path: spec.out,
        size: stored,
        sha256: String::new(),
    }))
}

/// The pause of `backup_mgmt.fault_pause_at` (a test kills the worker during it): logged, then
/// ten minutes.  Called on the worker's thread (a helper thread may neither read the setting nor
/// log: the copy thread is told by `copy`'s argument and logged for here, as it starts).
fn fault_pause(point: &str, armed: bool) {
    if armed {
        log!("backup_mgmt: fault injection: pausing at {point}");
        fault_hold();
    }
}

/// The ten-minute hold itself (what the copy thread does, without logging).
fn fault_hold() {
    std::thread::sleep(std::time::Duration::from_secs(600));
}

fn drop_slot(slot: Option<&str>) {
    if let Some(name) = slot {
        query_text(
            "dropping a native backup's replication slot",
            "SELECT pg_catalog.pg_drop_replication_slot($1)::text",
            vec![name.into()],
        );
    }
}

/// A `backup_label` line's value (`START WAL LOCATION: 0/2000028 (file …)` → `0/2000028`).
fn label_value<'a>(label: &'a str, key: &str) -> Option<&'a str> {
    label
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
}

/// Ends the backup (always), then completes the directory when the copy succeeded.
pub(crate) fn finish(
    session: Session,
    copied: Result<Outcome, BackupError>,
) -> Result<Outcome, BackupError> {
    let partial = durable::partial_path(&session.start.final_dir);
    let stopped = query_text("stopping a native backup", BACKUP_STOP, Vec::new());
    fault_pause("native_stop", guc::fault_pause_at("native_stop"));
    let result = (|| {
        copied?;
        let copied = session
            .copied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| BackupError::Native("the copy left no result".into()))?;
        let Some([Some(stop), Some(label), map]) = stopped
            .as_deref()
            .map(|v| <[Option<String>; 3]>::try_from(v.to_vec()).unwrap_or_default())
        else {
            return Err(BackupError::Native(
                "pg_backup_stop failed (see the server log)".into(),
            ));
        };
        complete(
            &session,
            copied,
            &stop,
            &label,
            map.as_deref().unwrap_or(""),
        )
    })();
    drop_slot(session.slot.as_deref());
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    result
}

fn complete(
    session: &Session,
    copied: Copied,
    stop: &str,
    label: &str,
    map: &str,
) -> Result<Outcome, BackupError> {
    let fail = BackupError::Native;
    let start = label_value(label, "START WAL LOCATION: ")
        .and_then(Lsn::parse)
        .unwrap_or(session.start_lsn);
    let timeline = label_value(label, "START TIMELINE: ")
        .and_then(|t| t.parse::<u32>().ok())
        .unwrap_or(1);
    let stop =
        Lsn::parse(stop).ok_or_else(|| fail(format!("pg_backup_stop returned \"{stop}\"")))?;
    let range = WalRange {
        start,
        stop,
        timeline,
    };
    let segment_size = server::segment_size();
    let wal: Vec<WalFile> = range
        .segments(segment_size)
        .map(|segment| {
            let name = segment.file_name(segment_size);
            WalFile {
                source: session.data_dir.join("pg_wal").join(&name),
                name,
            }
        })
        .collect();
    if let Some(gone) = wal.iter().find(|w| !w.source.is_file()) {
        return Err(fail(format!(
            "WAL file {} was recycled before the backup could copy it; raise wal_keep_size or \
             leave a replication slot free (max_replication_slots) for backups",
            gone.name
        )));
    }
    let counts = json!({
        "files_copied": copied.copied,
        "files_referenced": copied.referenced,
        "files_vanished": copied.vanished,
        "bytes_read": copied.bytes_read,
        "bad_pages": copied.bad_pages,
    });
    let partial = durable::partial_path(&session.start.final_dir);
    let span = WalSpan {
        timeline,
        start,
        stop,
    };
    let done = native::finish(
        &partial,
        copied,
        label,
        map,
        &wal,
        session.start.level,
        &span,
    )
    .map_err(|e| fail(e.to_string()))?;
    fault_pause("native_rename", guc::fault_pause_at("native_rename"));
    durable::install_dir(&partial, &session.start.final_dir)
        .map_err(|e| fail(format!("renaming the backup into place: {e}")))?;
    let mut annotations = counts;
    if let Some(obj) = annotations.as_object_mut() {
        obj.insert("bytes_logical".into(), json!(done.manifest.logical_bytes()));
        obj.insert(
            "chain".into(),
            json!(done.manifest.holders().into_iter().collect::<Vec<_>>()),
        );
        obj.insert("wal_files".into(), json!(wal.len()));
    }
    Ok(Outcome {
        main: Written {
            path: session.start.final_dir.clone(),
            size: done.stored_bytes,
            sha256: done.manifest_sha256,
        },
        globals: None,
        facts: None,
        owners: None,
        wal: Some(range),
        annotations: Some(annotations),
    })
}

/// Logs each bad page with the relation it belongs to (named when it is in this database) and
/// returns them for the record.
pub(crate) fn describe_bad_pages(c: &SpiClient<'_>, pages: &Value) -> Result<Value, SpiError> {
    let Some(pages) = pages.as_array() else {
        return Ok(json!([]));
    };
    let mut out = Vec::new();
    for p in pages {
        let path = p.get("path").and_then(Value::as_str).unwrap_or_default();
        let block = p.get("block").and_then(Value::as_u64).unwrap_or_default();
        let parts: Vec<&str> = path.split('/').collect();
        let (db_oid, tablespace, node) = match parts.as_slice() {
            ["base", db, file] => (db.parse::<u32>().ok(), 0u32, *file),
            ["global", file] => (Some(0), 1664, *file),
            ["pg_tblspc", ts, _, db, file] => (db.parse().ok(), ts.parse().unwrap_or(0), *file),
            _ => (None, 0, ""),
        };
        let filenode: i64 = node
            .split(['.', '_'])
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_default();
        let t = c.select(
            "SELECT (SELECT datname::text FROM pg_catalog.pg_database WHERE oid = $1::oid), \
                    CASE WHEN $1::oid IN (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())) \
                         THEN pg_catalog.pg_filenode_relation($2::oid, $3::oid)::text END",
            None,
            &[
                i64::from(db_oid.unwrap_or(u32::MAX)).into(),
                i64::from(tablespace).into(),
                filenode.into(),
            ],
        )?;
        let row = t.first();
        let database = row.get::<String>(1)?;
        let relation = row.get::<String>(2)?;
        warning!(
            "backup_mgmt: page checksum failure in \"{path}\" block {block}: database {}, relation {}",
            database.as_deref().unwrap_or("(unknown)"),
            relation.as_deref().unwrap_or("(look up with pg_filenode_relation in that database)")
        );
        out.push(json!({
            "path": path, "block": block, "database": database, "relation": relation,
            "relfilenode": filenode,
            "stored": p.get("stored"), "computed": p.get("computed"),
        }));
    }
    Ok(Value::Array(out))
}

#[cfg(test)]
mod unit {
    use super::label_value;

    #[test]
    fn backup_label_values() {
        let label = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n\
                     CHECKPOINT LOCATION: 0/2000060\nSTART TIMELINE: 3\n";
        assert_eq!(
            label_value(label, "START WAL LOCATION: "),
            Some("0/2000028")
        );
        assert_eq!(label_value(label, "START TIMELINE: "), Some("3"));
        assert_eq!(label_value(label, "LABEL: "), None);
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[allow(unused_imports)]
    use crate::testing::*;

    /// The native page checksum agrees with PostgreSQL's own (pageinspect's page_checksum) on
    /// real heap pages, at their own and at other block numbers.
    #[pg_test]
    fn page_checksums_agree_with_postgres() {
        Spi::run("CREATE EXTENSION IF NOT EXISTS pageinspect").unwrap();
        Spi::run("CREATE TABLE pc AS SELECT g, md5(g::text) AS m FROM generate_series(1, 3000) g")
            .unwrap();
        for block in 0..4i64 {
            let raw = Spi::get_one_with_args::<Vec<u8>>(
                "SELECT get_raw_page('pc', $1::int8)",
                &[block.into()],
            )
            .unwrap()
            .unwrap();
            let page: [u8; backup_mgmt_core::pgformat::pagecheck::BLCKSZ] = raw.try_into().unwrap();
            for at in [
                block,
                7,
                i64::from(backup_mgmt_core::pgformat::pagecheck::BLOCKS_PER_SEGMENT) + block,
            ] {
                let theirs = Spi::get_one_with_args::<i16>(
                    "SELECT page_checksum(get_raw_page('pc', $1::int8), $2::int4)",
                    &[block.into(), (at as i32).into()],
                )
                .unwrap()
                .unwrap();
                assert_eq!(
                    backup_mgmt_core::pgformat::pagecheck::page_checksum(&page, at as u32) as i16,
                    theirs
                );
            }
        }
    }
}
