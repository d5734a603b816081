//! Attacks through restore tests, tried as mallory (a `backup_admin` member, not a superuser)
//! would (issue "least privilege and provenance", attacks 2, 3 and 7): backup content never runs
//! with a superuser's rights, a server is started only on a directory the worker wrote and
//! verified, and scratch directories never follow planted symlinks.  Attacks 8 and 9 (issue 17)
//! come through the backup's own catalog and through an off-site target: per-database settings
//! load nothing when the checks connect, and a host-loss drill starts nothing a forged target
//! holds.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use backup_mgmt_e2e::attack::{is_superuser, mallory, refused};
use backup_mgmt_e2e::cluster::sha256sum;
use backup_mgmt_e2e::jobs::{cluster_with_appdb, run_now, wait_records};

/// What mallory plants in a database she may create objects in: a function that makes her a
/// superuser when a superuser runs it, used by a CHECK constraint of a table with a row, and an
/// operator `public.||(name, name)` that calls it, as the row-count query of a careless restore
/// test would.
const TRAP: &str = "
CREATE FUNCTION public.escalate() RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
    BEGIN
        EXECUTE 'ALTER ROLE mallory SUPERUSER';
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
    RETURN true;
END $f$;
CREATE FUNCTION public.concat_escalating(name, name) RETURNS text LANGUAGE sql
    AS $f$ SELECT CASE WHEN public.escalate() THEN $1::text || $2::text END $f$;
CREATE OPERATOR public.|| (LEFTARG = name, RIGHTARG = name, FUNCTION = public.concat_escalating);
CREATE TABLE public.guarded (x int CHECK (public.escalate()));
INSERT INTO public.guarded VALUES (1);
";

/// Attack 2: a dump whose restore (and row counting) would run mallory's code as a superuser;
/// restore-tested on demand and by a drill.
#[test]
fn attack_2_logical_restores_run_backup_content_without_privileges() {
    let (cluster, mut db) = cluster_with_appdb();
    let mut m = mallory(&cluster, &mut db);
    let mut app = cluster.connect_as("appdb", "mallory").unwrap();
    app.batch_execute(TRAP).unwrap();
    // The typical objects still restore: a view, a sequence, an index, a plpgsql function, a
    // trusted extension.
    app.batch_execute(
        "CREATE SEQUENCE public.s; SELECT nextval('public.s');
         CREATE VIEW public.v AS SELECT count(*) FROM public.guarded;
         CREATE INDEX ON public.guarded (x);
         CREATE FUNCTION public.twice(int) RETURNS int LANGUAGE plpgsql AS 'BEGIN RETURN 2 * $1; END';
         CREATE EXTENSION hstore;",
    )
    .unwrap();
    // And one that only a superuser may create: named in the result, not silently dropped.
    cluster
        .connect("appdb")
        .batch_execute(
            "CREATE FUNCTION public.noop_trigger() RETURNS event_trigger LANGUAGE plpgsql AS 'BEGIN END';
             CREATE EVENT TRIGGER watch ON ddl_command_start EXECUTE FUNCTION public.noop_trigger();",
        )
        .unwrap();

    m.batch_execute(
        "SELECT backup_mgmt.schedule_backup('app', '@yearly', 'appdb', 'full', 'pg_dump', '{}');
         SELECT backup_mgmt.run_job_now('app');",
    )
    .unwrap();
    let dump = &wait_records(&cluster, &mut db, "app", "completed", 1, 60)[0];
    let (status, verified): (String, bool) = m
        .query_one(
            "SELECT test_status, data_verification FROM backup_mgmt.test_backup_restore($1)",
            &[&dump.id],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    let result: serde_json::Value = db
        .query_one(
            "SELECT verification_result::text FROM backup_management.backup_verifications
              WHERE backup_id = $1 AND verification_type = 'restore_test' ORDER BY verification_id DESC LIMIT 1",
            &[&dump.id],
        )
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).unwrap())
        .unwrap();
    assert_eq!((status.as_str(), verified), ("passed", true), "{result}");
    assert!(
        !is_superuser(&mut db, "mallory"),
        "escalated by a restore test"
    );
    let restorer = result["restored_as"].as_str().unwrap().to_owned();
    assert!(restorer.starts_with("backup_mgmt_restorer_"), "{result}");
    let skipped = result["needs_superuser"].to_string();
    assert!(skipped.contains("EVENT TRIGGER watch"), "{result}");
    // The restore role is gone with its database.
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'backup_mgmt_restorer_%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(left, 0);

    // A drill of a plan mallory wrote restores the same dump, unattended: same outcome.
    m.batch_execute(
        "INSERT INTO disaster_recovery.recovery_plans
             (plan_name, database_name, rpo_minutes, rto_minutes, backup_strategy, recovery_procedure)
         VALUES ('app-plan', 'appdb', 1440, 60, 'nightly pg_dump', 'restore the newest dump');
         SELECT * FROM backup_mgmt.run_recovery_drill('app-plan');",
    )
    .unwrap();
    let drill: String = db
        .query_one(
            "SELECT status FROM disaster_recovery.recovery_drills ORDER BY drill_id DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert_ne!(drill, "failed");
    assert!(!is_superuser(&mut db, "mallory"), "escalated by a drill");

    // The control: restored by a superuser, the same dump does make mallory a superuser, so the
    // trap is real and the checks above could fail.
    let control = cluster.dir().join("control.dump");
    let shown = control.display().to_string();
    cluster.run_client("pg_dump", &["-Fc", "-f", &shown, "appdb"]);
    db.batch_execute("CREATE DATABASE control").unwrap();
    let _ = cluster
        .client_command("pg_restore")
        .args(["-d", "control", &shown])
        .output();
    assert!(
        is_superuser(&mut db, "mallory"),
        "the trap did not fire for a superuser"
    );
    db.batch_execute("ALTER ROLE mallory NOSUPERUSER").unwrap();
}

