//! Attacks through the catalog, tried as mallory (a `backup_admin` member, not a superuser)
//! would (issue "least privilege and provenance", attacks 1, 5, 8, 9 and 10).  Each test asserts
//! the safe end state: nothing outside the roots read or sent, nothing deleted that must stay,
//! no forged record trusted, nothing but ids received by a non-member, no target beyond the
//! limits a superuser set.

use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;

use backup_mgmt_e2e::attack::{is_superuser, mallory, refused, wait_true};
use backup_mgmt_e2e::cluster::{sha256sum, Cluster};
use backup_mgmt_e2e::jobs::{cluster_with_appdb, files_under, run_now, wait_records};

/// Attack 1: register a file of the data directory (or reach it through a planted symlink),
/// then have the worker copy it to a target of mallory's choosing.
#[test]
fn attack_1_offsite_copies_never_read_outside_the_roots() {
    let (cluster, mut db) = cluster_with_appdb();
    let mut m = mallory(&cluster, &mut db);
    let root = cluster.backup_root();
    let register = "SELECT backup_mgmt.record_backup_start('x', 'full', 'pg_dump', $1)";

    let authid = cluster.data_dir().join("global");
    for path in [authid.display().to_string(), "/etc/passwd".to_owned()] {
        let (state, message) = refused(m.query_one(register, &[&path]));
        assert_eq!(state, "42501", "{path}: {message}");
    }
    // A symlink someone planted inside a root, leading to the data directory.
    std::os::unix::fs::symlink(&authid, root.join("leak")).unwrap();
    let leak = root.join("leak").display().to_string();
    let (state, _) = refused(m.query_one(register, &[&leak]));
    assert_eq!(state, "42501");
    std::fs::remove_file(root.join("leak")).unwrap();

    // Targets of mallory's choosing outside what a superuser allowed: refused.
    let target = "INSERT INTO backup_management.remote_backup_configs
                      (config_name, database_name, remote_type, remote_endpoint, remote_path, credentials_ref)
                  VALUES ($1, 'x', $2, $3, $4, $5)";
    for (kind, endpoint, path, credentials) in [
        (
            "s3",
            "https://attacker.example",
            "loot",
            Some("env:BACKUP_MGMT_KEY"),
        ),
        ("filesystem", "/tmp", "exfil", None),
    ] {
        let (state, message) =
            refused(m.execute(target, &[&kind, &kind, &endpoint, &path, &credentials]));
        assert_eq!(state, "42501", "{kind} {endpoint}: {message}");
    }

    // A record that names a file outside the roots anyway (an old catalog's row, a superuser's
    // slip), even one claiming to be the worker's, and a target inside the roots that mallory
    // may configure: the copy is refused where the file would be read.
    let forged: i64 = db
        .query_one(
            "INSERT INTO backup_management.backup_records
                 (database_name, backup_type, backup_method, backup_file_path, status, end_time,
                  duration, backup_size, origin)
             VALUES ('x', 'full', 'pg_dump', $1, 'completed', now(), '0', 1, 'worker')
             RETURNING backup_id",
            &[&format!("{}/pg_control", authid.display())],
        )
        .unwrap()
        .get(0);
    let none: Option<&str> = None;
    m.execute(
        target,
        &[
            &"exfil",
            &"filesystem",
            &root.display().to_string(),
            &"offsite",
            &none,
        ],
    )
    .unwrap();
    m.execute("SELECT backup_mgmt.sync_remote_now('exfil')", &[])
        .unwrap();
    wait_true(
        &cluster,
        &mut db,
        &format!(
            "SELECT EXISTS (SELECT FROM backup_management.remote_backup_records
                             WHERE backup_id = {forged} AND sync_status = 'failed'
                               AND error_message LIKE '%outside backup_mgmt.backup_roots%')"
        ),
        60,
    );
    let control = std::fs::read(authid.join("pg_control")).unwrap();
    for f in files_under(&root).into_iter().filter(|p| p.is_file()) {
        assert_ne!(
            std::fs::read(&f).unwrap(),
            control,
            "{} is pg_control",
            f.display()
        );
    }
    assert!(!is_superuser(&mut db, "mallory"));
}

