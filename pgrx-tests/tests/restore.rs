//! End-to-end: restore tests and disaster-recovery drills of the worker's backups, for real.

use std::path::PathBuf;
use std::time::Duration;

use backup_mgmt_e2e::cluster::{sha256sum, Cluster};
use backup_mgmt_e2e::jobs::{cluster_with_appdb, executions, files_under, run_now, wait_records};

/// Acceptance (verification issue): a restore test really restores a good dump (row counts equal
/// those captured when it was written) and records `failed` for a corrupted one.
#[test]
fn restore_test_restores_real_dumps_and_catches_corruption() {
    let (cluster, mut db) = cluster_with_appdb();
    cluster
        .connect("appdb")
        .batch_execute(
            "CREATE SCHEMA sales; CREATE TABLE sales.\"Empty Table\" (x int);
             CREATE TABLE sales.lines AS SELECT g AS id FROM generate_series(1, 777) g;",
        )
        .unwrap();
    run_now(&mut db, "zst", "appdb", "pg_dump", "{}");
    run_now(
        &mut db,
        "raw",
        "appdb",
        "pg_dump",
        r#"{"compression": "none"}"#,
    );
    let zst = &wait_records(&cluster, &mut db, "zst", "completed", 1, 60)[0];
    let raw = &wait_records(&cluster, &mut db, "raw", "completed", 1, 60)[0];
    run_now(
        &mut db,
        "dirz",
        "appdb",
        "pg_dump_directory",
        r#"{"parallel_jobs": 2}"#,
    );
    let dirz = &wait_records(&cluster, &mut db, "dirz", "completed", 1, 60)[0];
    let facts: String = db
        .query_one(
            "SELECT annotations->>'row_counts' FROM backup_management.backup_records WHERE backup_id = $1",
            &[&zst.id],
        )
        .unwrap()
        .get(0);
    let dir_facts: String = db
        .query_one(
            "SELECT coalesce(annotations->>'row_counts', annotations::text) FROM backup_management.backup_records WHERE backup_id = $1",
            &[&dirz.id],
        )
        .unwrap()
        .get(0);
    for fact in [
        "\"public.orders\": 20000",
        "\"sales.lines\": 777",
        "\"sales.Empty Table\": 0",
    ] {
        assert!(facts.contains(fact), "{fact} not in {facts}");
        assert!(dir_facts.contains(fact), "{fact} not in {dir_facts}");
    }

    let test = |db: &mut postgres::Client, sql: &str, id: i64| -> (String, bool, bool) {
        let row = db.query_one(sql, &[&id]).unwrap();
        let time: Option<String> = row.get(1);
        let result = (row.get(0), time.is_some(), row.get(2));
        if result.0 == "failed" {
            // What the restore test recorded, for the assertion that follows.
            let why: String = db
                .query_one(
                    "SELECT verification_result::text FROM backup_management.backup_verifications
                      WHERE backup_id = $1 ORDER BY verification_id DESC LIMIT 1",
                    &[&id],
                )
                .unwrap()
                .get(0);
            eprintln!("restore test of backup {id} failed: {why}");
        }
        result
    };
    let plain = "SELECT test_status, restore_time::text, data_verification FROM backup_mgmt.test_backup_restore($1)";
    assert_eq!(test(&mut db, plain, zst.id), ("passed".into(), true, true));
    assert_eq!(test(&mut db, plain, raw.id), ("passed".into(), true, true));
    assert_eq!(test(&mut db, plain, dirz.id), ("passed".into(), true, true));
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'backup_mgmt_restore_%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "scratch databases are dropped");

    // Kept on request, and then it really holds the data.
    let kept = "SELECT test_status, restore_time::text, data_verification
                  FROM backup_mgmt.test_backup_restore($1, 'restored_copy', keep_database => true)";
    assert_eq!(test(&mut db, kept, zst.id), ("passed".into(), true, true));
    let n: i64 = cluster
        .connect("restored_copy")
        .query_one("SELECT count(*) FROM orders", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 20000);
    // An existing database is never restored into.
    let e = db
        .query_one(
            "SELECT * FROM backup_mgmt.test_backup_restore($1, 'restored_copy')",
            &[&zst.id],
        )
        .expect_err("restored into an existing database");
    assert_eq!(e.code().map(|c| c.code()), Some("42P04"), "{e}");
    db.batch_execute("DROP DATABASE restored_copy").unwrap();

    // Corruption caught by the checksum: recorded failed at the integrity stage.
    let mut bytes = std::fs::read(&raw.path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&raw.path, &bytes).unwrap();
    assert_eq!(
        test(&mut db, plain, raw.id),
        ("failed".into(), false, false)
    );
    // Corruption that happened before the checksum was taken: only a real restore finds it.
    db.execute(
        "UPDATE backup_management.backup_records SET checksum = $2 WHERE backup_id = $1",
        &[&raw.id, &sha256sum(&raw.path)],
    )
    .unwrap();
    let (status, _, verified) = test(&mut db, plain, raw.id);
    assert_eq!((status.as_str(), verified), ("failed", false));
    let stages: Vec<String> = db
        .query(
            "SELECT verification_status || '/' || (verification_result->>'stage')
               FROM backup_management.backup_verifications
              WHERE backup_id = $1 AND verification_type = 'restore_test' ORDER BY verification_id",
            &[&raw.id],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stages[0], "passed/data_verification");
    assert_eq!(stages[1], "failed/integrity");
    assert!(stages[2].starts_with("failed/"), "{stages:?}");
    // The server is fine.
    let one: i32 = db.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
}