/// A tar made from `base` with `extra` files appended (what an attacker who can write to a root
/// does to a pg_basebackup tar).
fn tampered_tar(base: &Path, into: &Path, extra: &[(&str, &str)]) -> PathBuf {
    std::fs::copy(base, into).unwrap();
    let staging = tempfile::tempdir().unwrap();
    for (name, text) in extra {
        std::fs::write(staging.path().join(name), text).unwrap();
    }
    let mut tar = Command::new("tar");
    tar.arg("--append")
        .arg(format!("--file={}", into.display()))
        .arg(format!("--directory={}", staging.path().display()));
    for (name, _) in extra {
        tar.arg(name);
    }
    assert!(tar.status().unwrap().success());
    // Readable by the server, as an attacker's file would be.
    std::fs::set_permissions(into, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    into.to_owned()
}

/// Attack 3: a pg_basebackup tar with an appended `postgresql.auto.conf` whose
/// `restore_command` runs a program, and a `recovery.signal`, registered and restore-tested;
/// and the worker's own tar, tampered with in place.
#[test]
fn attack_3_physical_restore_tests_start_only_what_the_worker_wrote() {
    let (cluster, mut db) = cluster_with_appdb();
    let mut m = mallory(&cluster, &mut db);
    run_now(
        &mut db,
        "base",
        "postgres",
        "pg_basebackup",
        r#"{"compression": "none", "fast_checkpoint": true}"#,
    );
    let base = &wait_records(&cluster, &mut db, "base", "completed", 1, 120)[0];
    let marker = cluster.dir().join("pwned");
    let payload = format!(
        "restore_command = 'touch {m}'\narchive_command = 'touch {m}'\nshared_preload_libraries = ''\n",
        m = marker.display()
    );
    let evil_dir = cluster.backup_root().join("evil");
    std::fs::create_dir(&evil_dir).unwrap();
    let evil = tampered_tar(
        &base.path,
        &evil_dir.join("base.tar"),
        &[("postgresql.auto.conf", &payload), ("recovery.signal", "")],
    );
    let size = std::fs::metadata(&evil).unwrap().len() as i64;
    let id: i64 = m
        .query_one(
            "SELECT backup_mgmt.record_backup_start('postgres', 'full', 'pg_basebackup', $1)",
            &[&evil.display().to_string()],
        )
        .unwrap()
        .get(0);
    m.execute(
        "SELECT backup_mgmt.record_backup_complete($1, $2, $3)",
        &[&id, &size, &sha256sum(&evil)],
    )
    .unwrap();
    let (state, message) = refused(m.query_one(
        "SELECT test_status FROM backup_mgmt.test_backup_restore($1)",
        &[&id],
    ));
    assert_eq!(state, "42501", "{message}");
    // Its checksum can be verified; it is not unpacked.
    let ok: bool = m
        .query_one("SELECT backup_mgmt.verify_backup_integrity($1)", &[&id])
        .unwrap()
        .get(0);
    assert!(ok);

    // The worker's own tar, appended to in place: its checksum no longer matches, and the
    // server is never started.
    let copy = cluster.dir().join("copy.tar");
    tampered_tar(
        &base.path,
        &copy,
        &[("postgresql.auto.conf", &payload), ("recovery.signal", "")],
    );
    std::fs::copy(&copy, &base.path).unwrap();
    let status: String = m
        .query_one(
            "SELECT test_status FROM backup_mgmt.test_backup_restore($1)",
            &[&base.id],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "failed");
    let stage: String = db
        .query_one(
            "SELECT verification_result->>'stage' FROM backup_management.backup_verifications
              WHERE backup_id = $1 AND verification_type = 'restore_test' ORDER BY verification_id DESC LIMIT 1",
            &[&base.id],
        )
        .unwrap()
        .get(0);
    assert_eq!(stage, "integrity");
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert!(!marker.exists(), "the planted restore_command ran");
}

/// Attack 7: the scratch directory a restore test works in is a planted symlink to a directory
/// the server's OS user can write (here one outside the roots).
#[test]
fn attack_7_scratch_directories_never_follow_planted_symlinks() {
    let (cluster, mut db) = cluster_with_appdb();
    let mut m = mallory(&cluster, &mut db);
    run_now(
        &mut db,
        "base",
        "postgres",
        "pg_basebackup",
        r#"{"compression": "none", "fast_checkpoint": true}"#,
    );
    let base = &wait_records(&cluster, &mut db, "base", "completed", 1, 120)[0];
    let victim = cluster.dir().join("victim");
    let made = cluster
        .server_command("/bin/mkdir")
        .arg(&victim)
        .status()
        .unwrap();
    assert!(made.success());
    let scratch = cluster.backup_root().join(".backup_mgmt_restore");
    std::os::unix::fs::symlink(&victim, &scratch).unwrap();

    let e = m
        .query_one(
            "SELECT test_status FROM backup_mgmt.test_backup_restore($1)",
            &[&base.id],
        )
        .expect_err("the restore test went through a planted symlink");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains(".backup_mgmt_restore"), "{e:?}");
    assert_eq!(
        std::fs::read_dir(&victim).unwrap().count(),
        0,
        "written through the symlink"
    );
    assert!(std::fs::symlink_metadata(&scratch)
        .unwrap()
        .file_type()
        .is_symlink());

    // Without the planted link, the operator's normal work goes on.
    std::fs::remove_file(&scratch).unwrap();
    let status: String = m
        .query_one(
            "SELECT test_status FROM backup_mgmt.test_backup_restore($1)",
            &[&base.id],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "passed");
    assert!(!is_superuser(&mut db, "mallory"));
}

