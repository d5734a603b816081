-- backup_mgmt 0.1.0 -> 0.2.0.  Written by hand; never edited once released; drops no table.
--
-- 1. A logical backup's globals file becomes part of the backup in the catalog: three columns of
--    backup_records, filled from the annotations 0.1.0 kept them in (the annotations stay).
-- 2. WAL segments are numbered with their cluster's segment size: a column for it, and the
--    segments of this cluster renumbered when it is not 16 MB (0.1.0 assumed 256 per log), and
--    wal_gaps names missing segments with it.
-- 3. Provenance: every backup record says who made it (origin), and registered paths are checked
--    against the other records' files through two new indexes.
-- 4. Off-site targets say who configured them; a trigger holds those written by roles that are
--    not superusers to the limits a superuser sets.
-- 5. The catalog stays fast with years of history: backup records say when they expired (and an
--    index holds the live ones); the archive's unexpired segments are kept as contiguous ranges
--    by triggers, which gap detection and recovery_status read instead of every segment.

\echo Use "ALTER EXTENSION backup_mgmt UPDATE" to load this file. \quit

-- 1. Globals.
ALTER TABLE backup_management.backup_records
    ADD COLUMN globals_file_path text,
    ADD COLUMN globals_size bigint,
    ADD COLUMN globals_checksum text;
COMMENT ON COLUMN backup_management.backup_records.globals_file_path IS 'The globals file (roles and tablespaces, pg_dumpall --globals-only) written beside a logical dump, part of the backup';
COMMENT ON COLUMN backup_management.backup_records.globals_size IS 'Size in bytes of the globals file as written';
COMMENT ON COLUMN backup_management.backup_records.globals_checksum IS 'sha256 of the globals file as written (lower-case hex)';

-- Only values the row rule accepts are moved (the trigger checks every updated row): an
-- absolute path, a size of 0 or more, a lower-case sha256.  Anything else stays in the
-- annotations, where 0.1.0 had it.
UPDATE backup_management.backup_records
   SET globals_file_path = annotations->>'globals_file',
       globals_size = CASE WHEN annotations->>'globals_size' ~ '^[0-9]{1,18}$'
                           THEN (annotations->>'globals_size')::bigint END,
       globals_checksum = CASE WHEN annotations->>'globals_sha256' ~ '^[0-9a-f]{64}$'
                               THEN annotations->>'globals_sha256' END
 WHERE annotations ? 'globals_file'
   AND annotations->>'globals_file' LIKE '/%'
   AND annotations->>'globals_file' NOT LIKE '%/../%'
   AND annotations->>'globals_file' NOT LIKE '%/..';

-- 2. Segment sizes.
ALTER TABLE backup_management.wal_archive ADD COLUMN segment_size bigint;
COMMENT ON COLUMN backup_management.wal_archive.segment_number IS 'Position of a segment on its timeline, counted in segments of segment_size (NULL for other files)';
COMMENT ON COLUMN backup_management.wal_archive.segment_size IS 'WAL segment size in bytes of the cluster that wrote the segment (initdb --wal-segsize); NULL for other files';

-- This cluster's segments: its own segment size, and their numbers recomputed from their names
-- with it.  Other clusters' segments (a shared archive) keep 0.1.0's 16 MB numbering.
UPDATE backup_management.wal_archive
   SET segment_size = pg_catalog.pg_size_bytes(pg_catalog.current_setting('wal_segment_size')),
       segment_number = ('x' || substr(file_name, 9, 8))::bit(32)::bigint
                            * (4294967296 / pg_catalog.pg_size_bytes(pg_catalog.current_setting('wal_segment_size')))
                        + ('x' || substr(file_name, 17, 8))::bit(32)::bigint
 WHERE segment_number IS NOT NULL
   AND system_identifier = (SELECT system_identifier FROM pg_catalog.pg_control_system());
UPDATE backup_management.wal_archive
   SET segment_size = 16777216
 WHERE segment_number IS NOT NULL AND segment_size IS NULL;