/// Attack 5: register a backup root itself (or a symlink to it) and let retention remove it.
#[test]
fn attack_5_retention_never_removes_a_root_or_the_wal_archive() {
    let (cluster, mut db) = cluster_with_appdb();
    let mut m = mallory(&cluster, &mut db);
    let root = cluster.backup_root();
    run_now(&mut db, "nightly", "appdb", "pg_dump", "{}");
    let kept = &wait_records(&cluster, &mut db, "nightly", "completed", 1, 60)[0];
    // Something of the WAL archive's.
    let archive = root.join("wal").join("1");
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::write(archive.join("000000010000000000000001"), b"wal").unwrap();

    let register = "SELECT backup_mgmt.record_backup_start('appdb', 'full', 'pg_dump', $1)";
    std::os::unix::fs::symlink(&root, root.join("all")).unwrap();
    for path in [root.clone(), root.join("all"), root.join("wal")] {
        let (state, message) = refused(m.query_one(register, &[&path.display().to_string()]));
        assert_eq!(state, "42501", "{}: {message}", path.display());
    }

    // Rows that name the root and the archive anyway (an old catalog, a superuser's slip), even
    // claiming to be the worker's, and a policy that keeps as little as it can.
    for path in [root.clone(), root.join("wal")] {
        db.execute(
            "INSERT INTO backup_management.backup_records
                 (database_name, backup_type, backup_method, backup_file_path, status, start_time,
                  end_time, duration, backup_size, origin)
             VALUES ('appdb', 'full', 'pg_dump', $1, 'completed', now() - interval '3 years',
                     now() - interval '3 years', '0', 1, 'worker')",
            &[&path.display().to_string()],
        )
        .unwrap();
    }
    // A newer record the policy keeps, outside the archive: the row naming the archive is then
    // named by no kept record, so its removal is attempted (the row naming the root is not: the
    // kept backups lie inside it, and retention deletes by reference).
    db.execute(
        "INSERT INTO backup_management.backup_records
             (database_name, backup_type, backup_method, backup_file_path, status, start_time,
              end_time, duration, backup_size, origin)
         VALUES ('appdb', 'full', 'pg_dump', $1, 'completed', now(), now(), '0', 1, 'registered')",
        &[&root.join("newest.dump").display().to_string()],
    )
    .unwrap();
    m.batch_execute(
        "INSERT INTO backup_management.retention_policies
             (policy_name, keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly)
         VALUES ('wipe', 1, 0, 0, 0, 0);
         SELECT * FROM backup_mgmt.apply_retention(NULL, 'wipe');",
    )
    .unwrap();
    let expired: i64 = db
        .query_one(
            "SELECT count(*) FROM backup_management.backup_records WHERE status = 'expired'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        expired >= 1,
        "the policy expired nothing, so this test proves nothing"
    );
    assert!(root.is_dir());
    assert!(kept.path.exists(), "the worker's backup is gone");
    assert!(archive.join("000000010000000000000001").exists());
    assert!(Cluster::wait_for(Duration::from_secs(5), || cluster
        .log()
        .contains("retention could not remove")));
}