/// Attack 8: the backed-up catalog holds a per-database setting that loads a library whenever a
/// session starts (a superuser's `ALTER DATABASE ... SET session_preload_libraries`, or a forged
/// backup's catalog).  Such settings outrank the scratch server's command line, so the restore
/// test's checking sessions set their own from the client: they connect to that database and
/// load nothing (a library that does not exist would otherwise refuse every session).
#[test]
fn attack_8_restored_database_settings_load_nothing_when_the_checks_connect() {
    let (cluster, mut db) = cluster_with_appdb();
    db.batch_execute(
        "ALTER DATABASE appdb SET session_preload_libraries = 'bm_no_such_library';
         ALTER DATABASE appdb SET local_preload_libraries = 'bm_no_such_plugin'",
    )
    .unwrap();
    run_now(
        &mut db,
        "base",
        "postgres",
        "pg_basebackup",
        r#"{"compression": "none", "fast_checkpoint": true}"#,
    );
    let base = &wait_records(&cluster, &mut db, "base", "completed", 1, 120)[0];
    db.batch_execute(
        "ALTER DATABASE appdb RESET session_preload_libraries;
         ALTER DATABASE appdb RESET local_preload_libraries",
    )
    .unwrap();
    let status: String = db
        .query_one(
            "SELECT test_status FROM backup_mgmt.test_backup_restore($1)",
            &[&base.id],
        )
        .unwrap()
        .get(0);
    let result: String = db
        .query_one(
            "SELECT verification_result::text FROM backup_management.backup_verifications
              WHERE backup_id = $1 AND verification_type = 'restore_test'
              ORDER BY verification_id DESC LIMIT 1",
            &[&base.id],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "passed", "{result}");
    let checked: serde_json::Value = serde_json::from_str(&result).unwrap();
    assert!(
        checked["databases_checked"].as_u64() >= Some(3),
        "appdb was not checked: {result}"
    );
}

