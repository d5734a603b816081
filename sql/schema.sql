-- backup_mgmt catalog, version 0.3.0 (loaded first, before any function).
--
-- Tables of the original design, in its three schemas, with what real catalogs (pgBackRest `info`,
-- Barman `backup.info`) record on top: the cluster's identity, LSNs and WAL range, compression,
-- checksum algorithm, labels, incremental parents and pin/keep-until fields.
--
-- This file is the schema of a fresh install of the current version.  An existing install is
-- brought to the same shape by sql/backup_mgmt--A--B.sql (hand-written, never edited once
-- released, never DROPping a catalog table); an e2e test checks that both give the same catalog.

CREATE SCHEMA backup_management;
COMMENT ON SCHEMA backup_management IS 'backup_mgmt: the backup catalog (backups, verifications, off-site copies)';
CREATE SCHEMA disaster_recovery;
COMMENT ON SCHEMA disaster_recovery IS 'backup_mgmt: disaster-recovery plans (RTO/RPO) and drill results';
CREATE SCHEMA enterprise_backup;
COMMENT ON SCHEMA enterprise_backup IS 'backup_mgmt: scheduled backup jobs and their executions';

-- The schema named in the control file is created by CREATE EXTENSION itself, before this script.
COMMENT ON SCHEMA backup_mgmt IS 'backup_mgmt: functions of the backup management extension';


------------------------------------------------------------------------------------------------
-- Domains.  Single-column rules live here rather than in table CHECK constraints: PostgreSQL
-- re-reads a table's CHECK constraints from their text on every INSERT and UPDATE statement,
-- while domain constraints are compiled once per backend.  backup_records, the hot table, uses
-- neither: its native trigger checks the same rules (BENCHMARKS.md).
------------------------------------------------------------------------------------------------
CREATE DOMAIN backup_management.database_name AS text
    CONSTRAINT database_name_check CHECK (VALUE <> '' AND octet_length(VALUE) <= 63);
COMMENT ON DOMAIN backup_management.database_name IS 'A PostgreSQL database name: not empty, at most 63 bytes';
CREATE DOMAIN backup_management.backup_type AS text
    CONSTRAINT backup_type_check CHECK (VALUE IN ('full', 'incremental', 'differential', 'wal'));
COMMENT ON DOMAIN backup_management.backup_type IS 'Kind of backup: full, incremental, differential or wal';
CREATE DOMAIN backup_management.backup_method AS text
    CONSTRAINT backup_method_check CHECK (VALUE IN ('pg_dump', 'pg_dump_directory', 'pg_basebackup',
                                                    'pg_dumpall_globals', 'continuous_archiving', 'native_physical'));
COMMENT ON DOMAIN backup_management.backup_method IS 'Program or mechanism that takes a backup';
-- 64 lower-case hex digits.  Not a regular expression: `[0-9a-f]{64}` is slow in PostgreSQL's
-- regex engine (measured: 25% of record throughput when backup_records used it).
CREATE DOMAIN backup_management.sha256_hex AS text
    CONSTRAINT sha256_hex_check CHECK (octet_length(VALUE) = 64 AND ltrim(VALUE, '0123456789abcdef') = '');
COMMENT ON DOMAIN backup_management.sha256_hex IS 'A sha256 digest as 64 lower-case hexadecimal characters';

------------------------------------------------------------------------------------------------
-- backup_management.backup_records
------------------------------------------------------------------------------------------------
CREATE TABLE backup_management.backup_records (
    backup_id          bigserial PRIMARY KEY,
    database_name      text        NOT NULL,
    backup_type        text        NOT NULL,
    backup_method      text        NOT NULL,
    backup_file_path   text        NOT NULL,
    backup_size        bigint      NOT NULL DEFAULT 0,
    start_time         timestamptz NOT NULL DEFAULT now(),
    end_time           timestamptz,
    duration           interval,
    status             text        NOT NULL DEFAULT 'running',
    error_message      text,
    checksum           text,
    checksum_algorithm text        NOT NULL DEFAULT 'sha256',
    compression        text        NOT NULL DEFAULT 'none',
    -- Identity of the cluster the backup was taken from (pg_control_system()), so backups of
    -- different clusters can never be mixed up, e.g. when a fleet shares one bucket.
    system_identifier  bigint,
    pg_version         integer,
    timeline_id        integer,
    start_lsn          pg_lsn,
    stop_lsn           pg_lsn,
    start_wal_segment  text,
    stop_wal_segment   text,
    label              text,
    annotations        jsonb,
    parent_backup_id   bigint REFERENCES backup_management.backup_records (backup_id),
    pinned             boolean     NOT NULL DEFAULT false,
    pin_reason         text,
    keep_until         timestamptz,
    recorded_by        text        NOT NULL DEFAULT session_user,
    created_at         timestamptz NOT NULL DEFAULT now(),
    -- The globals file (roles, tablespaces: pg_dumpall --globals-only) written beside a logical
    -- dump: part of the backup, verified and restore-tested with it.  (0.2.0; last, as an
    -- upgraded catalog has them.)
    globals_file_path  text,
    globals_size       bigint,
    globals_checksum   text,
    -- Who made the backup (0.2.0): 'worker' (the background worker, in its own layout) or
    -- 'registered' (recorded with the record functions; its path is input, checked when
    -- recorded and again when used).
    origin             text        NOT NULL DEFAULT 'registered',
    -- When retention expired the record (0.2.0); set exactly when status is 'expired' (the row
    -- trigger keeps them in step).  A column of its own so that the index of live records can
    -- leave expired ones out while completing a backup stays a HOT update.
    expired_at         timestamptz
    -- Every column's rule and the row rule (finished records have an end time, failed ones an
    -- error, only incremental and differential backups a parent) are enforced by the native
    -- trigger backup_records_check, created by finalize.sql once its function exists.  Not domains
    -- or CHECK constraints, which PostgreSQL prepares again on every statement: this table is
    -- written on every backup and every archived WAL segment.
)
-- Room on each page for the completing UPDATE's new row version, so that it is a HOT update.
WITH (fillfactor = 90);
CREATE INDEX idx_backup_records_database ON backup_management.backup_records (database_name, start_time DESC);
-- The design indexes (status, start_time DESC).  An index on status (or on any column that
-- completion changes) makes every completion a non-HOT update that writes a new entry into every
-- index of the table; measured, that halves record throughput (BENCHMARKS.md) and bloats the
-- indexes of a catalog that also ingests a row per archived WAL segment.  Status questions are
-- about recent backups ("what is running", "what failed this week"), which an index on
-- start_time answers with a short backward scan and a filter.
CREATE INDEX idx_backup_records_start ON backup_management.backup_records (start_time DESC);
CREATE INDEX idx_backup_records_type ON backup_management.backup_records (backup_type, start_time DESC);
CREATE INDEX idx_backup_records_parent ON backup_management.backup_records (parent_backup_id)
    WHERE parent_backup_id IS NOT NULL;
-- For record_backup_start's check that a registered path overlaps no other backup's files (the
-- path itself, its ancestors, everything below it): equality and prefix ranges.  Completion
-- never changes a path, so its update stays HOT.
CREATE INDEX idx_backup_records_path ON backup_management.backup_records (backup_file_path text_pattern_ops);
CREATE INDEX idx_backup_records_globals_path ON backup_management.backup_records (globals_file_path text_pattern_ops)
    WHERE globals_file_path IS NOT NULL;
-- The live records (everything not expired), newest first per database: what every read path
-- (verification upkeep, retention, recovery plans, recovery_status, metrics) looks at, so that
-- years of expired history cost them nothing.
CREATE INDEX idx_backup_records_live ON backup_management.backup_records (database_name, start_time DESC)
    WHERE expired_at IS NULL;

