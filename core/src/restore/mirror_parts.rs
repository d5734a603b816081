//! The off-site mirror's WAL list in parts (format `backup_mgmt offsite catalog 2`).
//!
//! Format 1 listed every WAL file copied to a target in the one mirror document: about 250
//! bytes a file, so at 100,000 archived files the worker uploaded 25 MB every ten seconds while
//! archiving, and every `wal-fetch` not served from its spool downloaded and parsed all of it
//! for one segment.  Format 2 lists the files in parts, one per timeline and WAL log (the first
//! 16 characters of a segment's name: 256 segments of 16 MB), plus one part for the history
//! files.  A part is stored under a key that ends with its own sha256 and is never rewritten;
//! the main document names each part with its key, digest and a summary.  A change uploads the
//! parts that changed (usually the newest) and the main document; `wal-fetch` reads the main
//! document and the one part its segment is in.
//!
//! The writer (the extension's worker) keeps its parts under its own directory
//! (`<system identifier>/.catalog/wal/<target id>/`): several targets of one cluster may
//! write to the same place, each replacing the main document in turn, and one must not remove
//! the parts the other's document names.  Before each write it lists that directory and puts
//! every part the document names that is not there (a part removed by anyone comes back at the
//! next write), and now and then (`Check::Content`) reads every part there back and puts again
//! one damaged in place; it removes a part only `GRACE` after the last document naming it was replaced,
//! and nothing in its first `GRACE` after a start; a reader that still finds a part gone reads
//! the main document again.
//!
//! Everything read here is input: a part must have the digest the main document names, name
//! the same cluster and part, and list only files of that part.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::offsite::{mirror_key, Mirror, MirrorWal, OffsiteRestoreError, FORMAT};
use crate::checksum::{hex, is_sha256_hex};
use crate::storage::{Storage, StorageError};
use crate::threads;
use crate::wal::{Segment, SegmentSize};

/// The main document's format line when the WAL is listed in parts.
pub const FORMAT_2: &str = "backup_mgmt offsite catalog 2";
/// A part's format line.
pub const PART_FORMAT: &str = "backup_mgmt offsite wal part 1";
/// The part every history file (`<timeline>.history`) is listed in.
pub const HISTORY_PART: &str = "history";
/// Parts larger than this are refused (a full part of 256 files takes about 64 kB; a cluster
/// with 1 MB segments has 4,096 files a part).
const PART_LIMIT: u64 = 64 << 20;
/// Parts a document may name (a full part of 16 MB segments covers 4 GB of WAL).
const MAX_PARTS: usize = 1_000_000;
/// Parts fetched at once when a reader needs many.
const PART_THREADS: usize = 4;
/// How often a reader reads the main document again when a part it names is gone (the writer
/// replaced the document twice meanwhile).
const ATTEMPTS: usize = 3;

/// A part as the main document names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalPartRef {
    /// `HISTORY_PART`, or the first 16 characters (timeline and log) of its files' names.
    pub part: String,
    pub key: String,
    pub sha256: String,
    pub files: u64,
    #[serde(default)]
    pub first: Option<String>,
    #[serde(default)]
    pub last: Option<String>,
    #[serde(default)]
    pub last_archived_at: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WalPart {
    format: String,
    system_identifier: i64,
    part: String,
    wal_files: Vec<MirrorWal>,
}

/// The part a WAL file name is listed in: `HISTORY_PART` for a history file, else its
/// timeline and log (a segment, a `.partial` or a `.backup` file); None for a name that is
/// neither (it is not listed at all).
pub fn part_of(name: &str) -> Option<String> {
    if name.ends_with(".history") {
        return Some(HISTORY_PART.to_owned());
    }
    let head = name.get(..16)?;
    (name.len() >= 24 && crate::wal::is_archivable_name(name)).then(|| head.to_owned())
}

/// Where a writer's parts live: `<system identifier>/.catalog/wal/<writer>/`.
pub fn parts_dir(system_identifier: i64, writer: &str) -> String {
    format!("{system_identifier}/.catalog/wal/{writer}/")
}