/// Acceptance (verification issue): an end-to-end drill records measured RTO and RPO; the status
/// view and the Prometheus metrics show them; a plan with no backup is a failed drill.
#[test]
fn drill_records_measured_rto_and_rpo() {
    let (cluster, mut db) = cluster_with_appdb();
    db.batch_execute(
        "INSERT INTO disaster_recovery.recovery_plans
             (plan_name, database_name, rto_minutes, rpo_minutes, backup_strategy, recovery_procedure)
         VALUES ('appdb-dr', 'appdb', 30, 60, 'nightly pg_dump', 'restore the newest dump'),
                ('strict', 'appdb', 30, 0, 'nightly pg_dump', 'restore the newest dump'),
                ('nothing', 'postgres', 30, 60, 'none yet', 'none')",
    )
    .unwrap();
    run_now(&mut db, "dr", "appdb", "pg_dump", "{}");
    wait_records(&cluster, &mut db, "dr", "completed", 1, 60);

    let row = db
        .query_one(
            "SELECT drill_id, status, extract(epoch FROM recovery_time)::float8,
                    extract(epoch FROM data_loss_window)::float8, rto_met, rpo_met
               FROM backup_mgmt.run_recovery_drill('appdb-dr')",
            &[],
        )
        .unwrap();
    let (status, rto, rpo): (String, f64, f64) = (row.get(1), row.get(2), row.get(3));
    assert_eq!(status, "success");
    assert!(rto > 0.0 && rto < 1800.0, "{rto}");
    assert!(rpo > 0.0 && rpo < 3600.0, "{rpo}");
    assert!(row.get::<_, bool>(4) && row.get::<_, bool>(5));
    let recorded: (String, i32, i32) = db
        .query_one(
            "SELECT status, recovery_time_minutes, data_loss_minutes
               FROM disaster_recovery.recovery_drills WHERE drill_id = $1",
            &[&row.get::<_, i64>(0)],
        )
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!(recorded, ("success".to_owned(), 1, 1));

    // An RPO of 0 cannot be met by a backup: the restore works, the drill is partial.
    let strict: (String, bool) = db
        .query_one(
            "SELECT status, rpo_met FROM backup_mgmt.run_recovery_drill('strict')",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(strict, ("partial".to_owned(), false));
    // Nothing to restore: a failed drill, recorded with the reason.
    let nothing: String = db
        .query_one(
            "SELECT status FROM backup_mgmt.run_recovery_drill('nothing')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(nothing, "failed");
    let issues: String = db
        .query_one(
            "SELECT issues FROM disaster_recovery.recovery_drills d
               JOIN disaster_recovery.recovery_plans p USING (plan_id) WHERE p.plan_name = 'nothing'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(issues.contains("no completed pg_dump backup"), "{issues}");
    let e = db
        .query_one("SELECT * FROM backup_mgmt.run_recovery_drill('nope')", &[])
        .expect_err("unknown plan");
    assert_eq!(e.code().map(|c| c.code()), Some("42704"));

    // The live view: verified backup, exposure within the RPO, measured RTO within the RTO.
    let view: Vec<(String, String, String)> = db
        .query(
            "SELECT plan_name, rpo_status, rto_status FROM backup_mgmt.recovery_status ORDER BY plan_name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        view,
        vec![
            ("appdb-dr".into(), "ok".into(), "ok".into()),
            ("nothing".into(), "breached".into(), "unknown".into()),
            ("strict".into(), "breached".into(), "ok".into()),
        ]
    );
    let text: String = db
        .query_one("SELECT backup_mgmt.metrics()", &[])
        .unwrap()
        .get(0);
    for needle in [
        "# TYPE backup_mgmt_last_success_timestamp_seconds gauge",
        "backup_mgmt_last_backup_size_bytes{database=\"appdb\"}",
        "backup_mgmt_last_verification_passed{database=\"appdb\"} 1",
        "backup_mgmt_rpo_breached{plan=\"appdb-dr\",database=\"appdb\"} 0",
        "backup_mgmt_rpo_breached{plan=\"strict\",database=\"appdb\"} 1",
        "backup_mgmt_last_drill_recovery_seconds{plan=\"appdb-dr\",database=\"appdb\"}",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }

    // Drills as jobs: run by a worker of their own, recorded like any run.
    db.execute(
        "SELECT backup_mgmt.schedule_drill('weekly-drill', '0 3 * * 0', 'appdb-dr')",
        &[],
    )
    .unwrap();
    db.execute("SELECT backup_mgmt.run_job_now('weekly-drill')", &[])
        .unwrap();
    let drilled = Cluster::wait_for(Duration::from_secs(60), || {
        executions(&mut db, "weekly-drill")
            .iter()
            .any(|(_, status)| status == "completed")
    });
    assert!(
        drilled,
        "{:?}\n{}",
        executions(&mut db, "weekly-drill"),
        cluster.log()
    );
    let drills: i64 = db
        .query_one(
            "SELECT count(*) FROM disaster_recovery.recovery_drills d
               JOIN disaster_recovery.recovery_plans p USING (plan_id)
              WHERE p.plan_name = 'appdb-dr' AND d.status = 'success'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(drills, 2);
    let e = db
        .execute(
            "SELECT backup_mgmt.schedule_drill('x', '@daily', 'no-such-plan')",
            &[],
        )
        .expect_err("unknown plan");
    assert_eq!(e.code().map(|c| c.code()), Some("42704"));
}

/// A pg_basebackup backup is restore-tested for real: extracted, checked by pg_verifybackup,
/// started as a temporary cluster, every database queried, stopped and removed.
#[test]
fn physical_restore_test_starts_the_backup_as_a_cluster() {
    let (cluster, mut db) = cluster_with_appdb();
    run_now(
        &mut db,
        "base",
        "appdb",
        "pg_basebackup",
        r#"{"fast_checkpoint": true}"#,
    );
    let b = &wait_records(&cluster, &mut db, "base", "completed", 1, 120)[0];
    let row = db
        .query_one(
            "SELECT test_status, restore_time IS NOT NULL, data_verification
               FROM backup_mgmt.test_backup_restore($1)",
            &[&b.id],
        )
        .unwrap();
    let got: (String, bool, bool) = (row.get(0), row.get(1), row.get(2));
    let detail: String = db
        .query_one(
            "SELECT verification_result::text FROM backup_management.backup_verifications
              WHERE backup_id = $1 AND verification_type = 'restore_test' ORDER BY verification_id DESC LIMIT 1",
            &[&b.id],
        )
        .unwrap()
        .get(0);
    assert_eq!(
        got,
        ("passed".into(), true, true),
        "{detail}\n{}",
        cluster.log()
    );
    assert!(detail.contains("\"databases_checked\": 3"), "{detail}");
    let verifybackup: String = db
        .query_one(
            "SELECT verification_status FROM backup_management.backup_verifications
              WHERE backup_id = $1 AND verification_type = 'pg_verifybackup'",
            &[&b.id],
        )
        .unwrap()
        .get(0);
    assert_eq!(verifybackup, "passed");
    // verify_backup_integrity() also runs pg_verifybackup on a base backup.
    let ok: bool = db
        .query_one("SELECT backup_mgmt.verify_backup_integrity($1)", &[&b.id])
        .unwrap()
        .get(0);
    assert!(ok);
    let runs: i64 = db
        .query_one(
            "SELECT count(*) FROM backup_management.backup_verifications
              WHERE backup_id = $1 AND verification_type = 'pg_verifybackup' AND verification_status = 'passed'",
            &[&b.id],
        )
        .unwrap()
        .get(0);
    assert_eq!(runs, 2);
    // The scratch cluster is gone, and no backup_mgmt worker ever ran in it.
    let leftovers: Vec<PathBuf> = files_under(&cluster.backup_root().join(".backup_mgmt_restore"))
        .into_iter()
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Corrupted before its checksum was taken: the restore test fails, the server is fine.
    let mut bytes = std::fs::read(&b.path).unwrap();
    let at = bytes.len() / 3;
    for byte in &mut bytes[at..at + 64] {
        *byte ^= 0x5a;
    }
    std::fs::write(&b.path, &bytes).unwrap();
    db.execute(
        "UPDATE backup_management.backup_records SET checksum = $2 WHERE backup_id = $1",
        &[&b.id, &sha256sum(&b.path)],
    )
    .unwrap();
    let status: String = db
        .query_one(
            "SELECT test_status FROM backup_mgmt.test_backup_restore($1)",
            &[&b.id],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "failed");
    let one: i32 = db.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
}

/// Where pg_hba.conf lets only the OS user's own role in over the socket (peer, as Debian ships
/// it) and asks everyone else for a SCRAM password over TCP, a logical restore test's throwaway
/// role logs in with its password over 127.0.0.1, and the restore is verified as usual.
#[test]
fn logical_restore_tests_log_in_with_a_password_where_pg_hba_asks_for_one() {
    let (mut cluster, mut db) = cluster_with_appdb();
    run_now(&mut db, "nightly", "appdb", "pg_dump", "{}");
    let dump = &wait_records(&cluster, &mut db, "nightly", "completed", 1, 60)[0];
    drop(db);
    std::fs::write(
        cluster.data_dir().join("pg_hba.conf"),
        "local all postgres trust\nlocal all all peer\nhost all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    cluster.append_conf("listen_addresses = '127.0.0.1'");
    cluster.pg_ctl_stop("fast");
    cluster.pg_ctl_start();
    let mut db = cluster.connect("postgres");
    let (status, verified): (String, bool) = db
        .query_one(
            "SELECT test_status, data_verification FROM backup_mgmt.test_backup_restore($1)",
            &[&dump.id],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(
        (status.as_str(), verified),
        ("passed", true),
        "{}",
        cluster.log()
    );
    // It was refused on the socket first, and its password never reached the log.
    let log = cluster.log();
    assert!(
        log.contains("Peer authentication failed for user \"backup_mgmt_restorer_"),
        "{log}"
    );
    assert!(!log.contains("PASSWORD 'SCRAM"), "{log}");
}
