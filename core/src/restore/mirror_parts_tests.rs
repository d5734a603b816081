use std::path::Path;

use super::*;
use crate::restore::offsite::{load_mirror, load_mirror_parts};
use crate::storage::filesystem::FilesystemTarget;

/// A catalog document as the extension's query builds it: one backup (with a field this
/// program does not read) and `names` as WAL files.
fn document(names: &[&str]) -> String {
    let files: Vec<Value> = names
        .iter()
        .map(|n| {
            json!({"name": n, "key": format!("7/.wal/{n}.zst"), "size": 10,
                   "sha256": "a".repeat(64), "archived_at": format!("2026-12-04 10:00:0{}+00", n.len() % 10)})
        })
        .collect();
    json!({
        "format": "backup_mgmt offsite catalog 1",
        "written_at": "2026-12-04 10:00:00+00",
        "system_identifier": 7,
        "wal_segment_size": 16777216,
        "backups": [{"backup_id": 1, "database_name": "db", "backup_type": "full",
                     "backup_method": "native", "key": "7/db/b1", "keep_until": null,
                     "copied_at": "2026-12-04 10:00:00+00"}],
        "wal_files": files,
        "wal_gaps": ["000000010000000300000005"],
    })
    .to_string()
}

const NAMES: [&str; 7] = [
    "0000000100000003000000FE",
    "0000000100000003000000FF",
    "000000010000000400000000",
    "000000010000000400000001.partial",
    "000000010000000300000010.00000028.backup",
    "00000002.history",
    "000000020000000400000001",
];

/// A filesystem target holding `split`'s objects as the worker stores them.
fn stored(tmp: &Path, split: &Split) -> FilesystemTarget {
    let target = FilesystemTarget {
        dir: tmp.join("t"),
        rate: None,
    };
    for (key, bytes) in &split.parts {
        put(&target, key, bytes);
    }
    put(&target, &mirror_key(7), split.main.as_bytes());
    target
}