/// A mirror to store: the main document and the parts it names, each with its key.
#[derive(Debug, Clone)]
pub struct Split {
    pub main: String,
    pub parts: Vec<(String, Vec<u8>)>,
    /// Where the parts are (`parts_dir`).
    pub parts_dir: String,
}

impl Split {
    /// The keys of every part the main document names.
    pub fn keys(&self) -> BTreeSet<String> {
        self.parts.iter().map(|(k, _)| k.clone()).collect()
    }
}

/// Turns a mirror document that lists its WAL files whole (`wal_files`, as the catalog query
/// builds it) into format 2: its files grouped in parts stored under `parts_dir(sysid,
/// writer)`.  Every other field is kept as it is.  None when `doc` is not such a document.
pub fn split(doc: &str, writer: &str) -> Option<Split> {
    // One path component (the worker's is a target's id).
    if writer.is_empty()
        || !writer
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return None;
    }
    let mut v: Value = serde_json::from_str(doc).ok()?;
    let obj = v.as_object_mut()?;
    let sysid = obj.get("system_identifier")?.as_i64()?;
    let files = match obj.remove("wal_files") {
        Some(Value::Array(files)) => files,
        None | Some(Value::Null) => Vec::new(),
        Some(_) => return None,
    };
    let mut grouped: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for f in files {
        // A name that belongs to no part would be unreachable: the catalog admits none.
        if let Some(p) = f.get("name").and_then(Value::as_str).and_then(part_of) {
            grouped.entry(p).or_default().push(f);
        }
    }
    let mut parts = Vec::with_capacity(grouped.len());
    let mut refs = Vec::with_capacity(grouped.len());
    for (part, mut files) in grouped {
        files.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        let name_at = |i: usize| {
            files
                .get(i)
                .and_then(|f| f["name"].as_str())
                .map(str::to_owned)
        };
        let (first, last) = (name_at(0), name_at(files.len().saturating_sub(1)));
        let last_archived_at = files
            .iter()
            .filter_map(|f| f["archived_at"].as_str())
            .max()
            .map(str::to_owned);
        let count = files.len() as u64;
        let text = json!({
            "format": PART_FORMAT,
            "system_identifier": sysid,
            "part": part,
            "wal_files": files,
        })
        .to_string()
        .into_bytes();
        let sha256 = hex(&Sha256::digest(&text));
        // Named by its digest: a changed part is a new object, never a replaced one, so a
        // reader holding the previous document still finds what that document names.
        let key = format!("{}{part}.{}.json", parts_dir(sysid, writer), &sha256[..16]);
        refs.push(WalPartRef {
            part,
            key: key.clone(),
            sha256,
            files: count,
            first,
            last,
            last_archived_at,
        });
        parts.push((key, text));
    }
    obj.insert("format".into(), FORMAT_2.into());
    obj.insert("wal_parts".into(), serde_json::to_value(refs).ok()?);
    Some(Split {
        main: v.to_string(),
        parts,
        parts_dir: parts_dir(sysid, writer),
    })
}

/// What `store` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    /// The parts the document names.
    pub named: BTreeSet<String>,
    /// The parts that were there but did not hold what their key says (damaged in place, or
    /// not readable), put again: only a write asked to `Check::Content` reads them back.
    pub repaired: Vec<String>,
}

/// How `store` makes sure the parts the document names are there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Listed: a part missing is put back.  What a write after every change costs.
    Listed,
    /// Listed, and every part there read back and compared byte for byte: a part damaged in
    /// place is put again.  A part is never rewritten otherwise (its key is its content), so
    /// without this a damaged one would stay damaged for as long as its WAL is kept.
    Content,
}

