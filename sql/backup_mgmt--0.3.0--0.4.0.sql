-- backup_mgmt 0.3.0 -> 0.4.0.  Hand-written; never DROP TABLE here.
--
-- The verification state's triggers cost two thirds of a recorded backup (BENCHMARKS.md,
-- "Record functions in 0.4.0"): verification_state_of had a SET clause, which kept the planner
-- from inlining it, so it was parsed and planned anew on every call.  Same results, same
-- privileges and comments (CREATE OR REPLACE keeps them); only how they are planned changes.
-- No table changes.

-- What the state of backups `ids` is, computed from backup_records and backup_verifications
-- (the definition the triggers maintain, and what the tests compare the table with).  No SET
-- clause, so that the planner inlines it into verification_state_refresh's cached plan (a SET
-- clause made it a function planned anew on every call: two thirds of a recorded backup's
-- cost, BENCHMARKS.md); it is not SECURITY DEFINER, its functions are qualified, and every
-- caller (the refresh below, the worker) pins search_path.
CREATE OR REPLACE FUNCTION backup_mgmt.verification_state_of(ids bigint[])
    RETURNS SETOF backup_management.verification_state
    LANGUAGE sql STABLE
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
-- Its statements are planned once per session and kept (force_generic_plan), always on the
-- indexes (enable_seqscan off: a plan made while the table was small, right after an install
-- or a TRUNCATE, would otherwise scan the whole table on every call from then on).
CREATE OR REPLACE FUNCTION backup_mgmt.verification_state_refresh(ids bigint[])
    RETURNS void LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    SET plan_cache_mode = force_generic_plan
    SET enable_seqscan = off
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
