-- backup_mgmt 0.9.0 -> 0.10.0.  Hand-written; never DROP TABLE here.
--
-- A backup's verdict is no longer its newest verification of any kind.  Until 0.9.0 the worker's
-- routine checksum pass (the bytes are the ones recorded) turned a backup that pg_verifybackup
-- or a restore test had found bad back into "passed": retention then kept it as the verified
-- backup, plan_recovery and the restore program preferred it, and a new incremental built on it.
-- Now a failed verification stands until a later one at least as thorough passes
-- (verification_depth, verification_verdict), and verification_state.last_status, which all of
-- those read, is that verdict, as recovery_status's newest verified backups now are.  No table
-- changes: the state of every backup is recomputed.

CREATE FUNCTION backup_mgmt.verification_depth(kind text, result jsonb)
    RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $bm$
    SELECT CASE WHEN kind = 'restore_test'
                 AND result OPERATOR(pg_catalog.->>) 'stage' = 'data_verification'
                 AND result OPERATOR(pg_catalog.->) 'facts_captured' = 'false'::jsonb
                 AND coalesce(result OPERATOR(pg_catalog.->>) 'error', '') = '' THEN 0
                WHEN kind = 'checksum'
                  OR (kind = 'restore_test' AND result OPERATOR(pg_catalog.->>) 'stage' = 'integrity') THEN 1
                WHEN kind = 'restore_test' THEN 3
                ELSE 2 END
$bm$;
COMMENT ON FUNCTION backup_mgmt.verification_depth(text, jsonb) IS
    'How thorough a verification of this type and result is: 1 a file''s bytes against their sha256, 2 pg_verifybackup against the manifest, 3 a restore test past the sha256 check (0: a restore test that restored but had no row counts to check the data with); a failure stands until a later verification at least as thorough passes';

-- A backup's standing verdict: 'failed' while one of its failed verifications stands (no later
-- verification at least as thorough passed, nor a restore test that restored cleanly with no row
-- counts to compare), else 'passed', NULL when it was never verified;
-- and whether every failure that stands only says that this host's copy is not there (its file
-- missing, or outside the backup roots), which says nothing of the backup's bytes (NULL when
-- none stands); and when its newest verification finished.  The newest verification alone is not the verdict: the worker re-reads every
-- backup against its sha256 each verify_interval, and that pass says the bytes are the ones
-- recorded, not that pg_verifybackup or a restore test that failed on those very bytes was
-- wrong.  No SET clause, so that it is inlined (see verification_state_of).
CREATE FUNCTION backup_mgmt.verification_verdict(backup bigint)
    RETURNS TABLE (status text, only_local boolean, verified_at timestamptz)
    LANGUAGE sql STABLE
AS $bm$
    SELECT CASE WHEN pg_catalog.count(*) = 0 THEN NULL
                WHEN pg_catalog.bool_or(s.stands) THEN 'failed'
                ELSE 'passed' END,
           pg_catalog.bool_and(s.local) FILTER (WHERE s.stands),
           pg_catalog.max(s.verified_at)
      FROM (SELECT f.verified_at,
                   f.verification_status = 'failed'
                   AND NOT EXISTS (
                       SELECT FROM backup_management.backup_verifications p
                        WHERE p.backup_id = f.backup_id
                          AND (p.verified_at, p.verification_id) > (f.verified_at, f.verification_id)
                          AND CASE WHEN p.verification_status = 'passed'
                                   THEN backup_mgmt.verification_depth(p.verification_type, p.verification_result)
                                        >= backup_mgmt.verification_depth(f.verification_type, f.verification_result)
                                   -- A restore test that restored cleanly with no row counts to
                                   -- compare shows that the backup restores: all a dump recorded
                                   -- by a script can show, whose restore tests never pass.
                                   ELSE backup_mgmt.verification_depth(p.verification_type, p.verification_result) = 0
                              END) AS stands,
                   backup_mgmt.verification_depth(f.verification_type, f.verification_result) = 1
                   AND coalesce(f.verification_result OPERATOR(pg_catalog.->>) 'reason' IN ('missing', 'refused_path'), false) AS local
              FROM backup_management.backup_verifications f
             WHERE f.backup_id = backup) s
$bm$;
COMMENT ON FUNCTION backup_mgmt.verification_verdict(bigint) IS
    'A backup''s standing verdict: failed while a failed verification of it stands (none at least as thorough passed later), else passed, NULL when never verified; whether the failures that stand only say this host''s copy is not there; and when its newest verification finished';

CREATE OR REPLACE FUNCTION backup_mgmt.verification_state_of(ids bigint[])
    RETURNS SETOF backup_management.verification_state
    LANGUAGE sql STABLE
