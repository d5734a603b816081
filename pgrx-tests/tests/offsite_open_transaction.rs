//! End-to-end: an operator's transaction left open on an off-site target holds up nothing else
//! the worker does (0.14.0).

use std::time::Duration;

use backup_mgmt_e2e::cluster::Cluster;
use backup_mgmt_e2e::jobs::run_job;
use backup_mgmt_e2e::offsite_wal::{
    add_disk_target, archived, archiving_cluster, status, switch_segments, wait_caught_up,
};

/// Two targets; an operator deletes one (`doomed`, just asked to copy backups) in a transaction
/// and leaves it open.  Meanwhile WAL keeps being archived, queued and copied to the other
/// (`disk`), and a backup job runs: before 0.14.0 the worker's ingest of the
/// next archived file waited on that transaction (the queue's foreign key to the targets), and
/// so did recording anything for the target being deleted, stalling every target and job.
/// After the commit nothing of the deleted target is left in the queue.
#[test]
fn a_target_deleted_in_a_transaction_left_open_holds_up_nothing_else() {
    let (cluster, second) = archiving_cluster(true);
    let second = second.unwrap();
    let mut db = cluster.connect("postgres");
    db.batch_execute("CREATE EXTENSION backup_mgmt").unwrap();
    add_disk_target(&mut db, &second);
    db.execute(
        "INSERT INTO backup_management.remote_backup_configs
             (config_name, database_name, remote_type, remote_endpoint, remote_path)
         VALUES ('doomed', 'postgres', 'filesystem', $1, 'doomed')",
        &[&second.to_string_lossy().as_ref()],
    )
    .unwrap();
    switch_segments(&mut db, 1);
    let n = archived(&mut db);
    wait_caught_up(&cluster, &mut db, "disk", n);
    wait_caught_up(&cluster, &mut db, "doomed", n);

    db.batch_execute(
        "SELECT backup_mgmt.schedule_backup('dump', '@yearly', 'postgres', 'full', 'pg_dump', '{}');
         SELECT backup_mgmt.sync_remote_now('doomed');",
    )
    .unwrap();
    let mut operator = cluster.connect("postgres");
    operator
        .batch_execute(
            "BEGIN; DELETE FROM backup_management.remote_backup_configs WHERE config_name = 'doomed'",
        )
        .unwrap();
    // WAL goes on to the other target, and a backup job runs: the worker's loop is not held.
    switch_segments(&mut db, 3);
    wait_caught_up(&cluster, &mut db, "disk", n + 3);
    let backup = run_job(&cluster, &mut db, "dump");
    assert!(backup > 0);
    assert_eq!(status(&mut db, "disk").0, 0);

    operator.batch_execute("COMMIT").unwrap();
    // Rows the worker queued for it while the delete was not yet committed go at its next
    // repair (every minute); none is left.
    let clean = Cluster::wait_for(Duration::from_secs(90), || {
        db.query_one(
            "SELECT count(*) = 0 FROM backup_management.remote_wal_queue q
              WHERE NOT EXISTS (SELECT FROM backup_management.remote_backup_configs c
                                 WHERE c.config_id = q.config_id)",
            &[],
        )
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false)
    });
    assert!(clean, "rows of the deleted target stay\n{}", cluster.log());
    switch_segments(&mut db, 1);
    wait_caught_up(&cluster, &mut db, "disk", n + 4);
}
