-- backup_mgmt 0.2.0 -> 0.3.0.  Written by hand; never edited once released; drops no table.
--
-- 1. The archive as it really is: wal_archive records what the worker finds when it compares
--    archived segments with the disk (verified_at, lost_at, lost_reason); a lost segment leaves
--    wal_ranges (the ranges' trigger counts only intact segments), and wal_gaps says why each
--    segment is missing.
-- 2. Fair, visible integrity upkeep: backup_management.verification_state (per live completed
--    backup: newest verification, consecutive checksum failures), kept by triggers, read by the
--    worker through indexes and shown by the view backup_mgmt.upkeep_queue.
-- 3. Read paths by index probes: the oldest retained base backup per cluster and timeline.

\echo Use "ALTER EXTENSION backup_mgmt UPDATE" to load this file. \quit

------------------------------------------------------------------------------------------------
-- The archive as it really is: the worker compares every archived segment with the disk
-- (presence and size often, sha256 over time) and records here what it found.  A segment that
-- is lost (gone, or its bytes changed) no longer counts as archived: it leaves wal_ranges, so
-- wal_gaps, plan_recovery, recovery_status and metrics() report it by name.
------------------------------------------------------------------------------------------------
ALTER TABLE backup_management.wal_archive
    ADD COLUMN checked_at  timestamptz,
    ADD COLUMN lost_at     timestamptz,
    ADD COLUMN lost_reason text;
COMMENT ON COLUMN backup_management.wal_archive.checked_at IS 'When the worker last read the archived copy through sha256 and compared it with what was archived (NULL: not yet, or due again because the file came back)';
COMMENT ON COLUMN backup_management.wal_archive.lost_at IS 'When the worker found the archived copy gone or different from what was archived (NULL while it is intact); a lost segment counts as missing';
COMMENT ON COLUMN backup_management.wal_archive.lost_reason IS 'What the worker found: missing from the archive directory, a different size, or a different sha256';
-- The sha256 pass reads never-checked segments first, then the longest unchecked.
CREATE INDEX idx_wal_archive_check ON backup_management.wal_archive (checked_at NULLS FIRST)
    WHERE expired_at IS NULL AND segment_number IS NOT NULL;
CREATE INDEX idx_wal_archive_lost ON backup_management.wal_archive (system_identifier, lost_at)
    WHERE lost_at IS NOT NULL AND expired_at IS NULL;

------------------------------------------------------------------------------------------------
-- backup_management.verification_state: per live completed backup, its newest verification and
-- where it stands in the worker's integrity upkeep (consecutive failures, last error), kept up
-- to date by triggers on backup_records and backup_verifications (whoever writes), so that the
-- worker finds the next backup to verify, and metrics() the newest verification of a database,
-- through an index instead of a scan of every backup and verification.  Derived state: not
-- dumped (restoring the two tables rebuilds it through the same triggers).
------------------------------------------------------------------------------------------------
CREATE TABLE backup_management.verification_state (
    backup_id        bigint  PRIMARY KEY
        REFERENCES backup_management.backup_records (backup_id) ON DELETE CASCADE,
    database_name    text    NOT NULL,
    upkeep           text
        CONSTRAINT verification_state_upkeep_check CHECK (upkeep IN ('checksum', 'reverify')),
    reverify_from    timestamptz,
    last_verified_at timestamptz,
    last_status      text,
    last_checksum_at timestamptz,
    failures         integer NOT NULL DEFAULT 0,
    last_error       text
);
CREATE INDEX idx_verification_state_newest ON backup_management.verification_state (database_name, last_verified_at DESC NULLS LAST);
CREATE INDEX idx_verification_state_checksum ON backup_management.verification_state (backup_id)
    WHERE upkeep = 'checksum' AND failures = 0;
CREATE INDEX idx_verification_state_reverify ON backup_management.verification_state (reverify_from)
    WHERE upkeep = 'reverify' AND failures = 0;
CREATE INDEX idx_verification_state_failing ON backup_management.verification_state (last_checksum_at)
    WHERE upkeep IS NOT NULL AND failures > 0;
COMMENT ON TABLE backup_management.verification_state IS 'Per live completed backup: its newest verification and its place in the worker''s integrity upkeep, maintained by triggers on backup_records and backup_verifications (what upkeep_queue and metrics() read)';
COMMENT ON COLUMN backup_management.verification_state.backup_id IS 'The backup (completed, not expired)';
COMMENT ON COLUMN backup_management.verification_state.database_name IS 'Its database';
COMMENT ON COLUMN backup_management.verification_state.upkeep IS 'What the worker''s upkeep does with it: checksum (compute the sha256 that was not recorded), reverify (read it again against its sha256 every verify_interval), or NULL (nothing: directory backups are verified on demand)';
COMMENT ON COLUMN backup_management.verification_state.reverify_from IS 'Its newest passed checksum verification (or its end time when none passed): re-verification is due verify_interval after it';
COMMENT ON COLUMN backup_management.verification_state.last_verified_at IS 'When its newest verification of any kind finished';
COMMENT ON COLUMN backup_management.verification_state.last_status IS 'Outcome of its newest verification of any kind (passed or failed)';
COMMENT ON COLUMN backup_management.verification_state.last_checksum_at IS 'When its newest checksum verification finished (the worker''s last attempt)';
COMMENT ON COLUMN backup_management.verification_state.failures IS 'Checksum verifications that failed after its newest passed one: the worker waits longer before each new attempt';
COMMENT ON COLUMN backup_management.verification_state.last_error IS 'Why its newest checksum verification failed (NULL when it passed)';

-- What the state of backups `ids` is, computed from backup_records and backup_verifications
-- (the definition the triggers maintain, and what the tests compare the table with).
CREATE FUNCTION backup_mgmt.verification_state_of(ids bigint[])
    RETURNS SETOF backup_management.verification_state
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $bm$
    SELECT r.backup_id, r.database_name,
           CASE WHEN r.checksum IS NOT NULL THEN 'reverify'
                WHEN r.backup_method NOT IN ('pg_dump_directory', 'continuous_archiving', 'native_physical') THEN 'checksum'
           END,
           coalesce(c.last_passed, r.end_time, r.start_time),
           n.verified_at, n.verification_status, c.last_at,
           coalesce(f.failures, 0)::integer,
           CASE WHEN c.last_status = 'failed' THEN c.last_error END
      FROM backup_management.backup_records r
      LEFT JOIN LATERAL (
          SELECT v.verified_at, v.verification_status FROM backup_management.backup_verifications v
           WHERE v.backup_id = r.backup_id
           ORDER BY v.verified_at DESC, v.verification_id DESC LIMIT 1) n ON true
      LEFT JOIN LATERAL (
          SELECT max(v.verified_at) FILTER (WHERE v.verification_status = 'passed') AS last_passed,
                 max(v.verified_at) AS last_at,
                 (array_agg(v.verification_status ORDER BY v.verified_at DESC, v.verification_id DESC))[1] AS last_status,
                 (array_agg(coalesce(v.verification_result->>'detail', v.verification_result->>'reason', 'failed')
                            ORDER BY v.verified_at DESC, v.verification_id DESC))[1] AS last_error
            FROM backup_management.backup_verifications v
           WHERE v.backup_id = r.backup_id AND v.verification_type = 'checksum') c ON true
      LEFT JOIN LATERAL (
          SELECT count(*) AS failures FROM backup_management.backup_verifications v
           WHERE v.backup_id = r.backup_id AND v.verification_type = 'checksum'
             AND v.verification_status = 'failed'
             AND (c.last_passed IS NULL OR v.verified_at > c.last_passed)) f ON true
     WHERE r.backup_id = ANY (ids)
       AND r.status = 'completed' AND r.expired_at IS NULL AND r.backup_type <> 'wal'
$bm$;
COMMENT ON FUNCTION backup_mgmt.verification_state_of(bigint[]) IS
    'Internal: the verification state of the given backups computed from backup_records and backup_verifications (what backup_management.verification_state holds)';

-- Brings the state of backups `ids` up to date: recomputed from the two tables, so that it is
-- right whatever changed (a verification recorded or deleted, a backup completed, expired,
-- re-checksummed).
CREATE FUNCTION backup_mgmt.verification_state_refresh(ids bigint[])
    RETURNS void LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $bm$
BEGIN
    -- Writers of one backup's state wait for each other here (the worker's upkeep and
    -- verify_backup_integrity, retention expiring a backup while it is verified), so that each
    -- computes the state from what the other committed: every statement below takes a new
    -- snapshot after the wait.  Row locks, which need no lock-table entry per row.
    PERFORM 1 FROM backup_management.backup_records
      WHERE backup_id = ANY (ids) ORDER BY backup_id FOR NO KEY UPDATE;
    DELETE FROM backup_management.verification_state s
     WHERE s.backup_id = ANY (ids)
       AND NOT EXISTS (SELECT FROM backup_management.backup_records r
                        WHERE r.backup_id = s.backup_id AND r.status = 'completed'
                          AND r.expired_at IS NULL AND r.backup_type <> 'wal');
    INSERT INTO backup_management.verification_state
    SELECT * FROM backup_mgmt.verification_state_of(ids)
    ON CONFLICT (backup_id) DO UPDATE
       SET database_name = EXCLUDED.database_name, upkeep = EXCLUDED.upkeep,
           reverify_from = EXCLUDED.reverify_from, last_verified_at = EXCLUDED.last_verified_at,
           last_status = EXCLUDED.last_status, last_checksum_at = EXCLUDED.last_checksum_at,
           failures = EXCLUDED.failures, last_error = EXCLUDED.last_error;
