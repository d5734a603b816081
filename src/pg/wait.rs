//! Long work from a SQL function (a verification, a restore test, a drill): the work runs on a
//! helper thread while this backend waits on its latch, so that a cancel request (or
//! `statement_timeout`, or SIGTERM to a drill worker) stops it instead of waiting for it to end.

use std::sync::Arc;

use backup_mgmt_core::progress::Progress;
use backup_mgmt_core::threads::block_all_signals;
use pgrx::pg_sys;

/// Runs `work` on a helper thread and returns its result; on cancel or termination the work is
/// stopped first (its programs get SIGTERM, its loops see the flag), then PostgreSQL raises its
/// error.
pub fn in_background<T: Send + 'static>(
    work: impl FnOnce(Arc<Progress>) -> T + Send + 'static,
) -> T {
    let progress = Arc::new(Progress::default());
    let p = Arc::clone(&progress);
    let handle = std::thread::spawn(move || {
        block_all_signals();
        work(p)
    });
    while !handle.is_finished() {
        // SAFETY: waiting on this backend's own latch, on its own thread.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                20,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
        // SAFETY: plain flags set by PostgreSQL's signal handlers, read on the main thread.
        if unsafe { pg_sys::InterruptPending == 0 && pg_sys::ShutdownRequestPending == 0 } {
            continue;
        }
        // (ShutdownRequestPending: SIGTERM to a backup_mgmt worker running a drill.)
        // SAFETY: as above.
        if unsafe {
            pg_sys::QueryCancelPending != 0
                || pg_sys::ProcDiePending != 0
                || pg_sys::ShutdownRequestPending != 0
        } {
            // Cancel or terminate: stop the work first, then let PostgreSQL raise its error.
            progress.cancel(libc::SIGTERM);
            let _ = handle.join();
            pg_sys::check_for_interrupts!();
            pgrx::error!("backup_mgmt: interrupted");
        }
        // Anything else must be served while we wait, or the work itself can hang: DROP
        // DATABASE (run by the work) waits until every backend, this one included, has absorbed
        // its procsignal barrier.
        pg_sys::check_for_interrupts!();
    }
    match handle.join() {
        Ok(v) => v,
        Err(_) => pgrx::error!("backup_mgmt: helper thread panicked"),
    }
}