COMMENT ON TABLE backup_management.backup_records IS 'One row per backup: what, where, when, how big, its checksum and its outcome';
COMMENT ON COLUMN backup_management.backup_records.backup_id IS 'Backup identifier, returned by record_backup_start()';
COMMENT ON COLUMN backup_management.backup_records.database_name IS 'Database backed up (for physical and WAL backups: the database the job ran from)';
COMMENT ON COLUMN backup_management.backup_records.backup_type IS 'full, incremental, differential or wal';
COMMENT ON COLUMN backup_management.backup_records.backup_method IS 'Program or mechanism that produced the backup';
COMMENT ON COLUMN backup_management.backup_records.backup_file_path IS 'Absolute path of the backup file or directory';
COMMENT ON COLUMN backup_management.backup_records.backup_size IS 'Size in bytes as written (after compression)';
COMMENT ON COLUMN backup_management.backup_records.start_time IS 'When the backup started (transaction time of record_backup_start)';
COMMENT ON COLUMN backup_management.backup_records.end_time IS 'When the backup completed or failed';
COMMENT ON COLUMN backup_management.backup_records.duration IS 'end_time - start_time';
COMMENT ON COLUMN backup_management.backup_records.status IS 'running, completed, failed, or expired (removed by retention, kept for audit)';
COMMENT ON COLUMN backup_management.backup_records.error_message IS 'Why the backup failed';
COMMENT ON COLUMN backup_management.backup_records.checksum IS 'Lower-case hex digest of the backup file (see checksum_algorithm); NULL until computed';
COMMENT ON COLUMN backup_management.backup_records.checksum_algorithm IS 'Digest algorithm of checksum';
COMMENT ON COLUMN backup_management.backup_records.compression IS 'Compression of the stored backup: none, gzip, lz4 or zstd';
COMMENT ON COLUMN backup_management.backup_records.system_identifier IS 'pg_control_system().system_identifier of the cluster backed up';
COMMENT ON COLUMN backup_management.backup_records.pg_version IS 'server_version_num of the cluster backed up';
COMMENT ON COLUMN backup_management.backup_records.timeline_id IS 'Timeline at backup start (physical backups)';
COMMENT ON COLUMN backup_management.backup_records.start_lsn IS 'WAL location where the backup started (physical backups)';
COMMENT ON COLUMN backup_management.backup_records.stop_lsn IS 'WAL location where the backup stopped (physical backups)';
COMMENT ON COLUMN backup_management.backup_records.start_wal_segment IS 'First WAL segment needed to make the backup consistent';
COMMENT ON COLUMN backup_management.backup_records.stop_wal_segment IS 'Last WAL segment needed to make the backup consistent';
COMMENT ON COLUMN backup_management.backup_records.label IS 'Free-form label given by the operator';
COMMENT ON COLUMN backup_management.backup_records.annotations IS 'Operator annotations (JSON)';
COMMENT ON COLUMN backup_management.backup_records.parent_backup_id IS 'Parent backup of an incremental or differential backup';
COMMENT ON COLUMN backup_management.backup_records.globals_file_path IS 'The globals file (roles and tablespaces, pg_dumpall --globals-only) written beside a logical dump, part of the backup';
COMMENT ON COLUMN backup_management.backup_records.globals_size IS 'Size in bytes of the globals file as written';
COMMENT ON COLUMN backup_management.backup_records.globals_checksum IS 'sha256 of the globals file as written (lower-case hex)';
COMMENT ON COLUMN backup_management.backup_records.origin IS 'worker (made by the background worker in its own layout) or registered (recorded with record_backup_start; used only as documented in docs/security.md)';
COMMENT ON COLUMN backup_management.backup_records.expired_at IS 'When retention expired the backup (status expired); NULL otherwise';
COMMENT ON COLUMN backup_management.backup_records.pinned IS 'Pinned backups are never removed by retention';
COMMENT ON COLUMN backup_management.backup_records.pin_reason IS 'Why the backup is pinned (e.g. legal hold)';
COMMENT ON COLUMN backup_management.backup_records.keep_until IS 'Retention never removes the backup before this time';
COMMENT ON COLUMN backup_management.backup_records.recorded_by IS 'Session user that recorded the backup';
COMMENT ON COLUMN backup_management.backup_records.created_at IS 'When the row was inserted';
COMMENT ON SEQUENCE backup_management.backup_records_backup_id_seq IS 'Generates backup_records.backup_id';

------------------------------------------------------------------------------------------------
-- backup_management.backup_verifications
------------------------------------------------------------------------------------------------
CREATE TABLE backup_management.backup_verifications (
    verification_id     bigserial PRIMARY KEY,
    backup_id           bigint      NOT NULL
        REFERENCES backup_management.backup_records (backup_id) ON DELETE CASCADE,
    verification_type   text        NOT NULL
        CONSTRAINT backup_verifications_type_check
        CHECK (verification_type IN ('checksum', 'restore_test', 'integrity_check', 'pg_verifybackup')),
    verification_status text        NOT NULL
        CONSTRAINT backup_verifications_status_check CHECK (verification_status IN ('passed', 'failed')),
    verification_result jsonb       NOT NULL DEFAULT '{}'::jsonb,
    duration            interval,
    verified_at         timestamptz NOT NULL DEFAULT now(),
    verified_by         text        NOT NULL DEFAULT session_user
);
CREATE INDEX idx_backup_verifications_backup ON backup_management.backup_verifications (backup_id, verified_at DESC);
CREATE INDEX idx_backup_verifications_status ON backup_management.backup_verifications (verification_status, verified_at DESC);

COMMENT ON TABLE backup_management.backup_verifications IS 'Every verification of a backup (checksum, restore test, pg_verifybackup) and its outcome';
COMMENT ON COLUMN backup_management.backup_verifications.verification_id IS 'Verification identifier';
COMMENT ON COLUMN backup_management.backup_verifications.backup_id IS 'Backup verified';
COMMENT ON COLUMN backup_management.backup_verifications.verification_type IS 'checksum, restore_test, integrity_check or pg_verifybackup';
COMMENT ON COLUMN backup_management.backup_verifications.verification_status IS 'passed or failed';
COMMENT ON COLUMN backup_management.backup_verifications.verification_result IS 'Details: expected and actual digests, bytes read, failing file, reason';
COMMENT ON COLUMN backup_management.backup_verifications.duration IS 'How long the verification took';
COMMENT ON COLUMN backup_management.backup_verifications.verified_at IS 'When the verification finished';
COMMENT ON COLUMN backup_management.backup_verifications.verified_by IS 'Session user (or worker) that ran the verification';
COMMENT ON SEQUENCE backup_management.backup_verifications_verification_id_seq IS 'Generates backup_verifications.verification_id';