END
$bm$;
COMMENT ON FUNCTION backup_mgmt.verification_state_refresh(bigint[]) IS
    'Internal (triggers on backup_records and backup_verifications): recomputes the verification state of the given backups';

-- The statement-level triggers: the backups a statement touched, once each.  A change of a
-- backup record that cannot change its state (a note, a label, a pin) costs one comparison.
CREATE FUNCTION backup_mgmt.verification_state_track() RETURNS trigger
    LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
AS $bm$
DECLARE
    ids bigint[];
BEGIN
    IF TG_TABLE_NAME = 'backup_records' THEN
        IF TG_OP = 'INSERT' THEN
            SELECT array_agg(backup_id) INTO ids FROM new_rows
             WHERE status = 'completed' AND expired_at IS NULL AND backup_type <> 'wal';
        ELSE
            SELECT array_agg(n.backup_id) INTO ids
              FROM new_rows n JOIN old_rows o USING (backup_id)
             WHERE (n.status, n.expired_at, n.database_name, n.checksum, n.backup_method, n.backup_type, n.end_time)
                   IS DISTINCT FROM (o.status, o.expired_at, o.database_name, o.checksum, o.backup_method, o.backup_type, o.end_time);
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(DISTINCT backup_id) INTO ids FROM old_rows;
    ELSIF TG_OP = 'UPDATE' THEN
        SELECT array_agg(DISTINCT backup_id) INTO ids
          FROM (SELECT backup_id FROM old_rows UNION SELECT backup_id FROM new_rows) x;
    ELSE
        SELECT array_agg(DISTINCT backup_id) INTO ids FROM new_rows;
    END IF;
    IF ids IS NOT NULL THEN
        PERFORM backup_mgmt.verification_state_refresh(ids);
    END IF;
    RETURN NULL;
