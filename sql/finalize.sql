-- backup_mgmt: privileges, the backup_admin role and function comments (loaded last).

-- No writer, superuser included, can store a backup record that breaks its rules: known type,
-- method (and a method that can take that type), status and compression; absolute path; size 0
-- or more; lower-case sha256; finished records with an end time, failed ones with an error, only
-- incremental/differential backups with a parent.  See src/catalog/guard.rs for why this is a
-- trigger.
CREATE TRIGGER backup_records_check
    BEFORE INSERT OR UPDATE ON backup_management.backup_records
    FOR EACH ROW EXECUTE FUNCTION backup_mgmt.backup_records_guard();
COMMENT ON TRIGGER backup_records_check ON backup_management.backup_records IS
    'Refuses backup records that break the catalog''s rules (vocabulary, formats, finished/failed/parent row rule)';

-- A chain is a unit: an incremental or differential backup is useless without the backups it
-- refers to, so a parent cannot be deleted or expired while a child of it is running or
-- completed.  Expiry is checked AFTER ROW, so that one statement expiring a whole chain sees
-- every row it changed; deletion BEFORE ROW, so that the refusal (and not the foreign key's
-- generic error, whose trigger would fire first) is what the operator reads.
CREATE FUNCTION backup_mgmt.backup_records_protect_chain() RETURNS trigger
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $bm$
DECLARE
    child bigint;
BEGIN
    IF TG_OP = 'UPDATE' AND NOT (NEW.status = 'expired' AND OLD.status IS DISTINCT FROM 'expired') THEN
        RETURN NULL;
    END IF;
    SELECT r.backup_id INTO child
      FROM backup_management.backup_records r
     WHERE r.parent_backup_id = OLD.backup_id AND r.status IN ('running', 'completed')
     ORDER BY r.backup_id LIMIT 1;
    IF child IS NOT NULL THEN
        RAISE EXCEPTION 'backup % is the parent of backup %, which is still retained', OLD.backup_id, child
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = 'A chain is removed as a unit: expire or delete its incremental and differential backups first.';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD END;
END
$bm$;
COMMENT ON FUNCTION backup_mgmt.backup_records_protect_chain() IS
    'Trigger function: refuses to delete or expire a backup that a running or completed incremental/differential backup builds on';
CREATE TRIGGER backup_records_chain_delete
    BEFORE DELETE ON backup_management.backup_records
    FOR EACH ROW EXECUTE FUNCTION backup_mgmt.backup_records_protect_chain();
COMMENT ON TRIGGER backup_records_chain_delete ON backup_management.backup_records IS
    'Refuses to delete the parent of a retained incremental or differential backup';
CREATE TRIGGER backup_records_chain_expire
    AFTER UPDATE OF status ON backup_management.backup_records
    FOR EACH ROW EXECUTE FUNCTION backup_mgmt.backup_records_protect_chain();
COMMENT ON TRIGGER backup_records_chain_expire ON backup_management.backup_records IS
    'Refuses to expire the parent of a retained incremental or differential backup';

-- Off-site targets: who configured them, and for roles that are not superusers, only what the
-- limits a superuser set allow (src/offsite/limits.rs).  Fires on the columns that say where
-- copies go and with what credentials, and on the provenance columns themselves, so that nobody
-- can mark a target as a superuser's by writing them.
CREATE TRIGGER remote_backup_configs_check
    BEFORE INSERT OR UPDATE OF remote_type, remote_endpoint, remote_path, credentials_ref, encryption_key_ref,
                               options, configured_by, configured_by_superuser
    ON backup_management.remote_backup_configs
    FOR EACH ROW EXECUTE FUNCTION backup_mgmt.remote_backup_configs_guard();
COMMENT ON TRIGGER remote_backup_configs_check ON backup_management.remote_backup_configs IS
    'Records who configured a target; refuses, for roles that are not superusers, what the off-site limits do not allow';

-- The operator role.  Roles are cluster-wide, so it may already exist (another database, an
-- earlier install); it is deliberately not dropped by DROP EXTENSION.
DO $bm$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'backup_admin') THEN
        CREATE ROLE backup_admin NOLOGIN;
        COMMENT ON ROLE backup_admin IS 'backup_mgmt operators: may record, verify and schedule backups and read the catalog';
    END IF;
END
$bm$;

-- Nothing is executable or readable by PUBLIC: functions are created executable by PUBLIC unless
-- revoked, and the catalog reveals where backups live.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA backup_mgmt FROM PUBLIC;
REVOKE ALL ON SCHEMA backup_mgmt, backup_management, disaster_recovery, enterprise_backup FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA backup_management, disaster_recovery, enterprise_backup FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA backup_management, disaster_recovery, enterprise_backup FROM PUBLIC;