fn put(target: &FilesystemTarget, key: &str, bytes: &[u8]) {
    let path = target.dir.join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn names_go_to_the_part_of_their_timeline_and_log() {
    assert_eq!(
        part_of("0000000100000003000000FE").unwrap(),
        "0000000100000003"
    );
    assert_eq!(
        part_of("000000010000000400000001.partial").unwrap(),
        "0000000100000004"
    );
    assert_eq!(
        part_of("000000010000000300000010.00000028.backup").unwrap(),
        "0000000100000003"
    );
    assert_eq!(part_of("00000002.history").unwrap(), HISTORY_PART);
    for not_wal in [
        "",
        "00000001",
        "0000000100000003000000F",
        "../../../etc/passwd_xxxxxx",
        "é".repeat(12).as_str(),
    ] {
        assert_eq!(part_of(not_wal), None, "{not_wal:?}");
    }
}

#[test]
fn a_document_is_split_into_parts_and_read_back_whole() {
    let doc = document(&NAMES);
    let split = split(&doc, "3").unwrap();
    let main: Value = serde_json::from_str(&split.main).unwrap();
    assert_eq!(main["format"], FORMAT_2);
    assert!(
        main.get("wal_files").is_none(),
        "the files are in the parts"
    );
    // Everything else is kept as the query wrote it, fields this program does not read too.
    assert_eq!(main["backups"][0]["keep_until"], Value::Null);
    assert_eq!(main["backups"][0]["copied_at"], "2026-12-04 10:00:00+00");
    assert_eq!(main["wal_gaps"][0], "000000010000000300000005");
    let parts: Vec<&str> = main["wal_parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["part"].as_str().unwrap())
        .collect();
    assert_eq!(
        parts,
        [
            "0000000100000003",
            "0000000100000004",
            "0000000200000004",
            HISTORY_PART
        ]
    );
    assert_eq!(main["wal_parts"][0]["files"], 3);
    // By name, as the catalog orders them (`1` before `F`).
    assert_eq!(
        main["wal_parts"][0]["first"],
        "000000010000000300000010.00000028.backup"
    );
    assert_eq!(main["wal_parts"][0]["last"], "0000000100000003000000FF");
    for (key, _) in &split.parts {
        assert!(key.starts_with("7/.catalog/wal/3/"), "{key}");
    }

    let tmp = tempfile::tempdir().unwrap();
    let target = stored(tmp.path(), &split);
    let m = load_mirror(&target, 7).unwrap();
    let mut names: Vec<&str> = NAMES.to_vec();
    names.sort_unstable();
    assert_eq!(
        m.wal_files
            .iter()
            .map(|w| w.name.as_str())
            .collect::<Vec<_>>(),
        names
    );
    assert_eq!(m.backups.len(), 1);
    assert_eq!(m.wal_gaps.len(), 1);

    // The same files again make the same parts under the same keys; one more file changes
    // only its own part.
    assert_eq!(super::split(&doc, "3").unwrap().keys(), split.keys());
    let mut more = NAMES.to_vec();
    more.push("000000010000000400000002");
    let next = super::split(&document(&more), "3").unwrap();
    let changed: Vec<String> = next.keys().difference(&split.keys()).cloned().collect();
    assert_eq!(changed.len(), 1);
    assert!(changed[0].contains("/0000000100000004."), "{changed:?}");
}

#[test]
fn wal_fetch_reads_only_the_parts_it_needs() {
    let split = split(&document(&NAMES), "3").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let target = stored(tmp.path(), &split);
    // The last segment of log 3 with two ahead: log 3 and log 4, this timeline and newer.
    let wanted = around("0000000100000003000000FF", 2);
    let m = load_mirror_parts(&target, 7, &wanted).unwrap();
    let names: Vec<&str> = m.wal_files.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "000000010000000300000010.00000028.backup",
            "0000000100000003000000FE",
            "0000000100000003000000FF",
            "000000010000000400000000",
            "000000010000000400000001.partial",
            "000000020000000400000001",
        ]
    );
    // A history file needs the history part alone; a timeline older than the segment's is not
    // read.
    let m = load_mirror_parts(&target, 7, &around("00000002.history", 8)).unwrap();
    assert_eq!(m.wal_files.len(), 1);
    let m = load_mirror_parts(&target, 7, &around("000000020000000400000000", 8)).unwrap();
    assert_eq!(
        m.wal_files
            .iter()
            .map(|w| w.name.as_str())
            .collect::<Vec<_>>(),
        ["000000020000000400000001"]
    );
    // Nothing but the main document for a name that is in no part.
    let m = load_mirror_parts(&target, 7, &around("not a wal name", 8)).unwrap();
    assert!(m.wal_files.is_empty());
}

