//! The catalog mirror: the catalog lives in a database that may be the one lost, so after every
//! change the worker writes `catalog_mirror.json` into the first backup root (temporary name,
//! fsync, rename, directory fsync).  It lists every completed backup (path, size, sha256,
//! cluster, method, times) and the archived WAL per cluster and timeline, so that a DBA can pick
//! a backup and restore without backup_mgmt, or without the database at all.

use std::path::Path;

use backup_mgmt_core::files::durable::{self, Install, Temp};
use backup_mgmt_core::files::error::IoError;
use pgrx::prelude::*;

use crate::pg::{roots, spi::in_transaction};

/// The mirror's file name in the first backup root.
pub const FILE: &str = "catalog_mirror.json";

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
