//! End-to-end retention: the worker applies a job's policy after each backup, files go only
//! after commit, pins and the newest verified backup survive, expired records stay for audit.

use std::path::PathBuf;
use std::time::Duration;

use backup_mgmt_e2e::cluster::Cluster;

fn completed(db: &mut postgres::Client, job: &str) -> Vec<(i64, String, PathBuf)> {
    db.query(
        "SELECT backup_id, status, backup_file_path FROM backup_management.backup_records
          WHERE label = $1 AND status IN ('completed', 'expired') ORDER BY backup_id",
        &[&job],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), PathBuf::from(r.get::<_, String>(2))))
    .collect()
}

/// Runs the job once more and waits for its new backup to be recorded and retention applied.
fn run_once(cluster: &Cluster, db: &mut postgres::Client, job: &str) -> i64 {
    let before = completed(db, job).len();
    db.execute("SELECT backup_mgmt.run_job_now($1)", &[&job])
        .unwrap();
    let ok = Cluster::wait_for(Duration::from_secs(120), || {
        completed(db, job).len() > before
            && db
                .query_one(
                    "SELECT count(*) FROM enterprise_backup.backup_job_executions e
                       JOIN enterprise_backup.backup_jobs j USING (job_id)
                      WHERE j.job_name = $1 AND e.execution_status = 'running'",
                    &[&job],
                )
                .map(|r| r.get::<_, i64>(0) == 0)
                .unwrap_or(false)
    });
    assert!(ok, "no new backup of {job}\n{}", cluster.log());
    let id = completed(db, job).last().unwrap().0;
    // The worker applies retention after recording, then rewrites the mirror: listed there, done.
    let mirror = cluster.backup_root().join("catalog_mirror.json");
    let listed = Cluster::wait_for(Duration::from_secs(60), || {
        std::fs::read_to_string(&mirror)
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|doc| doc["backups"].as_array().cloned())
            .is_some_and(|b| b.iter().any(|b| b["backup_id"].as_i64() == Some(id)))
    });
    assert!(listed, "backup {id} not in the mirror\n{}", cluster.log());
    id
}

