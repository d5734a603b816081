-- backup_mgmt 0.13.0 -> 0.14.0.  Hand-written; never DROP TABLE here.
--
-- The off-site WAL queue without its foreign key to remote_backup_configs.  The worker's ingest
-- of each archived file inserts the file's queue rows for every target; with the key, an
-- operator who deleted a target and had not committed yet held up that insert (the key check
-- waits for their transaction), and after their commit it failed and was retried.  A deleted
-- target's rows now go with it (a new trigger), and the repair removes any a race leaves.
-- A target added, enabled, disabled, deleted or renumbered recomputes that target's queue only
-- (remote_wal_queue_refresh_targets), not the whole queue in the operator's transaction, and the
-- refresh of files and copies passes over targets an open transaction holds.

ALTER TABLE backup_management.remote_wal_queue
    DROP CONSTRAINT remote_wal_queue_config_id_fkey;

-- The refresh passes over the targets an open transaction is changing or deleting (their rows
-- are that transaction's to set), so that the worker's ingest, expiry and lost-file marks never
-- wait on an operator's transaction.
CREATE OR REPLACE FUNCTION backup_mgmt.remote_wal_queue_refresh(configs integer[], sysids bigint[], names text[])
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
          FROM unnest(sysids, names) k(sysid, name),
               -- Not the targets an open transaction is changing or deleting: their rows may be
               -- ones it deleted, and waiting for it would hold up this statement (the worker's
               -- ingest, expiry, lost files).  Their rows are that transaction's to set (its own
               -- refresh of those targets), and the repair's should it roll back.
               (SELECT t.config_id FROM backup_management.remote_backup_configs t FOR SHARE SKIP LOCKED) c
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
          FROM unnest(sysids, names) k(sysid, name),
               -- Not the targets an open transaction is changing or deleting: their rows may be
               -- ones it deleted, and waiting for it would hold up this statement (the worker's
               -- ingest, expiry, lost files).  Their rows are that transaction's to set (its own
               -- refresh of those targets), and the repair's should it roll back.
               (SELECT t.config_id FROM backup_management.remote_backup_configs t FOR SHARE SKIP LOCKED) c
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
          FROM unnest(sysids, names) k(sysid, name),
               -- Not the targets an open transaction is changing or deleting: their rows may be
               -- ones it deleted, and waiting for it would hold up this statement (the worker's
               -- ingest, expiry, lost files).  Their rows are that transaction's to set (its own
               -- refresh of those targets), and the repair's should it roll back.
               (SELECT t.config_id FROM backup_management.remote_backup_configs t FOR SHARE SKIP LOCKED) c
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

-- Recomputes the queue of whole targets (added, enabled, disabled, deleted, renumbered) from its
-- definition (0.14.0): the repair of those targets only, so that an operator's statement on one
-- target neither recomputes every other target's queue in their transaction nor takes their rows
-- in an order that could deadlock with the worker's.  Hash joins, as for the repair (a new
-- target's queue is the whole archive).
CREATE FUNCTION backup_mgmt.remote_wal_queue_refresh_targets(configs integer[])
    RETURNS void LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    SET enable_nestloop = off
    SET jit = off
AS $bm$
BEGIN
    DELETE FROM backup_management.remote_wal_queue q
     WHERE q.config_id = ANY (configs)
       AND NOT EXISTS (SELECT FROM backup_mgmt.remote_wal_queue_of() o
                        WHERE o.config_id = ANY (configs)
                          AND o.system_identifier = q.system_identifier AND o.file_name = q.file_name
                          AND o.config_id = q.config_id AND o.action = q.action
                          AND o.archived_at = q.archived_at);
    INSERT INTO backup_management.remote_wal_queue
    SELECT * FROM backup_mgmt.remote_wal_queue_of() o
     WHERE o.config_id = ANY (configs)
       AND NOT EXISTS (SELECT FROM backup_management.remote_wal_queue q
                        WHERE q.config_id = ANY (configs)
                          AND q.system_identifier = o.system_identifier AND q.file_name = o.file_name
                          AND q.config_id = o.config_id)
    ON CONFLICT DO NOTHING;
END
$bm$;
COMMENT ON FUNCTION backup_mgmt.remote_wal_queue_refresh_targets(integer[]) IS
    'Internal (the remote_wal_queue_targets_* triggers): recomputes the off-site WAL queue of the given targets';

CREATE OR REPLACE FUNCTION backup_mgmt.remote_wal_queue_track() RETURNS trigger
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
        ELSIF TG_OP = 'DELETE' THEN
            SELECT array_agg(config_id) INTO configs FROM old_rows;
        ELSIF TG_OP = 'UPDATE' THEN
            -- Enabled, disabled, or (rarely) given another id.
            SELECT array_agg(DISTINCT k.config_id) INTO configs
              FROM ((SELECT config_id, is_active FROM new_rows EXCEPT SELECT config_id, is_active FROM old_rows)
                    UNION
                    (SELECT config_id, is_active FROM old_rows EXCEPT SELECT config_id, is_active FROM new_rows)) k;
        END IF;
        IF configs IS NOT NULL THEN
            PERFORM backup_mgmt.remote_wal_queue_refresh_targets(configs);
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

CREATE TRIGGER remote_wal_queue_targets_delete
    AFTER DELETE ON backup_management.remote_backup_configs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION backup_mgmt.remote_wal_queue_track();
COMMENT ON TRIGGER remote_wal_queue_targets_delete ON backup_management.remote_backup_configs IS
    'Empties the off-site WAL queue of a deleted target';
CREATE TRIGGER remote_wal_queue_targets_truncate
    AFTER TRUNCATE ON backup_management.remote_backup_configs
    FOR EACH STATEMENT EXECUTE FUNCTION backup_mgmt.remote_wal_queue_track();
COMMENT ON TRIGGER remote_wal_queue_targets_truncate ON backup_management.remote_backup_configs IS
    'Empties the off-site WAL queue after every target is removed';

-- The repair leaves the rows another transaction is deleting to it (the worker runs it).
CREATE OR REPLACE FUNCTION backup_mgmt.remote_wal_queue_repair()
    RETURNS bigint LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp
    SET enable_nestloop = off
    SET jit = off
AS $bm$
DECLARE
    removed bigint;
    added bigint;
BEGIN
    -- Rows another transaction is deleting (an operator's, changing a target) are left to it:
    -- waiting for it would hold up the worker, which runs this.
    WITH gone AS (
        SELECT q.system_identifier, q.file_name, q.config_id
          FROM backup_management.remote_wal_queue q
         WHERE NOT EXISTS (SELECT FROM backup_mgmt.remote_wal_queue_of() o
                            WHERE o.system_identifier = q.system_identifier AND o.file_name = q.file_name
                              AND o.config_id = q.config_id AND o.action = q.action
                              AND o.archived_at = q.archived_at)
           FOR UPDATE OF q SKIP LOCKED)
    DELETE FROM backup_management.remote_wal_queue q
     USING gone g
     WHERE q.system_identifier = g.system_identifier AND q.file_name = g.file_name
       AND q.config_id = g.config_id;
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
    'Internal (the worker, every minute, and the triggers after a TRUNCATE): makes backup_management.remote_wal_queue equal to remote_wal_queue_of(); returns how many rows it changed';

REVOKE ALL ON FUNCTION backup_mgmt.remote_wal_queue_refresh_targets(integer[]) FROM PUBLIC;

-- Rows of targets that no longer exist (none, unless a race left one).
SELECT backup_mgmt.remote_wal_queue_repair();
