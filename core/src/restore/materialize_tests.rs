use super::*;
use crate::checksum::hex;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, AtomicU64};

const TWO: Writers = Writers {
    threads: 2,
    writes: Writes::Direct,
    pace: None,
};

/// A control file's bytes: the system identifier first, as PostgreSQL lays it out.
fn control_file(sysid: i64) -> Vec<u8> {
    let mut control = vec![0u8; 8192];
    control[..8].copy_from_slice(&sysid.to_le_bytes());
    control
}

/// Progress counters nobody watches: nothing cancelled, files not counted.
#[derive(Default)]
struct Idle {
    bytes: AtomicU64,
    cancel: AtomicBool,
}

impl Idle {
    fn counters(&self) -> Counters<'_> {
        Counters {
            bytes: &self.bytes,
            cancel: &self.cancel,
            files: None,
        }
    }
}

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

/// Backup 1 stored uncompressed in `holder` (its `data/` directories made by the caller):
/// `files` written there, PostgreSQL's manifest beside them; its chain manifest.
fn stored_backup(holder: &Path, dirs: &[&str], files: &[(&str, Vec<u8>)]) -> Manifest {
    let mut manifest = Manifest {
        backup_id: 1,
        parent: None,
        dirs: dirs.iter().map(|d| (*d).to_owned()).collect(),
        files: vec![],
    };
    for (path, bytes) in files {
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
    manifest
}

#[test]
fn a_delta_restore_keeps_what_matches_and_removes_what_the_backup_lacks() {
    let tmp = tempfile::tempdir().unwrap();
    let holder = tmp.path().join("b1");
    std::fs::create_dir_all(holder.join("data/base/5")).unwrap();
    std::fs::create_dir_all(holder.join("data/pg_wal")).unwrap();
    std::fs::create_dir_all(holder.join("data/global")).unwrap();
    let files = [
        ("base/5/1", b"one".to_vec()),
        ("base/5/2", vec![2u8; 9000]),
        (CONTROL, control_file(7)),
    ];
    let manifest = stored_backup(&holder, &["base", "base/5", "global", "pg_wal"], &files);
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
    assert_eq!(done.load(Ordering::Relaxed), 3, "files done, for the bar");

    // The server ran on: one file changed, stale WAL and a new relation appeared.
    std::fs::write(dest.join("base/5/2"), vec![3u8; 9000]).unwrap();
    std::fs::write(dest.join("pg_wal/000000010000000000000009"), b"stale").unwrap();
    std::fs::create_dir(dest.join("base/6")).unwrap();
    std::fs::write(dest.join("base/6/1"), b"new").unwrap();
    let source = LocalHolders(&holders);
    let d = materialize_delta(&source, &manifest, &dest, &spaces, TWO, &counters).unwrap();
    // The control file is always fetched (see install_control).
    assert_eq!(
        d,
        Delta {
            kept: 1,
            fetched: 2,
            removed: 2
        }
    );
    // Kept files are done too.
    assert_eq!(done.load(Ordering::Relaxed), 6);
    assert!(install_control(&dest).unwrap());
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
    assert_eq!((d.fetched, d.removed), (2, 2), "{d:?}");
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
    std::fs::create_dir_all(holder.join("data/global")).unwrap();
    let control = control_file(7);
    std::fs::write(holder.join("data").join(CONTROL), &control).unwrap();
    let manifest = Manifest {
        backup_id: 1,
        parent: None,
        dirs: [
            "global",
            "pg_tblspc",
            "pg_tblspc/16384",
            ts,
            &format!("{ts}/5"),
        ]
        .map(String::from)
        .to_vec(),
        files: vec![
            FileRecord {
                path: format!("{ts}/5/1"),
                size: bytes.len() as u64,
                mtime: 0,
                sha256: hex(&Sha256::digest(&bytes)),
                holder: 1,
                stored: format!("data/{ts}/5/1"),
            },
            FileRecord {
                path: CONTROL.into(),
                size: control.len() as u64,
                mtime: 0,
                sha256: hex(&Sha256::digest(&control)),
                holder: 1,
                stored: format!("data/{CONTROL}"),
            },
        ],
    };
    let holders = HashMap::from([(1, holder.clone())]);
    let idle = Idle::default();
    let counters = idle.counters();
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
    // A tablespace directory that is there already is never written into, nor removed.
    std::fs::create_dir(kept.join("16384")).unwrap();
    let r = materialize(&manifest, &holders, &dest, &kept, TWO, &counters).unwrap_err();
    assert!(r.detail.unwrap().contains("exists"));
    assert!(!dest.exists() && kept.join("16384").is_dir());
    std::fs::remove_dir(kept.join("16384")).unwrap();

    // The parent this run made is shared: another restore's directory put there meanwhile
    // stays, and so does the parent.
    struct Meddling<'a>(LocalHolders<'a>, PathBuf);
    impl StoredFiles for Meddling<'_> {
        fn open(&self, h: i64, stored: &str) -> Option<Opened> {
            let _ = std::fs::create_dir_all(self.1.join("99999"));
            self.0.open(h, stored)
        }
        fn shown(&self, h: i64, stored: &str) -> PathBuf {
            self.0.shown(h, stored)
        }
    }
    let shared = tmp.path().join("shared");
    let source = Meddling(LocalHolders(&holders), shared.clone());
    assert!(materialize_from(&source, &manifest, &dest, &shared, TWO, &counters).is_err());
    assert!(!dest.exists() && !shared.join("16384").exists());
    assert!(shared.join("99999").is_dir());

    // After a restore that worked, a later step's failure discards what it made, not the
    // parent.
    std::fs::write(holder.join("data").join(ts).join("5/1"), &bytes).unwrap();
    materialize(&manifest, &holders, &dest, &kept, TWO, &counters).unwrap();
    assert!(kept.join("16384/PG_15_202209061/5/1").is_file());
    discard_new(&dest, &kept, &manifest);
    assert!(!dest.exists() && !kept.join("16384").exists() && kept.is_dir());
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
    fn open(&self, holder: i64, stored: &str) -> Option<Opened> {
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
    std::fs::create_dir_all(holder.join("data/global")).unwrap();
    // The control file is the largest here: it still comes last.
    let sizes = [
        ("base/5/1", 10),
        ("base/5/2", 5000),
        ("base/5/3", 300),
        ("PG_VERSION", 3),
        (CONTROL, 8192),
    ];
    let mut manifest = Manifest {
        backup_id: 1,
        parent: None,
        dirs: vec!["base".into(), "base/5".into(), "global".into()],
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
    let idle = Idle::default();
    let counters = idle.counters();
    let (dest, spaces) = (tmp.path().join("data"), tmp.path().join("spaces"));
    let one = Writers {
        threads: 1,
        writes: Writes::Buffered,
        pace: None,
    };
    materialize_from(&source, &manifest, &dest, &spaces, one, &counters).unwrap();
    // Announced once, largest first, then PostgreSQL's manifest and the control file, for
    // one thread; opened in that order (the plain manifest after the compressed one was not
    // there).
    let expected: Vec<(i64, String)> = ["data/base/5/2", "data/base/5/3", "data/base/5/1"]
        .iter()
        .chain(&["data/PG_VERSION", PG_MANIFEST_ZST, "data/global/pg_control"])
        .map(|s| (1, (*s).to_owned()))
        .collect();
    assert_eq!(
        *source.announced.lock().unwrap(),
        vec![(expected.clone(), 1)]
    );
    let mut opened: Vec<String> = expected.into_iter().map(|(_, s)| s).collect();
    opened.insert(opened.len() - 1, PG_MANIFEST.to_owned());
    assert_eq!(*source.opened.lock().unwrap(), opened);
    // A delta restore opens only the files that differ: nothing is announced.
    std::fs::write(dest.join("base/5/2"), vec![8u8; 5000]).unwrap();
    materialize_delta(&source, &manifest, &dest, &spaces, one, &counters).unwrap();
    assert_eq!(source.announced.lock().unwrap().len(), 1);
}

/// Files written past the page cache (in aligned blocks, a large one's by a helper thread)
/// restore exact, and one whose bytes are not the manifest's fails as a
/// checksum mismatch and leaves nothing, as a buffered one does.
#[test]
fn large_files_written_past_the_cache_are_exact_and_checked() {
    use crate::files::direct::{BEHIND_FROM, DIRECT_FROM};
    let tmp = tempfile::tempdir().unwrap();
    let holder = tmp.path().join("b1");
    std::fs::create_dir_all(holder.join("data/base/5")).unwrap();
    let pattern = |len: usize, seed: u8| -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    };
    let files = [
        ("base/5/1", pattern(DIRECT_FROM as usize + 4097, 1)),
        ("base/5/2", pattern(BEHIND_FROM as usize * 2 + 12345, 2)),
        ("base/5/3", pattern(100, 3)),
    ];
    let manifest = stored_backup(&holder, &["base", "base/5"], &files);
    let holders = HashMap::from([(1, holder.clone())]);
    let idle = Idle::default();
    let counters = idle.counters();
    let spaces = tmp.path().join("spaces");
    for writes in [Writes::Direct, Writes::Buffered] {
        let dest = tmp.path().join(format!("data-{writes:?}"));
        let writers = Writers {
            threads: 2,
            writes,
            pace: None,
        };
        materialize(&manifest, &holders, &dest, &spaces, writers, &counters).unwrap();
        for (path, content) in &files {
            assert_eq!(&std::fs::read(dest.join(path)).unwrap(), content, "{path}");
        }
    }
    // One byte of each large file changed where it is stored: each fails, named.
    for (i, (path, content)) in files.iter().take(2).enumerate() {
        let mut damaged = content.clone();
        damaged[content.len() / 2] ^= 0x40;
        std::fs::write(holder.join("data").join(path), &damaged).unwrap();
        let dest = tmp.path().join(format!("damaged-{i}"));
        let r = materialize(&manifest, &holders, &dest, &spaces, TWO, &counters).unwrap_err();
        assert_eq!(r.reason, Some(Reason::ChecksumMismatch), "{path}: {r:?}");
        assert!(r.detail.as_deref().unwrap().contains(path), "{r:?}");
        assert!(!dest.exists(), "a failed restore leaves nothing");
        std::fs::write(holder.join("data").join(path), content).unwrap();
    }
}

