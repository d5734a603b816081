//! The scheduler: one background worker, in the style of pg_cron's launcher.
//!
//! It connects to `backup_mgmt.database_name`, sleeps on its latch until the next job is due (at
//! most a second, so job changes are noticed within one), and starts each due backup on its own
//! thread (`executor.rs`), so the loop is never blocked by a running backup.  Only this thread
//! talks to PostgreSQL.  Every catalog step runs in its own transaction whose errors are caught,
//! logged and rolled back: a failing job never stops the worker.
//!
//! Registered with `BgWorkerStart_RecoveryFinished`, it does not run on a standby and starts
//! after promotion.  Postmaster restarts it 5 seconds after a crash.
//!
//! Crash safety: the only process that runs jobs is this one, so an execution still `running`
//! when it starts was interrupted (server crash, kill -9): it is marked failed, its backup record
//! too, and its partial output removed.  A slot is claimed in the same transaction that moves the
//! job's `next_run_at` forward, under a unique (job, slot) key: a restart never runs a slot twice.
//!
//! Catch-up rule: when the worker starts (or a long backup ends) after one or more of a job's
//! slots have passed, the job runs once, as soon as possible, for the oldest missed slot; the
//! missed slots in between are not run separately, and the next run is the schedule's next slot
//! after that.  A backup is a snapshot: ten missed hourly runs are served by one backup now.

use std::collections::HashMap;
use std::ffi::CStr;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use serde_json::{json, Value};

use crate::catalog::BackupMethod;
use crate::events;
use crate::executor::{self, Compression, Connection, Plan, RunHandle};
use crate::guc;
use crate::schedule::CronSchedule;
use crate::scheduler;
use crate::security;

/// `pg_stat_activity.backend_type` of the worker.
pub const WORKER_TYPE: &str = "backup_mgmt scheduler";

/// Longest sleep: job changes (schedule_backup, run_job_now) are seen within this.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Sleep while backups run: progress is reported about this often.  A finished backup wakes the
/// loop at once (`wake_worker`).
const BUSY_SLEEP: Duration = Duration::from_millis(500);
/// While the extension is not installed in the catalog database.
const NOT_INSTALLED_SLEEP: Duration = Duration::from_secs(5);
/// After a job's start failed, do not retry it (and log again) before this.
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// How often running backups report progress to the catalog.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// At most this many due jobs are looked at per wake-up.
const DUE_BATCH: i64 = 64;

const INTERRUPTED: &str = "interrupted: the server or the backup_mgmt worker stopped while this backup was running; its partial output was removed";

pub fn init() {
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    BackgroundWorkerBuilder::new(WORKER_TYPE)
        .set_type(WORKER_TYPE)
        .set_function("backup_mgmt_scheduler_main")
        .set_library("backup_mgmt")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn backup_mgmt_scheduler_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let database = guc::database_name();
    BackgroundWorker::connect_worker_to_spi(Some(&database), None);
    log!("backup_mgmt scheduler started in database \"{database}\"");
    let mut scheduler = Scheduler::default();
    scheduler.run();
}

/// A backup the worker started and has not recorded yet.
struct Running {
    execution_id: i64,
    backup_id: i64,
    job_id: i64,
    job_name: String,
    database: String,
    timeout: Option<Duration>,
    handle: RunHandle,
    /// Why it was stopped, when the worker stopped it (timeout, shutdown).
    stopped: Option<String>,
    /// A native physical backup's session side (pg_backup_stop is due when the copy ends).
    native: Option<Box<crate::native_session::Session>>,
}

#[derive(Default)]
struct Scheduler {
    running: Vec<Running>,
    installed: bool,
    recovered: bool,
    /// Jobs whose start failed, and when they may be tried again.
    backoff: HashMap<i64, Instant>,
    last_progress: Throttle,
    /// Checksums for backups recorded without one, and periodic re-verification.
    upkeep: crate::upkeep::Upkeep,
    /// Drill jobs running in workers of their own.
    drills: Vec<DrillRun>,
    /// Archived WAL, from the archive module's manifests into the catalog.
    wal: crate::archive::Ingest,
    offsite: crate::offsite::Offsite,
    /// Transaction times of archived WAL, for recovery planning.
    walscan: crate::walscan::WalScan,
}

/// A drill job's execution, run by a dynamic background worker.
struct DrillRun {
    job_id: i64,
    execution_id: i64,
    handle: pgrx::bgworkers::DynamicBackgroundWorker,
}

