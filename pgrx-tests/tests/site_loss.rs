//! End-to-end: the host is lost and `backup-mgmt` brings the cluster back from the off-site
//! target alone.  A cluster archives through the module (zstd) with an S3-compatible target on
//! loopback; pgbench writes; the worker takes a native full and an incremental; marker rows are
//! committed before and after a time T; once the target has every backup, every WAL file and a
//! mirror naming them, the data directory, the backup root and its WAL archive are deleted.  With
//! only the bucket and the credentials reference, the program lists the backups, restores the
//! incremental's chain into a new directory set to recover to T (its own `wal-fetch` as
//! `restore_command`), and the restored server holds the markers up to T and none after, every
//! pgbench table as it was at T, and passes amcheck.  The logical path: a pg_dump of the same
//! database with its globals comes back into a new database of a fresh server, roles first
//! (ownership, memberships and grants as dumped), a damaged dump leaving nothing.

use std::time::Duration;

use backup_mgmt_e2e::cluster::Cluster;
use backup_mgmt_e2e::jobs::{executions, pgbench_fingerprint as fingerprint, run_job};
use backup_mgmt_e2e::offsite::{add_disk_target, mirror_wal_count, promoted, switch_sync_and_wait};
use backup_mgmt_e2e::program::run;
use backup_mgmt_e2e::s3server::S3Server;

