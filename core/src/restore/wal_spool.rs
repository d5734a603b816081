//! Read-ahead for `wal-fetch`, as pgBackRest's asynchronous archive-get queue does it: recovery
//! asks for one WAL file at a time and waits for each; while it replays one, the next ones are
//! fetched in parallel into a private spool directory, each checked against the mirror's
//! sha256 as `wal_fetch` checks it (temporary name, fsync, rename), so that the next request
//! is a rename.  Only complete, checked files ever carry a WAL file's name in the spool.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::fetch::{wal_fetch, FetchError, Sync};
use super::offsite::Mirror;
use crate::files::durable::{self, DurableFile, Install, Temp};
use crate::files::error::IoError;
use crate::storage::Storage;
use crate::wal::{self, Segment};

/// A spool directory (created mode 0700 when missing).
pub struct Spool {
    dir: PathBuf,
    /// The timeline recovery ends on, when known: no later timeline's file is fetched ahead
    /// (a restore to an older timeline would never ask for them).
    last_timeline: Option<u32>,
}

impl Spool {
    /// Opens the spool at `dir`, creating it (mode 0700) when missing.  Whatever carries a WAL
    /// file's name in it is handed to recovery as checked, so it must be this user's alone: a
    /// directory that is a symlink, someone else's, or open to others is refused.
    pub fn open(dir: &Path) -> Result<Spool, FetchError> {
        use std::os::unix::fs::MetadataExt;
        durable::create_private_dir(dir, true)?;
        let meta = fs::symlink_metadata(dir).map_err(|e| IoError::new("could not stat", dir, e))?;
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o077 != 0 {
            return Err(FetchError::Bad(format!(
                "the spool \"{}\" is not a private directory of this user (a symlink, another \
                 owner, or open to others); remove it or name another with --spool",
                dir.display()
            )));
        }
        Ok(Spool {
            dir: dir.to_owned(),
            last_timeline: None,
        })
    }

    /// The spool of a recovery that ends on timeline `last` (None: unknown, the newest).
    pub fn ending_on(self, last: Option<u32>) -> Spool {
        Spool {
            last_timeline: last,
            ..self
        }
    }

