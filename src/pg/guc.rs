//! Every configuration parameter of backup_mgmt, with a typed accessor each.
//!
//! The catalog database is fixed at postmaster start (the worker connects to it once, like
//! `cron.database_name`); everything an operator may want to change on a running server is
//! SIGHUP.

use std::ffi::{CStr, CString};

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

use backup_mgmt_core::paths::{self, PathError};

/// `backup_mgmt.database_name`: the database that holds the catalog and that the background
/// worker connects to.
static DATABASE_NAME: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"postgres"));

/// `backup_mgmt.backup_roots`: comma-separated absolute directories the extension may read and
/// write.  Everything else is off limits; empty means no file access at all.
static BACKUP_ROOTS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));

/// `backup_mgmt.max_running_jobs`: how many backups the worker runs at the same time.
static MAX_RUNNING_JOBS: GucSetting<i32> = GucSetting::<i32>::new(2);

/// `backup_mgmt.verify_interval`: the worker verifies each completed backup again once its last
/// verification is this old (seconds; 0 = never).
static VERIFY_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(7 * 24 * 3600);

/// `backup_mgmt.wal_check_interval`: how often the worker starts comparing every archived WAL
/// file with the disk (presence and size; seconds, 0 = never, which also stops the sha256 pass).
static WAL_CHECK_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(300);

/// `backup_mgmt.fault_pause_at`: test aid (like PostgreSQL's injection points): the worker pauses
/// for ten minutes at each named point of its work, so that a test can kill it there.
static FAULT_PAUSE_AT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(Some(c""));

/// `backup_mgmt.max_history_per_job`: finished executions kept per job (older ones are deleted).
static MAX_HISTORY_PER_JOB: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// `backup_mgmt.enabled`: whether the worker runs jobs and upkeep at all.  A copy of the
/// cluster restored by a recovery recipe starts with it off, so that it never runs the
/// original's scheduled backups or touches the original's backup root.
static ENABLED: GucSetting<bool> = GucSetting::<bool>::new(true);

/// `backup_mgmt.archive_compression`: how the archive module stores WAL.
#[derive(pgrx::PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum ArchiveCompression {
    #[name = c"none"]
    None,
    #[name = c"zstd"]
    Zstd,
}
static ARCHIVE_COMPRESSION: GucSetting<ArchiveCompression> =
    GucSetting::<ArchiveCompression>::new(ArchiveCompression::None);

/// `backup_mgmt.archive_compression_level`: the zstd level for archived WAL.
static ARCHIVE_COMPRESSION_LEVEL: GucSetting<i32> = GucSetting::<i32>::new(3);

/// `backup_mgmt.offsite_wal_lag_alarm`: seconds an archived WAL file may wait for an off-site
/// target before the worker warns and sends a NOTIFY (0 = never).
static OFFSITE_WAL_LAG_ALARM: GucSetting<i32> = GucSetting::<i32>::new(300);

/// `backup_mgmt.offsite_wal_parallel`: WAL files in flight to each off-site target.
static OFFSITE_WAL_PARALLEL: GucSetting<i32> = GucSetting::<i32>::new(4);

/// `backup_mgmt.offsite_endpoints`: endpoints (URL prefixes) that off-site targets configured by
/// a role that is not a superuser may use.  Empty: such roles may configure no object-storage
/// target.
static OFFSITE_ENDPOINTS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c""));

/// `backup_mgmt.offsite_allow_http`: whether such targets may use plain http.
static OFFSITE_ALLOW_HTTP: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `backup_mgmt.credentials_env_prefix`: the prefix of the server environment variables that
/// `env:` credential references of such targets may name.
static CREDENTIALS_ENV_PREFIX: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"BACKUP_MGMT_"));

/// `backup_mgmt.credentials_directory`: the directory that `file:` credential references and
/// `ca_file` options of such targets must lie in.  Empty: none.
static CREDENTIALS_DIRECTORY: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c""));