END
$bm$;
COMMENT ON FUNCTION backup_mgmt.verification_state_track() IS
    'Trigger function of verification_state_*: keeps backup_management.verification_state equal to what verification_state_of() computes';
CREATE TRIGGER verification_state_records_insert
    AFTER INSERT ON backup_management.backup_records
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION backup_mgmt.verification_state_track();
COMMENT ON TRIGGER verification_state_records_insert ON backup_management.backup_records IS
    'Adds completed backups to backup_management.verification_state';
CREATE TRIGGER verification_state_records_update
    AFTER UPDATE ON backup_management.backup_records
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION backup_mgmt.verification_state_track();
COMMENT ON TRIGGER verification_state_records_update ON backup_management.backup_records IS
    'Keeps backup_management.verification_state in step as backups complete, expire or get a checksum';
CREATE TRIGGER verification_state_verifications_insert
    AFTER INSERT ON backup_management.backup_verifications
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION backup_mgmt.verification_state_track();
COMMENT ON TRIGGER verification_state_verifications_insert ON backup_management.backup_verifications IS
    'Records each verification''s outcome in backup_management.verification_state';
CREATE TRIGGER verification_state_verifications_update
    AFTER UPDATE ON backup_management.backup_verifications
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION backup_mgmt.verification_state_track();
COMMENT ON TRIGGER verification_state_verifications_update ON backup_management.backup_verifications IS
    'Keeps backup_management.verification_state in step with changed verifications';
