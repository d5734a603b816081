//! The catalog mirror: the catalog lives in a database that may be the one lost, so after every
//! change the worker writes `catalog_mirror.json` into the first backup root (temporary name,
//! fsync, rename, directory fsync).  It lists every completed backup (path, size, sha256,
//! cluster, method, times) and the archived WAL per cluster and timeline, so that a DBA can pick
//! a backup and restore without backup_mgmt, or without the database at all.

use std::path::Path;

use backup_mgmt_core::files::durable::{self, Install, Temp};
use backup_mgmt_core::files::error::IoError;
use backup_mgmt_core::storage;
use pgrx::prelude::*;

use crate::pg::{roots, spi::in_transaction};

/// The mirror's file name in the first backup root (and on every off-site target).
pub const FILE: &str = backup_mgmt_core::restore::offsite::MIRROR_FILE;

const QUERY: &str = "SELECT jsonb_build_object(
    'format', 'backup_mgmt catalog mirror 1',
    'written_at', now(),
    'backups', coalesce((SELECT jsonb_agg(jsonb_build_object(
            'backup_id', backup_id, 'database_name', database_name, 'backup_type', backup_type,
            'backup_method', backup_method, 'path', backup_file_path, 'size', backup_size,
            'sha256', checksum, 'compression', compression, 'system_identifier', system_identifier,
            'pg_version', pg_version, 'timeline_id', timeline_id, 'start_time', start_time,
            'end_time', end_time, 'label', label, 'globals_file', globals_file_path,
            'globals_sha256', globals_checksum, 'start_lsn', start_lsn,
            'stop_lsn', stop_lsn, 'start_wal_segment', start_wal_segment,
            'stop_wal_segment', stop_wal_segment) ORDER BY backup_id)
        FROM backup_management.backup_records WHERE expired_at IS NULL AND status = 'completed'), '[]'::jsonb),
    -- From the maintained ranges (a handful of rows), with the first and last segment looked up.
    'wal', coalesce((SELECT jsonb_agg(w ORDER BY w.system_identifier, w.timeline_id) FROM (
        SELECT r.system_identifier, r.timeline_id, f.file_name AS first_segment,
               l.file_name AS last_segment, r.segments, f.file_path AS first_path,
               l.archived_at AS last_archived_at
          FROM (SELECT system_identifier, timeline_id, min(first_segment) AS first_number,
                       max(last_segment) AS last_number,
                       sum(last_segment - first_segment + 1)::bigint AS segments
                  FROM backup_management.wal_ranges GROUP BY system_identifier, timeline_id) r
          LEFT JOIN LATERAL (SELECT a.file_name, a.file_path FROM backup_management.wal_archive a
                              WHERE a.system_identifier = r.system_identifier AND a.timeline_id = r.timeline_id
                                AND a.segment_number = r.first_number AND a.expired_at IS NULL LIMIT 1) f ON true
          LEFT JOIN LATERAL (SELECT a.file_name, a.archived_at FROM backup_management.wal_archive a
                              WHERE a.system_identifier = r.system_identifier AND a.timeline_id = r.timeline_id
                                AND a.segment_number = r.last_number AND a.expired_at IS NULL LIMIT 1) l ON true) w),
        '[]'::jsonb),
    'wal_gaps', coalesce((SELECT jsonb_agg(missing_file_name) FROM backup_mgmt.wal_gaps), '[]'::jsonb)
)::text";

/// The targets that copy to the same place as target `$1` (type, endpoint and path): one per
/// database is the usual way to send a cluster's databases to one bucket, and the one mirror
/// there must list the backups every one of them copied, not only the last writer's.
const SAME_PLACE: &str = "SELECT o.config_id FROM backup_management.remote_backup_configs o
    JOIN backup_management.remote_backup_configs t ON t.config_id = $1
   WHERE o.remote_type = t.remote_type AND o.remote_endpoint IS NOT DISTINCT FROM t.remote_endpoint
     AND o.remote_path IS NOT DISTINCT FROM t.remote_path";

