//! End-to-end native physical backups: the worker takes a full backup, pgbench writes, an
//! incremental, more writes, a differential.  Each restores (its recipe, run with standard
//! tools into a new data directory) to exactly the data of its point, passes
//! `test_backup_restore`, and the full cannot be deleted while its children are retained.  A
//! page damaged on disk is reported with its relation.

use std::time::Duration;

use backup_mgmt_e2e::cluster::Cluster;
use backup_mgmt_e2e::jobs::run_job;

/// A fingerprint of every pgbench table's contents.
fn fingerprint(db: &mut postgres::Client) -> String {
    db.query_one(
        "SELECT concat_ws(' ',
            (SELECT md5(string_agg(a::text, ',' ORDER BY aid)) FROM pgbench_accounts a),
            (SELECT md5(string_agg(b::text, ',' ORDER BY bid)) FROM pgbench_branches b),
            (SELECT md5(string_agg(t::text, ',' ORDER BY tid)) FROM pgbench_tellers t),
            (SELECT md5(coalesce(string_agg(h::text, ',' ORDER BY h::text), '')) FROM pgbench_history h),
            (SELECT count(*) FROM pgbench_history),
            (SELECT md5(string_agg(s::text, ',' ORDER BY id)) FROM spaced s))",
        &[],
    )
    .unwrap()
    .get(0)
}

/// `test_backup_restore(id)` passes (the recorded result is shown when it does not).
fn assert_restore_test_passes(db: &mut postgres::Client, id: i64) {
    let status: String = db
        .query_one(
            "SELECT test_status FROM backup_mgmt.test_backup_restore($1)",
            &[&id],
        )
        .unwrap()
        .get(0);
    let detail: Option<String> = db
        .query_one(
            "SELECT verification_result::text FROM backup_management.backup_verifications
              WHERE backup_id = $1 AND verification_type = 'restore_test'
              ORDER BY verification_id DESC LIMIT 1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "passed", "backup {id}: {detail:?}");
}

/// pgbench writes, and some rows of the table in the other tablespace change.
fn pgbench(cluster: &Cluster, db: &mut postgres::Client, transactions: &str) {
    cluster.run_client(
        "pgbench",
        &["-n", "-c", "2", "-t", transactions, "postgres"],
    );
    db.batch_execute("UPDATE spaced SET v = v + 1 WHERE id % 7 = 0")
        .unwrap();
}