    /// Moves the spooled `name` to `dest` when a checked copy is there; false when not.
    pub fn take(&self, name: &str, dest: &Path) -> Result<bool, FetchError> {
        if !wal::is_archivable_name(name) {
            return Ok(false);
        }
        let from = self.dir.join(name);
        // No fsync: recovery reads `%p` at once, and asks for it again after a crash.
        match fs::rename(&from, dest) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            // Another filesystem: copied durably, then the spooled file removed.
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                let mut input = crate::files::open::open_regular(&from)
                    .map_err(|e| FetchError::Bad(format!("spooled {name}: {e}")))?;
                let mut out = DurableFile::create(dest, Temp::Suffix)?;
                io::copy(&mut input, out.file())
                    .map_err(|e| IoError::new("could not copy to", dest, e))?;
                out.commit(Install::Replace)?;
                let _ = fs::remove_file(&from);
                Ok(true)
            }
            Err(e) => Err(IoError::new("could not move", &from, e).into()),
        }
    }

    /// How many WAL segments that come after `name` (on its timeline or a later one, as
    /// `fill` fetches them) the spool holds: the foreground starts a filler only when fewer than
    /// half the read-ahead are ready.
    pub fn ready_after(&self, name: &str) -> usize {
        let Some(current) = segment_of(name) else {
            return 0;
        };
        fs::read_dir(&self.dir).map_or(0, |entries| {
            entries
                .flatten()
                .filter_map(|e| segment_of(&e.file_name().to_string_lossy()))
                .filter(|(tli, number)| *tli >= current.0 && *number > current.1)
                .count()
        })
    }

    /// The exclusive right to fill the spool (one filler at a time); None when another holds it.
    pub fn try_lock(&self) -> Result<Option<File>, FetchError> {
        let path = self.dir.join(".lock");
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| IoError::new("could not open", &path, e))?;
        // SAFETY: the descriptor is open and owned by `f`; flock does not touch memory.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        Ok((rc == 0).then_some(f))
    }

    /// Fetches the `ahead` WAL segments after `name` that the mirror lists and the spool lacks,
    /// `threads` at a time: each from the newest timeline, from `name`'s on (up to the one
    /// recovery ends on, when known), that the mirror lists it under, since recovery reads a
    /// segment from the newest timeline of its path that has begun by then (after a failover,
    /// the new timeline's copy of the switch segment and everything after it, never the old
    /// timeline's).  Removes spooled segments recovery will not ask for any more: those of
    /// `name`'s timeline before it (already served, or passed over) and those of older
    /// timelines.  Errors are per file and leave nothing behind: the foreground fetch of that
    /// file reports them.
    pub fn fill(
        &self,
        storage: &dyn Storage,
        mirror: &Mirror,
        name: &str,
        ahead: usize,
        threads: usize,
    ) -> usize {
        let size = mirror.segment_size();
        let Some(current) = Segment::parse(name, size) else {
            return 0;
        };
        if let Ok(entries) = fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if Segment::parse(&n, size).is_some_and(|s| {
                    s.timeline < current.timeline
                        || (s.timeline == current.timeline && s.number < current.number)
                }) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        // The newest timeline (from the current one on) the mirror lists each number under.
        let upto = current.number.saturating_add(ahead as u64);
        let mut newest: BTreeMap<u64, u32> = BTreeMap::new();
        for s in mirror
            .wal_files
            .iter()
            .filter_map(|w| Segment::parse(&w.name, size))
            .filter(|s| s.timeline >= current.timeline)
            .filter(|s| self.last_timeline.is_none_or(|last| s.timeline <= last))
            .filter(|s| s.number > current.number && s.number <= upto)
        {
            let t = newest.entry(s.number).or_insert(s.timeline);
            *t = (*t).max(s.timeline);
        }
        let wanted: Vec<String> = newest
            .into_iter()
            .map(|(number, timeline)| Segment { timeline, number }.file_name(size))
            .filter(|n| mirror.wal_file(n).is_some() && !self.dir.join(n).exists())
            .collect();
        let cancel = std::sync::atomic::AtomicBool::new(false);
        let fetched = std::sync::atomic::AtomicUsize::new(0);
        crate::threads::in_parallel(&wanted, threads.max(1), 0, &cancel, |n, _| {
            if wal_fetch(storage, mirror, n, &self.dir.join(n), Sync::Durable).is_ok() {
                fetched.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok::<(), ()>(())
        });
        fetched.into_inner()
    }
}

