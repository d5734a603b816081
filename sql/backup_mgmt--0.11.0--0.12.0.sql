-- backup_mgmt 0.11.0 -> 0.12.0.  Hand-written; never DROP TABLE here.
--
-- The off-site RPO in recovery_status (and so metrics()) counted a target's WAL as reaching the
-- archive time of the oldest file still waiting to be copied there, one file too far: that
-- file's own WAL is not on the target yet, and on a quiet cluster (no archive_timeout) one file
-- may span hours, so offsite_rpo_status could read "ok" while the exposure was larger.  It now
-- reaches the newest copy archived before that file.  No table changes.
--
-- The three chain functions are replaced with their definitions as 0.11.0 now installs them
-- (schema-qualified operators, PARALLEL SAFE): a catalog installed by an early 0.11.0 build
-- had them without, and is brought to the same definitions here.

CREATE OR REPLACE FUNCTION backup_mgmt.backup_chain(backup bigint)
    RETURNS TABLE (backup_id bigint, depth integer)
    LANGUAGE sql STABLE PARALLEL SAFE
AS $bm$
    WITH RECURSIVE up(id, depth) AS (
        SELECT backup, 0
        UNION ALL
        SELECT p.parent_backup_id, up.depth OPERATOR(pg_catalog.+) 1
          FROM backup_management.backup_records p JOIN up ON p.backup_id OPERATOR(pg_catalog.=) up.id
         WHERE p.parent_backup_id IS NOT NULL AND up.depth OPERATOR(pg_catalog.<) 10000)
    SELECT up.id, up.depth FROM up
$bm$;

CREATE OR REPLACE FUNCTION backup_mgmt.chain_problem(backup bigint)
    RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
AS $bm$
    SELECT CASE WHEN a.backup_id IS NULL
                THEN pg_catalog.format('its ancestor %s is gone from the catalog', up.backup_id)
                WHEN a.expired_at IS NOT NULL
                THEN pg_catalog.format('its ancestor %s has expired', up.backup_id)
                WHEN a.status OPERATOR(pg_catalog.<>) 'completed'
                THEN pg_catalog.format('its ancestor %s is %s', up.backup_id, a.status)
                ELSE pg_catalog.format('its ancestor %s failed verification', up.backup_id) END
      FROM backup_mgmt.backup_chain(backup) up
      LEFT JOIN backup_management.backup_records a ON a.backup_id OPERATOR(pg_catalog.=) up.backup_id
      LEFT JOIN backup_management.verification_state s ON s.backup_id OPERATOR(pg_catalog.=) up.backup_id
     WHERE up.depth OPERATOR(pg_catalog.>) 0
       AND (a.backup_id IS NULL OR a.status OPERATOR(pg_catalog.<>) 'completed' OR a.expired_at IS NOT NULL
            OR s.last_status OPERATOR(pg_catalog.=) 'failed')
     ORDER BY up.depth LIMIT 1
$bm$;

CREATE OR REPLACE FUNCTION backup_mgmt.chain_unverified(backup bigint)
    RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
AS $bm$
    SELECT pg_catalog.format('backup %s has no passed verification', up.backup_id)
      FROM backup_mgmt.backup_chain(backup) up
      LEFT JOIN backup_management.verification_state s ON s.backup_id OPERATOR(pg_catalog.=) up.backup_id
     WHERE (s.last_status OPERATOR(pg_catalog.=) 'passed') IS NOT TRUE
     ORDER BY up.depth LIMIT 1
$bm$;

CREATE OR REPLACE VIEW backup_mgmt.recovery_status AS
WITH verified AS (
    -- The newest live backup of each plan's database verified as a whole (its verdict and
    -- every ancestor's passed: chain_unverified; an incremental on a failed full restores
    -- nothing), read newest first from the index of live records (the newest few, for backups
    -- that ran side by side).
    SELECT d.database_name,
           (SELECT max(x.end_time)
              FROM (SELECT r.end_time FROM backup_management.backup_records r
                     WHERE r.database_name = d.database_name AND r.expired_at IS NULL
                       AND r.status = 'completed' AND r.backup_type <> 'wal'
                       AND EXISTS (SELECT FROM backup_management.verification_state s
                                    WHERE s.backup_id = r.backup_id AND s.last_status = 'passed')
                       AND backup_mgmt.chain_unverified(r.backup_id) IS NULL
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
    -- only what is on that one target: its newest backup of the database verified as a whole
    -- with a verified copy of every member of its chain there (the newest few, as above), and
    -- how far its WAL reaches without a hole: while files wait, the newest copy archived
    -- before the oldest of them (whose own WAL is not there yet; on a quiet cluster one file
    -- may span hours), else its newest copy.  The EXISTS tests beside chain_unverified and
    -- backup_chain repeat what those cover for the backup itself: cheap probes that leave the
    -- functions only the rows that could pass.
    SELECT d.database_name, best.offsite_verified_backup_at, best.offsite_last_wal_at
      FROM (SELECT DISTINCT database_name FROM disaster_recovery.recovery_plans WHERE is_active) d
      LEFT JOIN LATERAL (
          SELECT b.backup_at AS offsite_verified_backup_at, w.wal_at AS offsite_last_wal_at
            FROM backup_management.remote_backup_configs c
           CROSS JOIN LATERAL (
                 SELECT max(n.end_time) AS backup_at
                   FROM (SELECT r.end_time FROM backup_management.backup_records r
                          WHERE r.database_name = d.database_name AND r.expired_at IS NULL
                            AND r.status = 'completed' AND r.backup_type <> 'wal'
                            AND EXISTS (SELECT FROM backup_management.verification_state s
                                         WHERE s.backup_id = r.backup_id AND s.last_status = 'passed')
                            AND EXISTS (SELECT FROM backup_management.remote_backup_records x
                                         WHERE x.backup_id = r.backup_id AND x.config_id = c.config_id
                                           AND x.sync_status = 'completed')
                            AND backup_mgmt.chain_unverified(r.backup_id) IS NULL
                            AND NOT EXISTS (
                                SELECT FROM backup_mgmt.backup_chain(r.backup_id) m
                                 WHERE NOT EXISTS (
                                       SELECT FROM backup_management.remote_backup_records x
                                        WHERE x.backup_id = m.backup_id AND x.config_id = c.config_id
                                          AND x.sync_status = 'completed'))
                          ORDER BY r.start_time DESC LIMIT 8) n) b
           CROSS JOIN LATERAL (
                 SELECT (SELECT w.archived_at FROM backup_management.remote_wal_records w
                          WHERE w.config_id = c.config_id
                            AND w.system_identifier = (SELECT system_identifier FROM pg_catalog.pg_control_system())
                            AND (s.oldest_pending_archived_at IS NULL
                                 OR w.archived_at < s.oldest_pending_archived_at)
                          ORDER BY w.archived_at DESC LIMIT 1) AS wal_at
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
COMMENT ON VIEW backup_mgmt.recovery_status IS 'Per active recovery plan: RPO exposure (age of the newest backup verified with every backup it builds on, or of the last archived WAL after it) against rpo_minutes, the newest drill''s measured recovery time against rto_minutes (ok, breached, or unknown: never drilled), and WAL archiving: last archived segment and its age, failures (pg_stat_archiver), missing segments, and archive_status ok, failing (the newest attempt failed), gaps or not archiving; and the exposure if the host were lost now: on the best active target alone, its newest such backup with a verified copy of its whole chain there and how far its WAL reaches without a hole, offsite_rpo_exposure and offsite_rpo_status against rpo_minutes';
