-- backup_mgmt 0.6.0 -> 0.7.0.  Hand-written; never DROP TABLE here.
--
-- Host-loss drills can be scheduled: schedule_drill takes the drill type (default 'full', as
-- before) and keeps it in the job's options ({"drill_type": ...}), which the drill worker
-- reads.  Drill jobs scheduled under 0.6.0 have no drill type and stay full drills.  No table
-- changes; the function gets its new argument (a function's arguments cannot be altered, so it
-- is dropped and created again, with the grants and comment of a fresh install).

DROP FUNCTION backup_mgmt.schedule_drill(text, text, text, text);
CREATE FUNCTION backup_mgmt.schedule_drill(
    "job_name" TEXT,
    "schedule" TEXT,
    "plan_name" TEXT,
    "time_zone" TEXT DEFAULT NULL,
    "drill_type" TEXT DEFAULT 'full'
) RETURNS bigint
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'schedule_drill_wrapper';
REVOKE ALL ON FUNCTION backup_mgmt.schedule_drill(text, text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION backup_mgmt.schedule_drill(text, text, text, text, text) TO backup_admin;
COMMENT ON FUNCTION backup_mgmt.schedule_drill(text, text, text, text, text) IS
    'Schedules a disaster-recovery drill of an active recovery plan as a job (cron schedule, optional time zone, drill type: full or host_loss); returns the job id';
COMMENT ON COLUMN enterprise_backup.backup_jobs.options IS 'Method options (compression level, parallel jobs, timeout); a drill job''s: its drill_type';
