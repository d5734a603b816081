//! End-to-end: a site lost after a failover comes back from its off-site target alone, on the
//! timeline the failover started.  A primary archives through the module to a filesystem
//! target and takes a backup (timeline 1); a streaming standby is promoted when the primary
//! stops (timeline 2), and its worker ships timeline 2's WAL and history file and rewrites the
//! mirror.  With both servers and the backup root gone, the program restores the timeline-1
//! backup and recovery follows the history to timeline 2: to the latest WAL (every marker, every
//! pgbench table as at the end), to a time on timeline 2, or, asked to, on timeline 1 alone.
//! A segment of timeline 2 missing from the target is a refusal that names it, where recovery
//! would otherwise have ended early at the hole; so is a damaged history file of timeline 2
//! (latest cannot know where it leads; a restore that stays on timeline 1 would stop when
//! recovery asks for it), and a timeline the target has no history file of.

use std::time::Duration;

use backup_mgmt_e2e::cluster::Cluster;
use backup_mgmt_e2e::failover::{crash_and_promote, wait_replayed};
use backup_mgmt_e2e::jobs::{pgbench_fingerprint as fingerprint, run_job};
use backup_mgmt_e2e::offsite::{add_disk_target, promoted, switch_sync_and_wait};
use backup_mgmt_e2e::program::run;

