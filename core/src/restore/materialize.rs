//! Turning a native backup's chain back into a data directory: every file from the backup that
//! holds it, decompressed and checked against the chain manifest's sha256, tablespaces in a
//! directory of the restorer's choosing linked from `pg_tblspc/<oid>`, and PostgreSQL's manifest
//! as `backup_manifest` for `pg_verifybackup`.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::files::beneath;
use crate::files::direct::{Pace, RestoredFile, Writes};
use crate::files::durable;
use crate::files::error::IoError;
use crate::manifest::native::{FileRecord, Manifest};
use crate::manifest::postgres::{self, PG_MANIFEST, PG_MANIFEST_ZST};
use crate::pgformat::datadir::{restore_own, TABLESPACE_MAP};
use crate::progress::Counters;
use crate::stream;
use crate::verify::native::{cancelled, judge, read_into_file, read_stream};
use crate::verify::{self, Reason, Report};

/// The largest PostgreSQL `backup_manifest` read (it is read whole into memory to check its
/// own checksum): about 200 bytes a file, so five million files.
const PG_MANIFEST_LIMIT: u64 = 1 << 30;

pub use crate::pgformat::datadir::{CONTROL, CONTROL_HELD, CONTROL_STAGED};

/// A tablespace's directory in a backup (`pg_tblspc/<oid>`): its oid.
pub fn tablespace_oid(dir: &str) -> Option<&str> {
    let oid = dir.strip_prefix("pg_tblspc/")?;
    (!oid.is_empty() && oid.bytes().all(|b| b.is_ascii_digit())).then_some(oid)
}

/// Why a stored file could not be opened: where it is on this host, or on a target.
#[derive(Debug, thiserror::Error)]
pub enum OpenStoredError {
    #[error(transparent)]
    Local(#[from] crate::files::open::OpenError),
    #[error(transparent)]
    Target(#[from] crate::storage::StorageError),
}

/// A stored file opened for reading, or why not.
pub type Opened = Result<Box<dyn Read + Send>, OpenStoredError>;

/// Where the stored files of a chain come from: opened by holder and stored path (`None`: that
/// backup is not available), and named in reports.
pub trait StoredFiles: Sync {
    fn open(&self, holder: i64, stored: &str) -> Option<Opened>;
    fn shown(&self, holder: i64, stored: &str) -> PathBuf;
    /// The files about to be opened, in order, by `at_once` threads: a source whose every open
    /// is a round trip starts the next ones' requests early.
    fn will_open(&self, _order: &[(i64, &str)], _at_once: usize) {}
}

/// The chain's backup directories on this host, by backup id.
pub struct LocalHolders<'a>(pub &'a HashMap<i64, PathBuf>);

impl StoredFiles for LocalHolders<'_> {
    fn open(&self, holder: i64, stored: &str) -> Option<Opened> {
        let path = self.0.get(&holder)?.join(stored);
        Some(
            crate::files::open::open_regular(&path)
                .map(|f| Box::new(f) as Box<dyn Read + Send>)
                .map_err(OpenStoredError::from),
        )
    }
    fn shown(&self, holder: i64, stored: &str) -> PathBuf {
        self.0
            .get(&holder)
            .map_or_else(|| PathBuf::from(stored), |d| d.join(stored))
    }
}

/// How a restore writes its files: how many at a time, past the page cache or not, and with
/// `pace` (when past it) whichever way the device takes faster, measured on the first large
/// file (`files::direct::Pace`).
#[derive(Debug, Clone, Copy)]
pub struct Writers<'a> {
    pub threads: usize,
    pub writes: Writes,
    pub pace: Option<&'a Arc<Pace>>,
}

/// Builds the complete data directory of a backup in `dest` (created, mode 0700) from its
/// chain: every file from its holder, decompressed and checked against the manifest's sha256,
/// plus PostgreSQL's manifest as `backup_manifest` for pg_verifybackup.  A scratch copy (a
/// restore test's): nothing made durable, the control file written with the rest.  Each tablespace goes
/// to `tablespaces/<oid>` (created), linked from `pg_tblspc/<oid>` as PostgreSQL requires.
pub fn materialize(
    manifest: &Manifest,
    holders: &HashMap<i64, PathBuf>,
    dest: &Path,
    tablespaces: &Path,
    writers: Writers,
    counters: &Counters<'_>,
) -> Result<(), Report> {
    build(
        &LocalHolders(holders),
        manifest,
        dest,
        tablespaces,
        writers,
        counters,
        Mode::Scratch,
    )
    .map(|_| ())
}