#[test]
fn parts_that_are_not_what_the_document_names_are_refused() {
    let split = split(&document(&NAMES), "3").unwrap();
    let refused = |target: &FilesystemTarget, what: &str| {
        let e = load_mirror(target, 7).unwrap_err().to_string();
        assert!(e.contains(what), "{e}");
    };

    // A part's bytes changed on the target.
    let tmp = tempfile::tempdir().unwrap();
    let target = stored(tmp.path(), &split);
    let (key, bytes) = &split.parts[0];
    let mut changed = bytes.clone();
    changed.extend_from_slice(b" ");
    put(&target, key, &changed);
    refused(&target, "sha256");

    // A part gone, in every reading of the document.
    let tmp = tempfile::tempdir().unwrap();
    let target = stored(tmp.path(), &split);
    std::fs::remove_file(target.dir.join(&split.parts[1].0)).unwrap();
    refused(&target, &split.parts[1].0);

    // A document whose part lists a file of another part, or of another cluster, with digests
    // that match: each is refused by what it says, not only by its digest.
    let mut main: Value = serde_json::from_str(&split.main).unwrap();
    let forged = |part: &str, sysid: i64, name: &str| {
        json!({"format": PART_FORMAT, "system_identifier": sysid, "part": part,
               "wal_files": [{"name": name, "key": format!("7/.wal/{name}"), "size": 1,
                              "sha256": "b".repeat(64), "archived_at": "2026-12-04 10:00:00+00"}]})
        .to_string()
        .into_bytes()
    };
    for (bytes, what) in [
        (
            forged("0000000100000003", 7, "000000010000000500000001"),
            "not of this part",
        ),
        (
            forged("0000000100000003", 8, "000000010000000300000001"),
            "of cluster 8",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let target = stored(tmp.path(), &split);
        let key = "7/.catalog/wal/3/forged.json";
        put(&target, key, &bytes);
        main["wal_parts"][0]["key"] = key.into();
        main["wal_parts"][0]["sha256"] = hex(&Sha256::digest(&bytes)).into();
        main["wal_parts"][0]["files"] = 1.into();
        put(&target, &mirror_key(7), main.to_string().as_bytes());
        refused(&target, what);
    }

    // Keys outside this cluster's catalog, and a part named twice.
    for (field, value, what) in [
        (
            "key",
            json!("8/.catalog/wal/3/x.json"),
            "is not one this cluster's mirror names",
        ),
        (
            "sha256",
            json!("nope"),
            "is not one this cluster's mirror names",
        ),
        ("part", json!("0000000100000004"), "named twice"),
    ] {
        let mut main: Value = serde_json::from_str(&split.main).unwrap();
        main["wal_parts"][0][field] = value;
        let tmp = tempfile::tempdir().unwrap();
        let target = stored(tmp.path(), &split);
        put(&target, &mirror_key(7), main.to_string().as_bytes());
        refused(&target, what);
    }

    // A format this program does not know says so.
    let mut main: Value = serde_json::from_str(&split.main).unwrap();
    main["format"] = "backup_mgmt offsite catalog 9".into();
    let tmp = tempfile::tempdir().unwrap();
    let target = stored(tmp.path(), &split);
    put(&target, &mirror_key(7), main.to_string().as_bytes());
    refused(&target, "newer version");
}

#[test]
fn a_mirror_of_format_1_is_still_read() {
    let tmp = tempfile::tempdir().unwrap();
    let target = FilesystemTarget {
        dir: tmp.path().join("t"),
        rate: None,
    };
    put(&target, &mirror_key(7), document(&NAMES).as_bytes());
    let m = load_mirror(&target, 7).unwrap();
    assert_eq!(m.wal_files.len(), NAMES.len());
    let m = load_mirror_parts(&target, 7, &|_, _| false).unwrap();
    assert_eq!(
        m.wal_files.len(),
        NAMES.len(),
        "format 1 has no parts to leave out"
    );
}

#[test]
fn a_change_uploads_its_part_and_replaced_parts_go_when_no_longer_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let target = FilesystemTarget {
        dir: tmp.path().join("t"),
        rate: None,
    };
    let on_target = |key: &str| target.dir.join(key).is_file();
    // Just after a start the writer removes nothing.
    put(&target, "7/.catalog/wal/3/stray.json", b"left by a crash");
    let first = store(
        &target,
        &mirror_key(7),
        &document(&NAMES),
        "3",
        None,
        Check::Listed,
    )
    .unwrap()
    .named;
    assert_eq!(first.len(), 4);
    assert!(first.iter().all(|k| on_target(k)));
    assert!(on_target("7/.catalog/wal/3/stray.json"));
    // Another writer's parts (a second target naming the same place).
    let theirs = "7/.catalog/wal/4/0000000100000003.0123456789abcdef.json";
    put(&target, theirs, b"theirs");

    let mut more = NAMES.to_vec();
    more.push("000000010000000400000002");
    // A part already there is not uploaded again: changed here, it stays so.
    let kept = first
        .iter()
        .find(|k| k.contains("/0000000100000003."))
        .unwrap();
    put(&target, kept, b"left alone");
    let second = store(
        &target,
        &mirror_key(7),
        &document(&more),
        "3",
        Some(&first),
        Check::Listed,
    )
    .unwrap()
    .named;
    assert_eq!(std::fs::read(target.dir.join(kept)).unwrap(), b"left alone");
    assert_eq!(second.difference(&first).count(), 1);
    // The replaced part stays while it is kept; the stray goes.
    assert!(first.iter().all(|k| on_target(k)));
    assert!(!on_target("7/.catalog/wal/3/stray.json"));

    more.push("000000010000000400000003");
    let third = store(
        &target,
        &mirror_key(7),
        &document(&more),
        "3",
        Some(&second),
        Check::Listed,
    )
    .unwrap()
    .named;
    let gone: Vec<&String> = first.difference(&second).collect();
    assert_eq!(gone.len(), 1);
    assert!(!on_target(gone[0]), "named by no document kept");
    assert!(second.iter().chain(&third).all(|k| on_target(k)));
    assert!(on_target(theirs));

    // The part changed by hand is still named (its files did not change) and a reader refuses
    // it; removed (by a bucket's expiry rule, say), the next write puts it back.
    assert!(third.contains(kept));
    let e = load_mirror(&target, 7).unwrap_err().to_string();
    assert!(e.contains("sha256"), "{e}");
    std::fs::remove_file(target.dir.join(kept)).unwrap();
    store(
        &target,
        &mirror_key(7),
        &document(&more),
        "3",
        Some(&third),
        Check::Listed,
    )
    .unwrap();
    let m = load_mirror(&target, 7).unwrap();
    assert_eq!(m.wal_files.len(), more.len());
    // A writer name that is not one path component is refused: the document goes as it is.
    assert!(split(&document(&NAMES), "../x").is_none());
    assert!(split(&document(&NAMES), "").is_none());
}

