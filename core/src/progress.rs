//! Progress and cancellation of long work running on a thread of its own (a backup, a restore
//! test, a verification): the thread publishes its phase, its byte count and the pid of the
//! program it runs through atomics; the loop that started it reads them, and cancels by setting
//! a flag and signalling the program.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8, Ordering};

/// What a running backup is doing, for the progress view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Starting = 0,
    DumpingGlobals = 1,
    Streaming = 2,
    WaitingForPgDump = 3,
    CompressingFiles = 4,
    Syncing = 5,
    Done = 6,
    CopyingFiles = 7,
    StoppingBackup = 8,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::DumpingGlobals => "dumping globals",
            Phase::Streaming => "streaming backup",
            Phase::WaitingForPgDump => "waiting for pg_dump",
            Phase::CompressingFiles => "compressing and checksumming files",
            Phase::Syncing => "syncing to disk",
            Phase::Done => "finishing",
            Phase::CopyingFiles => "copying data files",
            Phase::StoppingBackup => "stopping backup and copying its WAL",
        }
    }
    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::DumpingGlobals,
            2 => Phase::Streaming,
            3 => Phase::WaitingForPgDump,
            4 => Phase::CompressingFiles,
            5 => Phase::Syncing,
            6 => Phase::Done,
            7 => Phase::CopyingFiles,
            8 => Phase::StoppingBackup,
            _ => Phase::Starting,
        }
    }
}

/// Shared between the working thread and the loop that watches it.
#[derive(Debug, Default)]
pub struct Progress {
    bytes: AtomicU64,
    phase: AtomicU8,
    child: AtomicI32,
    cancelled: AtomicBool,
    finished: AtomicBool,
}

impl Progress {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }
    pub fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Relaxed);
    }
    /// Stops the work: its running program gets `signal`, and no further step starts.
    pub fn cancel(&self, signal: i32) {
        self.cancelled.store(true, Ordering::SeqCst);
        let pid = self.child.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill(2) on a pid we spawned and have not reaped (the thread clears it before
            // waiting returns), so it cannot name a recycled process.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
    /// The byte counter, for stages that count as they go.
    pub fn bytes_counter(&self) -> &AtomicU64 {
        &self.bytes
    }
    /// The flag `cancel` sets, for loops that poll it.
    pub fn cancel_flag(&self) -> &AtomicBool {
        &self.cancelled
    }
    /// The program now running (0: none), so that `cancel` can signal it.
    pub fn set_child(&self, pid: i32) {
        self.child.store(pid, Ordering::SeqCst);
    }
    pub fn child(&self) -> i32 {
        self.child.load(Ordering::SeqCst)
    }
    pub fn set_finished(&self) {
        self.finished.store(true, Ordering::SeqCst);
    }
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }
}

/// Borrowed counters of work that runs on several threads (a native copy, a verification).
#[derive(Clone, Copy)]
pub struct Counters<'a> {
    pub bytes: &'a AtomicU64,
    pub cancel: &'a AtomicBool,
    /// Files done (written, or kept by a delta restore), where someone shows them.
    pub files: Option<&'a AtomicU64>,
}

impl Progress {
    pub fn counters(&self) -> Counters<'_> {
        Counters {
            bytes: &self.bytes,
            cancel: &self.cancelled,
            files: None,
        }
    }
}