AS $bm$
    SELECT r.backup_id, r.database_name,
           CASE WHEN r.checksum IS NOT NULL THEN 'reverify'
                WHEN r.backup_method NOT IN ('pg_dump_directory', 'continuous_archiving', 'native_physical') THEN 'checksum'
           END,
           coalesce(c.last_passed, r.end_time, r.start_time),
           d.verified_at, d.status, c.last_at,
           coalesce(f.failures, 0)::integer,
           CASE WHEN c.last_status = 'failed' THEN c.last_error END
      FROM backup_management.backup_records r
      LEFT JOIN LATERAL backup_mgmt.verification_verdict(r.backup_id) d ON true
      LEFT JOIN LATERAL (
          SELECT pg_catalog.max(v.verified_at) FILTER (WHERE v.verification_status = 'passed') AS last_passed,
                 pg_catalog.max(v.verified_at) AS last_at,
                 (pg_catalog.array_agg(v.verification_status ORDER BY v.verified_at DESC, v.verification_id DESC))[1] AS last_status,
                 (pg_catalog.array_agg(coalesce(v.verification_result OPERATOR(pg_catalog.->>) 'detail',
                                                v.verification_result OPERATOR(pg_catalog.->>) 'reason', 'failed')
                                       ORDER BY v.verified_at DESC, v.verification_id DESC))[1] AS last_error
            FROM backup_management.backup_verifications v
           WHERE v.backup_id = r.backup_id AND v.verification_type = 'checksum') c ON true
      LEFT JOIN LATERAL (
          SELECT pg_catalog.count(*) AS failures FROM backup_management.backup_verifications v
           WHERE v.backup_id = r.backup_id AND v.verification_type = 'checksum'
             AND v.verification_status = 'failed'
             AND (c.last_passed IS NULL OR v.verified_at > c.last_passed)) f ON true
     WHERE r.backup_id = ANY (ids)
       AND r.status = 'completed' AND r.expired_at IS NULL AND r.backup_type <> 'wal'
$bm$;

COMMENT ON TABLE backup_management.verification_state IS 'Per live completed backup: its newest verification, its verdict (verification_verdict) and its place in the worker''s integrity upkeep, maintained by triggers on backup_records and backup_verifications (what upkeep_queue, retention, plans and metrics() read)';
COMMENT ON COLUMN backup_management.verification_state.last_status IS 'Its standing verdict (verification_verdict): failed while a failed verification stands (no later one at least as thorough passed), else passed; NULL when never verified';