CREATE TRIGGER verification_state_verifications_delete
    AFTER DELETE ON backup_management.backup_verifications
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION backup_mgmt.verification_state_track();
COMMENT ON TRIGGER verification_state_verifications_delete ON backup_management.backup_verifications IS
    'Keeps backup_management.verification_state in step with deleted verifications';

-- Where the oldest retained base backup of each cluster and timeline starts (wal_gap_ranges): an
-- index probe.  Its predicate names no column that completing a backup changes (status, sizes,
-- times, checksum), so that completing a logical backup stays a HOT update; a physical backup's
-- completion writes this index once, when its start_lsn is recorded.
CREATE INDEX idx_backup_records_live_base ON backup_management.backup_records (system_identifier, timeline_id, start_lsn)
    WHERE expired_at IS NULL AND start_lsn IS NOT NULL;

COMMENT ON TABLE backup_management.wal_ranges IS 'Contiguous runs of archived WAL segments that are neither expired nor lost, per cluster and timeline, maintained by triggers on wal_archive (what gap detection reads)';
COMMENT ON COLUMN backup_management.wal_ranges.last_segment IS 'Last segment number of the run; every number between first and last is archived, unexpired and intact';

-- The ranges count only intact segments from now on (every segment is intact after the upgrade,
-- so the ranges stay as they are).
CREATE OR REPLACE FUNCTION backup_mgmt.wal_archive_track_ranges() RETURNS trigger
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
                 WHERE segment_number IS NOT NULL AND timeline_id IS NOT NULL AND expired_at IS NULL AND lost_at IS NULL
                EXCEPT
                SELECT system_identifier, timeline_id, segment_number FROM new_rows
                 WHERE segment_number IS NOT NULL AND timeline_id IS NOT NULL AND expired_at IS NULL AND lost_at IS NULL),
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
                 WHERE segment_number IS NOT NULL AND timeline_id IS NOT NULL AND expired_at IS NULL AND lost_at IS NULL
                   AND NOT EXISTS (SELECT FROM old_rows o
                                    WHERE o.system_identifier = new_rows.system_identifier
                                      AND o.timeline_id = new_rows.timeline_id
                                      AND o.segment_number = new_rows.segment_number
                                      AND o.expired_at IS NULL AND o.lost_at IS NULL)),
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
                 WHERE segment_number IS NOT NULL AND timeline_id IS NOT NULL AND expired_at IS NULL AND lost_at IS NULL)
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
                   AND w.segment_number = o.segment_number AND w.expired_at IS NULL AND w.lost_at IS NULL
                 WHERE o.expired_at IS NULL AND o.lost_at IS NULL)
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
                 WHERE segment_number IS NOT NULL AND timeline_id IS NOT NULL AND expired_at IS NULL AND lost_at IS NULL)
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
    'Trigger function of wal_archive_ranges_*: keeps backup_management.wal_ranges equal to the runs of archived segments that are neither expired nor lost';

