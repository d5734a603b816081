//! End-to-end: the WAL archive is checked against the disk.  A segment a recovery needs, moved
//! out of the archive directory, makes `plan_recovery` unreachable and shows in `wal_gaps`,
//! `recovery_status` and `metrics()` by name, with a log line and a `NOTIFY`; put back, it counts
//! again; a segment whose bytes change (same size) is found by the sha256 pass.

use std::time::Duration;

use backup_mgmt_e2e::cluster::Cluster;
use backup_mgmt_e2e::jobs::{run_now, switch_and_wait_ingested, wait_records};

/// (reachable, reason, missing files) of a plan to `target`.
fn plan(db: &mut postgres::Client, target: &str) -> (bool, String, Vec<String>) {
    let r = db
        .query_one(
            "SELECT reachable, reason, missing_wal_files FROM backup_mgmt.plan_recovery($1::text::timestamptz)",
            &[&target],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

fn gaps(db: &mut postgres::Client) -> Vec<(String, String)> {
    db.query(
        "SELECT missing_file_name, reason FROM backup_mgmt.wal_gaps ORDER BY 1",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

#[test]
fn archived_wal_is_checked_against_the_disk() {
    let cluster = Cluster::start_with_backups(&[
        "archive_mode = on",
        "archive_library = 'backup_mgmt'",
        "backup_mgmt.wal_check_interval = 2",
        // Each archived file read through sha256 again every 20 s (one file every 10 s).
        "backup_mgmt.verify_interval = 20",
    ]);
    let mut db = cluster.connect("postgres");
    db.batch_execute(
        "CREATE EXTENSION backup_mgmt;
         CREATE TABLE t (id int, at timestamptz DEFAULT clock_timestamp());
         INSERT INTO disaster_recovery.recovery_plans
             (plan_name, database_name, rpo_minutes, rto_minutes, backup_strategy, recovery_procedure)
         VALUES ('main', 'postgres', 60, 60, 'base backups and WAL', 'plan_recovery');",
    )
    .unwrap();
    run_now(
        &mut db,
        "base",
        "postgres",
        "pg_basebackup",
        "{\"fast_checkpoint\": true}",
    );
    wait_records(&cluster, &mut db, "base", "completed", 1, 120);
    db.batch_execute("INSERT INTO t (id) SELECT generate_series(1, 1000)")
        .unwrap();
    let first = switch_and_wait_ingested(&cluster, &mut db);
    std::thread::sleep(Duration::from_millis(1100));
    let target: String = db
        .query_one("SELECT clock_timestamp()::text", &[])
        .unwrap()
        .get(0);
    std::thread::sleep(Duration::from_millis(1100));
    db.batch_execute("INSERT INTO t (id) VALUES (0)").unwrap();
    let last = switch_and_wait_ingested(&cluster, &mut db);
    let (reachable, reason, _) = plan(&mut db, &target);
    assert!(reachable, "{reason}");
    assert!(gaps(&mut db).is_empty());

    let sysid: i64 = db
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .unwrap()
        .get(0);
    let dir = cluster.backup_root().join("wal").join(sysid.to_string());
    db.batch_execute("LISTEN backup_mgmt").unwrap();

    // A needed segment moved out of the archive directory.
    let aside = cluster.dir().join("aside");
    std::fs::rename(dir.join(&first), &aside).unwrap();
    let seen = Cluster::wait_for(Duration::from_secs(30), || !plan(&mut db, &target).0);
    assert!(
        seen,
        "the missing segment went unnoticed\n{}",
        cluster.log()
    );
    let (_, reason, missing) = plan(&mut db, &target);
    assert!(missing.contains(&first), "{reason} {missing:?}");
    assert_eq!(
        gaps(&mut db),
        vec![(
            first.clone(),
            "missing from the archive directory".to_owned()
        )]
    );
    let (status, count): (String, i64) = db
        .query_one(
            "SELECT archive_status, missing_wal_files FROM backup_mgmt.recovery_status",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((status.as_str(), count), ("gaps", 1));
    let metrics: String = db
        .query_one("SELECT backup_mgmt.metrics()", &[])
        .unwrap()
        .get(0);
    assert!(
        metrics.contains(&format!(
            "backup_mgmt_wal_lost_segments{{system_identifier=\"{sysid}\"}} 1"
        )),
        "{metrics}"
    );
    let mut notes = Vec::new();
    {
        use postgres::fallible_iterator::FallibleIterator;
        let mut notifications = db.notifications();
        let mut it = notifications.iter();
        while let Ok(Some(n)) = it.next() {
            notes.push(n.payload().to_owned());
        }
    }
    assert!(
        notes
            .iter()
            .any(|p| p.contains("wal_lost") && p.contains(&first)),
        "{notes:?}"
    );
    assert!(cluster.log().contains(&format!(
        "archived WAL file {first} of cluster {sysid} is lost"
    )));

    // Put back: read through sha256 again, and it counts again.
    std::fs::rename(&aside, dir.join(&first)).unwrap();
    let back = Cluster::wait_for(Duration::from_secs(60), || plan(&mut db, &target).0);
    assert!(
        back,
        "the segment put back does not count\n{}",
        cluster.log()
    );
    assert!(gaps(&mut db).is_empty());

    // Same size, other bytes: the sha256 pass (one file every 10 s) finds it.
    let path = dir.join(&last);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let changed = Cluster::wait_for(Duration::from_secs(180), || {
        gaps(&mut db)
            .iter()
            .any(|(name, why)| *name == last && why.contains("sha256"))
    });
    assert!(
        changed,
        "the changed segment went unnoticed: {:?}",
        gaps(&mut db)
    );
    assert!(!plan(&mut db, &target).0);
}
