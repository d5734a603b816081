-- backup_mgmt 0.12.0 -> 0.13.0.  Hand-written; never DROP TABLE here.
--
-- The off-site WAL queue.  Each second the worker asked, per active target, which archived files
-- the target lacks and which of its copies expired, and offsite_wal_status (read by the lag
-- alarm, recovery_status and metrics()) counted the files waiting: each a comparison of the
-- whole archive with the target's copies, 65 to 116 ms per target and second at 100,000
-- archived files.  What waits is now a table kept by triggers on the three tables it derives
-- from; the view and the worker read it.  It is filled here from the catalog as it stands.

------------------------------------------------------------------------------------------------
-- backup_management.remote_wal_queue (0.13.0): per off-site target, the archived WAL files
-- waiting to be copied there and the copies waiting to be removed from it.  Derived state, kept
-- by triggers on the three tables it is derived from, so that the worker's check each second
-- and offsite_wal_status read what waits (an index range) instead of comparing the whole archive
-- with every target's copies: at 100,000 archived files that comparison cost 65 to 116 ms per
-- target and second (BENCHMARKS.md).  The worker compares the table with its definition
-- (remote_wal_queue_of) every minute and repairs it, saying so, should they ever differ.
------------------------------------------------------------------------------------------------
CREATE TABLE backup_management.remote_wal_queue (
    system_identifier bigint      NOT NULL,
    file_name         text        NOT NULL,
    config_id         integer     NOT NULL
        REFERENCES backup_management.remote_backup_configs (config_id) ON DELETE CASCADE ON UPDATE CASCADE,
    action            text        NOT NULL
        CONSTRAINT remote_wal_queue_action_check CHECK (action IN ('copy', 'remove')),
    archived_at       timestamptz NOT NULL,
    PRIMARY KEY (system_identifier, file_name, config_id)
);
-- The worker takes each target's oldest first.
CREATE INDEX idx_remote_wal_queue_next ON backup_management.remote_wal_queue (config_id, action, archived_at, file_name);
COMMENT ON TABLE backup_management.remote_wal_queue IS 'Per off-site target, archived WAL files not copied there yet (copy) and copies whose archived file expired (remove); kept by triggers on wal_archive, remote_wal_records and remote_backup_configs, equal to backup_mgmt.remote_wal_queue_of()';
COMMENT ON COLUMN backup_management.remote_wal_queue.system_identifier IS 'Cluster the file belongs to (as in wal_archive)';
COMMENT ON COLUMN backup_management.remote_wal_queue.file_name IS 'WAL file name (as in wal_archive)';
COMMENT ON COLUMN backup_management.remote_wal_queue.config_id IS 'Target';
COMMENT ON COLUMN backup_management.remote_wal_queue.action IS 'copy: this cluster''s file is archived, neither expired nor lost, the target is active and holds no recorded copy; remove: the target holds a recorded copy of a file that expired or left the archive';
COMMENT ON COLUMN backup_management.remote_wal_queue.archived_at IS 'When the file was archived (the order files are copied and removed in, and the lag)';

-- What remote_wal_queue holds, computed from the tables (the definition the triggers maintain,
-- and what the worker and the tests compare the table with).  Lost files are not copied (they
-- are gaps, and counted as such) and their copies are kept (the only good copy may be there).
-- No SET clause, so that the planner can inline it; every caller pins search_path.
CREATE FUNCTION backup_mgmt.remote_wal_queue_of()
    RETURNS SETOF backup_management.remote_wal_queue
    LANGUAGE sql STABLE
AS $bm$
    SELECT a.system_identifier, a.file_name, c.config_id, 'copy'::text, a.archived_at
      FROM backup_management.wal_archive a
      JOIN backup_management.remote_backup_configs c ON c.is_active
     WHERE a.expired_at IS NULL AND a.lost_at IS NULL
       AND a.system_identifier OPERATOR(pg_catalog.=) (SELECT s.system_identifier FROM pg_catalog.pg_control_system() s)
       AND NOT EXISTS (SELECT FROM backup_management.remote_wal_records r
                        WHERE r.config_id OPERATOR(pg_catalog.=) c.config_id
                          AND r.system_identifier OPERATOR(pg_catalog.=) a.system_identifier
                          AND r.file_name OPERATOR(pg_catalog.=) a.file_name)
    UNION ALL
    SELECT r.system_identifier, r.file_name, r.config_id, 'remove'::text, r.archived_at
      FROM backup_management.remote_wal_records r
     WHERE NOT EXISTS (SELECT FROM backup_management.wal_archive a
                        WHERE a.system_identifier OPERATOR(pg_catalog.=) r.system_identifier
                          AND a.file_name OPERATOR(pg_catalog.=) r.file_name AND a.expired_at IS NULL)