#[test]
fn full_incremental_differential_restore_exactly_and_chain_is_protected() {
    let cluster = Cluster::start_with_backups_initdb(&["--data-checksums"], &[]);
    let mut db = cluster.connect("postgres");
    db.batch_execute("CREATE EXTENSION backup_mgmt").unwrap();
    cluster.run_client("pgbench", &["-i", "-q", "-s", "4", "postgres"]);
    // A table in a tablespace of its own: copied through its pg_tblspc link, restored in place.
    let ts_dir = cluster.dir().join("tablespace");
    let made = cluster
        .server_command("/bin/mkdir")
        .arg(&ts_dir)
        .output()
        .unwrap();
    assert!(made.status.success());
    db.batch_execute(&format!(
        "CREATE TABLESPACE extra LOCATION '{}'",
        ts_dir.display()
    ))
    .unwrap();
    db.batch_execute(
        "CREATE TABLE spaced (id int PRIMARY KEY, v int) TABLESPACE extra;
         INSERT INTO spaced SELECT g, 0 FROM generate_series(1, 10000) g;",
    )
    .unwrap();
    for (job, kind) in [
        ("nfull", "full"),
        ("nincr", "incremental"),
        ("ndiff", "differential"),
    ] {
        db.execute(
            "SELECT backup_mgmt.schedule_backup($1, '@yearly', 'postgres', $2, 'native_physical',
                    '{\"fast_checkpoint\": true}')",
            &[&job, &kind],
        )
        .unwrap();
    }

    // An incremental with nothing to build on is taken as a full one, and says so.
    let first = run_job(&cluster, &mut db, "nincr");
    let (kind, asked, parent): (String, Option<String>, Option<i64>) = db
        .query_one(
            "SELECT backup_type, annotations->>'requested_type', parent_backup_id
               FROM backup_management.backup_records WHERE backup_id = $1",
            &[&first],
        )
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!(
        (kind.as_str(), asked.as_deref(), parent),
        ("full", Some("incremental"), None)
    );

    // Sleep past the second of the previous backup's start: files written in it are always
    // copied again (the mtime rule), so this makes the test see real references.
    std::thread::sleep(Duration::from_millis(1100));
    let full = run_job(&cluster, &mut db, "nfull");
    let at_full = fingerprint(&mut db);
    std::thread::sleep(Duration::from_millis(1100));
    pgbench(&cluster, &mut db, "300");
    let at_incr = fingerprint(&mut db);
    assert_ne!(at_full, at_incr);
    let incr = run_job(&cluster, &mut db, "nincr");
    std::thread::sleep(Duration::from_millis(1100));
    pgbench(&cluster, &mut db, "300");
    let at_diff = fingerprint(&mut db);
    let diff = run_job(&cluster, &mut db, "ndiff");
    pgbench(&cluster, &mut db, "100");
    assert_ne!(fingerprint(&mut db), at_diff);

    // The chain, as the catalog records it.
    for (id, kind, parent) in [
        (full, "full", None),
        (incr, "incremental", Some(full)),
        (diff, "differential", Some(full)),
    ] {
        let row = db
            .query_one(
                "SELECT backup_type, parent_backup_id, (annotations->>'files_copied')::int,
                        (annotations->>'files_referenced')::int, backup_size,
                        (annotations->>'bytes_logical')::bigint, start_lsn IS NOT NULL,
                        jsonb_array_length(annotations->'bad_pages')
                   FROM backup_management.backup_records WHERE backup_id = $1",
                &[&id],
            )
            .unwrap();
        let kind_taken: String = row.get(0);
        if kind_taken != kind {
            // Read only on failure: which verifications the worker had recorded by then.
            let verifications: Vec<(i64, String, String)> = db
                .query(
                    "SELECT backup_id, verification_status, verification_result::text
                       FROM backup_management.backup_verifications ORDER BY verification_id",
                    &[],
                )
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2)))
                .collect();
            panic!(
                "backup {id} was taken as {kind_taken}, not {kind}; verifications: {verifications:?}\n{}",
                cluster.log()
            );
        }
        assert_eq!(row.get::<_, Option<i64>>(1), parent);
        let (copied, referenced): (i32, i32) = (row.get(2), row.get(3));
        let (size, logical): (i64, i64) = (row.get(4), row.get(5));
        assert!(row.get::<_, bool>(6));
        assert_eq!(row.get::<_, i32>(7), 0, "no bad pages in a healthy cluster");
        if parent.is_some() {
            assert!(
                referenced > copied,
                "{kind}: {copied} copied, {referenced} referenced"
            );
            assert!(size < logical / 2, "{kind}: stored {size} of {logical}");
        } else {
            assert_eq!(referenced, 0);
        }
    }

    // Every member restores: test_backup_restore (materialise, pg_verifybackup, start), and the
    // recipe with standard tools yields exactly the data of its point.
    for (id, expected) in [(full, &at_full), (incr, &at_incr), (diff, &at_diff)] {
        assert_restore_test_passes(&mut db, id);
        assert!(db
            .query_one("SELECT backup_mgmt.verify_backup_integrity($1)", &[&id])
            .unwrap()
            .get::<_, bool>(0));

        let recipe: String = db
            .query_one("SELECT backup_mgmt.restore_recipe($1)", &[&id])
            .unwrap()
            .get(0);
        let (restored, mut rdb, said) =
            Cluster::restored_and_promoted(&recipe, Duration::from_secs(60));
        // The tablespace went beside the new data directory, not over the original's.
        let spaces =
            std::path::PathBuf::from(format!("{}.tablespaces", restored.data_dir().display()));
        assert_eq!(
            std::fs::read_dir(&spaces).map(|d| d.count()).unwrap_or(0),
            1,
            "{said}"
        );
        assert_eq!(
            &fingerprint(&mut rdb),
            expected,
            "backup {id} restored other data\n{said}"
        );
    }

    // Deleting or expiring the full is refused while its children are retained.
    for sql in [
        "DELETE FROM backup_management.backup_records WHERE backup_id = $1",
        "UPDATE backup_management.backup_records SET status = 'expired' WHERE backup_id = $1",
    ] {
        let err = db.execute(sql, &[&full]).unwrap_err();
        let db_err = err.as_db_error().expect("a database error");
        assert_eq!(db_err.code().code(), "2BP01", "{db_err:?}");
        assert!(db_err.message().contains("parent of backup"), "{db_err:?}");
    }
    // Retention keeps it too, even under a policy that keeps nothing.
    db.batch_execute(
        "INSERT INTO backup_management.retention_policies
             (policy_name, keep_daily, keep_weekly, keep_monthly, keep_yearly)
         VALUES ('nothing', 0, 0, 0, 0);",
    )
    .unwrap();
    let verdict: (String, String) = db
        .query_one(
            "SELECT action, array_to_string(reasons, '; ') FROM backup_mgmt.retention_preview('nfull', 'nothing')
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
    // Children first, then the parent: allowed.
    db.execute(
        "UPDATE backup_management.backup_records SET status = 'expired' WHERE backup_id = ANY($1)",
        &[&vec![full, incr, diff]],
    )
    .unwrap();
}