CREATE OR REPLACE VIEW backup_mgmt.wal_gaps AS
WITH archived AS (
    SELECT system_identifier, timeline_id, coalesce(max(segment_size), 16777216) AS segment_size,
           min(segment_number) AS first_segment, max(segment_number) AS last_segment
      FROM backup_management.wal_archive
     WHERE segment_number IS NOT NULL AND expired_at IS NULL
     GROUP BY system_identifier, timeline_id
), base AS (
    -- Where the oldest retained base backup's WAL starts: recovery from it needs everything after.
    SELECT system_identifier, timeline_id, min(start_lsn) AS start_lsn
      FROM backup_management.backup_records
     WHERE status = 'completed' AND backup_method IN ('pg_basebackup', 'native_physical') AND start_lsn IS NOT NULL
     GROUP BY system_identifier, timeline_id
), bounds AS (
    SELECT a.system_identifier, a.timeline_id, a.segment_size,
           4294967296 / a.segment_size AS per_log,
           coalesce(floor((b.start_lsn - '0/0'::pg_lsn) / a.segment_size)::bigint, a.first_segment) AS first_segment,
           a.last_segment
      FROM archived a
      LEFT JOIN base b USING (system_identifier, timeline_id)
)
SELECT b.system_identifier, b.timeline_id,
       upper(lpad(to_hex(b.timeline_id), 8, '0') || lpad(to_hex(g / b.per_log), 8, '0') || lpad(to_hex(g % b.per_log), 8, '0')) AS missing_file_name,
       g AS segment_number
  FROM bounds b
  CROSS JOIN LATERAL generate_series(b.first_segment, b.last_segment) g
 WHERE NOT EXISTS (SELECT FROM backup_management.wal_archive w
                    WHERE w.system_identifier = b.system_identifier AND w.timeline_id = b.timeline_id
                      AND w.segment_number = g AND w.expired_at IS NULL);
COMMENT ON VIEW backup_mgmt.wal_gaps IS 'WAL segments missing from the archive, per cluster and timeline, from the start of the oldest completed base backup (or the first archived segment when there is none) to the newest archived segment, named with the cluster''s segment size: a point-in-time recovery cannot cross them';


-- 3. Provenance.  0.1.0's worker annotated every record it made with its execution; everything
--    else was registered through the record functions.
ALTER TABLE backup_management.backup_records
    ADD COLUMN origin text NOT NULL DEFAULT 'registered';
COMMENT ON COLUMN backup_management.backup_records.origin IS 'worker (made by the background worker in its own layout) or registered (recorded with record_backup_start; used only as documented in docs/security.md)';
UPDATE backup_management.backup_records
   SET origin = 'worker'
 WHERE annotations ? 'execution_id';
CREATE INDEX idx_backup_records_path ON backup_management.backup_records (backup_file_path text_pattern_ops);
CREATE INDEX idx_backup_records_globals_path ON backup_management.backup_records (globals_file_path text_pattern_ops)
    WHERE globals_file_path IS NOT NULL;

-- 4. Who configured each off-site target.  Targets from 0.1.0 are not known to come from a
--    superuser: they are held to the limits until a superuser saves them again.
ALTER TABLE backup_management.remote_backup_configs
    ADD COLUMN configured_by text,
    ADD COLUMN configured_by_superuser boolean NOT NULL DEFAULT false;
UPDATE backup_management.remote_backup_configs SET configured_by = '(before 0.2.0)';
ALTER TABLE backup_management.remote_backup_configs
    ALTER COLUMN configured_by SET DEFAULT current_user,
    ALTER COLUMN configured_by SET NOT NULL;
COMMENT ON COLUMN backup_management.remote_backup_configs.configured_by IS 'The role that last set the target''s endpoint, path, credentials or options (set by the trigger)';
COMMENT ON COLUMN backup_management.remote_backup_configs.configured_by_superuser IS 'Whether that role was a superuser; if not, the target is held to backup_mgmt.offsite_endpoints, offsite_allow_http, credentials_env_prefix and credentials_directory';