#[test]
fn a_restore_after_a_failover_follows_the_new_timeline() {
    let mut primary =
        Cluster::start_with_backups(&["archive_mode = on", "archive_library = 'backup_mgmt'"]);
    let mut db = primary.connect("postgres");
    let disk = primary.second_backup_root("second-disk");
    db.batch_execute(
        "CREATE EXTENSION backup_mgmt;
         CREATE TABLE markers (id int PRIMARY KEY);
         SELECT backup_mgmt.schedule_backup('bfull', '@yearly', 'postgres', 'full',
                'pg_basebackup', '{\"fast_checkpoint\": true, \"compression\": \"zstd\"}');",
    )
    .unwrap();
    add_disk_target(&mut db, &disk);
    primary.run_client("pgbench", &["-i", "-q", "-s", "2", "postgres"]);
    let full = run_job(&primary, &mut db, "bfull");
    db.batch_execute("INSERT INTO markers VALUES (1)").unwrap();
    primary.run_client("pgbench", &["-n", "-c", "2", "-t", "200", "postgres"]);

    // The standby, caught up with marker 2; the primary's WAL on the target; then the failover.
    // The standby keeps its own backup root, as on another host: what it archives after the
    // promotion is found there only.
    let mut standby = Cluster::standby_of(&primary);
    let own_root = standby.dir().join("backups");
    let made = standby
        .server_command("/bin/mkdir")
        .arg("-m")
        .arg("700")
        .arg(&own_root)
        .status()
        .unwrap();
    assert!(made.success());
    let mut sdb = standby.connect("postgres");
    sdb.batch_execute(&format!(
        "ALTER SYSTEM SET backup_mgmt.backup_roots = '{},{}'",
        own_root.display(),
        disk.display()
    ))
    .unwrap();
    sdb.batch_execute("SELECT pg_reload_conf()").unwrap();
    db.batch_execute("INSERT INTO markers VALUES (2)").unwrap();
    wait_replayed(&standby, &mut sdb, 2);
    // Everything the primary archived is on the target; then it crashes. The segment it was
    // writing is never completed on timeline 1: the standby continues it on timeline 2 (and
    // archives what it had of it as .partial). A clean shutdown would instead complete and
    // archive one more segment locally at the very end, which a lost site takes with it.
    switch_sync_and_wait(&primary, &mut db, &disk, 1);
    drop(db);
    let mut sdb = crash_and_promote(&mut primary, &standby);

    // Work on timeline 2, with a point in time between markers 3 and 4.
    sdb.batch_execute("INSERT INTO markers VALUES (3)").unwrap();
    let at_three = fingerprint(&mut sdb);
    std::thread::sleep(Duration::from_millis(1100));
    let between: String = sdb
        .query_one("SELECT clock_timestamp()::text", &[])
        .unwrap()
        .get(0);
    std::thread::sleep(Duration::from_millis(1100));
    standby.run_client("pgbench", &["-n", "-c", "2", "-t", "200", "postgres"]);
    sdb.batch_execute("INSERT INTO markers VALUES (4)").unwrap();
    let at_end = fingerprint(&mut sdb);
    let (target, mirror_file, doc) = switch_sync_and_wait(&standby, &mut sdb, &disk, 1);
    let wal_names: Vec<String> = doc["wal_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        wal_names.iter().any(|n| n == "00000002.history"),
        "{wal_names:?}"
    );
    let first_of_two = wal_names
        .iter()
        .find(|n| n.len() == 24 && n.starts_with("00000002"))
        .unwrap()
        .clone();
    drop(sdb);
    standby.pg_ctl_stop("immediate");
    std::fs::remove_dir_all(standby.data_dir()).unwrap();
    std::fs::remove_dir_all(primary.data_dir()).unwrap();
    std::fs::remove_dir_all(primary.backup_root()).unwrap();
    std::fs::remove_dir_all(&own_root).unwrap();

    let dir = target.to_str().unwrap().to_owned();
    let restore = |extra: &[&str]| {
        let restored = Cluster::empty();
        let data = restored.data_dir().to_str().unwrap().to_owned();
        let mut args = vec!["--dir", &dir, "--output", "json", "restore"];
        args.extend_from_slice(extra);
        args.push(&data);
        let (code, out, err) = run(&restored, &args);
        (restored, code, out, err)
    };
    let markers = |r: &mut postgres::Client| -> Vec<i32> {
        r.query("SELECT id FROM markers ORDER BY id", &[])
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    };
    let start = |restored: &mut Cluster, out: &str| {
        let report: serde_json::Value = serde_json::from_str(out).unwrap();
        assert_eq!(report["backup_id"], full, "{out}");
        restored.start_restored(&["archive_mode = off", "shared_preload_libraries = ''"]);
        (promoted(restored), report)
    };

    // The first segment of timeline 2 missing from the target: recovery would end at it, on
    // timeline 1's WAL, so the restore is refused and names it.
    // Written as format 1 (every file in the one document), which the program still reads.
    let mut holed = doc.clone();
    holed["format"] = "backup_mgmt offsite catalog 1".into();
    holed.as_object_mut().unwrap().remove("wal_parts");
    holed["wal_files"]
        .as_array_mut()
        .unwrap()
        .retain(|w| w["name"] != first_of_two.as_str());
    std::fs::write(&mirror_file, serde_json::to_vec(&holed).unwrap()).unwrap();
    let (_, code, out, err) = restore(&["--latest"]);
    assert_eq!(code, 4, "{out}\n{err}");
    assert!(
        err.contains(&format!("WAL segment {first_of_two} is not on the target")),
        "{err}\n{wal_names:?}"
    );
    std::fs::write(&mirror_file, serde_json::to_vec(&doc).unwrap()).unwrap();

    // Timeline 2's history file on the target is not what the mirror says: latest cannot know
    // where timeline 2 leads and refuses; staying on timeline 1 is refused too, before anything
    // is written, since recovery ends by asking for that file.
    let history_key = doc["wal_files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "00000002.history")
        .and_then(|w| w["key"].as_str())
        .unwrap()
        .to_owned();
    let history_object = target.join(&history_key);
    let history_good = std::fs::read(&history_object).unwrap();
    std::fs::write(&history_object, b"1\t0/1000000\tforged\n").unwrap();
    let (_, code, out, err) = restore(&["--latest"]);
    assert_eq!(code, 4, "{out}\n{err}");
    assert!(
        err.contains("the history file of timeline 2 cannot be read"),
        "{err}"
    );
    let (stayed, code, out, err) = restore(&["--latest", "--target-timeline", "current"]);
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(err.contains("history file of timeline 2"), "{err}");
    assert!(!stayed.data_dir().exists());
    std::fs::write(&history_object, &history_good).unwrap();

    // A timeline the target holds no history of.
    let (_, code, _, err) = restore(&["--latest", "--target-timeline", "3"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("no history file of timeline 3"), "{err}");
    // A timeline with no goal past the backup's end is a usage error.
    let (_, code, _, err) = restore(&["--target-timeline", "2"]);
    assert_eq!(code, 2, "{err}");

    // The latest WAL: along timeline 2, every marker and every table as at the end.
    let (mut restored, code, out, err) = restore(&["--latest"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (mut r, report) = start(&mut restored, &out);
    assert_eq!(report["timelines"], serde_json::json!([1, 2]), "{out}");
    assert_eq!(markers(&mut r), [1, 2, 3, 4], "{}", restored.log());
    assert_eq!(fingerprint(&mut r), at_end, "{}", restored.log());
    drop(r);
    restored.pg_ctl_stop("immediate");

    // A time on timeline 2 (before, refused: timeline 1 has no WAL archived after it).
    let (mut restored, code, out, err) = restore(&["--target-time", &between]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (mut r, _) = start(&mut restored, &out);
    assert_eq!(markers(&mut r), [1, 2, 3], "{}", restored.log());
    assert_eq!(fingerprint(&mut r), at_three, "{}", restored.log());
    drop(r);
    restored.pg_ctl_stop("immediate");

    // Asked to stay on timeline 1: its WAL only, which ends with marker 2.
    let (mut restored, code, out, err) = restore(&["--latest", "--target-timeline", "current"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (mut r, report) = start(&mut restored, &out);
    assert_eq!(report["timeline"], 1, "{out}");
    assert_eq!(markers(&mut r), [1, 2], "{}", restored.log());
}