/// Puts a mirror on `target` under `main_key` in format 2 (`split` of `doc`, its parts under
/// `parts_dir(sysid, writer)`): the parts it names that are not there (listed first, so a part
/// removed by anyone, a bucket's expiry rule say, is put back at the next write; each checked
/// where it landed), with `Check::Content` also those there that do not hold their bytes, then
/// the document naming them, replaced as one step, then, when `keep` is given, the writer's
/// parts that neither it nor `keep` names.  `keep` is what the documents replaced in the last
/// minutes named (the writer keeps them): a reader that has just read one still finds its
/// parts.  None removes nothing (a writer that does not know what it wrote before, just after
/// a start).  A `doc` that is not a catalog document is put as it is.
pub fn store(
    target: &dyn Storage,
    main_key: &str,
    doc: &str,
    writer: &str,
    keep: Option<&BTreeSet<String>>,
    check: Check,
) -> Result<Stored, StorageError> {
    let Some(split) = split(doc, writer) else {
        return target
            .replace(doc.as_bytes(), main_key)
            .map(|()| Stored::default());
    };
    let there: BTreeSet<String> = target.list(&split.parts_dir)?.into_iter().collect();
    let (present, missing): (Vec<_>, Vec<_>) =
        split.parts.iter().partition(|(key, _)| there.contains(key));
    for (key, bytes) in missing {
        target.replace(bytes, key)?;
    }
    // Read back `PART_THREADS` at a time, as a reader reads them: thousands of parts on an
    // object store, one round trip each, must not hold up the WAL the same batch copies.
    let repaired = std::sync::Mutex::new(Vec::new());
    if check == Check::Content {
        let failed = threads::in_parallel(
            &present,
            PART_THREADS,
            0,
            &std::sync::atomic::AtomicBool::new(false),
            |(key, bytes), _| {
                if holds(target, key, bytes) {
                    return Ok(());
                }
                target.replace(bytes, key)?;
                repaired
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(key.clone());
                Ok(())
            },
        );
        if let Some(e) = failed {
            return Err(e);
        }
    }
    let mut repaired = repaired.into_inner().unwrap_or_else(|e| e.into_inner());
    repaired.sort();
    target.replace(split.main.as_bytes(), main_key)?;
    let named = split.keys();
    // Removing what is no longer named is upkeep: a failure (a bucket that refuses deletes)
    // leaves a stray part, tried again after a later change.
    if let Some(keep) = keep {
        for key in there {
            if !named.contains(&key) && !keep.contains(&key) {
                let _ = target.delete_one(&key);
            }
        }
    }
    Ok(Stored { named, repaired })
}

/// Whether `key` on `target` reads back as exactly `bytes` (read no further than one byte more).
fn holds(target: &dyn Storage, key: &str, bytes: &[u8]) -> bool {
    let Ok(reader) = target.get(key) else {
        return false;
    };
    let mut found = Vec::with_capacity(bytes.len());
    reader
        .take(bytes.len() as u64 + 1)
        .read_to_end(&mut found)
        .is_ok_and(|_| found == bytes)
}

/// How long a part stays on the target after the document naming it was replaced: readers
/// (a `restore` or `list` reading hundreds of parts over a slow link) have that long.
pub const GRACE: Duration = Duration::from_secs(300);

/// What a writer knows of the documents it put on one target: their parts, and when each
/// document was replaced.  It starts knowing nothing (after a start the target may hold
/// documents a reader is reading): nothing is removed until `GRACE` has passed.
#[derive(Debug, Clone)]
pub struct Written {
    since: Instant,
    /// The parts each document named, and when it was replaced (None: the newest).
    documents: Vec<(Option<Instant>, BTreeSet<String>)>,
}

impl Written {
    pub fn new(now: Instant) -> Written {
        Written {
            since: now,
            documents: Vec::new(),
        }
    }

    /// A document naming `named` landed at `now`.
    pub fn landed(&mut self, named: BTreeSet<String>, now: Instant) {
        for d in &mut self.documents {
            d.0.get_or_insert(now);
        }
        self.documents
            .retain(|(replaced, _)| replaced.is_some_and(|at| now.duration_since(at) < GRACE));
        self.documents.push((None, named));
    }

    /// What was written is no longer known (a write that failed may have landed): nothing is
    /// removed for `GRACE` from `now`.
    pub fn restart(&mut self, now: Instant) {
        self.since = now;
    }