/// The catalog as one off-site target holds it (`<system identifier>/.catalog/catalog_mirror.json`
/// on the target, replaced whole): this cluster's live backups that have a verified copy there,
/// (by any target copying to the same place), with their keys, chains, LSNs, retention state and
/// verdict (`verification_verdict`); every WAL file copied there with its key, size and sha256;
/// the archive's gaps.  Only this cluster's rows: another
/// cluster writing to the same target keeps its own prefix and its own mirror.  Globals keys are
/// added by `offsite_text` (they are computed, not stored).
const OFFSITE_QUERY: &str = "WITH me AS (SELECT system_identifier AS sysid FROM pg_catalog.pg_control_system()),
same_place AS (SAME_PLACE)
SELECT jsonb_build_object(
    'format', 'backup_mgmt offsite catalog 1',
    'written_at', pg_catalog.now(),
    'system_identifier', me.sysid,
    'pg_version', pg_catalog.current_setting('server_version_num')::int,
    'wal_segment_size', (SELECT setting::bigint FROM pg_catalog.pg_settings WHERE name = 'wal_segment_size'),
    'target', (SELECT config_name FROM backup_management.remote_backup_configs WHERE config_id = $1),
    'backups', coalesce((SELECT jsonb_agg(jsonb_build_object(
            'backup_id', r.backup_id, 'database_name', r.database_name, 'backup_type', r.backup_type,
            'backup_method', r.backup_method, 'key', x.remote_file_path, 'size', r.backup_size,
            'sha256', r.checksum, 'compression', r.compression, 'parent_backup_id', r.parent_backup_id,
            'pg_version', r.pg_version, 'timeline_id', r.timeline_id, 'start_time', r.start_time,
            'end_time', r.end_time, 'label', r.label, 'globals_file', r.globals_file_path,
            'globals_sha256', r.globals_checksum, 'start_lsn', r.start_lsn, 'stop_lsn', r.stop_lsn,
            'start_wal_segment', r.start_wal_segment, 'stop_wal_segment', r.stop_wal_segment,
            'pinned', r.pinned, 'keep_until', r.keep_until, 'copied_at', x.sync_end_time,
            'verification', s.last_status, 'verified_at', s.last_verified_at,
            -- Failed only because the source host's own copy is not there (its file missing, or
            -- outside that host's roots): every failure that stands says so, none says anything
            -- of the backup's bytes.  NULL when never verified.
            'failed_locally', CASE WHEN s.last_status = 'failed' THEN coalesce(d.only_local, false)
                                   WHEN s.last_status IS NOT NULL THEN false END) ORDER BY r.backup_id)
        FROM backup_management.backup_records r
        JOIN LATERAL (SELECT x.remote_file_path, x.sync_end_time FROM backup_management.remote_backup_records x
                       WHERE x.backup_id = r.backup_id AND x.sync_status = 'completed'
                         AND x.config_id IN (SELECT config_id FROM same_place)
                       ORDER BY x.record_id DESC LIMIT 1) x ON true
        LEFT JOIN backup_management.verification_state s ON s.backup_id = r.backup_id
        LEFT JOIN LATERAL backup_mgmt.verification_verdict(r.backup_id) d ON s.last_status = 'failed'
        WHERE r.expired_at IS NULL AND r.status = 'completed'
          AND coalesce(r.system_identifier, me.sysid) = me.sysid), '[]'::jsonb),
    'wal_files', coalesce((SELECT jsonb_agg(jsonb_build_object(
            'name', w.file_name, 'key', w.remote_key, 'size', w.file_size, 'sha256', w.remote_checksum,
            'archived_at', w.archived_at) ORDER BY w.file_name)
        FROM backup_management.remote_wal_records w
        WHERE w.config_id = $1 AND w.system_identifier = me.sysid), '[]'::jsonb),
    'wal_gaps', coalesce((SELECT jsonb_agg(g.missing_file_name ORDER BY g.missing_file_name)
        FROM backup_mgmt.wal_gaps g WHERE g.system_identifier = me.sysid), '[]'::jsonb)
)::text FROM me";