/// Attack 9: a host-loss drill reads an off-site target, which others may be able to write.  A
/// self-consistent forgery there (a backup's chain manifest rewritten, here one file's recorded
/// mtime, and the mirror's sha256 for it updated to match, so that every check the target
/// alone allows passes) is not restored or started: the drill takes a backup only when the
/// mirror's sha256 is the one this catalog recorded for it.
#[test]
fn attack_9_a_host_loss_drill_starts_nothing_a_forged_target_holds() {
    let cluster = backup_mgmt_e2e::cluster::Cluster::start_with_backups(&[]);
    let offsite = cluster.second_backup_root("offsite");
    let mut db = cluster.connect("postgres");
    db.batch_execute(
        "CREATE EXTENSION backup_mgmt;
         SELECT backup_mgmt.schedule_backup('native', '@yearly', 'postgres', 'full', 'native_physical', '{\"fast_checkpoint\": true}');
         INSERT INTO disaster_recovery.recovery_plans (plan_name, database_name, rto_minutes, rpo_minutes,
                                                       backup_strategy, recovery_procedure)
         VALUES ('site', 'postgres', 30, 1440, 'native backups off site', 'backup-mgmt restore');",
    )
    .unwrap();
    backup_mgmt_e2e::offsite::add_disk_target(&mut db, &offsite);
    let id = backup_mgmt_e2e::jobs::run_job(&cluster, &mut db, "native");
    db.execute("SELECT backup_mgmt.sync_remote_now('disk')", &[])
        .unwrap();
    let sysid: i64 = db
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .unwrap()
        .get(0);
    let mirror_path = offsite
        .join("pg")
        .join(sysid.to_string())
        .join(".catalog/catalog_mirror.json");
    let listed = |path: &Path| -> Option<(serde_json::Value, String)> {
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        let key = m["backups"]
            .as_array()?
            .iter()
            .find(|b| b["backup_id"].as_i64() == Some(id) && b["sha256"].is_string())?["key"]
            .as_str()?
            .to_owned();
        Some((m, key))
    };
    let mut found = None;
    let copied = backup_mgmt_e2e::cluster::Cluster::wait_for(Duration::from_secs(120), || {
        found = listed(&mirror_path);
        found.is_some()
    });
    assert!(
        copied,
        "backup {id} never reached the mirror\n{}",
        cluster.log()
    );
    let (mut mirror, key) = found.unwrap();

    // The forgery: one recorded mtime changed in the chain manifest, the mirror's sha256 for
    // the backup replaced by the new manifest's.
    let manifest_path = offsite.join("pg").join(&key).join("backup_mgmt.files");
    let text = std::fs::read_to_string(&manifest_path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let line = lines
        .iter_mut()
        .find(|l| l.starts_with("f\t"))
        .expect("a file line");
    let mut fields: Vec<String> = line.split('\t').map(str::to_owned).collect();
    fields[3] = (fields[3].parse::<i64>().unwrap() + 1).to_string();
    *line = fields.join("\t");
    std::fs::write(&manifest_path, lines.join("\n") + "\n").unwrap();
    let forged = sha256sum(&manifest_path);
    for b in mirror["backups"].as_array_mut().unwrap() {
        if b["backup_id"].as_i64() == Some(id) {
            b["sha256"] = serde_json::Value::from(forged.clone());
        }
    }
    std::fs::write(&mirror_path, serde_json::to_vec(&mirror).unwrap()).unwrap();

    let drill = db
        .query_one(
            "SELECT drill_id FROM backup_mgmt.run_recovery_drill('site', 'host_loss')",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0);
    let row = db
        .query_one(
            "SELECT status, coalesce(issues, '') FROM disaster_recovery.recovery_drills WHERE drill_id = $1",
            &[&drill],
        )
        .unwrap();
    let (status, issues): (String, String) = (row.get(0), row.get(1));
    // Still the forgery the drill read (the worker did not rewrite the mirror meanwhile).
    assert_eq!(
        listed(&mirror_path).map(|(m, _)| m),
        Some(mirror),
        "the mirror changed under the test"
    );
    assert_eq!(status, "failed", "{issues}");
    assert!(issues.contains("not one this catalog recorded"), "{issues}");
}