-- recovery_status: a backup counts as verified by its verdict, not by any pass it ever had.
CREATE OR REPLACE VIEW backup_mgmt.recovery_status AS
WITH verified AS (
    -- The newest verified live backup of each plan's database (its verdict passed:
    -- verification_verdict), read newest first from the index of live records (the newest few,
    -- for backups that ran side by side).
    SELECT d.database_name,
           (SELECT max(x.end_time)
              FROM (SELECT r.end_time FROM backup_management.backup_records r
                     WHERE r.database_name = d.database_name AND r.expired_at IS NULL
                       AND r.status = 'completed' AND r.backup_type <> 'wal'
                       AND EXISTS (SELECT FROM backup_management.verification_state s
                                    WHERE s.backup_id = r.backup_id AND s.last_status = 'passed')
                     ORDER BY r.start_time DESC LIMIT 8) x) AS last_verified_backup_at
      FROM (SELECT DISTINCT database_name FROM disaster_recovery.recovery_plans WHERE is_active) d
), archiver AS (
    SELECT last_archived_wal, last_archived_time, last_failed_wal, last_failed_time, failed_count
      FROM pg_catalog.pg_stat_archiver
     WHERE current_setting('archive_mode') <> 'off'
), gaps AS (
    SELECT coalesce(sum(missing_segments), 0)::bigint AS missing_wal_files
      FROM backup_mgmt.wal_gap_ranges
     WHERE system_identifier = (SELECT system_identifier FROM pg_catalog.pg_control_system())
), offsite AS (
    -- What would be left if the host were lost now, per plan: the best active target, taking
    -- only what is on that one target: its newest verified backup of the database with a
    -- verified copy there, and how far its WAL reaches without a hole (up to the oldest file
    -- still waiting when one is, else its newest copy).
    SELECT d.database_name, best.offsite_verified_backup_at, best.offsite_last_wal_at
      FROM (SELECT DISTINCT database_name FROM disaster_recovery.recovery_plans WHERE is_active) d
      LEFT JOIN LATERAL (
          SELECT b.backup_at AS offsite_verified_backup_at, w.wal_at AS offsite_last_wal_at
            FROM backup_management.remote_backup_configs c
           CROSS JOIN LATERAL (
                 SELECT max(r.end_time) AS backup_at
                   FROM backup_management.backup_records r
                  WHERE r.database_name = d.database_name AND r.expired_at IS NULL
                    AND r.status = 'completed' AND r.backup_type <> 'wal'
                    AND EXISTS (SELECT FROM backup_management.verification_state s
                                 WHERE s.backup_id = r.backup_id AND s.last_status = 'passed')
                    AND EXISTS (SELECT FROM backup_management.remote_backup_records x
                                 WHERE x.backup_id = r.backup_id AND x.config_id = c.config_id
                                   AND x.sync_status = 'completed')) b
           CROSS JOIN LATERAL (
                 SELECT coalesce(s.oldest_pending_archived_at,
                                 (SELECT w.archived_at FROM backup_management.remote_wal_records w
                                   WHERE w.config_id = c.config_id
                                     AND w.system_identifier = (SELECT system_identifier FROM pg_catalog.pg_control_system())
                                   ORDER BY w.archived_at DESC LIMIT 1)) AS wal_at
                   FROM backup_mgmt.offsite_wal_status s WHERE s.config_id = c.config_id) w
           WHERE c.is_active AND b.backup_at IS NOT NULL
           ORDER BY greatest(b.backup_at, w.wal_at) DESC
           LIMIT 1) best ON true
), last_drill AS (
    SELECT DISTINCT ON (plan_id) plan_id, drill_date, recovery_time, status
      FROM disaster_recovery.recovery_drills
     ORDER BY plan_id, drill_date DESC, drill_id DESC
), exposure AS (
    SELECT p.*, v.last_verified_backup_at, a.last_archived_time, a.last_archived_wal,
           a.last_failed_wal, a.last_failed_time, a.failed_count, g.missing_wal_files,
           -- Archived WAL only extends a verified backup; alone it restores nothing.
           CASE WHEN v.last_verified_backup_at IS NOT NULL
                THEN now() - greatest(v.last_verified_backup_at, a.last_archived_time) END AS rpo_exposure,
           d.recovery_time AS last_measured_rto, d.drill_date AS last_drill_at, d.status AS last_drill_status,
           o.offsite_verified_backup_at, o.offsite_last_wal_at,
           CASE WHEN o.offsite_verified_backup_at IS NOT NULL
                THEN now() - greatest(o.offsite_verified_backup_at, o.offsite_last_wal_at) END AS offsite_rpo_exposure
      FROM disaster_recovery.recovery_plans p
      LEFT JOIN verified v USING (database_name)
      LEFT JOIN offsite o USING (database_name)
      LEFT JOIN archiver a ON true
      LEFT JOIN gaps g ON true
      LEFT JOIN last_drill d ON d.plan_id = p.plan_id
     WHERE p.is_active
)
SELECT plan_id, plan_name, database_name, rpo_minutes, rto_minutes,
       last_verified_backup_at,
       now() - last_verified_backup_at AS backup_age,
       last_archived_time AS last_archived_wal_at,
       rpo_exposure,
       CASE WHEN rpo_exposure IS NOT NULL AND rpo_exposure <= make_interval(mins => rpo_minutes)
            THEN 'ok' ELSE 'breached' END AS rpo_status,
       last_measured_rto,
       last_drill_at,
       last_drill_status,
       CASE WHEN last_measured_rto IS NULL THEN 'unknown'
            WHEN last_measured_rto <= make_interval(mins => rto_minutes) AND last_drill_status <> 'failed' THEN 'ok'
            ELSE 'breached' END AS rto_status,
       last_archived_wal,
       now() - last_archived_time AS archive_age,
       failed_count AS archive_failed_count,
       last_failed_wal AS last_archive_failure_wal,
       last_failed_time AS last_archive_failure_at,
       missing_wal_files,
       CASE WHEN last_archived_time IS NULL AND last_failed_time IS NULL THEN 'not archiving'
            WHEN last_failed_time IS NOT NULL
                 AND (last_archived_time IS NULL OR last_failed_time > last_archived_time) THEN 'failing'
            WHEN missing_wal_files > 0 THEN 'gaps'
            ELSE 'ok' END AS archive_status,
       offsite_verified_backup_at,
       offsite_last_wal_at,
       offsite_rpo_exposure,
       CASE WHEN offsite_rpo_exposure IS NOT NULL AND offsite_rpo_exposure <= make_interval(mins => rpo_minutes)
            THEN 'ok' ELSE 'breached' END AS offsite_rpo_status
  FROM exposure;

REVOKE ALL ON FUNCTION backup_mgmt.verification_depth(text, jsonb), backup_mgmt.verification_verdict(bigint)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION backup_mgmt.verification_depth(text, jsonb), backup_mgmt.verification_verdict(bigint)
    TO backup_admin;

-- Every live backup's state, under the new verdict.
SELECT backup_mgmt.verification_state_refresh(pg_catalog.array_agg(backup_id))
  FROM backup_management.backup_records;