#[test]
fn damaged_page_is_reported_with_its_relation() {
    let cluster = Cluster::start_with_backups_initdb(&["--data-checksums"], &[]);
    let mut db = cluster.connect("postgres");
    db.batch_execute(
        // Frozen (every hint bit set) and left alone by autovacuum, then flushed: no later read
        // dirties a page in shared buffers, whose write at the backup's checkpoint would put
        // the good page back over the damaged one on disk (a flake on PG 18).
        "CREATE EXTENSION backup_mgmt;
         CREATE TABLE victim (id int, pad text) WITH (autovacuum_enabled = false);
         INSERT INTO victim SELECT g, repeat('x', 200) FROM generate_series(1, 2000) g;",
    )
    .unwrap();
    db.batch_execute("VACUUM (FREEZE) victim").unwrap();
    db.batch_execute("CHECKPOINT").unwrap();
    let file: String = db
        .query_one("SELECT pg_relation_filepath('victim')", &[])
        .unwrap()
        .get(0);
    // Flip one byte in the middle of block 1, leaving its header (and LSN) alone.
    let path = cluster.data_dir().join(&file);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8192 + 4000] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    db.execute(
        "SELECT backup_mgmt.schedule_backup('nfull', '@yearly', 'postgres', 'full', 'native_physical',
                '{\"fast_checkpoint\": true, \"compression\": \"none\"}')",
        &[],
    )
    .unwrap();
    let id = run_job(&cluster, &mut db, "nfull");
    // The worker names the relation in a transaction after the record's: wait for that one.
    let named = Cluster::wait_for(Duration::from_secs(60), || {
        db.query_one(
            "SELECT coalesce((annotations->'bad_pages'->0) ? 'relation', false)
               FROM backup_management.backup_records WHERE backup_id = $1",
            &[&id],
        )
        .is_ok_and(|r| r.get::<_, bool>(0))
    });
    let bad: (i32, String, i32, Option<String>, Option<String>) = db
        .query_one(
            "SELECT jsonb_array_length(b), b->0->>'path', (b->0->>'block')::int, b->0->>'relation',
                    b->0->>'database'
               FROM (SELECT annotations->'bad_pages' AS b FROM backup_management.backup_records
                      WHERE backup_id = $1) s",
            &[&id],
        )
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
        .unwrap();
    assert!(named, "bad pages never named: {bad:?}\n{}", cluster.log());
    assert_eq!(
        bad,
        (
            1,
            file.clone(),
            1,
            // Schema-qualified: the worker's search_path is pinned to pg_catalog.
            Some("public.victim".to_owned()),
            Some("postgres".to_owned())
        )
    );
    assert!(
        cluster.log().contains("page checksum failure"),
        "{}",
        cluster.log()
    );
}