/// Attack 8: a registered native backup as the parent of the worker's next incremental one, and
/// a recipe for it.
#[test]
fn attack_8_chains_and_recipes_follow_only_the_workers_records() {
    let (cluster, mut db) = cluster_with_appdb();
    let mut m = mallory(&cluster, &mut db);
    let fake = cluster.backup_root().join("fake.native");
    std::fs::create_dir(&fake).unwrap();
    std::fs::write(fake.join("files.manifest"), b"# forged\n").unwrap();
    let id: i64 = m
        .query_one(
            "SELECT backup_mgmt.record_backup_start('postgres', 'full', 'native_physical', $1)",
            &[&fake.display().to_string()],
        )
        .unwrap()
        .get(0);
    m.execute(
        "SELECT backup_mgmt.record_backup_complete($1, 1, $2)",
        &[&id, &"a".repeat(64)],
    )
    .unwrap();
    let (state, _) = refused(m.query_one("SELECT backup_mgmt.restore_recipe($1)", &[&id]));
    assert_eq!(state, "42501");

    m.batch_execute(
        "SELECT backup_mgmt.schedule_backup('incr', '@yearly', 'postgres', 'incremental', 'native_physical', '{\"fast_checkpoint\": true}');
         SELECT backup_mgmt.run_job_now('incr');",
    )
    .unwrap();
    let taken = &wait_records(&cluster, &mut db, "incr", "completed", 1, 120)[0];
    let (kind, parent, origin): (String, Option<i64>, String) = db
        .query_one(
            "SELECT backup_type, parent_backup_id, origin FROM backup_management.backup_records WHERE backup_id = $1",
            &[&taken.id],
        )
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .unwrap();
    assert_eq!(parent, None, "built on the registered backup");
    assert_eq!(
        kind, "full",
        "nothing of the worker's to build on: a full backup"
    );
    assert_eq!(origin, "worker");
}

/// Attack 9: a role outside backup_admin listens to backup_mgmt's notifications.
#[test]
fn attack_9_listeners_learn_only_event_names_and_ids() {
    let (cluster, mut db) = cluster_with_appdb();
    let mut m = mallory(&cluster, &mut db);
    db.batch_execute("CREATE ROLE eve LOGIN").unwrap();
    let mut eve = cluster.connect_as("postgres", "eve").unwrap();
    eve.batch_execute("LISTEN backup_mgmt").unwrap();

    let path = cluster.backup_root().join("secret-name.dump");
    let id: i64 = m
        .query_one(
            "SELECT backup_mgmt.record_backup_start('appdb', 'full', 'pg_dump', $1)",
            &[&path.display().to_string()],
        )
        .unwrap()
        .get(0);
    m.execute(
        "SELECT backup_mgmt.record_backup_failure($1, 'password=hunter2 in /very/secret/place')",
        &[&id],
    )
    .unwrap();
    run_now(&mut db, "nightly", "appdb", "pg_dump", "{}");
    let done = &wait_records(&cluster, &mut db, "nightly", "completed", 1, 60)[0];

    let notes: Vec<String> = eve
        .notifications()
        .timeout_iter(Duration::from_secs(3))
        .iterator()
        .filter_map(Result::ok)
        .map(|n| n.payload().to_owned())
        .collect();
    assert!(notes.len() >= 2, "{notes:?}");
    for n in &notes {
        let v: serde_json::Value = serde_json::from_str(n).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert!(
            keys.iter()
                .all(|k| ["event", "backup_id", "verification_id"].contains(&k.as_str())),
            "{n}"
        );
        for secret in ["hunter2", "secret", &done.checksum, "/"] {
            assert!(!n.contains(secret), "{secret} in {n}");
        }
    }
}

