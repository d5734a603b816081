//! Faults, end to end: the disk filling up under a backup and under archiving (a small file
//! system of its own), and 16 clients recording backups while the worker runs jobs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use backup_mgmt_e2e::cluster::Cluster;
use backup_mgmt_e2e::jobs::{files_under, records, run_now, wait_records};

/// A tmpfs of its own (root only, as CI runs), unmounted when dropped.
struct SmallDisk {
    dir: PathBuf,
}

impl SmallDisk {
    fn mount(dir: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a tmpfs needs root");
        // The server's OS user owns it, like any backup root.
        let st = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success());
        SmallDisk {
            dir: dir.to_path_buf(),
        }
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok);
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn archiver(db: &mut postgres::Client) -> (i64, i64) {
    db.query_one(
        "SELECT archived_count, failed_count FROM pg_stat_archiver",
        &[],
    )
    .map(|r| (r.get(0), r.get(1)))
    .unwrap()
}

#[test]
fn a_full_disk_fails_backups_and_archiving_cleanly_and_both_resume() {
    let place = tempfile::Builder::new()
        .prefix("bm-e2e-disk-")
        .tempdir_in("/tmp")
        .unwrap();
    // Smaller than one WAL segment and than the dump below.
    let disk = SmallDisk::mount(&place.path().join("small"), "10m");
    let root = format!("backup_mgmt.backup_roots = '{}'", disk.dir.display());
    let cluster = Cluster::start_with_backups(&[
        root.as_str(),
        "archive_mode = on",
        "archive_library = 'backup_mgmt'",
    ]);
    let mut db = cluster.connect("postgres");
    db.batch_execute("CREATE EXTENSION backup_mgmt").unwrap();
    db.batch_execute("CREATE DATABASE appdb").unwrap();
    let mut app = cluster.connect("appdb");
    // About 30 MB that does not compress.
    app.batch_execute(
        "CREATE TABLE noise AS SELECT g, md5(g::text) || md5((g * 7)::text) || md5((g * 13)::text) AS t
           FROM generate_series(1, 300000) g;",
    )
    .unwrap();

    // Archiving: the segment does not fit; the failure is PostgreSQL's (it retries), and no
    // partial file is left or recorded.
    db.batch_execute("SELECT pg_switch_wal()").unwrap();
    assert!(
        Cluster::wait_for(Duration::from_secs(30), || archiver(&mut db).1 >= 1),
        "no archive failure\n{}",
        cluster.log()
    );
    assert_eq!(archiver(&mut db).0, 0);
    // The backup: failed, with the cause, and nothing left behind.
    run_now(
        &mut db,
        "full-disk",
        "appdb",
        "pg_dump",
        "{\"compression\": \"none\"}",
    );
    let failed = wait_records(&cluster, &mut db, "full-disk", "failed", 1, 120);
    let error = failed[0].error.clone().unwrap_or_default();
    assert!(
        error.contains("No space left on device") || error.contains("space"),
        "{error}"
    );
    assert!(records(&mut db, "full-disk")
        .iter()
        .all(|r| r.status == "failed"));
    // The archiver keeps retrying (each attempt writes a hidden temporary and removes it when
    // the write fails), so a look may catch one in flight: nothing may stay.
    let leftovers = || -> Vec<PathBuf> {
        files_under(&disk.dir)
            .into_iter()
            .filter(|p| p.is_file() && !p.ends_with("catalog_mirror.json"))
            .filter(|p| {
                let name = p.to_string_lossy();
                // The dump's temporary or final file, or a WAL segment's (`.<name>.tmp`) or
                // final copy: only the archive manifest may be in the archive directory.
                name.contains(".partial")
                    || name.contains("appdb")
                    || (name.contains("/wal/") && !name.ends_with("archive_manifest.jsonl"))
            })
            .collect()
    };
    assert!(
        Cluster::wait_for(Duration::from_secs(15), || leftovers().is_empty()),
        "partial files left: {:?}",
        leftovers()
    );
    // And never a finished segment.
    assert!(!leftovers().iter().any(|p| p
        .file_name()
        .is_some_and(|n| !n.to_string_lossy().starts_with('.'))));
    let wal_rows: i64 = db
        .query_one("SELECT count(*) FROM backup_management.wal_archive", &[])
        .unwrap()
        .get(0);
    assert_eq!(wal_rows, 0, "a segment that did not fit was recorded");

    // Space returns: archiving resumes on its own, and the next run of the job completes.
    disk.resize("400m");
    assert!(
        Cluster::wait_for(Duration::from_secs(90), || archiver(&mut db).0 >= 1),
        "archiving did not resume\n{}",
        cluster.log()
    );
    db.execute("SELECT backup_mgmt.run_job_now('full-disk')", &[])
        .unwrap();
    let done = wait_records(&cluster, &mut db, "full-disk", "completed", 1, 180);
    assert!(done[0].path.is_file());
    let ingested = Cluster::wait_for(Duration::from_secs(30), || {
        db.query_one("SELECT count(*) FROM backup_management.wal_archive", &[])
            .map(|r| r.get::<_, i64>(0) >= 1)
            .unwrap_or(false)
    });
    assert!(ingested, "the archived segment was not recorded");
    drop(cluster);
}

