//! Attacks on what the worker runs and writes, tried as mallory (a `backup_admin` member, not a
//! superuser) and as someone who can write to a backup root would (issue "least privilege and
//! provenance", attacks 4 and 6).

use std::time::Duration;

use backup_mgmt_e2e::attack::{is_superuser, mallory, refused, wait_true};
use backup_mgmt_e2e::jobs::{cluster_with_appdb, run_now, wait_records};

/// Operators in `public` that beat pg_catalog's for common mixed-type expressions (an exact
/// match wins over one that needs a cast, whatever the search_path order), each calling a
/// function that records who ran it and tries to make mallory a superuser.
fn shadowing_sql() -> String {
    let mut sql = String::from(
        "CREATE TABLE public.trap (who text, op text);
         GRANT INSERT ON public.trap TO PUBLIC;
         CREATE FUNCTION public.sprung(op text) RETURNS void LANGUAGE plpgsql AS $f$
         BEGIN
             INSERT INTO public.trap VALUES (current_user, op);
             BEGIN
                 EXECUTE 'ALTER ROLE mallory SUPERUSER';
             EXCEPTION WHEN insufficient_privilege THEN NULL;
             END;
         END $f$;\n",
    );
    let pairs = [
        ("numeric", "integer", "numeric"),
        ("integer", "numeric", "numeric"),
        ("numeric", "bigint", "numeric"),
        ("bigint", "numeric", "numeric"),
        ("double precision", "integer", "double precision"),
        ("integer", "double precision", "double precision"),
        ("double precision", "bigint", "double precision"),
        ("bigint", "double precision", "double precision"),
    ];
    let mut n = 0;
    for (left, right, wide) in pairs {
        for op in ["*", "+", "-", "/", "<", ">", "<=", ">=", "=", "<>"] {
            n += 1;
            let comparison = ["<", ">", "<=", ">=", "=", "<>"].contains(&op);
            let result = if comparison { "boolean" } else { wide };
            sql.push_str(&format!(
                "CREATE FUNCTION public.shadow_{n}({left}, {right}) RETURNS {result} LANGUAGE plpgsql AS $f$
                 BEGIN
                     PERFORM public.sprung('{op} ({left}, {right})');
                     RETURN $1::{wide} OPERATOR(pg_catalog.{op}) $2::{wide};
                 END $f$;
                 CREATE OPERATOR public.{op} (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = public.shadow_{n});\n"
            ));
        }
    }
    sql
}

/// Attack 4: shadowing operators in the catalog database's writable `public` (the PostgreSQL 14
/// default, kept by pg_upgrade), then everything the worker does: backups, retention, off-site
/// copies, WAL bookkeeping, a scheduled drill.
#[test]
fn attack_4_the_workers_sessions_never_resolve_names_through_public() {
    let (cluster, mut db) = cluster_with_appdb();
    let mut m = mallory(&cluster, &mut db);
    m.batch_execute(&shadowing_sql()).unwrap();
    // This test's own session must not spring the trap either.
    db.batch_execute("SET search_path = pg_catalog, pg_temp")
        .unwrap();

    // The control: an ordinary role with the default search_path does hit the operators.
    db.batch_execute("CREATE ROLE victim LOGIN").unwrap();
    let mut victim = cluster.connect_as("postgres", "victim").unwrap();
    victim.batch_execute("SELECT 2.5 * 3, 7 > 1.5").unwrap();
    let control: i64 = db
        .query_one(
            "SELECT count(*) FROM public.trap WHERE who OPERATOR(pg_catalog.=) 'victim'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        control >= 2,
        "the shadowing operators do not catch anything"
    );
    db.batch_execute("TRUNCATE public.trap").unwrap();

    // Everything the worker does, set off by mallory.
    m.batch_execute(&format!(
        "INSERT INTO backup_management.retention_policies (policy_name, keep_last) VALUES ('two', 2);
         SELECT backup_mgmt.schedule_backup('dump', '@yearly', 'appdb', 'full', 'pg_dump', '{{}}');
         SELECT backup_mgmt.set_retention_policy('dump', 'two');
         SELECT backup_mgmt.schedule_backup('native', '@yearly', 'postgres', 'full', 'native_physical', '{{\"fast_checkpoint\": true}}');
         INSERT INTO backup_management.remote_backup_configs
             (config_name, database_name, remote_type, remote_endpoint, remote_path)
         VALUES ('disk', 'appdb', 'filesystem', '{}', 'offsite');
         INSERT INTO disaster_recovery.recovery_plans
             (plan_name, database_name, rpo_minutes, rto_minutes, backup_strategy, recovery_procedure)
         VALUES ('plan', 'appdb', 1440, 60, 'pg_dump', 'restore it');
         SELECT backup_mgmt.schedule_drill('drill', '@yearly', 'plan');",
        cluster.backup_root().display()
    ))
    .unwrap();
    for _ in 0..3 {
        m.execute("SELECT backup_mgmt.run_job_now('dump')", &[])
            .unwrap();
        std::thread::sleep(Duration::from_secs(2));
    }
    m.batch_execute(
        "SELECT backup_mgmt.run_job_now('native');
         SELECT backup_mgmt.sync_remote_now('disk');",
    )
    .unwrap();
    wait_records(&cluster, &mut db, "dump", "completed", 2, 120);
    wait_records(&cluster, &mut db, "native", "completed", 1, 120);
    m.execute("SELECT backup_mgmt.run_job_now('drill')", &[])
        .unwrap();
    wait_true(
        &cluster,
        &mut db,
        "SELECT EXISTS (SELECT FROM disaster_recovery.recovery_drills)
            AND EXISTS (SELECT FROM backup_management.remote_backup_records)",
        120,
    );
    // A few more ticks of the loop (verification upkeep, WAL ingest, the catalog mirror).
    std::thread::sleep(Duration::from_secs(8));

    let sprung: Vec<(String, String)> = db
        .query("SELECT who, op FROM public.trap", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        sprung.is_empty(),
        "the worker ran mallory's operators: {sprung:?}"
    );
    assert!(!is_superuser(&mut db, "mallory"));
    let drill: String = db
        .query_one("SELECT status FROM disaster_recovery.recovery_drills", &[])
        .unwrap()
        .get(0);
    assert_ne!(drill, "failed");
}