GRANT USAGE ON SCHEMA backup_mgmt, backup_management, disaster_recovery, enterprise_backup TO backup_admin;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA backup_mgmt TO backup_admin;
-- The off-site WAL queue's upkeep is the triggers' alone: its SECURITY DEFINER trigger function
-- must not be attachable to an operator's own table (schema.sql, remote_wal_queue_track).
REVOKE EXECUTE ON FUNCTION backup_mgmt.remote_wal_queue_track(), backup_mgmt.remote_wal_queue_refresh(integer[], bigint[], text[]),
    backup_mgmt.remote_wal_queue_refresh_targets(integer[]), backup_mgmt.remote_wal_queue_repair() FROM backup_admin;
GRANT SELECT ON ALL TABLES IN SCHEMA backup_management, disaster_recovery, enterprise_backup TO backup_admin;
REVOKE ALL ON backup_mgmt.backup_progress, backup_mgmt.recovery_status, backup_mgmt.wal_gaps,
    backup_mgmt.wal_gap_ranges, backup_mgmt.backup_copies, backup_mgmt.upkeep_queue, backup_mgmt.offsite_wal_status FROM PUBLIC;
GRANT SELECT ON backup_mgmt.backup_progress, backup_mgmt.recovery_status, backup_mgmt.wal_gaps,
    backup_mgmt.wal_gap_ranges, backup_mgmt.backup_copies, backup_mgmt.upkeep_queue, backup_mgmt.offsite_wal_status TO backup_admin;
-- Backup records, verifications, jobs and executions are written only through the SECURITY
-- DEFINER functions, which keep their invariants.  Plans and off-site targets are plain
-- configuration that operators edit directly.
GRANT INSERT, UPDATE, DELETE ON disaster_recovery.recovery_plans, backup_management.remote_backup_configs,
    backup_management.retention_policies TO backup_admin;
GRANT USAGE ON SEQUENCE disaster_recovery.recovery_plans_plan_id_seq,
                        backup_management.remote_backup_configs_config_id_seq TO backup_admin;

COMMENT ON FUNCTION backup_mgmt.record_backup_start(text, text, text, text) IS
    'Records that a backup has started; returns its backup_id (status running)';
COMMENT ON FUNCTION backup_mgmt.record_backup_complete(bigint, bigint, text) IS
    'Marks a running backup completed with its size in bytes and optional sha256 checksum';
COMMENT ON FUNCTION backup_mgmt.record_backup_failure(bigint, text) IS
    'Marks a running backup failed with its error message (logged; NOTIFY backup_mgmt tells listeners the backup id)';

COMMENT ON FUNCTION backup_mgmt.remote_backup_configs_guard() IS
    'Trigger function of remote_backup_configs_check: records who configured a target and holds targets configured by roles that are not superusers to the off-site limits';
COMMENT ON FUNCTION backup_mgmt.backup_records_guard() IS
    'Trigger function of backup_records_check: the rules every backup_records row satisfies';
COMMENT ON FUNCTION backup_mgmt.schedule_preview(text, text, integer) IS
    'The next fire times of a cron schedule (pg_cron syntax, optional seconds field, @daily…) in a time zone (default: the session''s)';
COMMENT ON FUNCTION backup_mgmt.schedule_backup(text, text, text, text, text, jsonb, text) IS
    'Creates a cron-scheduled backup job (job name, schedule, database, type, method, options, time zone); returns its job_id';
COMMENT ON FUNCTION backup_mgmt.alter_job(text, text, text, text, text, jsonb, text, boolean) IS
    'Changes a backup job (NULL arguments leave that part unchanged) and recomputes its next run';
COMMENT ON FUNCTION backup_mgmt.unschedule(text) IS
    'Deletes a backup job and its execution history; the backups it took stay in the catalog';
COMMENT ON FUNCTION backup_mgmt.run_job_now(text) IS
    'Asks the background worker to run a backup job once, as soon as it can; returns the job id';
COMMENT ON FUNCTION backup_mgmt.next_runs(text, integer) IS
    'The next n times a backup job fires, from now, in the job''s time zone';
COMMENT ON FUNCTION backup_mgmt.schedule_backup_jobs() IS
    'Recomputes next_run_at of every active backup job from now (e.g. after changing the server''s TimeZone)';
COMMENT ON FUNCTION backup_mgmt.verify_backup_integrity(bigint) IS
    'Streams a completed backup through sha256, compares with the catalog, records a backup_verifications row (passed or failed, with the reason) and returns whether it passed';