    /// The parts `store` must keep at `now`, or None when it must remove none.
    pub fn keep(&self, now: Instant) -> Option<BTreeSet<String>> {
        if now.duration_since(self.since) < GRACE {
            return None;
        }
        Some(
            self.documents
                .iter()
                .filter(|(replaced, _)| replaced.is_none_or(|at| now.duration_since(at) < GRACE))
                .flat_map(|(_, named)| named.iter().cloned())
                .collect(),
        )
    }
}

/// Which parts of a mirror to read.
#[derive(Clone, Copy)]
pub enum Parts<'a> {
    /// Every part (a restore, a listing).
    All,
    /// The parts `wanted` accepts (`wal-fetch`: the one its file is in).
    Only(&'a dyn Fn(&str, SegmentSize) -> bool),
}

/// Reads cluster `sysid`'s main document (format 1 or 2), and for format 2 the parts `which`
/// names, into one `Mirror` whose `wal_files` hold the files of the parts read, sorted by
/// name.
pub fn load(
    storage: &dyn Storage,
    sysid: i64,
    limit: u64,
    which: Parts<'_>,
) -> Result<Mirror, OffsiteRestoreError> {
    let bad = |why: String| OffsiteRestoreError::BadMirror { sysid, why };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let m = read_main(storage, sysid, limit)?;
        if m.format == FORMAT {
            return Ok(m);
        }
        if m.format != FORMAT_2 {
            return Err(bad(format!(
                "format {:?}, expected {FORMAT_2:?} or {FORMAT:?} (written by a newer version? \
                 use its restore program)",
                m.format
            )));
        }
        match read_parts(storage, sysid, m, which, limit) {
            Ok(m) => return Ok(m),
            // A part gone after the document was read: the writer replaced the document since
            // (and `GRACE` passed).  Read again; a part missing from the newest document is
            // damage.
            Err(PartFailure::Unreadable(_)) if attempt < ATTEMPTS => {
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
            Err(PartFailure::Unreadable(why) | PartFailure::Bad(why)) => return Err(bad(why)),
        }
    }
}

fn read_main(storage: &dyn Storage, sysid: i64, limit: u64) -> Result<Mirror, OffsiteRestoreError> {
    let bad = |why: String| OffsiteRestoreError::BadMirror { sysid, why };
    let mut text = Vec::new();
    storage
        .get(&mirror_key(sysid))?
        .take(limit)
        .read_to_end(&mut text)
        .map_err(|e| bad(e.to_string()))?;
    let m: Mirror = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    if m.system_identifier != sysid {
        return Err(bad(format!(
            "it names cluster {}, but lies under {sysid}",
            m.system_identifier
        )));
    }
    Ok(m)
}

enum PartFailure {
    /// Not there, or not readable: perhaps removed after the document was read.
    Unreadable(String),
    /// There, and not what the document names.
    Bad(String),
}