CREATE OR REPLACE VIEW backup_mgmt.wal_gap_ranges AS
WITH archived AS (
    -- The intact ranges, and the segments found lost on disk (idx_wal_archive_lost): a lost
    -- segment is missing, even the newest.
    SELECT system_identifier, timeline_id, coalesce(max(segment_size), 16777216) AS segment_size,
           min(first_segment) AS first_segment, max(last_segment) AS last_segment
      FROM (SELECT system_identifier, timeline_id, segment_size, first_segment, last_segment
              FROM backup_management.wal_ranges
            UNION ALL
            SELECT system_identifier, timeline_id, segment_size, segment_number, segment_number
              FROM backup_management.wal_archive
             WHERE lost_at IS NOT NULL AND expired_at IS NULL
               AND segment_number IS NOT NULL AND timeline_id IS NOT NULL) x
     GROUP BY system_identifier, timeline_id
), intact AS (
    SELECT system_identifier, timeline_id, min(first_segment) AS first_segment, max(last_segment) AS last_segment
      FROM backup_management.wal_ranges
     GROUP BY system_identifier, timeline_id
), base AS (
    -- Where the oldest retained base backup's WAL starts: recovery from it needs everything after
    -- (one probe of idx_backup_records_live_base per cluster and timeline).
    SELECT a.system_identifier, a.timeline_id,
           (SELECT r.start_lsn FROM backup_management.backup_records r
             WHERE r.system_identifier = a.system_identifier AND r.timeline_id = a.timeline_id
               AND r.expired_at IS NULL AND r.status = 'completed' AND r.start_lsn IS NOT NULL
               AND r.backup_method IN ('pg_basebackup', 'native_physical')
             ORDER BY r.start_lsn LIMIT 1) AS start_lsn
      FROM archived a
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
      FROM intact
    UNION ALL
    -- After the last range, up to the newest segment found lost (all of it without a range).
    SELECT a.system_identifier, a.timeline_id, i.last_segment + 1, a.last_segment
      FROM archived a
      LEFT JOIN intact i USING (system_identifier, timeline_id)
     WHERE i.last_segment IS NULL OR i.last_segment < a.last_segment
)
SELECT b.system_identifier, b.timeline_id,
       greatest(h.first_missing, b.first_segment) AS first_missing_segment,
       h.last_missing AS last_missing_segment,
       h.last_missing - greatest(h.first_missing, b.first_segment) + 1 AS missing_segments,
       b.segment_size
  FROM holes h
  JOIN bounds b USING (system_identifier, timeline_id)
 WHERE h.last_missing IS NOT NULL AND h.last_missing >= greatest(h.first_missing, b.first_segment);

CREATE OR REPLACE VIEW backup_mgmt.wal_gaps AS
SELECT g.system_identifier, g.timeline_id,
       upper(lpad(to_hex(g.timeline_id), 8, '0')
             || lpad(to_hex(n / (4294967296 / g.segment_size)), 8, '0')
             || lpad(to_hex(n % (4294967296 / g.segment_size)), 8, '0')) AS missing_file_name,
       n AS segment_number,
       coalesce(l.lost_reason, 'never archived') AS reason
  FROM backup_mgmt.wal_gap_ranges g
  CROSS JOIN LATERAL generate_series(g.first_missing_segment, g.last_missing_segment) n
  LEFT JOIN LATERAL (
      SELECT w.lost_reason FROM backup_management.wal_archive w
       WHERE w.system_identifier = g.system_identifier AND w.timeline_id = g.timeline_id
         AND w.segment_number = n AND w.expired_at IS NULL AND w.lost_at IS NOT NULL
       ORDER BY w.lost_at DESC LIMIT 1) l ON true;
COMMENT ON VIEW backup_mgmt.wal_gaps IS 'WAL segments missing from the archive, per cluster and timeline, from the start of the oldest completed base backup (or the first archived segment when there is none) to the newest archived segment, named with the cluster''s segment size, and why each is missing (never archived, or lost from the archive: gone, a different size or sha256): a point-in-time recovery cannot cross them';