/// Attack 6: lines forged into the WAL archive's manifest by someone who can write to a root (a
/// shared mount), meant to end a recipe's heredoc early and run a command for whoever restores.
#[test]
fn attack_6_forged_archive_lines_never_reach_a_recipe() {
    let (cluster, mut db) = cluster_with_appdb();
    let _m = mallory(&cluster, &mut db);
    let sysid: i64 = db
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .unwrap()
        .get(0);
    let dir = cluster.backup_root().join("wal").join(sysid.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let good = "a".repeat(64);
    let lines = [
        // A digest that ends the heredoc and runs a command.
        serde_json::json!({"name": "000000010000000000000001", "size": 16777216,
            "sha256": format!("{good}\nBACKUP_MGMT_WAL_LIST\ntouch /tmp/bm_attack_6\n"),
            "archived_at": "2026-12-03T00:00:00Z"}),
        // A name that climbs out.
        serde_json::json!({"name": "../../etc/passwd", "size": 1, "sha256": good,
            "archived_at": "2026-12-03T00:00:00Z"}),
        // A good line, so that the ingest is seen to have happened (far from the segments the
        // base backup below needs).
        serde_json::json!({"name": "0000000100000000000000F0", "size": 16777216, "sha256": good,
            "archived_at": "2026-12-03T00:00:00Z"}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join("archive_manifest.jsonl"), text).unwrap();
    wait_true(
        &cluster,
        &mut db,
        "SELECT EXISTS (SELECT FROM backup_management.wal_archive WHERE file_name = '0000000100000000000000F0')",
        30,
    );
    let forged: i64 = db
        .query_one(
            "SELECT count(*) FROM backup_management.wal_archive
              WHERE file_name <> '0000000100000000000000F0'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(forged, 0, "a forged line reached the catalog");
    let log = cluster.log();
    assert!(log.contains("ignoring a line"), "{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("touch /tmp/bm_attack_6")),
        "the forged digest wrote a log line of its own"
    );

    // A forged digest that reached the catalog anyway (written by a superuser by hand): the
    // recipe writer refuses it where it would be written out.
    run_now(
        &mut db,
        "base",
        "postgres",
        "pg_basebackup",
        r#"{"compression": "none", "fast_checkpoint": true}"#,
    );
    let base = &wait_records(&cluster, &mut db, "base", "completed", 1, 120)[0];
    // Every segment from the backup's first to its last, each with the forged digest.
    db.execute(
        "WITH r AS (
             SELECT system_identifier,
                    ('x' || substr(start_wal_segment, 9, 8))::bit(32)::bigint * 256
                        + ('x' || substr(start_wal_segment, 17, 8))::bit(32)::bigint AS first,
                    ('x' || substr(stop_wal_segment, 9, 8))::bit(32)::bigint * 256
                        + ('x' || substr(stop_wal_segment, 17, 8))::bit(32)::bigint AS last
               FROM backup_management.backup_records WHERE backup_id = $1)
         INSERT INTO backup_management.wal_archive
             (system_identifier, file_name, timeline_id, segment_number, file_path, file_size,
              checksum, archived_at, segment_size)
         SELECT r.system_identifier, n.name, 1, g, $2 || '/' || n.name, 16777216, $3, now(), 16777216
           FROM r, generate_series(r.first, r.last) g,
                LATERAL (SELECT upper('00000001' || lpad(to_hex(g / 256), 8, '0') || lpad(to_hex(g % 256), 8, '0')) AS name) n",
        &[
            &base.id,
            &dir.display().to_string(),
            &format!("{good}\nBACKUP_MGMT_WAL_LIST\ntouch /tmp/bm_attack_6"),
        ],
    )
    .unwrap();
    let (state, message) = refused(db.query_one(
        "SELECT recipe FROM backup_mgmt.plan_recovery_lsn(
             (SELECT stop_lsn FROM backup_management.backup_records WHERE backup_id = $1))",
        &[&base.id],
    ));
    assert_eq!(state, "22023", "{message}");
    assert!(message.contains("sha256"), "{message}");
    assert!(!std::path::Path::new("/tmp/bm_attack_6").exists());
}