#[test]
fn the_worker_applies_the_policy_and_safety_rules_hold() {
    let cluster = Cluster::start_with_backups(&[]);
    let mut db = cluster.connect("postgres");
    db.batch_execute("CREATE DATABASE appdb").unwrap();
    db.batch_execute(
        "CREATE EXTENSION backup_mgmt;
         INSERT INTO backup_management.retention_policies
             (policy_name, keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly)
         VALUES ('last-2', 2, 0, 0, 0, 0), ('nothing', NULL, 0, 0, 0, 0);
         SELECT backup_mgmt.schedule_backup('nightly', '@yearly', 'appdb', 'full', 'pg_dump', '{\"include_globals\": true}');
         SELECT backup_mgmt.set_retention_policy('nightly', 'last-2');",
    )
    .unwrap();

    let b1 = run_once(&cluster, &mut db, "nightly");
    db.execute("SELECT backup_mgmt.pin_backup($1, 'legal hold #7')", &[&b1])
        .unwrap();
    let b2 = run_once(&cluster, &mut db, "nightly");
    let passed: bool = db
        .query_one("SELECT backup_mgmt.verify_backup_integrity($1)", &[&b2])
        .unwrap()
        .get(0);
    assert!(passed);
    let b3 = run_once(&cluster, &mut db, "nightly");
    let b4 = run_once(&cluster, &mut db, "nightly");
    let b5 = run_once(&cluster, &mut db, "nightly");

    // keep_last 2 keeps b4 and b5; b1 is pinned, b2 the newest verified; b3 went, by itself.
    // The worker expires b3 and deletes its files on commit, after b5's record: wait for that.
    let (b3_file, b3_globals): (String, Option<String>) = db
        .query_one(
            "SELECT backup_file_path, globals_file_path FROM backup_management.backup_records
              WHERE backup_id = $1",
            &[&b3],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    Cluster::wait_for(Duration::from_secs(60), || {
        let expired = completed(&mut db, "nightly")
            .iter()
            .any(|r| r.0 == b3 && r.1 == "expired");
        expired
            && !PathBuf::from(&b3_file).exists()
            && b3_globals.iter().all(|g| !PathBuf::from(g).exists())
    });
    let all = completed(&mut db, "nightly");
    let status = |id: i64| all.iter().find(|r| r.0 == id).unwrap().1.clone();
    let path = |id: i64| all.iter().find(|r| r.0 == id).unwrap().2.clone();
    assert_eq!(
        [b1, b2, b3, b4, b5].map(status),
        [
            "completed",
            "completed",
            "expired",
            "completed",
            "completed"
        ]
        .map(String::from),
        "{}",
        cluster.log()
    );
    assert!(
        !path(b3).exists(),
        "the expired backup's file is still there"
    );
    let globals: Option<String> = db
        .query_one(
            "SELECT globals_file_path FROM backup_management.backup_records WHERE backup_id = $1",
            &[&b3],
        )
        .unwrap()
        .get(0);
    assert!(
        !PathBuf::from(globals.unwrap()).exists(),
        "its globals file is still there"
    );
    for id in [b1, b2, b4, b5] {
        assert!(path(id).exists(), "backup {id} lost its file");
    }
    let reasons: Vec<String> = db
        .query_one(
            "SELECT reasons FROM backup_mgmt.retention_preview('nightly') WHERE backup_id = $1",
            &[&b1],
        )
        .unwrap()
        .get(0);
    assert_eq!(reasons, vec!["pinned: legal hold #7"]);

    // A rolled-back apply removes nothing, not even with a policy that keeps nothing.
    let mut tx = db.transaction().unwrap();
    let n: i64 = tx
        .query_one(
            "SELECT count(*) FROM backup_mgmt.apply_retention('nightly', 'nothing') WHERE action = 'expire'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 2, "b4 and b5");
    tx.rollback().unwrap();
    for id in [b4, b5] {
        assert!(
            path(id).exists(),
            "a rolled-back expiry removed backup {id}"
        );
    }
    assert_eq!(status(b4), "completed");

    // Committed: b4 and b5 go; the pinned and the newest verified backups stay.
    db.query(
        "SELECT * FROM backup_mgmt.apply_retention('nightly', 'nothing')",
        &[],
    )
    .unwrap();
    let all = completed(&mut db, "nightly");
    for (id, want) in [
        (b1, "completed"),
        (b2, "completed"),
        (b4, "expired"),
        (b5, "expired"),
    ] {
        let row = all.iter().find(|r| r.0 == id).unwrap();
        assert_eq!(row.1, want, "backup {id}");
        assert_eq!(row.2.exists(), want == "completed", "backup {id}'s file");
    }
    // Expired records stay for audit, with the reasons.
    let because: Vec<String> = db
        .query_one(
            "SELECT ARRAY(SELECT jsonb_array_elements_text(annotations->'expired_because'))
               FROM backup_management.backup_records WHERE backup_id = $1",
            &[&b5],
        )
        .unwrap()
        .get(0);
    assert_eq!(because, vec!["not kept by policy \"nothing\""]);
    // A policy in use cannot be dropped.
    assert!(db
        .execute(
            "DELETE FROM backup_management.retention_policies WHERE policy_name = 'last-2'",
            &[]
        )
        .is_err());
}

/// Retention by reference: two records naming one file (a script that rewrites `latest.dump`,
/// recorded twice): expiring the older record must not delete the file the newer, kept and
/// verified one still names.
#[test]
fn a_file_still_named_by_a_kept_record_is_not_deleted() {
    let cluster = Cluster::start_with_backups(&[]);
    let mut db = cluster.connect("postgres");
    db.batch_execute("CREATE DATABASE appdb").unwrap();
    db.batch_execute(
        "CREATE EXTENSION backup_mgmt;
         INSERT INTO backup_management.retention_policies
             (policy_name, keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly)
         VALUES ('last-1', 1, 0, 0, 0, 0);
         SELECT backup_mgmt.schedule_backup('shared', '@yearly', 'appdb', 'full', 'pg_dump', '{}');
         SELECT backup_mgmt.set_retention_policy('shared', 'last-1');",
    )
    .unwrap();
    let older = run_once(&cluster, &mut db, "shared");
    let file = completed(&mut db, "shared").last().unwrap().2.clone();
    assert!(file.is_file(), "{file:?}");
    // A newer record of the same job naming the same file, verified.
    let newer: i64 = db
        .query_one(
            "INSERT INTO backup_management.backup_records
                 (database_name, backup_type, backup_method, backup_file_path, backup_size, start_time,
                  end_time, duration, status, checksum, label, annotations, origin)
             SELECT database_name, backup_type, backup_method, backup_file_path, backup_size,
                    now(), now(), '1 second', 'completed', checksum, label, annotations, 'worker'
               FROM backup_management.backup_records WHERE backup_id = $1
             RETURNING backup_id",
            &[&older],
        )
        .unwrap()
        .get(0);
    db.execute(
        "INSERT INTO backup_management.backup_verifications (backup_id, verification_type, verification_status)
         VALUES ($1, 'checksum', 'passed')",
        &[&newer],
    )
    .unwrap();
    // The preview says the file stays, and why.
    let why: Vec<String> = db
        .query_one(
            "SELECT reasons FROM backup_mgmt.retention_preview('shared') WHERE backup_id = $1",
            &[&older],
        )
        .unwrap()
        .get(0);
    assert!(
        why.iter()
            .any(|r| r.contains("stays") && r.contains(&format!("backup {newer}"))),
        "{why:?}"
    );
    let verdicts: Vec<(i64, String)> = db
        .query(
            "SELECT backup_id, action FROM backup_mgmt.apply_retention('shared') ORDER BY backup_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        verdicts,
        vec![(older, "expire".to_owned()), (newer, "keep".to_owned())]
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        file.is_file(),
        "the file of kept backup {newer} was deleted with expired backup {older}"
    );
}
