//! Facts about the running server that backups need: its socket and port, its programs, its WAL
//! segment size, its identity, the current database; and waking the worker from a helper thread.

use std::ffi::CStr;
use std::path::{Path, PathBuf};

use backup_mgmt_core::conninfo::Connection;
use backup_mgmt_core::wal::SegmentSize;
use pgrx::pg_sys;

use super::guc;

/// Why this server cannot take block-level incremental backups with `pg_basebackup
/// --incremental` (PostgreSQL 17's WAL summaries).
#[derive(Debug, thiserror::Error)]
pub enum BlockIncrementalError {
    #[error("incremental and differential pg_basebackup backups need PostgreSQL 17 or later (block-level incrementals from WAL summaries); this server is {0}")]
    TooOld(String),
    #[error("incremental and differential pg_basebackup backups need WAL summaries, and summarize_wal is off")]
    SummarizeWalOff,
}

/// PostgreSQL 17 brought `pg_basebackup --incremental`, WAL summaries and `pg_combinebackup`.
const BLOCK_INCREMENTAL_VERSION: i32 = 170000;

/// Whether this server can take a block-level incremental `pg_basebackup` now.
pub fn block_incrementals() -> Result<(), BlockIncrementalError> {
    if version_num() < BLOCK_INCREMENTAL_VERSION {
        return Err(BlockIncrementalError::TooOld(
            guc::current(c"server_version").unwrap_or_default(),
        ));
    }
    if guc::current(c"summarize_wal").as_deref() != Some("on") {
        return Err(BlockIncrementalError::SummarizeWalOff);
    }
    Ok(())
}

/// `pg_stat_activity.backend_type` of the backup_mgmt worker.
pub const WORKER_TYPE: &str = "backup_mgmt scheduler";

/// This server, as `user`: its first Unix socket directory (or loopback) and its port.
pub fn local_connection(user: String) -> Connection {
    let sockets = guc::current(c"unix_socket_directories").unwrap_or_default();
    let host = sockets
        .split(',')
        .map(str::trim)
        .find(|s| !s.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    let port = guc::current(c"port")
        .and_then(|p| p.parse().ok())
        .unwrap_or(5432);
    Connection { host, port, user }
}

/// The directory of the running server's own programs (pg_dump and friends of the same version).
pub fn bindir() -> PathBuf {
    // SAFETY: my_exec_path is a NUL-terminated buffer PostgreSQL fills at startup.
    let exec = unsafe { CStr::from_ptr(std::ptr::addr_of!(pg_sys::my_exec_path).cast()) };
    Path::new(&*exec.to_string_lossy())
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// This cluster's data directory, as the postmaster was given it.
pub fn data_directory() -> PathBuf {
    // SAFETY: DataDir is set once at startup (before any backend exists) to a NUL-terminated
    // string that lives for the process; NULL is checked.
    let dir = unsafe { pg_sys::DataDir };
    if dir.is_null() {
        return PathBuf::new();
    }
    // SAFETY: see above.
    PathBuf::from(&*unsafe { CStr::from_ptr(dir) }.to_string_lossy())
}

/// This cluster's WAL segment size (`initdb --wal-segsize`).
pub fn segment_size() -> SegmentSize {
    // SAFETY: a plain global, set once at startup.
    let bytes = unsafe { pg_sys::wal_segment_size } as u64;
    SegmentSize::new(bytes).unwrap_or_default()
}

/// This cluster's system identifier (from shared memory, no query needed).
pub fn system_identifier() -> u64 {
    // SAFETY: reads the control file's copy in shared memory; no preconditions.
    unsafe { pg_sys::GetSystemIdentifier() }
}

/// The timeline this server is on: the one it writes, or, in recovery (a standby), the one it
/// has replayed up to (which follows a switch at once, where the control file's checkpoint
/// timeline waits for the next restartpoint).
pub fn timeline() -> u32 {
    // SAFETY: both read shared memory under its lock; GetWALInsertionTimeLine is only valid once
    // recovery is over, which RecoveryInProgress says (and recovery, once over, never resumes).
    // GetXLogReplayRecPtr writes the timeline through a pointer to a live local.
    let tli = unsafe {
        if pg_sys::RecoveryInProgress() {
            let mut tli: pg_sys::TimeLineID = 0;
            pg_sys::GetXLogReplayRecPtr(&mut tli);
            tli
        } else {
            pg_sys::GetWALInsertionTimeLine()
        }
    };
    tli.max(1)
}

/// The name of the database this session is connected to.
pub fn current_database() -> String {
    // SAFETY: MyDatabaseId is this session's database, which exists while we are connected;
    // get_database_name returns a palloc'd copy of its name.
    unsafe { CStr::from_ptr(pg_sys::get_database_name(pg_sys::MyDatabaseId)) }
        .to_string_lossy()
        .into_owned()
}

/// Whether a database of this name exists.
pub fn database_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: a NUL-terminated name; missing_ok = true, so it returns InvalidOid, not an ERROR.
    unsafe { pg_sys::get_database_oid(c.as_ptr(), true) != pg_sys::InvalidOid }
}

/// The running server's `server_version_num` (e.g. 150020).
pub fn version_num() -> i32 {
    guc::current(c"server_version_num")
        .and_then(|v| v.parse().ok())
        .unwrap_or(pg_sys::PG_VERSION_NUM as i32)
}

/// This process's pid.
pub fn pid() -> i32 {
    // SAFETY: MyProcPid is a plain global of this process.
    unsafe { pg_sys::MyProcPid }
}

/// Called on a helper thread when it finishes: SIGUSR1 to this process, whose handler
/// (PostgreSQL's procsignal handler, installed for every worker with shared memory access) sets
/// the worker's latch, so the result is recorded at once instead of at the next timeout.  Helper
/// threads block all signals, so the handler runs on the worker's own thread.
pub fn wake_worker() {
    // SAFETY: kill(2) to our own pid.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGUSR1);
    }
}
