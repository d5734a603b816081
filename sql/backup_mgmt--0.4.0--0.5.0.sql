-- backup_mgmt 0.4.0 -> 0.5.0.  Hand-written; never DROP TABLE here.
--
-- Archived WAL leaves the host: every archived file is copied by the worker to every active
-- off-site target and verified there (remote_wal_records), with the per-target state of the
-- copying and of the catalog mirror kept on each target (remote_wal_state) and the lag
-- (offsite_wal_status); a per-target bandwidth limit (options.max_rate_mb, checked); and
-- recovery_status gains the exposure if the host were lost now (columns appended; the existing
-- ones unchanged).  After the upgrade every unexpired archived file is pending on every active
-- target: the worker copies the backlog oldest first.

------------------------------------------------------------------------------------------------
-- Archived WAL on the off-site targets (0.5.0): every archived file goes to every active target,
-- copied by the worker as it is archived (the local archive is the queue), verified on arrival.
------------------------------------------------------------------------------------------------
CREATE TABLE backup_management.remote_wal_records (
    config_id         integer     NOT NULL
        REFERENCES backup_management.remote_backup_configs (config_id) ON DELETE CASCADE,
    system_identifier bigint      NOT NULL,
    file_name         text        NOT NULL,
    remote_key        text        NOT NULL,
    file_size         bigint      NOT NULL
        CONSTRAINT remote_wal_records_file_size_check CHECK (file_size >= 0),
    remote_checksum   backup_management.sha256_hex NOT NULL,
    archived_at       timestamptz NOT NULL,
    copied_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (config_id, system_identifier, file_name)
);
-- The newest file on each target (the off-site RPO in recovery_status) is an index probe.
CREATE INDEX idx_remote_wal_records_archived ON backup_management.remote_wal_records (config_id, archived_at DESC);
COMMENT ON TABLE backup_management.remote_wal_records IS 'Archived WAL files copied to an off-site target and verified there, one row per file and target (removed with the copy when the archived file expires)';
COMMENT ON COLUMN backup_management.remote_wal_records.config_id IS 'Target the file was copied to';
COMMENT ON COLUMN backup_management.remote_wal_records.system_identifier IS 'Cluster the file belongs to (as in wal_archive)';
COMMENT ON COLUMN backup_management.remote_wal_records.file_name IS 'WAL file name (as in wal_archive)';
COMMENT ON COLUMN backup_management.remote_wal_records.remote_key IS 'Object key or path on the target: <system identifier>/.wal/<stored name>';
COMMENT ON COLUMN backup_management.remote_wal_records.file_size IS 'Bytes stored on the target (the archived copy, compressed or not)';
COMMENT ON COLUMN backup_management.remote_wal_records.remote_checksum IS 'sha256 of the copy as verified after it landed (equal to wal_archive.checksum)';
COMMENT ON COLUMN backup_management.remote_wal_records.archived_at IS 'When the archive module archived the file (for the lag)';
COMMENT ON COLUMN backup_management.remote_wal_records.copied_at IS 'When the copy was verified on the target';

CREATE TABLE backup_management.remote_wal_state (
    config_id        integer     PRIMARY KEY
        REFERENCES backup_management.remote_backup_configs (config_id) ON DELETE CASCADE,
    last_copied_file text,
    last_copied_at   timestamptz,
    failures         integer     NOT NULL DEFAULT 0
        CONSTRAINT remote_wal_state_failures_check CHECK (failures >= 0),
    last_error       text,
    last_error_at    timestamptz,
    alarm_since      timestamptz,
    catalog_copied_at timestamptz,
    target_identity  text
);
COMMENT ON TABLE backup_management.remote_wal_state IS 'The worker''s WAL copying per off-site target: the newest copy, failures in a row and the last error, whether the lag alarm is raised, and when the catalog mirror was last copied';
COMMENT ON COLUMN backup_management.remote_wal_state.config_id IS 'Target';
COMMENT ON COLUMN backup_management.remote_wal_state.last_copied_file IS 'The WAL file copied most recently';
COMMENT ON COLUMN backup_management.remote_wal_state.last_copied_at IS 'When it was verified on the target';
COMMENT ON COLUMN backup_management.remote_wal_state.failures IS 'Copy attempts that failed since the last success (the worker retries with backoff, 1 s doubling to 60 s)';
COMMENT ON COLUMN backup_management.remote_wal_state.last_error IS 'Why the last failed attempt failed';
COMMENT ON COLUMN backup_management.remote_wal_state.last_error_at IS 'When it failed';
COMMENT ON COLUMN backup_management.remote_wal_state.alarm_since IS 'Since when the lag has been over backup_mgmt.offsite_wal_lag_alarm (NULL: not over it)';
COMMENT ON COLUMN backup_management.remote_wal_state.target_identity IS 'md5 of the target''s remote_type, remote_endpoint and remote_path when its copies were recorded: when they change, the worker forgets the copies (they are at the old place) and copies everything again';
COMMENT ON COLUMN backup_management.remote_wal_state.catalog_copied_at IS 'When this cluster''s catalog mirror (<system identifier>/.catalog/catalog_mirror.json) was last replaced on the target and verified there';
SELECT pg_catalog.pg_extension_config_dump('backup_management.remote_wal_records', '');
-- remote_wal_state is the worker's running state (failures, the alarm): not dumped, so that a
-- restored catalog starts it afresh (a restored alarm_since would keep the alarm from firing).

