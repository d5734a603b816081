//! End-to-end: the background worker takes real backups on schedule in a real cluster.

use std::path::PathBuf;
use std::time::Duration;

use backup_mgmt_e2e::cluster::{bindir, sha256sum, Cluster};
use backup_mgmt_e2e::jobs::{
    cluster_with_appdb, executions, files_under, records, run_now, shell, wait_records,
};
use postgres::fallible_iterator::FallibleIterator;

// Acceptance: a seconds-level job runs at least twice; each dump is accepted by
/// `pg_restore --list` and its recorded sha256 equals an independent hash of the file; the
/// globals sit beside it; executions link job and backup; completions are notified.
#[test]
fn worker_runs_a_seconds_job_repeatedly_with_verifiable_dumps() {
    let (cluster, mut db) = cluster_with_appdb();
    let mut listener = cluster.connect("postgres");
    listener.batch_execute("LISTEN backup_mgmt").unwrap();

    db.execute(
        "SELECT backup_mgmt.schedule_backup('every-3s', '*/3 * * * * *', 'appdb', 'full', 'pg_dump',
                                            '{\"compression\": \"none\"}')",
        &[],
    )
    .unwrap();
    let done = wait_records(&cluster, &mut db, "every-3s", "completed", 2, 60);
    db.execute("SELECT backup_mgmt.unschedule('every-3s')", &[])
        .unwrap();

    let root = cluster.backup_root();
    for r in &done {
        assert!(
            r.path.starts_with(root.join("appdb").join("every-3s")),
            "{:?}",
            r.path
        );
        assert!(r.path.to_string_lossy().ends_with(".dump"), "{:?}", r.path);
        assert_eq!(
            sha256sum(&r.path),
            r.checksum,
            "recorded sha256 of {:?}",
            r.path
        );
        assert_eq!(std::fs::metadata(&r.path).unwrap().len() as i64, r.size);
        let list = cluster.run_client("pg_restore", &["--list", &r.path.to_string_lossy()]);
        let toc = String::from_utf8_lossy(&list.stdout);
        assert!(toc.contains("TABLE public orders"), "{toc}");
        let globals = PathBuf::from(r.annotations.globals_file.clone().expect("globals file"));
        assert_eq!(Some(sha256sum(&globals)), r.annotations.globals_sha256);
        let text = std::fs::read_to_string(&globals).unwrap();
        assert!(text.contains("CREATE ROLE app_reader"), "{text}");
        assert_eq!(r.annotations.job_name.as_deref(), Some("every-3s"));
    }
    // The catalog mirror beside the backups lists each of them with its checksum, for a restore
    // without the database.  The worker rewrites it after committing a record: wait for that.
    let mut mirror = String::new();
    Cluster::wait_for(Duration::from_secs(60), || {
        mirror = std::fs::read_to_string(root.join("catalog_mirror.json")).unwrap_or_default();
        done.iter()
            .all(|r| mirror.contains(&r.checksum) && mirror.contains(&*r.path.to_string_lossy()))
    });
    for r in &done {
        assert!(
            mirror.contains(&r.checksum) && mirror.contains(&*r.path.to_string_lossy()),
            "{mirror}"
        );
    }
    // No partial file is left anywhere, once a run started before the unschedule has finished
    // (its record is inserted running when claimed; the job's executions went with the job).
    let idle = Cluster::wait_for(Duration::from_secs(120), || {
        records(&mut db, "every-3s")
            .iter()
            .all(|r| r.status != "running")
    });
    assert!(idle, "a run of every-3s never finished\n{}", cluster.log());
    let partial: Vec<PathBuf> = files_under(&root)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(partial.is_empty(), "{partial:?}");

    let notes: Vec<String> = listener
        .notifications()
        .timeout_iter(Duration::from_secs(2))
        .iterator()
        .filter_map(Result::ok)
        .map(|n| n.payload().to_owned())
        .collect();
    for r in &done {
        assert!(
            notes
                .iter()
                .any(|n| n.contains("\"event\":\"backup_completed\"")
                    && n.contains(&format!("\"backup_id\":{}", r.id))),
            "no completion notice for {}: {notes:?}",
            r.id
        );
        // The checksum stays in the catalog: any role may LISTEN.
        assert!(notes.iter().all(|n| !n.contains(&r.checksum)), "{notes:?}");
    }
}

