//! What the off-site WAL tests share: a cluster archiving through the module, a filesystem
//! target for its WAL, and the views that say how far each target is.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cluster::Cluster;

/// A cluster archiving through the module, with a second backup root for a filesystem target.
pub fn archiving_cluster(extra_root: bool) -> (Cluster, Option<PathBuf>) {
    let cluster = Cluster::start_with_backups(&[
        "archive_mode = on",
        "archive_library = 'backup_mgmt'",
        "backup_mgmt.offsite_wal_lag_alarm = 4",
    ]);
    let second = extra_root.then(|| cluster.second_backup_root("second-disk"));
    (cluster, second)
}

/// Adds the filesystem target `disk` (`<second>/pg`) for the cluster's WAL; returns the
/// cluster's system identifier.
pub fn add_disk_target(db: &mut postgres::Client, second: &Path) -> i64 {
    db.execute(
        "INSERT INTO backup_management.remote_backup_configs
             (config_name, database_name, remote_type, remote_endpoint, remote_path)
         VALUES ('disk', 'postgres', 'filesystem', $1, 'pg')",
        &[&second.to_string_lossy().as_ref()],
    )
    .unwrap();
    db.query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .unwrap()
        .get(0)
}

/// Fills and switches `n` WAL segments.
pub fn switch_segments(db: &mut postgres::Client, n: usize) {
    for _ in 0..n {
        db.batch_execute(
            "CREATE TABLE IF NOT EXISTS t (g int); INSERT INTO t SELECT generate_series(1, 5000); SELECT pg_switch_wal();",
        )
        .unwrap();
    }
}

/// Archived WAL files that have not expired.
pub fn archived(db: &mut postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(*) FROM backup_management.wal_archive WHERE expired_at IS NULL",
        &[],
    )
    .unwrap()
    .get(0)
}

/// (pending files, failures in a row, alarm raised) of a target.
pub fn status(db: &mut postgres::Client, target: &str) -> (i64, i32, bool) {
    db.query_opt(
        "SELECT pending_segments, failures, alarm_since IS NOT NULL
           FROM backup_mgmt.offsite_wal_status WHERE config_name = $1",
        &[&target],
    )
    .unwrap()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .unwrap_or((-1, 0, false))
}

/// Waits until `target` holds every archived file (`at_least` of them).
pub fn wait_caught_up(cluster: &Cluster, db: &mut postgres::Client, target: &str, at_least: i64) {
    let ok = Cluster::wait_for(Duration::from_secs(120), || {
        archived(db) >= at_least && status(db, target).0 == 0
    });
    assert!(
        ok,
        "{target}: not caught up ({:?}, {} archived)\n{}",
        status(db, target),
        archived(db),
        cluster.log()
    );
}

/// The copies a target's records list, each with the archived file's recorded sha256.
pub fn copies(db: &mut postgres::Client, target: &str) -> Vec<(String, String, String)> {
    db.query(
        "SELECT r.remote_key, r.remote_checksum, a.checksum
           FROM backup_management.remote_wal_records r
           JOIN backup_management.remote_backup_configs c USING (config_id)
           JOIN backup_management.wal_archive a USING (system_identifier, file_name)
          WHERE c.config_name = $1 ORDER BY 1",
        &[&target],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}
