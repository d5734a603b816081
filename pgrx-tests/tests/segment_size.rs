//! End-to-end: a cluster initialised with `--wal-segsize=64` (64 segments a log, not 256), its
//! WAL moved past the first 4 GB log with pg_resetwal so that the difference shows in every
//! name.  The archive's catalog, `wal_gaps` and `plan_recovery_lsn` must agree on every segment's
//! number and name (0.1.0 numbered archived segments as if they were 16 MB, so a recovery plan
//! listed segments it had as missing).

use std::time::Duration;

use backup_mgmt_e2e::cluster::Cluster;
use backup_mgmt_e2e::jobs::{run_now, wait_records};

#[test]
fn archive_gaps_and_plans_agree_on_64_mb_segments() {
    let mut cluster = Cluster::start_with_backups_initdb(
        &["--wal-segsize=64"],
        &["archive_mode = on", "archive_library = 'backup_mgmt'"],
    );
    // Into log 2 (64 MB segments: log 2 starts at segment 128).
    cluster.pg_ctl_stop("fast");
    let out = cluster
        .server_command("pg_resetwal")
        .args(["-l", "000000010000000200000005", "-D"])
        .arg(cluster.data_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.pg_ctl_start();

    let mut db = cluster.connect("postgres");
    db.batch_execute(
        "CREATE EXTENSION backup_mgmt;
         CREATE TABLE t (id int PRIMARY KEY);
         INSERT INTO t SELECT generate_series(1, 1000);",
    )
    .unwrap();
    let size: String = db
        .query_one("SELECT current_setting('wal_segment_size')", &[])
        .unwrap()
        .get(0);
    assert_eq!(size, "64MB");

    run_now(
        &mut db,
        "base",
        "postgres",
        "pg_basebackup",
        "{\"fast_checkpoint\": true}",
    );
    wait_records(&cluster, &mut db, "base", "completed", 1, 120);
    let (start_segment, named_right): (String, bool) = db
        .query_one(
            "SELECT start_wal_segment, start_wal_segment = pg_walfile_name(start_lsn)
               FROM backup_management.backup_records WHERE label = 'base'",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert!(named_right, "{start_segment}");
    assert!(
        start_segment.starts_with("0000000100000002"),
        "{start_segment}"
    );

    // Several segments after the backup, each archived and ingested.
    let mut last = String::new();
    for i in 0..4 {
        db.batch_execute(&format!(
            "INSERT INTO t SELECT generate_series({0} * 1000 + 1001, {0} * 1000 + 2000)",
            i
        ))
        .unwrap();
        last = db
            .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
            .unwrap()
            .get(0);
    }
    let target: String = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap()
        .get(0);
    // Something after the target, so that the switch below finishes the target's segment.
    db.batch_execute("INSERT INTO t VALUES (0)").unwrap();
    let after_target: String = db
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .unwrap()
        .get(0);
    assert!(
        Cluster::wait_for(Duration::from_secs(60), || {
            db.query_one(
                "SELECT count(*) FROM backup_management.wal_archive WHERE file_name IN ($1, $2)",
                &[&last, &after_target],
            )
            .map(|r| r.get::<_, i64>(0) == 2)
            .unwrap_or(false)
        }),
        "not archived and ingested\n{}",
        cluster.log()
    );

    // Every archived segment: its cluster's segment size, and the number its name means at it.
    let wrong: i64 = db
        .query_one(
            "SELECT count(*) FROM backup_management.wal_archive
              WHERE segment_number IS NOT NULL
                AND (segment_size <> 64 * 1024 * 1024
                     OR segment_number <> ('x' || substr(file_name, 9, 8))::bit(32)::bigint * 64
                                           + ('x' || substr(file_name, 17, 8))::bit(32)::bigint)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(wrong, 0, "segments numbered as if they were 16 MB");
    let gaps: i64 = db
        .query_one("SELECT count(*) FROM backup_mgmt.wal_gaps", &[])
        .unwrap()
        .get(0);
    assert_eq!(gaps, 0, "gaps where there are none");

    let plan = |db: &mut postgres::Client| -> (bool, String, String, Vec<String>) {
        let r = db
            .query_one(
                "SELECT reachable, reason, first_wal_file, missing_wal_files
                   FROM backup_mgmt.plan_recovery_lsn($1::text::pg_lsn)",
                &[&target],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    let (reachable, reason, first, missing) = plan(&mut db);
    assert!(reachable, "{reason}; missing {missing:?}");
    assert_eq!(first, start_segment);

    // A segment the plan needs disappears from the catalog: wal_gaps and the plan name the same
    // file, by its real name.
    db.execute(
        "DELETE FROM backup_management.wal_archive WHERE file_name = $1",
        &[&last],
    )
    .unwrap();
    let gap: String = db
        .query_one("SELECT missing_file_name FROM backup_mgmt.wal_gaps", &[])
        .unwrap()
        .get(0);
    assert_eq!(gap, last);
    let (reachable, _, _, missing) = plan(&mut db);
    assert!(!reachable);
    assert_eq!(missing, vec![last]);
}
