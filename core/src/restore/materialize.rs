//! Turning a native backup's chain back into a data directory: every file from the backup that
//! holds it, decompressed and checked against the chain manifest's sha256, tablespaces in a
//! directory of the restorer's choosing linked from `pg_tblspc/<oid>`, and PostgreSQL's manifest
//! as `backup_manifest` for `pg_verifybackup`.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::files::beneath;
use crate::files::direct::{RestoredFile, Writes};
use crate::files::durable;
use crate::files::error::IoError;
use crate::manifest::native::{FileRecord, Manifest};
use crate::manifest::postgres::{self, PG_MANIFEST, PG_MANIFEST_ZST};
use crate::progress::Counters;
use crate::stream;
use crate::verify::native::{cancelled, judge, read_stream};
use crate::verify::{self, Reason, Report};

/// A tablespace's directory in a backup (`pg_tblspc/<oid>`): its oid.
pub fn tablespace_oid(dir: &str) -> Option<&str> {
    let oid = dir.strip_prefix("pg_tblspc/")?;
    (!oid.is_empty() && oid.bytes().all(|b| b.is_ascii_digit())).then_some(oid)
}

/// Where the stored files of a chain come from: opened by holder and stored path (`None`: that
/// backup is not available), and named in reports.
pub trait StoredFiles: Sync {
    fn open(&self, holder: i64, stored: &str) -> Option<Result<Box<dyn Read + Send>, String>>;
    fn shown(&self, holder: i64, stored: &str) -> PathBuf;
    /// The files about to be opened, in order, by `at_once` threads: a source whose every open
    /// is a round trip starts the next ones' requests early.
    fn will_open(&self, _order: &[(i64, &str)], _at_once: usize) {}
}

/// The chain's backup directories on this host, by backup id.
pub struct LocalHolders<'a>(pub &'a HashMap<i64, PathBuf>);

impl StoredFiles for LocalHolders<'_> {
    fn open(&self, holder: i64, stored: &str) -> Option<Result<Box<dyn Read + Send>, String>> {
        let path = self.0.get(&holder)?.join(stored);
        Some(
            crate::files::open::open_regular(&path)
                .map(|f| Box::new(f) as Box<dyn Read + Send>)
                .map_err(|e| e.to_string()),
        )
    }
    fn shown(&self, holder: i64, stored: &str) -> PathBuf {
        self.0
            .get(&holder)
            .map_or_else(|| PathBuf::from(stored), |d| d.join(stored))
    }
}

/// How a restore writes its files: how many at a time, and past the page cache or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Writers {
    pub threads: usize,
    pub writes: Writes,
}

/// Builds the complete data directory of a backup in `dest` (created, mode 0700) from its
/// chain: every file from its holder, decompressed and checked against the manifest's sha256,
/// plus PostgreSQL's manifest as `backup_manifest` for pg_verifybackup.  Each tablespace goes
/// to `tablespaces/<oid>` (created), linked from `pg_tblspc/<oid>` as PostgreSQL requires.
pub fn materialize(
    manifest: &Manifest,
    holders: &HashMap<i64, PathBuf>,
    dest: &Path,
    tablespaces: &Path,
    writers: Writers,
    counters: &Counters<'_>,
) -> Result<(), Report> {
    materialize_from(
        &LocalHolders(holders),
        manifest,
        dest,
        tablespaces,
        writers,
        counters,
    )
}

/// `materialize` from any source of stored files (this host's directories, an off-site
/// target).  Files written by threads in parallel, each checked while it is written.
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
        false,
    )
    .map(|_| ())
}

/// What a delta restore did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Delta {
    /// Files whose size and sha256 already matched the manifest.
    pub kept: usize,
    /// Files fetched (missing or different).
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
    build(source, manifest, dest, tablespaces, writers, counters, true)
}

