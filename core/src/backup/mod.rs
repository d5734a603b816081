//! Taking backups, in plain Rust: a backup runs on a thread of its own so that the worker's loop
//! (which alone talks to the catalog) is never blocked; the thread reports through `Progress`.
//!
//! - `layout`: where a backup goes under a backup root, and what it is named;
//! - `logical`: pg_dump, pg_dump directory format, pg_basebackup, pg_dumpall --globals-only;
//! - `incremental_base`: what a block-level incremental pg_basebackup builds on;
//! - `native`: the native physical copy engine (full, incremental, differential);
//! - `archive`: the WAL archive module's copy of one WAL file.

pub mod archive;
pub mod incremental_base;
pub mod layout;
pub mod logical;
pub mod native;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::files::error::IoError;
use crate::process::ProcessError;
use crate::progress::Progress;
use crate::stream::PumpError;
use crate::threads::block_all_signals;
use crate::wal::WalRange;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Program(#[from] ProcessError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{what}: {source}")]
    Stream {
        what: String,
        #[source]
        source: PumpError,
    },
    #[error("refusing to write outside backup_mgmt.backup_roots through \"{0}\"")]
    OutsideRoot(PathBuf),
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// A native backup step that failed, with its reason.
    #[error("{0}")]
    Native(String),
    /// The backup an incremental was to build on is not what the catalog recorded: the worker
    /// records that as a failed verification of it, so that the next run builds on another.
    #[error("the parent backup {id} (\"{}\") cannot be built on: {detail}; take a full backup", path.display())]
    DamagedParent {
        id: i64,
        path: PathBuf,
        damage: Damage,
        detail: String,
    },
}

/// What is wrong with a parent backup's stored file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    Missing,
    Unreadable,
    Changed,
}

/// A file the backup produced, with its size and sha256 as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub path: PathBuf,
    pub size: u64,
    pub sha256: String,
}

/// Row counts per table of a logical dump, read off it as it was written (or why not).
pub type RowCounts = Result<BTreeMap<String, u64>, crate::pgformat::dumpfacts::Unavailable>;

/// A finished backup: the main output (for a directory, the manifest's sha256 and the total
/// size) and the globals file beside a logical dump.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub main: Written,
    pub globals: Option<Written>,
    pub facts: Option<RowCounts>,
    /// The roles that own something in a logical dump (what its globals must create).
    pub owners: Option<BTreeSet<String>>,
    /// Where a base backup's WAL starts and ends (what point-in-time recovery replays from).
    pub wal: Option<WalRange>,
    /// More facts for the record's annotations (a native backup's file counts, bad pages).
    pub annotations: Option<serde_json::Value>,
}

impl Outcome {
    /// An outcome with only its main output.
    pub fn of(main: Written) -> Outcome {
        Outcome {
            main,
            globals: None,
            facts: None,
            owners: None,
            wal: None,
            annotations: None,
        }
    }
}

/// A backup running on its own thread.
pub struct RunHandle {
    pub progress: Arc<Progress>,
    thread: Option<JoinHandle<Result<Outcome, BackupError>>>,
    pub started: Instant,
}

impl RunHandle {
    /// A placeholder with no thread (reported finished).
    pub fn idle() -> RunHandle {
        RunHandle {
            progress: Arc::default(),
            thread: None,
            started: Instant::now(),
        }
    }
    pub fn is_finished(&self) -> bool {
        self.progress.is_finished() || self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
    /// The result; call once `is_finished()` (it blocks otherwise).
    pub fn join(&mut self) -> Result<Outcome, BackupError> {
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(BackupError::Cancelled("the backup thread panicked".into())),
            None => Err(BackupError::Cancelled("already collected".into())),
        }
    }
}

/// Runs `work` on a new backup thread (signals blocked), which calls `on_done` when finished.
pub fn start_work(
    work: impl FnOnce(&Progress) -> Result<Outcome, BackupError> + Send + 'static,
    on_done: fn(),
) -> RunHandle {
    let progress = Arc::new(Progress::default());
    let p = Arc::clone(&progress);
    let thread = std::thread::Builder::new()
        .name("backup_mgmt backup".into())
        .spawn(move || {
            block_all_signals();
            let result = work(&p);
            // Before waking the loop: it checks this flag, and the thread may take a moment more
            // to end after on_done() returns.
            p.set_finished();
            on_done();
            result
        });
    let thread = match thread {
        Ok(t) => Some(t),
        Err(e) => {
            // Report the failure through join() rather than panicking in the worker loop.
            let err = e.to_string();
            Some(std::thread::spawn(move || {
                Err(BackupError::Cancelled(format!(
                    "could not start backup thread: {err}"
                )))
            }))
        }
    };
    RunHandle {
        progress,
        thread,
        started: Instant::now(),
    }
}