$bm$;
COMMENT ON FUNCTION backup_mgmt.remote_wal_queue_of() IS
    'Internal: what backup_management.remote_wal_queue holds, computed from wal_archive, remote_wal_records and remote_backup_configs';

-- Brings the queue up to date for the files or copies a statement touched (`configs` NULL:
-- files, on every target), recomputed from the tables so that it is right whatever changed.  Arrays of keys, not one call per row: a statement expiring a million files makes
-- one call.  `unnest` of several arrays unqualified: PostgreSQL expands only that spelling (the
-- search_path is pinned to pg_catalog).
CREATE FUNCTION backup_mgmt.remote_wal_queue_refresh(configs integer[], sysids bigint[], names text[])
    RETURNS void LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    SET jit = off
AS $bm$
BEGIN
    -- Files (ingested, expired, lost, found again, deleted) on every target, or copies
    -- (recorded, forgotten by a target that moved, removed) on their own: the keys k (target,
    -- cluster, file).  Each key is probed on the indexes (OFFSET 0 keeps every probe a probe):
    -- the planner cannot know how many keys there are, and a join it chose with the tables'
    -- figures out of date turned recording 20,000 copies into 37 s, growing with the square.
    WITH k AS MATERIALIZED (
        SELECT c.config_id, k.sysid AS system_identifier, k.name AS file_name
          FROM unnest(sysids, names) k(sysid, name), backup_management.remote_backup_configs c
         WHERE configs IS NULL
         UNION
        SELECT k.config, k.sysid, k.name
          FROM unnest(configs, sysids, names) k(config, sysid, name)
         WHERE configs IS NOT NULL)
    DELETE FROM backup_management.remote_wal_queue q
     USING k
     WHERE q.system_identifier = k.system_identifier AND q.file_name = k.file_name
       AND q.config_id = k.config_id;
    WITH k AS MATERIALIZED (
        SELECT c.config_id, k.sysid AS system_identifier, k.name AS file_name
          FROM unnest(sysids, names) k(sysid, name), backup_management.remote_backup_configs c
         WHERE configs IS NULL
         UNION
        SELECT k.config, k.sysid, k.name
          FROM unnest(configs, sysids, names) k(config, sysid, name)
         WHERE configs IS NOT NULL)
    INSERT INTO backup_management.remote_wal_queue
    SELECT a.system_identifier, a.file_name, a.config_id, 'copy', a.archived_at
      FROM k CROSS JOIN LATERAL (
           SELECT a.system_identifier, a.file_name, c.config_id, a.archived_at
             FROM backup_management.wal_archive a, backup_management.remote_backup_configs c
            WHERE a.system_identifier = k.system_identifier AND a.file_name = k.file_name
              AND c.config_id = k.config_id AND c.is_active
              AND a.expired_at IS NULL AND a.lost_at IS NULL
              AND a.system_identifier = (SELECT s.system_identifier FROM pg_catalog.pg_control_system() s)
              AND NOT EXISTS (SELECT FROM backup_management.remote_wal_records r
                               WHERE r.config_id = c.config_id AND r.system_identifier = a.system_identifier
                                 AND r.file_name = a.file_name OFFSET 0)
           OFFSET 0) a
    ON CONFLICT DO NOTHING;
    WITH k AS MATERIALIZED (
        SELECT c.config_id, k.sysid AS system_identifier, k.name AS file_name
          FROM unnest(sysids, names) k(sysid, name), backup_management.remote_backup_configs c
         WHERE configs IS NULL
         UNION
        SELECT k.config, k.sysid, k.name
          FROM unnest(configs, sysids, names) k(config, sysid, name)
         WHERE configs IS NOT NULL)
    INSERT INTO backup_management.remote_wal_queue
    SELECT r.system_identifier, r.file_name, r.config_id, 'remove', r.archived_at
      FROM k CROSS JOIN LATERAL (
           SELECT r.system_identifier, r.file_name, r.config_id, r.archived_at
             FROM backup_management.remote_wal_records r
            WHERE r.config_id = k.config_id AND r.system_identifier = k.system_identifier
              AND r.file_name = k.file_name
              AND NOT EXISTS (SELECT FROM backup_management.wal_archive a
                               WHERE a.system_identifier = r.system_identifier AND a.file_name = r.file_name
                                 AND a.expired_at IS NULL OFFSET 0)
           OFFSET 0) r
    ON CONFLICT DO NOTHING;