------------------------------------------------------------------------------------------------
-- The worker's integrity upkeep, as it stands: what it will do next, and what failed.
------------------------------------------------------------------------------------------------
-- backup_mgmt.verify_interval as an interval (the GUC in seconds; 0 when re-verification is off).
CREATE FUNCTION backup_mgmt.upkeep_verify_interval() RETURNS interval
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $bm$
    SELECT coalesce(nullif(current_setting('backup_mgmt.verify_interval', true), '')::interval, interval '7 days')
$bm$;
COMMENT ON FUNCTION backup_mgmt.upkeep_verify_interval() IS
    'backup_mgmt.verify_interval as an interval (0 when the worker does not re-verify)';

-- How long upkeep waits after the n-th failure in a row before trying a backup again: the
-- shorter of verify_interval and an hour, doubled with each failure, at most a day (or
-- verify_interval when that is longer).  A backup that keeps failing is tried less and less
-- often, so that it cannot take the turns of the others.
CREATE FUNCTION backup_mgmt.upkeep_backoff(failures integer) RETURNS interval
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
AS $bm$
    WITH s AS (SELECT backup_mgmt.upkeep_verify_interval() AS iv)
    SELECT least(CASE WHEN iv > interval '0' THEN least(iv, interval '1 hour') ELSE interval '1 hour' END
                     * power(2, greatest(least(failures, 20), 1) - 1),
                 greatest(iv, interval '1 day'))
      FROM s
$bm$;
COMMENT ON FUNCTION backup_mgmt.upkeep_backoff(integer) IS
    'How long the worker''s upkeep waits before verifying a backup again after that many failures in a row';

CREATE VIEW backup_mgmt.upkeep_queue AS
SELECT s.backup_id, s.database_name,
       CASE s.upkeep WHEN 'checksum' THEN 'compute checksum' ELSE 're-verify' END AS action,
       CASE WHEN s.failures > 0 THEN s.last_checksum_at + backup_mgmt.upkeep_backoff(s.failures)
            WHEN s.upkeep = 'checksum' THEN s.reverify_from
            WHEN backup_mgmt.upkeep_verify_interval() > interval '0'
            THEN s.reverify_from + backup_mgmt.upkeep_verify_interval() END AS due_at,
       s.failures AS consecutive_failures,
       s.last_checksum_at AS last_attempt_at,
       s.last_error,
       s.last_verified_at,
       s.last_status
  FROM backup_management.verification_state s
 WHERE s.upkeep IS NOT NULL;
COMMENT ON VIEW backup_mgmt.upkeep_queue IS 'The worker''s integrity upkeep per live completed backup: what it does (compute a missing checksum, re-verify), when it is due (oldest first; after failures, later and later), how many attempts failed in a row and why the last one did';

-- The state of every live completed backup, from the rows 0.2.0 left.
SELECT backup_mgmt.verification_state_refresh(array_agg(backup_id))
  FROM backup_management.backup_records
 WHERE status = 'completed' AND expired_at IS NULL AND backup_type <> 'wal';

-- Privileges as finalize.sql gives them in a fresh install.
REVOKE ALL ON FUNCTION backup_mgmt.verification_state_of(bigint[]), backup_mgmt.verification_state_refresh(bigint[]),
    backup_mgmt.verification_state_track(), backup_mgmt.upkeep_verify_interval(), backup_mgmt.upkeep_backoff(integer)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION backup_mgmt.verification_state_of(bigint[]), backup_mgmt.verification_state_refresh(bigint[]),
    backup_mgmt.verification_state_track(), backup_mgmt.upkeep_verify_interval(), backup_mgmt.upkeep_backoff(integer)
    TO backup_admin;
REVOKE ALL ON backup_management.verification_state, backup_mgmt.upkeep_queue FROM PUBLIC;
GRANT SELECT ON backup_management.verification_state, backup_mgmt.upkeep_queue TO backup_admin;
