//! The scheduler: one background worker, in the style of pg_cron's launcher.
//!
//! It connects to `backup_mgmt.database_name`, sleeps on its latch until the next job is due (at
//! most a second, so job changes are noticed within one), and starts each due backup on its own
//! thread (`backup_mgmt_core::backup`), so the loop is never blocked by a running backup.  Only this thread
//! talks to PostgreSQL.  Every catalog step runs in its own transaction whose errors are caught,
//! logged and rolled back: a failing job never stops the worker.
//!
//! Registered with `BgWorkerStart_RecoveryFinished`, it does not run on a standby and starts
//! after promotion.  Postmaster restarts it 5 seconds after a crash.
//!
//! Crash safety: the only process that runs jobs is this one, so an execution still `running`
//! when it starts was interrupted (server crash, kill -9): it is marked failed, its backup record
//! too, and its partial output removed (`results`).  A slot is claimed in the same transaction
//! that moves the job's `next_run_at` forward, under a unique (job, slot) key: a restart never
//! runs a slot twice (`claim`; the catch-up and skip rules are `backup_mgmt_core::job`).
//!
//! Besides jobs, each tick gives the periodic tasks of other modules their turn: integrity
//! upkeep, WAL catalog ingest, off-site copies and the WAL transaction-time scan.  Each keeps
//! its own state and helper thread; none of them imports this module.

mod claim;
mod results;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use backup_mgmt_core::backup::{logical, RunHandle};
use backup_mgmt_core::process::KILL_GRACE;
use backup_mgmt_core::threads::Throttle;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;
use pgrx::spi::SpiError;

use crate::jobs::executions::end_execution;
use crate::methods::native as native_method;
use crate::pg::guc;
use crate::pg::server::{self, WORKER_TYPE};
use crate::pg::spi::in_transaction;
use crate::verification::{drill, upkeep::Upkeep};
use claim::Claimed;
use results::record_result;