#[test]
fn a_part_damaged_in_place_is_put_again_by_a_write_that_reads_the_parts_back() {
    let tmp = tempfile::tempdir().unwrap();
    let target = FilesystemTarget {
        dir: tmp.path().join("t"),
        rate: None,
    };
    let doc = document(&NAMES);
    let read = |key: &str| std::fs::read(target.dir.join(key)).unwrap();
    let write = |keep: &BTreeSet<String>, check: Check| {
        store(&target, &mirror_key(7), &doc, "3", Some(keep), check).unwrap()
    };
    let first = store(&target, &mirror_key(7), &doc, "3", None, Check::Content).unwrap();
    assert!(first.repaired.is_empty(), "{:?}", first.repaired);
    let damaged = first
        .named
        .iter()
        .find(|k| k.contains("/0000000100000004."))
        .unwrap()
        .clone();
    let good = read(&damaged);
    // One bit flipped, the length unchanged: no listing can tell.  The main document too.
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 1;
    put(&target, &damaged, &bad);
    put(&target, &mirror_key(7), b"{");
    assert!(load_mirror(&target, 7).is_err());

    // A write after a change lists the parts: the main document is whole again, the part not.
    let listed = write(&first.named, Check::Listed);
    assert!(listed.repaired.is_empty());
    assert_eq!(read(&damaged), bad);
    let e = load_mirror(&target, 7).unwrap_err().to_string();
    assert!(e.contains("sha256"), "{e}");

    // A write that reads the parts back puts that one again, and only that one.
    let checked = write(&listed.named, Check::Content);
    assert_eq!(checked.repaired, vec![damaged.clone()]);
    assert_eq!(checked.named, first.named);
    assert_eq!(read(&damaged), good);
    let m = load_mirror(&target, 7).unwrap();
    assert_eq!(m.wal_files.len(), NAMES.len());

    // Longer, shorter or empty: each found and put again; a whole part is left as it is.
    for wrong in [
        [good.as_slice(), b" "].concat(),
        good[..good.len() - 1].to_vec(),
        Vec::new(),
    ] {
        put(&target, &damaged, &wrong);
        let again = write(&first.named, Check::Content);
        assert_eq!(again.repaired, vec![damaged.clone()]);
        assert_eq!(read(&damaged), good);
    }
    let whole = write(&first.named, Check::Content);
    assert!(whole.repaired.is_empty());
}