/// Runs `body` in a transaction of its own.  A PostgreSQL ERROR or a returned error is logged as
/// a WARNING naming `what`, and the transaction rolled back; the worker carries on.
pub(crate) fn in_transaction<R>(what: &str, body: impl FnOnce() -> Result<R, String>) -> Option<R> {
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    let outcome = PgTryBuilder::new(AssertUnwindSafe(move || {
        let r = body()?;
        unsafe {
            pg_sys::PopActiveSnapshot();
            pg_sys::CommitTransactionCommand();
        }
        Ok(r)
    }))
    .catch_others(|e| {
        Err(match e {
            CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r.message().to_owned(),
            CaughtError::RustPanic { ereport, .. } => ereport.message().to_owned(),
        })
    })
    .execute();
    match outcome {
        Ok(r) => Some(r),
        Err(message) => {
            unsafe { pg_sys::AbortCurrentTransaction() };
            warning!("backup_mgmt: {what}: {message}");
            None
        }
    }
}

pub(crate) fn spi<T>(r: Result<T, pgrx::spi::SpiError>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

/// Facts about the server every backup needs, read once per transaction that starts one.
fn connection(client: &SpiClient<'_>) -> Result<Connection, String> {
    let user = spi(client.select("SELECT current_user::text", None, &[]))
        .and_then(|t| spi(t.first().get::<String>(1)))?
        .unwrap_or_default();
    Ok(local_connection(user))
}

/// This server, as `user`: its first Unix socket directory (or loopback) and its port.
pub(crate) fn local_connection(user: String) -> Connection {
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
pub(crate) fn bindir() -> PathBuf {
    let exec = unsafe { CStr::from_ptr(std::ptr::addr_of!(pg_sys::my_exec_path).cast()) };
    Path::new(&*exec.to_string_lossy())
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Called on a backup thread when it finishes: SIGUSR1 to this process, whose handler
/// (PostgreSQL's procsignal handler, installed for every worker with shared memory access) sets the
/// worker's latch, so the result is recorded at once instead of at the next timeout.  The backup
/// threads block all signals, so the handler runs on the worker's own thread.
pub(crate) fn wake_worker() {
    // SAFETY: kill(2) to our own pid.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGUSR1);
    }
}

/// "At most once every so often", for the worker's periodic look-ups (progress, WAL ingest,
/// upkeep, off-site copies, WAL scan).
#[derive(Default)]
pub(crate) struct Throttle(Option<Instant>);

impl Throttle {
    /// Whether `every` has passed since the last time this said yes (yes the first time).
    pub(crate) fn ready(&mut self, every: Duration) -> bool {
        if self.0.is_some_and(|t| t.elapsed() < every) {
            return false;
        }
        self.0 = Some(Instant::now());
        true
    }
}

/// Work the worker hands to a helper thread (verification, off-site copies): the thread runs
/// with every signal blocked, so PostgreSQL's handlers stay on the worker's own thread, and
/// wakes the worker when it is done.
pub(crate) struct Helper<T> {
    thread: std::thread::JoinHandle<T>,
    /// Set just before the thread wakes the worker (the thread ends a moment later).
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl<T: Send + 'static> Helper<T> {
    pub(crate) fn spawn(work: impl FnOnce() -> T + Send + 'static) -> Helper<T> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&done);
        let thread = std::thread::spawn(move || {
            crate::executor::block_all_signals();
            let result = work();
            flag.store(true, Ordering::SeqCst);
            wake_worker();
            result
        });
        Helper { thread, done }
    }

    pub(crate) fn is_finished(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::SeqCst) || self.thread.is_finished()
    }

    /// The result (None when the thread panicked); waits for the thread to end.
    pub(crate) fn join(self) -> Option<T> {
        self.thread.join().ok()
    }
}

/// Whether the postmaster is still alive: a non-blocking read of its death pipe, as
/// PostgreSQL's own PostmasterIsAliveInternal() does (EOF once the postmaster is gone).  Not
/// WaitLatch: that returns at once when the latch is set, without looking at the pipe.
fn postmaster_alive() -> bool {
    let fd = unsafe { pg_sys::postmaster_alive_fds[pg_sys::POSTMASTER_FD_WATCH as usize] };
    let mut byte = 0u8;
    // SAFETY: a one-byte read into a local from PostgreSQL's (non-blocking) pipe descriptor.
    let n = unsafe { libc::read(fd, (&raw mut byte).cast(), 1) };
    n != 0
}

impl Scheduler {
    fn run(&mut self) {
        loop {
            if BackgroundWorker::sighup_received() {
                unsafe { pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP) };
            }
            // Postmaster gone (kill -9, crash): exit at once, recording nothing; the next start
            // marks what was running as interrupted.
            if !postmaster_alive() {
                return;
            }
            let sleep = self.tick();
            if !BackgroundWorker::wait_latch(Some(sleep)) {
                break;
            }
        }
        if postmaster_alive() {
            self.shut_down();
            log!("backup_mgmt scheduler shut down");
        }
    }

    /// One pass of the loop; returns how long to sleep.
    fn tick(&mut self) -> Duration {
        if !guc::enabled() && self.running.is_empty() && self.drills.is_empty() {
            return NOT_INSTALLED_SLEEP;
        }
        if !self.installed {
            self.installed = in_transaction("checking for the extension", || {
                Spi::connect(|c| {
                    spi(c.select(
                        "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'backup_mgmt')",
                        None,
                        &[],
                    ))
                    .and_then(|t| spi(t.first().get::<bool>(1)))
                })
            })
            .flatten()
            .unwrap_or(false);
            if !self.installed {
                return NOT_INSTALLED_SLEEP;
            }
        }
        if !self.recovered {
            self.recovered = self.recover_interrupted();
            if !self.recovered {
                self.installed = false;
                return NOT_INSTALLED_SLEEP;
            }
        }
        self.reap();
        self.reap_drills();
        self.enforce_timeouts();
        self.report_progress();
        if guc::enabled() {
            self.upkeep.tick();
            self.wal.tick();
            self.offsite.tick();
            self.walscan.tick();
        }
        match self.start_due_jobs() {
            Some(until_next) if self.running.is_empty() && self.drills.is_empty() => until_next,
            Some(until_next) => until_next.min(BUSY_SLEEP),
            None => {
                // The catalog could not be read (extension dropped or being upgraded): check
                // again, quietly, later.
                self.installed = false;
                NOT_INSTALLED_SLEEP
            }
        }
    }

    /// Marks executions left `running` (and their backup records) failed and removes their
    /// partial output.  Returns false when the catalog could not be read.
    fn recover_interrupted(&mut self) -> bool {
        let cleaned = in_transaction("recovering interrupted backups", || {
            Spi::connect_mut(|c| {
                let rows = spi(c.update(
                    "UPDATE enterprise_backup.backup_job_executions \
                        SET execution_status = 'failed', execution_end_time = now(), phase = NULL, \
                            error_message = $1 \
                      WHERE execution_status = 'running' \
                  RETURNING backup_id",
                    None,
                    &[INTERRUPTED.into()],
                ))?;
                let mut ids = Vec::new();
                for row in rows {
                    if let Some(id) = spi(row.get::<i64>(1))? {
                        ids.push(id);
                    }
                }
                let mut count = 0;
                for id in ids {
                    let t = spi(c.select(
                        "SELECT backup_file_path, annotations->>'globals_file' \
                           FROM backup_management.backup_records WHERE backup_id = $1 AND status = 'running'",
                        None,
                        &[id.into()],
                    ))?;
                    if t.is_empty() {
                        continue;
                    }
                    let row = t.first();
                    let path = spi(row.get::<String>(1))?;
                    let globals = spi(row.get::<String>(2))?;
                    for p in [path, globals].into_iter().flatten() {
                        remove_output(&p);
                    }
                    spi(c.update(
                        "SELECT backup_mgmt.record_backup_failure($1, $2)",
                        None,
                        &[id.into(), INTERRUPTED.into()],
                    ))?;
                    count += 1;
                }
                Ok(count)
            })
        });
        match cleaned {
            Some(n) if n > 0 => {
                log!("backup_mgmt: marked {n} interrupted backup(s) failed and removed their partial files");
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Collects finished backups and records them.
    fn reap(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if !self.running[i].handle.is_finished() {
                i += 1;
                continue;
            }
            let mut run = self.running.swap_remove(i);
            let mut result = run.handle.join();
            if let Some(session) = run.native.take() {
                result = crate::native_session::finish(*session, result);
            }
            record_result(&run, result);
        }
    }

    fn enforce_timeouts(&mut self) {
        for run in &mut self.running {
            let Some(limit) = run.timeout else { continue };
            let elapsed = run.handle.started.elapsed();
            if elapsed > limit && run.stopped.is_none() {
                run.stopped = Some(format!("timed out after {} s", limit.as_secs()));
                run.handle.progress.cancel(libc::SIGTERM);
            } else if elapsed > limit + executor::KILL_GRACE {
                run.handle.progress.cancel(libc::SIGKILL);
            }
        }
    }

    fn report_progress(&mut self) {
        if self.running.is_empty() || !self.last_progress.ready(PROGRESS_EVERY) {
            return;
        }
        let updates: Vec<(i64, &'static str, i64)> = self
            .running
            .iter()
            .map(|r| {
                (
                    r.execution_id,
                    r.handle.progress.phase().as_str(),
                    r.handle.progress.bytes() as i64,
                )
            })
            .collect();
        in_transaction("reporting progress", || {
            Spi::connect_mut(|c| {
                for (id, phase, bytes) in updates {
                    spi(c.update(
                        "UPDATE enterprise_backup.backup_job_executions \
                            SET phase = $2, bytes_written = $3, progress_updated_at = now() \
                          WHERE execution_id = $1 AND execution_status = 'running'",
                        None,
                        &[id.into(), phase.into(), bytes.into()],
                    ))?;
                }
                Ok(())
            })
        });
    }

    /// Starts what is due; returns how long until the next job is due (capped at MAX_SLEEP), or
    /// None when the catalog could not be read.
    fn start_due_jobs(&mut self) -> Option<Duration> {
        if !guc::enabled() {
            // Turned off while something ran: let it finish, start nothing new.
            return Some(NOT_INSTALLED_SLEEP);
        }
        let (due, until_next) = in_transaction("looking for due jobs", || {
            Spi::connect(|c| {
                let t = spi(c.select(
                    "(SELECT job_id FROM enterprise_backup.backup_jobs \
                       WHERE is_active AND next_run_at <= now() ORDER BY next_run_at LIMIT $1) \
                     UNION \
                     (SELECT job_id FROM enterprise_backup.backup_jobs \
                       WHERE run_requested_at IS NOT NULL ORDER BY run_requested_at LIMIT $1)",
                    None,
                    &[DUE_BATCH.into()],
                ))?;
                let mut due = Vec::new();
                for row in t {
                    if let Some(id) = spi(row.get::<i64>(1))? {
                        due.push(id);
                    }
                }
                let ms = spi(c.select(
                    "SELECT (extract(epoch FROM min(next_run_at) - clock_timestamp()) * 1000)::float8 \
                       FROM enterprise_backup.backup_jobs WHERE is_active",
                    None,
                    &[],
                ))
                .and_then(|t| spi(t.first().get::<f64>(1)))?;
                Ok((due, ms))
            })
        })?;
        let now = Instant::now();
        self.backoff.retain(|_, until| *until > now);
        for job_id in due {
            if self.backoff.contains_key(&job_id) {
                continue;
            }
            let busy = self.running.iter().any(|r| r.job_id == job_id)
                || self.drills.iter().any(|d| d.job_id == job_id);
            if !busy && self.running.len() + self.drills.len() >= guc::max_running_jobs() {
                // Stays due; started when a running backup finishes.
                continue;
            }
            let native_busy = self.running.iter().any(|r| r.native.is_some());
            match self.claim(job_id, busy, native_busy) {
                Some(Some(run)) => self.running.push(run),
                Some(None) => {}
                None => {
                    self.backoff.insert(job_id, now + RETRY_AFTER);
                }
            }
        }
        let sleep = match until_next {
            Some(ms) if ms < MAX_SLEEP.as_millis() as f64 => {
                Duration::from_millis(ms.max(5.0).ceil() as u64)
            }
            _ => MAX_SLEEP,
        };
        Some(sleep)
    }

    /// In one transaction: checks the job is still due, claims its slot, records the start, moves
    /// `next_run_at` on; then starts the backup.  Some(None): nothing to start (skipped slot, or
    /// someone else changed the job).  None: failed (logged).
    fn claim(&mut self, job_id: i64, busy: bool, native_busy: bool) -> Option<Option<Running>> {
        let roots = guc::backup_roots();
        let claimed = in_transaction(&format!("starting backup job {job_id}"), || {
            Spi::connect_mut(|c| claim_in_transaction(c, job_id, busy, native_busy, roots))
        })??;
        match claimed {
            None => Some(None),
            Some(Claimed::Native(start, mut run)) => {
                match crate::native_session::begin(*start, wake_worker) {
                    Ok((session, handle)) => {
                        run.handle = handle;
                        run.native = Some(Box::new(session));
                        Some(Some(run))
                    }
                    Err(why) => {
                        record_result(&run, Err(executor::ExecError::Cancelled(why)));
                        Some(None)
                    }
                }
            }
            Some(Claimed::Backup(plan, with_globals, mut run)) => {
                run.handle = executor::start(*plan, with_globals, wake_worker);
                Some(Some(run))
            }
            Some(Claimed::Drill {
                job_id,
                execution_id,
            }) => {
                match crate::drill::start_worker(execution_id) {
                    Ok(handle) => self.drills.push(DrillRun {
                        job_id,
                        execution_id,
                        handle,
                    }),
                    Err(why) => {
                        in_transaction("recording a drill that could not start", || {
                            Spi::connect_mut(|c| {
                                end_execution(c, execution_id, "failed", None, Some(&why))
                            })
                        });
                    }
                }
                Some(None)
            }
        }
    }

    /// Drill workers that have exited: an execution they left `running` (the worker died before
    /// recording) is marked failed.
    fn reap_drills(&mut self) {
        let (done, running): (Vec<DrillRun>, Vec<DrillRun>) =
            self.drills.drain(..).partition(|d| d.handle.pid().is_err());
        self.drills = running;
        for d in done {
            in_transaction("closing a drill execution", || {
                Spi::connect_mut(|c| {
                    spi(c.update(
                        "UPDATE enterprise_backup.backup_job_executions \
                            SET execution_status = 'failed', execution_end_time = now(), phase = NULL, \
                                error_message = 'the drill worker exited without recording a result' \
                          WHERE execution_id = $1 AND execution_status = 'running'",
                        None,
                        &[d.execution_id.into()],
                    ))
                    .map(|_| ())
                })
            });
        }
    }

    /// SIGTERM: stop every running backup, record each as failed, and return.
    fn shut_down(&mut self) {
        self.upkeep.abandon();
        self.offsite.abandon();
        self.walscan.abandon();
        for run in &mut self.running {
            run.stopped = Some("the server is shutting down".into());
            run.handle.progress.cancel(libc::SIGTERM);
        }
        let t0 = Instant::now();
        while self.running.iter().any(|r| !r.handle.is_finished()) {
            if t0.elapsed() > executor::KILL_GRACE {
                for run in &self.running {
                    run.handle.progress.cancel(libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
            if t0.elapsed() > executor::KILL_GRACE * 3 {
                // A thread stuck in the kernel (e.g. a hung NFS write): leave it; the next start
                // marks its execution failed.
                return;
            }
        }
        self.reap();
    }
}

/// What `claim` hands over once its transaction committed.
enum Claimed {
    Backup(Box<Plan>, bool, Running),
    /// A native physical backup: started in this session once the claim committed.
    Native(Box<crate::native_session::NativeStart>, Running),
    /// A drill job's execution, run by a worker of its own (`drill::backup_mgmt_drill_main`).
    Drill {
        job_id: i64,
        execution_id: i64,
    },
}

fn claim_in_transaction(
    c: &mut SpiClient<'_>,
    job_id: i64,
    busy: bool,
    native_busy: bool,
    roots: Result<Vec<PathBuf>, security::PathError>,
) -> Result<Option<Option<Claimed>>, String> {
    let t = spi(c.update(
        "SELECT job_name, database_name::text, backup_type::text, backup_method::text, schedule_cron, \
                timezone, options::text, next_run_at, \
                (is_active AND next_run_at <= now()) AS scheduled, run_requested_at IS NOT NULL AS requested, \
                job_kind \
           FROM enterprise_backup.backup_jobs \
          WHERE job_id = $1 AND ((is_active AND next_run_at <= now()) OR run_requested_at IS NOT NULL) \
            FOR UPDATE SKIP LOCKED",
        None,
        &[job_id.into()],
    ))?;
    if t.is_empty() {
        return Ok(Some(None));
    }
    let row = t.first();
    let job_name = spi(row.get::<String>(1))?.unwrap_or_default();
    let database = spi(row.get::<String>(2))?.unwrap_or_default();
    let backup_type = spi(row.get::<String>(3))?.unwrap_or_default();
    let method_text = spi(row.get::<String>(4))?.unwrap_or_default();
    let cron_text = spi(row.get::<String>(5))?.unwrap_or_default();
    let zone_text = spi(row.get::<String>(6))?;
    let options: Value = serde_json::from_str(&spi(row.get::<String>(7))?.unwrap_or_default())
        .map_err(|e| e.to_string())?;
    let slot = spi(row.get::<TimestampWithTimeZone>(8))?;
    let scheduled = spi(row.get::<bool>(9))?.unwrap_or(false);
    let requested = spi(row.get::<bool>(10))?.unwrap_or(false);
    let is_drill = spi(row.get::<String>(11))?.as_deref() == Some("drill");

    let cron: CronSchedule = cron_text.parse().map_err(|e| format!("{e}"))?;
    let zone = scheduler::job_zone(zone_text.as_deref()).map_err(|e| format!("{e}"))?;
    // Catch-up rule (module comment): the next run is the first slot after now.
    let next = if scheduled {
        scheduler::next_run(&cron, zone)
    } else {
        slot
    };
    let scheduled_for = if scheduled { slot } else { None };

    if busy {
        // A job never runs twice at once: a scheduled slot that comes while the previous run is
        // still going is recorded as skipped; a manual request waits.
        if scheduled {
            spi(c.update(
                "INSERT INTO enterprise_backup.backup_job_executions \
                     (job_id, scheduled_for, execution_status, execution_end_time, error_message) \
                 VALUES ($1, $2, 'skipped', now(), 'the previous run of this job was still running') \
                 ON CONFLICT (job_id, scheduled_for) DO NOTHING",
                None,
                &[job_id.into(), scheduled_for.into()],
            ))?;
            spi(c.update(
                "UPDATE enterprise_backup.backup_jobs SET next_run_at = $2 WHERE job_id = $1",
                None,
                &[job_id.into(), next.into()],
            ))?;
            prune_history(c, job_id)?;
        }
        return Ok(Some(None));
    }
    if native_busy && method_text == BackupMethod::NativePhysical.as_str() {
        // This session already runs a native backup (a session has one): stays due.
        return Ok(Some(None));
    }

    let advance = |c: &mut SpiClient<'_>| -> Result<(), String> {
        spi(c.update(
            "UPDATE enterprise_backup.backup_jobs \
                SET last_run_at = now(), next_run_at = $2, \
                    run_requested_at = CASE WHEN $3 THEN NULL ELSE run_requested_at END \
              WHERE job_id = $1",
            None,
            &[job_id.into(), next.into(), requested.into()],
        ))
        .map(|_| ())
    };
    let inserted = spi(c.update(
        "INSERT INTO enterprise_backup.backup_job_executions (job_id, scheduled_for, execution_status, phase) \
         VALUES ($1, $2, 'running', 'starting') \
         ON CONFLICT (job_id, scheduled_for) DO NOTHING RETURNING execution_id",
        None,
        &[job_id.into(), scheduled_for.into()],
    ))?;
    let Some(execution_id) = (if inserted.is_empty() {
        None
    } else {
        spi(inserted.first().get::<i64>(1))?
    }) else {
        // This slot already has an execution: never run it twice.
        advance(c)?;
        return Ok(Some(None));
    };
    advance(c)?;
    if is_drill {
        spi(c.update(
            "UPDATE enterprise_backup.backup_job_executions SET phase = 'drill' WHERE execution_id = $1",
            None,
            &[execution_id.into()],
        ))?;
        return Ok(Some(Some(Claimed::Drill {
            job_id,
            execution_id,
        })));
    }

    let fail_execution = |c: &mut SpiClient<'_>, why: &str| -> Result<(), String> {
        warning!("backup_mgmt: job \"{job_name}\" cannot run: {why}");
        end_execution(c, execution_id, "failed", None, Some(why))
    };
    let root = match roots {
        Ok(r) => r.first().and_then(|r| r.canonicalize().ok()),
        Err(e) => {
            fail_execution(c, &format!("backup_mgmt.backup_roots is invalid: {e}"))?;
            return Ok(Some(None));
        }
    };
    let Some(root) = root else {
        fail_execution(
            c,
            "backup_mgmt.backup_roots names no existing directory to write backups to",
        )?;
        return Ok(Some(None));
    };
    let method = BackupMethod::parse(&method_text).map_err(|e| e.to_string())?;
    let compression = match options.get("compression").and_then(Value::as_str) {
        Some("none") => Compression::None,
        _ => Compression::Zstd(
            options
                .get("compression_level")
                .and_then(Value::as_i64)
                .unwrap_or(3) as i32,
        ),
    };
    let with_globals = options
        .get("include_globals")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let stem = executor::backup_stem(
        &root,
        &database,
        &job_name,
        chrono::Utc::now(),
        execution_id,
    );
    let output = executor::output_path(method, &stem, compression);
    let globals = with_globals.then(|| executor::globals_path(&stem, compression));
    let output_text = output.to_string_lossy().into_owned();
    // What a native incremental or differential backup builds on; with nothing to build on, a
    // full backup is taken (and the record says what was asked for).
    let parent = if method == BackupMethod::NativePhysical && backup_type != "full" {
        crate::native_session::choose_parent(c, &backup_type)?
    } else {
        None
    };
    let requested_type = backup_type.clone();
    let backup_type = if method == BackupMethod::NativePhysical && parent.is_none() {
        "full".to_owned()
    } else {
        backup_type
    };

    let backup_id = spi(c.update(
        "SELECT backup_mgmt.record_backup_start($1, $2, $3, $4)",
        None,
        &[
            database.as_str().into(),
            backup_type.as_str().into(),
            method_text.as_str().into(),
            output_text.as_str().into(),
        ],
    ))
    .and_then(|t| spi(t.first().get::<i64>(1)))?
    .ok_or("record_backup_start returned no id")?;
    let annotations = json!({
        "job_name": job_name,
        "execution_id": execution_id,
        "compression_level": match compression { Compression::Zstd(l) => Some(l), Compression::None => None },
        "globals_file": globals.as_ref().map(|g| g.to_string_lossy().into_owned()),
        "requested_type": (requested_type != backup_type).then_some(&requested_type),
    })
    .to_string();
    spi(c.update(
        "UPDATE backup_management.backup_records \
            SET compression = $2, label = $3, annotations = $4::jsonb, \
                system_identifier = (SELECT system_identifier FROM pg_catalog.pg_control_system()), \
                pg_version = current_setting('server_version_num')::integer, \
                timeline_id = (SELECT timeline_id FROM pg_catalog.pg_control_checkpoint()) \
          WHERE backup_id = $1",
        None,
        &[
            backup_id.into(),
            compression.as_str().into(),
            job_name.as_str().into(),
            annotations.as_str().into(),
        ],
    ))?;
    spi(c.update(
        "UPDATE enterprise_backup.backup_job_executions SET backup_id = $2 WHERE execution_id = $1",
        None,
        &[execution_id.into(), backup_id.into()],
    ))?;
    let timeout = options
        .get("timeout_seconds")
        .and_then(Value::as_u64)
        .map(Duration::from_secs);
    let parallel_jobs = options
        .get("parallel_jobs")
        .and_then(Value::as_u64)
        .unwrap_or(1) as u32;
    let fast_checkpoint = options
        .get("fast_checkpoint")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let plan = Plan {
        method,
        database: database.clone(),
        bindir: bindir(),
        connection: connection(c)?,
        compression,
        parallel_jobs,
        fast_checkpoint,
        stem,
        root,
    };
    let run = Running {
        execution_id,
        backup_id,
        job_id,
        job_name: job_name.clone(),
        database,
        timeout,
        // Replaced by the real handle once this transaction has committed.
        handle: executor::RunHandle::idle(),
        stopped: None,
        native: None,
    };
    if method == BackupMethod::NativePhysical {
        if let Some(p) = &parent {
            spi(c.update(
                "UPDATE backup_management.backup_records SET parent_backup_id = $2 WHERE backup_id = $1",
                None,
                &[backup_id.into(), p.id.into()],
            ))?;
        }
        let start = crate::native_session::NativeStart {
            backup_id,
            final_dir: output,
            parent,
            level: match compression {
                Compression::Zstd(l) => Some(l),
                Compression::None => None,
            },
            threads: parallel_jobs.max(1) as usize,
            fast: fast_checkpoint,
            label: format!("backup_mgmt {job_name} {backup_id}"),
        };
        return Ok(Some(Some(Claimed::Native(Box::new(start), run))));
    }
    Ok(Some(Some(Claimed::Backup(
        Box::new(plan),
        with_globals,
        run,
    ))))
}

/// Ends an execution: its status, final size (completed) or error (failed).
pub(crate) fn end_execution(
    c: &mut SpiClient<'_>,
    execution_id: i64,
    status: &str,
    bytes: Option<i64>,
    error: Option<&str>,
) -> Result<(), String> {
    spi(c.update(
        "UPDATE enterprise_backup.backup_job_executions \
            SET execution_status = $2, execution_end_time = now(), phase = NULL, \
                bytes_written = coalesce($3, bytes_written), error_message = $4, progress_updated_at = now() \
          WHERE execution_id = $1",
        None,
        &[execution_id.into(), status.into(), bytes.into(), error.into()],
    ))
    .map(|_| ())
}

/// Deletes a job's oldest finished executions beyond `backup_mgmt.max_history_per_job`.
fn prune_history(c: &mut SpiClient<'_>, job_id: i64) -> Result<(), String> {
    spi(c.update(
        "DELETE FROM enterprise_backup.backup_job_executions \
          WHERE job_id = $1 AND execution_status <> 'running' \
            AND execution_id < (SELECT execution_id FROM enterprise_backup.backup_job_executions \
                                 WHERE job_id = $1 ORDER BY execution_id DESC OFFSET $2 - 1 LIMIT 1)",
        None,
        &[job_id.into(), guc::max_history_per_job().into()],
    ))
    .map(|_| ())
}

/// Records a finished backup: complete with size and checksum, or failed with the reason.
fn record_result(run: &Running, result: Result<executor::Outcome, executor::ExecError>) {
    let succeeded = result.is_ok();
    let bad_pages = result
        .as_ref()
        .ok()
        .and_then(|o| o.annotations.as_ref())
        .and_then(|a| a.get("bad_pages"))
        .filter(|b| b.as_array().is_some_and(|a| !a.is_empty()))
        .cloned();
    record_result_in_catalog(run, result);
    if let Some(pages) = bad_pages {
        // In a transaction of its own, after the backup is recorded: naming the relations must
        // not be able to undo the record of a completed backup.
        in_transaction("naming the relations of damaged pages", || {
            Spi::connect_mut(|c| {
                let named = crate::native_session::describe_bad_pages(c, &pages)?;
                merge_annotations(c, run.backup_id, &json!({ "bad_pages": named }))
            })
        });
    }
    if succeeded {
        // Only after a new backup exists: the job's policy may now let older ones go.
        crate::expiry::after_backup(&run.job_name);
    }
    // After the catalog changed (and committed): the copy that survives losing the database.
    crate::mirror::refresh();
}

fn record_result_in_catalog(run: &Running, result: Result<executor::Outcome, executor::ExecError>) {
    let what = format!("recording the backup of job \"{}\"", run.job_name);
    in_transaction(&what, || {
        Spi::connect_mut(|c| {
            match &result {
                Ok(outcome) => {
                    let size = outcome.main.size as i64;
                    spi(c.update(
                        "SELECT backup_mgmt.record_backup_complete($1, $2, $3)",
                        None,
                        &[
                            run.backup_id.into(),
                            size.into(),
                            outcome.main.sha256.as_str().into(),
                        ],
                    ))?;
                    if let Some(facts) = &outcome.facts {
                        let value = match facts {
                            Ok(rows) => json!({ "row_counts": rows }),
                            Err(why) => json!({ "row_counts_unavailable": why }),
                        };
                        merge_annotations(c, run.backup_id, &value)?;
                    }
                    if let Some(w) = &outcome.wal {
                        // SAFETY: a plain global, set once at startup.
                        let segment_size = unsafe { pg_sys::wal_segment_size } as u64;
                        let (first, last) = w.segments(segment_size);
                        spi(c.update(
                            "UPDATE backup_management.backup_records \
                                SET start_lsn = $2::text::pg_lsn, stop_lsn = $3::text::pg_lsn, \
                                    start_wal_segment = $4, stop_wal_segment = $5, timeline_id = $6 \
                              WHERE backup_id = $1",
                            None,
                            &[
                                run.backup_id.into(),
                                executor::format_lsn(w.start_lsn).into(),
                                executor::format_lsn(w.stop_lsn).into(),
                                first.into(),
                                last.into(),
                                (w.timeline as i32).into(),
                            ],
                        ))?;
                    }
                    if let Some(extra) = &outcome.annotations {
                        merge_annotations(c, run.backup_id, extra)?;
                    }
                    if let Some(g) = &outcome.globals {
                        spi(c.update(
                            "UPDATE backup_management.backup_records \
                                SET annotations = coalesce(annotations, '{}') || \
                                    jsonb_build_object('globals_size', $2::bigint, 'globals_sha256', $3::text) \
                              WHERE backup_id = $1",
                            None,
                            &[
                                run.backup_id.into(),
                                (g.size as i64).into(),
                                g.sha256.as_str().into(),
                            ],
                        ))?;
                    }
                    end_execution(c, run.execution_id, "completed", Some(size), None)?;
                    let path = outcome.main.path.to_string_lossy();
                    events::notify(&events::Event::BackupCompleted {
                        backup_id: run.backup_id,
                        job_name: &run.job_name,
                        database_name: &run.database,
                        backup_file_path: &path,
                        backup_size: size,
                        checksum: &outcome.main.sha256,
                    });
                }
                Err(e) => {
                    let message = match &run.stopped {
                        Some(why) => format!("{why}: {e}"),
                        None => e.to_string(),
                    };
                    // Also logs, and notifies listeners.
                    spi(c.update(
                        "SELECT backup_mgmt.record_backup_failure($1, $2)",
                        None,
                        &[run.backup_id.into(), message.as_str().into()],
                    ))?;
                    end_execution(c, run.execution_id, "failed", None, Some(&message))?;
                }
            }
            prune_history(c, run.job_id)
        })
    });
}

/// Adds `value`'s keys to a backup record's annotations.
fn merge_annotations(c: &mut SpiClient<'_>, backup_id: i64, value: &Value) -> Result<(), String> {
    spi(c.update(
        "UPDATE backup_management.backup_records \
            SET annotations = coalesce(annotations, '{}') || $2::text::jsonb \
          WHERE backup_id = $1",
        None,
        &[backup_id.into(), value.to_string().into()],
    ))
    .map(|_| ())
}

/// Removes an interrupted backup's output (final name, if the rename happened before the crash,
/// and its `.partial`), only inside the backup roots, and only regular files or directories.
fn remove_output(path: &str) {
    let Ok(roots) = guc::backup_roots() else {
        return;
    };
    let partial = executor::partial_path(Path::new(path));
    for candidate in [PathBuf::from(path), partial] {
        let text = candidate.to_string_lossy();
        if let Err(e) = security::remove_confined(&text, &roots) {
            warning!("backup_mgmt: not removing \"{text}\": {e}");
        }
    }
}