------------------------------------------------------------------------------------------------
-- backup_management.remote_backup_configs: off-site targets.  No secret is ever stored here:
-- credentials_ref names where the server finds it (an environment variable of the server, or a
-- file readable only by the server's OS user).
------------------------------------------------------------------------------------------------
CREATE TABLE backup_management.remote_backup_configs (
    config_id          serial PRIMARY KEY,
    config_name        text        NOT NULL UNIQUE,
    database_name      text        NOT NULL
        CONSTRAINT remote_backup_configs_database_name_check CHECK (database_name <> ''),
    remote_type        text        NOT NULL
        CONSTRAINT remote_backup_configs_remote_type_check
        CHECK (remote_type IN ('s3', 'azure', 'filesystem', 'sftp', 'rsync')),
    remote_endpoint    text        NOT NULL,
    remote_path        text        NOT NULL,
    credentials_ref    text
        CONSTRAINT remote_backup_configs_credentials_ref_check
        CHECK (credentials_ref ~ '^(env:[A-Za-z_][A-Za-z0-9_]*|file:/.+)$'),
    encryption_key_ref text
        CONSTRAINT remote_backup_configs_encryption_key_ref_check
        CHECK (encryption_key_ref ~ '^(env:[A-Za-z_][A-Za-z0-9_]*|file:/.+)$'),
    options            jsonb       NOT NULL DEFAULT '{}'::jsonb
        CONSTRAINT remote_backup_configs_options_check CHECK (jsonb_typeof(options) = 'object'),
    is_active          boolean     NOT NULL DEFAULT true,
    sync_schedule      text,
    last_sync_at       timestamptz,
    sync_status        text
        CONSTRAINT remote_backup_configs_sync_status_check
        CHECK (sync_status IN ('idle', 'requested', 'syncing', 'completed', 'failed')),
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    -- Who last set the target (0.2.0), written by the trigger remote_backup_configs_check: a
    -- target configured by a role that is not a superuser is held to the limits a superuser
    -- set (backup_mgmt.offsite_endpoints and friends), when written and whenever used.
    configured_by      text        NOT NULL DEFAULT current_user,
    configured_by_superuser boolean NOT NULL DEFAULT false
);
-- A defence in depth against pasting a credential into options: keys that name secrets are refused.
ALTER TABLE backup_management.remote_backup_configs
    ADD CONSTRAINT remote_backup_configs_options_no_secret_check
    CHECK (NOT options ?| ARRAY['password', 'secret', 'secret_access_key', 'access_key_id',
                                'aws_secret_access_key', 'aws_access_key_id', 'token',
                                'session_token', 'private_key', 'passphrase', 'credentials']);

COMMENT ON TABLE backup_management.remote_backup_configs IS 'Off-site copy targets; credentials are held by reference only, never in this table';
COMMENT ON COLUMN backup_management.remote_backup_configs.config_id IS 'Target identifier';
COMMENT ON COLUMN backup_management.remote_backup_configs.config_name IS 'Unique name of the target';
COMMENT ON COLUMN backup_management.remote_backup_configs.database_name IS 'Database whose backups are copied';
COMMENT ON COLUMN backup_management.remote_backup_configs.remote_type IS 's3, azure, filesystem, sftp or rsync';
COMMENT ON COLUMN backup_management.remote_backup_configs.remote_endpoint IS 'Endpoint (URL of the object store, host, or mount point)';
COMMENT ON COLUMN backup_management.remote_backup_configs.remote_path IS 'Bucket/prefix, container/prefix or directory on the target';
COMMENT ON COLUMN backup_management.remote_backup_configs.credentials_ref IS 'Where the secret lives: env:VARIABLE of the server, or file:/path readable only by the server''s OS user';
COMMENT ON COLUMN backup_management.remote_backup_configs.encryption_key_ref IS 'Where the encryption key lives (same forms as credentials_ref)';
COMMENT ON COLUMN backup_management.remote_backup_configs.options IS 'Non-secret options (region, part_size_mb, max_rate_mb, io_timeout_s, ca_file, offsite); secret-looking keys are refused';
COMMENT ON COLUMN backup_management.remote_backup_configs.is_active IS 'Inactive targets are not synced';
COMMENT ON COLUMN backup_management.remote_backup_configs.sync_schedule IS 'Cron expression for copying new backups';
COMMENT ON COLUMN backup_management.remote_backup_configs.last_sync_at IS 'When the last sync finished';
COMMENT ON COLUMN backup_management.remote_backup_configs.sync_status IS 'idle, requested (sync_remote_now), syncing, completed or failed (the last attempt of a copy failed)';
COMMENT ON COLUMN backup_management.remote_backup_configs.created_at IS 'When the target was defined';
COMMENT ON COLUMN backup_management.remote_backup_configs.updated_at IS 'When the target was last changed';
COMMENT ON COLUMN backup_management.remote_backup_configs.configured_by IS 'The role that last set the target''s endpoint, path, credentials or options (set by the trigger)';
COMMENT ON COLUMN backup_management.remote_backup_configs.configured_by_superuser IS 'Whether that role was a superuser; if not, the target is held to backup_mgmt.offsite_endpoints, offsite_allow_http, credentials_env_prefix and credentials_directory';
COMMENT ON SEQUENCE backup_management.remote_backup_configs_config_id_seq IS 'Generates remote_backup_configs.config_id';

------------------------------------------------------------------------------------------------
-- backup_management.remote_backup_records: every copy attempt to an off-site target.
------------------------------------------------------------------------------------------------
CREATE TABLE backup_management.remote_backup_records (
    record_id         bigserial PRIMARY KEY,
    backup_id         bigint      NOT NULL REFERENCES backup_management.backup_records (backup_id),
    config_id         integer     NOT NULL REFERENCES backup_management.remote_backup_configs (config_id),
    remote_file_path  text        NOT NULL,
    sync_start_time   timestamptz NOT NULL DEFAULT now(),
    sync_end_time     timestamptz,
    sync_status       text        NOT NULL
        CONSTRAINT remote_backup_records_sync_status_check
        CHECK (sync_status IN ('pending', 'syncing', 'completed', 'failed', 'expired')),
    attempt           integer     NOT NULL DEFAULT 1
        CONSTRAINT remote_backup_records_attempt_check CHECK (attempt >= 1),
    bytes_transferred bigint
        CONSTRAINT remote_backup_records_bytes_check CHECK (bytes_transferred >= 0),
    remote_checksum   backup_management.sha256_hex,
    error_message     text,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_remote_backup_records_backup ON backup_management.remote_backup_records (backup_id);
CREATE INDEX idx_remote_backup_records_config ON backup_management.remote_backup_records (config_id, sync_start_time DESC);

COMMENT ON TABLE backup_management.remote_backup_records IS 'Each attempt to copy a backup to an off-site target, with its verified outcome';
COMMENT ON COLUMN backup_management.remote_backup_records.record_id IS 'Copy attempt identifier';
COMMENT ON COLUMN backup_management.remote_backup_records.backup_id IS 'Backup copied';
COMMENT ON COLUMN backup_management.remote_backup_records.config_id IS 'Target copied to';
COMMENT ON COLUMN backup_management.remote_backup_records.remote_file_path IS 'Object key or path on the target';
COMMENT ON COLUMN backup_management.remote_backup_records.sync_start_time IS 'When the attempt started';
COMMENT ON COLUMN backup_management.remote_backup_records.sync_end_time IS 'When the attempt ended';
COMMENT ON COLUMN backup_management.remote_backup_records.sync_status IS 'pending, syncing, completed, failed, or expired (removed by retention)';
COMMENT ON COLUMN backup_management.remote_backup_records.attempt IS 'Attempt number (retries with backoff)';
COMMENT ON COLUMN backup_management.remote_backup_records.bytes_transferred IS 'Bytes uploaded';
COMMENT ON COLUMN backup_management.remote_backup_records.remote_checksum IS 'sha256 of the copy as verified after it landed';
COMMENT ON COLUMN backup_management.remote_backup_records.error_message IS 'Why the attempt failed';
COMMENT ON COLUMN backup_management.remote_backup_records.created_at IS 'When the row was inserted';
COMMENT ON SEQUENCE backup_management.remote_backup_records_record_id_seq IS 'Generates remote_backup_records.record_id';

------------------------------------------------------------------------------------------------
-- disaster_recovery.recovery_plans and recovery_drills
------------------------------------------------------------------------------------------------
CREATE TABLE disaster_recovery.recovery_plans (
    plan_id            serial PRIMARY KEY,
    plan_name          text        NOT NULL UNIQUE,
    database_name      text        NOT NULL
        CONSTRAINT recovery_plans_database_name_check CHECK (database_name <> ''),
    rto_minutes        integer     NOT NULL CONSTRAINT recovery_plans_rto_check CHECK (rto_minutes > 0),
    rpo_minutes        integer     NOT NULL CONSTRAINT recovery_plans_rpo_check CHECK (rpo_minutes >= 0),
    backup_strategy    text        NOT NULL,
    recovery_procedure text        NOT NULL,
    contact_person     text,
    contact_phone      text,
    is_active          boolean     NOT NULL DEFAULT true,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_recovery_plans_database ON disaster_recovery.recovery_plans (database_name) WHERE is_active;

COMMENT ON TABLE disaster_recovery.recovery_plans IS 'Disaster-recovery plan per database: recovery time and point objectives';
COMMENT ON COLUMN disaster_recovery.recovery_plans.plan_id IS 'Plan identifier';
COMMENT ON COLUMN disaster_recovery.recovery_plans.plan_name IS 'Unique plan name';
COMMENT ON COLUMN disaster_recovery.recovery_plans.database_name IS 'Database the plan protects';
COMMENT ON COLUMN disaster_recovery.recovery_plans.rto_minutes IS 'Recovery time objective, minutes';
COMMENT ON COLUMN disaster_recovery.recovery_plans.rpo_minutes IS 'Recovery point objective (acceptable data loss), minutes';
COMMENT ON COLUMN disaster_recovery.recovery_plans.backup_strategy IS 'How the database is backed up';
COMMENT ON COLUMN disaster_recovery.recovery_plans.recovery_procedure IS 'How it is recovered';
COMMENT ON COLUMN disaster_recovery.recovery_plans.contact_person IS 'Who to call';
COMMENT ON COLUMN disaster_recovery.recovery_plans.contact_phone IS 'Their phone number';
COMMENT ON COLUMN disaster_recovery.recovery_plans.is_active IS 'Inactive plans are not drilled or reported';
COMMENT ON COLUMN disaster_recovery.recovery_plans.created_at IS 'When the plan was created';
COMMENT ON COLUMN disaster_recovery.recovery_plans.updated_at IS 'When the plan was last changed';
COMMENT ON SEQUENCE disaster_recovery.recovery_plans_plan_id_seq IS 'Generates recovery_plans.plan_id';

CREATE TABLE disaster_recovery.recovery_drills (
    drill_id              bigserial PRIMARY KEY,
    plan_id               integer     NOT NULL REFERENCES disaster_recovery.recovery_plans (plan_id),
    backup_id             bigint      REFERENCES backup_management.backup_records (backup_id) ON DELETE SET NULL,
    drill_date            timestamptz NOT NULL DEFAULT now(),
    drill_type            text        NOT NULL
        CONSTRAINT recovery_drills_drill_type_check CHECK (drill_type IN ('full', 'partial', 'table_level', 'host_loss')),
    recovery_time_minutes integer
        CONSTRAINT recovery_drills_recovery_time_check CHECK (recovery_time_minutes >= 0),
    data_loss_minutes     integer
        CONSTRAINT recovery_drills_data_loss_check CHECK (data_loss_minutes >= 0),
    recovery_time         interval,
    data_loss_window      interval,
    status                text        NOT NULL
        CONSTRAINT recovery_drills_status_check CHECK (status IN ('success', 'failed', 'partial')),
    issues                text,
    lessons_learned       text,
    conducted_by          text        NOT NULL DEFAULT session_user,
    created_at            timestamptz NOT NULL DEFAULT now(),
    restored_from         text
);
CREATE INDEX idx_recovery_drills_plan ON disaster_recovery.recovery_drills (plan_id, drill_date DESC);
CREATE INDEX idx_recovery_drills_backup ON disaster_recovery.recovery_drills (backup_id) WHERE backup_id IS NOT NULL;

COMMENT ON TABLE disaster_recovery.recovery_drills IS 'Disaster-recovery drills: measured recovery time and data-loss window against the plan';
COMMENT ON COLUMN disaster_recovery.recovery_drills.drill_id IS 'Drill identifier';
COMMENT ON COLUMN disaster_recovery.recovery_drills.plan_id IS 'Plan drilled';
COMMENT ON COLUMN disaster_recovery.recovery_drills.backup_id IS 'Backup restored in the drill';
COMMENT ON COLUMN disaster_recovery.recovery_drills.drill_date IS 'When the drill ran';
COMMENT ON COLUMN disaster_recovery.recovery_drills.drill_type IS 'full (the newest pg_dump restore-tested), host_loss (the cluster restored from an off-site target alone and started), partial or table_level';
COMMENT ON COLUMN disaster_recovery.recovery_drills.recovery_time_minutes IS 'Measured recovery time, whole minutes (compare with rto_minutes)';
COMMENT ON COLUMN disaster_recovery.recovery_drills.data_loss_minutes IS 'Measured data-loss window, whole minutes (compare with rpo_minutes)';
COMMENT ON COLUMN disaster_recovery.recovery_drills.recovery_time IS 'Measured recovery time, exact';
COMMENT ON COLUMN disaster_recovery.recovery_drills.data_loss_window IS 'Measured data-loss window, exact';
COMMENT ON COLUMN disaster_recovery.recovery_drills.status IS 'success, failed or partial';
COMMENT ON COLUMN disaster_recovery.recovery_drills.issues IS 'Problems met during the drill';
COMMENT ON COLUMN disaster_recovery.recovery_drills.lessons_learned IS 'What to change';
COMMENT ON COLUMN disaster_recovery.recovery_drills.conducted_by IS 'Who ran the drill';
COMMENT ON COLUMN disaster_recovery.recovery_drills.created_at IS 'When the row was inserted';
COMMENT ON COLUMN disaster_recovery.recovery_drills.restored_from IS 'host_loss drills: the off-site target (config_name) the cluster was restored from';
COMMENT ON SEQUENCE disaster_recovery.recovery_drills_drill_id_seq IS 'Generates recovery_drills.drill_id';

------------------------------------------------------------------------------------------------
-- backup_management.retention_policies: what retention keeps.  Safety rules (newest verified
-- backup, base backups for the recovery window, pins, chains) apply on top of any policy.
------------------------------------------------------------------------------------------------
CREATE TABLE backup_management.retention_policies (
    policy_name     text        PRIMARY KEY
        CONSTRAINT retention_policies_name_check CHECK (policy_name <> ''),
    keep_last       integer
        CONSTRAINT retention_policies_keep_last_check CHECK (keep_last IS NULL OR keep_last > 0),
    keep_daily      integer     NOT NULL DEFAULT 30
        CONSTRAINT retention_policies_daily_check CHECK (keep_daily >= 0),
    keep_weekly     integer     NOT NULL DEFAULT 12
        CONSTRAINT retention_policies_weekly_check CHECK (keep_weekly >= 0),
    keep_monthly    integer     NOT NULL DEFAULT 12
        CONSTRAINT retention_policies_monthly_check CHECK (keep_monthly >= 0),
    keep_yearly     integer     NOT NULL DEFAULT 7
        CONSTRAINT retention_policies_yearly_check CHECK (keep_yearly >= 0),
    recovery_window interval
        CONSTRAINT retention_policies_window_check CHECK (recovery_window IS NULL OR recovery_window > interval '0'),
    time_zone       text        NOT NULL DEFAULT 'UTC',
    created_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE backup_management.retention_policies IS 'Retention policies: calendar (grandfather-father-son), count and recovery-window rules; the row ''default'' governs jobs without their own policy and backups recorded by no job';
COMMENT ON COLUMN backup_management.retention_policies.policy_name IS 'Policy name (jobs refer to it)';
COMMENT ON COLUMN backup_management.retention_policies.keep_last IS 'Keep the newest N backups (NULL: no count rule)';
COMMENT ON COLUMN backup_management.retention_policies.keep_daily IS 'Keep the newest backup of each of the last N calendar days';
COMMENT ON COLUMN backup_management.retention_policies.keep_weekly IS 'Keep the newest backup of each of the last N ISO weeks';
COMMENT ON COLUMN backup_management.retention_policies.keep_monthly IS 'Keep the newest backup of each of the last N calendar months';
COMMENT ON COLUMN backup_management.retention_policies.keep_yearly IS 'Keep the newest backup of each of the last N calendar years';
COMMENT ON COLUMN backup_management.retention_policies.recovery_window IS 'Keep every backup (and every base backup, whatever the scope) needed to restore any point this far back (NULL: none)';
COMMENT ON COLUMN backup_management.retention_policies.time_zone IS 'IANA time zone the calendar rules count days, weeks, months and years in';
COMMENT ON COLUMN backup_management.retention_policies.created_at IS 'When the policy was created';
-- The design's rule: daily 30 days, weekly 12 weeks, monthly 12 months, yearly 7 years; and a
-- week of point-in-time recovery.
INSERT INTO backup_management.retention_policies (policy_name, keep_daily, keep_weekly, keep_monthly, keep_yearly, recovery_window)
VALUES ('default', 30, 12, 12, 7, interval '7 days');

------------------------------------------------------------------------------------------------
-- enterprise_backup.backup_jobs and backup_job_executions.  There is deliberately no free-form
-- command column: a job can only take a backup of a named kind.
------------------------------------------------------------------------------------------------
CREATE TABLE enterprise_backup.backup_jobs (
    job_id          bigserial PRIMARY KEY,
    job_name        text        NOT NULL UNIQUE
        CONSTRAINT backup_jobs_job_name_check CHECK (job_name <> ''),
    database_name   backup_management.database_name NOT NULL,
    backup_type     backup_management.backup_type   NOT NULL,
    backup_method   backup_management.backup_method NOT NULL DEFAULT 'pg_dump',
    schedule_cron   text        NOT NULL,
    timezone        text,
    options         jsonb       NOT NULL DEFAULT '{}'::jsonb
        CONSTRAINT backup_jobs_options_check CHECK (jsonb_typeof(options) = 'object'),
    -- NULL: the 'default' policy.
    retention_policy text REFERENCES backup_management.retention_policies (policy_name)
        ON UPDATE CASCADE ON DELETE RESTRICT,
    is_active       boolean     NOT NULL DEFAULT true,
    last_run_at     timestamptz,
    next_run_at     timestamptz,
    run_requested_at timestamptz,
    -- A job either takes a backup or runs a disaster-recovery drill of a plan.
    job_kind        text        NOT NULL DEFAULT 'backup'
        CONSTRAINT backup_jobs_job_kind_check CHECK (job_kind IN ('backup', 'drill')),
    plan_id         integer REFERENCES disaster_recovery.recovery_plans (plan_id) ON DELETE CASCADE,
    CONSTRAINT backup_jobs_plan_check CHECK ((job_kind = 'drill') = (plan_id IS NOT NULL)),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_backup_jobs_next_run ON enterprise_backup.backup_jobs (next_run_at) WHERE is_active;
CREATE INDEX idx_backup_jobs_run_requested ON enterprise_backup.backup_jobs (run_requested_at) WHERE run_requested_at IS NOT NULL;

COMMENT ON TABLE enterprise_backup.backup_jobs IS 'Scheduled backup jobs, run by the backup_mgmt background worker';
COMMENT ON COLUMN enterprise_backup.backup_jobs.job_id IS 'Job identifier';
COMMENT ON COLUMN enterprise_backup.backup_jobs.job_name IS 'Unique job name';
COMMENT ON COLUMN enterprise_backup.backup_jobs.database_name IS 'Database to back up';
COMMENT ON COLUMN enterprise_backup.backup_jobs.backup_type IS 'full, incremental, differential or wal';
COMMENT ON COLUMN enterprise_backup.backup_jobs.backup_method IS 'How the backup is taken (no free-form commands exist)';
COMMENT ON COLUMN enterprise_backup.backup_jobs.schedule_cron IS 'Cron expression (5 or 6 fields, or @daily and friends)';
COMMENT ON COLUMN enterprise_backup.backup_jobs.job_kind IS 'backup (takes a backup) or drill (runs run_recovery_drill for plan_id)';
COMMENT ON COLUMN enterprise_backup.backup_jobs.plan_id IS 'The recovery plan a drill job drills (NULL for backup jobs)';
COMMENT ON COLUMN enterprise_backup.backup_jobs.run_requested_at IS 'Set by run_job_now(): the worker runs the job once as soon as it can, then clears it';
COMMENT ON COLUMN enterprise_backup.backup_jobs.timezone IS 'IANA time zone of the schedule; NULL means the server''s TimeZone';
COMMENT ON COLUMN enterprise_backup.backup_jobs.options IS 'Method options (compression level, parallel jobs, timeout); a drill job''s: its drill_type';
COMMENT ON COLUMN enterprise_backup.backup_jobs.retention_policy IS 'Retention policy applied after each successful backup of the job (NULL: the default policy)';
COMMENT ON COLUMN enterprise_backup.backup_jobs.is_active IS 'Inactive jobs are not run';
COMMENT ON COLUMN enterprise_backup.backup_jobs.last_run_at IS 'When the job last started';
COMMENT ON COLUMN enterprise_backup.backup_jobs.next_run_at IS 'When the job runs next';
COMMENT ON COLUMN enterprise_backup.backup_jobs.created_at IS 'When the job was created';
COMMENT ON COLUMN enterprise_backup.backup_jobs.updated_at IS 'When the job was last changed';
COMMENT ON SEQUENCE enterprise_backup.backup_jobs_job_id_seq IS 'Generates backup_jobs.job_id';

CREATE TABLE enterprise_backup.backup_job_executions (
    execution_id         bigserial PRIMARY KEY,
    job_id               bigint      NOT NULL REFERENCES enterprise_backup.backup_jobs (job_id) ON DELETE CASCADE,
    backup_id            bigint      REFERENCES backup_management.backup_records (backup_id) ON DELETE SET NULL,
    scheduled_for        timestamptz,
    execution_start_time timestamptz NOT NULL DEFAULT now(),
    execution_end_time   timestamptz,
    execution_status     text        NOT NULL
        CONSTRAINT backup_job_executions_status_check
        CHECK (execution_status IN ('running', 'completed', 'failed', 'skipped')),
    error_message        text,
    phase                text,
    bytes_written        bigint      NOT NULL DEFAULT 0,
    progress_updated_at  timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    -- One execution per scheduled slot: a restart can never run the same slot twice.
    CONSTRAINT backup_job_executions_slot_key UNIQUE (job_id, scheduled_for)
);
CREATE INDEX idx_backup_job_executions_job ON enterprise_backup.backup_job_executions (job_id, execution_start_time DESC);
CREATE INDEX idx_backup_job_executions_status ON enterprise_backup.backup_job_executions (execution_status, execution_start_time DESC);
CREATE INDEX idx_backup_job_executions_backup ON enterprise_backup.backup_job_executions (backup_id) WHERE backup_id IS NOT NULL;

COMMENT ON TABLE enterprise_backup.backup_job_executions IS 'Each run of a backup job, linking the job to the backup it produced';
COMMENT ON COLUMN enterprise_backup.backup_job_executions.execution_id IS 'Execution identifier';
COMMENT ON COLUMN enterprise_backup.backup_job_executions.job_id IS 'Job run';
COMMENT ON COLUMN enterprise_backup.backup_job_executions.backup_id IS 'Backup produced';
COMMENT ON COLUMN enterprise_backup.backup_job_executions.scheduled_for IS 'Scheduled slot this run serves (NULL for manual runs)';
COMMENT ON COLUMN enterprise_backup.backup_job_executions.execution_start_time IS 'When the run started';
COMMENT ON COLUMN enterprise_backup.backup_job_executions.execution_end_time IS 'When the run ended';
COMMENT ON COLUMN enterprise_backup.backup_job_executions.execution_status IS 'running, completed, failed or skipped';
COMMENT ON COLUMN enterprise_backup.backup_job_executions.error_message IS 'Why the run failed (the program''s stderr)';
COMMENT ON COLUMN enterprise_backup.backup_job_executions.created_at IS 'When the row was inserted';
COMMENT ON COLUMN enterprise_backup.backup_job_executions.phase IS 'What a running backup is doing (see backup_mgmt.backup_progress)';
COMMENT ON COLUMN enterprise_backup.backup_job_executions.bytes_written IS 'Bytes written so far (after compression); the final size when finished';
COMMENT ON COLUMN enterprise_backup.backup_job_executions.progress_updated_at IS 'When the worker last reported progress (about every second)';

-- Running backups, in the style of pg_stat_progress_basebackup.
CREATE VIEW backup_mgmt.backup_progress AS
SELECT e.execution_id,
       e.job_id,
       j.job_name,
       j.database_name,
       j.backup_method,
       e.backup_id,
       r.backup_file_path,
       e.phase,
       e.bytes_written,
       e.execution_start_time AS started_at,
       now() - e.execution_start_time AS elapsed,
       e.progress_updated_at
  FROM enterprise_backup.backup_job_executions e
  JOIN enterprise_backup.backup_jobs j USING (job_id)
  LEFT JOIN backup_management.backup_records r USING (backup_id)
 WHERE e.execution_status = 'running';
COMMENT ON VIEW backup_mgmt.backup_progress IS 'Backups the worker is taking now: job, phase, bytes written, elapsed time (updated about every second)';
COMMENT ON SEQUENCE enterprise_backup.backup_job_executions_execution_id_seq IS 'Generates backup_job_executions.execution_id';

------------------------------------------------------------------------------------------------
-- backup_management.wal_archive: every file the archive module archived, ingested by the worker
-- from the archive's own manifest (the archiver has no database connection).
------------------------------------------------------------------------------------------------
CREATE TABLE backup_management.wal_archive (
    system_identifier bigint      NOT NULL,
    file_name         text        NOT NULL,
    timeline_id       integer,
    segment_number    bigint,
    file_path         text        NOT NULL,
    file_size         bigint      NOT NULL,
    checksum          text        NOT NULL,
    archived_at       timestamptz NOT NULL,
    ingested_at       timestamptz NOT NULL DEFAULT now(),
    expired_at        timestamptz,
    first_xact_at     timestamptz,
    last_xact_at      timestamptz,
    xact_scanned      boolean     NOT NULL DEFAULT false,
    segment_size      bigint,
    PRIMARY KEY (system_identifier, file_name)
);
CREATE INDEX idx_wal_archive_segment ON backup_management.wal_archive (system_identifier, timeline_id, segment_number);
-- The worker looks for segments to scan every 2 s; without this it would read the whole table.
CREATE INDEX idx_wal_archive_unscanned ON backup_management.wal_archive (archived_at) WHERE NOT xact_scanned;
COMMENT ON TABLE backup_management.wal_archive IS 'WAL segments and history files archived by the backup_mgmt archive module (archive_library), one row each';
COMMENT ON COLUMN backup_management.wal_archive.system_identifier IS 'Cluster the file belongs to (pg_control_system())';
COMMENT ON COLUMN backup_management.wal_archive.file_name IS 'WAL file name as PostgreSQL names it';
COMMENT ON COLUMN backup_management.wal_archive.timeline_id IS 'Timeline of a segment (NULL for other files)';
COMMENT ON COLUMN backup_management.wal_archive.segment_number IS 'Position of a segment on its timeline, counted in segments of segment_size (NULL for other files)';
COMMENT ON COLUMN backup_management.wal_archive.segment_size IS 'WAL segment size in bytes of the cluster that wrote the segment (initdb --wal-segsize); NULL for other files';
COMMENT ON COLUMN backup_management.wal_archive.file_path IS 'Where the archived copy is';
COMMENT ON COLUMN backup_management.wal_archive.file_size IS 'Size in bytes';
COMMENT ON COLUMN backup_management.wal_archive.checksum IS 'sha256 of the archived copy, computed while it was written';
COMMENT ON COLUMN backup_management.wal_archive.archived_at IS 'When the archive module made it durable';
COMMENT ON COLUMN backup_management.wal_archive.ingested_at IS 'When the worker recorded it here';
COMMENT ON COLUMN backup_management.wal_archive.first_xact_at IS 'Time of the first commit or abort recorded in the segment (pg_waldump), NULL when it has none or is not scanned yet';
COMMENT ON COLUMN backup_management.wal_archive.last_xact_at IS 'Time of the last commit or abort recorded in the segment: recovery to a time needs a transaction after it in the archive';
COMMENT ON COLUMN backup_management.wal_archive.xact_scanned IS 'Whether the worker has read the transaction times (first_xact_at, last_xact_at) of the segment yet';
COMMENT ON COLUMN backup_management.wal_archive.expired_at IS 'When retention removed it (older than the oldest retained base backup); NULL while it is in the archive';

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
COMMENT ON TABLE backup_management.wal_ranges IS 'Contiguous runs of archived WAL segments that are neither expired nor lost, per cluster and timeline, maintained by triggers on wal_archive (what gap detection reads)';
COMMENT ON COLUMN backup_management.wal_ranges.system_identifier IS 'Cluster of the segments';
COMMENT ON COLUMN backup_management.wal_ranges.timeline_id IS 'Timeline of the segments';
COMMENT ON COLUMN backup_management.wal_ranges.first_segment IS 'First segment number of the run (wal_archive.segment_number)';
COMMENT ON COLUMN backup_management.wal_ranges.last_segment IS 'Last segment number of the run; every number between first and last is archived, unexpired and intact';
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

-- The statement-level trigger: what stopped counting (a segment expired, lost, deleted,
-- renumbered) and what started counting (ingested, un-expired, found intact again), each grouped into runs of consecutive
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
-- backup_management.verification_state: per live completed backup, its newest verification, its
-- verdict (verification_verdict) and where it stands in the worker's integrity upkeep
-- (consecutive failures, last error), kept up to date by triggers on backup_records and
-- backup_verifications (whoever writes), so that the worker finds the next backup to verify, and
-- metrics() the most recently verified backup of a database, through an index instead of a scan
-- of every backup and verification.  Derived state: not
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
COMMENT ON TABLE backup_management.verification_state IS 'Per live completed backup: its newest verification, its verdict (verification_verdict) and its place in the worker''s integrity upkeep, maintained by triggers on backup_records and backup_verifications (what upkeep_queue, retention, plans and metrics() read)';
COMMENT ON COLUMN backup_management.verification_state.backup_id IS 'The backup (completed, not expired)';
COMMENT ON COLUMN backup_management.verification_state.database_name IS 'Its database';
COMMENT ON COLUMN backup_management.verification_state.upkeep IS 'What the worker''s upkeep does with it: checksum (compute the sha256 that was not recorded), reverify (read it again against its sha256 every verify_interval), or NULL (nothing: directory backups are verified on demand)';
COMMENT ON COLUMN backup_management.verification_state.reverify_from IS 'Its newest passed checksum verification (or its end time when none passed): re-verification is due verify_interval after it';
COMMENT ON COLUMN backup_management.verification_state.last_verified_at IS 'When its newest verification of any kind finished';
COMMENT ON COLUMN backup_management.verification_state.last_status IS 'Its standing verdict (verification_verdict): failed while a failed verification stands (no later one at least as thorough passed), else passed; NULL when never verified';
COMMENT ON COLUMN backup_management.verification_state.last_checksum_at IS 'When its newest checksum verification finished (the worker''s last attempt)';
COMMENT ON COLUMN backup_management.verification_state.failures IS 'Checksum verifications that failed after its newest passed one: the worker waits longer before each new attempt';
COMMENT ON COLUMN backup_management.verification_state.last_error IS 'Why its newest checksum verification failed (NULL when it passed)';

-- How thorough a verification is: 1 reads a file's bytes against its recorded sha256 (a checksum
-- check, or a restore test that stopped at that check), 2 checks a physical backup's content
-- against its manifest (pg_verifybackup, integrity_check), 3 goes further (a restore test past
-- that check, whatever stage it then failed at: a failed restore stands until a restore test
-- passes).  0: a logical restore test that restored without an error but had no row counts to
-- compare the data with (a dump recorded by a script): it found nothing wrong, so any pass
-- after it clears it, and it clears a failed restore test before it (verification_verdict).  Inlined where it is used (no SET clause, one expression).
CREATE FUNCTION backup_mgmt.verification_depth(kind text, result jsonb)
    RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $bm$
    SELECT CASE WHEN kind = 'restore_test'
                 AND result OPERATOR(pg_catalog.->>) 'stage' = 'data_verification'
                 AND result OPERATOR(pg_catalog.->) 'facts_captured' = 'false'::jsonb
                 AND coalesce(result OPERATOR(pg_catalog.->>) 'error', '') = '' THEN 0
                WHEN kind = 'checksum'
                  OR (kind = 'restore_test' AND result OPERATOR(pg_catalog.->>) 'stage' = 'integrity') THEN 1
                WHEN kind = 'restore_test' THEN 3
                ELSE 2 END
$bm$;
COMMENT ON FUNCTION backup_mgmt.verification_depth(text, jsonb) IS
    'How thorough a verification of this type and result is: 1 a file''s bytes against their sha256, 2 pg_verifybackup against the manifest, 3 a restore test past the sha256 check (0: a restore test that restored but had no row counts to check the data with); a failure stands until a later verification at least as thorough passes';

-- A backup's standing verdict: 'failed' while one of its failed verifications stands (no later
-- verification at least as thorough passed, nor a restore test that restored cleanly with no row
-- counts to compare), else 'passed', NULL when it was never verified;
-- and whether every failure that stands only says that this host's copy is not there (its file
-- missing, or outside the backup roots), which says nothing of the backup's bytes (NULL when
-- none stands); and when its newest verification finished.  The newest verification alone is not the verdict: the worker re-reads every
-- backup against its sha256 each verify_interval, and that pass says the bytes are the ones
-- recorded, not that pg_verifybackup or a restore test that failed on those very bytes was
-- wrong.  No SET clause, so that it is inlined (see verification_state_of).
CREATE FUNCTION backup_mgmt.verification_verdict(backup bigint)
    RETURNS TABLE (status text, only_local boolean, verified_at timestamptz)
    LANGUAGE sql STABLE
AS $bm$
    SELECT CASE WHEN pg_catalog.count(*) = 0 THEN NULL
                WHEN pg_catalog.bool_or(s.stands) THEN 'failed'
                ELSE 'passed' END,
           pg_catalog.bool_and(s.local) FILTER (WHERE s.stands),
           pg_catalog.max(s.verified_at)
      FROM (SELECT f.verified_at,
                   f.verification_status = 'failed'
                   AND NOT EXISTS (
                       SELECT FROM backup_management.backup_verifications p
                        WHERE p.backup_id = f.backup_id
                          AND (p.verified_at, p.verification_id) > (f.verified_at, f.verification_id)
                          AND CASE WHEN p.verification_status = 'passed'
                                   THEN backup_mgmt.verification_depth(p.verification_type, p.verification_result)
                                        >= backup_mgmt.verification_depth(f.verification_type, f.verification_result)
                                   -- A restore test that restored cleanly with no row counts to
                                   -- compare shows that the backup restores: all a dump recorded
                                   -- by a script can show, whose restore tests never pass.
                                   ELSE backup_mgmt.verification_depth(p.verification_type, p.verification_result) = 0
                              END) AS stands,
                   backup_mgmt.verification_depth(f.verification_type, f.verification_result) = 1
                   AND coalesce(f.verification_result OPERATOR(pg_catalog.->>) 'reason' IN ('missing', 'refused_path'), false) AS local
              FROM backup_management.backup_verifications f
             WHERE f.backup_id = backup) s
$bm$;
COMMENT ON FUNCTION backup_mgmt.verification_verdict(bigint) IS
    'A backup''s standing verdict: failed while a failed verification of it stands (none at least as thorough passed later), else passed, NULL when never verified; whether the failures that stand only say this host''s copy is not there; and when its newest verification finished';

-- What the state of backups `ids` is, computed from backup_records and backup_verifications
-- (the definition the triggers maintain, and what the tests compare the table with).  No SET
-- clause, so that the planner inlines it into verification_state_refresh's cached plan (a SET
-- clause made it a function planned anew on every call: two thirds of a recorded backup's
-- cost, BENCHMARKS.md); it is not SECURITY DEFINER, its functions are qualified, and every
-- caller (the refresh below, the worker) pins search_path.
CREATE FUNCTION backup_mgmt.verification_state_of(ids bigint[])
    RETURNS SETOF backup_management.verification_state
    LANGUAGE sql STABLE