/// The job API end to end: run_job_now, zstd output that decompresses to a valid dump, a
/// failing job recorded with pg_dump's stderr (and the worker surviving it), timeouts, the
/// progress view, pg_basebackup and the parallel directory format.
#[test]
fn worker_takes_every_kind_of_backup_and_records_failures() {
    let (cluster, mut db) = cluster_with_appdb();
    let zstd_ok = shell("command -v zstd").0;

    // zstd custom-format dump, on demand.
    run_now(
        &mut db,
        "manual",
        "appdb",
        "pg_dump",
        r#"{"compression_level": 5}"#,
    );
    let r = &wait_records(&cluster, &mut db, "manual", "completed", 1, 60)[0];
    assert!(r.path.to_string_lossy().ends_with(".dump.zst"));
    assert_eq!(sha256sum(&r.path), r.checksum);
    if zstd_ok {
        let (ok, out) = shell(&format!(
            "zstd -dc '{}' | '{}/pg_restore' --list",
            r.path.display(),
            bindir().display()
        ));
        assert!(ok && out.contains("TABLE public orders"), "{out}");
    }
    let (compression, level): (String, Option<String>) = db
        .query_one(
            "SELECT compression, annotations->>'compression_level' FROM backup_management.backup_records WHERE backup_id = $1",
            &[&r.id],
        )
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!(
        (compression.as_str(), level.as_deref()),
        ("zstd", Some("5"))
    );

    // A failing job: its database is gone.  Recorded failed with pg_dump's own words.
    db.batch_execute("CREATE DATABASE doomed").unwrap();
    db.execute(
        "SELECT backup_mgmt.schedule_backup('doomed', '@yearly', 'doomed')",
        &[],
    )
    .unwrap();
    db.batch_execute("DROP DATABASE doomed").unwrap();
    db.execute("SELECT backup_mgmt.run_job_now('doomed')", &[])
        .unwrap();
    let failed = &wait_records(&cluster, &mut db, "doomed", "failed", 1, 60)[0];
    let error = failed.error.clone().unwrap_or_default();
    assert!(
        error.contains("pg_dump") && error.contains("does not exist"),
        "{error}"
    );
    assert!(!failed.path.exists());
    let exec_error: String = db
        .query_one(
            "SELECT error_message FROM enterprise_backup.backup_job_executions WHERE backup_id = $1 AND execution_status = 'failed'",
            &[&failed.id],
        )
        .unwrap()
        .get(0);
    assert_eq!(exec_error, error);

    // A backup blocked on a lock: visible in the progress view, then stopped by its timeout.
    let mut locker = cluster.connect("appdb");
    locker
        .batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    run_now(
        &mut db,
        "slow",
        "appdb",
        "pg_dump",
        r#"{"timeout_seconds": 3}"#,
    );
    let seen = Cluster::wait_for(Duration::from_secs(20), || {
        db.query(
            "SELECT 1 FROM backup_mgmt.backup_progress WHERE job_name = 'slow' AND phase IS NOT NULL
                AND progress_updated_at IS NOT NULL",
            &[],
        )
        .map(|rows| !rows.is_empty())
        .unwrap_or(false)
    });
    assert!(
        seen,
        "no progress row for the running backup\n{}",
        cluster.log()
    );
    let timed_out = &wait_records(&cluster, &mut db, "slow", "failed", 1, 30)[0];
    assert!(
        timed_out
            .error
            .as_deref()
            .unwrap_or("")
            .contains("timed out after 3 s"),
        "{:?}",
        timed_out.error
    );
    locker.batch_execute("ROLLBACK").unwrap();

    // pg_basebackup: one zstd tar with the WAL and the backup manifest inside.
    run_now(
        &mut db,
        "base",
        "appdb",
        "pg_basebackup",
        r#"{"fast_checkpoint": true}"#,
    );
    let b = &wait_records(&cluster, &mut db, "base", "completed", 1, 120)[0];
    assert!(b.path.to_string_lossy().ends_with(".tar.zst"));
    assert_eq!(sha256sum(&b.path), b.checksum);
    if zstd_ok {
        let (ok, out) = shell(&format!("zstd -dc '{}' | tar -t", b.path.display()));
        assert!(ok, "{out}");
        for member in ["PG_VERSION", "backup_label", "backup_manifest", "pg_wal/"] {
            assert!(
                out.lines().any(|l| l.starts_with(member)),
                "{member} missing:\n{out}"
            );
        }
    }

    // pg_dump directory format, two jobs in parallel; its manifest checks with sha256sum -c.
    run_now(
        &mut db,
        "dir",
        "appdb",
        "pg_dump_directory",
        r#"{"parallel_jobs": 2, "compression": "none"}"#,
    );
    let d = &wait_records(&cluster, &mut db, "dir", "completed", 1, 60)[0];
    assert!(d.path.is_dir());
    let manifest = d.path.join("backup_manifest.sha256");
    assert_eq!(sha256sum(&manifest), d.checksum);
    let (ok, out) = shell(&format!(
        "cd '{}' && sha256sum --quiet -c backup_manifest.sha256",
        d.path.display()
    ));
    assert!(ok, "{out}");
    let list = cluster.run_client("pg_restore", &["--list", &d.path.to_string_lossy()]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("TABLE DATA public orders"));

    // The worker survived all of that, and the history keeps each run linked to its backup.
    let linked: i64 = db
        .query_one(
            "SELECT count(*) FROM enterprise_backup.backup_job_executions e
               JOIN backup_management.backup_records r USING (backup_id)
              WHERE e.execution_status = r.status",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(linked, 5);
    let workers: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'backup_mgmt scheduler'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(workers, 1);
}

/// Acceptance: kill -9 of the postmaster in the middle of a backup; after a restart there is
/// no `running` record, no partial file, and the next run succeeds.
#[test]
fn kill_9_mid_backup_leaves_no_running_record_and_no_partial_file() {
    let (mut cluster, mut db) = cluster_with_appdb();
    // pg_dump blocks on this lock after it has started writing: a backup caught mid-way.
    let mut locker = cluster.connect("appdb");
    locker
        .batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    run_now(&mut db, "crashy", "appdb", "pg_dump", r#"{}"#);
    let root = cluster.backup_root();
    let partial_seen = Cluster::wait_for(Duration::from_secs(30), || {
        files_under(&root)
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".dump.zst.partial"))
    });
    assert!(partial_seen, "the backup never started\n{}", cluster.log());
    drop(locker);
    drop(db);

    cluster.kill_postmaster();
    cluster.pg_ctl_start();

    let mut db = cluster.connect("postgres");
    let recovered = Cluster::wait_for(Duration::from_secs(30), || {
        db.query_one(
            "SELECT count(*) FROM backup_management.backup_records WHERE status = 'running'",
            &[],
        )
        .map(|r| r.get::<_, i64>(0) == 0)
        .unwrap_or(false)
    });
    assert!(
        recovered,
        "records still running after restart\n{}",
        cluster.log()
    );
    let failed = records(&mut db, "crashy");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].status, "failed");
    assert!(
        failed[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("interrupted"),
        "{:?}",
        failed[0].error
    );
    let leftovers: Vec<PathBuf> = files_under(&root)
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert!(leftovers.is_empty(), "files left: {leftovers:?}");
    let running: i64 = db
        .query_one(
            "SELECT count(*) FROM enterprise_backup.backup_job_executions WHERE execution_status = 'running'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(running, 0);

    db.execute("SELECT backup_mgmt.run_job_now('crashy')", &[])
        .unwrap();
    let ok = &wait_records(&cluster, &mut db, "crashy", "completed", 1, 60)[0];
    assert_eq!(sha256sum(&ok.path), ok.checksum);
}

/// SIGTERM (a fast shutdown) stops a running backup and records it failed with the reason;
/// nothing is left running or half-written, and the server stops normally.
#[test]
fn fast_shutdown_stops_the_running_backup_and_records_why() {
    let (mut cluster, mut db) = cluster_with_appdb();
    let mut locker = cluster.connect("appdb");
    locker
        .batch_execute("BEGIN; LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    run_now(&mut db, "stopped", "appdb", "pg_dump", r#"{}"#);
    let running = Cluster::wait_for(Duration::from_secs(30), || {
        db.query(
            "SELECT 1 FROM backup_mgmt.backup_progress WHERE job_name = 'stopped'",
            &[],
        )
        .map(|r| !r.is_empty())
        .unwrap_or(false)
    });
    assert!(running, "{}", cluster.log());
    drop(locker);
    drop(db);
    cluster.pg_ctl_stop("fast");
    assert!(
        cluster.log().contains("backup_mgmt scheduler shut down"),
        "{}",
        cluster.log()
    );
    cluster.pg_ctl_start();
    let mut db = cluster.connect("postgres");
    let r = records(&mut db, "stopped");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].status, "failed");
    assert!(
        r[0].error
            .as_deref()
            .unwrap_or("")
            .contains("shutting down"),
        "{:?}",
        r[0].error
    );
    // Nothing but the catalog mirror is left in the root.
    assert!(files_under(&cluster.backup_root())
        .iter()
        .all(|p| !p.is_file() || p.ends_with("catalog_mirror.json")));
}