END
$bm$;
COMMENT ON FUNCTION backup_mgmt.remote_wal_queue_refresh(integer[], bigint[], text[]) IS
    'Internal (the remote_wal_queue_* triggers): recomputes the off-site WAL queue for the given files (system identifier, name) on every target, or copies (target, system identifier, name)';

-- Makes the queue equal to its definition; returns the rows it had to change (0 unless a
-- trigger missed something: two transactions racing, say a target enabled while a file is
-- ingested).  The worker runs it every minute and at start; a target enabled, disabled or added
-- runs it too.  Whole-table joins only (no nested loops): a nested loop the planner chose with
-- the tables' figures out of date took 28 s at 20,000 files, where hashing takes a fraction of
-- a second at 100,000.  No JIT (here and in the refresh): compiling cost more than the work.
CREATE FUNCTION backup_mgmt.remote_wal_queue_repair()
    RETURNS bigint LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    SET enable_nestloop = off
    SET jit = off
AS $bm$
DECLARE
    removed bigint;
    added bigint;
BEGIN
    DELETE FROM backup_management.remote_wal_queue q
     WHERE NOT EXISTS (SELECT FROM backup_mgmt.remote_wal_queue_of() o
                        WHERE o.system_identifier = q.system_identifier AND o.file_name = q.file_name
                          AND o.config_id = q.config_id AND o.action = q.action
                          AND o.archived_at = q.archived_at);
    GET DIAGNOSTICS removed = ROW_COUNT;
    INSERT INTO backup_management.remote_wal_queue
    SELECT * FROM backup_mgmt.remote_wal_queue_of() o
     WHERE NOT EXISTS (SELECT FROM backup_management.remote_wal_queue q
                        WHERE q.system_identifier = o.system_identifier AND q.file_name = o.file_name
                          AND q.config_id = o.config_id)
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS added = ROW_COUNT;
    RETURN removed + added;
END
$bm$;
COMMENT ON FUNCTION backup_mgmt.remote_wal_queue_repair() IS
    'Internal (the worker, every minute, and the triggers when a target is enabled, disabled or added): makes backup_management.remote_wal_queue equal to remote_wal_queue_of(); returns how many rows it changed';

-- The statement-level triggers: the files, copies or targets a statement touched, once each.
-- A change that cannot change the queue (a checksum pass, a commit-time scan, a target's sync
-- status) costs one comparison.  SECURITY DEFINER: backup_admin members edit targets directly
-- and may not write the queue themselves; it does nothing but recompute the queue from the
-- tables, refuses any other table, and no one but its owner may execute it (attaching it to a
-- table of one's own would otherwise run one's casts with its rights).
CREATE FUNCTION backup_mgmt.remote_wal_queue_track() RETURNS trigger
    LANGUAGE plpgsql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $bm$
DECLARE
    configs integer[];
    sysids bigint[];
    names text[];