/// Registers the parameters.  Called from `_PG_init` in every process that loads the library
/// (postmaster via shared_preload_libraries, a backend on CREATE EXTENSION, the archiver), so that
/// `SHOW backup_mgmt.*` works everywhere.
pub fn init() {
    // PostgreSQL refuses (FATAL) to create a postmaster-context parameter after startup, which is
    // what a backend loading the library for CREATE EXTENSION, or the archiver, would do.  The
    // worker that needs it only exists when preloaded, so that is the only time to define it.
    // SAFETY: a plain global PostgreSQL sets while it loads shared_preload_libraries.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        GucRegistry::define_string_guc(
            c"backup_mgmt.database_name",
            c"Database holding the backup_mgmt catalog; the background worker connects to it.",
            c"Like cron.database_name: jobs scheduled in another database are not run.",
            &DATABASE_NAME,
            GucContext::Postmaster,
            GucFlags::default(),
        );
    }
    GucRegistry::define_string_guc(
        c"backup_mgmt.backup_roots",
        c"Comma-separated absolute directories that backup_mgmt may read and write.",
        c"Backups are written only below these directories, and no file outside them is ever opened or deleted. Empty: no file access.",
        &BACKUP_ROOTS,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"backup_mgmt.max_running_jobs",
        c"Maximum number of backups the worker runs at the same time.",
        c"A due job waits while this many are running; a job never runs twice at once.",
        &MAX_RUNNING_JOBS,
        1,
        64,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"backup_mgmt.max_history_per_job",
        c"Finished executions kept per job in enterprise_backup.backup_job_executions.",
        c"Older rows are deleted after each run, so the history cannot grow without bound. The backups themselves stay in backup_records.",
        &MAX_HISTORY_PER_JOB,
        1,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"backup_mgmt.offsite_wal_lag_alarm",
        c"Seconds an archived WAL file may wait for an off-site target before the worker warns.",
        c"Past it the worker logs a WARNING and sends NOTIFY backup_mgmt (offsite_wal_lagging), and again (offsite_wal_caught_up) when the target is back under half of it. 0 turns the alarm off; the lag is always in backup_mgmt.offsite_wal_status and metrics().",
        &OFFSITE_WAL_LAG_ALARM,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"backup_mgmt.offsite_wal_parallel",
        c"Archived WAL files copied to each off-site target at the same time.",
        c"Each target has its own copy thread; this many uploads run in it at once.",
        &OFFSITE_WAL_PARALLEL,
        1,
        64,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"backup_mgmt.enabled",
        c"Whether the background worker runs scheduled jobs, verification and WAL ingestion.",
        c"Restore recipes turn it off in the restored copy, which shares the original's catalog and backup roots; turn it on once the copy is meant to take over.",
        &ENABLED,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"backup_mgmt.archive_compression",
        c"How the archive module stores WAL files: none, or zstd (as <name>.zst).",
        c"Either form is recognised when a file is archived again and by restore recipes, so it can be changed at any time.",
        &ARCHIVE_COMPRESSION,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"backup_mgmt.archive_compression_level",
        c"zstd level for archived WAL files (1-19).",
        c"Used when backup_mgmt.archive_compression = zstd.",
        &ARCHIVE_COMPRESSION_LEVEL,
        1,
        19,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"backup_mgmt.offsite_endpoints",
        c"Endpoints (URLs, comma-separated) that off-site targets configured by roles that are not superusers may use, each optionally with the credential references that go with it.",
        c"Empty: only superusers may configure object-storage targets. Example: 'https://s3.eu-west-1.amazonaws.com/ = env:BACKUP_MGMT_AWS, https://minio.internal:9000/'. A reference named after '=' may be used only with the endpoints that name it, and such an endpoint takes no other.",
        &OFFSITE_ENDPOINTS,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_bool_guc(
        c"backup_mgmt.offsite_allow_http",
        c"Whether off-site targets configured by roles that are not superusers may use plain http.",
        c"Off by default: credentials and backups would cross the network unencrypted.",
        &OFFSITE_ALLOW_HTTP,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"backup_mgmt.credentials_env_prefix",
        c"Prefix of the server environment variables that env: credential references of targets configured by roles that are not superusers may name.",
        c"So that an operator cannot send, say, env:PGPASSWORD to an endpoint.",
        &CREDENTIALS_ENV_PREFIX,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"backup_mgmt.credentials_directory",
        c"Directory that file: credential references and ca_file options of targets configured by roles that are not superusers must lie in.",
        c"Empty: such targets may use no file: reference and no ca_file.",
        &CREDENTIALS_DIRECTORY,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_string_guc(
        c"backup_mgmt.fault_pause_at",
        c"For tests of crash safety: points where the worker pauses for ten minutes (comma-separated).",
        c"native_start (after pg_backup_start), native_copy (copying files), native_stop (after pg_backup_stop), native_rename (before the finished directory is renamed into place). Empty in production.",
        &FAULT_PAUSE_AT,
        GucContext::Sighup,
        GucFlags::SUPERUSER_ONLY,
    );
    GucRegistry::define_int_guc(
        c"backup_mgmt.wal_check_interval",
        c"How often the worker checks that every archived WAL file is still in the archive with its size.",
        c"A pass checks 1,000 files a second (one open and fstat each); a file gone or of another size is recorded as lost (wal_archive.lost_at) and counts as missing in wal_gaps, plan_recovery, recovery_status and metrics(). Besides, each file is read through sha256 once per backup_mgmt.verify_interval (0: only lost files found back), one every 10 seconds. 0 turns both off.",
        &WAL_CHECK_INTERVAL,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"backup_mgmt.verify_interval",
        c"How old a backup's last verification may get before the worker verifies it again.",
        c"Catches bit rot: each completed backup is re-read and compared with its recorded sha256 this often. 0 turns it off; checksums missing from the catalog are computed regardless.",
        &VERIFY_INTERVAL,
        0,
        i32::MAX,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
}

/// The catalog database the worker connects to.
pub fn database_name() -> String {
    string_of(&DATABASE_NAME)
}

/// The zstd level archived WAL is compressed at, or None when it is stored as is.
pub fn archive_compression() -> Option<i32> {
    match ARCHIVE_COMPRESSION.get() {
        ArchiveCompression::None => None,
        ArchiveCompression::Zstd => Some(ARCHIVE_COMPRESSION_LEVEL.get()),
    }
}

pub fn enabled() -> bool {
    ENABLED.get()
}

pub fn max_running_jobs() -> usize {
    MAX_RUNNING_JOBS.get().max(1) as usize
}

pub fn verify_interval_seconds() -> i64 {
    i64::from(VERIFY_INTERVAL.get().max(0))
}

/// Whether the worker is to pause at `point` (`backup_mgmt.fault_pause_at`).
pub fn fault_pause_at(point: &str) -> bool {
    let list = string_of(&FAULT_PAUSE_AT);
    !list.is_empty() && list.split(',').any(|p| p.trim() == point)
}

pub fn wal_check_interval_seconds() -> u64 {
    WAL_CHECK_INTERVAL.get().max(0) as u64
}

/// The lag past which an off-site target's WAL raises the alarm (None: never).
pub fn offsite_wal_lag_alarm() -> Option<std::time::Duration> {
    let s = OFFSITE_WAL_LAG_ALARM.get();
    (s > 0).then(|| std::time::Duration::from_secs(s as u64))
}

pub fn offsite_wal_parallel() -> usize {
    OFFSITE_WAL_PARALLEL.get().clamp(1, 64) as usize
}

pub fn max_history_per_job() -> i64 {
    i64::from(MAX_HISTORY_PER_JOB.get().max(1))
}

fn string_of(setting: &GucSetting<Option<CString>>) -> String {
    setting
        .get()
        .as_deref()
        .map(CStr::to_string_lossy)
        .map(|s| s.into_owned())
        .unwrap_or_default()
}

/// What off-site targets configured by roles that are not superusers may use.
pub fn offsite_limits() -> backup_mgmt_core::storage::limits::Limits {
    backup_mgmt_core::storage::limits::Limits {
        endpoints: backup_mgmt_core::storage::limits::parse_endpoints(&string_of(
            &OFFSITE_ENDPOINTS,
        )),
        allow_http: OFFSITE_ALLOW_HTTP.get(),
        env_prefix: string_of(&CREDENTIALS_ENV_PREFIX),
        credentials_directory: Some(string_of(&CREDENTIALS_DIRECTORY))
            .filter(|d| !d.is_empty())
            .map(std::path::PathBuf::from),
    }
}

/// The configured backup roots, parsed; an invalid entry is an error naming it.
pub fn backup_roots() -> Result<Vec<std::path::PathBuf>, PathError> {
    paths::parse_roots(&backup_roots_text())
}

/// `backup_mgmt.backup_roots` as set.
pub fn backup_roots_text() -> String {
    string_of(&BACKUP_ROOTS)
}

/// Pins this session's `search_path` to `pg_catalog, pg_temp` (CVE-2018-1058): the worker's
/// sessions run as a superuser, so no name they use may resolve to an object a user planted in
/// a writable schema.  Set with the priority of a command-line override, above
/// postgresql.conf, `ALTER DATABASE/ROLE ... SET` and a reload.  Call once after connecting.
pub fn pin_search_path() {
    // SAFETY: NUL-terminated name and value; search_path is a known parameter, settable by this
    // (superuser) background worker at any time; errors are raised as ERROR, not returned.
    unsafe {
        pgrx::pg_sys::SetConfigOption(
            c"search_path".as_ptr(),
            c"pg_catalog, pg_temp".as_ptr(),
            pgrx::pg_sys::GucContext::PGC_SUSET,
            pgrx::pg_sys::GucSource::PGC_S_OVERRIDE,
        );
    }
}

/// Runs `f` with the parameters `settings` (name, value) set for its duration only, as a
/// function's `SET` clause does (a nesting level of its own, undone afterwards, and by the
/// transaction's abort if `f` raises an ERROR).  Each name must be a parameter any user may set.
pub fn with_settings<T>(settings: &[(&CStr, &CStr)], f: impl FnOnce() -> T) -> T {
    // SAFETY: opens a GUC nesting level that AtEOXact_GUC below (or abort processing) closes.
    let level = unsafe { pgrx::pg_sys::NewGUCNestLevel() };
    for (name, value) in settings {
        // SAFETY: NUL-terminated name and value of a user-settable parameter, saved at this
        // level; an invalid one raises an ERROR, which aborts the transaction and restores it.
        unsafe {
            pgrx::pg_sys::set_config_option(
                name.as_ptr(),
                value.as_ptr(),
                pgrx::pg_sys::GucContext::PGC_USERSET,
                pgrx::pg_sys::GucSource::PGC_S_SESSION,
                pgrx::pg_sys::GucAction::GUC_ACTION_SAVE,
                true,
                0,
                false,
            );
        }
    }
    let result = f();
    // SAFETY: closes the level opened above, restoring the parameters' previous values.
    unsafe { pgrx::pg_sys::AtEOXact_GUC(true, level) };
    result
}

/// The current value of any configuration parameter (PostgreSQL's own or an extension's), or
/// None when no such parameter is defined (e.g. backup_mgmt.database_name without preloading).
pub fn current(name: &CStr) -> Option<String> {
    // SAFETY: a NUL-terminated name; missing_ok, so an unknown name gives NULL, not an ERROR.
    let value = unsafe { pgrx::pg_sys::GetConfigOption(name.as_ptr(), true, false) };
    (!value.is_null()).then(|| {
        // SAFETY: a non-NULL result is the parameter's NUL-terminated value.
        unsafe { CStr::from_ptr(value) }
            .to_string_lossy()
            .into_owned()
    })
}

/// The value a parameter has from the server's configuration, ignoring this session's SET (what
/// RESET would restore, and what the background worker sees).  `name` must exist.
pub fn configured(name: &CStr) -> Option<String> {
    // SAFETY: a NUL-terminated name of an existing parameter (the caller's promise).
    let value = unsafe { pgrx::pg_sys::GetConfigOptionResetString(name.as_ptr()) };
    (!value.is_null()).then(|| {
        // SAFETY: a non-NULL result is the parameter's NUL-terminated reset value.
        unsafe { CStr::from_ptr(value) }
            .to_string_lossy()
            .into_owned()
    })
}