/// 16 clients record backups (start, complete or fail) while the worker runs jobs: every record
/// ends consistent (completed with its size and end time, or failed with its error), none is
/// lost, and the ids are unique.
#[test]
fn sixteen_clients_record_while_the_worker_runs_jobs() {
    let cluster = Cluster::start_with_backups(&[]);
    let mut db = cluster.connect("postgres");
    db.batch_execute("CREATE EXTENSION backup_mgmt").unwrap();
    db.batch_execute("CREATE DATABASE appdb").unwrap();
    run_now(&mut db, "busy", "appdb", "pg_dump", "{}");
    let root = cluster.backup_root();
    let per_client = 40;
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let mut c = cluster.connect("postgres");
            let root = root.clone();
            std::thread::spawn(move || {
                let mut ids = Vec::new();
                for i in 0..per_client {
                    let path = root.join(format!("client{t}-{i}.dump"));
                    let id: i64 = c
                        .query_one(
                            "SELECT backup_mgmt.record_backup_start('appdb', 'full', 'pg_dump', $1)",
                            &[&path.to_string_lossy().as_ref()],
                        )
                        .unwrap()
                        .get(0);
                    if i % 5 == 4 {
                        c.execute(
                            "SELECT backup_mgmt.record_backup_failure($1, 'simulated failure')",
                            &[&id],
                        )
                        .unwrap();
                    } else {
                        c.execute(
                            "SELECT backup_mgmt.record_backup_complete($1, $2)",
                            &[&id, &(1000_i64 + i as i64)],
                        )
                        .unwrap();
                    }
                    ids.push(id);
                }
                ids
            })
        })
        .collect();
    for _ in 0..3 {
        db.execute("SELECT backup_mgmt.run_job_now('busy')", &[])
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut ids: Vec<i64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 16 * per_client);
    wait_records(&cluster, &mut db, "busy", "completed", 1, 120);
    let bad: i64 = db
        .query_one(
            "SELECT count(*) FROM backup_management.backup_records
              WHERE backup_id = ANY($1)
                AND NOT ((status = 'completed' AND end_time IS NOT NULL AND backup_size >= 1000 AND error_message IS NULL)
                      OR (status = 'failed' AND end_time IS NOT NULL AND error_message = 'simulated failure'))",
            &[&ids],
        )
        .unwrap()
        .get(0);
    assert_eq!(bad, 0);
    let (completed, failed): (i64, i64) = db
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'failed')
               FROM backup_management.backup_records WHERE backup_id = ANY($1)",
            &[&ids],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((completed, failed), (16 * 32, 16 * 8));
    // The verification state followed every completion (the triggers under concurrency).
    let state: i64 = db
        .query_one(
            "SELECT count(*) FROM backup_management.verification_state WHERE backup_id = ANY($1)",
            &[&ids],
        )
        .unwrap()
        .get(0);
    assert_eq!(state, completed);
}

/// A superuser connection once the server accepts them again (after a crash restart).
fn reconnect(cluster: &Cluster) -> postgres::Client {
    let mut client = None;
    let up = Cluster::wait_for(Duration::from_secs(60), || {
        client = cluster
            .connect_as("postgres", "postgres")
            .ok()
            .filter(|c| !c.is_closed());
        client
            .as_mut()
            .is_some_and(|c| c.simple_query("SELECT 1").is_ok())
    });
    assert!(up, "the server did not come back\n{}", cluster.log());
    client.unwrap()
}