/// `materialize` from any source of stored files (this host's directories, an off-site
/// target), for a restore that is to last: files written by threads in parallel, each checked
/// while it is written, every one made durable; the backup's control file is left staged
/// (`CONTROL_STAGED`) for `install_control` once the recovery settings are written, so that
/// the directory cannot start until the restore is complete.
pub fn materialize_from(
    source: &dyn StoredFiles,
    manifest: &Manifest,
    dest: &Path,
    tablespaces: &Path,
    writers: Writers,
    counters: &Counters<'_>,
) -> Result<(), Report> {
    build(
        source,
        manifest,
        dest,
        tablespaces,
        writers,
        counters,
        Mode::New,
    )
    .map(|_| ())
}

/// What a delta restore did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Delta {
    /// Files whose size and sha256 already matched the manifest.
    pub kept: usize,
    /// Files fetched (missing or different; the control file always, see `install_control`).
    pub fetched: usize,
    /// Files and directories the backup does not have, removed.
    pub removed: usize,
}

/// `materialize_from` into an existing data directory (a server's, stopped): a file whose size
/// and sha256 already match the manifest is kept, any other is fetched again and checked, and
/// whatever the backup does not have is removed (stale WAL in `pg_wal` above all, which
/// recovery would otherwise read).  Tablespace links already in place are kept.
pub fn materialize_delta(
    source: &dyn StoredFiles,
    manifest: &Manifest,
    dest: &Path,
    tablespaces: &Path,
    writers: Writers,
    counters: &Counters<'_>,
) -> Result<Delta, Report> {
    build(
        source,
        manifest,
        dest,
        tablespaces,
        writers,
        counters,
        Mode::Delta,
    )
}

/// What `build` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A throwaway copy in a new directory: nothing durable, the control file with the rest.
    Scratch,
    /// A new data directory, durable, its control file staged.
    New,
    /// An existing data directory brought back, durable, its control file staged and its own
    /// held aside meanwhile.
    Delta,
}

