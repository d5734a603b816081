//! Threads inside a PostgreSQL process: every thread backup_mgmt starts blocks all signals, so
//! that PostgreSQL's handlers (which touch process-global state) only ever run on the
//! process's own thread.  Also the helper-thread handle the worker polls, a parallel runner over
//! a list of items, and a throttle for periodic work.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Blocks every signal on the calling thread (a helper thread, at its start).
pub fn block_all_signals() {
    // SAFETY: plain libc calls on a local, initialised signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Runs `f` (which starts threads) with every signal blocked on the calling thread, so that the
/// threads it starts inherit the blocked mask from their first instruction; the caller's mask is
/// restored afterwards and signals that arrived meanwhile are delivered then.
pub fn with_signals_blocked<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: plain libc calls on local, initialised signal sets.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let r = f();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

/// Work handed to a helper thread (verification, off-site copies, WAL scans) that a loop polls
/// without blocking.  `on_done` runs on the helper thread when the work has finished (the
/// worker passes a function that sets its latch, so it looks at once).
pub struct Helper<T> {
    thread: std::thread::JoinHandle<T>,
    /// Set just before `on_done` runs (the thread ends a moment later).
    done: Arc<AtomicBool>,
}

impl<T: Send + 'static> Helper<T> {
    pub fn spawn(work: impl FnOnce() -> T + Send + 'static, on_done: fn()) -> Helper<T> {
        let done = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&done);
        let thread = std::thread::spawn(move || {
            block_all_signals();
            let result = work();
            flag.store(true, Ordering::SeqCst);
            on_done();
            result
        });
        Helper { thread, done }
    }

    pub fn is_finished(&self) -> bool {
        self.done.load(Ordering::SeqCst) || self.thread.is_finished()
    }

    /// The result (None when the thread panicked); waits for the thread to end.
    pub fn join(self) -> Option<T> {
        self.thread.join().ok()
    }
}

/// "At most once every so often", for a loop's periodic look-ups.
#[derive(Debug, Default)]
pub struct Throttle(Option<Instant>);

impl Throttle {
    /// Whether `every` has passed since the last time this said yes (yes the first time).
    pub fn ready(&mut self, every: Duration) -> bool {
        if self.0.is_some_and(|t| t.elapsed() < every) {
            return false;
        }
        self.0 = Some(Instant::now());
        true
    }
}

/// Runs `work` on every item on `threads` threads (signals blocked, one `buf_size` buffer each).
/// No new item is started after the first failure or once `cancel` is set; returns the first
/// failure.
pub fn in_parallel<T: Sync, E: Send>(
    items: &[T],
    threads: usize,
    buf_size: usize,
    cancel: &AtomicBool,
    work: impl Fn(&T, &mut [u8]) -> Result<(), E> + Sync,
) -> Option<E> {
    let next = AtomicUsize::new(0);
    let first_failure: Mutex<Option<E>> = Mutex::new(None);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                block_all_signals();
                let mut buf = vec![0u8; buf_size];
                loop {
                    if stop.load(Ordering::Relaxed) || cancel.load(Ordering::Relaxed) {
                        return;
                    }
                    let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        return;
                    };
                    if let Err(e) = work(item, &mut buf) {
                        stop.store(true, Ordering::Relaxed);
                        let mut slot = first_failure.lock().unwrap_or_else(|e| e.into_inner());
                        slot.get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    first_failure
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
}

/// Cores to use for parallel work (at least 1).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_says_yes_once_per_period() {
        let mut t = Throttle::default();
        assert!(t.ready(Duration::from_secs(60)));
        assert!(!t.ready(Duration::from_secs(60)));
        assert!(t.ready(Duration::ZERO));
    }

    #[test]
    fn parallel_runner_stops_at_the_first_failure() {
        let items: Vec<u32> = (0..1000).collect();
        let seen = AtomicUsize::new(0);
        let failure = in_parallel(&items, 4, 16, &AtomicBool::new(false), |i, buf| {
            assert_eq!(buf.len(), 16);
            seen.fetch_add(1, Ordering::Relaxed);
            if *i == 10 {
                Err(*i)
            } else {
                Ok(())
            }
        });
        assert_eq!(failure, Some(10));
        assert!(seen.load(Ordering::Relaxed) < 1000);
        let all = in_parallel(&items, 3, 1, &AtomicBool::new(false), |_, _| {
            Ok::<(), ()>(())
        });
        assert!(all.is_none());
    }

    #[test]
    fn helper_reports_when_done() {
        fn nothing() {}
        let h = Helper::spawn(|| 41 + 1, nothing);
        while !h.is_finished() {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(h.join(), Some(42));
    }
}