/// Attack 10: object-storage targets at addresses of mallory's choosing, credentials from any
/// environment variable or file, and the low ones: where symlinks lead, forged log lines, a
/// kept scratch database open to everyone.
#[test]
fn attack_10_targets_stay_within_the_limits_and_nothing_leaks() {
    let (cluster, mut db) = cluster_with_appdb();
    let mut m = mallory(&cluster, &mut db);
    let insert = "INSERT INTO backup_management.remote_backup_configs
                      (config_name, database_name, remote_type, remote_endpoint, remote_path, credentials_ref, options)
                  VALUES ($1, 'appdb', 's3', $2, 'b', $3, $4::text::jsonb)";
    let creds = tempfile::tempdir_in("/tmp").unwrap();
    for (endpoint, credentials, options) in [
        ("http://169.254.169.254", "env:BACKUP_MGMT_S3", "{}"),
        ("https://attacker.example", "env:PGPASSWORD", "{}"),
        (
            "https://attacker.example",
            "file:/var/lib/postgresql/.pgpass",
            "{}",
        ),
        (
            "https://attacker.example",
            "env:BACKUP_MGMT_S3",
            r#"{"ca_file": "/etc/ssl/private/ssl-cert-snakeoil.key"}"#,
        ),
    ] {
        let (state, message) =
            refused(m.execute(insert, &[&"t", &endpoint, &credentials, &options]));
        assert_eq!(
            state, "42501",
            "{endpoint} {credentials} {options}: {message}"
        );
    }
    // Within the limits a superuser sets: allowed; tightened later: refused when used.
    let endpoint = "http://127.0.0.1:1";
    for sql in [
        format!("ALTER SYSTEM SET backup_mgmt.offsite_endpoints = '{endpoint}'"),
        "ALTER SYSTEM SET backup_mgmt.offsite_allow_http = on".to_owned(),
        format!(
            "ALTER SYSTEM SET backup_mgmt.credentials_directory = '{}'",
            creds.path().display()
        ),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        db.batch_execute(&sql).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    m.execute(
        insert,
        &[&"allowed", &endpoint, &"env:BACKUP_MGMT_S3", &"{}"],
    )
    .unwrap();
    // Credentials bound to an endpoint: that key goes nowhere else, and that endpoint takes no
    // other key (an Azure SharedKey request signed for one endpoint could be replayed at another).
    let other = "http://127.0.0.1:2";
    db.batch_execute(&format!(
        "ALTER SYSTEM SET backup_mgmt.offsite_endpoints = '{endpoint}, {other} = env:BACKUP_MGMT_AZURE'"
    ))
    .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for (name, at, key) in [
        ("bound-elsewhere", endpoint, "env:BACKUP_MGMT_AZURE"),
        ("not-named-there", other, "env:BACKUP_MGMT_S3"),
    ] {
        let (state, message) = refused(m.execute(insert, &[&name, &at, &key, &"{}"]));
        assert_eq!(state, "42501", "{name}: {message}");
        assert!(
            message.contains("is not one backup_mgmt.offsite_endpoints names"),
            "{name}: {message}"
        );
    }
    m.execute(
        insert,
        &[&"paired", &other, &"env:BACKUP_MGMT_AZURE", &"{}"],
    )
    .unwrap();
    db.batch_execute("ALTER SYSTEM SET backup_mgmt.offsite_endpoints = ''")
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf()").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    m.execute("SELECT backup_mgmt.sync_remote_now('allowed')", &[])
        .unwrap();
    wait_true(
        &cluster,
        &mut db,
        "SELECT sync_status = 'failed' FROM backup_management.remote_backup_configs WHERE config_name = 'allowed'",
        30,
    );
    assert!(cluster
        .log()
        .contains("is not in backup_mgmt.offsite_endpoints"));

    // check_backup_path tells the caller that a path escapes, not where to.
    let peek = cluster.backup_root().join("peek");
    std::os::unix::fs::symlink("/etc/shadow", &peek).unwrap();
    let e = m
        .query_one(
            "SELECT backup_mgmt.check_backup_path($1)",
            &[&peek.display().to_string()],
        )
        .expect_err("an escaping path was accepted");
    let dbe = e.as_db_error().unwrap();
    let told = format!("{} {:?} {:?}", dbe.message(), dbe.detail(), dbe.hint());
    assert!(!told.contains("shadow"), "{told}");

    // A failure message cannot forge a log line.
    let id: i64 = m
        .query_one(
            "SELECT backup_mgmt.record_backup_start('appdb', 'full', 'pg_dump', $1)",
            &[&cluster.backup_root().join("f.dump").display().to_string()],
        )
        .unwrap()
        .get(0);
    m.execute(
        "SELECT backup_mgmt.record_backup_failure($1, E'boom\\n2026-12-03 00:00:00 UTC [1] LOG:  all backups verified')",
        &[&id],
    )
    .unwrap();
    assert!(Cluster::wait_for(Duration::from_secs(5), || cluster
        .log()
        .contains("boom\\n2026-12-03")));
    assert!(!cluster
        .log()
        .lines()
        .any(|l| l.starts_with("2026-12-03 00:00:00 UTC [1] LOG:")));

    // A kept scratch database: nobody but superusers may connect to it.
    run_now(&mut db, "nightly", "appdb", "pg_dump", "{}");
    let dump = &wait_records(&cluster, &mut db, "nightly", "completed", 1, 60)[0];
    assert_eq!(sha256sum(&dump.path), dump.checksum);
    let status: String = m
        .query_one(
            "SELECT test_status FROM backup_mgmt.test_backup_restore($1, 'kept_copy', true)",
            &[&dump.id],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "passed");
    db.batch_execute("CREATE ROLE eve LOGIN").unwrap();
    for role in ["eve", "mallory"] {
        let Err(e) = cluster.connect_as("kept_copy", role) else {
            panic!("{role} connected to the kept scratch database");
        };
        assert_eq!(
            e.as_db_error().map(|d| d.code().code().to_owned()),
            Some("42501".to_owned()),
            "{role}: {e}"
        );
    }
    let rows: i64 = cluster
        .connect("kept_copy")
        .query_one("SELECT count(*) FROM public.orders", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 20000);
    assert!(!is_superuser(&mut db, "mallory"));
}

/// Attack 11 (issue 15's additions): mallory tries to write the verification state that upkeep,
/// retention and plan_recovery trust (marking her backup verified, clearing another's failures),
/// to call its maintenance functions, and to feed the backoff absurd numbers.  Every write is
/// refused, the state still equals its definition, and the backoff stays within its bounds.
#[test]
fn attack_11_verification_state_is_written_only_by_the_catalog() {
    let (cluster, mut db) = cluster_with_appdb();
    let mut m = mallory(&cluster, &mut db);
    let file = cluster.backup_root().join("hers.dump");
    std::fs::write(&file, b"not a dump").unwrap();
    let id: i64 = m
        .query_one(
            "SELECT backup_mgmt.record_backup_start('postgres', 'full', 'pg_dump', $1)",
            &[&file.display().to_string()],
        )
        .unwrap()
        .get(0);
    m.execute(
        "SELECT backup_mgmt.record_backup_complete($1, 10, $2)",
        &[&id, &"a".repeat(64)],
    )
    .unwrap();
    for sql in [
        format!("SELECT backup_mgmt.verification_state_refresh(ARRAY[{id}]::bigint[])"),
        format!(
            "INSERT INTO backup_management.verification_state (backup_id, database_name, last_status)
             VALUES ({id}, 'postgres', 'passed')"
        ),
        format!("UPDATE backup_management.verification_state SET last_status = 'passed', failures = 0 WHERE backup_id = {id}"),
        "DELETE FROM backup_management.verification_state".to_owned(),
        "TRUNCATE backup_management.verification_state".to_owned(),
        format!(
            "INSERT INTO backup_management.backup_verifications (backup_id, verification_type, verification_status)
             VALUES ({id}, 'checksum', 'passed')"
        ),
    ] {
        let (state, message) = refused(m.execute(sql.as_str(), &[]));
        assert_eq!(state, "42501", "{sql}: {message}");
    }
    // A trigger function is not a function one can call.
    let (state, _) = refused(m.execute("SELECT backup_mgmt.verification_state_track()", &[]));
    assert_eq!(state, "0A000");
    // The state is still what the tables say: unverified.
    let same: bool = db
        .query_one(
            "SELECT (SELECT s FROM backup_management.verification_state s WHERE backup_id = $1)
                    IS NOT DISTINCT FROM (SELECT s FROM backup_mgmt.verification_state_of(ARRAY[$1]) s)
                AND (SELECT last_status FROM backup_management.verification_state WHERE backup_id = $1) IS NULL",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert!(same);
    // Absurd failure counts: the pause stays between an hour and a day (verify_interval 7 days:
    // at most the interval).
    for n in [i32::MIN, -1, 0, 1, 30, i32::MAX] {
        let ok: bool = m
            .query_one(
                "SELECT backup_mgmt.upkeep_backoff($1) BETWEEN interval '1 hour' AND interval '7 days'",
                &[&n],
            )
            .unwrap()
            .get(0);
        assert!(ok, "upkeep_backoff({n})");
    }
    assert!(!is_superuser(&mut db, "mallory"));
}
