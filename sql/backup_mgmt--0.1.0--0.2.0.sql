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
