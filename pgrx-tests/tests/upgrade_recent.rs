//! End-to-end: upgrades from 0.7.0 on (`upgrade.rs` holds the earlier ones).  Each installs a
//! frozen version, fills its catalog, runs `ALTER EXTENSION backup_mgmt UPDATE`, checks that every
//! row survives and what the version changed, and that the catalog is a fresh install's.

use backup_mgmt_e2e::upgrade::{assert_same_shape, two_databases, update_to_current, CONTENT};

/// 0.7.0 -> 0.8.0: Azure Blob targets.  Targets and their copies recorded under 0.7.0 survive
/// unchanged, an `azure` target is refused before the update and accepted after it, and the
/// catalog is a fresh install's.
#[test]
fn upgrade_from_0_7_0_accepts_azure_targets_and_keeps_every_row() {
    let cluster = two_databases();
    let mut old = cluster.connect("upgraded");
    old.batch_execute("CREATE EXTENSION backup_mgmt VERSION '0.7.0'")
        .unwrap();
    fill_targets(
        &mut old,
        "('second-disk', 'app', 'filesystem', '/mnt/offsite', 'pg', NULL, '{}', '30 * * * *'),
         ('s3-eu', 'app', 's3', 'https://s3.eu-west-1.amazonaws.com', 'acme/pg', 'env:BACKUP_MGMT_S3',
          '{\"region\": \"eu-west-1\", \"create_bucket\": true}', '45 * * * *')",
    );
    let azure = "INSERT INTO backup_management.remote_backup_configs
                     (config_name, database_name, remote_type, remote_endpoint, remote_path, credentials_ref)
                 VALUES ('azure', 'app', 'azure', 'https://acme.blob.core.windows.net', 'pg/prod',
                         'env:BACKUP_MGMT_AZURE')";
    let refused = old.batch_execute(azure).unwrap_err();
    assert_eq!(
        refused.as_db_error().expect("a server error").code().code(),
        "23514"
    );
    let before: String = old.query_one(CONTENT, &[]).unwrap().get(0);
    update_to_current(&mut old);
    assert_eq!(
        before,
        old.query_one(CONTENT, &[]).unwrap().get::<_, String>(0)
    );
    old.batch_execute(azure).unwrap();
    let types: Vec<String> = old
        .query(
            "SELECT remote_type FROM backup_management.remote_backup_configs ORDER BY config_name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(types, ["azure", "s3", "filesystem"]);
    old.batch_execute(
        "DELETE FROM backup_management.remote_backup_configs WHERE config_name = 'azure'",
    )
    .unwrap();
    assert_same_shape(&mut old, &mut cluster.connect("fresh"));
}

/// 0.8.0 -> 0.9.0: a target's `io_timeout_s` is checked where it enters.  Targets (each kind,
/// with their options) and their copies recorded under 0.8.0 survive unchanged; after the
/// update an `io_timeout_s` that is not a number of seconds from 1 to 1800 is refused, one
/// that is is accepted; the catalog is a fresh install's.
#[test]
fn upgrade_from_0_8_0_checks_io_timeouts_and_keeps_every_row() {
    let cluster = two_databases();
    let mut old = cluster.connect("upgraded");
    old.batch_execute("CREATE EXTENSION backup_mgmt VERSION '0.8.0'")
        .unwrap();
    fill_targets(
        &mut old,
        "('second-disk', 'app', 'filesystem', '/mnt/offsite', 'pg', NULL, '{\"max_rate_mb\": 20}', '30 * * * *'),
         ('s3-eu', 'app', 's3', 'https://s3.eu-west-1.amazonaws.com', 'acme/pg', 'env:BACKUP_MGMT_S3',
          '{\"region\": \"eu-west-1\", \"part_size_mb\": 16}', '45 * * * *'),
         ('azure-we', 'app', 'azure', 'https://acme.blob.core.windows.net', 'pg/prod',
          'env:BACKUP_MGMT_AZURE', '{}', '50 * * * *')",
    );
    let before: String = old.query_one(CONTENT, &[]).unwrap().get(0);
    update_to_current(&mut old);
    assert_eq!(
        before,
        old.query_one(CONTENT, &[]).unwrap().get::<_, String>(0)
    );
    let set = |db: &mut postgres::Client, value: &str| {
        db.batch_execute(&format!(
            "UPDATE backup_management.remote_backup_configs
                SET options = options || '{{\"io_timeout_s\": {value}}}' WHERE config_name = 's3-eu'"
        ))
    };
    for bad in [
        "0", "0.5", "1801", "\"60\"", "\"abc\"", "{}", "null", "1e400",
    ] {
        let refused = set(&mut old, bad).unwrap_err();
        assert_eq!(
            refused.as_db_error().expect("a server error").code().code(),
            "23514",
            "{bad}"
        );
    }
    set(&mut old, "15").unwrap();
    set(&mut old, "1800").unwrap();
    assert_same_shape(&mut old, &mut cluster.connect("fresh"));
}

/// A completed dump, the off-site targets `targets` (rows of config_name, database_name,
/// remote_type, remote_endpoint, remote_path, credentials_ref, options, sync_schedule) and the
/// dump's copy on each, as a catalog of 0.7.0 or later holds them.
fn fill_targets(db: &mut postgres::Client, targets: &str) {
    db.batch_execute(&format!(
        "INSERT INTO backup_management.backup_records
             (database_name, backup_type, backup_method, backup_file_path, status, start_time, end_time,
              duration, checksum, origin)
         VALUES ('app', 'full', 'pg_dump', '/b/app/1.dump', 'completed', now() - interval '2 days',
                 now() - interval '2 days', '1 minute', repeat('a', 64), 'worker');
         INSERT INTO backup_management.remote_backup_configs
             (config_name, database_name, remote_type, remote_endpoint, remote_path, credentials_ref, options, sync_schedule)
         VALUES {targets};
         INSERT INTO backup_management.remote_backup_records (backup_id, config_id, remote_file_path, sync_status, bytes_transferred, remote_checksum)
         SELECT min(b.backup_id), c.config_id, '1/app/1.dump', 'completed', 1234, repeat('a', 64)
           FROM backup_management.backup_records b, backup_management.remote_backup_configs c
          GROUP BY c.config_id;"
    ))
    .unwrap();
}

/// 0.9.0 -> 0.10.0: a failed verification stands until a later one as thorough passes.  Under
/// 0.9.0 a checksum pass after a failed restore test made the backup "passed"; the update
/// recomputes every backup's state, so that it is failed again, leaves a backup whose checksum
/// failure a later checksum pass cleared as passed, keeps every row, and the catalog is a fresh
/// install's.
#[test]
fn upgrade_from_0_9_0_lets_failures_stand_and_keeps_every_row() {
    let cluster = two_databases();
    let mut old = cluster.connect("upgraded");
    old.batch_execute("CREATE EXTENSION backup_mgmt VERSION '0.9.0'")
        .unwrap();
    old.batch_execute(
        "INSERT INTO backup_management.backup_records
             (database_name, backup_type, backup_method, backup_file_path, status, start_time, end_time,
              duration, checksum, origin)
         VALUES ('app', 'full', 'pg_dump', '/b/app/1.dump', 'completed', now() - interval '3 days',
                 now() - interval '3 days', '1 minute', repeat('a', 64), 'worker'),
                ('app', 'full', 'pg_dump', '/b/app/2.dump', 'completed', now() - interval '2 days',
                 now() - interval '2 days', '1 minute', repeat('b', 64), 'worker');
         INSERT INTO backup_management.backup_verifications
             (backup_id, verification_type, verification_status, verification_result, verified_at)
         SELECT min(backup_id), 'restore_test', 'failed', '{\"stage\": \"data_verification\"}'::jsonb, now() - interval '2 hours'
           FROM backup_management.backup_records
         UNION ALL
         SELECT min(backup_id), 'checksum', 'passed', '{}', now() - interval '1 hour'
           FROM backup_management.backup_records
         UNION ALL
         SELECT max(backup_id), 'checksum', 'failed', '{\"reason\": \"checksum_mismatch\"}', now() - interval '2 hours'
           FROM backup_management.backup_records
         UNION ALL
         SELECT max(backup_id), 'checksum', 'passed', '{}', now() - interval '1 hour'
           FROM backup_management.backup_records;",
    )
    .unwrap();
    let states = |db: &mut postgres::Client| -> Vec<String> {
        db.query(
            "SELECT last_status FROM backup_management.verification_state ORDER BY backup_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    assert_eq!(states(&mut old), ["passed", "passed"], "0.9.0's verdicts");
    let before: String = old.query_one(CONTENT, &[]).unwrap().get(0);
    update_to_current(&mut old);
    assert_eq!(
        before,
        old.query_one(CONTENT, &[]).unwrap().get::<_, String>(0)
    );
    assert_eq!(states(&mut old), ["failed", "passed"]);
    // The triggers keep it so: another checksum pass leaves the failed restore test standing.
    old.batch_execute(
        "INSERT INTO backup_management.backup_verifications (backup_id, verification_type, verification_status)
         SELECT min(backup_id), 'checksum', 'passed' FROM backup_management.backup_records",
    )
    .unwrap();
    assert_eq!(states(&mut old), ["failed", "passed"]);
    assert_same_shape(&mut old, &mut cluster.connect("fresh"));
}

/// 0.10.0 -> 0.11.0: "verified" in `recovery_status` means verified with every backup it builds
/// on.  Under 0.10.0 an incremental whose full failed a restore test was the plan's newest
/// verified backup, and an incremental copied to a target without its full was the off-site
/// one.  After the update the newest backups whose whole chain passed are (locally, and with
/// every member copied, on the target), every row is kept, and the catalog is a fresh install's.
#[test]
fn upgrade_from_0_10_0_counts_only_whole_chains_as_verified_and_keeps_every_row() {
    let cluster = two_databases();
    let mut old = cluster.connect("upgraded");
    old.batch_execute("CREATE EXTENSION backup_mgmt VERSION '0.10.0'")
        .unwrap();
    // A full (72 h ago, copied); a full that failed a restore test (48 h) and an incremental on
    // it (24 h, copied); a full that is not copied (40 h) and an incremental on it (30 h, copied).
    old.batch_execute(
        "INSERT INTO backup_management.backup_records
             (backup_id, database_name, backup_type, backup_method, backup_file_path, status, start_time,
              end_time, duration, checksum, origin, parent_backup_id)
         SELECT id, 'app', CASE WHEN parent IS NULL THEN 'full' ELSE 'incremental' END, 'native_physical',
                '/b/app/' || id, 'completed', now() - make_interval(hours => h), now() - make_interval(hours => h),
                '1 minute', repeat('c', 64), 'worker', parent
           FROM (VALUES (1, 72, NULL), (2, 48, NULL), (3, 24, 2), (4, 40, NULL), (5, 30, 4)) v(id, h, parent);
         SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence('backup_management.backup_records', 'backup_id'), 5);
         INSERT INTO backup_management.backup_verifications
             (backup_id, verification_type, verification_status, verification_result, verified_at)
         SELECT id, 'checksum', 'passed', '{}', now() - interval '1 hour' FROM generate_series(1, 5) id;
         INSERT INTO backup_management.backup_verifications
             (backup_id, verification_type, verification_status, verification_result, verified_at)
         VALUES (2, 'restore_test', 'failed', '{\"stage\": \"data_verification\"}', now() - interval '2 hours');
         INSERT INTO disaster_recovery.recovery_plans
             (plan_name, database_name, rto_minutes, rpo_minutes, backup_strategy, recovery_procedure)
         VALUES ('app-dr', 'app', 60, 1440, 'native chains', 'restore the newest chain');
         INSERT INTO backup_management.remote_backup_configs
             (config_name, database_name, remote_type, remote_endpoint, remote_path, credentials_ref, options, sync_schedule)
         VALUES ('second-disk', 'app', 'filesystem', '/mnt/offsite', 'pg', NULL, '{}', '30 * * * *');
         INSERT INTO backup_management.remote_backup_records
             (backup_id, config_id, remote_file_path, sync_status, bytes_transferred, remote_checksum)
         SELECT id, (SELECT config_id FROM backup_management.remote_backup_configs), '1/app/' || id,
                'completed', 1234, repeat('c', 64)
           FROM unnest(ARRAY[1, 3, 5]) id;",
    )
    .unwrap();
    // Hours since the local and the off-site newest verified backups ended.
    let ages = |db: &mut postgres::Client| -> (Option<i32>, Option<i32>) {
        let r = db
            .query_one(
                "SELECT round(extract(epoch FROM now() - last_verified_backup_at) / 3600)::int,
                        round(extract(epoch FROM now() - offsite_verified_backup_at) / 3600)::int
                   FROM backup_mgmt.recovery_status",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(ages(&mut old), (Some(24), Some(24)), "0.10.0: backup 3");
    let before: String = old.query_one(CONTENT, &[]).unwrap().get(0);
    update_to_current(&mut old);
    assert_eq!(
        before,
        old.query_one(CONTENT, &[]).unwrap().get::<_, String>(0)
    );
    // Locally backup 5 (its full passed); off-site backup 1 (backup 5's full is not there).
    assert_eq!(ages(&mut old), (Some(30), Some(72)));
    let problem: Option<String> = old
        .query_one("SELECT backup_mgmt.chain_problem(3)", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        problem.as_deref(),
        Some("its ancestor 2 failed verification")
    );
    assert_same_shape(&mut old, &mut cluster.connect("fresh"));
}

/// 0.11.0 -> 0.12.0: the off-site RPO counted a target's WAL as reaching the archive time of the
/// oldest file still waiting to be copied there, whose own WAL is not on the target.  After the
/// update it reaches the newest copy archived before that file (a copy archived after it, past
/// the hole, does not count), every row is kept, and the catalog is a fresh install's.
#[test]
fn upgrade_from_0_11_0_stops_the_offsite_wal_at_the_first_hole_and_keeps_every_row() {
    let cluster = two_databases();
    let mut old = cluster.connect("upgraded");
    old.batch_execute("CREATE EXTENSION backup_mgmt VERSION '0.11.0'")
        .unwrap();
    // A verified full (20 h ago) copied to the target; WAL files archived 10, 8, 6 and 1 h ago,
    // all copied but the one of 6 h ago (held back: other bytes under its key, say).
    old.batch_execute(
        "INSERT INTO backup_management.backup_records
             (backup_id, database_name, backup_type, backup_method, backup_file_path, status, start_time,
              end_time, duration, checksum, origin)
         VALUES (1, 'app', 'full', 'native_physical', '/b/app/1', 'completed', now() - interval '20 hours',
                 now() - interval '20 hours', '1 minute', repeat('c', 64), 'worker');
         SELECT pg_catalog.setval(pg_catalog.pg_get_serial_sequence('backup_management.backup_records', 'backup_id'), 1);
         INSERT INTO backup_management.backup_verifications
             (backup_id, verification_type, verification_status, verification_result, verified_at)
         VALUES (1, 'checksum', 'passed', '{}', now() - interval '1 hour');
         INSERT INTO disaster_recovery.recovery_plans
             (plan_name, database_name, rto_minutes, rpo_minutes, backup_strategy, recovery_procedure)
         VALUES ('app-dr', 'app', 60, 420, 'native full and WAL off site', 'restore from the target');
         INSERT INTO backup_management.remote_backup_configs
             (config_name, database_name, remote_type, remote_endpoint, remote_path, credentials_ref, options, sync_schedule)
         VALUES ('second-disk', 'app', 'filesystem', '/mnt/offsite', 'pg', NULL, '{}', '30 * * * *');
         INSERT INTO backup_management.remote_backup_records
             (backup_id, config_id, remote_file_path, sync_status, bytes_transferred, remote_checksum)
         SELECT 1, config_id, '1/app/1', 'completed', 1234, repeat('c', 64)
           FROM backup_management.remote_backup_configs;
         INSERT INTO backup_management.wal_archive
             (system_identifier, file_name, timeline_id, segment_number, file_path, file_size, checksum, archived_at)
         SELECT (SELECT system_identifier FROM pg_catalog.pg_control_system()),
                '00000001000000000000000' || n, 1, n, '/a/00000001000000000000000' || n, 16777216,
                repeat('a', 64), now() - make_interval(hours => h)
           FROM (VALUES (1, 10), (2, 8), (3, 6), (4, 1)) v(n, h);
         INSERT INTO backup_management.remote_wal_records
             (config_id, system_identifier, file_name, remote_key, file_size, remote_checksum, archived_at)
         SELECT c.config_id, a.system_identifier, a.file_name, a.system_identifier || '/.wal/' || a.file_name,
                a.file_size, a.checksum, a.archived_at
           FROM backup_management.wal_archive a, backup_management.remote_backup_configs c
          WHERE a.segment_number <> 3;",
    )
    .unwrap();
    // Hours since the off-site WAL's reach; and whether the 7-hour RPO holds off site.
    let reach = |db: &mut postgres::Client| -> (Option<i32>, String) {
        let r = db
            .query_one(
                "SELECT round(extract(epoch FROM now() - offsite_last_wal_at) / 3600)::int,
                        offsite_rpo_status
                   FROM backup_mgmt.recovery_status",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        reach(&mut old),
        (Some(6), "ok".into()),
        "0.11.0: the held file"
    );
    let before: String = old.query_one(CONTENT, &[]).unwrap().get(0);
    update_to_current(&mut old);
    assert_eq!(
        before,
        old.query_one(CONTENT, &[]).unwrap().get::<_, String>(0)
    );
    assert_eq!(reach(&mut old), (Some(8), "breached".into()));
    // Once the held file is copied, the WAL reaches the newest copy.
    old.batch_execute(
        "INSERT INTO backup_management.remote_wal_records
             (config_id, system_identifier, file_name, remote_key, file_size, remote_checksum, archived_at)
         SELECT c.config_id, a.system_identifier, a.file_name, a.system_identifier || '/.wal/' || a.file_name,
                a.file_size, a.checksum, a.archived_at
           FROM backup_management.wal_archive a, backup_management.remote_backup_configs c
          WHERE a.segment_number = 3",
    )
    .unwrap();
    assert_eq!(reach(&mut old), (Some(1), "ok".into()));
    assert_same_shape(&mut old, &mut cluster.connect("fresh"));
}

/// Two targets, one disabled; files 1 to 4 archived, 1 expired (its copy on `disk` waits to be
/// removed), 2 copied to `disk`, 3 lost; another cluster's file 5.
const FILL_OFFSITE_WAL: &str = "INSERT INTO backup_management.remote_backup_configs
         (config_name, database_name, remote_type, remote_endpoint, remote_path, is_active)
     VALUES ('disk', 'app', 'filesystem', '/mnt/offsite', 'pg', true),
            ('spare', 'app', 'filesystem', '/mnt/spare', 'pg', false);
     INSERT INTO backup_management.wal_archive
         (system_identifier, file_name, timeline_id, segment_number, file_path, file_size, checksum, archived_at)
     SELECT CASE WHEN n = 5 THEN 42 ELSE (SELECT system_identifier FROM pg_catalog.pg_control_system()) END,
            '00000001000000000000000' || n, 1, n, '/a/00000001000000000000000' || n, 16777216,
            repeat('a', 64), now() - make_interval(hours => 10 - n)
       FROM generate_series(1, 5) n;
     INSERT INTO backup_management.remote_wal_records
         (config_id, system_identifier, file_name, remote_key, file_size, remote_checksum, archived_at)
     SELECT c.config_id, a.system_identifier, a.file_name, a.system_identifier || '/.wal/' || a.file_name,
            a.file_size, a.checksum, a.archived_at
       FROM backup_management.wal_archive a, backup_management.remote_backup_configs c
      WHERE a.segment_number IN (1, 2) AND c.config_name = 'disk';
     UPDATE backup_management.wal_archive SET expired_at = now() WHERE segment_number = 1;
     UPDATE backup_management.wal_archive SET lost_at = now(), lost_reason = 'missing' WHERE segment_number = 3;";

/// The off-site WAL queue, a row a line: file, target, action.
const QUEUE: &str = "SELECT coalesce(string_agg(q.file_name || ' ' || coalesce(c.config_name, '(none)') || ' ' || q.action, ', '
                                   ORDER BY q.file_name, c.config_name), '')
                   FROM backup_management.remote_wal_queue q
                   LEFT JOIN backup_management.remote_backup_configs c USING (config_id)";

/// 0.12.0 -> 0.13.0: the off-site WAL queue.  Targets, archived files and copies recorded under
/// 0.12.0 survive; the update fills the queue from them (what waits to be copied to each active
/// target, the expired copy waiting to be removed), `offsite_wal_status` counts the same files as
/// before it, the queue follows what happens after the update, and the catalog is a fresh
/// install's.
#[test]
fn upgrade_from_0_12_0_queues_the_offsite_wal_and_keeps_every_row() {
    let cluster = two_databases();
    let mut old = cluster.connect("upgraded");
    old.batch_execute("CREATE EXTENSION backup_mgmt VERSION '0.12.0'")
        .unwrap();
    old.batch_execute(FILL_OFFSITE_WAL).unwrap();
    let status = "SELECT string_agg(config_name || ' ' || pending_segments || ' ' || round(lag_seconds / 3600), ', ')
                    FROM backup_mgmt.offsite_wal_status";
    let copies = "SELECT string_agg(file_name, ', ' ORDER BY file_name) FROM backup_management.remote_wal_records";
    let before: String = old.query_one(CONTENT, &[]).unwrap().get(0);
    let copies_before: String = old.query_one(copies, &[]).unwrap().get(0);
    let status_before: String = old.query_one(status, &[]).unwrap().get(0);
    assert_eq!(status_before, "disk 1 6", "0.12.0");
    update_to_current(&mut old);
    assert_eq!(
        before,
        old.query_one(CONTENT, &[]).unwrap().get::<_, String>(0)
    );
    assert_eq!(
        copies_before,
        old.query_one(copies, &[]).unwrap().get::<_, String>(0)
    );
    assert_eq!(
        status_before,
        old.query_one(status, &[]).unwrap().get::<_, String>(0)
    );
    let queue = "SELECT string_agg(q.file_name || ' ' || c.config_name || ' ' || q.action, ', '
                                   ORDER BY q.file_name, c.config_name)
                   FROM backup_management.remote_wal_queue q
                   JOIN backup_management.remote_backup_configs c USING (config_id)";
    let queued: String = old.query_one(queue, &[]).unwrap().get(0);
    assert_eq!(
        queued,
        "000000010000000000000001 disk remove, 000000010000000000000004 disk copy"
    );
    // From now on the triggers keep it: the disabled target enabled, a file archived.
    old.batch_execute(
        "UPDATE backup_management.remote_backup_configs SET is_active = true WHERE config_name = 'spare';
         INSERT INTO backup_management.wal_archive
             (system_identifier, file_name, timeline_id, segment_number, file_path, file_size, checksum, archived_at)
         VALUES ((SELECT system_identifier FROM pg_catalog.pg_control_system()), '000000010000000000000006', 1, 6,
                 '/a/000000010000000000000006', 16777216, repeat('a', 64), now());",
    )
    .unwrap();
    let queued: String = old.query_one(queue, &[]).unwrap().get(0);
    assert_eq!(
        queued,
        "000000010000000000000001 disk remove, 000000010000000000000002 spare copy, \
         000000010000000000000004 disk copy, 000000010000000000000004 spare copy, \
         000000010000000000000006 disk copy, 000000010000000000000006 spare copy"
    );
    let repaired: i64 = old
        .query_one("SELECT backup_mgmt.remote_wal_queue_repair()", &[])
        .unwrap()
        .get(0);
    assert_eq!(repaired, 0);
    assert_same_shape(&mut old, &mut cluster.connect("fresh"));
}

/// 0.13.0 -> 0.14.0: the queue without its foreign key to the targets (the worker's ingest no
/// longer waits on an operator's open transaction that deleted a target), a deleted target's
/// rows removed by a trigger instead, and a target's change recomputing that target's rows only.
/// Every row and the queue survive the update; the catalog is a fresh install's.
#[test]
fn upgrade_from_0_13_0_frees_the_queue_from_its_key_and_keeps_every_row() {
    let cluster = two_databases();
    let mut old = cluster.connect("upgraded");
    old.batch_execute("CREATE EXTENSION backup_mgmt VERSION '0.13.0'")
        .unwrap();
    old.batch_execute(FILL_OFFSITE_WAL).unwrap();
    let foreign_keys = "SELECT count(*) FROM pg_catalog.pg_constraint
                         WHERE conrelid = 'backup_management.remote_wal_queue'::regclass AND contype = 'f'";
    assert_eq!(
        old.query_one(foreign_keys, &[]).unwrap().get::<_, i64>(0),
        1
    );
    let before: String = old.query_one(CONTENT, &[]).unwrap().get(0);
    let queued: String = old.query_one(QUEUE, &[]).unwrap().get(0);
    assert_eq!(
        queued,
        "000000010000000000000001 disk remove, 000000010000000000000004 disk copy"
    );
    update_to_current(&mut old);
    assert_eq!(
        before,
        old.query_one(CONTENT, &[]).unwrap().get::<_, String>(0)
    );
    assert_eq!(
        queued,
        old.query_one(QUEUE, &[]).unwrap().get::<_, String>(0)
    );
    assert_eq!(
        old.query_one(foreign_keys, &[]).unwrap().get::<_, i64>(0),
        0
    );
    // Targets enabled, disabled and deleted: each time that target's rows, and none left of a
    // deleted one.
    let step = |db: &mut postgres::Client, sql: &str, expected: &str| {
        db.batch_execute(sql).unwrap();
        let queued: String = db.query_one(QUEUE, &[]).unwrap().get(0);
        assert_eq!(queued, expected, "after {sql}");
        let repaired: i64 = db
            .query_one("SELECT backup_mgmt.remote_wal_queue_repair()", &[])
            .unwrap()
            .get(0);
        assert_eq!(repaired, 0, "after {sql}");
    };
    step(
        &mut old,
        "UPDATE backup_management.remote_backup_configs SET is_active = true WHERE config_name = 'spare'",
        "000000010000000000000001 disk remove, 000000010000000000000002 spare copy, \
         000000010000000000000004 disk copy, 000000010000000000000004 spare copy",
    );
    step(
        &mut old,
        "UPDATE backup_management.remote_backup_configs SET is_active = false WHERE config_name = 'disk'",
        "000000010000000000000001 disk remove, 000000010000000000000002 spare copy, \
         000000010000000000000004 spare copy",
    );
    step(
        &mut old,
        "DELETE FROM backup_management.remote_backup_configs WHERE config_name = 'spare'",
        "000000010000000000000001 disk remove",
    );
    step(
        &mut old,
        "DELETE FROM backup_management.remote_backup_configs WHERE config_name = 'disk'",
        "",
    );
    // Its upkeep is the triggers': no operator may call the new function.
    let callable: bool = old
        .query_one(
            "SELECT has_function_privilege('backup_admin',
                 'backup_mgmt.remote_wal_queue_refresh_targets(integer[])', 'EXECUTE')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!callable);
    assert_same_shape(&mut old, &mut cluster.connect("fresh"));
}
