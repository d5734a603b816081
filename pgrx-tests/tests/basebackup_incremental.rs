//! Block-level incremental pg_basebackup (PostgreSQL 17+): the worker takes a full backup,
//! incrementals and a differential with `pg_basebackup --incremental` (the parent's manifest
//! read out of its stored tar, checked against its sha256), chains them in the catalog, restore
//! tests them through `pg_combinebackup`, recovers a chain of three to a point with a recipe,
//! never builds on a damaged parent (finding one records it as failed), and keeps the chain whole
//! under retention.  On an older
//! server (and with summarize_wal off) the job is refused with the reason.

use std::time::Duration;

use backup_mgmt_e2e::cluster::Cluster;
use backup_mgmt_e2e::jobs::{pgbench_fingerprint as fingerprint, switch_and_wait_ingested};

/// Runs job `job` now and waits for its backup to end; returns its id and status.
fn run_job(cluster: &Cluster, db: &mut postgres::Client, job: &str) -> (i64, String) {
    let before: i64 = db
        .query_one(
            "SELECT coalesce(max(backup_id), 0) FROM backup_management.backup_records",
            &[],
        )
        .unwrap()
        .get(0);
    db.execute("SELECT backup_mgmt.run_job_now($1)", &[&job])
        .unwrap();
    let mut found = None;
    let done = Cluster::wait_for(Duration::from_secs(180), || {
        found = db
            .query_opt(
                "SELECT backup_id, status FROM backup_management.backup_records
                  WHERE label = $1 AND backup_id > $2 AND status <> 'running'",
                &[&job, &before],
            )
            .ok()
            .flatten()
            .map(|r| (r.get(0), r.get(1)));
        found.is_some()
    });
    assert!(done, "job {job} did not finish\n{}", cluster.log());
    found.unwrap()
}

fn completed(cluster: &Cluster, db: &mut postgres::Client, job: &str) -> i64 {
    let (id, status) = run_job(cluster, db, job);
    let error: Option<String> = db
        .query_one(
            "SELECT error_message FROM backup_management.backup_records WHERE backup_id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "completed", "{error:?}\n{}", cluster.log());
    id
}

/// (type, parent, requested type, size) of a backup.
fn chain_row(db: &mut postgres::Client, id: i64) -> (String, Option<i64>, Option<String>, i64) {
    db.query_one(
        "SELECT backup_type, parent_backup_id, annotations->>'requested_type', backup_size
           FROM backup_management.backup_records WHERE backup_id = $1",
        &[&id],
    )
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .unwrap()
}

/// The newest restore test of `id`: its status and what it recorded.
fn restore_test(db: &mut postgres::Client, id: i64) -> (String, String) {
    let status: String = db
        .query_one(
            "SELECT test_status FROM backup_mgmt.test_backup_restore($1)",
            &[&id],
        )
        .unwrap()
        .get(0);
    let detail: String = db
        .query_one(
            "SELECT verification_result::text FROM backup_management.backup_verifications
              WHERE backup_id = $1 AND verification_type = 'restore_test'
              ORDER BY verification_id DESC LIMIT 1",
            &[&id],
        )
        .unwrap()
        .get(0);
    (status, detail)
}

fn schedule(db: &mut postgres::Client, job: &str, kind: &str) -> Result<u64, postgres::Error> {
    db.execute(
        "SELECT backup_mgmt.schedule_backup($1, '@yearly', 'postgres', $2, 'pg_basebackup',
                '{\"fast_checkpoint\": true}')",
        &[&job, &kind],
    )
}

fn set_summarize_wal(db: &mut postgres::Client, on: bool) {
    db.batch_execute(&format!(
        "ALTER SYSTEM SET summarize_wal = {}",
        if on { "on" } else { "off" }
    ))
    .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    let want = if on { "on" } else { "off" };
    assert!(Cluster::wait_for(Duration::from_secs(10), || {
        db.query_one("SELECT current_setting('summarize_wal')", &[])
            .map(|r| r.get::<_, String>(0) == want)
            .unwrap_or(false)
    }));
}