fn scheduler_running(db: &mut postgres::Client) -> bool {
    db.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'backup_mgmt scheduler'",
        &[],
    )
    .map(|r| r.get::<_, i64>(0) == 1)
    .unwrap_or(false)
}

/// A standby runs no jobs (its catalog is a read-only copy); after promotion its worker starts
/// and runs what is due.
#[test]
fn standby_runs_no_jobs_until_promoted() {
    let (primary, mut db) = cluster_with_appdb();
    db.execute(
        "SELECT backup_mgmt.schedule_backup('later', '@yearly', 'appdb')",
        &[],
    )
    .unwrap();
    db.execute("CHECKPOINT", &[]).unwrap();
    assert!(Cluster::wait_for(Duration::from_secs(10), || {
        scheduler_running(&mut db)
    }));

    let standby = Cluster::standby_of(&primary);
    let mut sdb = standby.connect("postgres");
    let in_recovery: bool = sdb
        .query_one("SELECT pg_is_in_recovery()", &[])
        .unwrap()
        .get(0);
    assert!(in_recovery);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!scheduler_running(&mut sdb), "{}", standby.log());

    standby.promote();
    assert!(
        Cluster::wait_for(Duration::from_secs(30), || scheduler_running(&mut sdb)),
        "{}",
        standby.log()
    );
    // The promoted server's worker takes backups into the standby's own root setting (the
    // primary's, copied): request one and see it recorded there.
    sdb.execute("SELECT backup_mgmt.run_job_now('later')", &[])
        .unwrap();
    let r = &wait_records(&standby, &mut sdb, "later", "completed", 1, 60)[0];
    assert_eq!(sha256sum(&r.path), r.checksum);
}