BEGIN
    -- Only on the three tables it was made for (by their oid, not a name another schema may
    -- reuse): it runs with its owner's rights.
    IF TG_RELID NOT IN ('backup_management.remote_backup_configs'::regclass,
                        'backup_management.wal_archive'::regclass,
                        'backup_management.remote_wal_records'::regclass) THEN
        RAISE EXCEPTION 'backup_mgmt.remote_wal_queue_track() keeps the off-site WAL queue, not %', TG_RELID::regclass
              USING ERRCODE = 'insufficient_privilege',
                    HINT = 'Only the extension''s own triggers on wal_archive, remote_wal_records and remote_backup_configs use it.';
    END IF;
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM backup_mgmt.remote_wal_queue_repair();
        RETURN NULL;
    END IF;
    IF TG_RELID = 'backup_management.remote_backup_configs'::regclass THEN
        IF TG_OP = 'INSERT' THEN
            SELECT array_agg(config_id) INTO configs FROM new_rows;
        ELSIF TG_OP = 'UPDATE' THEN
            -- Enabled, disabled, or (rarely) given another id.
            SELECT array_agg(DISTINCT k.config_id) INTO configs
              FROM ((SELECT config_id, is_active FROM new_rows EXCEPT SELECT config_id, is_active FROM old_rows)
                    UNION
                    (SELECT config_id, is_active FROM old_rows EXCEPT SELECT config_id, is_active FROM new_rows)) k;
        END IF;
        IF configs IS NOT NULL THEN
            PERFORM backup_mgmt.remote_wal_queue_repair();
        END IF;
    ELSIF TG_RELID = 'backup_management.wal_archive'::regclass THEN
        -- What a file counts as for the queue: whether it is expired, lost, and when archived.
        IF TG_OP = 'INSERT' THEN
            SELECT array_agg(system_identifier), array_agg(file_name) INTO sysids, names FROM new_rows;
        ELSIF TG_OP = 'DELETE' THEN
            SELECT array_agg(system_identifier), array_agg(file_name) INTO sysids, names FROM old_rows;
        ELSE
            SELECT array_agg(k.system_identifier), array_agg(k.file_name) INTO sysids, names
              FROM ((SELECT system_identifier, file_name, expired_at IS NULL, lost_at IS NULL, archived_at FROM old_rows
                     EXCEPT SELECT system_identifier, file_name, expired_at IS NULL, lost_at IS NULL, archived_at FROM new_rows)
                    UNION
                    (SELECT system_identifier, file_name, expired_at IS NULL, lost_at IS NULL, archived_at FROM new_rows
                     EXCEPT SELECT system_identifier, file_name, expired_at IS NULL, lost_at IS NULL, archived_at FROM old_rows)) k;
        END IF;
        IF sysids IS NOT NULL THEN
            PERFORM backup_mgmt.remote_wal_queue_refresh(NULL, sysids, names);
        END IF;
    ELSE
        -- remote_wal_records: copies recorded, forgotten (a target that moved) or removed.
        -- Each event's transition tables only: the others do not exist in its statements.
        IF TG_OP = 'INSERT' THEN
            SELECT array_agg(config_id), array_agg(system_identifier), array_agg(file_name)
              INTO configs, sysids, names FROM new_rows;
        ELSIF TG_OP = 'DELETE' THEN
            SELECT array_agg(config_id), array_agg(system_identifier), array_agg(file_name)
              INTO configs, sysids, names FROM old_rows;
        ELSE
            SELECT array_agg(k.config_id), array_agg(k.system_identifier), array_agg(k.file_name)
              INTO configs, sysids, names
              FROM (SELECT config_id, system_identifier, file_name FROM new_rows
                    UNION SELECT config_id, system_identifier, file_name FROM old_rows) k;
        END IF;
        IF configs IS NOT NULL THEN
            PERFORM backup_mgmt.remote_wal_queue_refresh(configs, sysids, names);
        END IF;
    END IF;
    RETURN NULL;
END
$bm$;
COMMENT ON FUNCTION backup_mgmt.remote_wal_queue_track() IS
    'Trigger function of remote_wal_queue_*: keeps backup_management.remote_wal_queue equal to what remote_wal_queue_of() computes';
CREATE TRIGGER remote_wal_queue_archive_insert
    AFTER INSERT ON backup_management.wal_archive
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION backup_mgmt.remote_wal_queue_track();
COMMENT ON TRIGGER remote_wal_queue_archive_insert ON backup_management.wal_archive IS
    'Queues ingested files for every active off-site target';
CREATE TRIGGER remote_wal_queue_archive_update
    AFTER UPDATE ON backup_management.wal_archive
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION backup_mgmt.remote_wal_queue_track();
COMMENT ON TRIGGER remote_wal_queue_archive_update ON backup_management.wal_archive IS
    'Takes expired and lost files out of the off-site WAL queue (and queues the removal of expired files'' copies)';
CREATE TRIGGER remote_wal_queue_archive_delete
    AFTER DELETE ON backup_management.wal_archive
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION backup_mgmt.remote_wal_queue_track();
COMMENT ON TRIGGER remote_wal_queue_archive_delete ON backup_management.wal_archive IS
    'Takes deleted files out of the off-site WAL queue (and queues the removal of their copies)';
CREATE TRIGGER remote_wal_queue_archive_truncate
    AFTER TRUNCATE ON backup_management.wal_archive
    FOR EACH STATEMENT EXECUTE FUNCTION backup_mgmt.remote_wal_queue_track();
COMMENT ON TRIGGER remote_wal_queue_archive_truncate ON backup_management.wal_archive IS
    'Recomputes the off-site WAL queue after the archive is emptied';
CREATE TRIGGER remote_wal_queue_copies_insert
    AFTER INSERT ON backup_management.remote_wal_records
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION backup_mgmt.remote_wal_queue_track();
COMMENT ON TRIGGER remote_wal_queue_copies_insert ON backup_management.remote_wal_records IS
    'Takes copied files out of the off-site WAL queue';