#[test]
fn block_level_incrementals_chain_restore_and_recover() {
    let cluster =
        Cluster::start_with_backups(&["archive_mode = on", "archive_library = 'backup_mgmt'"]);
    let mut db = cluster.connect("postgres");
    db.batch_execute("CREATE EXTENSION backup_mgmt").unwrap();
    let version: i32 = db
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .unwrap()
        .get(0);
    if version < 170000 {
        // No WAL summaries before 17: refused when scheduled, with the way out.
        let err = schedule(&mut db, "bincr", "incremental").unwrap_err();
        let e = err.as_db_error().expect("a database error");
        assert_eq!(e.code().code(), "0A000", "{e:?}");
        assert!(e.message().contains("PostgreSQL 17"), "{e:?}");
        assert!(e.hint().unwrap_or("").contains("native_physical"), "{e:?}");
        // A full one is still fine.
        schedule(&mut db, "bfull", "full").unwrap();
        return;
    }

    // summarize_wal off: refused when scheduled, and the hint says what to set.
    let err = schedule(&mut db, "bincr", "incremental").unwrap_err();
    let e = err.as_db_error().expect("a database error");
    assert_eq!(e.code().code(), "55000", "{e:?}");
    assert!(e.message().contains("summarize_wal"), "{e:?}");
    assert!(
        e.hint().unwrap_or("").contains("summarize_wal = on"),
        "{e:?}"
    );

    set_summarize_wal(&mut db, true);
    cluster.run_client("pgbench", &["-i", "-q", "-s", "4", "postgres"]);
    for (job, kind) in [
        ("bfull", "full"),
        ("bincr", "incremental"),
        ("bdiff", "differential"),
    ] {
        schedule(&mut db, job, kind).unwrap();
    }

    // Nothing to build on yet: the incremental is taken as a full, and says so.
    let first = completed(&cluster, &mut db, "bincr");
    let (kind, parent, asked, _) = chain_row(&mut db, first);
    assert_eq!(
        (kind.as_str(), parent, asked.as_deref()),
        ("full", None, Some("incremental"))
    );

    let full = completed(&cluster, &mut db, "bfull");
    let at_full = fingerprint(&mut db);
    cluster.run_client("pgbench", &["-n", "-c", "2", "-t", "300", "postgres"]);
    let i1 = completed(&cluster, &mut db, "bincr");
    let at_i1 = fingerprint(&mut db);
    cluster.run_client("pgbench", &["-n", "-c", "2", "-t", "300", "postgres"]);
    let i2 = completed(&cluster, &mut db, "bincr");
    let at_i2 = fingerprint(&mut db);
    // The recovery target: after i2, before the differential.
    cluster.run_client("pgbench", &["-n", "-c", "2", "-t", "100", "postgres"]);
    let at_target = fingerprint(&mut db);
    let target: String = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap()
        .get(0);
    cluster.run_client("pgbench", &["-n", "-c", "2", "-t", "300", "postgres"]);
    let diff = completed(&cluster, &mut db, "bdiff");
    let at_diff = fingerprint(&mut db);
    assert!(at_full != at_i1 && at_i1 != at_i2 && at_i2 != at_target && at_target != at_diff);

    // The chain, as the catalog records it; an incremental holds the changed blocks only.
    let full_size = chain_row(&mut db, full).3;
    for (id, kind, parent) in [
        (full, "full", None),
        (i1, "incremental", Some(full)),
        (i2, "incremental", Some(i1)),
        (diff, "differential", Some(full)),
    ] {
        let (k, p, _, size) = chain_row(&mut db, id);
        assert_eq!(
            (k.as_str(), p),
            (kind, parent),
            "backup {id}\n{}",
            cluster.log()
        );
        if parent.is_some() {
            assert!(size < full_size / 2, "{kind} {id}: {size} of {full_size}");
        }
    }

    // Every member restores through pg_combinebackup (each tar against its sha256), passes
    // pg_verifybackup, and starts.
    for id in [full, i1, i2, diff] {
        let (status, detail) = restore_test(&mut db, id);
        assert_eq!(status, "passed", "backup {id}: {detail}\n{}", cluster.log());
        assert!(db
            .query_one("SELECT backup_mgmt.verify_backup_integrity($1)", &[&id])
            .unwrap()
            .get::<_, bool>(0));
    }

    // Point-in-time recovery from the chain of three, with a recipe and standard tools.
    // Everything up to the target (and past it) archived and ingested.
    switch_and_wait_ingested(&cluster, &mut db);
    let plan = db
        .query_one(
            "SELECT reachable, reason, base_backup_id, recipe FROM backup_mgmt.plan_recovery_lsn($1::text::pg_lsn)",
            &[&target],
        )
        .unwrap();
    let (reachable, reason): (bool, String) = (plan.get(0), plan.get(1));
    assert!(reachable, "{reason}");
    assert_eq!(plan.get::<_, Option<i64>>(2), Some(i2), "{reason}");
    let recipe: String = plan.get(3);
    assert!(
        recipe.contains("pg_combinebackup") && recipe.contains("backups of the chain"),
        "{recipe}"
    );
    let (restored, mut rdb, said) =
        Cluster::restored_and_promoted(&recipe, Duration::from_secs(120));
    assert_eq!(
        fingerprint(&mut rdb),
        at_target,
        "the chain recovered to other data\n{said}\n{}",
        restored.log()
    );
    drop(rdb);
    drop(restored);

    // A damaged member: restoring anything built on it fails and names it, and the next
    // incremental does not build on it (nor on what was built on it).
    let i1_path: String = db
        .query_one(
            "SELECT backup_file_path FROM backup_management.backup_records WHERE backup_id = $1",
            &[&i1],
        )
        .unwrap()
        .get(0);
    let mut bytes = std::fs::read(&i1_path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&i1_path, &bytes).unwrap();
    let (status, detail) = restore_test(&mut db, i2);
    assert_eq!(status, "failed", "{detail}");
    assert!(
        detail.contains(&format!("backup {i1} of the chain")) && detail.contains("sha256"),
        "{detail}"
    );
    assert!(!db
        .query_one("SELECT backup_mgmt.verify_backup_integrity($1)", &[&i1])
        .unwrap()
        .get::<_, bool>(0));
    // The newest backup damaged too: the next incremental, which would build on it, fails and
    // names it, and that is recorded as a failed verification of it, so the run after builds on
    // the full (the incrementals and the differential are all ruled out now).
    let diff_path: String = db
        .query_one(
            "SELECT backup_file_path FROM backup_management.backup_records WHERE backup_id = $1",
            &[&diff],
        )
        .unwrap()
        .get(0);
    let mut bytes = std::fs::read(&diff_path).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x20;
    std::fs::write(&diff_path, &bytes).unwrap();
    let (failed_run, status) = run_job(&cluster, &mut db, "bincr");
    assert_eq!(status, "failed");
    let error: String = db
        .query_one(
            "SELECT error_message FROM backup_management.backup_records WHERE backup_id = $1",
            &[&failed_run],
        )
        .unwrap()
        .get(0);
    assert!(
        error.contains(&format!("parent backup {diff}")) && error.contains("sha256"),
        "{error}"
    );
    // Recorded by the worker right after the failed run (its own transaction).
    let mut recorded = String::new();
    let seen = Cluster::wait_for(Duration::from_secs(30), || {
        recorded = db
            .query_opt(
                // An earlier check of this backup has no reason (it passed): coalesce so that
                // reading it while the failed one is not yet recorded does not panic.
                "SELECT verification_status || ' ' || coalesce(verification_result->>'reason', '')
                   FROM backup_management.backup_verifications
                  WHERE backup_id = $1 AND verification_type = 'checksum'
                  ORDER BY verification_id DESC LIMIT 1",
                &[&diff],
            )
            .ok()
            .flatten()
            .map(|r| r.get(0))
            .unwrap_or_default();
        recorded == "failed checksum_mismatch"
    });
    assert!(seen, "{recorded}\n{}", cluster.log());
    let i3 = completed(&cluster, &mut db, "bincr");
    let (kind, parent, _, _) = chain_row(&mut db, i3);
    assert_eq!((kind.as_str(), parent), ("incremental", Some(full)));
    let (status, detail) = restore_test(&mut db, i3);
    assert_eq!(status, "passed", "{detail}");

    // The full cannot go while what builds on it is kept, under any policy.
    db.batch_execute(
        "INSERT INTO backup_management.retention_policies
             (policy_name, keep_daily, keep_weekly, keep_monthly, keep_yearly)
         VALUES ('nothing', 0, 0, 0, 0);",
    )
    .unwrap();
    let verdict: (String, String) = db
        .query_one(
            "SELECT action, array_to_string(reasons, '; ') FROM backup_mgmt.retention_preview('bfull', 'nothing')
              WHERE backup_id = $1",
            &[&full],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(verdict.0, "keep", "{verdict:?}");
    assert!(
        verdict.1.contains("parent of retained backup"),
        "{verdict:?}"
    );
    let err = db
        .execute(
            "DELETE FROM backup_management.backup_records WHERE backup_id = $1",
            &[&full],
        )
        .unwrap_err();
    assert_eq!(err.as_db_error().unwrap().code().code(), "2BP01");

    // summarize_wal turned off later: the run fails with the reason, nothing is taken.
    set_summarize_wal(&mut db, false);
    // The worker reads the change at its next loop.
    std::thread::sleep(Duration::from_secs(2));
    let before: i64 = db
        .query_one("SELECT count(*) FROM backup_management.backup_records", &[])
        .unwrap()
        .get(0);
    let last_run: i64 = db
        .query_one(
            "SELECT coalesce(max(execution_id), 0) FROM enterprise_backup.backup_job_executions",
            &[],
        )
        .unwrap()
        .get(0);
    db.execute("SELECT backup_mgmt.run_job_now('bincr')", &[])
        .unwrap();
    let mut said = String::new();
    let failed = Cluster::wait_for(Duration::from_secs(60), || {
        said = db
            .query_opt(
                "SELECT e.error_message FROM enterprise_backup.backup_job_executions e
                   JOIN enterprise_backup.backup_jobs j USING (job_id)
                  WHERE j.job_name = 'bincr' AND e.execution_status = 'failed' AND e.execution_id > $1
                  ORDER BY e.execution_id DESC LIMIT 1",
                &[&last_run],
            )
            .ok()
            .flatten()
            .and_then(|r| r.get::<_, Option<String>>(0))
            .unwrap_or_default();
        !said.is_empty()
    });
    assert!(failed, "no failed run\n{}", cluster.log());
    assert!(said.contains("summarize_wal is off"), "{said}");
    let after: i64 = db
        .query_one("SELECT count(*) FROM backup_management.backup_records", &[])
        .unwrap()
        .get(0);
    assert_eq!(before, after);
}