fn worker_pid(db: &mut postgres::Client) -> Option<i32> {
    db.query_opt(
        "SELECT pid FROM pg_stat_activity WHERE backend_type = 'backup_mgmt scheduler'",
        &[],
    )
    .ok()
    .flatten()
    .map(|r| r.get(0))
}

/// kill -9 of the worker at each stage of a native backup (after pg_backup_start, while copying,
/// after pg_backup_stop, before the rename into place; `backup_mgmt.fault_pause_at` holds it
/// there): nothing is recorded complete, no partial directory stays, and the next run succeeds
/// and verifies.
#[test]
fn killing_the_worker_at_each_stage_of_a_native_backup_leaves_nothing_half_done() {
    let cluster = Cluster::start_with_backups(&[]);
    let mut db = cluster.connect("postgres");
    db.batch_execute(
        "CREATE EXTENSION backup_mgmt;
         CREATE TABLE filler AS SELECT g, md5(g::text) AS t FROM generate_series(1, 100000) g;
         SELECT backup_mgmt.schedule_backup('crash', '@yearly', 'postgres', 'full', 'native_physical', '{}');",
    )
    .unwrap();
    let set_pause = |db: &mut postgres::Client, points: &str| {
        db.batch_execute(&format!(
            "ALTER SYSTEM SET backup_mgmt.fault_pause_at = '{points}'"
        ))
        .unwrap();
        db.batch_execute("SELECT pg_reload_conf()").unwrap();
        std::thread::sleep(Duration::from_secs(2));
    };
    for stage in [
        "native_start",
        "native_copy",
        "native_stop",
        "native_rename",
    ] {
        set_pause(&mut db, stage);
        let line = format!("fault injection: pausing at {stage}");
        let seen = cluster.log().matches(&line).count();
        db.execute("SELECT backup_mgmt.run_job_now('crash')", &[])
            .unwrap();
        assert!(
            Cluster::wait_for(Duration::from_secs(90), || cluster
                .log()
                .matches(&line)
                .count()
                > seen),
            "the worker never reached {stage}\n{}",
            cluster.log()
        );
        let pid = worker_pid(&mut db).expect("the worker runs");
        let ready = cluster.log().matches("ready to accept connections").count();
        // SAFETY: a plain kill(2) of the worker process we just looked up.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
        // The postmaster ends every session and restarts; connect only after that.
        assert!(
            Cluster::wait_for(Duration::from_secs(60), || cluster
                .log()
                .matches("ready to accept connections")
                .count()
                > ready),
            "no crash restart\n{}",
            cluster.log()
        );
        db = reconnect(&cluster);
        // The restarted worker records the interrupted run failed and removes its files.
        let settled = Cluster::wait_for(Duration::from_secs(60), || {
            records(&mut db, "crash")
                .iter()
                .all(|r| r.status == "failed")
                && db
                    .query_one(
                        "SELECT count(*) FROM enterprise_backup.backup_job_executions WHERE execution_status = 'running'",
                        &[],
                    )
                    .map(|r| r.get::<_, i64>(0) == 0)
                    .unwrap_or(false)
        });
        assert!(
            settled,
            "after a kill at {stage}: {:?}\n{}",
            records(&mut db, "crash")
                .iter()
                .map(|r| (r.id, r.status.clone(), r.error.clone()))
                .collect::<Vec<_>>(),
            cluster.log()
        );
        let leftovers: Vec<PathBuf> = files_under(&cluster.backup_root())
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(".partial"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "after a kill at {stage}: {leftovers:?}"
        );
        for r in records(&mut db, "crash") {
            assert!(!r.path.exists(), "a failed run left {:?}", r.path);
        }
    }
    set_pause(&mut db, "");
    db.execute("SELECT backup_mgmt.run_job_now('crash')", &[])
        .unwrap();
    let done = wait_records(&cluster, &mut db, "crash", "completed", 1, 180);
    let verified: bool = db
        .query_one(
            "SELECT backup_mgmt.verify_backup_integrity($1)",
            &[&done[0].id],
        )
        .unwrap()
        .get(0);
    assert!(verified);
    assert_eq!(
        records(&mut db, "crash")
            .iter()
            .filter(|r| r.status == "failed")
            .count(),
        4
    );
}