CREATE FUNCTION backup_mgmt."remote_backup_configs_guard"()
    RETURNS TRIGGER
    LANGUAGE c
    AS 'MODULE_PATHNAME', 'remote_backup_configs_guard_wrapper';
REVOKE ALL ON FUNCTION backup_mgmt.remote_backup_configs_guard() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION backup_mgmt.remote_backup_configs_guard() TO backup_admin;
COMMENT ON FUNCTION backup_mgmt.remote_backup_configs_guard() IS
    'Trigger function of remote_backup_configs_check: records who configured a target and holds targets configured by roles that are not superusers to the off-site limits';
CREATE TRIGGER remote_backup_configs_check
    BEFORE INSERT OR UPDATE OF remote_type, remote_endpoint, remote_path, credentials_ref, encryption_key_ref,
                               options, configured_by, configured_by_superuser
    ON backup_management.remote_backup_configs
    FOR EACH ROW EXECUTE FUNCTION backup_mgmt.remote_backup_configs_guard();
COMMENT ON TRIGGER remote_backup_configs_check ON backup_management.remote_backup_configs IS
    'Records who configured a target; refuses, for roles that are not superusers, what the off-site limits do not allow';

DO $bm$
DECLARE
    n integer := (SELECT count(*) FROM backup_management.remote_backup_configs);
BEGIN
    IF n > 0 THEN
        RAISE NOTICE 'backup_mgmt 0.2.0: % off-site target(s) from 0.1.0 are now held to the off-site limits for targets configured by roles that are not superusers', n
            USING HINT = 'A superuser vouches for a target by saving it again: UPDATE backup_management.remote_backup_configs SET options = options WHERE config_name = ''...''; see docs/security.md.';
    END IF;
END
$bm$;

-- NOTIFY payloads carry event names and ids only (0.2.0).
COMMENT ON FUNCTION backup_mgmt.record_backup_failure(bigint, text) IS
    'Marks a running backup failed with its error message (logged; NOTIFY backup_mgmt tells listeners the backup id)';

-- 5. Live records and WAL ranges.
ALTER TABLE backup_management.backup_records ADD COLUMN expired_at timestamptz;
COMMENT ON COLUMN backup_management.backup_records.expired_at IS 'When retention expired the backup (status expired); NULL otherwise';
-- The time of expiry is in the annotations, where 0.1.0 kept it; the column gets the upgrade's
-- time (the row trigger would set it so anyway).
UPDATE backup_management.backup_records SET expired_at = now() WHERE status = 'expired';
CREATE INDEX idx_backup_records_live ON backup_management.backup_records (database_name, start_time DESC)
    WHERE expired_at IS NULL;

