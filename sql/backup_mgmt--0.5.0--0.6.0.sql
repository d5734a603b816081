-- backup_mgmt 0.5.0 -> 0.6.0.  Hand-written; never DROP TABLE here.
--
-- Host-loss drills: run_recovery_drill(plan, 'host_loss') brings the cluster back from an
-- off-site target alone (the target's own catalog mirror, the base backup fetched and checked
-- file by file, a temporary server started on it) and records the measured recovery time like
-- any drill.  recovery_drills accepts the type and records the target restored from (a column
-- appended; every existing row and column unchanged).

ALTER TABLE disaster_recovery.recovery_drills
    DROP CONSTRAINT recovery_drills_drill_type_check,
    ADD CONSTRAINT recovery_drills_drill_type_check
        CHECK (drill_type IN ('full', 'partial', 'table_level', 'host_loss')),
    ADD COLUMN restored_from text;
COMMENT ON COLUMN disaster_recovery.recovery_drills.drill_type IS 'full (the newest pg_dump restore-tested), host_loss (the cluster restored from an off-site target alone and started), partial or table_level';
COMMENT ON COLUMN disaster_recovery.recovery_drills.restored_from IS 'host_loss drills: the off-site target (config_name) the cluster was restored from';
COMMENT ON FUNCTION backup_mgmt.run_recovery_drill(text, text) IS
    'Runs a disaster-recovery drill for an active plan (full: restore-tests the newest pg_dump backup of its database; host_loss: restores the cluster from an off-site target alone, reading the target''s own catalog mirror, and starts it) and records the measured recovery time and data-loss window against the plan''s RTO and RPO in recovery_drills';