AS $bm$
    SELECT r.backup_id, r.database_name,
           CASE WHEN r.checksum IS NOT NULL THEN 'reverify'
                WHEN r.backup_method NOT IN ('pg_dump_directory', 'continuous_archiving', 'native_physical') THEN 'checksum'
           END,
           coalesce(c.last_passed, r.end_time, r.start_time),
           d.verified_at, d.status, c.last_at,
           coalesce(f.failures, 0)::integer,
           CASE WHEN c.last_status = 'failed' THEN c.last_error END
      FROM backup_management.backup_records r
      LEFT JOIN LATERAL backup_mgmt.verification_verdict(r.backup_id) d ON true
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
COMMENT ON FUNCTION backup_mgmt.verification_state_of(bigint[]) IS
    'Internal: the verification state of the given backups computed from backup_records and backup_verifications (what backup_management.verification_state holds)';

-- Brings the state of backups `ids` up to date: recomputed from the two tables, so that it is
-- right whatever changed (a verification recorded or deleted, a backup completed, expired,
-- re-checksummed).
-- Its statements are planned once per session and kept (force_generic_plan), always on the
-- indexes (enable_seqscan off: a plan made while the table was small, right after an install
-- or a TRUNCATE, would otherwise scan the whole table on every call from then on).
CREATE FUNCTION backup_mgmt.verification_state_refresh(ids bigint[])
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