CREATE TRIGGER remote_wal_queue_copies_update
    AFTER UPDATE ON backup_management.remote_wal_records
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION backup_mgmt.remote_wal_queue_track();
COMMENT ON TRIGGER remote_wal_queue_copies_update ON backup_management.remote_wal_records IS
    'Keeps the off-site WAL queue in step with changed copy records';
CREATE TRIGGER remote_wal_queue_copies_delete
    AFTER DELETE ON backup_management.remote_wal_records
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION backup_mgmt.remote_wal_queue_track();
COMMENT ON TRIGGER remote_wal_queue_copies_delete ON backup_management.remote_wal_records IS
    'Queues again the files whose copies were forgotten (a target that moved) or removed';
CREATE TRIGGER remote_wal_queue_copies_truncate
    AFTER TRUNCATE ON backup_management.remote_wal_records
    FOR EACH STATEMENT EXECUTE FUNCTION backup_mgmt.remote_wal_queue_track();
COMMENT ON TRIGGER remote_wal_queue_copies_truncate ON backup_management.remote_wal_records IS
    'Recomputes the off-site WAL queue after every copy record is emptied';
CREATE TRIGGER remote_wal_queue_targets_insert
    AFTER INSERT ON backup_management.remote_backup_configs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION backup_mgmt.remote_wal_queue_track();
COMMENT ON TRIGGER remote_wal_queue_targets_insert ON backup_management.remote_backup_configs IS
    'Queues every archived file for a new active off-site target';
CREATE TRIGGER remote_wal_queue_targets_update
    AFTER UPDATE ON backup_management.remote_backup_configs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION backup_mgmt.remote_wal_queue_track();
COMMENT ON TRIGGER remote_wal_queue_targets_update ON backup_management.remote_backup_configs IS
    'Queues the archive for a target enabled again, and empties the queue of one disabled';

-- Per active target: this cluster's archived WAL files not on it yet (lost files excluded: they
-- are gaps, and counted as such), how long the oldest has waited, the newest copy, failures.
-- Read from the queue (0.13.0), each queued file checked against the tables as it is counted.
CREATE OR REPLACE VIEW backup_mgmt.offsite_wal_status AS
SELECT c.config_id, c.config_name, c.remote_type,
       p.pending_segments, p.oldest_pending_archived_at,
       coalesce(extract(epoch FROM pg_catalog.now() - p.oldest_pending_archived_at), 0)::float8 AS lag_seconds,
       s.last_copied_file, s.last_copied_at, coalesce(s.failures, 0) AS failures,
       s.last_error, s.last_error_at, s.alarm_since, s.catalog_copied_at
  FROM backup_management.remote_backup_configs c
  LEFT JOIN backup_management.remote_wal_state s ON s.config_id = c.config_id
 CROSS JOIN LATERAL (
       SELECT count(*)::bigint AS pending_segments, min(a.archived_at) AS oldest_pending_archived_at
         FROM backup_management.remote_wal_queue q
         JOIN backup_management.wal_archive a
           ON a.system_identifier = q.system_identifier AND a.file_name = q.file_name
        WHERE q.config_id = c.config_id AND q.action = 'copy'
          AND a.expired_at IS NULL AND a.lost_at IS NULL
          AND a.system_identifier = (SELECT system_identifier FROM pg_catalog.pg_control_system())
          AND NOT EXISTS (SELECT FROM backup_management.remote_wal_records r
                           WHERE r.config_id = c.config_id AND r.system_identifier = a.system_identifier
                             AND r.file_name = a.file_name)) p
 WHERE c.is_active;

REVOKE ALL ON FUNCTION backup_mgmt.remote_wal_queue_of(), backup_mgmt.remote_wal_queue_refresh(integer[], bigint[], text[]),
    backup_mgmt.remote_wal_queue_repair(), backup_mgmt.remote_wal_queue_track() FROM PUBLIC;
-- Only remote_wal_queue_of (read-only) for operators; the upkeep is the triggers' (finalize.sql).
GRANT EXECUTE ON FUNCTION backup_mgmt.remote_wal_queue_of() TO backup_admin;
REVOKE ALL ON backup_management.remote_wal_queue FROM PUBLIC;
GRANT SELECT ON backup_management.remote_wal_queue TO backup_admin;

SELECT backup_mgmt.remote_wal_queue_repair();
