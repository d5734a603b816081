//! End-to-end: `plan_recovery` after a failover.  A primary archives through the module and
//! takes a base backup (timeline 1); a streaming standby that shares its backup root (as a
//! shared archive directory would be) is promoted when the primary crashes (timeline 2), and
//! archives timeline 2's history file and WAL into the same archive.  On the new primary,
//! `plan_recovery` to a time on timeline 2 starts from the timeline-1 backup and follows the
//! history to timeline 2 (before, it looked for timeline 1's WAL after the target and found
//! none); its recipe, run with both servers gone, brings back exactly the markers before that
//! time; a time before the failover stays on timeline 1.  A segment of timeline 2 missing from
//! the archive is named as missing, on timeline 2; a lost history file of timeline 2 is the
//! reason the plan gives.

use std::time::Duration;

use backup_mgmt_e2e::cluster::Cluster;
use backup_mgmt_e2e::failover::{crash_and_promote, timeline, wait_replayed};
use backup_mgmt_e2e::jobs::{marker_ids, plan_after, run_job, switch_and_wait_ingested};

#[test]
fn a_plan_after_a_failover_follows_the_new_timeline() {
    let mut primary =
        Cluster::start_with_backups(&["archive_mode = on", "archive_library = 'backup_mgmt'"]);
    let mut db = primary.connect("postgres");
    db.batch_execute(
        "CREATE EXTENSION backup_mgmt;
         CREATE TABLE markers (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp());
         SELECT backup_mgmt.schedule_backup('bfull', '@yearly', 'postgres', 'full',
                'pg_basebackup', '{\"fast_checkpoint\": true, \"compression\": \"zstd\"}');",
    )
    .unwrap();
    let full = run_job(&primary, &mut db, "bfull");
    db.batch_execute("INSERT INTO markers (id) VALUES (1)")
        .unwrap();
    // A time on timeline 1, before the failover.
    std::thread::sleep(Duration::from_millis(1100));
    let on_one: String = db
        .query_one("SELECT clock_timestamp()::text", &[])
        .unwrap()
        .get(0);
    std::thread::sleep(Duration::from_millis(1100));

    // The standby, caught up with marker 2, the primary's WAL archived; then the primary
    // crashes and the standby takes over.
    let standby = Cluster::standby_of(&primary);
    let mut sdb = standby.connect("postgres");
    db.batch_execute("INSERT INTO markers (id) VALUES (2)")
        .unwrap();
    switch_and_wait_ingested(&primary, &mut db);
    wait_replayed(&standby, &mut sdb, 2);
    drop(db);
    let mut sdb = crash_and_promote(&mut primary, &standby);

    // Marker 3, a time T, marker 4, all on timeline 2 and archived; T in timeline 2's second
    // segment.
    sdb.batch_execute("INSERT INTO markers (id) VALUES (3)")
        .unwrap();
    switch_and_wait_ingested(&standby, &mut sdb);
    std::thread::sleep(Duration::from_millis(1100));
    let target: String = sdb
        .query_one("SELECT clock_timestamp()::text", &[])
        .unwrap()
        .get(0);
    std::thread::sleep(Duration::from_millis(1100));
    sdb.batch_execute("INSERT INTO markers (id) VALUES (4)")
        .unwrap();
    switch_and_wait_ingested(&standby, &mut sdb);
    let history: i64 = sdb
        .query_one(
            "SELECT count(*) FROM backup_management.wal_archive WHERE file_name = '00000002.history'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(history, 1, "{}", standby.log());

    let plan = |sdb: &mut postgres::Client, at: &str| {
        sdb.query_one(
            "SELECT reachable, reason, base_backup_id, first_wal_file, last_wal_file,
                    missing_wal_files, coalesce(recipe, '')
               FROM backup_mgmt.plan_recovery($1::text::timestamptz)",
            &[&at],
        )
        .unwrap()
    };
    // Before the failover: timeline 1 alone, which needs no history file.
    let row = plan(&mut sdb, &on_one);
    let reason: String = row.get(1);
    assert!(row.get::<_, bool>(0), "{reason}");
    let last: String = row.get(4);
    let recipe: String = row.get(6);
    assert!(last.starts_with("00000001"), "{last}");
    assert!(
        recipe.contains("recovery_target_timeline = 'current'")
            && !recipe.contains("00000002.history"),
        "{recipe}"
    );
    let row = plan(&mut sdb, &target);
    let reason: String = row.get(1);
    assert!(row.get::<_, bool>(0), "{reason}\n{}", standby.log());
    assert_eq!(row.get::<_, Option<i64>>(2), Some(full));
    let first: String = row.get(3);
    let last: String = row.get(4);
    assert!(first.starts_with("00000001"), "{first}");
    assert!(last.starts_with("00000002"), "{last}");
    let recipe: String = row.get(6);
    assert!(
        recipe.contains("recovery_target_timeline = '2'") && recipe.contains("00000002.history"),
        "{recipe}"
    );

    // A hole on timeline 2 is seen, and named under timeline 2.
    let first_of_two: String = sdb
        .query_one(
            "SELECT min(file_name) FROM backup_management.wal_archive WHERE timeline_id = 2",
            &[],
        )
        .unwrap()
        .get(0);
    let mut tx = sdb.transaction().unwrap();
    tx.execute(
        "UPDATE backup_management.wal_archive SET lost_at = now(), lost_reason = 'test'
          WHERE file_name = $1",
        &[&first_of_two],
    )
    .unwrap();
    let holed = tx
        .query_one(
            "SELECT reachable, missing_wal_files FROM backup_mgmt.plan_recovery($1::text::timestamptz)",
            &[&target],
        )
        .unwrap();
    assert!(!holed.get::<_, bool>(0));
    assert_eq!(holed.get::<_, Vec<String>>(1), vec![first_of_two.clone()]);
    tx.rollback().unwrap();
    // The archived history file of timeline 2, which recovery reads to follow it, lost.
    let lost = plan_after(
        &mut sdb,
        "UPDATE backup_management.wal_archive SET lost_at = now(), lost_reason = 'test'
          WHERE file_name = '00000002.history'",
        &[],
        &target,
    );
    assert!(
        !lost.0 && lost.1.contains("history file of timeline 2") && lost.1.contains("lost"),
        "{lost:?}"
    );
    let reason_with = |sdb: &mut postgres::Client, change: &str, args: &[&str]| -> String {
        plan_after(sdb, change, args, &target).1
    };
    // A segment of timeline 2 recorded outside the WAL archive of every backup root: never
    // read by a recipe.
    let reason = reason_with(
        &mut sdb,
        "UPDATE backup_management.wal_archive SET file_path = '/elsewhere/' || file_name
          WHERE file_name = $1",
        &[&first_of_two],
    );
    assert!(
        reason.contains(&format!(
            "WAL file {first_of_two} is recorded at a path that is not in the WAL archive"
        )),
        "{reason}"
    );
    // An archived history of timeline 2 that is what was archived, but not this server's.
    let stored: String = sdb
        .query_one(
            "SELECT file_path FROM backup_management.wal_archive WHERE file_name = '00000002.history'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(stored.ends_with("00000002.history"), "{stored}");
    let original = std::fs::read(&stored).unwrap();
    let forged = "1\t0/1000000\tforged\n";
    std::fs::write(&stored, forged).unwrap();
    let reason = reason_with(
        &mut sdb,
        "UPDATE backup_management.wal_archive
            SET checksum = encode(sha256(convert_to($1, 'UTF8')), 'hex'),
                file_size = octet_length($1)
          WHERE file_name = '00000002.history'",
        &[forged],
    );
    std::fs::write(&stored, &original).unwrap();
    assert!(
        reason.contains("differs from this server's own"),
        "{reason}"
    );

    // Both servers gone; only the backup root is left.  The recipe brings back markers 1-3.
    drop(sdb);
    let mut standby = standby;
    standby.pg_ctl_stop("immediate");
    std::fs::remove_dir_all(standby.data_dir()).unwrap();
    std::fs::remove_dir_all(primary.data_dir()).unwrap();
    let (restored, mut r, said) = Cluster::restored_and_promoted(&recipe, Duration::from_secs(120));
    assert_eq!(
        marker_ids(&mut r),
        vec![1, 2, 3],
        "{said}\n{}",
        restored.log()
    );
    assert_eq!(
        timeline(&mut r),
        "00000003",
        "recovery ended on timeline 2 and promoted"
    );
}
