//! Which way a restore writes its large files: past the page cache or through it.
//!
//! Which way pays off depends on the device, not only on the kernel: on the machines this
//! project was first measured on, direct writes of 800 MB took 0.4–0.8 s against 1.4–1.7 s
//! through the cache; on a later virtual disk the same direct writes took 2.7–3.5 s against
//! 1.5–1.7 s through the cache (and a restore 3.2–3.5 s against 2.5–2.8 s).  So a restore
//! measures both on its own first large file (`Pace`): alternating steps of `PROBE_STEP` bytes
//! written directly and through the cache (the latter timed until the device has them,
//! `sync_file_range` with waits), and from then on writes every large file the faster way.
//! `files::direct` takes the steps and follows the verdict.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Bytes of each step of the measurement (`Pace`): a few hundred 1 MB writes' worth would
/// take too long to be spent on the slower way; fewer would be one disk hiccup.
pub(crate) const PROBE_STEP: u64 = 8 << 20;
/// Steps, alternating past the cache and through it (so that a slow moment of the disk is
/// less likely to fall on one way only).
pub(crate) const PROBE_STEPS: u32 = 4;
/// A file at least this large may measure: the steps and as much again.
pub const PROBE_FROM: u64 = 2 * PROBE_STEPS as u64 * PROBE_STEP;

/// Which way a restore writes its large files: past the page cache (as it starts) or through
/// it, once its first file of `PROBE_FROM` bytes or more has measured both (see the module's
/// documentation).  One per restore, shared by its files and their helper threads.
#[derive(Debug, Default)]
pub struct Pace {
    /// A file took the measurement (it may have given up: the kernel refused direct writes).
    claimed: AtomicBool,
    verdict: AtomicU8,
    /// What the measurement found, in MB/s: past the cache, through it.
    direct_rate: AtomicU64,
    buffered_rate: AtomicU64,
}

/// `Pace::verdict`: not measured yet (files go past the cache, as before), measured.
const UNKNOWN: u8 = 0;
const PAST_CACHE: u8 = 1;
const THROUGH_CACHE: u8 = 2;

/// What a restore's measurement found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Measured {
    /// Large files went through the page cache from then on.
    pub through_cache: bool,
    /// MB/s written past the cache, and through it until the device had the bytes.
    pub direct_rate: u64,
    pub buffered_rate: u64,
}

impl Pace {
    pub fn new() -> Arc<Pace> {
        Arc::new(Pace::default())
    }

    /// Whether large files are to go through the page cache (measured so).
    pub fn through_cache(&self) -> bool {
        self.verdict.load(Ordering::Acquire) == THROUGH_CACHE
    }

    /// The measurement, once made.
    pub fn measured(&self) -> Option<Measured> {
        (self.verdict.load(Ordering::Acquire) != UNKNOWN).then(|| Measured {
            through_cache: self.through_cache(),
            direct_rate: self.direct_rate.load(Ordering::Relaxed),
            buffered_rate: self.buffered_rate.load(Ordering::Relaxed),
        })
    }

    /// Whether the caller is the one file to measure.
    pub(crate) fn claim(&self) -> bool {
        !self.claimed.swap(true, Ordering::AcqRel)
    }

    /// Records the measurement of `bytes` each way: through the cache only when that was at
    /// least a quarter faster, since past it the kernel spends no CPU copying and writing back
    /// (on two cores, CPU the hashing and decompressing threads need).  Returns the verdict.
    pub(crate) fn decide(&self, bytes: u64, direct: Duration, buffered: Duration) -> bool {
        let rate = |d: Duration| (bytes as f64 / 1e6 / d.as_secs_f64().max(1e-9)) as u64;
        self.direct_rate.store(rate(direct), Ordering::Relaxed);
        self.buffered_rate.store(rate(buffered), Ordering::Relaxed);
        let through = buffered.as_secs_f64() < direct.as_secs_f64() * 0.8;
        let verdict = if through { THROUGH_CACHE } else { PAST_CACHE };
        self.verdict.store(verdict, Ordering::Release);
        through
    }
}

/// The measuring file's progress through its steps.
pub(crate) struct Probe {
    pub(crate) pace: Arc<Pace>,
    /// Steps done; even ones go past the cache, odd ones through it.
    pub(crate) step: u32,
    /// Where the current step began.
    pub(crate) from: u64,
    /// Time spent in the current step's writes so far.
    pub(crate) spent: Duration,
    /// Total per way: past the cache, through it.
    pub(crate) took: [Duration; 2],
}