/// The markers committed before T, none after, and every pgbench table as it was at T.
fn assert_markers_and_tables(restored: &Cluster, r: &mut postgres::Client, at_target: &str) {
    let markers: Vec<i32> = r
        .query("SELECT id FROM markers ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(markers, [1, 2, 3], "{}", restored.log());
    assert_eq!(fingerprint(r), at_target);
}

#[test]
fn the_cluster_comes_back_from_the_bucket_alone() {
    let mut cluster = Cluster::start_with_backups(&[
        "archive_mode = on",
        "archive_library = 'backup_mgmt'",
        "backup_mgmt.archive_compression = zstd",
    ]);
    // The new host: its directory holds the credentials file, nothing of the old one.
    let mut restored = Cluster::empty();
    let s3 = S3Server::start();
    s3.create_bucket("offsite");
    let key_file = restored.dir().join("s3.key");
    restored.write_private_file(&key_file, "S3RVER:S3RVER\n");
    let credentials = format!("file:{}", key_file.display());

    let mut db = cluster.connect("postgres");
    db.batch_execute(
        "CREATE EXTENSION backup_mgmt;
         CREATE TABLE markers (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp());
         -- What the logical path must bring back with its roles: a schema and a table owned
         -- by a role that is no superuser, a membership, a grant; and an event trigger, which
         -- only a superuser may create.
         CREATE ROLE app_owner LOGIN;
         CREATE ROLE readers NOLOGIN;
         GRANT readers TO app_owner;
         CREATE SCHEMA shop AUTHORIZATION app_owner;
         SET ROLE app_owner;
         CREATE TABLE shop.orders (id int PRIMARY KEY, note text);
         INSERT INTO shop.orders SELECT g, 'order ' || g FROM generate_series(1, 2500) g;
         GRANT USAGE ON SCHEMA shop TO readers;
         GRANT SELECT ON shop.orders TO readers;
         RESET ROLE;
         CREATE FUNCTION public.quiet() RETURNS event_trigger LANGUAGE plpgsql AS $$BEGIN END$$;
         -- A superuser's SECURITY DEFINER function: restored, it must not run as a superuser
         -- unless the operator trusts the dump.
         CREATE FUNCTION public.whoami() RETURNS text SECURITY DEFINER LANGUAGE sql AS 'SELECT current_user::text';
         CREATE EVENT TRIGGER quiet ON ddl_command_end EXECUTE FUNCTION public.quiet();",
    )
    .unwrap();
    db.execute(
        "INSERT INTO backup_management.remote_backup_configs
             (config_name, database_name, remote_type, remote_endpoint, remote_path, credentials_ref, options)
         VALUES ('bucket', 'postgres', 's3', $1, 'offsite/fleet', $2, '{}')",
        &[&s3.endpoint(), &credentials],
    )
    .unwrap();
    cluster.run_client("pgbench", &["-i", "-s", "2", "postgres"]);
    for (job, kind, method) in [
        ("full", "full", "native_physical"),
        ("incr", "incremental", "native_physical"),
        ("dump", "full", "pg_dump"),
    ] {
        db.execute(
            "SELECT backup_mgmt.schedule_backup($1, '@yearly', 'postgres', $2, $3)",
            &[&job, &kind, &method],
        )
        .unwrap();
    }
    let full = run_job(&cluster, &mut db, "full");
    cluster.run_client("pgbench", &["-n", "-c", "2", "-t", "300", "postgres"]);
    let incr = run_job(&cluster, &mut db, "incr");
    cluster.run_client("pgbench", &["-n", "-c", "2", "-t", "300", "postgres"]);
    for id in 1..=3 {
        db.execute("INSERT INTO markers (id) VALUES ($1)", &[&id])
            .unwrap();
    }
    let at_target = fingerprint(&mut db);
    // Nothing writes between the fingerprint and the dump: it holds the tables as at T.
    let dump = run_job(&cluster, &mut db, "dump");
    std::thread::sleep(Duration::from_millis(1100));
    let target: String = db
        .query_one("SELECT clock_timestamp()::text", &[])
        .unwrap()
        .get(0);
    std::thread::sleep(Duration::from_millis(1100));
    cluster.run_client("pgbench", &["-n", "-c", "2", "-t", "100", "postgres"]);
    for id in 4..=5 {
        db.execute("INSERT INTO markers (id) VALUES ($1)", &[&id])
            .unwrap();
    }
    db.batch_execute("SELECT pg_switch_wal()").unwrap();
    db.execute("SELECT backup_mgmt.sync_remote_now('bucket')", &[])
        .unwrap();

    // Wait until the bucket's mirror names both backups and every archived file, and the
    // off-site lag is zero.
    let sysid: i64 = db
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .unwrap()
        .get(0);
    let mirror_file = s3.object_file(
        "offsite",
        &format!("fleet/{sysid}/.catalog/catalog_mirror.json"),
    );
    let mut doc = serde_json::Value::Null;
    let complete = Cluster::wait_for(Duration::from_secs(180), || {
        doc = std::fs::read_to_string(&mirror_file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let archived: i64 = db
            .query_one(
                "SELECT count(*) FROM backup_management.wal_archive
                  WHERE expired_at IS NULL AND system_identifier = $1",
                &[&sysid],
            )
            .map(|r| r.get(0))
            .unwrap_or(-1);
        let pending: i64 = db
            .query_one(
                "SELECT coalesce(sum(pending_segments), -1)::bigint FROM backup_mgmt.offsite_wal_status",
                &[],
            )
            .map(|r| r.get(0))
            .unwrap_or(-1);
        doc["backups"].as_array().map_or(0, Vec::len) == 3
            && mirror_wal_count(&doc) == archived
            && pending == 0
    });
    assert!(complete, "mirror: {doc}\n{}", cluster.log());

    // A host-loss drill while the host still stands: the cluster from the bucket alone (its own
    // mirror, not this catalog), started, the recovery time recorded like any drill's.
    db.batch_execute(
        "INSERT INTO disaster_recovery.recovery_plans
             (plan_name, database_name, rto_minutes, rpo_minutes, backup_strategy, recovery_procedure)
         VALUES ('site', 'postgres', 30, 1440, 'native backups and WAL off site', 'backup-mgmt restore')",
    )
    .unwrap();
    // Scheduled, as an operator would have it monthly: the worker's drill worker runs the
    // host-loss drill the job names.
    db.batch_execute(
        "SELECT backup_mgmt.schedule_drill('host-loss', '@yearly', 'site', drill_type => 'host_loss');
         SELECT backup_mgmt.run_job_now('host-loss');",
    )
    .unwrap();
    let ran = Cluster::wait_for(Duration::from_secs(300), || {
        executions(&mut db, "host-loss")
            .iter()
            .any(|(_, status)| status != "running")
    });
    assert!(
        ran,
        "{:?}\n{}",
        executions(&mut db, "host-loss"),
        cluster.log()
    );
    let (status, error): (String, Option<String>) = db
        .query_one(
            "SELECT e.execution_status, e.error_message
               FROM enterprise_backup.backup_job_executions e JOIN enterprise_backup.backup_jobs j USING (job_id)
              WHERE j.job_name = 'host-loss'",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(status, "completed", "{error:?}\n{}", cluster.log());
    let id: i64 = db
        .query_one(
            "SELECT max(drill_id) FROM disaster_recovery.recovery_drills",
            &[],
        )
        .unwrap()
        .get(0);
    let drill = db
        .query_one(
            "SELECT status, drill_type, restored_from, backup_id, recovery_time > interval '0',
                    coalesce(issues, '')
               FROM disaster_recovery.recovery_drills WHERE drill_id = $1",
            &[&id],
        )
        .unwrap();
    let issues: String = drill.get(5);
    assert_eq!(
        drill.get::<_, String>(0),
        "success",
        "{issues}\n{}",
        cluster.log()
    );
    assert_eq!(drill.get::<_, String>(1), "host_loss");
    assert_eq!(drill.get::<_, Option<String>>(2).as_deref(), Some("bucket"));
    assert_eq!(drill.get::<_, Option<i64>>(3), Some(incr));
    assert!(drill.get::<_, bool>(4));

    // The host is lost: its data directory, its backup root, its WAL archive.
    drop(db);
    cluster.pg_ctl_stop("immediate");
    std::fs::remove_dir_all(cluster.data_dir()).unwrap();
    std::fs::remove_dir_all(cluster.backup_root()).unwrap();

    let target_args = [
        "--s3-endpoint",
        &s3.endpoint(),
        "--s3-path",
        "offsite/fleet",
        "--s3-credentials",
        &credentials,
        // s3rver answers a delimited listing with no common prefixes, so the cluster is named
        // (AWS, MinIO and the filesystem target find it by themselves).
        "--cluster",
        &sysid.to_string(),
    ]
    .map(str::to_owned);
    let with = |more: &[&str]| -> Vec<String> {
        target_args
            .iter()
            .cloned()
            .chain(more.iter().map(|s| s.to_string()))
            .collect()
    };
    let args = with(&["--output", "json", "list"]);
    let (code, out, err) = run(
        &restored,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).expect("list --output json");
    let ids: Vec<i64> = listed["clusters"][0]["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backup_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [full, incr, dump], "{out}");

    let data = restored.data_dir();
    let args = with(&[
        "--output",
        "json",
        "restore",
        "--target-time",
        &target,
        data.to_str().unwrap(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // A member of the incremental whose stored bytes no longer decompress: the integrity
    // code, and no directory left behind.
    let incr_key = listed["clusters"][0]["backups"][1]["key"].as_str().unwrap();
    let member = zst_member(
        &s3.object_file("offsite", "x"),
        &format!("fleet/{incr_key}"),
    );
    let good = std::fs::read(&member).unwrap();
    let mut bad = good.clone();
    bad[0] ^= 0xff;
    std::fs::write(&member, &bad).unwrap();
    let (code, out, err) = run(&restored, &args);
    assert_eq!(code, 3, "{}: {out}\n{err}", member.display());
    assert!(err.contains("do not decompress"), "{err}");
    assert!(!data.exists(), "a damaged restore left its directory");
    std::fs::write(&member, &good).unwrap();

    let (code, out, err) = run(&restored, &args);
    assert_eq!(code, 0, "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("restore --output json");
    assert_eq!(report["backup_id"], incr, "{out}");
    assert_eq!(report["chain"], serde_json::json!([full, incr]), "{out}");
    assert!(
        report["why"]
            .as_str()
            .unwrap()
            .contains("ends before the goal with its chain (2 backups) on the target"),
        "{out}"
    );
    assert!(data.join("recovery.signal").is_file());
    let conf = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(
        conf.contains("wal-fetch") && conf.contains("recovery_target_time"),
        "{conf}"
    );

    restored.start_restored(&["archive_mode = off", "shared_preload_libraries = ''"]);
    let mut r = promoted(&restored);
    assert_markers_and_tables(&restored, &mut r, &at_target);
    r.batch_execute("CREATE EXTENSION amcheck").unwrap();
    let checked: i64 = r
        .query_one(
            "SELECT count(bt_index_check(c.oid, true))
               FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
               JOIN pg_am a ON a.oid = c.relam
              WHERE a.amname = 'btree' AND c.relpersistence = 'p'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(checked > 0);
    // Every WAL file recovery read came through wal-fetch, each checked.
    assert!(!restored.log().contains("sha256"), "{}", restored.log());

    // The restored server runs on and writes; --delta brings its directory back to T again,
    // fetching only what changed and removing what the backup lacks (its new WAL above all).
    r.batch_execute("INSERT INTO markers (id) VALUES (100); UPDATE pgbench_accounts SET abalance = 7 WHERE aid < 50; CHECKPOINT")
        .unwrap();
    drop(r);
    let args = with(&[
        "restore",
        "--delta",
        "--target-time",
        &target,
        data.to_str().unwrap(),
    ]);
    let (code, _, err) = run(
        &restored,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_ne!(code, 0, "a delta restore over a running server");
    assert!(err.contains("postmaster.pid"), "{err}");
    restored.pg_ctl_stop("fast");
    let args = with(&[
        "--output",
        "json",
        "restore",
        "--delta",
        "--target-time",
        &target,
        data.to_str().unwrap(),
    ]);
    let (code, out, err) = run(
        &restored,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("restore --output json");
    let delta = &report["delta"];
    assert!(
        delta["kept"].as_u64().unwrap() > 0
            && delta["fetched"].as_u64().unwrap() > 0
            && delta["removed"].as_u64().unwrap() > 0,
        "{out}"
    );
    // postgresql.conf is the backup's again: this host's port and settings once more.
    restored.start_restored(&["archive_mode = off", "shared_preload_libraries = ''"]);
    let mut r = promoted(&restored);
    assert_markers_and_tables(&restored, &mut r, &at_target);

    // A delta restore that fails part-way (a member it must fetch is damaged on the target)
    // leaves a directory that cannot start: its control file held aside, not the one of a
    // half-rewritten cluster. Run again once the target is whole, it finishes.
    drop(r);
    restored.pg_ctl_stop("fast");
    let rel = member
        .strip_prefix(member.ancestors().find(|a| a.ends_with("data")).unwrap())
        .unwrap()
        .to_string_lossy()
        .replace("._S3rver_object", "");
    let rel = rel.strip_suffix(".zst").unwrap().to_owned();
    std::fs::write(data.join(&rel), b"changed since").unwrap();
    std::fs::write(&member, &bad).unwrap();
    let (code, out, err) = run(
        &restored,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(code, 3, "{rel}: {out}\n{err}");
    assert!(
        format!("{out}{err}").contains("run the restore with --delta again"),
        "{out}\n{err}"
    );
    assert!(!data.join("global/pg_control").exists());
    assert!(data.join("global/pg_control.held-by-restore").is_file());
    std::fs::write(&member, &good).unwrap();
    let (code, out, err) = run(
        &restored,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!data.join("global/pg_control.held-by-restore").exists());
    restored.start_restored(&["archive_mode = off", "shared_preload_libraries = ''"]);
    let mut r = promoted(&restored);
    assert_markers_and_tables(&restored, &mut r, &at_target);

    // --delta refuses a directory that is not a data directory (it would empty it).
    let plain = restored.dir().join("not-a-cluster");
    std::fs::create_dir(&plain).unwrap();
    std::fs::write(plain.join("precious"), b"x").unwrap();
    let args = with(&["restore", "--delta", plain.to_str().unwrap()]);
    let (code, _, err) = run(
        &restored,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(code, 2, "{err}");
    assert!(plain.join("precious").exists());

    let dump_key = format!(
        "fleet/{}",
        listed["clusters"][0]["backups"][2]["key"].as_str().unwrap()
    );
    logical_path(&s3.object_file("offsite", &dump_key), &at_target, &with);
}

/// The file of one compressed member of the native backup stored under `key` (`beside` is any
/// object's file in the same bucket: the server's layout of keys in files is its own).
fn zst_member(beside: &std::path::Path, key: &str) -> std::path::PathBuf {
    let mut dirs = vec![beside.parent().unwrap().join(key).join("data")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                dirs.push(path);
            } else if name.ends_with(".zst") || name.ends_with(".zst._S3rver_object") {
                return path;
            }
        }
    }
    panic!("no compressed member under {key}");
}

/// The dump comes back into a new database of a fresh server: its globals first (roles,
/// membership), then the dump as a role that is no superuser, ownership and grants as dumped.
fn logical_path(object: &std::path::Path, at_target: &str, with: &dyn Fn(&[&str]) -> Vec<String>) {
    let fresh = Cluster::start(&[]);
    let socket = fresh.socket_dir();
    let port = fresh.port.to_string();
    let bindir = backup_mgmt_e2e::cluster::bindir();
    let restore_with = |database: &str, more: &[&str]| {
        let mut args = with(&[
            "--output",
            "json",
            "restore-logical",
            "--source-database",
            "postgres",
            "--database",
            database,
            "--host",
            socket.to_str().unwrap(),
            "--port",
            &port,
            "--user",
            "postgres",
            "--pg-bin",
            bindir.to_str().unwrap(),
        ]);
        args.extend(more.iter().map(|s| s.to_string()));
        run(&fresh, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let restore = |database: &str| restore_with(database, &[]);
    let mut f = fresh.connect("postgres");
    // Restore roles that can still log in.
    let leftovers = |f: &mut postgres::Client| -> i64 {
        f.query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'backup_mgmt_restorer%' AND rolcanlogin",
            &[],
        )
        .unwrap()
        .get(0)
    };

    let (code, out, err) = restore("restored");
    assert_eq!(code, 0, "{out}\n{err}\n{}", fresh.log());
    let report: serde_json::Value =
        serde_json::from_str(&out).expect("restore-logical --output json");
    // Nothing verified the dump before the host was lost: the program says so.
    let caution = report["caution"].as_str().unwrap_or_default();
    assert!(caution.contains("has never been verified"), "{out}\n{err}");
    assert!(err.contains("caution:"), "{err}");
    let created: Vec<&str> = report["roles_created"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r.as_str())
        .collect();
    assert!(
        created.contains(&"app_owner") && created.contains(&"readers"),
        "{out}"
    );
    // The existing superuser is left as it is here (its attributes, its password).
    assert!(
        report["globals_skipped"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g.as_str().unwrap_or("").starts_with("ALTER ROLE postgres")),
        "{out}"
    );
    assert!(
        report["roles_existing"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "postgres"),
        "{out}"
    );
    // Only a superuser may create an event trigger: named, not restored.
    assert!(
        report["not_restored"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["object"]
                .as_str()
                .unwrap_or("")
                .contains("EVENT TRIGGER quiet")
                && n["why"] == "needs_superuser"),
        "{out}"
    );
    assert_eq!(leftovers(&mut f), 0, "the restore role can still log in");
    // What postgres owned in the dump stays with the restore role, kept without login,
    // superuser or memberships, for the operator to review.
    let kept = report["kept_role"]["name"]
        .as_str()
        .expect("a kept role")
        .to_owned();
    assert!(
        report["kept_role"]["objects"].as_u64().unwrap() > 0,
        "{out}"
    );
    let powers: (bool, bool, bool) = {
        let row = f
            .query_one(
                "SELECT rolsuper, rolcanlogin, pg_has_role($1, 'app_owner', 'MEMBER')
                   FROM pg_roles WHERE rolname = $1",
                &[&kept],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(powers, (false, false, false), "{kept}");
    let member: bool = f
        .query_one("SELECT pg_has_role('app_owner', 'readers', 'MEMBER')", &[])
        .unwrap()
        .get(0);
    assert!(member, "the membership was not restored");
    drop(f);
    let mut r = fresh.connect("restored");
    let row = r
        .query_one(
            "SELECT (SELECT tableowner FROM pg_tables WHERE schemaname = 'shop' AND tablename = 'orders'),
                    (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'shop'),
                    has_table_privilege('readers', 'shop.orders', 'SELECT'),
                    (SELECT count(*) FROM shop.orders),
                    (SELECT count(*) FROM pg_event_trigger),
                    (SELECT tableowner FROM pg_tables WHERE tablename = 'markers'),
                    whoami()",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(5), kept);
    assert_eq!(
        row.get::<_, String>(6),
        kept,
        "a SECURITY DEFINER function runs as a superuser"
    );
    assert_eq!(row.get::<_, String>(0), "app_owner");
    assert_eq!(row.get::<_, String>(1), "app_owner");
    assert!(row.get::<_, bool>(2));
    assert_eq!(row.get::<_, i64>(3), 2500);
    assert_eq!(row.get::<_, i64>(4), 0);
    assert_markers_and_tables(&fresh, &mut r, at_target);
    drop(r);

    // A dump that is not what the mirror says: refused with the integrity code, no database.
    let mut f = fresh.connect("postgres");
    let good = std::fs::read(object).unwrap();
    let mut bad = good.clone();
    let at = bad.len() * 2 / 3;
    bad[at] ^= 0x55;
    std::fs::write(object, &bad).unwrap();
    let (code, out, err) = restore("restored_again");
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(err.contains("sha256"), "{err}");
    let there: i64 = f
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = 'restored_again'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(there, 0, "a damaged dump left its database");
    assert_eq!(leftovers(&mut f), 0);
    std::fs::write(object, &good).unwrap();

    // Trusted, what postgres owned in the dump is postgres's again, and no role is kept.
    let (code, out, err) = restore_with("trusted", &["--trust-superuser-objects"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(report["kept_role"].is_null(), "{out}");
    let mut t = fresh.connect("trusted");
    let owner: String = t
        .query_one(
            "SELECT tableowner FROM pg_tables WHERE tablename = 'markers'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(owner, "postgres");
    drop(t);

    // Never over an existing database.
    let (code, _, err) = restore("restored");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("exists"), "{err}");
}

/// A pg_basebackup backup copied to a filesystem target comes back from it alone: the program
/// finds the cluster by itself, refuses a tar that is not what the mirror says (exit 3, no
/// directory left), and restores the real one, recovering through the WAL on the target.
#[test]
fn a_pg_basebackup_backup_comes_back_from_a_filesystem_target() {
    let mut cluster =
        Cluster::start_with_backups(&["archive_mode = on", "archive_library = 'backup_mgmt'"]);
    let mut restored = Cluster::empty();
    let mut db = cluster.connect("postgres");
    // The target: a second disk, listed as a backup root.
    let disk = cluster.second_backup_root("second-disk");
    db.batch_execute(
        "CREATE EXTENSION backup_mgmt;
         CREATE TABLE orders (id int PRIMARY KEY);
         INSERT INTO orders SELECT generate_series(1, 1000);",
    )
    .unwrap();
    add_disk_target(&mut db, &disk);
    db.execute(
        "SELECT backup_mgmt.schedule_backup('base', '@yearly', 'postgres', 'full', 'pg_basebackup',
                                            '{\"fast_checkpoint\": true, \"compression\": \"zstd\"}')",
        &[],
    )
    .unwrap();
    let base = run_job(&cluster, &mut db, "base");
    // Two statements, two transactions: the switch comes after the insert's commit.
    db.batch_execute("INSERT INTO orders SELECT generate_series(1001, 2000)")
        .unwrap();
    // A WAL location between two commits: --target-lsn stops there.
    let between: String = db
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .unwrap()
        .get(0);
    db.batch_execute("INSERT INTO orders SELECT generate_series(2001, 3000)")
        .unwrap();
    let (target, _, doc) = switch_sync_and_wait(&cluster, &mut db, &disk, 1);
    let key = doc["backups"][0]["key"].as_str().unwrap().to_owned();
    assert!(key.ends_with(".zst"), "{key}");
    drop(db);
    cluster.pg_ctl_stop("immediate");
    std::fs::remove_dir_all(cluster.data_dir()).unwrap();
    std::fs::remove_dir_all(cluster.backup_root()).unwrap();

    let dir = target.to_str().unwrap().to_owned();
    let data = restored.data_dir();
    // A tar on the target that is not the one the mirror names.
    let object = target.join(&key);
    let good = std::fs::read(&object).unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0xff;
    std::fs::write(&object, &bad).unwrap();
    let (code, out, err) = run(
        &restored,
        &["--dir", &dir, "restore", "--latest", data.to_str().unwrap()],
    );
    assert_eq!(code, 3, "{out}\n{err}");
    assert!(err.contains("sha256") || err.contains("zstd"), "{err}");
    assert!(!data.exists(), "a damaged restore left its directory");
    std::fs::write(&object, &good).unwrap();

    let (code, out, err) = run(
        &restored,
        &[
            "--dir",
            &dir,
            "--output",
            "json",
            "restore",
            "--latest",
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["backup_id"], base, "{out}");
    restored.start_restored(&["archive_mode = off", "shared_preload_libraries = ''"]);
    let mut r = promoted(&restored);
    let count: i64 = r
        .query_one("SELECT count(*) FROM orders", &[])
        .unwrap()
        .get(0);
    assert_eq!(count, 3000, "{}", restored.log());
    drop(r);
    restored.pg_ctl_stop("fast");

    // To a WAL location: the first insert's rows, none of the second's.
    let mut at_lsn = Cluster::empty();
    let data = at_lsn.data_dir();
    let (code, out, err) = run(
        &at_lsn,
        &[
            "--dir",
            &dir,
            "restore",
            "--target-lsn",
            &between,
            data.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let conf = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(
        conf.contains(&format!("recovery_target_lsn = '{between}'")),
        "{conf}"
    );
    at_lsn.start_restored(&["archive_mode = off", "shared_preload_libraries = ''"]);
    let mut r = promoted(&at_lsn);
    let count: i64 = r
        .query_one("SELECT count(*) FROM orders", &[])
        .unwrap()
        .get(0);
    assert_eq!(count, 2000, "{}", at_lsn.log());
}