------------------------------------------------------------------------------------------------
-- pg_dump of the database keeps the catalog's rows (like pg_cron's cron.job).
------------------------------------------------------------------------------------------------
SELECT pg_catalog.pg_extension_config_dump('backup_management.backup_records', '');
SELECT pg_catalog.pg_extension_config_dump('backup_management.backup_records_backup_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('backup_management.backup_verifications', '');
SELECT pg_catalog.pg_extension_config_dump('backup_management.backup_verifications_verification_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('backup_management.remote_backup_configs', '');
SELECT pg_catalog.pg_extension_config_dump('backup_management.remote_backup_configs_config_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('backup_management.remote_backup_records', '');
SELECT pg_catalog.pg_extension_config_dump('backup_management.remote_backup_records_record_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('disaster_recovery.recovery_plans', '');
SELECT pg_catalog.pg_extension_config_dump('disaster_recovery.recovery_plans_plan_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('disaster_recovery.recovery_drills', '');
SELECT pg_catalog.pg_extension_config_dump('disaster_recovery.recovery_drills_drill_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('enterprise_backup.backup_jobs', '');
SELECT pg_catalog.pg_extension_config_dump('enterprise_backup.backup_jobs_job_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('enterprise_backup.backup_job_executions', '');
SELECT pg_catalog.pg_extension_config_dump('enterprise_backup.backup_job_executions_execution_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('backup_management.wal_archive', '');
-- The default policy is created by the extension script; only operators' own rows are dumped.
SELECT pg_catalog.pg_extension_config_dump('backup_management.retention_policies', 'WHERE policy_name <> ''default''');

------------------------------------------------------------------------------------------------
-- Missing WAL, per cluster and timeline, between the start of the oldest retained base backup
-- (or the first archived segment when there is none) and the newest archived segment: first as
-- runs of missing segments (read from backup_management.wal_ranges, so its cost follows the
-- number of gaps, not of segments), then one row per missing file.
------------------------------------------------------------------------------------------------
CREATE VIEW backup_mgmt.wal_gap_ranges AS
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
COMMENT ON VIEW backup_mgmt.wal_gap_ranges IS 'Runs of WAL segments missing from the archive, per cluster and timeline (first and last missing segment number, how many), from the start of the oldest completed base backup (or the first archived segment) to the newest archived segment; read from backup_management.wal_ranges';

CREATE VIEW backup_mgmt.wal_gaps AS
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
-- Archived WAL on the off-site targets (0.5.0): every archived file goes to every active target,
-- copied by the worker as it is archived (the local archive is the queue), verified on arrival.
------------------------------------------------------------------------------------------------
CREATE TABLE backup_management.remote_wal_records (
    config_id         integer     NOT NULL
        REFERENCES backup_management.remote_backup_configs (config_id) ON DELETE CASCADE,
    system_identifier bigint      NOT NULL,
    file_name         text        NOT NULL,
    remote_key        text        NOT NULL,
    file_size         bigint      NOT NULL
        CONSTRAINT remote_wal_records_file_size_check CHECK (file_size >= 0),
    remote_checksum   backup_management.sha256_hex NOT NULL,
    archived_at       timestamptz NOT NULL,
    copied_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (config_id, system_identifier, file_name)
);
-- The newest file on each target (the off-site RPO in recovery_status) is an index probe.
CREATE INDEX idx_remote_wal_records_archived ON backup_management.remote_wal_records (config_id, archived_at DESC);
COMMENT ON TABLE backup_management.remote_wal_records IS 'Archived WAL files copied to an off-site target and verified there, one row per file and target (removed with the copy when the archived file expires)';
COMMENT ON COLUMN backup_management.remote_wal_records.config_id IS 'Target the file was copied to';
COMMENT ON COLUMN backup_management.remote_wal_records.system_identifier IS 'Cluster the file belongs to (as in wal_archive)';
COMMENT ON COLUMN backup_management.remote_wal_records.file_name IS 'WAL file name (as in wal_archive)';
COMMENT ON COLUMN backup_management.remote_wal_records.remote_key IS 'Object key or path on the target: <system identifier>/.wal/<stored name>';
COMMENT ON COLUMN backup_management.remote_wal_records.file_size IS 'Bytes stored on the target (the archived copy, compressed or not)';
COMMENT ON COLUMN backup_management.remote_wal_records.remote_checksum IS 'sha256 of the copy as verified after it landed (equal to wal_archive.checksum)';
COMMENT ON COLUMN backup_management.remote_wal_records.archived_at IS 'When the archive module archived the file (for the lag)';
COMMENT ON COLUMN backup_management.remote_wal_records.copied_at IS 'When the copy was verified on the target';

CREATE TABLE backup_management.remote_wal_state (
    config_id        integer     PRIMARY KEY
        REFERENCES backup_management.remote_backup_configs (config_id) ON DELETE CASCADE,
    last_copied_file text,
    last_copied_at   timestamptz,
    failures         integer     NOT NULL DEFAULT 0
        CONSTRAINT remote_wal_state_failures_check CHECK (failures >= 0),
    last_error       text,
    last_error_at    timestamptz,
    alarm_since      timestamptz,
    catalog_copied_at timestamptz,
    target_identity  text
);
COMMENT ON TABLE backup_management.remote_wal_state IS 'The worker''s WAL copying per off-site target: the newest copy, failures in a row and the last error, whether the lag alarm is raised, and when the catalog mirror was last copied';
COMMENT ON COLUMN backup_management.remote_wal_state.config_id IS 'Target';
COMMENT ON COLUMN backup_management.remote_wal_state.last_copied_file IS 'The WAL file copied most recently';
COMMENT ON COLUMN backup_management.remote_wal_state.last_copied_at IS 'When it was verified on the target';
COMMENT ON COLUMN backup_management.remote_wal_state.failures IS 'Copy attempts that failed since the last success (the worker retries with backoff, 1 s doubling to 60 s)';
COMMENT ON COLUMN backup_management.remote_wal_state.last_error IS 'Why the last failed attempt failed';
COMMENT ON COLUMN backup_management.remote_wal_state.last_error_at IS 'When it failed';
COMMENT ON COLUMN backup_management.remote_wal_state.alarm_since IS 'Since when the lag has been over backup_mgmt.offsite_wal_lag_alarm (NULL: not over it)';
COMMENT ON COLUMN backup_management.remote_wal_state.target_identity IS 'md5 of the target''s remote_type, remote_endpoint and remote_path when its copies were recorded: when they change, the worker forgets the copies (they are at the old place) and copies everything again';
COMMENT ON COLUMN backup_management.remote_wal_state.catalog_copied_at IS 'When this cluster''s catalog mirror (<system identifier>/.catalog/catalog_mirror.json) was last replaced on the target and verified there';
SELECT pg_catalog.pg_extension_config_dump('backup_management.remote_wal_records', '');
-- remote_wal_state is the worker's running state (failures, the alarm): not dumped, so that a
-- restored catalog starts it afresh (a restored alarm_since would keep the alarm from firing).

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
    -- No foreign key (since 0.14.0): the worker's ingest inserts rows for every target, and a
    -- key check would make it wait on an operator's open transaction that deleted a target.  A
    -- deleted target's rows go with it (remote_wal_queue_targets_delete); every row is checked
    -- against the tables where it is read, and the repair removes what a race leaves behind.
    config_id         integer     NOT NULL,
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
COMMENT ON FUNCTION backup_mgmt.remote_wal_queue_refresh(integer[], bigint[], text[]) IS
    'Internal (the remote_wal_queue_* triggers): recomputes the off-site WAL queue for the given files (system identifier, name) on every target, or copies (target, system identifier, name)';

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

-- Makes the queue equal to its definition; returns the rows it had to change (0 unless a
-- trigger missed something: two transactions racing, say a target enabled while a file is
-- ingested, or a target deleted while the worker queued a file for it).  The worker runs it
-- every minute and at start, and an emptied table of targets runs it.  Whole-table joins only (no nested loops): a nested loop the planner chose with
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

-- Per active target: this cluster's archived WAL files not on it yet (lost files excluded: they
-- are gaps, and counted as such), how long the oldest has waited, the newest copy, failures.
-- Read from the queue (0.13.0), each queued file checked against the tables as it is counted.
CREATE VIEW backup_mgmt.offsite_wal_status AS
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
COMMENT ON VIEW backup_mgmt.offsite_wal_status IS 'Per active off-site target: archived WAL files (segments and history files) not copied there yet, the lag in seconds (how long the oldest has waited since it was archived), the newest copy, failed attempts in a row and the last error, since when the lag alarm (backup_mgmt.offsite_wal_lag_alarm) is raised, and when the catalog mirror was last copied there';

-- A per-target bandwidth limit (0.5.0): options.max_rate_mb, in MB/s, shared by every copy to the
-- target (backups, WAL, the catalog mirror).
ALTER TABLE backup_management.remote_backup_configs
    ADD CONSTRAINT remote_backup_configs_max_rate_check
    CHECK (NOT options ? 'max_rate_mb'
           OR (jsonb_typeof(options -> 'max_rate_mb') = 'number' AND (options ->> 'max_rate_mb')::numeric > 0));

-- A download's I/O timeout (0.9.0): options.io_timeout_s, the seconds (1 to 1800) a download
-- from an object store may receive nothing before it is asked again from the byte it reached.
ALTER TABLE backup_management.remote_backup_configs
    ADD CONSTRAINT remote_backup_configs_io_timeout_check
    -- CASE: the cast runs only on a number (AND does not promise an order).  1800: the
    -- whole-request timeout (storage::transport::REQUEST_TIMEOUT), past which it never fires.
    CHECK (CASE WHEN NOT options ? 'io_timeout_s' THEN true
                WHEN jsonb_typeof(options -> 'io_timeout_s') = 'number'
                THEN (options ->> 'io_timeout_s')::numeric BETWEEN 1 AND 1800
                ELSE false END);

------------------------------------------------------------------------------------------------
-- A backup's chain (0.11.0): what a restore of it needs, walked in one place for the view below,
-- retention, plan_recovery, choose_parent and the native method.
------------------------------------------------------------------------------------------------

-- The members of a backup's chain as (backup_id, depth): the backup itself at depth 0, then each
-- one's parent (parent_backup_id), nearest first.  A parent missing from the catalog is listed
-- (for the callers to name) and ends the walk; bounded against a cycle.  No SET clause, so that
-- the planner can inline it; every table, function and operator in it and in the two below is
-- schema-qualified, since recovery_status runs them under its reader's search_path.
CREATE FUNCTION backup_mgmt.backup_chain(backup bigint)
    RETURNS TABLE (backup_id bigint, depth integer)
    LANGUAGE sql STABLE PARALLEL SAFE
AS $bm$
    WITH RECURSIVE up(id, depth) AS (
        SELECT backup, 0
        UNION ALL
        SELECT p.parent_backup_id, up.depth OPERATOR(pg_catalog.+) 1
          FROM backup_management.backup_records p JOIN up ON p.backup_id OPERATOR(pg_catalog.=) up.id
         WHERE p.parent_backup_id IS NOT NULL AND up.depth OPERATOR(pg_catalog.<) 10000)
    SELECT up.id, up.depth FROM up
$bm$;
COMMENT ON FUNCTION backup_mgmt.backup_chain(bigint) IS
    'The members of a backup''s chain: the backup itself (depth 0), then each parent it builds on, nearest first; a parent missing from the catalog is listed and ends the walk';

-- What makes the chain of a backup unusable, or NULL when nothing does: the nearest ancestor that
-- is gone from the catalog, not completed, expired, or whose verdict is failed.  A restore needs
-- every file of the chain, so a damaged full rules out every incremental built on it.
CREATE FUNCTION backup_mgmt.chain_problem(backup bigint)
    RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
AS $bm$
    SELECT CASE WHEN a.backup_id IS NULL
                THEN pg_catalog.format('its ancestor %s is gone from the catalog', up.backup_id)
                WHEN a.expired_at IS NOT NULL
                THEN pg_catalog.format('its ancestor %s has expired', up.backup_id)
                WHEN a.status OPERATOR(pg_catalog.<>) 'completed'
                THEN pg_catalog.format('its ancestor %s is %s', up.backup_id, a.status)
                ELSE pg_catalog.format('its ancestor %s failed verification', up.backup_id) END
      FROM backup_mgmt.backup_chain(backup) up
      LEFT JOIN backup_management.backup_records a ON a.backup_id OPERATOR(pg_catalog.=) up.backup_id
      LEFT JOIN backup_management.verification_state s ON s.backup_id OPERATOR(pg_catalog.=) up.backup_id
     WHERE up.depth OPERATOR(pg_catalog.>) 0
       AND (a.backup_id IS NULL OR a.status OPERATOR(pg_catalog.<>) 'completed' OR a.expired_at IS NOT NULL
            OR s.last_status OPERATOR(pg_catalog.=) 'failed')
     ORDER BY up.depth LIMIT 1
$bm$;
COMMENT ON FUNCTION backup_mgmt.chain_problem(bigint) IS
    'Why a backup''s chain cannot be restored (its nearest ancestor that is gone, not completed, expired or failed verification), or NULL when nothing stops it';

-- The first member of a backup's chain (itself, then its ancestors nearest first) whose verdict
-- is not passed (never verified, failed, or no longer a live completed backup, which has no
-- verification_state), as text, or NULL when the whole chain passed: "verified as a whole".
CREATE FUNCTION backup_mgmt.chain_unverified(backup bigint)
    RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
AS $bm$
    SELECT pg_catalog.format('backup %s has no passed verification', up.backup_id)
      FROM backup_mgmt.backup_chain(backup) up
      LEFT JOIN backup_management.verification_state s ON s.backup_id OPERATOR(pg_catalog.=) up.backup_id
     WHERE (s.last_status OPERATOR(pg_catalog.=) 'passed') IS NOT TRUE
     ORDER BY up.depth LIMIT 1
$bm$;
COMMENT ON FUNCTION backup_mgmt.chain_unverified(bigint) IS
    'The nearest member of a backup''s chain (itself first) without a passed verdict, or NULL when the whole chain is live and passed verification';

------------------------------------------------------------------------------------------------
-- Live recovery exposure, per active recovery plan.
------------------------------------------------------------------------------------------------
CREATE VIEW backup_mgmt.recovery_status AS
WITH verified AS (
    -- The newest live backup of each plan's database verified as a whole (its verdict and
    -- every ancestor's passed: chain_unverified; an incremental on a failed full restores
    -- nothing), read newest first from the index of live records (the newest few, for backups
    -- that ran side by side).
    SELECT d.database_name,
           (SELECT max(x.end_time)
              FROM (SELECT r.end_time FROM backup_management.backup_records r
                     WHERE r.database_name = d.database_name AND r.expired_at IS NULL
                       AND r.status = 'completed' AND r.backup_type <> 'wal'
                       AND EXISTS (SELECT FROM backup_management.verification_state s
                                    WHERE s.backup_id = r.backup_id AND s.last_status = 'passed')
                       AND backup_mgmt.chain_unverified(r.backup_id) IS NULL
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
), offsite AS (
    -- What would be left if the host were lost now, per plan: the best active target, taking
    -- only what is on that one target: its newest backup of the database verified as a whole
    -- with a verified copy of every member of its chain there (the newest few, as above), and
    -- how far its WAL reaches without a hole: while files wait, the newest copy archived
    -- before the oldest of them (whose own WAL is not there yet; on a quiet cluster one file
    -- may span hours), else its newest copy.  The EXISTS tests beside chain_unverified and
    -- backup_chain repeat what those cover for the backup itself: cheap probes that leave the
    -- functions only the rows that could pass.
    SELECT d.database_name, best.offsite_verified_backup_at, best.offsite_last_wal_at
      FROM (SELECT DISTINCT database_name FROM disaster_recovery.recovery_plans WHERE is_active) d
      LEFT JOIN LATERAL (
          SELECT b.backup_at AS offsite_verified_backup_at, w.wal_at AS offsite_last_wal_at
            FROM backup_management.remote_backup_configs c
           CROSS JOIN LATERAL (
                 SELECT max(n.end_time) AS backup_at
                   FROM (SELECT r.end_time FROM backup_management.backup_records r
                          WHERE r.database_name = d.database_name AND r.expired_at IS NULL
                            AND r.status = 'completed' AND r.backup_type <> 'wal'
                            AND EXISTS (SELECT FROM backup_management.verification_state s
                                         WHERE s.backup_id = r.backup_id AND s.last_status = 'passed')
                            AND EXISTS (SELECT FROM backup_management.remote_backup_records x
                                         WHERE x.backup_id = r.backup_id AND x.config_id = c.config_id
                                           AND x.sync_status = 'completed')
                            AND backup_mgmt.chain_unverified(r.backup_id) IS NULL
                            AND NOT EXISTS (
                                SELECT FROM backup_mgmt.backup_chain(r.backup_id) m
                                 WHERE NOT EXISTS (
                                       SELECT FROM backup_management.remote_backup_records x
                                        WHERE x.backup_id = m.backup_id AND x.config_id = c.config_id
                                          AND x.sync_status = 'completed'))
                          ORDER BY r.start_time DESC LIMIT 8) n) b
           CROSS JOIN LATERAL (
                 SELECT (SELECT w.archived_at FROM backup_management.remote_wal_records w
                          WHERE w.config_id = c.config_id
                            AND w.system_identifier = (SELECT system_identifier FROM pg_catalog.pg_control_system())
                            AND (s.oldest_pending_archived_at IS NULL
                                 OR w.archived_at < s.oldest_pending_archived_at)
                          ORDER BY w.archived_at DESC LIMIT 1) AS wal_at
                   FROM backup_mgmt.offsite_wal_status s WHERE s.config_id = c.config_id) w
           WHERE c.is_active AND b.backup_at IS NOT NULL
           ORDER BY greatest(b.backup_at, w.wal_at) DESC
           LIMIT 1) best ON true
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
           d.recovery_time AS last_measured_rto, d.drill_date AS last_drill_at, d.status AS last_drill_status,
           o.offsite_verified_backup_at, o.offsite_last_wal_at,
           CASE WHEN o.offsite_verified_backup_at IS NOT NULL
                THEN now() - greatest(o.offsite_verified_backup_at, o.offsite_last_wal_at) END AS offsite_rpo_exposure
      FROM disaster_recovery.recovery_plans p
      LEFT JOIN verified v USING (database_name)
      LEFT JOIN offsite o USING (database_name)
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
            ELSE 'ok' END AS archive_status,
       offsite_verified_backup_at,
       offsite_last_wal_at,
       offsite_rpo_exposure,
       CASE WHEN offsite_rpo_exposure IS NOT NULL AND offsite_rpo_exposure <= make_interval(mins => rpo_minutes)
            THEN 'ok' ELSE 'breached' END AS offsite_rpo_status
  FROM exposure;
COMMENT ON VIEW backup_mgmt.recovery_status IS 'Per active recovery plan: RPO exposure (age of the newest backup verified with every backup it builds on, or of the last archived WAL after it) against rpo_minutes, the newest drill''s measured recovery time against rto_minutes (ok, breached, or unknown: never drilled), and WAL archiving: last archived segment and its age, failures (pg_stat_archiver), missing segments, and archive_status ok, failing (the newest attempt failed), gaps or not archiving; and the exposure if the host were lost now: on the best active target alone, its newest such backup with a verified copy of its whole chain there and how far its WAL reaches without a hole, offsite_rpo_exposure and offsite_rpo_status against rpo_minutes';

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


------------------------------------------------------------------------------------------------
-- The 3-2-1 rule per database: three copies of the data, on two kinds of media, one off site.
------------------------------------------------------------------------------------------------
CREATE VIEW backup_mgmt.backup_copies AS
WITH newest AS (
    SELECT DISTINCT ON (database_name) database_name, backup_id, end_time
      FROM backup_management.backup_records
     WHERE status = 'completed' AND backup_type <> 'wal'
     ORDER BY database_name, end_time DESC, backup_id DESC
), remote AS (
    SELECT DISTINCT n.database_name, c.config_name, c.remote_type,
           coalesce((c.options->>'offsite')::boolean, c.remote_type <> 'filesystem') AS offsite
      FROM newest n
      JOIN backup_management.remote_backup_records r ON r.backup_id = n.backup_id AND r.sync_status = 'completed'
      JOIN backup_management.remote_backup_configs c ON c.config_id = r.config_id
), counted AS (
    SELECT n.database_name, n.backup_id, n.end_time,
           -- The database itself, its newest local backup, and each target holding a copy of it.
           2 + (SELECT count(*) FROM remote r WHERE r.database_name = n.database_name) AS copies,
           -- The server's disk, and each kind of target (a second disk, object storage, a host).
           1 + (SELECT count(DISTINCT r.remote_type) FROM remote r WHERE r.database_name = n.database_name) AS media,
           EXISTS (SELECT FROM remote r WHERE r.database_name = n.database_name AND r.offsite) AS offsite,
           (SELECT array_agg(r.config_name ORDER BY r.config_name) FROM remote r WHERE r.database_name = n.database_name) AS copied_to
      FROM newest n
)
SELECT database_name, backup_id AS newest_backup_id, end_time AS newest_backup_at, copies, media,
       offsite, coalesce(copied_to, '{}') AS copied_to,
       copies >= 3 AND media >= 2 AND offsite AS rule_3_2_1
  FROM counted;
COMMENT ON VIEW backup_mgmt.backup_copies IS 'Per database, for its newest completed backup: copies (the database, the local backup, each verified off-site copy), kinds of media, whether one is off site (object storage and remote hosts are; a filesystem target only with options {"offsite": true}), and the 3-2-1 rule as pass/fail';