/// What changes the off-site mirror of target `$1`: the copies there, the live backups and
/// their retention state.  Cheap (index scans), read every second; the mirror is rebuilt only
/// when it changed.
const OFFSITE_FINGERPRINT: &str = "SELECT pg_catalog.md5(pg_catalog.concat_ws(',',
    (SELECT count(*) || '/' || coalesce(max(copied_at)::text, '') FROM backup_management.remote_wal_records WHERE config_id = $1),
    (SELECT count(*) || '/' || coalesce(max(record_id), 0) FROM backup_management.remote_backup_records
      WHERE config_id IN (SAME_PLACE) AND sync_status = 'completed'),
    (SELECT count(*) || '/' || coalesce(max(backup_id), 0) || '/' || count(*) FILTER (WHERE pinned) || '/' ||
            coalesce(max(keep_until)::text, '')
       FROM backup_management.backup_records WHERE expired_at IS NULL AND status = 'completed'),
    (SELECT count(*) || '/' || coalesce(max(last_verified_at)::text, '') FROM backup_management.verification_state),
    -- Pins, keep_until and verdicts change rows that are not the newest: hashed over the live
    -- backups (a few hundred rows at most).
    (SELECT pg_catalog.md5(coalesce(string_agg(r.backup_id || ':' || r.pinned || ':' || coalesce(r.keep_until::text, '') || ':' ||
                                               coalesce(v.last_status, '') || ':' ||
                                               coalesce((SELECT max(x.verification_id) FROM backup_management.backup_verifications x
                                                          WHERE x.backup_id = r.backup_id), 0),
                                               ',' ORDER BY r.backup_id), ''))
       FROM backup_management.backup_records r
       LEFT JOIN backup_management.verification_state v ON v.backup_id = r.backup_id
      WHERE r.expired_at IS NULL AND r.status = 'completed'),
    -- Gaps: files found lost (or back).
    (SELECT count(*) || '/' || coalesce(max(lost_at)::text, '') FROM backup_management.wal_archive
      WHERE lost_at IS NOT NULL AND expired_at IS NULL),
    (SELECT config_name FROM backup_management.remote_backup_configs WHERE config_id = $1)))";

/// The fingerprint of what the off-site mirror of `config_id` shows (in the caller's transaction).
pub fn offsite_fingerprint(
    c: &pgrx::spi::SpiClient<'_>,
    config_id: i32,
) -> Result<String, pgrx::spi::SpiError> {
    Ok(c.select(
        &OFFSITE_FINGERPRINT.replace("SAME_PLACE", SAME_PLACE),
        None,
        &[config_id.into()],
    )?
    .first()
    .get::<String>(1)?
    .unwrap_or_default())
}

/// The off-site mirror of `config_id` (in the caller's transaction), each logical backup's
/// globals file given the key the off-site copy put it under.
pub fn offsite_text(
    c: &pgrx::spi::SpiClient<'_>,
    config_id: i32,
) -> Result<String, pgrx::spi::SpiError> {
    let text = c
        .select(
            &OFFSITE_QUERY.replace("SAME_PLACE", SAME_PLACE),
            None,
            &[config_id.into()],
        )?
        .first()
        .get::<String>(1)?
        .unwrap_or_default();
    let Ok(mut doc) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Ok(text);
    };
    let sysid = doc
        .get("system_identifier")
        .and_then(serde_json::Value::as_i64)
        .unwrap_or_default();
    if let Some(backups) = doc
        .get_mut("backups")
        .and_then(serde_json::Value::as_array_mut)
    {
        for b in backups {
            let key = match (b.get("globals_file"), b.get("database_name")) {
                (Some(serde_json::Value::String(g)), Some(serde_json::Value::String(db))) => {
                    Some(storage::object_key(sysid, db, Path::new(g)))
                }
                _ => None,
            };
            if let (Some(k), Some(obj)) = (key, b.as_object_mut()) {
                obj.insert("globals_key".into(), k.into());
            }
        }
    }
    Ok(doc.to_string())
}

