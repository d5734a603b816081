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
    wait_caught_up(&cluster, &mut db, "disk", 1);
    wait_caught_up(&cluster, &mut db, "doomed", 1);
    let n = archived(&mut db);

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

/// A target that is behind (it cannot be written: its directory is a file) has files queued for
/// it.  An operator disables it, then deletes it, each in a transaction left open, which takes
/// its queue rows with it; meanwhile a statement of the kind the worker runs on the archive
/// (files expired, as retention does) and the queue's repair (the worker's, every minute)
/// finish at once instead of waiting for the operator's rows, and WAL keeps reaching the other
/// target.
#[test]
fn the_queue_of_a_held_target_never_holds_up_the_archive() {
    let (cluster, second) = archiving_cluster(true);
    let second = second.unwrap();
    let mut db = cluster.connect("postgres");
    db.batch_execute("CREATE EXTENSION backup_mgmt").unwrap();
    add_disk_target(&mut db, &second);
    std::fs::write(second.join("blocker"), b"not a directory").unwrap();
    db.execute(
        "INSERT INTO backup_management.remote_backup_configs
             (config_name, database_name, remote_type, remote_endpoint, remote_path)
         VALUES ('behind', 'postgres', 'filesystem', $1, 'blocker/pg')",
        &[&second.to_string_lossy().as_ref()],
    )
    .unwrap();
    switch_segments(&mut db, 3);
    wait_caught_up(&cluster, &mut db, "disk", 3);
    let behind = Cluster::wait_for(Duration::from_secs(30), || status(&mut db, "behind").0 >= 3);
    assert!(behind, "{:?}\n{}", status(&mut db, "behind"), cluster.log());
    let oldest = |db: &mut postgres::Client| -> String {
        db.query_one(
            "SELECT q.file_name FROM backup_management.remote_wal_queue q
               JOIN backup_management.remote_backup_configs c USING (config_id)
              WHERE c.config_name = 'behind' AND q.action = 'copy'
              ORDER BY q.archived_at LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0)
    };
    let mut operator = cluster.connect("postgres");
    for (held, end) in [
        ("UPDATE backup_management.remote_backup_configs SET is_active = false WHERE config_name = 'behind'", "ROLLBACK"),
        ("DELETE FROM backup_management.remote_backup_configs WHERE config_name = 'behind'", "COMMIT"),
    ] {
        let file = oldest(&mut db);
        operator.batch_execute(&format!("BEGIN; {held}")).unwrap();
        // Would wait for the operator's transaction (its refresh deleted this file's row for
        // the held target): the timeout turns that wait into a failure.
        db.batch_execute("SET statement_timeout = '20s'").unwrap();
        db.execute(
            "UPDATE backup_management.wal_archive SET expired_at = now() WHERE file_name = $1",
            &[&file],
        )
        .unwrap_or_else(|e| panic!("after {held}: {e}\n{}", cluster.log()));
        // Nor does the worker's repair (every minute), which would delete that row.
        db.query_one("SELECT backup_mgmt.remote_wal_queue_repair()", &[])
            .unwrap_or_else(|e| panic!("repair after {held}: {e}\n{}", cluster.log()));
        db.batch_execute("RESET statement_timeout").unwrap();
        let before = archived(&mut db);
        switch_segments(&mut db, 1);
        wait_caught_up(&cluster, &mut db, "disk", before + 1);
        operator.batch_execute(end).unwrap();
    }
    // Whatever the races left, the repair (every minute) brings the queue to its definition.
    let equal = Cluster::wait_for(Duration::from_secs(90), || {
        db.query_one(
            "SELECT NOT EXISTS (SELECT * FROM backup_management.remote_wal_queue
                                EXCEPT SELECT * FROM backup_mgmt.remote_wal_queue_of())
                AND NOT EXISTS (SELECT * FROM backup_mgmt.remote_wal_queue_of()
                                EXCEPT SELECT * FROM backup_management.remote_wal_queue)",
            &[],
        )
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false)
    });
    assert!(equal, "the queue stays out of step\n{}", cluster.log());
}
