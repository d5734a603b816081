//! End-to-end, PostgreSQL 17+: a chain of block-level incremental `pg_basebackup` backups comes
//! back from an off-site target alone.  The worker takes a full and an incremental with
//! `pg_basebackup --incremental`; both tars, every archived WAL file and the mirror reach a
//! filesystem target; the data directory and the backup root are deleted.  The program, given
//! no `pg_combinebackup`, says the incremental needs one (and would take the full); given this
//! server's, it refuses a chain whose incremental is not what the mirror says (exit 3, nothing
//! left, not even the extracted members), then restores the chain through `pg_combinebackup`,
//! and the restored server recovers to the latest WAL with every pgbench table and marker as
//! they were.  A host-loss drill restores the same chain while the host stands, and starts
//! nothing when a member on the target is not the one this catalog recorded.  On an older server there are no such chains, and the test says so and ends.

use std::time::Duration;

use backup_mgmt_e2e::cluster::{bindir, sha256sum, Cluster};
use backup_mgmt_e2e::jobs::{pgbench_fingerprint as fingerprint, run_job};
use backup_mgmt_e2e::offsite::{add_disk_target, promoted, switch_sync_and_wait};
use backup_mgmt_e2e::program::run;

#[test]
fn an_incremental_pg_basebackup_chain_comes_back_from_a_target_alone() {
    let mut cluster =
        Cluster::start_with_backups(&["archive_mode = on", "archive_library = 'backup_mgmt'"]);
    let mut db = cluster.connect("postgres");
    let version: i32 = db
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .unwrap()
        .get(0);
    if version < 170000 {
        eprintln!("PostgreSQL {version}: no block-level incremental pg_basebackup before 17");
        return;
    }
    // Set once the version is known: before 17 the server would refuse to start with it.
    // Two statements: ALTER SYSTEM runs in no transaction block.
    db.batch_execute("ALTER SYSTEM SET summarize_wal = on")
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    assert!(Cluster::wait_for(Duration::from_secs(10), || {
        db.query_one("SELECT current_setting('summarize_wal')", &[])
            .map(|r| r.get::<_, String>(0) == "on")
            .unwrap_or(false)
    }));
    let disk = cluster.second_backup_root("second-disk");
    db.batch_execute(
        "CREATE EXTENSION backup_mgmt;
         CREATE TABLE markers (id int PRIMARY KEY);",
    )
    .unwrap();
    add_disk_target(&mut db, &disk);
    for (job, kind) in [("bfull", "full"), ("bincr", "incremental")] {
        db.execute(
            "SELECT backup_mgmt.schedule_backup($1, '@yearly', 'postgres', $2, 'pg_basebackup',
                    '{\"fast_checkpoint\": true, \"compression\": \"zstd\"}')",
            &[&job, &kind],
        )
        .unwrap();
    }
    cluster.run_client("pgbench", &["-i", "-q", "-s", "4", "postgres"]);
    let full = run_job(&cluster, &mut db, "bfull");
    db.batch_execute("INSERT INTO markers VALUES (1)").unwrap();
    cluster.run_client("pgbench", &["-n", "-c", "2", "-t", "300", "postgres"]);
    let incr = run_job(&cluster, &mut db, "bincr");
    let (kind, parent): (String, Option<i64>) = db
        .query_one(
            "SELECT backup_type, parent_backup_id FROM backup_management.backup_records
              WHERE backup_id = $1",
            &[&incr],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((kind.as_str(), parent), ("incremental", Some(full)));
    // Work after the incremental, replayed from the target's WAL.
    db.batch_execute("INSERT INTO markers VALUES (2)").unwrap();
    cluster.run_client("pgbench", &["-n", "-c", "2", "-t", "200", "postgres"]);
    db.batch_execute("INSERT INTO markers VALUES (3)").unwrap();
    let at_end = fingerprint(&mut db);
    let (target, mirror_file, doc) = switch_sync_and_wait(&cluster, &mut db, &disk, 2);
    let key_of = |id: i64| {
        doc["backups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["backup_id"] == id)
            .and_then(|b| b["key"].as_str())
            .unwrap()
            .to_owned()
    };
    let incr_object = target.join(key_of(incr));

    // A host-loss drill while the host stands restores the same chain from the target (this
    // server's pg_combinebackup), each member checked against this catalog's sha256.
    db.batch_execute(
        "INSERT INTO disaster_recovery.recovery_plans
             (plan_name, database_name, rto_minutes, rpo_minutes, backup_strategy, recovery_procedure)
         VALUES ('site', 'postgres', 30, 1440, 'pg_basebackup chains off site', 'backup-mgmt restore')",
    )
    .unwrap();
    let drill = |db: &mut postgres::Client| -> (String, Option<i64>, String) {
        // Two statements: the row the drill writes is not in the snapshot of its own query.
        let id: i64 = db
            .query_one(
                "SELECT drill_id FROM backup_mgmt.run_recovery_drill('site', 'host_loss')",
                &[],
            )
            .unwrap()
            .get(0);
        db.query_one(
            "SELECT status, backup_id, coalesce(issues, '')
               FROM disaster_recovery.recovery_drills WHERE drill_id = $1",
            &[&id],
        )
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap()
    };
    let (status, drilled, issues) = drill(&mut db);
    assert_eq!(status, "success", "{issues}\n{}", cluster.log());
    assert_eq!(drilled, Some(incr), "{issues}");
    // The full's tar on the target replaced by another backup's (a real tar.zst), the
    // mirror's sha256 with it: the drill starts nothing this catalog did not record.
    let full_object = target.join(key_of(full));
    let full_good = std::fs::read(&full_object).unwrap();
    std::fs::copy(&incr_object, &full_object).unwrap();
    let forged_sha = sha256sum(&full_object);
    let mut forged_doc = doc.clone();
    for b in forged_doc["backups"].as_array_mut().unwrap() {
        if b["backup_id"] == full {
            b["sha256"] = serde_json::Value::from(forged_sha.clone());
        }
    }
    std::fs::write(&mirror_file, serde_json::to_vec(&forged_doc).unwrap()).unwrap();
    let (status, _, issues) = drill(&mut db);
    let read_back: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&mirror_file).unwrap()).unwrap();
    assert_eq!(read_back, forged_doc, "the mirror changed under the test");
    assert_eq!(status, "failed", "{issues}");
    assert!(
        issues.contains(&format!(
            "backup {full} on the target is not one this catalog recorded"
        )),
        "{issues}"
    );
    std::fs::write(&full_object, &full_good).unwrap();
    std::fs::write(&mirror_file, serde_json::to_vec(&doc).unwrap()).unwrap();
    drop(db);
    cluster.pg_ctl_stop("immediate");
    std::fs::remove_dir_all(cluster.data_dir()).unwrap();
    std::fs::remove_dir_all(cluster.backup_root()).unwrap();

    let mut restored = Cluster::empty();
    let dir = target.to_str().unwrap().to_owned();
    let data = restored.data_dir();
    let data_arg = data.to_str().unwrap().to_owned();
    let pg_bin = bindir();
    let pg_bin = pg_bin.to_str().unwrap();
    let leftovers = || -> Vec<String> {
        std::fs::read_dir(restored.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("data"))
            .collect()
    };

    // No pg_combinebackup where the program looks (the server's PATH here is /usr/bin:/bin, and
    // this PostgreSQL is not Debian's): the incremental needs one, and the message says how.
    let debian = format!(
        "/usr/lib/postgresql/{}/bin/pg_combinebackup",
        version / 10000
    );
    if !std::path::Path::new(&debian).exists() {
        let (code, out, err) = run(
            &restored,
            &[
                "--dir",
                &dir,
                "restore",
                "--backup-id",
                &incr.to_string(),
                &data_arg,
            ],
        );
        assert_eq!(code, 4, "{out}\n{err}");
        assert!(
            err.contains("pg_combinebackup") && err.contains("--pg-bin"),
            "{err}"
        );
        assert!(leftovers().is_empty(), "{:?}", leftovers());
    }
    // A --pg-bin without one is a usage error.
    let (code, _, err) = run(
        &restored,
        &[
            "--dir", &dir, "restore", "--latest", "--pg-bin", "/usr/bin", &data_arg,
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no pg_combinebackup"), "{err}");

    // The incremental's tar is not what the mirror says: refused, nothing left behind.
    let good = std::fs::read(&incr_object).unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0xff;
    std::fs::write(&incr_object, &bad).unwrap();
    let restore_latest = || {
        run(
            &restored,
            &[
                "--dir", &dir, "--output", "json", "restore", "--latest", "--pg-bin", pg_bin,
                &data_arg,
            ],
        )
    };
    let (code, out, err) = restore_latest();
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(err.contains(&format!("backup {incr}")), "{err}");
    assert!(leftovers().is_empty(), "{:?}", leftovers());
    std::fs::write(&incr_object, &good).unwrap();

    // The chain, combined: the incremental is restored, and recovery replays the rest.
    let (code, out, err) = restore_latest();
    assert_eq!(code, 0, "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["backup_id"], incr, "{out}");
    assert_eq!(leftovers(), ["data"]);
    assert!(data.join("backup_manifest").is_file());
    restored.start_restored(&["archive_mode = off", "shared_preload_libraries = ''"]);
    let mut r = promoted(&restored);
    let markers: Vec<i32> = r
        .query("SELECT id FROM markers ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(markers, [1, 2, 3], "{}", restored.log());
    assert_eq!(fingerprint(&mut r), at_end, "{}", restored.log());
}