COMMENT ON FUNCTION backup_mgmt.test_backup_restore(bigint, text, boolean) IS
    'Restores a backup for real (pg_dump or pg_dump_directory: into a new scratch database, row counts compared with those captured when the backup was written; pg_basebackup: as a temporary cluster, after pg_verifybackup), records a restore_test verification, and cleans up unless kept';
COMMENT ON FUNCTION backup_mgmt.run_recovery_drill(text, text) IS
    'Runs a disaster-recovery drill for an active plan (full: restore-tests the newest pg_dump backup of its database; host_loss: restores the cluster from an off-site target alone, reading the target''s own catalog mirror, and starts it) and records the measured recovery time and data-loss window against the plan''s RTO and RPO in recovery_drills';
COMMENT ON FUNCTION backup_mgmt.metrics() IS
    'Backup, verification, RPO and drill metrics in Prometheus text exposition format';
COMMENT ON FUNCTION backup_mgmt.schedule_drill(text, text, text, text, text) IS
    'Schedules a disaster-recovery drill of an active recovery plan as a job (cron schedule, optional time zone, drill type: full or host_loss); returns the job id';
COMMENT ON FUNCTION backup_mgmt.check_backup_path(text) IS
    'Returns the canonical path if it lies inside backup_mgmt.backup_roots (symlinks followed); raises an error otherwise';

-- The background worker reads jobs from backup_mgmt.database_name only (like pg_cron's
-- cron.database_name).  Installing elsewhere is allowed (a restored copy of a database must be
-- able to CREATE EXTENSION), but the operator is told that jobs scheduled here will not run.
DO $bm$
DECLARE
    catalog_db text := pg_catalog.current_setting('backup_mgmt.database_name', true);
BEGIN
    IF catalog_db IS NOT NULL AND catalog_db <> pg_catalog.current_database() THEN
        RAISE WARNING 'backup_mgmt is installed in database "%", but its background worker uses database "%"',
            pg_catalog.current_database(), catalog_db
            USING HINT = pg_catalog.format('Set backup_mgmt.database_name = %L in postgresql.conf and restart, or install the extension in database %I.',
                                           pg_catalog.current_database(), catalog_db);
    END IF;
    IF pg_catalog.strpos(pg_catalog.current_setting('shared_preload_libraries'), 'backup_mgmt') = 0 THEN
        RAISE NOTICE 'backup_mgmt is not in shared_preload_libraries: the catalog and record functions work, the background worker does not run'
            USING HINT = 'Add backup_mgmt to shared_preload_libraries in postgresql.conf and restart the server.';
    END IF;
END
$bm$;
COMMENT ON FUNCTION backup_mgmt.plan_recovery(timestamptz) IS
    'Plans a point-in-time recovery of this cluster to a time: the base backup to start from, the archived WAL needed and any missing, whether the target is reachable, and a bash restore recipe that needs only PostgreSQL, coreutils, tar and zstd';
COMMENT ON FUNCTION backup_mgmt.plan_recovery_lsn(pg_lsn) IS
    'Like plan_recovery, to a WAL location (recovery_target_lsn) instead of a time';
COMMENT ON FUNCTION backup_mgmt.restore_recipe(bigint) IS
    'A bash recipe that restores a native physical backup (full, incremental or differential) to its end: materialises the data directory from the chain with standard tools, checking every file''s sha256, and recovers from the WAL inside the backup';
COMMENT ON FUNCTION backup_mgmt.retention_preview(text, text) IS
    'Dry run of retention for a job''s backups (NULL: backups recorded by no job) under its policy or the one named: keep or expire, with every rule that keeps a backup (calendar, count, recovery window, pins, safety rules) or why it expires';
COMMENT ON FUNCTION backup_mgmt.apply_retention(text, text) IS
    'Applies retention: marks expired records expired (kept for audit) and removes their files inside the backup roots after commit; expires archived WAL older than the oldest retained base backup';
COMMENT ON FUNCTION backup_mgmt.pin_backup(bigint, text, timestamptz) IS
    'Pins a completed backup (a legal hold): no retention policy removes it, until keep_until when given; the reason is required and shown in previews';
COMMENT ON FUNCTION backup_mgmt.unpin_backup(bigint) IS
    'Removes a backup''s pin and keep_until; retention decides about it again';
COMMENT ON FUNCTION backup_mgmt.set_retention_policy(text, text) IS
    'Sets the retention policy of a backup job (NULL: the default policy); the worker applies it after each successful backup of the job';
COMMENT ON FUNCTION backup_mgmt.sync_remote_now(text) IS
    'Asks the worker to copy to an off-site target now, whatever its sync_schedule: new completed backups are copied, verified after landing, and every attempt recorded';
