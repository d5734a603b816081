//! End-to-end: an install of 0.1.0 (the frozen script `sql/backup_mgmt--0.1.0.sql`) with a full
//! catalog is upgraded with `ALTER EXTENSION backup_mgmt UPDATE`; every row survives, what 0.2.0
//! moved is where 0.2.0 looks for it, and the upgraded catalog is the same as a fresh install's
//! (tables, columns, constraints, indexes, views, functions, triggers, comments, privileges).

use backup_mgmt_e2e::upgrade::{
    assert_same_shape, two_databases, two_databases_with, update_to_current, CONTENT,
};

/// Fills a 0.1.0 catalog the way a busy cluster would: backups of every kind and state (one
/// with its globals in the annotations, a native chain, a pinned one), verifications, off-site
/// targets and copies, plans and drills, jobs and executions, retention policies, archived WAL.
const FILL: &str = "
DO $fill$
DECLARE
    id bigint;
    parent bigint;
    sysid bigint := (SELECT system_identifier FROM pg_control_system());
BEGIN
    -- Rows as 0.1.0's record functions wrote them (the library installed now is 0.2.0's, whose
    -- functions expect the 0.2.0 catalog).
    CREATE FUNCTION pg_temp.started(db text, kind text, method text, path text) RETURNS bigint
    LANGUAGE sql AS $f$
        INSERT INTO backup_management.backup_records
            (database_name, backup_type, backup_method, backup_file_path, system_identifier, pg_version)
        VALUES (db, kind, method, path, (SELECT system_identifier FROM pg_control_system()),
                current_setting('server_version_num')::int)
        RETURNING backup_id $f$;
    CREATE FUNCTION pg_temp.completed(id bigint, size bigint, sha text) RETURNS void
    LANGUAGE sql AS $f$
        UPDATE backup_management.backup_records
           SET end_time = now(), duration = now() - start_time, backup_size = size, checksum = sha,
               status = 'completed'
         WHERE backup_id = id $f$;
    CREATE FUNCTION pg_temp.failed(id bigint, why text) RETURNS void
    LANGUAGE sql AS $f$
        UPDATE backup_management.backup_records
           SET end_time = now(), duration = now() - start_time, status = 'failed', error_message = why
         WHERE backup_id = id $f$;

    id := pg_temp.started('appdb', 'full', 'pg_dump', '/b/appdb/nightly/1.dump.zst');
    PERFORM pg_temp.completed(id, 1234, repeat('a', 64));
    UPDATE backup_management.backup_records
       SET label = 'nightly', compression = 'zstd',
           annotations = jsonb_build_object('job_name', 'nightly', 'execution_id', 1,
               'globals_file', '/b/appdb/nightly/1.globals.sql.zst', 'globals_size', 321,
               'globals_sha256', repeat('b', 64), 'row_counts', '{\"public.t\": 3}'::jsonb)
     WHERE backup_id = id;
    INSERT INTO backup_management.backup_verifications (backup_id, verification_type, verification_status, verification_result)
    VALUES (id, 'checksum', 'passed', '{\"bytes\": 1234}'), (id, 'restore_test', 'passed', '{\"stage\": \"data_verification\"}');

    id := pg_temp.started('appdb', 'full', 'pg_dump', '/b/appdb/nightly/2.dump.zst');
    PERFORM pg_temp.failed(id, 'pg_dump: error: connection refused');

    id := pg_temp.started('postgres', 'full', 'native_physical', '/b/postgres/n/3.native');
    PERFORM pg_temp.completed(id, 99999, repeat('c', 64));
    UPDATE backup_management.backup_records
       SET start_lsn = '1/2000028', stop_lsn = '1/2000100', start_wal_segment = '000000010000000100000002',
           stop_wal_segment = '000000010000000100000002', timeline_id = 1, pinned = true,
           pin_reason = 'legal hold', keep_until = '2030-01-01',
           annotations = jsonb_build_object('job_name', 'n', 'execution_id', 3)
     WHERE backup_id = id;
    parent := id;
    id := pg_temp.started('postgres', 'incremental', 'native_physical', '/b/postgres/n/4.native');
    UPDATE backup_management.backup_records
       SET parent_backup_id = parent, annotations = jsonb_build_object('job_name', 'n', 'execution_id', 4)
     WHERE backup_id = id;
    PERFORM pg_temp.completed(id, 555, repeat('d', 64));
    -- A dump a script registered (no execution).
    id := pg_temp.started('appdb', 'full', 'pg_dump', '/b/scripts/manual.dump');
    PERFORM pg_temp.completed(id, 77, repeat('7', 64));

    INSERT INTO backup_management.remote_backup_configs (config_name, database_name, remote_type, remote_endpoint, remote_path, sync_schedule)
    VALUES ('second-disk', 'appdb', 'filesystem', '/mnt/offsite', 'pg', '30 * * * *');
    INSERT INTO backup_management.remote_backup_records (backup_id, config_id, remote_file_path, sync_status, bytes_transferred, remote_checksum)
    SELECT min(backup_id), (SELECT config_id FROM backup_management.remote_backup_configs), '1/appdb/1.dump.zst', 'completed', 1234, repeat('a', 64)
      FROM backup_management.backup_records;

    INSERT INTO disaster_recovery.recovery_plans (plan_name, database_name, rpo_minutes, rto_minutes, backup_strategy, recovery_procedure)
    VALUES ('appdb-plan', 'appdb', 60, 30, 'nightly pg_dump', 'restore the newest dump');
    INSERT INTO disaster_recovery.recovery_drills (plan_id, drill_type, status, recovery_time, data_loss_window)
    SELECT plan_id, 'full', 'success', interval '5 minutes', interval '10 minutes' FROM disaster_recovery.recovery_plans;

    INSERT INTO backup_management.retention_policies (policy_name, keep_last) VALUES ('short', 3);

    INSERT INTO enterprise_backup.backup_jobs (job_name, database_name, backup_type, backup_method, schedule_cron, next_run_at, options)
    VALUES ('nightly', 'appdb', 'full', 'pg_dump', '30 2 * * *', now() + interval '1 day',
            '{\"compression\": \"zstd\", \"compression_level\": 3, \"parallel_jobs\": 1, \"include_globals\": true}');
    INSERT INTO enterprise_backup.backup_job_executions (job_id, scheduled_for, execution_status, execution_end_time, backup_id)
    SELECT job_id, now() - interval '1 day', 'completed', now(), (SELECT min(backup_id) FROM backup_management.backup_records)
      FROM enterprise_backup.backup_jobs;

    -- This cluster's WAL in its second log (numbered 256 + n at 16 MB) and another cluster's.
    INSERT INTO backup_management.wal_archive (system_identifier, file_name, timeline_id, segment_number, file_path, file_size, checksum, archived_at)
    SELECT sysid, '0000000100000001000000' || lpad(to_hex(n), 2, '0'), 1, 256 + n,
           '/b/wal/' || sysid || '/0000000100000001000000' || lpad(to_hex(n), 2, '0'), 16777216, repeat('e', 64), now()
      FROM generate_series(2, 6) n;
    INSERT INTO backup_management.wal_archive (system_identifier, file_name, timeline_id, segment_number, file_path, file_size, checksum, archived_at)
    VALUES (42, '000000010000000000000009', 1, 9, '/b/wal/42/000000010000000000000009', 16777216, repeat('f', 64), now()),
           (sysid, '00000002.history', NULL, NULL, '/b/wal/' || sysid || '/00000002.history', 40, repeat('1', 64), now());
