//! End-to-end: a backup carries the recovery settings of the cluster it was taken of (a standby's
//! `standby.signal` and `primary_conninfo`, or what a forger put there): commands to run at the
//! end of recovery and at restartpoints, a primary to stream from, a day's apply delay.
//! Restored by the program (`--latest`) and by a recipe, the copy recovers from the WAL the
//! restore checked without delay, runs none of those commands, streams from nobody and
//! promotes; with the backup's `standby.signal` kept, a `--latest` restore would stay a standby
//! streaming from the source, and with the delay kept neither copy would reach marker 2.

use std::time::Duration;

use backup_mgmt_e2e::cluster::Cluster;
use backup_mgmt_e2e::jobs::{marker_ids, run_job};
use backup_mgmt_e2e::offsite::{add_disk_target, promoted, switch_sync_and_wait};
use backup_mgmt_e2e::program::run;

#[test]
fn a_backup_of_a_standby_is_restored_as_a_primary_running_none_of_its_commands() {
    let cluster =
        Cluster::start_with_backups(&["archive_mode = on", "archive_library = 'backup_mgmt'"]);
    let mut db = cluster.connect("postgres");
    let disk = cluster.second_backup_root("second-disk");
    // Where the backup's commands would leave their mark, writable by the server's OS user.
    let ran = cluster.dir().join("commands-ran");
    std::fs::create_dir(&ran).unwrap();
    cluster.give_to_server(&ran);
    let touch = |name: &str| format!("touch {}", ran.join(name).display());
    // A primary ignores them all; a backup of it carries them in postgresql.auto.conf.  The
    // "primary" to stream from is this very cluster, as a standby's would be.
    db.batch_execute(
        "CREATE EXTENSION backup_mgmt;
         CREATE TABLE markers (id int PRIMARY KEY);
         INSERT INTO markers VALUES (1);
         SELECT backup_mgmt.schedule_backup('native', '@yearly', 'postgres', 'full',
                'native_physical', '{\"fast_checkpoint\": true}');",
    )
    .unwrap();
    let conninfo = format!(
        "host={} port={} user=postgres",
        cluster.socket_dir().display(),
        cluster.port
    );
    for (setting, value) in [
        ("primary_conninfo", conninfo),
        ("recovery_end_command", touch("recovery_end_command")),
        ("archive_cleanup_command", touch("archive_cleanup_command")),
        // A delayed standby's: every commit replayed a day late, in any archive recovery.
        ("recovery_min_apply_delay", "1d".to_owned()),
    ] {
        // ALTER SYSTEM runs outside a transaction block: one statement per call.
        db.batch_execute(&format!("ALTER SYSTEM SET {setting} = '{value}'"))
            .unwrap();
    }
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    add_disk_target(&mut db, &disk);
    // As a standby's data directory has it (read only at start: this server stays a primary).
    let signal = cluster.data_dir().join("standby.signal");
    std::fs::write(&signal, b"").unwrap();
    let full = run_job(&cluster, &mut db, "native");
    std::fs::remove_file(&signal).unwrap();
    db.batch_execute("INSERT INTO markers VALUES (2)").unwrap();
    let target: String = db
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap()
        .get(0);
    let (dir, _, doc) = switch_sync_and_wait(&cluster, &mut db, &disk, 1);
    // The backup on the target holds the signal file (the test's premise).
    let key = doc["backups"][0]["key"].as_str().unwrap();
    let manifest = std::fs::read_to_string(dir.join(key).join("backup_mgmt.files")).unwrap();
    assert!(
        manifest.lines().any(|l| l.contains("\tstandby.signal\t")),
        "{manifest}"
    );

    // The restore program, to the newest WAL on the target.
    let mut restored = Cluster::empty();
    let data = restored.data_dir();
    let (code, out, err) = run(
        &restored,
        &[
            "--dir",
            dir.to_str().unwrap(),
            "restore",
            "--latest",
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    restored.start_restored(&["archive_mode = off", "shared_preload_libraries = ''"]);
    let mut r = promoted(&restored);
    assert!(!data.join("standby.signal").exists());
    assert_eq!(marker_ids(&mut r), vec![1, 2], "{}", restored.log());
    let conninfo: String = r.query_one("SHOW primary_conninfo", &[]).unwrap().get(0);
    assert_eq!(conninfo, "");
    drop(r);
    restored.pg_ctl_stop("fast");

    // The recipe, to the LSN after marker 2 (the source still runs: the recipe's copy must not
    // stream from it either).
    let recipe: String = db
        .query_one(
            "SELECT recipe FROM backup_mgmt.plan_recovery_lsn($1::text::pg_lsn) WHERE reachable",
            &[&target],
        )
        .unwrap()
        .get(0);
    assert!(recipe.contains(&format!("{full}")), "{recipe}");
    let (copy, mut c, said) = Cluster::restored_and_promoted(&recipe, Duration::from_secs(120));
    assert!(!copy.data_dir().join("standby.signal").exists(), "{said}");
    assert_eq!(marker_ids(&mut c), vec![1, 2], "{said}\n{}", copy.log());
    let conninfo: String = c.query_one("SHOW primary_conninfo", &[]).unwrap().get(0);
    assert_eq!(conninfo, "");

    // Neither restored server ran a command the backup carried (`recovery_end_command` runs
    // when archive recovery ends; `archive_cleanup_command` only at a restartpoint, which so
    // short a recovery may not reach: its reset is checked by core's unit tests).
    let marks: Vec<_> = std::fs::read_dir(&ran)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        marks.is_empty(),
        "ran {marks:?}\n{}\n{}",
        restored.log(),
        copy.log()
    );
}