fn read_parts(
    storage: &dyn Storage,
    sysid: i64,
    mut m: Mirror,
    which: Parts<'_>,
    limit: u64,
) -> Result<Mirror, PartFailure> {
    let own = format!("{sysid}/.catalog/");
    if m.wal_parts.len() > MAX_PARTS {
        return Err(PartFailure::Bad(format!(
            "it names {} parts, more than {MAX_PARTS}",
            m.wal_parts.len()
        )));
    }
    let mut seen = BTreeSet::new();
    for r in &m.wal_parts {
        if !seen.insert(r.part.as_str()) {
            return Err(PartFailure::Bad(format!(
                "part {:?} is named twice",
                r.part
            )));
        }
        if !r.key.starts_with(&own) || !is_sha256_hex(&r.sha256) {
            return Err(PartFailure::Bad(format!(
                "part {:?}: key {:?} or sha256 {:?} is not one this cluster's mirror names",
                r.part, r.key, r.sha256
            )));
        }
    }
    let wanted: Vec<&WalPartRef> = m
        .wal_parts
        .iter()
        .filter(|r| match which {
            Parts::All => true,
            Parts::Only(f) => f(&r.part, m.segment_size()),
        })
        .collect();
    let read = std::sync::Mutex::new(Vec::with_capacity(wanted.len()));
    let cancel = std::sync::atomic::AtomicBool::new(false);
    // The parts together are held to the document's own limit.
    let total = std::sync::atomic::AtomicU64::new(0);
    let failed = threads::in_parallel(&wanted, PART_THREADS, 0, &cancel, |r, _| {
        let (files, bytes) = read_part(storage, sysid, r)?;
        let sum = total.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed) + bytes;
        if sum > limit {
            return Err(PartFailure::Bad(format!(
                "its parts hold more than {limit} bytes"
            )));
        }
        read.lock().unwrap_or_else(|e| e.into_inner()).extend(files);
        Ok(())
    });
    if let Some(f) = failed {
        return Err(f);
    }
    let mut files = read.into_inner().unwrap_or_else(|e| e.into_inner());
    files.sort_by(|a, b| a.name.cmp(&b.name));
    m.wal_files = files;
    Ok(m)
}

fn read_part(
    storage: &dyn Storage,
    sysid: i64,
    r: &WalPartRef,
) -> Result<(Vec<MirrorWal>, u64), PartFailure> {
    let mut text = Vec::new();
    storage
        .get(&r.key)
        .and_then(|s| {
            s.take(PART_LIMIT)
                .read_to_end(&mut text)
                .map_err(|e| StorageError::Http(e.to_string()))
        })
        .map_err(|e| PartFailure::Unreadable(format!("part {}: {e}", r.key)))?;
    let bad = |why: String| PartFailure::Bad(format!("part {}: {why}", r.key));
    let found = hex(&Sha256::digest(&text));
    if found != r.sha256 {
        return Err(bad(format!(
            "sha256 {found}, the mirror names {}",
            r.sha256
        )));
    }
    let p: WalPart = serde_json::from_slice(&text).map_err(|e| bad(e.to_string()))?;
    if p.format != PART_FORMAT || p.system_identifier != sysid || p.part != r.part {
        return Err(bad(format!(
            "it is {:?} part {:?} of cluster {}, the mirror names {PART_FORMAT:?} part {:?} of {sysid}",
            p.format, p.part, p.system_identifier, r.part
        )));
    }
    if p.wal_files.len() as u64 != r.files {
        return Err(bad(format!(
            "it lists {} files, the mirror says {}",
            p.wal_files.len(),
            r.files
        )));
    }
    if let Some(w) = p
        .wal_files
        .iter()
        .find(|w| part_of(&w.name).as_deref() != Some(r.part.as_str()))
    {
        return Err(bad(format!(
            "it lists {:?}, which is not of this part",
            w.name
        )));
    }
    Ok((p.wal_files, text.len() as u64))
}

/// For `wal-fetch` and its read-ahead: whether part `part` of a cluster with segments of
/// `size` may hold `name` or one of the `ahead` segments after it, on its timeline or a newer
/// one.  A history file's name wants the history part only.
pub fn around(name: &str, ahead: u64) -> impl Fn(&str, SegmentSize) -> bool {
    let name = name.to_owned();
    let own = part_of(&name);
    move |part: &str, size: SegmentSize| {
        if own.as_deref() == Some(part) {
            return true;
        }
        let (Some(s), Some(tli), Some(log)) = (
            name.get(..24).and_then(|n| Segment::parse(n, size)),
            part.get(..8).and_then(|t| u32::from_str_radix(t, 16).ok()),
            part.get(8..16),
        ) else {
            return false;
        };
        part.len() == 16
            && tli >= s.timeline
            && (s.number..=s.number.saturating_add(ahead)).any(|number| {
                Segment {
                    timeline: s.timeline,
                    number,
                }
                .file_name(size)
                .get(8..16)
                    == Some(log)
            })
    }
}

#[cfg(test)]
#[path = "mirror_parts_tests.rs"]
mod tests;