/// Removes what lies below `dest` that the manifest does not name (following only the
/// tablespace links, and in a tablespace's location only this backup's version directory);
/// returns how many entries went.
fn remove_extras(manifest: &Manifest, dest: &Path) -> Result<usize, String> {
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
        let entries =
            std::fs::read_dir(&at).map_err(|e| format!("listing {}: {e}", at.display()))?;
        for e in entries {
            let e = e.map_err(|e| format!("listing {}: {e}", at.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let kind = e
                .file_type()
                .map_err(|err| format!("{}: {err}", e.path().display()))?;
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
                files.contains(path.as_str()) || (rel.is_empty() && path == PG_MANIFEST)
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
            gone.map_err(|e| format!("removing {}: {e}", full.display()))?;
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
    delta: bool,
) -> Result<Delta, Report> {
    if delta {
        return fill(
            source,
            manifest,
            dest,
            tablespaces,
            writers,
            counters,
            true,
            &mut Vec::new(),
        );
    }
    // A new restore makes its directory itself, exclusively: what a failure removes (a half
    // restored directory must not look like a restored one) is only ever this run's.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dest)
        .map_err(|e| {
            Report::failed(
                Reason::Unreadable,
                format!("could not create directory \"{}\": {e}", dest.display()),
                dest,
            )
        })?;
    let mut made = vec![dest.to_path_buf()];
    let filled = durable::sync_parent(dest)
        .map_err(|e| Report::failed(Reason::Unreadable, e.to_string(), dest))
        .and_then(|()| {
            fill(
                source,
                manifest,
                dest,
                tablespaces,
                writers,
                counters,
                false,
                &mut made,
            )
        });
    if filled.is_err() {
        for p in made.iter().rev() {
            let _ = beneath::remove_path(p);
        }
    }
    filled
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
    delta: bool,
    made: &mut Vec<PathBuf>,
) -> Result<Delta, Report> {
    let fail = |d: String| Report::failed(Reason::Unreadable, d, dest);
    let mkdir = |p: &Path, made: &mut Vec<PathBuf>| {
        if p.is_dir() {
            // A delta restore's, or the tablespaces' parent the operator named (a link to a
            // directory included: not this run's, so never removed by it).
            return Ok(());
        }
        durable::create_private_dir(p, false).map_err(|e| e.to_string())?;
        made.push(p.to_path_buf());
        Ok(())
    };
    let mut done = Delta::default();
    if delta {
        done.removed = remove_extras(manifest, dest).map_err(fail)?;
    }
    for d in &manifest.dirs {
        match tablespace_oid(d) {
            Some(_) if delta && std::fs::symlink_metadata(dest.join(d)).is_ok() => {}
            Some(oid) => {
                mkdir(tablespaces, made).map_err(fail)?;
                let place = tablespaces.join(oid);
                mkdir(&place, made).map_err(fail)?;
                std::os::unix::fs::symlink(&place, dest.join(d))
                    .map_err(|e| fail(format!("linking tablespace {oid}: {e}")))?;
            }
            // Below the data directory: removed with it.
            None => mkdir(&dest.join(d), &mut Vec::new()).map_err(fail)?,
        }
    }
    let order = largest_first(&manifest.files);
    if !delta {
        // Every file is fetched, then PostgreSQL's manifest (a delta restore opens only the
        // files that differ, known one at a time).
        let mut opened: Vec<(i64, &str)> = order.iter().map(|f| (f.holder, &*f.stored)).collect();
        opened.push((manifest.backup_id, PG_MANIFEST_ZST));
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
        let input = source
            .open(f.holder, &f.stored)
            .ok_or_else(|| {
                Report::failed(
                    Reason::Missing,
                    format!(
                        "backup {} (holding \"{}\") is not available",
                        f.holder, f.path
                    ),
                    &src,
                )
            })?
            .map_err(|e| Report::failed(Reason::Unreadable, e, &src))?;
        let unwritable = |e: IoError| Report::failed(Reason::Unreadable, e.to_string(), &out_path);
        let mut out =
            RestoredFile::create(&out_path, f.size, writers.writes).map_err(unwritable)?;
        let zst = f.stored.ends_with(".zst");
        let (size, sum) = read_stream(input, zst, f.size, &mut out, buf, counters)
            .map_err(|(r, d)| Report::failed(r, d, &src))?;
        let on_disk = out.finish(&out_path).map_err(unwritable)?;
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
    done.fetched = manifest.files.len() - done.kept;
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
    read_stream(input, zst, 0, &mut text, &mut buf, counters).map_err(|(reason, e)| {
        Report::failed(reason, format!("copying {PG_MANIFEST}: {e}"), dest)
    })?;
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
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::hex;
    use sha2::{Digest, Sha256};
    use std::sync::atomic::{AtomicBool, AtomicU64};

    const TWO: Writers = Writers {
        threads: 2,
        writes: Writes::Direct,
    };

    /// A PostgreSQL backup manifest whose own checksum holds (what it lists is not looked at).
    fn pg_manifest() -> String {
        let empty = Manifest {
            backup_id: 1,
            parent: None,
            dirs: vec![],
            files: vec![],
        };
        postgres::render(&empty, 1, crate::wal::Lsn(0), crate::wal::Lsn(0))
    }

    #[test]
    fn a_delta_restore_keeps_what_matches_and_removes_what_the_backup_lacks() {
        let tmp = tempfile::tempdir().unwrap();
        let holder = tmp.path().join("b1");
        std::fs::create_dir_all(holder.join("data/base/5")).unwrap();
        std::fs::create_dir_all(holder.join("data/pg_wal")).unwrap();
        let files = [("base/5/1", b"one".to_vec()), ("base/5/2", vec![2u8; 9000])];
        let mut manifest = Manifest {
            backup_id: 1,
            parent: None,
            dirs: vec!["base".into(), "base/5".into(), "pg_wal".into()],
            files: vec![],
        };
        for (path, bytes) in &files {
            std::fs::write(holder.join("data").join(path), bytes).unwrap();
            manifest.files.push(FileRecord {
                path: (*path).into(),
                size: bytes.len() as u64,
                mtime: 0,
                sha256: hex(&Sha256::digest(bytes)),
                holder: 1,
                stored: format!("data/{path}"),
            });
        }
        std::fs::write(holder.join(PG_MANIFEST), pg_manifest()).unwrap();
        let holders = HashMap::from([(1, holder.clone())]);
        let (bytes, cancel, done) = (AtomicU64::new(0), AtomicBool::new(false), AtomicU64::new(0));
        let counters = Counters {
            bytes: &bytes,
            cancel: &cancel,
            files: Some(&done),
        };
        let dest = tmp.path().join("data");
        let spaces = tmp.path().join("spaces");
        materialize(&manifest, &holders, &dest, &spaces, TWO, &counters).unwrap();
        assert_eq!(done.load(Ordering::Relaxed), 2, "files done, for the bar");

        // The server ran on: one file changed, stale WAL and a new relation appeared.
        std::fs::write(dest.join("base/5/2"), vec![3u8; 9000]).unwrap();
        std::fs::write(dest.join("pg_wal/000000010000000000000009"), b"stale").unwrap();
        std::fs::create_dir(dest.join("base/6")).unwrap();
        std::fs::write(dest.join("base/6/1"), b"new").unwrap();
        let source = LocalHolders(&holders);
        let d = materialize_delta(&source, &manifest, &dest, &spaces, TWO, &counters).unwrap();
        assert_eq!(
            d,
            Delta {
                kept: 1,
                fetched: 1,
                removed: 2
            }
        );
        // Kept files are done too.
        assert_eq!(done.load(Ordering::Relaxed), 4);
        assert_eq!(
            std::fs::read(dest.join("base/5/2")).unwrap(),
            vec![2u8; 9000]
        );
        assert!(!dest.join("pg_wal/000000010000000000000009").exists());
        assert!(!dest.join("base/6").exists());
        assert!(dest.join(PG_MANIFEST).is_file());
        // A symlink where the backup has a file goes as itself (what it leads to is neither
        // read nor emptied), and is replaced by the file; so does a pg_wal link (what it leads
        // to may be another cluster's WAL): a pg_wal directory is made, the WAL there is left.
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("keep-me"), b"not the cluster's").unwrap();
        std::fs::remove_file(dest.join("base/5/2")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dest.join("base/5/2")).unwrap();
        let waldir = tmp.path().join("waldisk");
        std::fs::create_dir_all(&waldir).unwrap();
        std::fs::write(waldir.join("000000010000000000000009"), b"theirs").unwrap();
        std::fs::remove_dir_all(dest.join("pg_wal")).unwrap();
        std::os::unix::fs::symlink(&waldir, dest.join("pg_wal")).unwrap();
        let d = materialize_delta(&source, &manifest, &dest, &spaces, TWO, &counters).unwrap();
        assert_eq!((d.fetched, d.removed), (1, 2), "{d:?}");
        assert!(elsewhere.join("keep-me").exists());
        assert_eq!(
            std::fs::read(dest.join("base/5/2")).unwrap(),
            vec![2u8; 9000]
        );
        assert!(dest.join("pg_wal").is_dir() && !dest.join("pg_wal").is_symlink());
        assert!(waldir.join("000000010000000000000009").exists());
        // A dangling pg_wal link (the WAL disk was lost) is replaced the same way.
        std::fs::remove_dir(dest.join("pg_wal")).unwrap();
        std::os::unix::fs::symlink(tmp.path().join("lost-disk"), dest.join("pg_wal")).unwrap();
        materialize_delta(&source, &manifest, &dest, &spaces, TWO, &counters).unwrap();
        assert!(dest.join("pg_wal").is_dir() && !dest.join("pg_wal").is_symlink());
        // A stored file that is not what the manifest says fails the delta too.
        std::fs::write(dest.join("base/5/1"), b"uno").unwrap();
        std::fs::write(holder.join("data/base/5/1"), b"bad").unwrap();
        assert!(materialize_delta(&source, &manifest, &dest, &spaces, TWO, &counters).is_err());
        // So does PostgreSQL's manifest when its own checksum fails; a new restore that fails
        // leaves no directory behind (a half-restored one must not pass for a restored one).
        std::fs::write(holder.join("data/base/5/1"), b"one").unwrap();
        let rotten = pg_manifest().replacen("Files", "Filez", 1);
        std::fs::write(holder.join(PG_MANIFEST), rotten).unwrap();
        let other = tmp.path().join("other");
        let r = materialize(&manifest, &holders, &other, &spaces, TWO, &counters).unwrap_err();
        assert_eq!(r.reason, Some(Reason::ManifestMismatch), "{:?}", r.detail);
        assert!(!other.exists());
        // A new restore never writes into a directory that is there already, nor removes it.
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("theirs"), b"x").unwrap();
        std::fs::write(holder.join(PG_MANIFEST), pg_manifest()).unwrap();
        let r = materialize(&manifest, &holders, &other, &spaces, TWO, &counters).unwrap_err();
        assert!(r.detail.unwrap().contains("exists"));
        assert!(other.join("theirs").exists());
    }

    /// A tablespace's location shared with another version's directory (what pg_upgrade
    /// leaves): a delta restore cleans this backup's version directory and leaves the rest.
    #[test]
    fn a_delta_restore_leaves_another_versions_tablespace_directory_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let holder = tmp.path().join("b1");
        let ts = "pg_tblspc/16384/PG_15_202209061";
        std::fs::create_dir_all(holder.join("data").join(ts).join("5")).unwrap();
        let bytes = b"relation".to_vec();
        std::fs::write(holder.join("data").join(ts).join("5/1"), &bytes).unwrap();
        std::fs::write(holder.join(PG_MANIFEST), pg_manifest()).unwrap();
        let manifest = Manifest {
            backup_id: 1,
            parent: None,
            dirs: ["pg_tblspc", "pg_tblspc/16384", ts, &format!("{ts}/5")]
                .map(String::from)
                .to_vec(),
            files: vec![FileRecord {
                path: format!("{ts}/5/1"),
                size: bytes.len() as u64,
                mtime: 0,
                sha256: hex(&Sha256::digest(&bytes)),
                holder: 1,
                stored: format!("data/{ts}/5/1"),
            }],
        };
        let holders = HashMap::from([(1, holder.clone())]);
        let (counted, cancel) = (AtomicU64::new(0), AtomicBool::new(false));
        let counters = Counters {
            bytes: &counted,
            cancel: &cancel,
            files: None,
        };
        let (dest, spaces) = (tmp.path().join("data"), tmp.path().join("spaces"));
        materialize(&manifest, &holders, &dest, &spaces, TWO, &counters).unwrap();
        let location = spaces.join("16384");
        std::fs::create_dir_all(location.join("PG_16_202307071/5")).unwrap();
        std::fs::write(location.join("PG_16_202307071/5/1"), b"other cluster").unwrap();
        std::fs::write(location.join("PG_15_202209061/5/2"), b"stale").unwrap();
        let source = LocalHolders(&holders);
        let d = materialize_delta(&source, &manifest, &dest, &spaces, TWO, &counters).unwrap();
        assert_eq!((d.kept, d.removed), (1, 1), "{d:?}");
        assert!(location.join("PG_16_202307071/5/1").exists());
        assert!(!location.join("PG_15_202209061/5/2").exists());

        // A new restore that fails takes away the tablespace directories it made, and their
        // parent when it made that too; a parent that was there stays.
        std::fs::write(holder.join("data").join(ts).join("5/1"), b"rotten!!").unwrap();
        let (dest, made) = (tmp.path().join("again"), tmp.path().join("made"));
        assert!(materialize(&manifest, &holders, &dest, &made, TWO, &counters).is_err());
        assert!(!dest.exists() && !made.exists());
        let kept = tmp.path().join("kept");
        std::fs::create_dir(&kept).unwrap();
        assert!(materialize(&manifest, &holders, &dest, &kept, TWO, &counters).is_err());
        assert!(!dest.exists() && kept.is_dir() && !kept.join("16384").exists());
        let linked = tmp.path().join("linked");
        std::os::unix::fs::symlink(&kept, &linked).unwrap();
        assert!(materialize(&manifest, &holders, &dest, &linked, TWO, &counters).is_err());
        assert!(linked.is_symlink() && kept.is_dir() && !kept.join("16384").exists());
    }

    /// What `will_open` was told: the files (holder, stored path) and the threads.
    type Announced = (Vec<(i64, String)>, usize);

    /// Local holders that record what `build` announces and opens.
    struct Recording<'a> {
        inner: LocalHolders<'a>,
        announced: std::sync::Mutex<Vec<Announced>>,
        opened: std::sync::Mutex<Vec<String>>,
    }

    impl StoredFiles for Recording<'_> {
        fn open(&self, holder: i64, stored: &str) -> Option<Result<Box<dyn Read + Send>, String>> {
            self.opened.lock().unwrap().push(stored.to_owned());
            self.inner.open(holder, stored)
        }
        fn shown(&self, holder: i64, stored: &str) -> PathBuf {
            self.inner.shown(holder, stored)
        }
        fn will_open(&self, order: &[(i64, &str)], at_once: usize) {
            let order = order.iter().map(|&(h, s)| (h, s.to_owned())).collect();
            self.announced.lock().unwrap().push((order, at_once));
        }
    }

    #[test]
    fn a_restore_announces_every_file_in_the_order_its_threads_open_them() {
        let tmp = tempfile::tempdir().unwrap();
        let holder = tmp.path().join("b1");
        std::fs::create_dir_all(holder.join("data/base/5")).unwrap();
        let sizes = [
            ("base/5/1", 10),
            ("base/5/2", 5000),
            ("base/5/3", 300),
            ("PG_VERSION", 3),
        ];
        let mut manifest = Manifest {
            backup_id: 1,
            parent: None,
            dirs: vec!["base".into(), "base/5".into()],
            files: vec![],
        };
        for (path, len) in sizes {
            let bytes = vec![7u8; len];
            std::fs::write(holder.join("data").join(path), &bytes).unwrap();
            manifest.files.push(FileRecord {
                path: path.into(),
                size: len as u64,
                mtime: 0,
                sha256: hex(&Sha256::digest(&bytes)),
                holder: 1,
                stored: format!("data/{path}"),
            });
        }
        std::fs::write(holder.join(PG_MANIFEST), pg_manifest()).unwrap();
        let holders = HashMap::from([(1, holder.clone())]);
        let source = Recording {
            inner: LocalHolders(&holders),
            announced: Default::default(),
            opened: Default::default(),
        };
        let (bytes, cancel) = (AtomicU64::new(0), AtomicBool::new(false));
        let counters = Counters {
            bytes: &bytes,
            cancel: &cancel,
            files: None,
        };
        let (dest, spaces) = (tmp.path().join("data"), tmp.path().join("spaces"));
        let one = Writers {
            threads: 1,
            writes: Writes::Buffered,
        };
        materialize_from(&source, &manifest, &dest, &spaces, one, &counters).unwrap();
        // Announced once, largest first, PostgreSQL's manifest last, for one thread; opened in
        // that order (the plain manifest after the compressed one was not there).
        let expected: Vec<(i64, String)> = ["data/base/5/2", "data/base/5/3", "data/base/5/1"]
            .iter()
            .chain(&["data/PG_VERSION", PG_MANIFEST_ZST])
            .map(|s| (1, (*s).to_owned()))
            .collect();
        assert_eq!(
            *source.announced.lock().unwrap(),
            vec![(expected.clone(), 1)]
        );
        let mut opened: Vec<String> = expected.into_iter().map(|(_, s)| s).collect();
        opened.push(PG_MANIFEST.to_owned());
        assert_eq!(*source.opened.lock().unwrap(), opened);
        // A delta restore opens only the files that differ: nothing is announced.
        std::fs::write(dest.join("base/5/2"), vec![8u8; 5000]).unwrap();
        materialize_delta(&source, &manifest, &dest, &spaces, one, &counters).unwrap();
        assert_eq!(source.announced.lock().unwrap().len(), 1);
    }
}