------------------------------------------------------------------------------------------------
-- backup_management.wal_ranges: the archive's unexpired segments as contiguous ranges, per
-- cluster and timeline, kept up to date by triggers on wal_archive as segments are ingested,
-- expired, changed or deleted (whoever writes), so that gap detection, RPO exposure and the
-- metrics read a handful of ranges instead of every segment.  Derived state: not dumped
-- (restoring wal_archive's rows rebuilds it through the same triggers).
------------------------------------------------------------------------------------------------
CREATE TABLE backup_management.wal_ranges (
    system_identifier bigint  NOT NULL,
    timeline_id       integer NOT NULL,
    first_segment     bigint  NOT NULL,
    last_segment      bigint  NOT NULL,
    segment_size      bigint,
    PRIMARY KEY (system_identifier, timeline_id, first_segment),
    CONSTRAINT wal_ranges_order_check CHECK (first_segment <= last_segment)
);
COMMENT ON TABLE backup_management.wal_ranges IS 'Contiguous runs of archived, unexpired WAL segments per cluster and timeline, maintained by triggers on wal_archive (what gap detection reads)';
COMMENT ON COLUMN backup_management.wal_ranges.system_identifier IS 'Cluster of the segments';
COMMENT ON COLUMN backup_management.wal_ranges.timeline_id IS 'Timeline of the segments';
COMMENT ON COLUMN backup_management.wal_ranges.first_segment IS 'First segment number of the run (wal_archive.segment_number)';
COMMENT ON COLUMN backup_management.wal_ranges.last_segment IS 'Last segment number of the run; every number between first and last is archived and unexpired';
COMMENT ON COLUMN backup_management.wal_ranges.segment_size IS 'WAL segment size of the cluster (largest recorded in the run)';

-- Removes segments lo..hi (all of them counted until now) from the ranges of a cluster's
-- timeline: each range overlapping them is cut, leaving what lies outside.
CREATE FUNCTION backup_mgmt.wal_ranges_remove(sysid bigint, tl integer, lo bigint, hi bigint)
    RETURNS void LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $bm$
DECLARE
    r record;
BEGIN
    FOR r IN
        DELETE FROM backup_management.wal_ranges
         WHERE system_identifier = sysid AND timeline_id = tl
           AND first_segment <= hi AND last_segment >= lo
        RETURNING first_segment, last_segment, segment_size
    LOOP
        IF r.first_segment < lo THEN
            INSERT INTO backup_management.wal_ranges VALUES (sysid, tl, r.first_segment, lo - 1, r.segment_size);
        END IF;
        IF r.last_segment > hi THEN
            INSERT INTO backup_management.wal_ranges VALUES (sysid, tl, hi + 1, r.last_segment, r.segment_size);
        END IF;
    END LOOP;
END
$bm$;
COMMENT ON FUNCTION backup_mgmt.wal_ranges_remove(bigint, integer, bigint, bigint) IS
    'Internal (wal_archive''s triggers): takes segments lo..hi of a cluster''s timeline out of backup_management.wal_ranges';

-- Adds segments lo..hi (all of them counted from now on) to the ranges of a cluster's
-- timeline, merged with every range they overlap or touch.
CREATE FUNCTION backup_mgmt.wal_ranges_add(sysid bigint, tl integer, lo bigint, hi bigint, size bigint)
    RETURNS void LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $bm$
DECLARE
    f bigint;
    l bigint;
    z bigint;
BEGIN
    WITH gone AS (
        DELETE FROM backup_management.wal_ranges
         WHERE system_identifier = sysid AND timeline_id = tl
           AND first_segment <= hi + 1 AND last_segment >= lo - 1
        RETURNING first_segment, last_segment, segment_size)
    SELECT min(first_segment), max(last_segment), max(segment_size) INTO f, l, z FROM gone;
    INSERT INTO backup_management.wal_ranges
    VALUES (sysid, tl, least(lo, f), greatest(hi, l),
            CASE WHEN size IS NULL THEN z WHEN z IS NULL THEN size ELSE greatest(size, z) END);
END
$bm$;
COMMENT ON FUNCTION backup_mgmt.wal_ranges_add(bigint, integer, bigint, bigint, bigint) IS
    'Internal (wal_archive''s triggers): puts segments lo..hi of a cluster''s timeline into backup_management.wal_ranges';

-- The statement-level trigger: what stopped counting (a segment expired, deleted, renumbered)
-- and what started counting (ingested, un-expired), each grouped into runs of consecutive
-- numbers, so that a statement touching a million segments makes a handful of range changes.
CREATE FUNCTION backup_mgmt.wal_archive_track_ranges() RETURNS trigger
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $bm$
DECLARE
    r record;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM backup_management.wal_ranges;
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        FOR r IN
            WITH changed AS (
                SELECT system_identifier, timeline_id, segment_number FROM old_rows
                 WHERE segment_number IS NOT NULL AND timeline_id IS NOT NULL AND expired_at IS NULL
                EXCEPT
                SELECT system_identifier, timeline_id, segment_number FROM new_rows
                 WHERE segment_number IS NOT NULL AND timeline_id IS NOT NULL AND expired_at IS NULL),
            runs AS (
                SELECT *, segment_number - dense_rank() OVER (PARTITION BY system_identifier, timeline_id ORDER BY segment_number) AS run
                  FROM changed)
            SELECT system_identifier, timeline_id, min(segment_number) AS lo, max(segment_number) AS hi
              FROM runs GROUP BY system_identifier, timeline_id, run
        LOOP
            PERFORM backup_mgmt.wal_ranges_remove(r.system_identifier, r.timeline_id, r.lo, r.hi);
        END LOOP;
        FOR r IN
            WITH changed AS (
                SELECT system_identifier, timeline_id, segment_number, segment_size FROM new_rows
                 WHERE segment_number IS NOT NULL AND timeline_id IS NOT NULL AND expired_at IS NULL
                   AND NOT EXISTS (SELECT FROM old_rows o
                                    WHERE o.system_identifier = new_rows.system_identifier
                                      AND o.timeline_id = new_rows.timeline_id
                                      AND o.segment_number = new_rows.segment_number
                                      AND o.expired_at IS NULL)),
            runs AS (
                SELECT *, segment_number - dense_rank() OVER (PARTITION BY system_identifier, timeline_id ORDER BY segment_number) AS run
                  FROM changed)
            SELECT system_identifier, timeline_id, min(segment_number) AS lo, max(segment_number) AS hi,
                   max(segment_size) AS size
              FROM runs GROUP BY system_identifier, timeline_id, run
        LOOP
            PERFORM backup_mgmt.wal_ranges_add(r.system_identifier, r.timeline_id, r.lo, r.hi, r.size);
        END LOOP;
    ELSIF TG_OP = 'DELETE' THEN
        FOR r IN
            WITH runs AS (
                SELECT system_identifier, timeline_id, segment_number,
                       segment_number - dense_rank() OVER (PARTITION BY system_identifier, timeline_id ORDER BY segment_number) AS run
                  FROM old_rows
                 WHERE segment_number IS NOT NULL AND timeline_id IS NOT NULL AND expired_at IS NULL)
            SELECT system_identifier, timeline_id, min(segment_number) AS lo, max(segment_number) AS hi
              FROM runs GROUP BY system_identifier, timeline_id, run
        LOOP
            -- Another row may still hold a deleted row's number (two names for one segment).
            PERFORM backup_mgmt.wal_ranges_remove(r.system_identifier, r.timeline_id, r.lo, r.hi);
        END LOOP;
        FOR r IN
            WITH back AS (
                SELECT DISTINCT w.system_identifier, w.timeline_id, w.segment_number, w.segment_size
                  FROM old_rows o JOIN backup_management.wal_archive w
                    ON w.system_identifier = o.system_identifier AND w.timeline_id = o.timeline_id
                   AND w.segment_number = o.segment_number AND w.expired_at IS NULL
                 WHERE o.expired_at IS NULL)
            SELECT system_identifier, timeline_id, segment_number AS lo, segment_number AS hi, segment_size AS size FROM back
        LOOP
            PERFORM backup_mgmt.wal_ranges_add(r.system_identifier, r.timeline_id, r.lo, r.hi, r.size);
        END LOOP;
    ELSE
        FOR r IN
            WITH runs AS (
                SELECT system_identifier, timeline_id, segment_number, segment_size,
                       segment_number - dense_rank() OVER (PARTITION BY system_identifier, timeline_id ORDER BY segment_number) AS run
                  FROM new_rows
                 WHERE segment_number IS NOT NULL AND timeline_id IS NOT NULL AND expired_at IS NULL)
            SELECT system_identifier, timeline_id, min(segment_number) AS lo, max(segment_number) AS hi,
                   max(segment_size) AS size
              FROM runs GROUP BY system_identifier, timeline_id, run
        LOOP
            PERFORM backup_mgmt.wal_ranges_add(r.system_identifier, r.timeline_id, r.lo, r.hi, r.size);
        END LOOP;
    END IF;
    RETURN NULL;
END
$bm$;
COMMENT ON FUNCTION backup_mgmt.wal_archive_track_ranges() IS
    'Trigger function of wal_archive_ranges_*: keeps backup_management.wal_ranges equal to the runs of archived, unexpired segments';
CREATE TRIGGER wal_archive_ranges_insert
    AFTER INSERT ON backup_management.wal_archive
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION backup_mgmt.wal_archive_track_ranges();
COMMENT ON TRIGGER wal_archive_ranges_insert ON backup_management.wal_archive IS
    'Adds ingested segments to backup_management.wal_ranges';
CREATE TRIGGER wal_archive_ranges_update
    AFTER UPDATE ON backup_management.wal_archive
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION backup_mgmt.wal_archive_track_ranges();
COMMENT ON TRIGGER wal_archive_ranges_update ON backup_management.wal_archive IS
    'Takes expired segments out of backup_management.wal_ranges (and puts changed ones back)';
CREATE TRIGGER wal_archive_ranges_delete
    AFTER DELETE ON backup_management.wal_archive
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION backup_mgmt.wal_archive_track_ranges();
COMMENT ON TRIGGER wal_archive_ranges_delete ON backup_management.wal_archive IS
    'Takes deleted segments out of backup_management.wal_ranges';
CREATE TRIGGER wal_archive_ranges_truncate
    AFTER TRUNCATE ON backup_management.wal_archive
    FOR EACH STATEMENT EXECUTE FUNCTION backup_mgmt.wal_archive_track_ranges();
COMMENT ON TRIGGER wal_archive_ranges_truncate ON backup_management.wal_archive IS
    'Empties backup_management.wal_ranges with the archive';

REVOKE ALL ON backup_management.wal_ranges FROM PUBLIC;
GRANT SELECT ON backup_management.wal_ranges TO backup_admin;
REVOKE ALL ON FUNCTION backup_mgmt.wal_ranges_remove(bigint, integer, bigint, bigint),
                       backup_mgmt.wal_ranges_add(bigint, integer, bigint, bigint, bigint),
                       backup_mgmt.wal_archive_track_ranges() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION backup_mgmt.wal_ranges_remove(bigint, integer, bigint, bigint),
                          backup_mgmt.wal_ranges_add(bigint, integer, bigint, bigint, bigint),
                          backup_mgmt.wal_archive_track_ranges() TO backup_admin;
-- The ranges of what is archived now, computed once from the table.
INSERT INTO backup_management.wal_ranges
SELECT system_identifier, timeline_id, min(segment_number), max(segment_number), max(segment_size)
  FROM (SELECT system_identifier, timeline_id, segment_number, segment_size,
               segment_number - dense_rank() OVER (PARTITION BY system_identifier, timeline_id ORDER BY segment_number) AS run
          FROM backup_management.wal_archive
         WHERE segment_number IS NOT NULL AND timeline_id IS NOT NULL AND expired_at IS NULL) s
 GROUP BY system_identifier, timeline_id, run;

------------------------------------------------------------------------------------------------
-- Missing WAL, per cluster and timeline, between the start of the oldest retained base backup
-- (or the first archived segment when there is none) and the newest archived segment: first as
-- runs of missing segments (read from backup_management.wal_ranges, so its cost follows the
-- number of gaps, not of segments), then one row per missing file.
------------------------------------------------------------------------------------------------
CREATE VIEW backup_mgmt.wal_gap_ranges AS
WITH archived AS (
    SELECT system_identifier, timeline_id, coalesce(max(segment_size), 16777216) AS segment_size,
           min(first_segment) AS first_segment, max(last_segment) AS last_segment
      FROM backup_management.wal_ranges
     GROUP BY system_identifier, timeline_id
), base AS (
    -- Where the oldest retained base backup's WAL starts: recovery from it needs everything after.
    SELECT system_identifier, timeline_id, min(start_lsn) AS start_lsn
      FROM backup_management.backup_records
     WHERE expired_at IS NULL AND status = 'completed'
       AND backup_method IN ('pg_basebackup', 'native_physical') AND start_lsn IS NOT NULL
     GROUP BY system_identifier, timeline_id
), bounds AS (
    SELECT a.system_identifier, a.timeline_id, a.segment_size,
           coalesce(floor((b.start_lsn - '0/0'::pg_lsn) / a.segment_size)::bigint, a.first_segment) AS first_segment,
           a.last_segment
      FROM archived a
      LEFT JOIN base b USING (system_identifier, timeline_id)
), holes AS (
    -- Between one range and the next.
    SELECT system_identifier, timeline_id, last_segment + 1 AS first_missing,
           lead(first_segment) OVER (PARTITION BY system_identifier, timeline_id ORDER BY first_segment) - 1 AS last_missing
      FROM backup_management.wal_ranges
    UNION ALL
    -- Before the first range, from where the oldest base backup starts.
    SELECT system_identifier, timeline_id, NULL, first_segment - 1
      FROM archived
)
SELECT b.system_identifier, b.timeline_id,
       greatest(h.first_missing, b.first_segment) AS first_missing_segment,
       h.last_missing AS last_missing_segment,
       h.last_missing - greatest(h.first_missing, b.first_segment) + 1 AS missing_segments,
       b.segment_size
  FROM holes h
  JOIN bounds b USING (system_identifier, timeline_id)
 WHERE h.last_missing IS NOT NULL AND h.last_missing >= greatest(h.first_missing, b.first_segment);
COMMENT ON VIEW backup_mgmt.wal_gap_ranges IS 'Runs of WAL segments missing from the archive, per cluster and timeline (first and last missing segment number, how many), from the start of the oldest completed base backup (or the first archived segment) to the newest archived segment; read from backup_management.wal_ranges';

CREATE OR REPLACE VIEW backup_mgmt.wal_gaps AS
SELECT g.system_identifier, g.timeline_id,
       upper(lpad(to_hex(g.timeline_id), 8, '0')
             || lpad(to_hex(n / (4294967296 / g.segment_size)), 8, '0')
             || lpad(to_hex(n % (4294967296 / g.segment_size)), 8, '0')) AS missing_file_name,
       n AS segment_number
  FROM backup_mgmt.wal_gap_ranges g
  CROSS JOIN LATERAL generate_series(g.first_missing_segment, g.last_missing_segment) n;
COMMENT ON VIEW backup_mgmt.wal_gaps IS 'WAL segments missing from the archive, per cluster and timeline, from the start of the oldest completed base backup (or the first archived segment when there is none) to the newest archived segment, named with the cluster''s segment size: a point-in-time recovery cannot cross them';

REVOKE ALL ON backup_mgmt.wal_gap_ranges FROM PUBLIC;
GRANT SELECT ON backup_mgmt.wal_gap_ranges TO backup_admin;

-- recovery_status reads the gap ranges and each plan's newest verified live backup.
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
           d.recovery_time AS last_measured_rto, d.drill_date AS last_drill_at, d.status AS last_drill_status
      FROM disaster_recovery.recovery_plans p
      LEFT JOIN verified v USING (database_name)
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
            ELSE 'ok' END AS archive_status
  FROM exposure;
COMMENT ON VIEW backup_mgmt.recovery_status IS 'Per active recovery plan: RPO exposure (age of the newest verified backup, or of the last archived WAL after it) against rpo_minutes, the newest drill''s measured recovery time against rto_minutes (ok, breached, or unknown: never drilled), and WAL archiving: last archived segment and its age, failures (pg_stat_archiver), missing segments, and archive_status ok, failing (the newest attempt failed), gaps or not archiving';