/// A chain manifest listing a tablespace_map in the data directory, which PostgreSQL would follow
/// at the first start (pointing a tablespace anywhere, for WAL replay to write there), is
/// refused before anything is written; a file of that name further down is any file.
#[test]
fn a_tablespace_map_in_the_data_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let holder = tmp.path().join("b1");
    std::fs::create_dir_all(holder.join("data/base")).unwrap();
    let files = [
        ("PG_VERSION", b"15\n".to_vec()),
        ("base/tablespace_map", b"not read by PostgreSQL".to_vec()),
        (
            "tablespace_map",
            b"16384 /var/lib/postgresql/15/main/base\n".to_vec(),
        ),
    ];
    let manifest = stored_backup(&holder, &["base"], &files);
    let holders = HashMap::from([(1, holder.clone())]);
    let idle = Idle::default();
    let spaces = tmp.path().join("spaces");
    let dest = tmp.path().join("data");
    let r = materialize(&manifest, &holders, &dest, &spaces, TWO, &idle.counters()).unwrap_err();
    assert_eq!(r.reason, Some(Reason::ManifestMismatch), "{r:?}");
    assert!(
        r.detail.as_deref().unwrap().contains("tablespace_map"),
        "{r:?}"
    );
    assert!(!dest.exists(), "a refused restore leaves nothing");
    let mut without = manifest.clone();
    without.files.retain(|f| f.path != "tablespace_map");
    materialize(&without, &holders, &dest, &spaces, TWO, &idle.counters()).unwrap();
    assert!(dest.join("base/tablespace_map").is_file());
}

