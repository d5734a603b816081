//! End-to-end: the configuration inside a backup is what anyone who can write the off-site
//! target says it is.  Restored by the program, a forged one loads no library from a path, writes
//! no log or pid file outside the new directory and runs no archive command when the operator
//! starts the copy; one that moves the data directory elsewhere (where none of the restore's
//! settings would be read) is refused, and nothing is left.  The bash recipe refuses it too.

use backup_mgmt_e2e::cluster::{bindir, Cluster};
use backup_mgmt_e2e::jobs::{marker_ids, run_job};
use backup_mgmt_e2e::offsite::{add_disk_target, promoted, switch_sync_and_wait};
use backup_mgmt_e2e::program::run;

#[test]
fn a_forged_configuration_is_quarantined_and_a_moved_data_directory_refused() {
    let cluster =
        Cluster::start_with_backups(&["archive_mode = on", "archive_library = 'backup_mgmt'"]);
    let mut db = cluster.connect("postgres");
    let disk = cluster.second_backup_root("second-disk");
    // Files the server's OS user can write, outside any data directory.
    let outside = cluster.dir().join("outside");
    std::fs::create_dir(&outside).unwrap();
    cluster.give_to_server(&outside);
    let victim = outside.join("victim");
    std::fs::write(&victim, "keep me\n").unwrap();
    cluster.give_to_server(&victim);
    db.batch_execute(
        "CREATE EXTENSION backup_mgmt;
         CREATE TABLE markers (id int PRIMARY KEY);
         INSERT INTO markers VALUES (1);
         SELECT backup_mgmt.schedule_backup('native', '@yearly', 'postgres', 'full',
                'native_physical', '{\"fast_checkpoint\": true}');",
    )
    .unwrap();
    add_disk_target(&mut db, &disk);
    // What a forger writes into the backed-up postgresql.auto.conf (this server never reloads
    // it): libraries by path, the log and the pid file onto a file outside, a command, every
    // address.
    let forged = format!(
        "\nshared_preload_libraries = 'backup_mgmt,{0}/evil'\n\
         session_preload_libraries = './evil'\n\
         logging_collector = on\nlog_directory = '{0}'\nlog_filename = 'victim'\n\
         external_pid_file = '{0}/victim'\n\
         archive_command = 'touch {0}/archive_command_ran'\n\
         dynamic_library_path = '{0}'\nlisten_addresses = '*'\n",
        outside.display()
    );
    let auto = cluster.data_dir().join("postgresql.auto.conf");
    let original = std::fs::read_to_string(&auto).unwrap();
    std::fs::write(&auto, format!("{original}{forged}")).unwrap();
    let first = run_job(&cluster, &mut db, "native");
    std::fs::write(&auto, &original).unwrap();
    let (dir, _, doc) = switch_sync_and_wait(&cluster, &mut db, &disk, 1);
    let key = doc["backups"][0]["key"].as_str().unwrap();
    let stored = std::fs::read_to_string(dir.join(key).join("backup_mgmt.files")).unwrap();
    assert!(stored.contains("postgresql.auto.conf"), "{stored}");
    let pg_bin = bindir();

    let mut restored = Cluster::empty();
    let data = restored.data_dir();
    let (code, out, err) = run(
        &restored,
        &[
            "--dir",
            dir.to_str().unwrap(),
            "restore",
            "--latest",
            "--pg-bin",
            pg_bin.to_str().unwrap(),
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("reset shared_preload_libraries to ''"),
        "{out}\n{err}"
    );
    assert!(!err.contains("not checked"), "{err}");
    // Started as an operator would (only its own port and socket added; the source's
    // archive_mode = on and archive_library stay in its postgresql.conf): the forged library
    // paths would stop it starting, or each connection.
    restored.start_restored(&[]);
    let mut r = promoted(&restored);
    assert_eq!(marker_ids(&mut r), vec![1], "{}", restored.log());
    for (setting, expected) in [
        ("shared_preload_libraries", ""),
        ("session_preload_libraries", ""),
        ("archive_mode", "off"),
        ("log_directory", "log"),
        ("log_filename", "postgresql-%Y-%m-%d_%H%M%S.log"),
        ("listen_addresses", "localhost"),
        ("external_pid_file", ""),
        ("dynamic_library_path", "$libdir"),
    ] {
        let value: String = r.query_one(&format!("SHOW {setting}"), &[]).unwrap().get(0);
        assert_eq!(value, expected, "{setting}");
    }
    // SHOW says "(disabled)" with archive_mode off: the value the files set, as applied.
    let archive_command: String = r
        .query_one(
            "SELECT setting FROM pg_file_settings WHERE name = 'archive_command' AND applied",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(archive_command, "");
    drop(r);
    restored.pg_ctl_stop("fast");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n");
    let left: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("victim")]);

    // A postgresql.conf that moves the data directory: the server would start on that one,
    // reading its postgresql.auto.conf instead of the restored one (so none of the settings
    // above).  Refused as damage, and the new directory removed.
    let elsewhere = outside.join("elsewhere");
    let conf = cluster.data_dir().join("postgresql.conf");
    let original = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        format!("{original}\ndata_directory = '{}'\n", elsewhere.display()),
    )
    .unwrap();
    let second = run_job(&cluster, &mut db, "native");
    std::fs::write(&conf, &original).unwrap();
    let (dir, _, _) = switch_sync_and_wait(&cluster, &mut db, &disk, 2);
    let moved = Cluster::empty();
    let data = moved.data_dir();
    let (code, out, err) = run(
        &moved,
        &[
            "--dir",
            dir.to_str().unwrap(),
            "restore",
            "--backup-id",
            &second.to_string(),
            "--pg-bin",
            pg_bin.to_str().unwrap(),
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(
        err.contains(&format!(
            "moves the data directory to {}",
            elsewhere.display()
        )),
        "{err}"
    );
    assert!(!data.exists(), "{err}");

    // The same backup's recipe, run as an operator would with that server's postgres: refused
    // once its files are in place, and the directory cannot start.
    let recipe: String = db
        .query_one("SELECT backup_mgmt.restore_recipe($1)", &[&second])
        .unwrap()
        .get(0);
    let by_recipe = Cluster::empty();
    let script = by_recipe.dir().join("recipe.sh");
    std::fs::write(&script, &recipe).unwrap();
    let out = by_recipe
        .server_command("/bin/bash")
        .env("POSTGRES", pg_bin.join("postgres"))
        .arg(&script)
        .arg(by_recipe.data_dir())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "its configuration moves the data directory to {}",
            elsewhere.display()
        )),
        "{err}"
    );
    assert!(by_recipe.data_dir().join("PG_VERSION").is_file(), "{err}");
    assert!(
        !by_recipe.data_dir().join("global/pg_control").exists(),
        "{err}"
    );
    assert!(!elsewhere.exists());

    // With --delta into the copy restored first (stopped): refused the same way, its control
    // file held aside, and the hint names another backup, not the same restore again, which
    // would be refused again.  The first backup then finishes it.
    let delta = |id: i64| {
        run(
            &restored,
            &[
                "--dir",
                dir.to_str().unwrap(),
                "restore",
                "--delta",
                "--backup-id",
                &id.to_string(),
                "--pg-bin",
                pg_bin.to_str().unwrap(),
                restored.data_dir().to_str().unwrap(),
            ],
        )
    };
    let (code, out, err) = delta(second);
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(
        err.contains("this backup cannot finish it; restore another one into it with --delta"),
        "{err}"
    );
    assert!(!err.contains("--delta again"), "{err}");
    assert!(!restored.data_dir().join("global/pg_control").exists());
    let (code, out, err) = delta(first);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(restored.data_dir().join("global/pg_control").is_file());
}
