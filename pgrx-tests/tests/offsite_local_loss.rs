//! End-to-end: a backup whose copy on its own host is gone (a lost disk; after a failover, the
//! old primary's backups as the new primary sees them with roots local to each host).  The
//! host's verification records it failed, missing; the catalog mirror on the off-site target
//! says that verification failed on the source host's own copy (`failed_locally`); and the
//! restore program still restores the backup from its off-site copy, every file checked, where
//! before it refused it as failed.  A verification that found the backup itself bad still
//! stops it, and the routine checksum pass after it does not clear it.

use std::time::Duration;

use backup_mgmt_e2e::cluster::Cluster;
use backup_mgmt_e2e::jobs::{marker_ids, run_job};
use backup_mgmt_e2e::offsite::{add_disk_target, promoted, switch_sync_and_wait};
use backup_mgmt_e2e::program::run;

/// `verify_backup_integrity(id)`: whether the backup passed.
fn verified(db: &mut postgres::Client, id: i64) -> bool {
    db.query_one("SELECT backup_mgmt.verify_backup_integrity($1)", &[&id])
        .unwrap()
        .get(0)
}

/// Records a verification of backup `id` as the extension would (`kind`, `status`), without
/// running it.
fn recorded(db: &mut postgres::Client, id: i64, kind: &str, status: &str) {
    db.execute(
        "INSERT INTO backup_management.backup_verifications
             (backup_id, verification_type, verification_status)
         VALUES ($1, $2, $3)",
        &[&id, &kind, &status],
    )
    .unwrap();
}

#[test]
fn a_backup_lost_on_its_host_is_restored_from_its_offsite_copy() {
    let cluster =
        Cluster::start_with_backups(&["archive_mode = on", "archive_library = 'backup_mgmt'"]);
    let mut db = cluster.connect("postgres");
    let disk = cluster.second_backup_root("second-disk");
    db.batch_execute(
        "CREATE EXTENSION backup_mgmt;
         CREATE TABLE markers (id int PRIMARY KEY);
         INSERT INTO markers VALUES (1);
         SELECT backup_mgmt.schedule_backup('bfull', '@yearly', 'postgres', 'full',
                'pg_basebackup', '{\"fast_checkpoint\": true, \"compression\": \"zstd\"}');",
    )
    .unwrap();
    add_disk_target(&mut db, &disk);
    let full = run_job(&cluster, &mut db, "bfull");
    let (target, mirror_file, doc) = switch_sync_and_wait(&cluster, &mut db, &disk, 1);
    assert_eq!(doc["backups"][0]["failed_locally"], serde_json::Value::Null);

    // The host's own copy is gone; verified again, the backup is failed (missing).
    let path: String = db
        .query_one(
            "SELECT backup_file_path FROM backup_management.backup_records WHERE backup_id = $1",
            &[&full],
        )
        .unwrap()
        .get(0);
    let aside = format!("{path}.aside");
    std::fs::rename(&path, &aside).unwrap();
    assert!(!verified(&mut db, full));
    // Waits for the mirror to show the verdict `verdict`, failed_locally `want`, and a
    // verified_at other than `before`; returns that verified_at.
    let wait_mirror = |verdict: &str, want: bool, before: &serde_json::Value| {
        let mut doc = serde_json::Value::Null;
        let seen = Cluster::wait_for(Duration::from_secs(60), || {
            doc = std::fs::read_to_string(&mirror_file)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
            let b = &doc["backups"][0];
            b["verification"] == verdict
                && b["failed_locally"] == want
                && b["verified_at"] != *before
        });
        assert!(seen, "mirror: {doc}\n{}", cluster.log());
        doc["backups"][0]["verified_at"].clone()
    };
    let mirror = |want: bool, before: &serde_json::Value| wait_mirror("failed", want, before);
    let at = mirror(true, &serde_json::Value::Null);

    let dir = target.to_str().unwrap().to_owned();
    let restore = || {
        let restored = Cluster::empty();
        let data = restored.data_dir().to_str().unwrap().to_owned();
        let (code, out, err) = run(&restored, &["--dir", &dir, "restore", &data]);
        (restored, code, out, err)
    };
    let (mut restored, code, out, err) = restore();
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        format!("{out}{err}").contains("failed only because the source host's own copy is missing"),
        "{out}\n{err}"
    );
    restored.start_restored(&["archive_mode = off", "shared_preload_libraries = ''"]);
    let mut r = promoted(&restored);
    assert_eq!(marker_ids(&mut r), vec![1]);
    drop(r);
    restored.pg_ctl_stop("fast");

    // The list says whose copy failed.
    let (code, out, err) = run(&cluster, &["--dir", &dir, "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("failed (source copy)"), "{out}");

    // The copy back, and a verification that finds the backup itself bad (pg_verifybackup, as
    // a restore test records it): the program refuses it again.
    std::fs::rename(&aside, &path).unwrap();
    recorded(&mut db, full, "pg_verifybackup", "failed");
    let at = mirror(false, &at);
    let refused = || {
        let (_, code, out, err) = restore();
        assert_ne!(code, 0, "{out}\n{err}");
        assert!(err.contains("failed verification"), "{out}\n{err}");
    };
    refused();
    // The local copy gone again: the newest verification is a missing file, but the verdict
    // on the content stands (no pass since), and the program still refuses the backup.
    std::fs::rename(&path, &aside).unwrap();
    assert!(!verified(&mut db, full));
    let at = mirror(false, &at);
    refused();
    // The copy back and read again by the worker's routine checksum pass: the bytes are the
    // recorded ones, which says nothing against pg_verifybackup's verdict on them, so the
    // backup stays failed (until 0.10.0 this pass made it "passed" again).
    std::fs::rename(&aside, &path).unwrap();
    recorded(&mut db, full, "checksum", "passed");
    let at = mirror(false, &at);
    refused();
    // pg_verifybackup itself passing (verify_backup_integrity runs it after the checksum) is
    // as thorough as the failure: the backup is verified again.
    assert!(verified(&mut db, full));
    wait_mirror("passed", false, &at);
}