/// The catch-up rule (README): slots missed while the server was down are served by one run, for
/// the oldest missed slot, and the next run is the first slot after now; a slot that already has
/// an execution is never run again; `max_running_jobs` makes a due job wait; the history is
/// bounded by `max_history_per_job`.
#[test]
fn missed_slots_run_once_slots_never_twice_limits_hold() {
    let cluster = Cluster::start_with_backups(&[
        "backup_mgmt.max_running_jobs = 1",
        "backup_mgmt.max_history_per_job = 3",
    ]);
    let mut cluster = cluster;
    let mut db = cluster.connect("postgres");
    for sql in ["CREATE EXTENSION backup_mgmt", "CREATE DATABASE appdb"] {
        db.batch_execute(sql).unwrap();
    }
    cluster
        .connect("appdb")
        .batch_execute("CREATE TABLE t AS SELECT 1 AS x")
        .unwrap();
    db.execute(
        "SELECT backup_mgmt.schedule_backup('hourly', '0 * * * *', 'appdb')",
        &[],
    )
    .unwrap();

    // The server is down for three hourly slots: pretend by moving the job's next slot back.
    drop(db);
    cluster.pg_ctl_stop("fast");
    cluster.pg_ctl_start();
    let mut db = cluster.connect("postgres");
    let missed: String = db
        .query_one(
            "UPDATE enterprise_backup.backup_jobs
                SET next_run_at = date_trunc('hour', now()) - interval '3 hours'
              WHERE job_name = 'hourly' RETURNING next_run_at::text",
            &[],
        )
        .unwrap()
        .get(0);
    wait_records(&cluster, &mut db, "hourly", "completed", 1, 60);
    let runs = executions(&mut db, "hourly");
    assert_eq!(runs, vec![(Some(missed.clone()), "completed".to_owned())]);
    let next_is_future: bool = db
        .query_one(
            "SELECT next_run_at > now() AND next_run_at <= now() + interval '1 hour'
               FROM enterprise_backup.backup_jobs WHERE job_name = 'hourly'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(next_is_future);

    // The same slot again (as if next_run_at had not moved on): never a second run.
    db.execute(
        "UPDATE enterprise_backup.backup_jobs SET next_run_at = $1::text::timestamptz WHERE job_name = 'hourly'",
        &[&missed],
    )
    .unwrap();
    let moved_on = Cluster::wait_for(Duration::from_secs(10), || {
        db.query_one(
            "SELECT next_run_at > now() FROM enterprise_backup.backup_jobs WHERE job_name = 'hourly'",
            &[],
        )
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false)
    });
    assert!(moved_on);
    assert_eq!(executions(&mut db, "hourly").len(), 1);

    // max_running_jobs = 1: while one backup is blocked, another due job waits.
    let mut locker = cluster.connect("appdb");
    locker
        .batch_execute("BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    run_now(&mut db, "first", "appdb", "pg_dump", "{}");
    assert!(Cluster::wait_for(Duration::from_secs(20), || {
        executions(&mut db, "first").len() == 1
    }));
    run_now(&mut db, "second", "appdb", "pg_dump", "{}");
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        executions(&mut db, "second").is_empty(),
        "started beyond the limit"
    );
    locker.batch_execute("ROLLBACK").unwrap();
    wait_records(&cluster, &mut db, "second", "completed", 1, 60);

    // History: at most 3 rows per job, however many runs.
    for _ in 0..5 {
        let before = records(&mut db, "second").len();
        db.execute("SELECT backup_mgmt.run_job_now('second')", &[])
            .unwrap();
        wait_records(&cluster, &mut db, "second", "completed", before + 1, 60);
    }
    assert_eq!(records(&mut db, "second").len(), 6, "backups are all kept");
    assert_eq!(executions(&mut db, "second").len(), 3, "history is bounded");
}