END
$fill$";

#[test]
fn upgrade_from_0_1_0_keeps_every_row_and_matches_a_fresh_install() {
    let cluster = two_databases();

    let mut old = cluster.connect("upgraded");
    old.batch_execute("CREATE EXTENSION backup_mgmt VERSION '0.1.0'")
        .unwrap();
    old.batch_execute(FILL).unwrap();
    let before: String = old.query_one(CONTENT, &[]).unwrap().get(0);
    assert!(before.lines().count() > 20, "{before}");

    update_to_current(&mut old);
    let after: String = old.query_one(CONTENT, &[]).unwrap().get(0);
    assert_eq!(before, after, "rows changed by the upgrade");

    // What 0.2.0 moved: the globals into their columns, the segment sizes (this cluster's WAL
    // keeps its 16 MB numbering; the other cluster's gets 16 MB too).
    let globals = old
        .query_one(
            "SELECT globals_file_path, globals_size, globals_checksum FROM backup_management.backup_records
              WHERE label = 'nightly'",
            &[],
        )
        .unwrap();
    assert_eq!(
        (
            globals.get::<_, Option<String>>(0),
            globals.get::<_, Option<i64>>(1),
            globals.get::<_, Option<String>>(2)
        ),
        (
            Some("/b/appdb/nightly/1.globals.sql.zst".to_owned()),
            Some(321),
            Some("b".repeat(64))
        )
    );
    // Provenance: what 0.1.0's worker made (annotated with its execution) is the worker's.
    let origins: Vec<(String, String)> = old
        .query(
            "SELECT backup_file_path, origin FROM backup_management.backup_records ORDER BY backup_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let origin_of = |suffix: &str| {
        origins
            .iter()
            .find(|(p, _)| p.ends_with(suffix))
            .map(|(_, o)| o.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(origin_of("nightly/1.dump.zst"), "worker");
    assert_eq!(origin_of("n/3.native"), "worker");
    assert_eq!(origin_of("n/4.native"), "worker");
    assert_eq!(origin_of("scripts/manual.dump"), "registered");
    assert_eq!(origin_of("nightly/2.dump.zst"), "registered");
    // Off-site targets from 0.1.0 are held to the limits until a superuser saves them again.
    let (by, vouched): (String, bool) = old
        .query_one(
            "SELECT configured_by, configured_by_superuser FROM backup_management.remote_backup_configs",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((by.as_str(), vouched), ("(before 0.2.0)", false));
    old.batch_execute("UPDATE backup_management.remote_backup_configs SET options = options")
        .unwrap();
    let vouched: bool = old
        .query_one(
            "SELECT configured_by_superuser FROM backup_management.remote_backup_configs",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(vouched, "a superuser's save vouches for the target");

    let unsized_segments: i64 = old
        .query_one(
            "SELECT count(*) FROM backup_management.wal_archive
              WHERE segment_number IS NOT NULL AND segment_size IS DISTINCT FROM 16777216",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(unsized_segments, 0);
    let numbered: Vec<i64> = old
        .query(
            "SELECT segment_number FROM backup_management.wal_archive
              WHERE timeline_id = 1 AND system_identifier <> 42 ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(numbered, vec![258, 259, 260, 261, 262]);
    // The archive's ranges, built from the rows 0.1.0 left.
    let ranges: String = old
        .query_one(
            "SELECT string_agg(format('%s:%s-%s', system_identifier = 42, first_segment, last_segment), ' '
                               ORDER BY system_identifier = 42, first_segment)
               FROM backup_management.wal_ranges",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ranges, "f:258-262 t:9-9");
    // The upgraded functions work on the upgraded catalog: a plan to the end of the native
    // backup starts from it, with the segments renumbered above.
    let (base, first): (Option<i64>, Option<String>) = old
        .query_one(
            "SELECT base_backup_id, first_wal_file FROM backup_mgmt.plan_recovery_lsn('1/2000100')",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    let native: i64 = old
        .query_one(
            "SELECT backup_id FROM backup_management.backup_records
              WHERE backup_type = 'full' AND backup_method = 'native_physical'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(base, Some(native));
    assert_eq!(first.as_deref(), Some("000000010000000100000002"));
    let gaps: i64 = old
        .query_one("SELECT count(*) FROM backup_mgmt.wal_gaps", &[])
        .unwrap()
        .get(0);
    assert_eq!(gaps, 0);

    // The same catalog as a fresh install of the current version.
    assert_same_shape(&mut old, &mut cluster.connect("fresh"));
}

/// 0.2.0 -> 0.3.0: the verification state is built from the rows 0.2.0 left (the newest
/// verification, failures in a row), the archive's new columns are empty, and the catalog is a
/// fresh install's.
#[test]
fn upgrade_from_0_2_0_builds_the_verification_state() {
    let cluster = two_databases();
    let mut old = cluster.connect("upgraded");
    old.batch_execute("CREATE EXTENSION backup_mgmt VERSION '0.2.0'")
        .unwrap();
    old.batch_execute(
        "INSERT INTO backup_management.backup_records
             (database_name, backup_type, backup_method, backup_file_path, status, start_time, end_time,
              duration, checksum, origin)
         VALUES ('app', 'full', 'pg_dump', '/b/app/1.dump', 'completed', now() - interval '2 days',
                 now() - interval '2 days', '1 minute', repeat('a', 64), 'worker'),
                ('app', 'full', 'pg_dump', '/b/app/2.dump', 'completed', now() - interval '1 day',
                 now() - interval '1 day', '1 minute', NULL, 'registered'),
                ('app', 'full', 'pg_dump', '/b/app/3.dump', 'running', now(), NULL, NULL, NULL, 'worker');
         UPDATE backup_management.backup_records SET status = 'failed', end_time = now(), duration = '1 minute',
                error_message = 'disk full' WHERE status = 'running';
         INSERT INTO backup_management.backup_verifications (backup_id, verification_type, verification_status, verification_result, verified_at)
         SELECT backup_id, 'checksum', 'passed', '{}'::jsonb, now() - interval '1 hour'
           FROM backup_management.backup_records WHERE backup_file_path = '/b/app/1.dump'
         UNION ALL
         SELECT backup_id, 'checksum', 'failed', '{\"detail\": \"the backup file is missing\"}'::jsonb, now() - interval '10 minutes'
           FROM backup_management.backup_records WHERE backup_file_path = '/b/app/2.dump';
         INSERT INTO backup_management.wal_archive
             (system_identifier, file_name, timeline_id, segment_number, file_path, file_size, checksum, archived_at, segment_size)
         VALUES (42, '000000010000000000000009', 1, 9, '/b/wal/42/000000010000000000000009', 16777216, repeat('f', 64), now(), 16777216);",
    )
    .unwrap();
    let before: String = old.query_one(CONTENT, &[]).unwrap().get(0);
    update_to_current(&mut old);
    let after: String = old.query_one(CONTENT, &[]).unwrap().get(0);
    assert_eq!(before, after, "rows changed by the upgrade");
    let queue: Vec<(String, String, i32, Option<String>)> = old
        .query(
            "SELECT r.backup_file_path, q.action, q.consecutive_failures, q.last_error
               FROM backup_mgmt.upkeep_queue q JOIN backup_management.backup_records r USING (backup_id)
              ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        queue,
        vec![
            ("/b/app/1.dump".into(), "re-verify".into(), 0, None),
            (
                "/b/app/2.dump".into(),
                "compute checksum".into(),
                1,
                Some("the backup file is missing".into())
            ),
        ]
    );
    let lost: i64 = old
        .query_one(
            "SELECT count(*) FROM backup_management.wal_archive WHERE lost_at IS NOT NULL OR checked_at IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(lost, 0);
    assert_same_shape(&mut old, &mut cluster.connect("fresh"));
}

/// 0.3.0 -> 0.4.0: the verification state's functions are replaced (planned once, inlined);
/// every row and the maintained state survive, the state still equals its definition, the
/// triggers keep it (a verification recorded after the upgrade), and the catalog is a fresh
/// install's (the functions' SET clauses included).
#[test]
fn upgrade_from_0_3_0_keeps_the_verification_state() {
    let cluster = two_databases();
    let mut old = cluster.connect("upgraded");
    old.batch_execute("CREATE EXTENSION backup_mgmt VERSION '0.3.0'")
        .unwrap();
    old.batch_execute(
        "INSERT INTO backup_management.backup_records
             (database_name, backup_type, backup_method, backup_file_path, status, start_time, end_time,
              duration, checksum, origin)
         VALUES ('app', 'full', 'pg_dump', '/b/app/1.dump', 'completed', now() - interval '2 days',
                 now() - interval '2 days', '1 minute', repeat('a', 64), 'worker'),
                ('app', 'full', 'pg_dump', '/b/app/2.dump', 'completed', now() - interval '1 day',
                 now() - interval '1 day', '1 minute', NULL, 'registered');
         INSERT INTO backup_management.backup_verifications (backup_id, verification_type, verification_status, verification_result, verified_at)
         SELECT backup_id, 'checksum', 'passed', '{}'::jsonb, now() - interval '1 hour'
           FROM backup_management.backup_records WHERE backup_file_path = '/b/app/1.dump'
         UNION ALL
         SELECT backup_id, 'checksum', 'failed', '{\"detail\": \"the backup file is missing\"}'::jsonb, now() - interval '10 minutes'
           FROM backup_management.backup_records WHERE backup_file_path = '/b/app/2.dump';",
    )
    .unwrap();
    const STATE: &str = "SELECT string_agg(s::text, E'\\n' ORDER BY s.backup_id) FROM backup_management.verification_state s";
    let before: String = old.query_one(CONTENT, &[]).unwrap().get(0);
    let state_before: String = old.query_one(STATE, &[]).unwrap().get(0);
    update_to_current(&mut old);
    assert_eq!(
        before,
        old.query_one(CONTENT, &[]).unwrap().get::<_, String>(0)
    );
    assert_eq!(
        state_before,
        old.query_one(STATE, &[]).unwrap().get::<_, String>(0)
    );
    // The triggers keep the state with the new functions: a passed verification of the second
    // backup clears its failure.
    old.batch_execute(
        "INSERT INTO backup_management.backup_verifications (backup_id, verification_type, verification_status, verification_result)
         SELECT backup_id, 'checksum', 'passed', '{}'::jsonb
           FROM backup_management.backup_records WHERE backup_file_path = '/b/app/2.dump'",
    )
    .unwrap();
    let (failures, status): (i32, String) = old
        .query_one(
            "SELECT s.failures, s.last_status FROM backup_management.verification_state s
               JOIN backup_management.backup_records r USING (backup_id) WHERE r.backup_file_path = '/b/app/2.dump'",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!((failures, status.as_str()), (0, "passed"));
    let differs: i64 = old
        .query_one(
            "SELECT count(*) FROM (
                 (SELECT * FROM backup_management.verification_state
                  EXCEPT SELECT * FROM backup_mgmt.verification_state_of(ARRAY(SELECT backup_id FROM backup_management.backup_records)))
                 UNION ALL
                 (SELECT * FROM backup_mgmt.verification_state_of(ARRAY(SELECT backup_id FROM backup_management.backup_records))
                  EXCEPT SELECT * FROM backup_management.verification_state)) d",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(differs, 0);
    assert_same_shape(&mut old, &mut cluster.connect("fresh"));
}

/// 0.4.0 -> 0.5.0: off-site WAL copies arrive as new objects only; every row survives, the
/// archived WAL of 0.4.0 counts as not yet copied to each active target (the worker copies it
/// after the upgrade), and the catalog is a fresh install's.
#[test]
fn upgrade_from_0_4_0_adds_offsite_wal_and_keeps_every_row() {
    let cluster = two_databases();
    let mut old = cluster.connect("upgraded");
    old.batch_execute("CREATE EXTENSION backup_mgmt VERSION '0.4.0'")
        .unwrap();
    old.batch_execute(
        "INSERT INTO backup_management.backup_records
             (database_name, backup_type, backup_method, backup_file_path, status, start_time, end_time,
              duration, checksum, origin)
         VALUES ('app', 'full', 'pg_dump', '/b/app/1.dump', 'completed', now() - interval '2 days',
                 now() - interval '2 days', '1 minute', repeat('a', 64), 'worker');
         INSERT INTO backup_management.remote_backup_configs (config_name, database_name, remote_type, remote_endpoint, remote_path, sync_schedule)
         VALUES ('second-disk', 'app', 'filesystem', '/mnt/offsite', 'pg', '30 * * * *'),
                ('retired', 'app', 'filesystem', '/mnt/old', 'pg', NULL);
         UPDATE backup_management.remote_backup_configs SET is_active = false WHERE config_name = 'retired';
         INSERT INTO backup_management.remote_backup_records (backup_id, config_id, remote_file_path, sync_status, bytes_transferred, remote_checksum)
         SELECT min(backup_id), (SELECT config_id FROM backup_management.remote_backup_configs WHERE config_name = 'second-disk'),
                '1/app/1.dump', 'completed', 1234, repeat('a', 64)
           FROM backup_management.backup_records;
         INSERT INTO backup_management.wal_archive (system_identifier, file_name, timeline_id, segment_number, file_path, file_size, checksum, archived_at)
         SELECT (SELECT system_identifier FROM pg_control_system()), '0000000100000000000000' || lpad(to_hex(n), 2, '0'), 1, n,
                '/b/wal/x/0000000100000000000000' || lpad(to_hex(n), 2, '0'), 16777216, repeat('e', 64),
                now() - make_interval(mins => 10 - n)
           FROM generate_series(1, 5) n;
         UPDATE backup_management.wal_archive SET expired_at = now() WHERE segment_number = 1;",
    )
    .unwrap();
    let before: String = old.query_one(CONTENT, &[]).unwrap().get(0);
    update_to_current(&mut old);
    assert_eq!(
        before,
        old.query_one(CONTENT, &[]).unwrap().get::<_, String>(0)
    );
    // The active target has the four unexpired files waiting, the oldest since 8 minutes ago.
    let r = old
        .query_one(
            "SELECT config_name, pending_segments, lag_seconds, failures, alarm_since IS NULL
               FROM backup_mgmt.offsite_wal_status",
            &[],
        )
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "second-disk");
    assert_eq!(r.get::<_, i64>(1), 4);
    let lag: f64 = r.get(2);
    assert!((475.0..600.0).contains(&lag), "{lag}");
    assert_eq!(r.get::<_, i32>(3), 0);
    assert!(r.get::<_, bool>(4));
    let copied: i64 = old
        .query_one(
            "SELECT count(*) FROM backup_management.remote_wal_records",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(copied, 0);
    assert_same_shape(&mut old, &mut cluster.connect("fresh"));
}

/// 0.5.0 -> 0.6.0: host-loss drills.  Every row survives (a drill of 0.5.0 keeps its type and
/// gets no target), the new type is accepted and an unknown one still refused, and the catalog
/// is a fresh install's.
#[test]
fn upgrade_from_0_5_0_accepts_host_loss_drills_and_keeps_every_row() {
    let cluster = two_databases();
    let mut old = cluster.connect("upgraded");
    old.batch_execute("CREATE EXTENSION backup_mgmt VERSION '0.5.0'")
        .unwrap();
    old.batch_execute(
        "INSERT INTO disaster_recovery.recovery_plans (plan_name, database_name, rto_minutes, rpo_minutes,
                                                       backup_strategy, recovery_procedure)
         VALUES ('shop-dr', 'shop', 30, 60, 'nightly', 'run_recovery_drill');
         INSERT INTO disaster_recovery.recovery_drills (plan_id, drill_type, status, recovery_time, data_loss_window, issues)
         SELECT plan_id, 'full', 'partial', '00:01:02', '02:00:00', 'RPO breached' FROM disaster_recovery.recovery_plans;",
    )
    .unwrap();
    // 0.5.0 refuses the type.
    assert!(old
        .batch_execute(
            "INSERT INTO disaster_recovery.recovery_drills (plan_id, drill_type, status)
             SELECT plan_id, 'host_loss', 'success' FROM disaster_recovery.recovery_plans"
        )
        .is_err());
    let before: String = old.query_one(CONTENT, &[]).unwrap().get(0);
    update_to_current(&mut old);
    assert_eq!(
        before,
        old.query_one(CONTENT, &[]).unwrap().get::<_, String>(0)
    );
    let target: Option<String> = old
        .query_one(
            "SELECT restored_from FROM disaster_recovery.recovery_drills",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(target, None);
    old.batch_execute(
        "INSERT INTO disaster_recovery.recovery_drills (plan_id, drill_type, status, restored_from)
         SELECT plan_id, 'host_loss', 'success', 'bucket' FROM disaster_recovery.recovery_plans",
    )
    .unwrap();
    assert!(old
        .batch_execute(
            "INSERT INTO disaster_recovery.recovery_drills (plan_id, drill_type, status)
             SELECT plan_id, 'site_loss', 'success' FROM disaster_recovery.recovery_plans"
        )
        .is_err());
    old.batch_execute(
        "DELETE FROM disaster_recovery.recovery_drills WHERE drill_type = 'host_loss'",
    )
    .unwrap();
    assert_same_shape(&mut old, &mut cluster.connect("fresh"));
}

/// 0.6.0 -> 0.7.0: `schedule_drill` takes the drill type.  A drill job scheduled under 0.6.0
/// survives unchanged (no drill type in its options: a `full` drill, as before), a host-loss
/// drill can be scheduled, an unknown type is refused, and the catalog is a fresh install's.
#[test]
fn upgrade_from_0_6_0_schedules_host_loss_drills_and_keeps_every_row() {
    // Jobs are scheduled in the catalog database only: here the upgraded one.
    let cluster = two_databases_with(&["backup_mgmt.database_name = 'upgraded'"]);
    let mut old = cluster.connect("upgraded");
    old.batch_execute("CREATE EXTENSION backup_mgmt VERSION '0.6.0'")
        .unwrap();
    old.batch_execute(
        "INSERT INTO disaster_recovery.recovery_plans (plan_name, database_name, rto_minutes, rpo_minutes,
                                                       backup_strategy, recovery_procedure)
         VALUES ('shop-dr', 'upgraded', 30, 60, 'nightly', 'run_recovery_drill');
         -- The row 0.6.0's schedule_drill wrote (this test runs the new library, which the old
         -- four-argument definition cannot call).
         INSERT INTO enterprise_backup.backup_jobs
             (job_name, database_name, backup_type, backup_method, schedule_cron, next_run_at, job_kind, plan_id)
         SELECT 'weekly', 'upgraded', 'full', 'pg_dump', '0 3 * * 0', now() + interval '1 day', 'drill', plan_id
           FROM disaster_recovery.recovery_plans;
         INSERT INTO disaster_recovery.recovery_drills (plan_id, drill_type, status, restored_from)
         SELECT plan_id, 'host_loss', 'success', 'bucket' FROM disaster_recovery.recovery_plans;",
    )
    .unwrap();
    // 0.6.0 has no drill type to schedule.
    assert!(old
        .batch_execute(
            "SELECT backup_mgmt.schedule_drill('nightly', '@daily', 'shop-dr', NULL, 'host_loss')"
        )
        .is_err());
    let before: String = old.query_one(CONTENT, &[]).unwrap().get(0);
    update_to_current(&mut old);
    assert_eq!(
        before,
        old.query_one(CONTENT, &[]).unwrap().get::<_, String>(0)
    );
    old.batch_execute(
        "SELECT backup_mgmt.schedule_drill('nightly', '@daily', 'shop-dr', drill_type => 'host_loss')",
    )
    .unwrap();
    let kinds: Vec<(String, Option<String>)> = old
        .query(
            "SELECT job_name, options->>'drill_type' FROM enterprise_backup.backup_jobs
              WHERE job_kind = 'drill' ORDER BY job_name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        kinds,
        [
            ("nightly".to_owned(), Some("host_loss".to_owned())),
            ("weekly".to_owned(), None)
        ]
    );
    let refused = old
        .batch_execute(
            "SELECT backup_mgmt.schedule_drill('x', '@daily', 'shop-dr', drill_type => 'site_loss')",
        )
        .unwrap_err();
    let db = refused.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "22023", "{db:?}");
    assert!(db.message().contains("site_loss"), "{}", db.message());
    // A drill job's options are its drill type: changed, paused, never a method's options.
    old.batch_execute(
        "SELECT backup_mgmt.alter_job('weekly', options => '{\"drill_type\": \"host_loss\"}');
         SELECT backup_mgmt.alter_job('nightly', active => false);",
    )
    .unwrap();
    let weekly: Option<String> = old
        .query_one(
            "SELECT options->>'drill_type' FROM enterprise_backup.backup_jobs WHERE job_name = 'weekly'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(weekly.as_deref(), Some("host_loss"));
    assert!(old
        .batch_execute(
            "SELECT backup_mgmt.alter_job('weekly', options => '{\"compression\": \"zstd\"}')"
        )
        .is_err());
    old.batch_execute("SELECT backup_mgmt.unschedule('nightly')")
        .unwrap();
    assert_same_shape(&mut old, &mut cluster.connect("fresh"));
}