/// A target whose first `stale` readings of the main document give an older one: a reader
/// that read the document just before the writer replaced it twice.
struct Stale {
    inner: FilesystemTarget,
    old_main: Vec<u8>,
    stale: std::sync::atomic::AtomicUsize,
}

impl Storage for Stale {
    fn put_opened(
        &self,
        file: std::fs::File,
        shown: &Path,
        key: &str,
    ) -> Result<crate::storage::Copied, StorageError> {
        self.inner.put_opened(file, shown, key)
    }
    fn replace(&self, bytes: &[u8], key: &str) -> Result<(), StorageError> {
        self.inner.replace(bytes, key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete(key)
    }
    fn delete_one(&self, key: &str) -> Result<(), StorageError> {
        self.inner.delete_one(key)
    }
    fn get(&self, key: &str) -> Result<Box<dyn Read + Send>, StorageError> {
        use std::sync::atomic::Ordering;
        if key == mirror_key(7)
            && self
                .stale
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Ok(Box::new(std::io::Cursor::new(self.old_main.clone())));
        }
        self.inner.get(key)
    }
}

#[test]
fn a_reader_that_finds_a_part_gone_reads_the_document_again() {
    let tmp = tempfile::tempdir().unwrap();
    let inner = FilesystemTarget {
        dir: tmp.path().join("t"),
        rate: None,
    };
    let mut names = NAMES.to_vec();
    let first = store(
        &inner,
        &mirror_key(7),
        &document(&names),
        "3",
        None,
        Check::Listed,
    )
    .unwrap()
    .named;
    let old_main = std::fs::read(inner.dir.join(mirror_key(7))).unwrap();
    names.push("000000010000000400000002");
    let second = store(
        &inner,
        &mirror_key(7),
        &document(&names),
        "3",
        Some(&first),
        Check::Listed,
    )
    .unwrap()
    .named;
    names.push("000000010000000400000003");
    store(
        &inner,
        &mirror_key(7),
        &document(&names),
        "3",
        Some(&second),
        Check::Listed,
    )
    .unwrap();
    let reader = |stale: usize| Stale {
        inner: FilesystemTarget {
            dir: inner.dir.clone(),
            rate: None,
        },
        old_main: old_main.clone(),
        stale: stale.into(),
    };
    let m = load_mirror(&reader(1), 7).unwrap();
    assert_eq!(
        m.wal_files.len(),
        names.len(),
        "the newest document, read again"
    );
    // Always the old document: its part is gone for good, and the error names it.
    let e = load_mirror(&reader(usize::MAX), 7).unwrap_err().to_string();
    assert!(e.contains("/0000000100000004."), "{e}");
}

#[test]
fn a_writer_keeps_replaced_parts_for_a_while_and_nothing_just_after_a_start() {
    let t0 = Instant::now();
    let set = |k: &str| BTreeSet::from([k.to_owned()]);
    let keys = |ks: &[&str]| {
        ks.iter()
            .map(|k| k.to_string())
            .collect::<BTreeSet<String>>()
    };
    let mut w = Written::new(t0);
    w.landed(set("a"), t0);
    assert_eq!(
        w.keep(t0 + Duration::from_secs(10)),
        None,
        "just after a start"
    );
    let t1 = t0 + GRACE;
    w.landed(set("b"), t1);
    // "a" was replaced at t1: kept until GRACE after that.
    assert_eq!(w.keep(t1).unwrap(), keys(&["a", "b"]));
    let t2 = t1 + GRACE - Duration::from_secs(1);
    w.landed(set("c"), t2);
    assert_eq!(w.keep(t2).unwrap(), keys(&["a", "b", "c"]));
    let t3 = t1 + GRACE + Duration::from_secs(1);
    assert_eq!(w.keep(t3).unwrap(), keys(&["b", "c"]));
    w.landed(set("d"), t3);
    assert_eq!(w.keep(t3).unwrap(), keys(&["b", "c", "d"]));
}