/// What a worker step can fail with (logged by `in_transaction`, and the step retried later).
#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkerError {
    #[error("catalog access failed: {0}")]
    Spi(#[from] SpiError),
    #[error(transparent)]
    Schedule(#[from] backup_mgmt_core::cron::ScheduleError),
    #[error(transparent)]
    Catalog(#[from] backup_mgmt_core::vocabulary::CatalogError),
    #[error("the job's options are not JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Record(#[from] crate::catalog::records::RecordError),
}

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

pub fn init() {
    // SAFETY: a plain global PostgreSQL sets while it loads shared_preload_libraries.
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
    // Before any query: this session is a superuser's (CVE-2018-1058).
    guc::pin_search_path();
    log!("backup_mgmt scheduler started in database \"{database}\"");
    let mut scheduler = Scheduler::default();
    scheduler.run();
}

/// A backup the worker started and has not recorded yet.
pub(crate) struct Running {
    execution_id: i64,
    backup_id: i64,
    job_id: i64,
    job_name: String,
    timeout: Option<Duration>,
    handle: RunHandle,
    /// Why it was stopped, when the worker stopped it (timeout, shutdown).
    stopped: Option<String>,
    /// A native physical backup's session side (pg_backup_stop is due when the copy ends).
    native: Option<Box<native_method::Session>>,
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
    upkeep: Upkeep,
    /// Drill jobs running in workers of their own.
    drills: Vec<DrillRun>,
    /// Archived WAL, from the archive module's manifests into the catalog.
    wal: crate::recovery::wal_catalog::Ingest,
    offsite: crate::offsite::Offsite,
    /// Archived WAL copied to every active off-site target.
    offsite_wal: crate::offsite::wal::WalShipping,
    /// Transaction times of archived WAL, for recovery planning.
    walscan: crate::recovery::walscan::WalScan,
    /// The WAL archive compared with the disk.
    walcheck: crate::recovery::wal_check::WalCheck,
}

/// A drill job's execution, run by a dynamic background worker.
struct DrillRun {
    job_id: i64,
    execution_id: i64,
    handle: pgrx::bgworkers::DynamicBackgroundWorker,
}

/// Whether the postmaster is still alive: a non-blocking read of its death pipe, as
/// PostgreSQL's own PostmasterIsAliveInternal() does (EOF once the postmaster is gone).  Not
/// WaitLatch: that returns at once when the latch is set, without looking at the pipe.
fn postmaster_alive() -> bool {
    // SAFETY: a plain global array PostgreSQL fills at startup.
    let fd = unsafe { pg_sys::postmaster_alive_fds[pg_sys::POSTMASTER_FD_WATCH as usize] };
    let mut byte = 0u8;
    // SAFETY: a one-byte read into a local from PostgreSQL's (non-blocking) pipe descriptor.
    let n = unsafe { libc::read(fd, (&raw mut byte).cast(), 1) };
    n != 0
}

/// Why the backups running when the worker got SIGTERM failed: a server shutdown, or someone's
/// pg_terminate_backend of the worker.
const SHUTTING_DOWN: &str =
    "the backup_mgmt worker is shutting down (SIGTERM: the server stopping, or pg_terminate_backend)";

/// Whether SIGTERM has come (the flag pgrx's SIGTERM handler sets, `ShutdownRequestPending`,
/// read without clearing it, unlike `BackgroundWorker::sigterm_received`).
fn shutdown_requested() -> bool {
    // SAFETY: a volatile read of a sig_atomic_t that only the signal handler writes.
    unsafe { (&raw const pg_sys::ShutdownRequestPending).read_volatile() != 0 }
}

impl Scheduler {
    fn run(&mut self) {
        loop {
            if BackgroundWorker::sighup_received() {
                // SAFETY: reloading the configuration between transactions, on the main thread.
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
                Spi::get_one::<bool>(
                    "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'backup_mgmt')",
                )
            })
            .flatten()
            .unwrap_or(false);
            if !self.installed {
                return NOT_INSTALLED_SLEEP;
            }
        }
        if !self.recovered {
            self.recovered = results::recover_interrupted();
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
            self.offsite_wal.tick();
            self.walscan.tick();
            self.walcheck.tick();
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
                result = native_method::finish(*session, result);
            }
            // A fast shutdown terminates the backup's own connection too, and the backup may
            // fail of that before this loop sees its SIGTERM: recorded as the shutdown's doing.
            if result.is_err() && run.stopped.is_none() && shutdown_requested() {
                run.stopped = Some(SHUTTING_DOWN.into());
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
            } else if elapsed > limit + KILL_GRACE {
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
                    c.update(
                        "UPDATE enterprise_backup.backup_job_executions \
                            SET phase = $2, bytes_written = $3, progress_updated_at = now() \
                          WHERE execution_id = $1 AND execution_status = 'running'",
                        None,
                        &[id.into(), phase.into(), bytes.into()],
                    )?;
                }
                Ok::<(), SpiError>(())
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
                let t = c.select(
                    "(SELECT job_id FROM enterprise_backup.backup_jobs \
                       WHERE is_active AND next_run_at <= now() ORDER BY next_run_at LIMIT $1) \
                     UNION \
                     (SELECT job_id FROM enterprise_backup.backup_jobs \
                       WHERE run_requested_at IS NOT NULL ORDER BY run_requested_at LIMIT $1)",
                    None,
                    &[DUE_BATCH.into()],
                )?;
                let mut due = Vec::new();
                for row in t {
                    if let Some(id) = row.get::<i64>(1)? {
                        due.push(id);
                    }
                }
                let ms = c
                    .select(
                        "SELECT (extract(epoch FROM min(next_run_at) - clock_timestamp()) * 1000)::float8 \
                           FROM enterprise_backup.backup_jobs WHERE is_active",
                        None,
                        &[],
                    )?
                    .first()
                    .get::<f64>(1)?;
                Ok::<_, SpiError>((due, ms))
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
                Started::Backup(run) => self.running.push(run),
                Started::Nothing => {}
                Started::Failed => {
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
    /// `next_run_at` on (`claim`); then starts what was claimed.
    fn claim(&mut self, job_id: i64, busy: bool, native_busy: bool) -> Started {
        let claimed = in_transaction(&format!("starting backup job {job_id}"), || {
            Spi::connect_mut(|c| claim::claim_in_transaction(c, job_id, busy, native_busy))
        });
        match claimed {
            None => Started::Failed,
            Some(Claimed::Nothing) => Started::Nothing,
            Some(Claimed::Native(start, mut run)) => {
                match native_method::begin(*start, server::wake_worker) {
                    Ok((session, handle)) => {
                        run.handle = handle;
                        run.native = Some(Box::new(session));
                        Started::Backup(run)
                    }
                    Err(why) => {
                        record_result(&run, Err(why));
                        Started::Nothing
                    }
                }
            }
            Some(Claimed::Backup(plan, mut run)) => {
                run.handle = logical::start(*plan, server::wake_worker);
                Started::Backup(run)
            }
            Some(Claimed::Drill {
                job_id,
                execution_id,
            }) => {
                match drill::start_worker(execution_id) {
                    Ok(handle) => self.drills.push(DrillRun {
                        job_id,
                        execution_id,
                        handle,
                    }),
                    Err(why) => {
                        in_transaction("recording a drill that could not start", || {
                            Spi::connect_mut(|c| {
                                end_execution(
                                    c,
                                    execution_id,
                                    "failed",
                                    None,
                                    Some(&why.to_string()),
                                )
                            })
                        });
                    }
                }
                Started::Nothing
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
                    c.update(
                        "UPDATE enterprise_backup.backup_job_executions \
                            SET execution_status = 'failed', execution_end_time = now(), phase = NULL, \
                                error_message = 'the drill worker exited without recording a result' \
                          WHERE execution_id = $1 AND execution_status = 'running'",
                        None,
                        &[d.execution_id.into()],
                    )
                    .map(|_| ())
                })
            });
        }
    }

    /// SIGTERM: stop every running backup, record each as failed, and return.
    fn shut_down(&mut self) {
        self.upkeep.abandon();
        self.offsite.abandon();
        self.offsite_wal.abandon();
        self.walscan.abandon();
        self.walcheck.abandon();
        for run in &mut self.running {
            run.stopped = Some(SHUTTING_DOWN.into());
            run.handle.progress.cancel(libc::SIGTERM);
        }
        let t0 = Instant::now();
        while self.running.iter().any(|r| !r.handle.is_finished()) {
            if t0.elapsed() > KILL_GRACE {
                for run in &self.running {
                    run.handle.progress.cancel(libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
            if t0.elapsed() > KILL_GRACE * 3 {
                // A thread stuck in the kernel (e.g. a hung NFS write): leave it; the next start
                // marks its execution failed.
                return;
            }
        }
        self.reap();
    }
}

/// What `claim` started.
enum Started {
    Backup(Running),
    Nothing,
    /// The claim failed (logged): the job is not tried again for a while.
    Failed,
}