/// A delta restore that fails part-way leaves a directory PostgreSQL cannot start (its control
/// file held aside), which a delta restore run again still recognises and finishes.
#[test]
fn a_failed_delta_leaves_a_directory_that_cannot_start_until_one_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let holder = tmp.path().join("b1");
    std::fs::create_dir_all(holder.join("data/base/5")).unwrap();
    std::fs::create_dir_all(holder.join("data/global")).unwrap();
    let mut control = control_file(7);
    control[100] = 1;
    let files = [
        ("PG_VERSION", b"15\n".to_vec()),
        (CONTROL, control.clone()),
        ("base/5/1", b"one".to_vec()),
    ];
    let manifest = stored_backup(&holder, &["base", "base/5", "global"], &files);
    let holders = HashMap::from([(1, holder.clone())]);
    let idle = Idle::default();
    let counters = idle.counters();
    let (dest, spaces) = (tmp.path().join("data"), tmp.path().join("spaces"));
    materialize(&manifest, &holders, &dest, &spaces, TWO, &counters).unwrap();
    assert_eq!(std::fs::read(dest.join(CONTROL)).unwrap(), control);
    // The server ran on (its control file changed), then the target's copy of a file the
    // delta must fetch is damaged.
    let mut ran_on = control.clone();
    ran_on[100] = 2;
    std::fs::write(dest.join(CONTROL), &ran_on).unwrap();
    std::fs::write(dest.join("base/5/1"), b"uno").unwrap();
    std::fs::write(holder.join("data/base/5/1"), b"bad").unwrap();
    let source = LocalHolders(&holders);
    assert!(materialize_delta(&source, &manifest, &dest, &spaces, TWO, &counters).is_err());
    assert!(!dest.join(CONTROL).exists(), "PostgreSQL must not start it");
    assert_eq!(std::fs::read(dest.join(CONTROL_HELD)).unwrap(), ran_on);
    // Still this cluster's directory to a delta restore, and another cluster's backup is
    // still refused.
    assert_eq!(crate::restore::fetch::delta_refusal(&dest, 7), None);
    assert!(crate::restore::fetch::delta_refusal(&dest, 8)
        .unwrap()
        .contains("cluster 7"));
    // A second failure keeps the directory's own control file aside.
    assert!(materialize_delta(&source, &manifest, &dest, &spaces, TWO, &counters).is_err());
    assert_eq!(std::fs::read(dest.join(CONTROL_HELD)).unwrap(), ran_on);
    // Once the target is whole again, the delta finishes with the backup's control file
    // staged: still no pg_control until the caller (its recovery settings written) installs
    // it. Stopped there (a kill), a delta restore run again finishes too.
    std::fs::write(holder.join("data/base/5/1"), b"one").unwrap();
    let d = materialize_delta(&source, &manifest, &dest, &spaces, TWO, &counters).unwrap();
    assert_eq!((d.kept, d.fetched, d.removed), (1, 2, 0), "{d:?}");
    assert!(!dest.join(CONTROL).exists());
    assert_eq!(std::fs::read(dest.join(CONTROL_STAGED)).unwrap(), control);
    let d = materialize_delta(&source, &manifest, &dest, &spaces, TWO, &counters).unwrap();
    assert_eq!((d.kept, d.fetched, d.removed), (2, 1, 1), "{d:?}");
    assert!(install_control(&dest).unwrap());
    assert_eq!(std::fs::read(dest.join(CONTROL)).unwrap(), control);
    assert!(!dest.join(CONTROL_HELD).exists() && !dest.join(CONTROL_STAGED).exists());
    assert!(!install_control(&dest).unwrap(), "nothing staged any more");
    assert_eq!(std::fs::read(dest.join("base/5/1")).unwrap(), b"one");
    // A pg_control that is a symlink is refused, and what it leads to left alone.
    let elsewhere = tmp.path().join("their-control");
    std::fs::write(&elsewhere, &control).unwrap();
    std::fs::rename(dest.join(CONTROL), dest.join("global/saved")).unwrap();
    std::os::unix::fs::symlink(&elsewhere, dest.join(CONTROL)).unwrap();
    assert!(crate::restore::fetch::delta_refusal(&dest, 7).is_some());
    std::fs::remove_file(dest.join(CONTROL)).unwrap();
    std::fs::rename(dest.join("global/saved"), dest.join(CONTROL)).unwrap();
    // A manifest naming a restore's own file (a backup taken while one was there) does not
    // overwrite it.
    let mut planted = manifest.clone();
    let mut own = planted.files[0].clone();
    own.path = CONTROL_HELD.into();
    planted.files.push(own);
    std::fs::remove_file(dest.join("base/5/1")).unwrap();
    materialize_delta(&source, &planted, &dest, &spaces, TWO, &counters).unwrap();
    assert_eq!(std::fs::read(dest.join(CONTROL_HELD)).unwrap(), control);
    install_control(&dest).unwrap();
    // A manifest without a control file is refused before anything is touched.
    let mut without = manifest.clone();
    without.files.retain(|f| f.path != CONTROL);
    let r = materialize_delta(&source, &without, &dest, &spaces, TWO, &counters).unwrap_err();
    assert!(r.detail.unwrap().contains("no global/pg_control"));
    assert_eq!(std::fs::read(dest.join(CONTROL)).unwrap(), control);
    // A control file that is not the backup's is refused, and nothing is installed.
    std::fs::write(holder.join("data/global/pg_control"), &ran_on).unwrap();
    assert!(materialize_delta(&source, &manifest, &dest, &spaces, TWO, &counters).is_err());
    assert!(!dest.join(CONTROL).exists());
    assert_eq!(std::fs::read(dest.join(CONTROL_HELD)).unwrap(), control);
}