/// A segment name's timeline, and its log and segment parts read as one number, which orders
/// names as their segments do (so the segment size is not needed).
fn segment_of(name: &str) -> Option<(u32, u64)> {
    if !wal::is_segment_name(name) {
        return None;
    }
    let tli = u32::from_str_radix(&name[..8], 16).ok()?;
    let rest = u64::from_str_radix(&name[8..], 16).ok()?;
    Some((tli, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::hex;
    use crate::restore::offsite::{MirrorWal, FORMAT};
    use crate::storage::filesystem::FilesystemTarget;
    use sha2::{Digest, Sha256};

    /// A filesystem target under `tmp` holding the WAL files `names` (segment `N`'s bytes are
    /// "segment N" a hundred times), and a mirror listing them.
    fn target_with(
        tmp: &Path,
        names: impl IntoIterator<Item = String>,
    ) -> (FilesystemTarget, Mirror) {
        let target = FilesystemTarget {
            dir: tmp.join("t"),
            rate: None,
        };
        std::fs::create_dir_all(tmp.join("t/7/.wal")).unwrap();
        let mut wal_files = Vec::new();
        for name in names {
            let n = u32::from_str_radix(&name[16..], 16).unwrap();
            let bytes = format!("segment {n}").repeat(100).into_bytes();
            let key = format!("7/.wal/{name}");
            std::fs::write(tmp.join("t").join(&key), &bytes).unwrap();
            wal_files.push(MirrorWal {
                name,
                key,
                size: bytes.len() as i64,
                sha256: hex(&Sha256::digest(&bytes)),
                archived_at: "2026-12-04T10:00:00+00:00".into(),
            });
        }
        let mirror = Mirror {
            format: FORMAT.into(),
            written_at: String::new(),
            system_identifier: 7,
            pg_version: None,
            wal_segment_size: None,
            target: None,
            backups: vec![],
            wal_files,
            wal_parts: vec![],
            wal_gaps: vec![],
        };
        (target, mirror)
    }

    /// The WAL files in spool `dir`, sorted.
    fn spooled(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        v
    }

    /// Whatever carries a WAL file's name in the spool is served as checked: a spool that is
    /// a symlink or open to others (where anyone could plant a "segment") is refused.
    #[test]
    fn a_spool_others_could_write_to_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(Spool::open(&open).is_err());
        let private = tmp.path().join("private");
        assert!(Spool::open(&private).is_ok());
        std::os::unix::fs::symlink(&private, tmp.path().join("link")).unwrap();
        assert!(Spool::open(&tmp.path().join("link")).is_err());
    }

    #[test]
    fn the_next_files_are_fetched_ahead_and_served_by_a_rename() {
        let tmp = tempfile::tempdir().unwrap();
        let (target, mirror) = target_with(
            tmp.path(),
            (1..=6u32).map(|n| format!("0000000100000000{n:08X}")),
        );
        // File 5 on the target is not what the mirror says.
        std::fs::write(tmp.path().join("t/7/.wal/000000010000000000000005"), b"x").unwrap();
        let spool = Spool::open(&tmp.path().join("spool")).unwrap();
        let lock = spool.try_lock().unwrap();
        assert!(lock.is_some());
        assert!(spool.try_lock().unwrap().is_none(), "a second filler");
        assert_eq!(
            spool.fill(&target, &mirror, "000000010000000000000002", 8, 2),
            3
        );
        let dest = tmp.path().join("RECOVERYXLOG");
        assert_eq!(spool.ready_after("000000010000000000000002"), 3);
        assert!(spool.take("000000010000000000000003", &dest).unwrap());
        assert_eq!(spool.ready_after("000000010000000000000003"), 2);
        assert_eq!(
            std::fs::read(&dest).unwrap(),
            "segment 3".repeat(100).as_bytes()
        );
        // The damaged one never reaches the spool; the foreground fetch reports it.
        assert!(!spool.take("000000010000000000000005", &dest).unwrap());
        assert!(wal_fetch(
            &target,
            &mirror,
            "000000010000000000000005",
            &dest,
            Sync::Durable
        )
        .is_err());
        assert!(!spool.take("../000000010000000000000004", &dest).unwrap());
        // Filling from 6 on removes what came before it (6 itself is served next).
        drop(lock);
        spool.fill(&target, &mirror, "000000010000000000000006", 8, 2);
        let left: Vec<String> = std::fs::read_dir(tmp.path().join("spool"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        assert_eq!(left, ["000000010000000000000006"]);
    }

    /// After a failover the read-ahead follows recovery onto the new timeline: from the switch
    /// segment on it fetches the new timeline's copies, not the old one's, and once recovery
    /// asks for the new timeline the old one's spooled files go.
    #[test]
    fn the_read_ahead_follows_a_newer_timeline() {
        let tmp = tempfile::tempdir().unwrap();
        let names = (1..=6u32)
            .map(|n| format!("0000000100000000{n:08X}"))
            .chain((4..=8u32).map(|n| format!("0000000200000000{n:08X}")));
        let (target, mirror) = target_with(tmp.path(), names);
        let spool = Spool::open(&tmp.path().join("spool")).unwrap();
        let listed = || spooled(&tmp.path().join("spool"));
        assert_eq!(
            spool.fill(&target, &mirror, "000000010000000000000002", 4, 2),
            4
        );
        assert_eq!(
            listed(),
            [
                "000000010000000000000003",
                "000000020000000000000004",
                "000000020000000000000005",
                "000000020000000000000006"
            ]
        );
        assert_eq!(spool.ready_after("000000010000000000000002"), 4);
        // A recovery that ends on timeline 1 (restored with --target-timeline current) never
        // asks for timeline 2's files: none is fetched ahead.
        let older = Spool::open(&tmp.path().join("spool1"))
            .unwrap()
            .ending_on(Some(1));
        older.fill(&target, &mirror, "000000010000000000000002", 4, 2);
        assert_eq!(
            spooled(&tmp.path().join("spool1")),
            [
                "000000010000000000000003",
                "000000010000000000000004",
                "000000010000000000000005",
                "000000010000000000000006"
            ]
        );
        // Recovery on timeline 2: timeline 1's spooled file is of no more use.
        spool.fill(&target, &mirror, "000000020000000000000005", 4, 2);
        assert_eq!(
            listed(),
            [
                "000000020000000000000005",
                "000000020000000000000006",
                "000000020000000000000007",
                "000000020000000000000008"
            ]
        );
    }
}