/// kill -9 of the postmaster while the worker copies: after a restart the run is recorded
/// failed, the partial directory is gone, no slot or backup is left behind, and the next run
/// completes.
#[test]
fn kill_9_mid_copy_leaves_nothing_behind() {
    let mut cluster = Cluster::start_with_backups(&[]);
    let mut db = cluster.connect("postgres");
    db.batch_execute("CREATE EXTENSION backup_mgmt").unwrap();
    cluster.run_client("pgbench", &["-i", "-q", "-s", "10", "postgres"]);
    db.execute(
        "SELECT backup_mgmt.schedule_backup('crashy', '@yearly', 'postgres', 'full', 'native_physical',
                '{\"compression_level\": 19}')",
        &[],
    )
    .unwrap();
    db.execute("SELECT backup_mgmt.run_job_now('crashy')", &[])
        .unwrap();
    let root = cluster.backup_root();
    let partial = |root: &std::path::Path| -> bool {
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_name().to_string_lossy().ends_with(".native.partial") {
                    return true;
                }
                if e.path().is_dir() {
                    stack.push(e.path());
                }
            }
        }
        false
    };
    let copying = Cluster::wait_for(Duration::from_secs(60), || partial(&root));
    assert!(copying, "the copy never started\n{}", cluster.log());
    drop(db);
    cluster.kill_postmaster();
    cluster.pg_ctl_start();

    let mut db = cluster.connect("postgres");
    let recovered = Cluster::wait_for(Duration::from_secs(30), || {
        db.query_one(
            "SELECT count(*) = 0 FROM backup_management.backup_records WHERE status = 'running'",
            &[],
        )
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false)
    });
    assert!(recovered, "still running\n{}", cluster.log());
    let (status, error): (String, String) = db
        .query_one(
            "SELECT status, error_message FROM backup_management.backup_records WHERE label = 'crashy'",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(status, "failed");
    assert!(error.contains("interrupted"), "{error}");
    assert!(!partial(&root), "partial directory left behind");
    let slots: i64 = db
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .unwrap()
        .get(0);
    assert_eq!(slots, 0);

    db.execute(
        "SELECT backup_mgmt.alter_job('crashy', options => '{}')",
        &[],
    )
    .unwrap();
    let id = run_job(&cluster, &mut db, "crashy");
    assert_restore_test_passes(&mut db, id);
}

/// Point-in-time recovery from an incremental native backup: `plan_recovery_lsn` picks it as the
/// base backup, and its recipe materialises the chain and replays the archived WAL to exactly
/// the target, with the original cluster gone.
#[test]
fn point_in_time_recovery_starts_from_an_incremental() {
    let mut cluster =
        Cluster::start_with_backups(&["archive_mode = on", "archive_library = 'backup_mgmt'"]);
    let mut db = cluster.connect("postgres");
    db.batch_execute(
        "CREATE EXTENSION backup_mgmt;
         CREATE TABLE orders (id int PRIMARY KEY);
         INSERT INTO orders SELECT generate_series(1, 1000);",
    )
    .unwrap();
    for (job, kind) in [("pfull", "full"), ("pincr", "incremental")] {
        db.execute(
            "SELECT backup_mgmt.schedule_backup($1, '@yearly', 'postgres', $2, 'native_physical')",
            &[&job, &kind],
        )
        .unwrap();
    }
    let full = run_job(&cluster, &mut db, "pfull");
    std::thread::sleep(Duration::from_millis(1100));
    db.batch_execute("INSERT INTO orders SELECT generate_series(1001, 2000)")
        .unwrap();
    let incr = run_job(&cluster, &mut db, "pincr");
    db.batch_execute("INSERT INTO orders SELECT generate_series(2001, 3000)")
        .unwrap();
    let target: String = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap()
        .get(0);
    db.batch_execute("INSERT INTO orders SELECT generate_series(3001, 4000)")
        .unwrap();
    let segment: String = db
        .query_one(
            "SELECT pg_walfile_name($1::text::pg_lsn) FROM (SELECT pg_switch_wal()) s",
            &[&target],
        )
        .unwrap()
        .get(0);
    let archived = Cluster::wait_for(Duration::from_secs(60), || {
        db.query_one(
            "SELECT count(*) = 1 FROM backup_management.wal_archive WHERE file_name = $1",
            &[&segment],
        )
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false)
    });
    assert!(archived, "{segment} not archived\n{}", cluster.log());
    let plan = db
        .query_one(
            "SELECT reachable, reason, base_backup_id, recipe FROM backup_mgmt.plan_recovery_lsn($1::text::pg_lsn)",
            &[&target],
        )
        .unwrap();
    let (reachable, reason): (bool, String) = (plan.get(0), plan.get(1));
    assert!(reachable, "{reason}");
    assert_eq!(plan.get::<_, Option<i64>>(2), Some(incr));
    let recipe: String = plan.get(3);
    assert!(
        recipe.contains(&format!("holder[{full}]=")) && recipe.contains("recovery_target_lsn"),
        "{recipe}"
    );

    drop(db);
    cluster.pg_ctl_stop("immediate");
    std::fs::remove_dir_all(cluster.data_dir()).unwrap();
    let (restored, mut r, said) = Cluster::restored_and_promoted(&recipe, Duration::from_secs(120));
    let (count, max): (i64, Option<i32>) = r
        .query_one("SELECT count(*), max(id) FROM orders", &[])
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!(
        (count, max),
        (3000, Some(3000)),
        "{said}\n{}",
        restored.log()
    );
}
