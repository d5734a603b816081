-- backup_mgmt 0.8.0 -> 0.9.0.  Hand-written; never DROP TABLE here.
--
-- A download's I/O timeout: options.io_timeout_s, the seconds (1 to 1800) a download from an
-- object store may receive nothing before it is asked again from the byte it reached (until
-- 0.8.0 a silent connection held a restore for the 30-minute request timeout).  A new check on
-- an option no earlier version read, and the options column's comment naming the options.  A
-- target that already holds an io_timeout_s outside 1 to 1800 makes the update fail on this
-- check, naming it: correct the option (or remove it) and update again.

ALTER TABLE backup_management.remote_backup_configs
    ADD CONSTRAINT remote_backup_configs_io_timeout_check
    -- CASE: the cast runs only on a number (AND does not promise an order).  1800: the
    -- whole-request timeout (storage::transport::REQUEST_TIMEOUT), past which it never fires.
    CHECK (CASE WHEN NOT options ? 'io_timeout_s' THEN true
                WHEN jsonb_typeof(options -> 'io_timeout_s') = 'number'
                THEN (options ->> 'io_timeout_s')::numeric BETWEEN 1 AND 1800
                ELSE false END);
COMMENT ON COLUMN backup_management.remote_backup_configs.options IS 'Non-secret options (region, part_size_mb, max_rate_mb, io_timeout_s, ca_file, offsite); secret-looking keys are refused';