/// Writes `text` to `dir/FILE` atomically and durably (it is always rewritten whole).
pub fn write_atomically(dir: &Path, text: &str) -> Result<(), IoError> {
    durable::write_file(
        &dir.join(FILE),
        text.as_bytes(),
        Temp::Hidden,
        Install::Replace,
    )
}

#[derive(Debug, thiserror::Error)]
enum MirrorError {
    #[error(transparent)]
    Spi(#[from] pgrx::spi::SpiError),
    #[error(transparent)]
    Io(#[from] IoError),
}

/// Rewrites the mirror from the catalog (in the worker, in its own transaction).
pub fn refresh() {
    let Ok(root) = roots::first_root() else {
        return;
    };
    // A failure is logged by in_transaction; the next change writes the mirror again.
    let _ = in_transaction(
        "writing the catalog mirror",
        || -> Result<(), MirrorError> {
            let text = Spi::get_one::<String>(QUERY)?.unwrap_or_default();
            Ok(write_atomically(&root, &text)?)
        },
    );
}

#[cfg(test)]
mod unit {
    #[test]
    fn mirror_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        super::write_atomically(dir.path(), "{\"a\":1}").unwrap();
        super::write_atomically(dir.path(), "{\"a\":2}").unwrap();
        let text = std::fs::read_to_string(dir.path().join(super::FILE)).unwrap();
        assert_eq!(text, "{\"a\":2}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[allow(unused_imports)]
    use crate::testing::*;

    fn target(name: &str, database: &str, path: &str) -> i32 {
        Spi::get_one_with_args::<i32>(
            "INSERT INTO backup_management.remote_backup_configs
                 (config_name, database_name, remote_type, remote_endpoint, remote_path)
             VALUES ($1, $2, 'filesystem', $3, $4) RETURNING config_id",
            &[name.into(), database.into(), TEST_ROOT.into(), path.into()],
        )
        .unwrap()
        .unwrap()
    }

    fn copied(backup_id: i64, config_id: i32) {
        Spi::run_with_args(
            "INSERT INTO backup_management.remote_backup_records
                 (backup_id, config_id, remote_file_path, sync_start_time, sync_end_time, sync_status)
             VALUES ($1, $2, 'k/' || $1, now(), now(), 'completed')",
            &[backup_id.into(), config_id.into()],
        )
        .unwrap();
    }

    fn listed(config_id: i32) -> Vec<i64> {
        let text = Spi::connect(|c| super::offsite_text(c, config_id)).unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        doc["backups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["backup_id"].as_i64().unwrap())
            .collect()
    }

    /// One target per database, all copying to one bucket: the mirror each writes there is the
    /// same place's, so it lists what every one of them copied (it used to list only its own,
    /// and the last writer's mirror hid the other databases' backups).
    #[pg_test]
    fn the_mirror_of_a_place_lists_every_databases_copies() {
        let (a, _) = recorded_file("mirror-place-a.dump", b"a");
        let (b, _) = recorded_file("mirror-place-b.dump", b"b");
        let (c, _) = recorded_file("mirror-place-c.dump", b"c");
        let one = target("one", "pgrx_tests", "offsite");
        let two = target("two", "other", "offsite");
        let elsewhere = target("elsewhere", "pgrx_tests", "offsite-2");
        copied(a, one);
        let before = Spi::connect(|cl| super::offsite_fingerprint(cl, one)).unwrap();
        copied(b, two);
        copied(c, elsewhere);
        let after = Spi::connect(|cl| super::offsite_fingerprint(cl, one)).unwrap();
        assert_ne!(
            before, after,
            "a copy by the other target changes this mirror"
        );
        assert_eq!(listed(one), [a, b]);
        assert_eq!(listed(two), [a, b]);
        assert_eq!(listed(elsewhere), [c]);
    }
}