-- Per active target: this cluster's archived WAL files not on it yet (lost files excluded: they
-- are gaps, and counted as such), how long the oldest has waited, the newest copy, failures.
CREATE VIEW backup_mgmt.offsite_wal_status AS
SELECT c.config_id, c.config_name, c.remote_type,
       p.pending_segments, p.oldest_pending_archived_at,
       coalesce(extract(epoch FROM pg_catalog.now() - p.oldest_pending_archived_at), 0)::float8 AS lag_seconds,
       s.last_copied_file, s.last_copied_at, coalesce(s.failures, 0) AS failures,
       s.last_error, s.last_error_at, s.alarm_since, s.catalog_copied_at
  FROM backup_management.remote_backup_configs c
  LEFT JOIN backup_management.remote_wal_state s ON s.config_id = c.config_id
 CROSS JOIN LATERAL (
       SELECT count(*)::bigint AS pending_segments, min(a.archived_at) AS oldest_pending_archived_at
         FROM backup_management.wal_archive a
        WHERE a.expired_at IS NULL AND a.lost_at IS NULL
          AND a.system_identifier = (SELECT system_identifier FROM pg_catalog.pg_control_system())
          AND NOT EXISTS (SELECT FROM backup_management.remote_wal_records r
                           WHERE r.config_id = c.config_id AND r.system_identifier = a.system_identifier
                             AND r.file_name = a.file_name)) p
 WHERE c.is_active;
COMMENT ON VIEW backup_mgmt.offsite_wal_status IS 'Per active off-site target: archived WAL files (segments and history files) not copied there yet, the lag in seconds (how long the oldest has waited since it was archived), the newest copy, failed attempts in a row and the last error, since when the lag alarm (backup_mgmt.offsite_wal_lag_alarm) is raised, and when the catalog mirror was last copied there';

-- A per-target bandwidth limit (0.5.0): options.max_rate_mb, in MB/s, shared by every copy to the
-- target (backups, WAL, the catalog mirror).
ALTER TABLE backup_management.remote_backup_configs
    ADD CONSTRAINT remote_backup_configs_max_rate_check
    CHECK (NOT options ? 'max_rate_mb'
           OR (jsonb_typeof(options -> 'max_rate_mb') = 'number' AND (options ->> 'max_rate_mb')::numeric > 0));

REVOKE ALL ON backup_management.remote_wal_records, backup_management.remote_wal_state,
    backup_mgmt.offsite_wal_status FROM PUBLIC;
GRANT SELECT ON backup_management.remote_wal_records, backup_management.remote_wal_state,
    backup_mgmt.offsite_wal_status TO backup_admin;

-- The same columns as 0.4.0's, then the off-site exposure (CREATE OR REPLACE keeps the
-- privileges).
CREATE OR REPLACE VIEW backup_mgmt.recovery_status AS
WITH verified AS (
    -- The newest verified live backup of each plan's database, read newest first from the index
    -- of live records (the newest few, for backups that ran side by side).
    SELECT d.database_name,
           (SELECT max(x.end_time)
              FROM (SELECT r.end_time FROM backup_management.backup_records r
                     WHERE r.database_name = d.database_name AND r.expired_at IS NULL
                       AND r.status = 'completed' AND r.backup_type <> 'wal'
                       AND EXISTS (SELECT FROM backup_management.backup_verifications v
                                    WHERE v.backup_id = r.backup_id AND v.verification_status = 'passed')
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
                    AND EXISTS (SELECT FROM backup_management.backup_verifications v
                                 WHERE v.backup_id = r.backup_id AND v.verification_status = 'passed')
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
COMMENT ON VIEW backup_mgmt.recovery_status IS 'Per active recovery plan: RPO exposure (age of the newest verified backup, or of the last archived WAL after it) against rpo_minutes, the newest drill''s measured recovery time against rto_minutes (ok, breached, or unknown: never drilled), and WAL archiving: last archived segment and its age, failures (pg_stat_archiver), missing segments, and archive_status ok, failing (the newest attempt failed), gaps or not archiving; and the exposure if the host were lost now: on the best active target alone, its newest verified backup with a verified copy there and how far its WAL reaches without a hole, offsite_rpo_exposure and offsite_rpo_status against rpo_minutes';