/// Removes what lies below `dest` that the manifest does not name (following only the
/// tablespace links, and in a tablespace's location only this backup's version directory);
/// returns how many entries went.
fn remove_extras(manifest: &Manifest, dest: &Path) -> Result<usize, IoError> {
    use crate::files::error::Context;
    let files: HashSet<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    let dirs: HashSet<&str> = manifest.dirs.iter().map(String::as_str).collect();
    let mut removed = 0;
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let at = if rel.is_empty() {
            dest.to_path_buf()
        } else {
            dest.join(&rel)
        };
        for e in std::fs::read_dir(&at).at("could not list", &at)? {
            let e = e.at("could not list", &at)?;
            let name = e.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let kind = e.file_type().at("could not stat", &e.path())?;
            // A tablespace's location may be shared: PostgreSQL gives each version its own
            // `PG_<major>_<catversion>` there (a pg_upgrade leaves the old one beside the new),
            // so only what this backup's version directory holds is this cluster's to clean.
            if tablespace_oid(&rel).is_some() && !dirs.contains(path.as_str()) {
                continue;
            }
            // The links followed are the tablespaces'.  Any other symlink is not the backup's
            // file, wherever it points: it goes, not what it leads to.  A `pg_wal` link
            // (`initdb --waldir`) too: what it leads to may be another cluster's WAL (a data
            // directory copied with its link), which cleaning would destroy; the restore makes
            // a `pg_wal` directory, and the link can be made again once it is done.
            let followed = kind.is_symlink() && tablespace_oid(&path).is_some();
            let keep = if kind.is_dir() || followed {
                dirs.contains(path.as_str())
            } else if kind.is_file() {
                files.contains(path.as_str())
                    || (rel.is_empty() && path == PG_MANIFEST)
                    || path == CONTROL_HELD
            } else {
                false
            };
            if keep {
                if kind.is_dir() || followed {
                    stack.push(path);
                }
                continue;
            }
            let full = e.path();
            let gone = if kind.is_dir() {
                std::fs::remove_dir_all(&full)
            } else {
                std::fs::remove_file(&full)
            };
            gone.at("could not remove", &full)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Whether `path` is a regular file of `f`'s size and sha256 (a delta restore keeps it).
fn already_there(path: &Path, f: &FileRecord, buf: &mut [u8], counters: &Counters<'_>) -> bool {
    let Ok(mut file) = crate::files::open::open_regular(path) else {
        return false;
    };
    if file.metadata().map(|m| m.len()).ok() != Some(f.size) {
        return false;
    }
    stream::hash_all(&mut file, buf, Some(counters.cancel), Some(counters.bytes))
        .is_ok_and(|(size, sum)| size == f.size && sum == f.sha256)
}

/// The order files are taken in: the largest first, so that a large relation file does not
/// start last and keep one thread busy long after the others have finished.
pub(crate) fn largest_first(files: &[FileRecord]) -> Vec<&FileRecord> {
    let mut order: Vec<&FileRecord> = files.iter().collect();
    order.sort_by_key(|f| std::cmp::Reverse(f.size));
    order
}

fn build(
    source: &dyn StoredFiles,
    manifest: &Manifest,
    dest: &Path,
    tablespaces: &Path,
    writers: Writers,
    counters: &Counters<'_>,
    mode: Mode,
) -> Result<Delta, Report> {
    let delta = mode == Mode::Delta;
    let mut made = Vec::new();
    if !delta {
        // A new restore makes its directory itself, exclusively: what a failure removes (a half
        // restored directory must not look like a restored one) is only ever this run's.
        durable::create_new_private_dir(dest)
            .map_err(|e| Report::failed(Reason::Unreadable, e.to_string(), dest))?;
        made.push(Made::Whole(dest.to_path_buf()));
    }
    let filled = fill(
        source,
        manifest,
        dest,
        tablespaces,
        writers,
        counters,
        mode,
        &mut made,
    );
    match filled {
        Err(mut report) if !delta => {
            // What could not be removed is named: the operator must not take it for a restore.
            let mut left = Vec::new();
            for m in made.iter().rev() {
                match m {
                    Made::Whole(p) => {
                        if let Err(e) = beneath::remove_path(p) {
                            left.push(format!("{} ({e})", p.display()));
                        }
                    }
                    // Shared with whoever put something there meanwhile: removed only if empty.
                    Made::IfEmpty(p) => {
                        let _ = std::fs::remove_dir(p);
                    }
                }
            }
            if !left.is_empty() {
                let detail = report.detail.take().unwrap_or_default();
                report.detail = Some(format!(
                    "{detail}; the partial restore could not be removed: {}",
                    left.join(", ")
                ));
            }
            Err(report)
        }
        filled => filled,
    }
}

/// A directory a new restore made, which it removes when it fails.
enum Made {
    /// Only this run writes below it (created exclusively where nothing was).
    Whole(PathBuf),
    /// The tablespaces' parent: another restore may use it too.
    IfEmpty(PathBuf),
}

/// Removes what a new restore that succeeded made, when a later step fails (its recovery
/// settings cannot be written): the data directory and the tablespace directories of
/// `manifest` below `tablespaces` (each made exclusively by this run), never `tablespaces`.
pub fn discard_new(dest: &Path, tablespaces: &Path, manifest: &Manifest) {
    for oid in manifest.dirs.iter().filter_map(|d| tablespace_oid(d)) {
        let _ = beneath::remove_path(&tablespaces.join(oid));
    }
    let _ = beneath::remove_path(dest);
}

/// `build`'s work below the data directory, which exists; the directories it makes for
/// tablespaces are added to `made`.
#[allow(clippy::too_many_arguments)]
fn fill(
    source: &dyn StoredFiles,
    manifest: &Manifest,
    dest: &Path,
    tablespaces: &Path,
    writers: Writers,
    counters: &Counters<'_>,
    mode: Mode,
    made: &mut Vec<Made>,
) -> Result<Delta, Report> {
    let delta = mode == Mode::Delta;
    let fail = |d: String| Report::failed(Reason::Unreadable, d, dest);
    // The tablespaces' parent: one that is there (a link to a directory included) is not this
    // run's; nor is one another process makes at the same moment.
    let parent = |p: &Path, made: &mut Vec<Made>| {
        if p.is_dir() {
            return Ok(());
        }
        match durable::create_new_private_dir(p) {
            Ok(()) => made.push(Made::IfEmpty(p.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.to_string()),
        }
        Ok(())
    };
    // A tablespace's own directory: a new restore makes it exclusively (one there may be a live
    // cluster's, or another restore's); a delta restore keeps the one there.
    let place_dir = |p: &Path, made: &mut Vec<Made>| {
        if delta && p.is_dir() {
            return Ok(());
        }
        durable::create_new_private_dir(p).map_err(|e| e.to_string())?;
        made.push(Made::Whole(p.to_path_buf()));
        Ok(())
    };
    // What a restore keeps for itself beside the control file never comes from a backup (one
    // taken while a restore's file was there, or a forged manifest, would overwrite it).
    let mut order = largest_first(&manifest.files);
    order.retain(|f| !f.path.rsplit('/').next().is_some_and(restore_own));
    // A native backup keeps its tablespace_map beside its data, never in it: one in the data
    // directory would point pg_tblspc wherever it says at the first start, and WAL replay would
    // write there.
    if order.iter().any(|f| f.path == TABLESPACE_MAP) {
        return Err(Report::failed(
            Reason::ManifestMismatch,
            format!(
                "backup {}'s manifest lists a {TABLESPACE_MAP} in the data directory, which a \
                 native backup never holds there: it would point tablespaces outside the \
                 restore",
                manifest.backup_id
            ),
            dest,
        ));
    }
    let control = match mode {
        Mode::Scratch => None,
        Mode::New | Mode::Delta => order
            .iter()
            .position(|f| f.path == CONTROL)
            .map(|i| order.remove(i)),
    };
    let mut done = Delta::default();
    if delta {
        // Checked before anything is touched: without the backup's control file (and its
        // directory) to put back, the directory's own would go and nothing would say whose
        // cluster this is.
        if control.is_none() || !manifest.dirs.iter().any(|d| d == "global") {
            return Err(Report::failed(
                Reason::ManifestMismatch,
                format!(
                    "backup {}'s manifest has no {CONTROL} (or no global directory): a delta \
                     restore would leave the directory without one",
                    manifest.backup_id
                ),
                dest,
            ));
        }
        hold_control(dest).map_err(|e| fail(e.to_string()))?;
        done.removed = remove_extras(manifest, dest).map_err(|e| fail(e.to_string()))?;
    }
    for d in &manifest.dirs {
        match tablespace_oid(d) {
            Some(_) if delta && std::fs::symlink_metadata(dest.join(d)).is_ok() => {}
            Some(oid) => {
                parent(tablespaces, made).map_err(fail)?;
                let place = tablespaces.join(oid);
                place_dir(&place, made).map_err(fail)?;
                std::os::unix::fs::symlink(&place, dest.join(d))
                    .map_err(|e| fail(format!("linking tablespace {oid}: {e}")))?;
            }
            // Below the data directory (removed with it), or a delta restore's.
            None => {
                let d = dest.join(d);
                if !(delta && std::fs::symlink_metadata(&d).is_ok_and(|m| m.is_dir())) {
                    durable::create_private_dir(&d, false).map_err(|e| fail(e.to_string()))?;
                }
            }
        }
    }
    // Opened before any file is written (see `FilesystemSync`): synced once every file is,
    // before the control file is staged.  One per filesystem the directories are on, through
    // their links (a tablespace) and mount points.  The names of the directories `build` and
    // `parent` made are durable already (made with their parent's fsync).  A scratch copy is
    // never made durable.
    let mut syncs = Vec::new();
    if mode != Mode::Scratch {
        let mut devices = HashSet::new();
        for p in
            std::iter::once(dest.to_path_buf()).chain(manifest.dirs.iter().map(|d| dest.join(d)))
        {
            let device = std::fs::metadata(&p)
                .map_err(|e| fail(format!("{}: {e}", p.display())))?
                .dev();
            if devices.insert(device) {
                syncs.push(durable::FilesystemSync::open(&p).map_err(|e| fail(e.to_string()))?);
            }
        }
    }
    if !delta {
        // Every file is fetched, then PostgreSQL's manifest and the control file (a delta
        // restore opens only the files that differ, known one at a time).
        let mut opened: Vec<(i64, &str)> = order.iter().map(|f| (f.holder, &*f.stored)).collect();
        opened.push((manifest.backup_id, PG_MANIFEST_ZST));
        opened.extend(control.map(|f| (f.holder, &*f.stored)));
        source.will_open(&opened, writers.threads);
    }
    let kept = AtomicUsize::new(0);
    let failure = verify::in_parallel(&order, writers.threads, counters.cancel, |f, buf| {
        let out_path = dest.join(&f.path);
        if delta {
            if already_there(&out_path, f, buf, counters) {
                kept.fetch_add(1, Ordering::Relaxed);
                if let Some(files) = counters.files {
                    files.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(());
            }
            match std::fs::remove_file(&out_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Report::failed(Reason::Unreadable, e.to_string(), &out_path)),
            }
        }
        let src = source.shown(f.holder, &f.stored);
        let input = open_stored(source, f, &src)?;
        let unwritable = |e: IoError| Report::failed(Reason::Unreadable, e.to_string(), &out_path);
        let mut out = RestoredFile::create_hashing(&out_path, f.size, writers.writes, writers.pace)
            .map_err(unwritable)?;
        let zst = f.stored.ends_with(".zst");
        let (size, sum) = read_into_file(input, zst, f.size, &mut out, buf, counters)
            .map_err(|(r, d)| Report::failed(r, d, &src))?;
        let (on_disk, hashed) = out.finish_hashed(&out_path).map_err(unwritable)?;
        // Hashed by the read loop or by the file itself, never both, never neither.
        let sum = match (sum, hashed) {
            (Some(sum), None) | (None, Some(sum)) => sum,
            _ => {
                return Err(Report::failed(
                    Reason::Unreadable,
                    "the file's sha256 was not computed once".into(),
                    &out_path,
                ))
            }
        };
        if on_disk != size {
            return Err(Report::failed(
                Reason::Unreadable,
                format!("{size} bytes were written but the file holds {on_disk}"),
                &out_path,
            ));
        }
        judge(&src, f, size, &sum)?;
        if let Some(files) = counters.files {
            files.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    if let Some(r) = failure.or_else(|| cancelled(counters, dest)) {
        return Err(r);
    }
    done.kept = kept.into_inner();
    done.fetched = order.len() + usize::from(control.is_some()) - done.kept;
    // PostgreSQL's manifest, kept compressed or not by the backup itself.
    let id = manifest.backup_id;
    let (input, zst) = match source.open(id, PG_MANIFEST_ZST) {
        Some(Ok(r)) => (r, true),
        _ => match source.open(id, PG_MANIFEST) {
            Some(Ok(r)) => (r, false),
            Some(Err(e)) => return Err(fail(format!("opening {PG_MANIFEST}: {e}"))),
            None => return Err(fail(format!("backup {id} is not available"))),
        },
    };
    let manifest_path = dest.join(PG_MANIFEST);
    if delta {
        let _ = std::fs::remove_file(&manifest_path);
    }
    // Read whole and checked against its own checksum before it is written: pg_verifybackup
    // would trust a manifest that is not the backup's.
    let mut text = Vec::new();
    let mut buf = vec![0u8; verify::CHUNK];
    read_stream(input, zst, PG_MANIFEST_LIMIT, &mut text, &mut buf, counters).map_err(
        |(reason, e)| Report::failed(reason, format!("copying {PG_MANIFEST}: {e}"), dest),
    )?;
    if text.len() as u64 > PG_MANIFEST_LIMIT {
        return Err(fail(format!(
            "{PG_MANIFEST} is larger than {PG_MANIFEST_LIMIT} bytes"
        )));
    }
    postgres::check_checksum(&text).map_err(|e| {
        Report::failed(
            Reason::ManifestMismatch,
            format!("backup {id}'s {PG_MANIFEST}: {e}"),
            dest,
        )
    })?;
    let mut out = durable::create_new(&manifest_path).map_err(|e| fail(e.to_string()))?;
    out.write_all(&text)
        .map_err(|e| fail(format!("writing {PG_MANIFEST}: {e}")))?;
    drop(out);
    // Every file durable; last, the control file, staged once everything else is on disk.
    for s in &syncs {
        s.sync().map_err(|e| fail(e.to_string()))?;
    }
    if let Some(f) = control {
        stage_control(source, f, dest, &mut buf, counters)?;
    }
    Ok(done)
}

/// A delta restore's first step: the directory's own control file moves aside (durably), so
/// that the directory cannot start until the backup's is installed at the end.  When there is
/// none (an earlier delta restore that failed holds it aside already), the one held stays.
fn hold_control(dest: &Path) -> Result<(), IoError> {
    use crate::files::error::Context;
    let (control, held) = (dest.join(CONTROL), dest.join(CONTROL_HELD));
    match std::fs::symlink_metadata(&control) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at("could not stat", &control),
        // The one `fetch::delta_refusal` read: it replaces any held before (a crash between
        // installing the backup's and removing the held one leaves both).
        Ok(m) if m.is_file() => {
            std::fs::rename(&control, &held).at("could not move aside", &control)?;
            durable::sync_parent(&control)
        }
        Ok(_) => Err(std::io::Error::other("not a regular file")).at("refusing", &control),
    }
}

/// Writes the backup's control file `f` as `CONTROL_STAGED`, checked, durably.
fn stage_control(
    source: &dyn StoredFiles,
    f: &FileRecord,
    dest: &Path,
    buf: &mut [u8],
    counters: &Counters<'_>,
) -> Result<(), Report> {
    let staged = dest.join(CONTROL_STAGED);
    let src = source.shown(f.holder, &f.stored);
    let unwritable = |e: IoError| Report::failed(Reason::Unreadable, e.to_string(), &staged);
    let input = open_stored(source, f, &src)?;
    let mut out =
        durable::DurableFile::create(&staged, durable::Temp::Hidden).map_err(unwritable)?;
    let zst = f.stored.ends_with(".zst");
    let (size, sum) = read_stream(input, zst, f.size, &mut out, buf, counters)
        .map_err(|(r, d)| Report::failed(r, d, &src))?;
    judge(&src, f, size, &sum)?;
    out.commit(durable::Install::Replace).map_err(unwritable)?;
    if let Some(files) = counters.files {
        files.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// For a restore that extracts a whole data directory at once (a `pg_basebackup` tar): its
/// control file moves to `CONTROL_STAGED` before the directory is made durable, to be installed
/// by `install_control` like a native restore's.
pub fn stage_extracted_control(dest: &Path) -> Result<(), IoError> {
    use crate::files::error::Context;
    let control = dest.join(CONTROL);
    match std::fs::symlink_metadata(&control) {
        Ok(m) if m.is_file() => {
            std::fs::rename(&control, dest.join(CONTROL_STAGED)).at("could not stage", &control)
        }
        _ => Ok(()),
    }
}

/// The last step of a restore into `dest` (`materialize_from`, `materialize_delta`), once
/// whatever else it writes there is written (the recovery settings): the staged control file
/// goes in as `global/pg_control` (never over one), durably, and the one a delta restore held
/// aside goes.  From then on the directory can start.  False when nothing was staged.
pub fn install_control(dest: &Path) -> Result<bool, IoError> {
    use crate::files::error::Context;
    let (staged, control, held) = (
        dest.join(CONTROL_STAGED),
        dest.join(CONTROL),
        dest.join(CONTROL_HELD),
    );
    match std::fs::symlink_metadata(&staged) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e).at("could not stat", &staged),
        Ok(m) if !m.is_file() => {
            return Err(std::io::Error::other("not a regular file")).at("refusing", &staged)
        }
        Ok(_) => {}
    }
    // The names the caller made in the data directory (recovery.signal) are durable first.
    durable::sync_dir(dest)?;
    durable::rename_new(&staged, &control)?;
    match std::fs::remove_file(&held) {
        Ok(()) => durable::sync_parent(&held)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).at("could not remove", &held),
    }
    Ok(true)
}

/// What to tell the operator when a delta restore into `dest` stopped before its end: the
/// directory cannot start while its control file is held aside.  None when it is not.
/// `retry`: whether running the same restore again can finish it (not when the backup itself
/// was refused, e.g. its configuration moves the data directory).
pub fn held_hint(dest: &Path, retry: bool) -> Option<String> {
    let next = if retry {
        "run the restore with --delta again"
    } else {
        "this backup cannot finish it; restore another one into it with --delta --backup-id ID"
    };
    dest.join(CONTROL_HELD).is_file().then(|| {
        format!(
            "\"{}\" cannot start until a delta restore finishes (its control file is held aside \
             as {CONTROL_HELD}): {next}",
            dest.display()
        )
    })
}

/// Opens `f`'s stored file (`src` names it in reports).
fn open_stored(
    source: &dyn StoredFiles,
    f: &FileRecord,
    src: &Path,
) -> Result<Box<dyn Read + Send>, Report> {
    source
        .open(f.holder, &f.stored)
        .ok_or_else(|| {
            Report::failed(
                Reason::Missing,
                format!(
                    "backup {} (holding \"{}\") is not available",
                    f.holder, f.path
                ),
                src,
            )
        })?
        .map_err(|e| Report::failed(Reason::Unreadable, e.to_string(), src))
}

#[cfg(test)]
#[path = "materialize_tests.rs"]
mod tests;
