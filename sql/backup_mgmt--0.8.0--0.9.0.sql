-- backup_mgmt 0.8.0 -> 0.9.0.  Hand-written; never DROP TABLE here.
--
-- A download's I/O timeout: options.io_timeout_s, the seconds (1 to 1800) a download from an
-- object store may receive nothing before it is asked again from the byte it reached (until
-- 0.8.0 a silent connection held a restore for the 30-minute request timeout).  A new check on
-- an option no earlier version read, and the options column's comment naming the options.

ALTER TABLE backup_management.remote_backup_configs
    ADD CONSTRAINT remote_backup_configs_io_timeout_check
    CHECK (NOT options ? 'io_timeout_s'
           OR (jsonb_typeof(options -> 'io_timeout_s') = 'number'
               AND (options ->> 'io_timeout_s')::numeric BETWEEN 1 AND 1800));
COMMENT ON COLUMN backup_management.remote_backup_configs.options IS 'Non-secret options (region, part_size_mb, max_rate_mb, io_timeout_s, ca_file, offsite); secret-looking keys are refused';
