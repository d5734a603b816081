//! Off-site targets as the end-to-end tests use them: a filesystem target (a "second disk") and
//! the catalog mirror the extension writes there, read back as a restore host would.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cluster::Cluster;

/// Adds filesystem target `disk` for database `postgres`, writing below `dir` in `pg`.
pub fn add_disk_target(db: &mut postgres::Client, dir: &Path) {
    add_filesystem_target(db, "disk", "postgres", dir);
}

/// Adds filesystem target `name` for `database`, writing below `dir` in `pg`.
pub fn add_filesystem_target(db: &mut postgres::Client, name: &str, database: &str, dir: &Path) {
    db.execute(
        "INSERT INTO backup_management.remote_backup_configs
             (config_name, database_name, remote_type, remote_endpoint, remote_path)
         VALUES ($1, $2, 'filesystem', $3, 'pg')",
        &[&name, &database, &dir.to_string_lossy().as_ref()],
    )
    .unwrap();
}

/// Switches to a new WAL file and waits until the catalog holds the one just finished, asks for
/// a sync to target `disk` (added by `add_disk_target` below `dir`) and waits for its mirror as
/// `wait_for_mirror` does (so the mirror holds that file too); returns the target's directory,
/// the mirror's path and the mirror.
pub fn switch_sync_and_wait(
    cluster: &Cluster,
    db: &mut postgres::Client,
    dir: &Path,
    backups: usize,
) -> (PathBuf, PathBuf, serde_json::Value) {
    crate::jobs::switch_and_wait_ingested(cluster, db);
    db.execute("SELECT backup_mgmt.sync_remote_now('disk')", &[])
        .unwrap();
    let sysid: i64 = db
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .unwrap()
        .get(0);
    let target = dir.join("pg");
    let mirror_file = target.join(format!("{sysid}/.catalog/catalog_mirror.json"));
    let doc = wait_for_mirror(cluster, db, &mirror_file, backups);
    (target, mirror_file, doc)
}

/// Waits until the mirror at `mirror_file` lists `backups` backups and every WAL file the
/// catalog holds unexpired, and returns it with the files of its WAL parts read and checked
/// (`with_wal_files`).
pub fn wait_for_mirror(
    cluster: &Cluster,
    db: &mut postgres::Client,
    mirror_file: &Path,
    backups: usize,
) -> serde_json::Value {
    // `<target>/<system identifier>/.catalog/catalog_mirror.json`
    let target = mirror_file.ancestors().nth(3).unwrap().to_path_buf();
    let mut doc = serde_json::Value::Null;
    let complete = Cluster::wait_for(Duration::from_secs(180), || {
        doc = std::fs::read_to_string(mirror_file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let archived: i64 = db
            .query_one(
                "SELECT count(*) FROM backup_management.wal_archive WHERE expired_at IS NULL",
                &[],
            )
            .map(|r| r.get(0))
            .unwrap_or(-1);
        doc["backups"].as_array().map_or(0, Vec::len) == backups
            && mirror_wal_count(&doc) == archived
            && archived > 0
            && with_wal_files(&mut doc, |k| std::fs::read(target.join(k)).ok())
    });
    assert!(complete, "mirror: {doc}\n{}", cluster.log());
    doc
}

/// How many WAL files a mirror document lists: its `wal_files` (format 1) or the counts of the
/// parts it names (format 2).
pub fn mirror_wal_count(doc: &serde_json::Value) -> i64 {
    match doc["wal_parts"].as_array() {
        Some(parts) => parts.iter().filter_map(|p| p["files"].as_i64()).sum(),
        None => doc["wal_files"].as_array().map_or(0, Vec::len) as i64,
    }
}

/// Fills a format 2 mirror document's `wal_files` with the files of every part it names, each
/// part read by `read` (a key's bytes) and checked against the sha256 the document names, as a
/// restore host reads them; false (and `doc` untouched) when a part is missing or does not
/// match.  A format 1 document has its files already.
pub fn with_wal_files(doc: &mut serde_json::Value, read: impl Fn(&str) -> Option<Vec<u8>>) -> bool {
    use sha2::{Digest, Sha256};
    let Some(parts) = doc["wal_parts"].as_array() else {
        return doc["wal_files"].is_array();
    };
    let mut files = Vec::new();
    for p in parts {
        let Some(bytes) = p["key"].as_str().and_then(&read) else {
            return false;
        };
        let sum: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let part: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if Some(sum.as_str()) != p["sha256"].as_str() || part["part"] != p["part"] {
            return false;
        }
        files.extend(part["wal_files"].as_array().cloned().unwrap_or_default());
    }
    files.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    doc["wal_files"] = files.into();
    true
}

/// A connection to a restored server once it has finished recovery and promoted.
pub fn promoted(restored: &Cluster) -> postgres::Client {
    let mut r = restored.connect("postgres");
    let done = Cluster::wait_for(Duration::from_secs(180), || {
        r.query_one("SELECT NOT pg_is_in_recovery()", &[])
            .map(|row| row.get::<_, bool>(0))
            .unwrap_or(false)
    });
    assert!(done, "recovery did not finish\n{}", restored.log());
    r
}
