//! `#[pg_test]`s: everything that needs a running server.  Each test runs in a transaction that
//! is rolled back afterwards.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    const SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// Runs `sql` and returns (SQLSTATE, message, hint); SQLSTATE is "ok" when it succeeded.
    /// The statement runs in a PL/pgSQL exception block, i.e. a subtransaction, so a failing
    /// call is rolled back cleanly and the test can go on to check that nothing was written.
    fn outcome(sql: &str) -> (String, String, String) {
        // Created once per session (by whichever role runs first; EXECUTE is PUBLIC's for it).
        Spi::run(
            "DO $do$ BEGIN
             IF to_regprocedure('pg_temp.outcome(text)') IS NULL THEN
                 CREATE FUNCTION pg_temp.outcome(stmt text, OUT state text, OUT message text, OUT hint text)
                 LANGUAGE plpgsql AS $$
                 BEGIN
                     EXECUTE stmt;
                     state := 'ok'; message := ''; hint := '';
                 EXCEPTION WHEN OTHERS THEN
                     GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
                 END $$;
             END IF;
             END $do$",
        )
        .unwrap();
        let (s, m, h) = Spi::get_three_with_args::<String, String, String>(
            "SELECT state, message, hint FROM pg_temp.outcome($1)",
            &[sql.into()],
        )
        .unwrap();
        (s.unwrap(), m.unwrap_or_default(), h.unwrap_or_default())
    }

    /// Asserts that `sql` fails with `state` and a message naming `value`; returns the hint.
    fn assert_refused(sql: &str, state: &str, value: &str) -> String {
        let (s, m, h) = outcome(sql);
        assert_eq!(s, state, "{sql}: {m}");
        assert!(m.contains(value), "message {m:?} should name {value:?}");
        h
    }

    /// As `assert_refused`, and the error carries a hint: backup_mgmt's own errors always do.
    fn assert_fails(sql: &str, state: &str, value: &str) {
        let h = assert_refused(sql, state, value);
        assert!(!h.is_empty(), "{sql}: no hint");
    }

    fn start() -> i64 {
        Spi::get_one::<i64>("SELECT backup_mgmt.record_backup_start('appdb', 'full', 'pg_dump', '/var/backups/appdb.dump')")
            .unwrap()
            .unwrap()
    }

    fn status_of(id: i64) -> (String, i64) {
        let (s, z) = Spi::get_two_with_args::<String, i64>(
            "SELECT status, backup_size FROM backup_management.backup_records WHERE backup_id = $1",
            &[id.into()],
        )
        .unwrap();
        (s.unwrap(), z.unwrap())
    }

    #[pg_test]
    fn start_then_complete_records_everything() {
        let id = start();
        assert_eq!(status_of(id), ("running".into(), 0));
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_complete($1, 1024, $2)",
            &[id.into(), SHA.to_uppercase().into()],
        )
        .unwrap();
        let row = Spi::get_one_with_args::<bool>(
            "SELECT status = 'completed' AND backup_size = 1024 AND checksum = $2
                    AND end_time = now() AND duration = now() - start_time
                    AND system_identifier = (SELECT system_identifier FROM pg_control_system())
                    AND pg_version = current_setting('server_version_num')::int
                    AND checksum_algorithm = 'sha256' AND recorded_by = session_user
               FROM backup_management.backup_records WHERE backup_id = $1",
            &[id.into(), SHA.into()],
        )
        .unwrap();
        assert_eq!(
            row,
            Some(true),
            "checksum stored lower-case, times as the seed computes them"
        );
    }

    #[pg_test]
    fn completing_is_a_hot_update() {
        // No index covers a column that completion changes (sql/schema.sql explains why), so the
        // row's new version stays on its page and no index is written.
        let id = start();
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_complete($1, 1)",
            &[id.into()],
        )
        .unwrap();
        let hot = Spi::get_one::<i64>(
            "SELECT pg_stat_get_xact_tuples_hot_updated('backup_management.backup_records'::regclass)",
        )
        .unwrap();
        assert_eq!(hot, Some(1));
    }

    #[pg_test]
    fn complete_without_checksum_leaves_it_null() {
        let id = start();
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_complete($1, 0)",
            &[id.into()],
        )
        .unwrap();
        let c = Spi::get_one_with_args::<String>(
            "SELECT checksum FROM backup_management.backup_records WHERE backup_id = $1",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(c, None);
    }

    #[pg_test]
    fn failure_records_message() {
        let id = start();
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_failure($1, 'pg_dump: connection refused')",
            &[id.into()],
        )
        .unwrap();
        let ok = Spi::get_one_with_args::<bool>(
            "SELECT status = 'failed' AND error_message = 'pg_dump: connection refused' AND end_time IS NOT NULL
               FROM backup_management.backup_records WHERE backup_id = $1",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(ok, Some(true));
    }

    #[pg_test]
    fn unknown_backup_id_is_undefined_object() {
        assert_fails(
            "SELECT backup_mgmt.record_backup_complete(987654321, 1)",
            "42704",
            "987654321",
        );
        assert_fails(
            "SELECT backup_mgmt.record_backup_failure(987654321, 'x')",
            "42704",
            "987654321",
        );
    }

    #[pg_test]
    fn completing_a_finished_record_is_refused() {
        let id = start();
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_complete($1, 10)",
            &[id.into()],
        )
        .unwrap();
        let sql = format!("SELECT backup_mgmt.record_backup_complete({id}, 99)");
        assert_fails(&sql, "55000", "completed");
        assert_eq!(
            status_of(id),
            ("completed".into(), 10),
            "first completion kept"
        );
    }

    #[pg_test]
    fn failing_a_finished_record_is_refused() {
        let id = start();
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_complete($1, 10)",
            &[id.into()],
        )
        .unwrap();
        assert_fails(
            &format!("SELECT backup_mgmt.record_backup_failure({id}, 'late')"),
            "55000",
            "not running",
        );
        assert_eq!(status_of(id).0, "completed");
    }

    #[pg_test]
    fn negative_size_is_refused_and_nothing_written() {
        let id = start();
        assert_fails(
            &format!("SELECT backup_mgmt.record_backup_complete({id}, -5)"),
            "22023",
            "-5",
        );
        assert_eq!(status_of(id), ("running".into(), 0));
    }

    #[pg_test]
    fn malformed_checksum_is_refused() {
        let id = start();
        assert_fails(
            &format!("SELECT backup_mgmt.record_backup_complete({id}, 1, 'abc123')"),
            "22023",
            "abc123",
        );
        let not_hex = format!("{}zz", &SHA[..62]);
        assert_fails(
            &format!("SELECT backup_mgmt.record_backup_complete({id}, 1, '{not_hex}')"),
            "22023",
            &not_hex,
        );
        assert_eq!(status_of(id), ("running".into(), 0));
    }

    #[pg_test]
    fn unknown_backup_type_is_refused() {
        assert_fails(
            "SELECT backup_mgmt.record_backup_start('appdb', 'weekly', 'pg_dump', '/b/x')",
            "22023",
            "weekly",
        );
    }

    #[pg_test]
    fn unknown_backup_method_is_refused() {
        assert_fails(
            "SELECT backup_mgmt.record_backup_start('appdb', 'full', 'rsync', '/b/x')",
            "22023",
            "rsync",
        );
    }

    #[pg_test]
    fn method_that_cannot_take_the_type_is_refused() {
        assert_fails(
            "SELECT backup_mgmt.record_backup_start('appdb', 'incremental', 'pg_dump', '/b/x')",
            "22023",
            "incremental",
        );
    }

    #[pg_test]
    fn relative_path_is_refused() {
        assert_fails(
            "SELECT backup_mgmt.record_backup_start('appdb', 'full', 'pg_dump', 'backups/x.dump')",
            "22023",
            "backups/x.dump",
        );
        assert_fails(
            "SELECT backup_mgmt.record_backup_start('appdb', 'full', 'pg_dump', '/b/../etc/x')",
            "22023",
            "/b/../etc/x",
        );
    }

    #[pg_test]
    fn empty_database_name_is_refused() {
        assert_fails(
            "SELECT backup_mgmt.record_backup_start('', 'full', 'pg_dump', '/b/x')",
            "22023",
            "empty",
        );
        let before =
            Spi::get_one::<i64>("SELECT count(*) FROM backup_management.backup_records").unwrap();
        assert_eq!(before, Some(0), "no row was written by the refused calls");
    }

    #[pg_test]
    fn null_arguments_are_refused() {
        assert_fails(
            "SELECT backup_mgmt.record_backup_start(NULL, 'full', 'pg_dump', '/b/x')",
            "22004",
            "database_name",
        );
        assert_fails(
            "SELECT backup_mgmt.record_backup_complete(NULL, 1)",
            "22004",
            "backup_id",
        );
        assert_fails(
            "SELECT backup_mgmt.record_backup_failure(1, NULL)",
            "22004",
            "error_message",
        );
    }

    #[pg_test]
    fn failure_needs_a_message() {
        let id = start();
        assert_fails(
            &format!("SELECT backup_mgmt.record_backup_failure({id}, '  ')"),
            "22023",
            "empty",
        );
    }

    #[pg_test(error = "backup 424242 does not exist")]
    fn unknown_backup_raises() {
        Spi::run("SELECT backup_mgmt.record_backup_complete(424242, 1)").unwrap();
    }

    #[pg_test]
    fn table_constraints_stop_half_written_rows_from_any_writer() {
        // Even a superuser writing directly cannot store a completed row without an end time,
        // or a failed one without its error.
        assert_refused(
            "INSERT INTO backup_management.backup_records (database_name, backup_type, backup_method, backup_file_path, status)
             VALUES ('d', 'full', 'pg_dump', '/b/x', 'completed')",
            "23514",
            "backup_records_check",
        );
        assert_refused(
            "INSERT INTO backup_management.backup_records
                 (database_name, backup_type, backup_method, backup_file_path, status, end_time, duration)
             VALUES ('d', 'full', 'pg_dump', '/b/x', 'failed', now(), '0')",
            "23514",
            "a failed backup record needs its error_message",
        );
        // The same vocabulary and formats as the record functions' arguments.
        for (values, broken) in [
            ("'d', 'weekly', 'pg_dump', '/b/x', 'running'", "weekly"),
            ("'d', 'wal', 'pg_dump', '/b/x', 'running'", "cannot take"),
            ("'d', 'full', 'pg_dump', 'b/x', 'running'", "b/x"),
            ("'d', 'full', 'pg_dump', '/b/x', 'done'", "done"),
        ] {
            assert_refused(
                &format!(
                    "INSERT INTO backup_management.backup_records
                         (database_name, backup_type, backup_method, backup_file_path, status)
                     VALUES ({values})"
                ),
                "23514",
                broken,
            );
        }
        let (s, m, _) = outcome(
            "INSERT INTO backup_management.backup_records
                 (database_name, backup_type, backup_method, backup_file_path, status, end_time, duration, error_message)
             VALUES ('d', 'full', 'pg_dump', '/b/x', 'failed', now(), '0', 'boom')",
        );
        assert_eq!(s, "ok", "a complete failed row is accepted: {m}");
    }

    #[pg_test]
    fn ordinary_role_is_refused_and_backup_admin_succeeds() {
        Spi::run("CREATE ROLE bm_test_plain").unwrap();
        Spi::run("CREATE ROLE bm_test_operator IN ROLE backup_admin").unwrap();

        Spi::run("SET LOCAL ROLE bm_test_plain").unwrap();
        for sql in [
            "SELECT backup_mgmt.record_backup_start('appdb', 'full', 'pg_dump', '/b/x')",
            "SELECT backup_mgmt.record_backup_complete(1, 1)",
            "SELECT backup_mgmt.record_backup_failure(1, 'x')",
            "SELECT backup_mgmt.check_backup_path('/b/x')",
            "SELECT count(*) FROM backup_management.backup_records",
            "INSERT INTO backup_management.backup_records (database_name, backup_type, backup_method, backup_file_path)
             VALUES ('d', 'full', 'pg_dump', '/b/x')",
        ] {
            let (s, m, _) = outcome(sql);
            assert_eq!(s, "42501", "{sql}: {m}");
            assert!(m.contains("permission denied"), "{m}");
        }

        Spi::run("SET LOCAL ROLE bm_test_operator").unwrap();
        let id = start();
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_complete($1, 5)",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(status_of(id), ("completed".into(), 5));
        let who = Spi::get_one_with_args::<String>(
            "SELECT recorded_by FROM backup_management.backup_records WHERE backup_id = $1",
            &[id.into()],
        )
        .unwrap();
        assert!(who.is_some());
        // Operators write through the functions, not around them.
        let (s, _, _) = outcome(
            "UPDATE backup_management.backup_records SET status = 'completed' WHERE backup_id = 1",
        );
        assert_eq!(s, "42501");
        Spi::run("RESET ROLE").unwrap();
    }

    #[pg_test]
    fn public_cannot_execute_any_function() {
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_proc p
               JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
               JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'backup_mgmt'
              WHERE has_function_privilege('public', p.oid, 'EXECUTE')
                AND p.pronamespace <> 'tests'::regnamespace",
        )
        .unwrap();
        assert_eq!(n, Some(0));
    }

    #[pg_test]
    fn security_definer_functions_pin_search_path() {
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_proc p
               JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
               JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'backup_mgmt'
              WHERE p.prosecdef AND NOT EXISTS (SELECT FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')",
        )
        .unwrap();
        assert_eq!(n, Some(0));
    }

    #[pg_test]
    fn every_object_and_column_has_a_comment() {
        let missing = Spi::get_one::<String>(
            "SELECT string_agg(pg_describe_object(d.classid, d.objid, 0), ', ')
               FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'backup_mgmt'
              WHERE d.deptype = 'e' AND obj_description(d.objid, d.classid::regclass::text) IS NULL
                -- the pg_test harness's own schema and functions
                AND NOT (d.classid = 'pg_namespace'::regclass AND d.objid = 'tests'::regnamespace)
                AND NOT (d.classid = 'pg_proc'::regclass
                         AND (SELECT pronamespace FROM pg_proc WHERE oid = d.objid) = 'tests'::regnamespace)",
        )
        .unwrap();
        assert_eq!(missing, None, "objects without COMMENT");
        let columns = Spi::get_one::<String>(
            "SELECT string_agg(format('%s.%s', c.oid::regclass, a.attname), ', ')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
              WHERE n.nspname IN ('backup_management', 'disaster_recovery', 'enterprise_backup')
                AND c.relkind = 'r' AND col_description(c.oid, a.attnum) IS NULL",
        )
        .unwrap();
        assert_eq!(columns, None, "columns without COMMENT");
    }

    #[pg_test]
    fn catalog_tables_are_dumped_with_the_database() {
        // Every catalog table, whatever their number: the design's eight, wal_archive and
        // retention_policies.
        let missing = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r'
                AND n.nspname IN ('backup_management', 'disaster_recovery', 'enterprise_backup')
                AND c.oid <> ALL (SELECT unnest(extconfig) FROM pg_extension WHERE extname = 'backup_mgmt')",
        )
        .unwrap();
        assert_eq!(missing, Some(0));
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_extension e, unnest(e.extconfig) c(oid)
              WHERE e.extname = 'backup_mgmt' AND (SELECT relkind FROM pg_class WHERE oid = c.oid) = 'r'",
        )
        .unwrap();
        assert_eq!(n, Some(10));
    }

    #[pg_test]
    fn remote_configs_refuse_secrets() {
        assert_refused(
            "INSERT INTO backup_management.remote_backup_configs
                 (config_name, database_name, remote_type, remote_endpoint, remote_path, credentials_ref)
             VALUES ('s3', 'appdb', 's3', 'http://127.0.0.1:9000', 'bucket/x', 'AKIAEXAMPLEKEY')",
            "23514",
            "credentials_ref",
        );
        assert_refused(
            "INSERT INTO backup_management.remote_backup_configs
                 (config_name, database_name, remote_type, remote_endpoint, remote_path, options)
             VALUES ('s3', 'appdb', 's3', 'http://127.0.0.1:9000', 'bucket/x', '{\"secret_access_key\": \"x\"}')",
            "23514",
            "no_secret",
        );
        let (s, m, _) = outcome(
            "INSERT INTO backup_management.remote_backup_configs
                 (config_name, database_name, remote_type, remote_endpoint, remote_path, credentials_ref)
             VALUES ('s3', 'appdb', 's3', 'http://127.0.0.1:9000', 'bucket/x', 'env:BACKUP_S3_SECRET')",
        );
        assert_eq!(s, "ok", "{m}");
    }

    #[pg_test]
    fn schedule_preview_lists_fire_times_in_the_zone() {
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM backup_mgmt.schedule_preview('*/5 * * * *', 'UTC', 3) t
              WHERE extract(minute FROM t AT TIME ZONE 'UTC')::int % 5 = 0 AND t > now()",
        )
        .unwrap();
        assert_eq!(n, Some(3));
        // Without a zone, the session's TimeZone.
        Spi::run("SET LOCAL TimeZone = 'America/New_York'").unwrap();
        let hour = Spi::get_one::<i32>(
            "SELECT extract(hour FROM t AT TIME ZONE 'America/New_York')::int
               FROM backup_mgmt.schedule_preview('0 3 * * *', NULL, 1) t",
        )
        .unwrap();
        assert_eq!(hour, Some(3));
    }

    #[pg_test]
    fn schedule_preview_refuses_bad_input_naming_it() {
        assert_fails(
            "SELECT backup_mgmt.schedule_preview('61 * * * *')",
            "22023",
            "minute",
        );
        assert_fails(
            "SELECT backup_mgmt.schedule_preview('* * * *')",
            "22023",
            "4 fields",
        );
        assert_fails(
            "SELECT backup_mgmt.schedule_preview('@fortnightly')",
            "22023",
            "@fortnightly",
        );
        assert_fails(
            "SELECT backup_mgmt.schedule_preview('@daily', 'Mars/Base')",
            "22023",
            "Mars/Base",
        );
        assert_fails(
            "SELECT backup_mgmt.schedule_preview('@daily', 'UTC', 0)",
            "22023",
            "count 0",
        );
    }

    #[pg_test]
    fn schedule_backup_creates_a_job_with_its_next_run() {
        let id = Spi::get_one::<i64>(
            "SELECT backup_mgmt.schedule_backup('nightly', '30 2 * * *', 'pgrx_tests', 'full', 'pg_dump',
                                                '{\"timeout_seconds\": 600}', 'Europe/Berlin')",
        )
        .unwrap();
        assert!(id.is_some());
        let ok = Spi::get_one::<bool>(
            "SELECT next_run_at = (SELECT t FROM backup_mgmt.schedule_preview('30 2 * * *', 'Europe/Berlin', 1) t)
                    AND next_run_at > now() AND is_active
                    AND options = '{\"compression\": \"zstd\", \"compression_level\": 3, \"parallel_jobs\": 1,
                                    \"timeout_seconds\": 600, \"include_globals\": true}'::jsonb
               FROM enterprise_backup.backup_jobs WHERE job_name = 'nightly'",
        )
        .unwrap();
        assert_eq!(ok, Some(true));
        let runs = Spi::get_one::<i64>(
            "SELECT count(*) FROM backup_mgmt.next_runs('nightly', 3) t
              WHERE extract(hour FROM t AT TIME ZONE 'Europe/Berlin') = 2
                AND extract(minute FROM t AT TIME ZONE 'Europe/Berlin') = 30",
        )
        .unwrap();
        assert_eq!(runs, Some(3));
    }

    #[pg_test]
    fn schedule_backup_refuses_bad_jobs() {
        Spi::run("SELECT backup_mgmt.schedule_backup('dup', '@daily', 'pgrx_tests')").unwrap();
        assert_fails(
            "SELECT backup_mgmt.schedule_backup('dup', '@daily', 'pgrx_tests')",
            "42710",
            "dup",
        );
        assert_fails(
            "SELECT backup_mgmt.schedule_backup('j', '0 24 * * *', 'pgrx_tests')",
            "22023",
            "hour",
        );
        assert_fails(
            "SELECT backup_mgmt.schedule_backup('j', '@daily', 'pgrx_tests', time_zone => 'Nowhere/City')",
            "22023",
            "Nowhere/City",
        );
        assert_fails(
            "SELECT backup_mgmt.schedule_backup('j', '@daily', 'no_such_db')",
            "3D000",
            "no_such_db",
        );
        assert_fails(
            "SELECT backup_mgmt.schedule_backup('j', '@daily', 'pgrx_tests', 'wal', 'continuous_archiving')",
            "22023",
            "continuous_archiving",
        );
        assert_fails(
            "SELECT backup_mgmt.schedule_backup('j', '@daily', 'pgrx_tests', options => '{\"compresion\": 1}')",
            "22023",
            "compresion",
        );
        assert_fails(
            "SELECT backup_mgmt.schedule_backup(' ', '@daily', 'pgrx_tests')",
            "22023",
            "empty",
        );
        let n = Spi::get_one::<i64>("SELECT count(*) FROM enterprise_backup.backup_jobs").unwrap();
        assert_eq!(n, Some(1), "only the first, valid job was written");
    }

    #[pg_test]
    fn alter_job_and_unschedule() {
        Spi::run("SELECT backup_mgmt.schedule_backup('hourly', '@hourly', 'pgrx_tests')").unwrap();
        Spi::run(
            "SELECT backup_mgmt.alter_job('hourly', schedule => '15 4 * * *', time_zone => 'UTC')",
        )
        .unwrap();
        let ok = Spi::get_one::<bool>(
            "SELECT schedule_cron = '15 4 * * *' AND timezone = 'UTC'
                    AND extract(hour FROM next_run_at AT TIME ZONE 'UTC') = 4
               FROM enterprise_backup.backup_jobs WHERE job_name = 'hourly'",
        )
        .unwrap();
        assert_eq!(ok, Some(true));
        Spi::run("SELECT backup_mgmt.alter_job('hourly', active => false)").unwrap();
        let next = Spi::get_one::<bool>(
            "SELECT next_run_at IS NULL AND NOT is_active FROM enterprise_backup.backup_jobs WHERE job_name = 'hourly'",
        )
        .unwrap();
        assert_eq!(next, Some(true), "an inactive job has no next run");
        assert_fails(
            "SELECT backup_mgmt.alter_job('hourly', schedule => 'often')",
            "22023",
            "often",
        );
        assert_fails(
            "SELECT backup_mgmt.alter_job('nope', active => true)",
            "42704",
            "nope",
        );
        assert_eq!(
            Spi::get_one::<bool>("SELECT backup_mgmt.unschedule('hourly')").unwrap(),
            Some(true)
        );
        assert_fails("SELECT backup_mgmt.unschedule('hourly')", "42704", "hourly");
        assert_fails(
            "SELECT * FROM backup_mgmt.next_runs('hourly')",
            "42704",
            "hourly",
        );
    }

    #[pg_test]
    fn run_job_now_queues_a_run_for_the_worker() {
        Spi::run("SELECT backup_mgmt.schedule_backup('later', '@yearly', 'pgrx_tests')").unwrap();
        let id = Spi::get_one::<i64>("SELECT backup_mgmt.run_job_now('later')").unwrap();
        let queued = Spi::get_one::<bool>(
            "SELECT run_requested_at IS NOT NULL FROM enterprise_backup.backup_jobs WHERE job_name = 'later'",
        )
        .unwrap();
        assert_eq!(queued, Some(true));
        assert!(id.is_some_and(|i| i > 0));
        assert_fails("SELECT backup_mgmt.run_job_now('nope')", "42704", "nope");
        assert_fails("SELECT backup_mgmt.run_job_now(NULL)", "22004", "job_name");
        assert_fails("SELECT backup_mgmt.run_job_now(' ')", "22023", "job name");
    }

    #[pg_test]
    fn job_options_for_the_worker_are_validated() {
        assert_fails(
            "SELECT backup_mgmt.schedule_backup('b', '@daily', 'pgrx_tests', 'full', 'pg_basebackup', '{\"include_globals\": true}')",
            "22023",
            "include_globals",
        );
        Spi::run("SELECT backup_mgmt.schedule_backup('b', '@daily', 'pgrx_tests', 'full', 'pg_basebackup', '{\"fast_checkpoint\": true}')").unwrap();
        let o = Spi::get_one::<String>(
            "SELECT options::text FROM enterprise_backup.backup_jobs WHERE job_name = 'b'",
        )
        .unwrap()
        .unwrap_or_default();
        assert!(o.contains("\"fast_checkpoint\": true"), "{o}");
    }

    #[pg_test]
    fn progress_view_and_new_objects_are_commented_and_not_public() {
        let uncommented = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'backup_mgmt' AND c.relkind = 'v' AND obj_description(c.oid, 'pg_class') IS NULL",
        )
        .unwrap();
        assert_eq!(uncommented, Some(0));
        let public = Spi::get_one::<bool>(
            "SELECT has_table_privilege('public', 'backup_mgmt.backup_progress', 'SELECT')",
        )
        .unwrap();
        assert_eq!(public, Some(false));
        let admin = Spi::get_one::<bool>(
            "SELECT has_table_privilege('backup_admin', 'backup_mgmt.backup_progress', 'SELECT')",
        )
        .unwrap();
        assert_eq!(admin, Some(true));
    }

    /// A completed backup record for `data` written at `name` under the test root.
    fn recorded_file(name: &str, data: &[u8]) -> (i64, std::path::PathBuf) {
        use sha2::Digest;
        let root = std::path::Path::new(crate::tests::TEST_ROOT);
        std::fs::create_dir_all(root).unwrap();
        let path = root.join(name);
        std::fs::write(&path, data).unwrap();
        let sum = crate::executor::hex(&sha2::Sha256::digest(data));
        let id = Spi::get_one_with_args::<i64>(
            "SELECT backup_mgmt.record_backup_start('pgrx_tests', 'full', 'pg_dump', $1)",
            &[path.to_str().unwrap().into()],
        )
        .unwrap()
        .unwrap();
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_complete($1, $2, $3)",
            &[id.into(), (data.len() as i64).into(), sum.as_str().into()],
        )
        .unwrap();
        (id, path)
    }

    fn verify(id: i64) -> (bool, String, String) {
        let passed = Spi::get_one_with_args::<bool>(
            "SELECT backup_mgmt.verify_backup_integrity($1)",
            &[id.into()],
        )
        .unwrap()
        .unwrap();
        let (status, reason) = Spi::get_two_with_args::<String, String>(
            "SELECT verification_status, coalesce(verification_result->>'reason', '')
               FROM backup_management.backup_verifications WHERE backup_id = $1
              ORDER BY verification_id DESC LIMIT 1",
            &[id.into()],
        )
        .unwrap();
        (passed, status.unwrap(), reason.unwrap())
    }

    #[pg_test]
    fn verification_records_every_outcome() {
        let data: Vec<u8> = (0..5_000_000u32).map(|i| (i % 253) as u8).collect();
        let (id, path) = recorded_file("verify-me.dump", &data);
        assert_eq!(verify(id), (true, "passed".into(), "".into()));
        let mut bad = data.clone();
        bad[4_194_304 + 7] ^= 0x40;
        std::fs::write(&path, &bad).unwrap();
        assert_eq!(
            verify(id),
            (false, "failed".into(), "checksum_mismatch".into())
        );
        std::fs::write(&path, &data[..1000]).unwrap();
        assert_eq!(verify(id), (false, "failed".into(), "truncated".into()));
        std::fs::remove_file(&path).unwrap();
        assert_eq!(verify(id), (false, "failed".into(), "missing".into()));
        let recorded = Spi::get_one_with_args::<i64>(
            "SELECT count(*) FROM backup_management.backup_verifications WHERE backup_id = $1",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(recorded, Some(4));
        let detail = Spi::get_one_with_args::<bool>(
            "SELECT verification_result ? 'duration_ms' AND verification_result->>'expected_sha256' IS NOT NULL
                    AND duration IS NOT NULL
               FROM backup_management.backup_verifications WHERE backup_id = $1 ORDER BY verification_id LIMIT 1",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(detail, Some(true));
    }

    #[pg_test]
    fn verification_refuses_paths_outside_the_roots_and_bad_ids() {
        // A record that points outside the roots: refused, nothing opened, nothing recorded.
        let id = Spi::get_one::<i64>(
            "SELECT backup_mgmt.record_backup_start('pgrx_tests', 'full', 'pg_dump', '/etc/passwd')",
        )
        .unwrap()
        .unwrap();
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_complete($1, 1, NULL)",
            &[id.into()],
        )
        .unwrap();
        assert_fails(
            &format!("SELECT backup_mgmt.verify_backup_integrity({id})"),
            "42501",
            "/etc/passwd",
        );
        // A symlink inside the roots that leads out.
        let root = std::path::Path::new(crate::tests::TEST_ROOT);
        std::fs::create_dir_all(root).unwrap();
        let link = root.join("sneaky.dump");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        let id2 = Spi::get_one_with_args::<i64>(
            "SELECT backup_mgmt.record_backup_start('pgrx_tests', 'full', 'pg_dump', $1)",
            &[link.to_str().unwrap().into()],
        )
        .unwrap()
        .unwrap();
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_complete($1, 1, NULL)",
            &[id2.into()],
        )
        .unwrap();
        assert_fails(
            &format!("SELECT backup_mgmt.verify_backup_integrity({id2})"),
            "42501",
            "sneaky",
        );
        let none =
            Spi::get_one::<i64>("SELECT count(*) FROM backup_management.backup_verifications")
                .unwrap();
        assert_eq!(none, Some(0));
        assert_fails(
            "SELECT backup_mgmt.verify_backup_integrity(987654)",
            "42704",
            "987654",
        );
        assert_fails(
            "SELECT backup_mgmt.verify_backup_integrity(NULL)",
            "22004",
            "backup_id",
        );
        let running = Spi::get_one::<i64>(
            "SELECT backup_mgmt.record_backup_start('pgrx_tests', 'full', 'pg_dump', '/tmp/backup_mgmt_pgtest_root/r.dump')",
        )
        .unwrap()
        .unwrap();
        assert_fails(
            &format!("SELECT backup_mgmt.verify_backup_integrity({running})"),
            "55000",
            "running",
        );
    }

    #[pg_test]
    fn schedule_backup_jobs_recomputes_next_runs() {
        Spi::run("SELECT backup_mgmt.schedule_backup('a', '*/10 * * * *', 'pgrx_tests')").unwrap();
        Spi::run("UPDATE enterprise_backup.backup_jobs SET next_run_at = NULL").unwrap();
        Spi::run("SELECT backup_mgmt.schedule_backup_jobs()").unwrap();
        let ok = Spi::get_one::<bool>(
            "SELECT next_run_at > now() AND next_run_at <= now() + interval '10 minutes'
               FROM enterprise_backup.backup_jobs WHERE job_name = 'a'",
        )
        .unwrap();
        assert_eq!(ok, Some(true));
    }

    #[pg_test]
    fn backup_paths_are_confined_to_the_roots() {
        // postgresql_conf_options() sets backup_mgmt.backup_roots to this directory.
        let root = std::path::Path::new(crate::tests::TEST_ROOT);
        std::fs::create_dir_all(root).unwrap();
        std::fs::write(root.join("ok.dump"), b"x").unwrap();
        let link = root.join("escape");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();

        let ok = Spi::get_one_with_args::<String>(
            "SELECT backup_mgmt.check_backup_path($1)",
            &[root.join("ok.dump").to_str().unwrap().into()],
        )
        .unwrap();
        assert_eq!(
            ok.as_deref(),
            root.join("ok.dump").canonicalize().unwrap().to_str()
        );
        assert_fails(
            "SELECT backup_mgmt.check_backup_path('/etc/passwd')",
            "42501",
            "/etc/passwd",
        );
        assert_fails(
            &format!(
                "SELECT backup_mgmt.check_backup_path('{}/../etc/passwd')",
                crate::tests::TEST_ROOT
            ),
            "22023",
            "..",
        );
        assert_fails(
            &format!("SELECT backup_mgmt.check_backup_path('{}')", link.display()),
            "42501",
            "escape",
        );
    }

    /// Recovery planning: a NULL target is refused; with no base backup (or one that ended
    /// after the target) the plan says so instead of pretending.
    #[pg_test]
    fn recovery_plans_explain_what_is_missing() {
        assert_fails(
            "SELECT * FROM backup_mgmt.plan_recovery(NULL)",
            "22004",
            "NULL",
        );
        let (reachable, reason) = Spi::get_two::<bool, String>(
            "SELECT reachable, reason FROM backup_mgmt.plan_recovery(now())",
        )
        .unwrap();
        assert_eq!(reachable, Some(false));
        assert!(reason.unwrap().contains("no completed pg_basebackup"));
        // A base backup without its WAL positions cannot be a starting point; with them, and
        // no archived WAL, the plan lists what is missing.
        let id = Spi::get_one::<i64>(
            "SELECT backup_mgmt.record_backup_start('postgres', 'full', 'pg_basebackup', '/tmp/backup_mgmt_pgtest_root/base.tar')",
        )
        .unwrap()
        .unwrap();
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_complete($1, 10, repeat('a', 64))",
            &[id.into()],
        )
        .unwrap();
        let before = Spi::get_one::<bool>(
            "SELECT reachable FROM backup_mgmt.plan_recovery_lsn('0/5000000')",
        )
        .unwrap();
        assert_eq!(before, Some(false));
        Spi::run_with_args(
            "UPDATE backup_management.backup_records \
                SET start_lsn = '0/3000028', stop_lsn = '0/3000100', timeline_id = 1, \
                    system_identifier = (SELECT system_identifier FROM pg_control_system()) \
              WHERE backup_id = $1",
            &[id.into()],
        )
        .unwrap();
        let (reachable, missing) = Spi::get_two::<bool, Vec<String>>(
            "SELECT reachable, missing_wal_files FROM backup_mgmt.plan_recovery_lsn('0/5000000')",
        )
        .unwrap();
        assert_eq!(reachable, Some(false));
        assert_eq!(
            missing.unwrap(),
            vec![
                "000000010000000000000003",
                "000000010000000000000004",
                "000000010000000000000005"
            ]
        );
        let recipe =
            Spi::get_one::<String>("SELECT recipe FROM backup_mgmt.plan_recovery_lsn('0/5000000')")
                .unwrap();
        assert_eq!(recipe, None, "no recipe for an unreachable target");
    }

    /// A native chain in the catalog: the parent cannot be deleted or expired while a child is
    /// retained; children first is fine.  restore_recipe refuses what it cannot restore.
    #[pg_test]
    fn native_chains_are_units_and_recipes_refuse_other_backups() {
        let record = |kind: &str, path: &str| -> i64 {
            let id = Spi::get_one_with_args::<i64>(
                "SELECT backup_mgmt.record_backup_start('postgres', $1, 'native_physical', $2)",
                &[kind.into(), path.into()],
            )
            .unwrap()
            .unwrap();
            Spi::run_with_args(
                "SELECT backup_mgmt.record_backup_complete($1, 10, repeat('b', 64))",
                &[id.into()],
            )
            .unwrap();
            id
        };
        let full = record("full", "/tmp/backup_mgmt_pgtest_root/f.native");
        let incr = record("incremental", "/tmp/backup_mgmt_pgtest_root/i.native");
        Spi::run_with_args(
            "UPDATE backup_management.backup_records SET parent_backup_id = $2 WHERE backup_id = $1",
            &[incr.into(), full.into()],
        )
        .unwrap();
        assert_fails(
            &format!("DELETE FROM backup_management.backup_records WHERE backup_id = {full}"),
            "2BP01",
            &format!("backup {full} is the parent of backup {incr}"),
        );
        assert_fails(
            &format!("UPDATE backup_management.backup_records SET status = 'expired' WHERE backup_id = {full}"),
            "2BP01",
            &incr.to_string(),
        );
        // One statement expiring the whole chain is fine, whichever row it reaches first.
        Spi::run_with_args(
            "UPDATE backup_management.backup_records SET status = 'expired' WHERE backup_id = ANY($1)",
            &[vec![full, incr].into()],
        )
        .unwrap();

        assert_fails("SELECT backup_mgmt.restore_recipe(NULL)", "22004", "NULL");
        assert_fails(
            "SELECT backup_mgmt.restore_recipe(424242)",
            "42704",
            "424242",
        );
        let dump = start();
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_complete($1, 10, repeat('c', 64))",
            &[dump.into()],
        )
        .unwrap();
        assert_fails(
            &format!("SELECT backup_mgmt.restore_recipe({dump})"),
            "42809",
            "pg_dump",
        );
    }

    /// Retention in the catalog: previews name the rules; applying marks records expired;
    /// pins and the newest verified backup survive a policy that keeps nothing; WAL older than
    /// the oldest retained base backup expires; bad input is refused by name.
    #[pg_test]
    fn retention_previews_applies_and_respects_safety_rules() {
        let dflt = Spi::get_one::<i32>(
            "SELECT keep_daily FROM backup_management.retention_policies WHERE policy_name = 'default'",
        )
        .unwrap();
        assert_eq!(dflt, Some(30));
        Spi::run(
            "INSERT INTO backup_management.retention_policies \
                 (policy_name, keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly) \
             VALUES ('last-1', 1, 0, 0, 0, 0), ('nothing', NULL, 0, 0, 0, 0)",
        )
        .unwrap();
        // Four script-recorded backups (no job): ids a < b < c < d.
        let mut ids = Vec::new();
        for _ in 0..4 {
            let id = start();
            Spi::run_with_args(
                "SELECT backup_mgmt.record_backup_complete($1, 1, repeat('b', 64))",
                &[id.into()],
            )
            .unwrap();
            ids.push(id);
        }
        Spi::run_with_args(
            "SELECT backup_mgmt.pin_backup($1, 'legal hold #7')",
            &[ids[0].into()],
        )
        .unwrap();
        Spi::run_with_args(
            "INSERT INTO backup_management.backup_verifications (backup_id, verification_type, verification_status) \
             VALUES ($1, 'checksum', 'passed')",
            &[ids[1].into()],
        )
        .unwrap();
        let verdict = |policy: &str, id: i64| {
            Spi::get_two_with_args::<String, Vec<String>>(
                "SELECT action, reasons FROM backup_mgmt.retention_preview(NULL, $1) WHERE backup_id = $2",
                &[policy.into(), id.into()],
            )
            .unwrap()
        };
        let (a, why) = verdict("nothing", ids[0]);
        assert_eq!(a.as_deref(), Some("keep"));
        assert_eq!(why.unwrap(), vec!["pinned: legal hold #7"]);
        let (a, why) = verdict("nothing", ids[1]);
        assert_eq!(a.as_deref(), Some("keep"));
        assert_eq!(
            why.unwrap(),
            vec!["safety: newest verified backup of its database"]
        );
        assert_eq!(verdict("nothing", ids[2]).0.as_deref(), Some("expire"));
        let (a, why) = verdict("last-1", ids[3]);
        assert_eq!(a.as_deref(), Some("keep"));
        assert_eq!(why.unwrap(), vec!["last 1 (#1)"]);
        // Applying 'last-1': c expires (kept for audit, with the reasons), the others stay.
        let expired = Spi::get_one::<i64>(
            "SELECT count(*) FROM backup_mgmt.apply_retention(NULL, 'last-1') WHERE action = 'expire'",
        )
        .unwrap();
        assert_eq!(expired, Some(1));
        let (status, policy) = Spi::get_two_with_args::<String, String>(
            "SELECT status, annotations->>'expired_by_policy' FROM backup_management.backup_records WHERE backup_id = $1",
            &[ids[2].into()],
        )
        .unwrap();
        assert_eq!(
            (status.as_deref(), policy.as_deref()),
            (Some("expired"), Some("last-1"))
        );
        let kept = Spi::get_one_with_args::<i64>(
            "SELECT count(*) FROM backup_management.backup_records WHERE backup_id = ANY($1) AND status = 'completed'",
            &[vec![ids[0], ids[1], ids[3]].into()],
        )
        .unwrap();
        assert_eq!(kept, Some(3));
        // An expired backup cannot be pinned; unknown names are refused.
        assert_fails(
            &format!("SELECT backup_mgmt.pin_backup({}, 'late')", ids[2]),
            "55000",
            "expired",
        );
        assert_fails(
            &format!("SELECT backup_mgmt.pin_backup({}, NULL)", ids[3]),
            "22004",
            "reason",
        );
        assert_fails(
            "SELECT * FROM backup_mgmt.retention_preview('no-such-job')",
            "42704",
            "no-such-job",
        );
        assert_fails(
            "SELECT * FROM backup_mgmt.retention_preview(NULL, 'no-such-policy')",
            "42704",
            "no-such-policy",
        );
        Spi::run("INSERT INTO backup_management.retention_policies (policy_name, time_zone) VALUES ('mars', 'Mars/Olympus')").unwrap();
        assert_fails(
            "SELECT * FROM backup_mgmt.retention_preview(NULL, 'mars')",
            "22023",
            "Mars/Olympus",
        );
        // Unpinned, the pin no longer protects a.
        Spi::run_with_args("SELECT backup_mgmt.unpin_backup($1)", &[ids[0].into()]).unwrap();
        assert_eq!(verdict("nothing", ids[0]).0.as_deref(), Some("expire"));
    }

    /// WAL segments older than the start of the oldest retained base backup expire; newer ones,
    /// and everything when there is no base backup, stay.
    #[pg_test]
    fn wal_before_the_oldest_base_backup_expires() {
        Spi::run(
            "INSERT INTO backup_management.wal_archive \
                 (system_identifier, file_name, timeline_id, segment_number, file_path, file_size, checksum, archived_at) \
             SELECT (SELECT system_identifier FROM pg_control_system()), \
                    '0000000100000000000000' || lpad(to_hex(g), 2, '0'), 1, g, \
                    '/tmp/backup_mgmt_pgtest_root/no-such-wal-' || g, 16777216, repeat('c', 64), now() \
               FROM generate_series(1, 9) g",
        )
        .unwrap();
        let expired = || {
            Spi::get_one::<i64>(
                "SELECT count(*) FROM backup_management.wal_archive WHERE expired_at IS NOT NULL",
            )
            .unwrap()
            .unwrap()
        };
        Spi::run("SELECT * FROM backup_mgmt.apply_retention(NULL, 'default')").unwrap();
        assert_eq!(expired(), 0, "no base backup: nothing expires");
        let id = Spi::get_one::<i64>(
            "SELECT backup_mgmt.record_backup_start('postgres', 'full', 'pg_basebackup', '/tmp/backup_mgmt_pgtest_root/b.tar')",
        )
        .unwrap()
        .unwrap();
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_complete($1, 10, repeat('a', 64))",
            &[id.into()],
        )
        .unwrap();
        Spi::run_with_args(
            "UPDATE backup_management.backup_records \
                SET start_lsn = '0/5000028', stop_lsn = '0/5000100', timeline_id = 1, \
                    system_identifier = (SELECT system_identifier FROM pg_control_system()) \
              WHERE backup_id = $1",
            &[id.into()],
        )
        .unwrap();
        Spi::run("SELECT * FROM backup_mgmt.apply_retention(NULL, 'default')").unwrap();
        // Segments 1-4 go; 5 (where the backup starts) and later stay, and no gap is reported.
        assert_eq!(expired(), 4);
        let gaps = Spi::get_one::<i64>("SELECT count(*) FROM backup_mgmt.wal_gaps").unwrap();
        assert_eq!(gaps, Some(0));
    }

    /// The native page checksum agrees with PostgreSQL's own (pageinspect's page_checksum) on
    /// real heap pages, at their own and at other block numbers.
    #[pg_test]
    fn page_checksums_agree_with_postgres() {
        Spi::run("CREATE EXTENSION IF NOT EXISTS pageinspect").unwrap();
        Spi::run("CREATE TABLE pc AS SELECT g, md5(g::text) AS m FROM generate_series(1, 3000) g")
            .unwrap();
        for block in 0..4i64 {
            let raw = Spi::get_one_with_args::<Vec<u8>>(
                "SELECT get_raw_page('pc', $1::int8)",
                &[block.into()],
            )
            .unwrap()
            .unwrap();
            let page: [u8; crate::pagecheck::BLCKSZ] = raw.try_into().unwrap();
            for at in [
                block,
                7,
                i64::from(crate::pagecheck::BLOCKS_PER_SEGMENT) + block,
            ] {
                let theirs = Spi::get_one_with_args::<i16>(
                    "SELECT page_checksum(get_raw_page('pc', $1::int8), $2::int4)",
                    &[block.into(), (at as i32).into()],
                )
                .unwrap()
                .unwrap();
                assert_eq!(
                    crate::pagecheck::page_checksum(&page, at as u32) as i16,
                    theirs
                );
            }
        }
    }
}

/// The backup root of the pg_test cluster (see `pg_test::postgresql_conf_options`).
pub const TEST_ROOT: &str = "/tmp/backup_mgmt_pgtest_root";
