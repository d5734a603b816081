//! The native physical backup method, in plain Rust: the copy engine, the two manifests, the
//! verification of a stored backup and the materialisation of a chain into a data directory.
//! The worker's side (pg_backup_start/stop through SPI, choosing the parent, recording) is in
//! `native_session.rs`.
//!
//! A backup is a directory `<stem>.native/`:
//! - `data/…`: the files this backup stored (zstd-compressed ones end in `.zst`), its
//!   `backup_label`, and the WAL from its start to its stop position under `data/pg_wal/`, so
//!   that it restores without the WAL archive;
//! - `backup_mgmt.files`: one line per directory (`d<TAB>path`) and per file
//!   (`f<TAB>path<TAB>size<TAB>mtime<TAB>sha256<TAB>holder<TAB>stored`) of the *complete* data
//!   directory.  `holder` is the id of the backup whose directory stores the bytes, `stored` the
//!   path there: an incremental or differential backup refers to unchanged files by their
//!   holder, so every member of a chain names, directly, every backup it needs.  Its sha256 is
//!   the catalog's checksum of the backup;
//! - `backup_manifest` (`backup_manifest.zst` when the backup is compressed): PostgreSQL's own
//!   manifest format (version 1, sha256 per file, WAL range, manifest checksum), so that
//!   `pg_verifybackup` checks a materialised data directory exactly as it checks a pg_basebackup
//!   one;
//! - `tablespace_map`, when the cluster has tablespaces (for reference: a materialised data
//!   directory gets each tablespace in a directory of the restorer's choosing, linked from
//!   `pg_tblspc/<oid>`, never at its original location).
//!
//! A file is stored again unless the parent has it with the same size and modification time and
//! that time is before the parent began (`datadir::plan_incremental`), as pgBackRest does by
//! default.  Page checksums are checked while copying when the cluster has data checksums: a
//! page whose LSN is at or after the backup's start is being rewritten and WAL replay replaces
//! it (full-page writes are forced during a backup), so only an older page that fails twice is
//! reported, with its block number.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::archive::read_full;
use crate::datadir::{self, Change, Entry, ParentFile};
use crate::executor::hex;
use crate::pagecheck::{self, PageState, BLCKSZ};
use crate::verify::{self, Reason, Report};

/// The chain manifest (see the module comment).
pub const FILES_MANIFEST: &str = "backup_mgmt.files";
/// PostgreSQL's backup manifest.
pub const PG_MANIFEST: &str = "backup_manifest";
/// Where the data files live inside a backup directory.
pub const DATA: &str = "data";
/// Read size of the copy: a multiple of the page size.
const COPY_CHUNK: usize = 1 << 20;

/// One file of a backup's complete data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub path: String,
    pub size: u64,
    pub mtime: i64,
    pub sha256: String,
    /// The backup whose directory stores the bytes.
    pub holder: i64,
    /// Path of the stored copy inside the holder's directory (`data/…`, `.zst` when compressed).
    pub stored: String,
}

/// A backup's chain manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub backup_id: i64,
    pub parent: Option<i64>,
    pub dirs: Vec<String>,
    pub files: Vec<FileRecord>,
}

/// A relative path that stays inside the directory it is joined to: no root, no `..`, no `.`,
/// and nothing that would break the manifest's lines.
fn plain_relative(p: &str) -> bool {
    !p.is_empty()
        && !p.contains(['\t', '\n', '\r'])
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

impl Manifest {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "# backup_mgmt native physical backup {}; parent {}\n",
            self.backup_id,
            self.parent.map_or("none".to_owned(), |p| p.to_string())
        );
        for d in &self.dirs {
            let _ = writeln!(s, "d\t{d}");
        }
        for f in &self.files {
            let _ = writeln!(
                s,
                "f\t{}\t{}\t{}\t{}\t{}\t{}",
                f.path, f.size, f.mtime, f.sha256, f.holder, f.stored
            );
        }
        s
    }

    /// Reads a chain manifest; refuses any line whose paths could leave their directory.
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let mut m = Manifest::default();
        let mut lines = text.lines();
        let head = lines.next().unwrap_or_default();
        let rest = head
            .strip_prefix("# backup_mgmt native physical backup ")
            .ok_or("not a backup_mgmt chain manifest (first line)")?;
        let (id, parent) = rest
            .split_once("; parent ")
            .ok_or("malformed first line of the chain manifest")?;
        m.backup_id = id.parse().map_err(|_| format!("bad backup id \"{id}\""))?;
        m.parent = match parent {
            "none" => None,
            p => Some(p.parse().map_err(|_| format!("bad parent id \"{p}\""))?),
        };
        for line in lines {
            let bad = || format!("malformed manifest line \"{line}\"");
            let fields: Vec<&str> = line.split('\t').collect();
            match fields.as_slice() {
                ["d", path] if plain_relative(path) => m.dirs.push((*path).to_owned()),
                ["f", path, size, mtime, sum, holder, stored]
                    if plain_relative(path)
                        && plain_relative(stored)
                        && sum.len() == 64
                        && sum.bytes().all(|b| b.is_ascii_hexdigit()) =>
                {
                    m.files.push(FileRecord {
                        path: (*path).to_owned(),
                        size: size.parse().map_err(|_| bad())?,
                        mtime: mtime.parse().map_err(|_| bad())?,
                        sha256: (*sum).to_owned(),
                        holder: holder.parse().map_err(|_| bad())?,
                        stored: (*stored).to_owned(),
                    })
                }
                _ => return Err(bad()),
            }
        }
        Ok(m)
    }

    /// Every backup whose directory this backup needs (itself included).
    pub fn holders(&self) -> BTreeSet<i64> {
        self.files.iter().map(|f| f.holder).collect()
    }

    /// Total size of the data directory it describes.
    pub fn logical_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// A page whose checksum failed twice and was not being rewritten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadPage {
    pub path: String,
    pub block: u32,
    pub stored: u16,
    pub computed: u16,
}

/// What the copy of the data files is asked to do.
#[derive(Debug, Clone)]
pub struct CopySpec {
    pub data_dir: PathBuf,
    /// The backup's (partial) directory; created here.
    pub out: PathBuf,
    pub backup_id: i64,
    /// The parent's chain manifest and when the parent began (epoch seconds).
    pub parent: Option<(Manifest, i64)>,
    /// zstd level, or None to store files as they are.
    pub level: Option<i32>,
    pub threads: usize,
    pub check_pages: bool,
    pub start_lsn: u64,
}

/// What the copy did.
#[derive(Debug, Default)]
pub struct Copied {
    pub manifest: Manifest,
    pub bytes_read: u64,
    pub bytes_stored: u64,
    pub copied: usize,
    pub referenced: usize,
    /// Files that disappeared between the listing and their copy (dropped relations).
    pub vanished: usize,
    pub bad_pages: Vec<BadPage>,
}

/// Shared counters of a running copy.
pub struct Counters<'a> {
    pub bytes: &'a AtomicU64,
    pub cancel: &'a AtomicBool,
}

fn mkdir(p: &Path) -> Result<(), String> {
    match fs::DirBuilder::new().mode(0o700).create(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && p.is_dir() => Ok(()),
        Err(e) => Err(format!(
            "could not create directory \"{}\": {e}",
            p.display()
        )),
    }
}

fn utf8(p: &Path) -> Result<String, String> {
    let s = p
        .to_str()
        .ok_or_else(|| format!("\"{}\" is not valid UTF-8", p.display()))?;
    if plain_relative(s) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "the file name \"{}\" cannot be recorded (tab or newline)",
            p.display()
        ))
    }
}

/// The first block number of a relation fork file (`16384.3` → 3 × 131072), if `rel` is one
/// whose pages carry checksums.
fn first_block(rel: &Path) -> Option<u32> {
    let name = rel.file_name()?.to_str()?;
    datadir::relfilenode(name)?;
    if !datadir::is_relation_dir(rel.parent()?) {
        return None;
    }
    let segment = match name.split_once('.') {
        Some((_, n)) => n.parse::<u32>().ok()?,
        None => 0,
    };
    segment.checked_mul(pagecheck::BLOCKS_PER_SEGMENT)
}

fn page_lsn(page: &[u8]) -> u64 {
    let hi = u32::from_le_bytes([page[0], page[1], page[2], page[3]]) as u64;
    let lo = u32::from_le_bytes([page[4], page[5], page[6], page[7]]) as u64;
    (hi << 32) | lo
}

/// Checks the whole pages of `chunk` (starting at byte `offset` of the file); a failing page
/// older than the backup is read again from the file before it is reported.
fn check_pages(
    file: &File,
    rel: &str,
    first: u32,
    offset: u64,
    chunk: &[u8],
    start_lsn: u64,
    bad: &mut Vec<BadPage>,
) {
    for (i, page) in chunk.chunks_exact(BLCKSZ).enumerate() {
        let page: &[u8; BLCKSZ] = page.try_into().expect("chunks_exact gives whole pages");
        let block = first + ((offset / BLCKSZ as u64) as u32) + i as u32;
        let PageState::Bad { .. } = pagecheck::check_page(page, block) else {
            continue;
        };
        if page_lsn(page) >= start_lsn {
            continue;
        }
        // A read racing a write can see half of each; read it once more on its own.
        let mut again = [0u8; BLCKSZ];
        let at = offset + (i * BLCKSZ) as u64;
        if file.read_exact_at(&mut again, at).is_err() {
            continue; // truncated meanwhile: the relation shrank, replay takes care of it
        }
        match pagecheck::check_page(&again, block) {
            PageState::Bad { stored, computed } if page_lsn(&again) < start_lsn => {
                bad.push(BadPage {
                    path: rel.to_owned(),
                    block,
                    stored,
                    computed,
                })
            }
            _ => {}
        }
    }
}

/// Copies one file into `out`, hashing (and checking pages) in the same pass.  None when the
/// file vanished before it could be opened.
fn copy_file(
    spec: &CopySpec,
    entry: &Entry,
    buf: &mut [u8],
    counters: &Counters<'_>,
    bad: &mut Vec<BadPage>,
) -> Result<Option<(FileRecord, u64)>, String> {
    let rel = utf8(&entry.path)?;
    let src_path = spec.data_dir.join(&entry.path);
    let mut src = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&src_path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("could not open \"{}\": {e}", src_path.display())),
    };
    let meta = src.metadata().map_err(|e| format!("stat {rel}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("\"{rel}\" is no longer a regular file"));
    }
    let stored = match spec.level {
        Some(_) => format!("{DATA}/{rel}.zst"),
        None => format!("{DATA}/{rel}"),
    };
    let dst_path = spec.out.join(&stored);
    let dst = create_private(&dst_path)?;
    let pages_from = if spec.check_pages {
        first_block(&entry.path)
    } else {
        None
    };
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    let write_err = |e: io::Error| format!("writing \"{}\": {e}", dst_path.display());
    let mut encoder = match spec.level {
        Some(level) => Some(
            zstd::stream::write::Encoder::new(io::BufWriter::with_capacity(1 << 20, &dst), level)
                .map_err(write_err)?,
        ),
        None => None,
    };
    loop {
        if counters.cancel.load(Ordering::Relaxed) {
            return Err("cancelled".into());
        }
        let n = read_full(&mut src, buf).map_err(|e| format!("reading \"{rel}\": {e}"))?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        hasher.update(chunk);
        if let Some(first) = pages_from {
            check_pages(&src, &rel, first, total, chunk, spec.start_lsn, bad);
        }
        match encoder.as_mut() {
            Some(e) => e.write_all(chunk),
            None => (&dst).write_all(chunk),
        }
        .map_err(write_err)?;
        total += n as u64;
        counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
        if n < buf.len() {
            break;
        }
    }
    if let Some(e) = encoder {
        e.finish().and_then(|mut w| w.flush()).map_err(write_err)?;
    }
    dst.sync_all()
        .map_err(|e| format!("fsync \"{}\": {e}", dst_path.display()))?;
    let stored_size = dst.metadata().map(|m| m.len()).unwrap_or(0);
    Ok(Some((
        FileRecord {
            path: rel,
            size: total,
            mtime: entry.mtime,
            sha256: hex(&hasher.finalize()),
            holder: spec.backup_id,
            stored,
        },
        stored_size,
    )))
}

/// Copies the data directory's changed files into `spec.out/data` on `spec.threads` threads
/// and returns the chain manifest of everything (copied and referenced).
pub fn copy_data(spec: &CopySpec, counters: &Counters<'_>) -> Result<Copied, String> {
    let data_out = spec.out.join(DATA);
    if let Some(parent) = spec.out.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|e| format!("could not create directory \"{}\": {e}", parent.display()))?;
    }
    mkdir(&spec.out)?;
    mkdir(&data_out)?;
    let entries = datadir::walk(&spec.data_dir)
        .map_err(|e| format!("listing \"{}\": {e}", spec.data_dir.display()))?;
    let mut out = Copied {
        manifest: Manifest {
            backup_id: spec.backup_id,
            parent: None,
            ..Manifest::default()
        },
        ..Copied::default()
    };
    for d in entries.iter().filter(|e| e.is_dir) {
        let rel = utf8(&d.path)?;
        mkdir(&data_out.join(&rel))?;
        out.manifest.dirs.push(rel);
    }
    let files: Vec<&Entry> = entries.iter().filter(|e| !e.is_dir).collect();
    let mut to_copy: Vec<&Entry> = Vec::new();
    match &spec.parent {
        None => to_copy = files,
        Some((parent, parent_started)) => {
            out.manifest.parent = Some(parent.backup_id);
            let by_path: HashMap<&str, &FileRecord> =
                parent.files.iter().map(|f| (f.path.as_str(), f)).collect();
            let known: HashMap<PathBuf, ParentFile> = parent
                .files
                .iter()
                .map(|f| {
                    (
                        PathBuf::from(&f.path),
                        ParentFile {
                            size: f.size,
                            mtime: f.mtime,
                        },
                    )
                })
                .collect();
            // The plan lists the files of `entries` (directories left out) in order: `files`.
            let plan = datadir::plan_incremental(&entries, &known, *parent_started);
            for (entry, (_, change)) in files.iter().zip(plan) {
                let rel = entry.path.to_str().unwrap_or_default();
                match (change, by_path.get(rel)) {
                    (Change::Reference, Some(f)) => {
                        out.manifest.files.push((*f).clone());
                        out.referenced += 1;
                    }
                    _ => to_copy.push(entry),
                }
            }
        }
    }
    // Largest first, so that one big relation does not start last.
    to_copy.sort_by_key(|e| std::cmp::Reverse(e.size));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(FileRecord, u64)>> = Mutex::new(Vec::new());
    let failure: Mutex<Option<String>> = Mutex::new(None);
    let bad_pages: Mutex<Vec<BadPage>> = Mutex::new(Vec::new());
    let vanished = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        for _ in 0..spec.threads.max(1) {
            s.spawn(|| {
                crate::executor::block_all_signals();
                let mut buf = vec![0u8; COPY_CHUNK];
                let mut bad = Vec::new();
                let mut mine = Vec::new();
                loop {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Some(entry) = to_copy.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    match copy_file(spec, entry, &mut buf, counters, &mut bad) {
                        Ok(Some(r)) => mine.push(r),
                        Ok(None) => {
                            vanished.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            stop.store(true, Ordering::Relaxed);
                            let mut f = failure.lock().unwrap_or_else(|p| p.into_inner());
                            f.get_or_insert(e);
                            break;
                        }
                    }
                }
                results
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(mine);
                bad_pages
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(bad);
            });
        }
    });
    if let Some(e) = failure.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    for (record, stored) in results.into_inner().unwrap_or_else(|p| p.into_inner()) {
        out.bytes_read += record.size;
        out.bytes_stored += stored;
        out.copied += 1;
        out.manifest.files.push(record);
    }
    out.manifest.files.sort_by(|a, b| a.path.cmp(&b.path));
    out.vanished = vanished.into_inner();
    out.bad_pages = bad_pages.into_inner().unwrap_or_else(|p| p.into_inner());
    out.bad_pages
        .sort_by(|a, b| (&a.path, a.block).cmp(&(&b.path, b.block)));
    Ok(out)
}

/// A new file only the server's user can read; never an existing one.
fn create_private(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("could not create \"{}\": {e}", path.display()))
}

/// Writes `bytes` as a new file at `path` (fsynced), returning its sha256.
fn write_new(path: &Path, bytes: &[u8]) -> Result<String, String> {
    let mut f = create_private(path)?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("writing \"{}\": {e}", path.display()))?;
    Ok(hex(&Sha256::digest(bytes)))
}

/// A WAL file the backup needs, and where it is now.
pub struct WalFile {
    pub name: String,
    pub source: PathBuf,
}

/// What `finish` hands back for the catalog.
#[derive(Debug)]
pub struct Finished {
    /// sha256 of the chain manifest: the backup's checksum in the catalog.
    pub manifest_sha256: String,
    /// Bytes stored in this backup's directory.
    pub stored_bytes: u64,
    pub manifest: Manifest,
}

/// `LSN` as PostgreSQL prints it.
fn lsn(l: u64) -> String {
    crate::executor::format_lsn(l)
}

/// PostgreSQL's backup manifest for the complete data directory (pg_wal excluded, as in
/// pg_basebackup's): what `pg_verifybackup` reads.  The manifest checksum covers every byte up
/// to and including the newline before its own line.
pub fn pg_manifest(m: &Manifest, timeline: u32, start_lsn: u64, stop_lsn: u64) -> String {
    let mut s = String::from("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [");
    let mut first = true;
    for f in m.files.iter().filter(|f| !f.path.starts_with("pg_wal/")) {
        s.push_str(if first { "\n" } else { ",\n" });
        first = false;
        let modified = chrono::DateTime::from_timestamp(f.mtime, 0)
            .unwrap_or_default()
            .format("%Y-%m-%d %H:%M:%S GMT");
        let _ = write!(
            s,
            "{{ \"Path\": {}, \"Size\": {}, \"Last-Modified\": \"{modified}\", \"Checksum-Algorithm\": \"SHA256\", \"Checksum\": \"{}\" }}",
            serde_json::Value::from(f.path.as_str()),
            f.size,
            f.sha256
        );
    }
    let _ = write!(
        s,
        "\n],\n\"WAL-Ranges\": [\n{{ \"Timeline\": {timeline}, \"Start-LSN\": \"{}\", \"End-LSN\": \"{}\" }}\n],\n",
        lsn(start_lsn),
        lsn(stop_lsn)
    );
    let sum = hex(&Sha256::digest(s.as_bytes()));
    let _ = writeln!(s, "\"Manifest-Checksum\": \"{sum}\"}}");
    s
}

/// Completes a copied backup after pg_backup_stop: its backup_label, its WAL, the two manifests
/// and tablespace_map; fsyncs every directory.  The caller renames the directory into place.
#[allow(clippy::too_many_arguments)]
pub fn finish(
    out: &Path,
    mut copied: Copied,
    label: &str,
    tablespace_map: &str,
    wal: &[WalFile],
    level: Option<i32>,
    timeline: u32,
    start_lsn: u64,
    stop_lsn: u64,
) -> Result<Finished, String> {
    let data = out.join(DATA);
    let id = copied.manifest.backup_id;
    let mut stored_bytes = copied.bytes_stored;
    let label_sum = write_new(&data.join("backup_label"), label.as_bytes())?;
    stored_bytes += label.len() as u64;
    let now = chrono::Utc::now().timestamp();
    copied.manifest.files.push(FileRecord {
        path: "backup_label".into(),
        size: label.len() as u64,
        mtime: now,
        sha256: label_sum,
        holder: id,
        stored: format!("{DATA}/backup_label"),
    });
    if !tablespace_map.is_empty() {
        write_new(&out.join("tablespace_map"), tablespace_map.as_bytes())?;
    }
    mkdir(&data.join("pg_wal"))?;
    let mut buf = vec![0u8; COPY_CHUNK];
    for w in wal {
        let mut src = verify::open_regular(&w.source)
            .map_err(|(_, e)| format!("WAL file {}: {e}", w.name))?;
        let stored = match level {
            Some(_) => format!("{DATA}/pg_wal/{}.zst", w.name),
            None => format!("{DATA}/pg_wal/{}", w.name),
        };
        let dst = create_private(&out.join(&stored))?;
        let err = |e: io::Error| format!("copying WAL file {}: {e}", w.name);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut encoder = match level {
            Some(l) => Some(zstd::stream::write::Encoder::new(&dst, l).map_err(err)?),
            None => None,
        };
        loop {
            let n = read_full(&mut src, &mut buf).map_err(err)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            match encoder.as_mut() {
                Some(e) => e.write_all(&buf[..n]),
                None => (&dst).write_all(&buf[..n]),
            }
            .map_err(err)?;
            size += n as u64;
        }
        if let Some(e) = encoder {
            e.finish().map_err(err)?;
        }
        dst.sync_all().map_err(err)?;
        stored_bytes += dst.metadata().map(|m| m.len()).unwrap_or(0);
        copied.manifest.files.push(FileRecord {
            path: format!("pg_wal/{}", w.name),
            size,
            mtime: now,
            sha256: hex(&hasher.finalize()),
            holder: id,
            stored,
        });
    }
    copied.manifest.files.sort_by(|a, b| a.path.cmp(&b.path));
    let pg = pg_manifest(&copied.manifest, timeline, start_lsn, stop_lsn);
    // Stored compressed like the files it lists (it is a few hundred kB of JSON).
    let stored_pg = match level {
        Some(l) => {
            let z = zstd::encode_all(pg.as_bytes(), l)
                .map_err(|e| format!("compressing {PG_MANIFEST}: {e}"))?;
            write_new(&out.join(format!("{PG_MANIFEST}.zst")), &z)?;
            z.len()
        }
        None => {
            write_new(&out.join(PG_MANIFEST), pg.as_bytes())?;
            pg.len()
        }
    };
    stored_bytes += stored_pg as u64;
    let text = copied.manifest.to_text();
    let manifest_sha256 = write_new(&out.join(FILES_MANIFEST), text.as_bytes())?;
    stored_bytes += text.len() as u64;
    sync_dirs(out)?;
    Ok(Finished {
        manifest_sha256,
        stored_bytes,
        manifest: copied.manifest,
    })
}

/// fsyncs `dir` and every directory below it (new files' names are durable only then).
pub fn sync_dirs(dir: &Path) -> Result<(), String> {
    for e in fs::read_dir(dir).map_err(|e| format!("listing \"{}\": {e}", dir.display()))? {
        let e = e.map_err(|e| e.to_string())?;
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            sync_dirs(&e.path())?;
        }
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("fsync \"{}\": {e}", dir.display()))
}

/// Reads a stored file (decompressing `.zst`) into `sink`; returns its size and sha256.
fn read_stored(
    path: &Path,
    sink: &mut dyn Write,
    buf: &mut [u8],
    counters: &Counters<'_>,
) -> Result<(u64, String), (Reason, String)> {
    let file = verify::open_regular(path)?;
    let mut reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "zst") {
        Box::new(
            zstd::stream::read::Decoder::new(file)
                .map_err(|e| (Reason::Unreadable, format!("zstd: {e}")))?,
        )
    } else {
        Box::new(file)
    };
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    loop {
        if counters.cancel.load(Ordering::Relaxed) {
            return Err((Reason::Cancelled, "cancelled".into()));
        }
        let n = match reader.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err((Reason::Unreadable, format!("read failed: {e}"))),
        };
        hasher.update(&buf[..n]);
        sink.write_all(&buf[..n])
            .map_err(|e| (Reason::Unreadable, format!("write failed: {e}")))?;
        total += n as u64;
        counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok((total, hex(&hasher.finalize())))
}

/// The report of a run stopped by `cancel` before every file was done.
fn cancelled(counters: &Counters<'_>, at: &Path) -> Option<Report> {
    counters
        .cancel
        .load(Ordering::Relaxed)
        .then(|| Report::failed(Reason::Cancelled, "cancelled".into(), at))
}

fn judge(path: &Path, f: &FileRecord, size: u64, sum: &str) -> Result<(), Report> {
    if size == f.size && sum == f.sha256 {
        return Ok(());
    }
    let mut r = Report::failed(
        if size != f.size {
            Reason::SizeMismatch
        } else {
            Reason::ChecksumMismatch
        },
        format!(
            "\"{}\" holds {size} bytes with sha256 {sum}; the manifest says {} bytes, {}",
            f.path, f.size, f.sha256
        ),
        path,
    );
    r.expected_sha256 = Some(f.sha256.clone());
    r.actual_sha256 = Some(sum.to_owned());
    r.expected_bytes = Some(f.size);
    r.bytes = size;
    Err(r)
}

/// Reads and checks a backup's chain manifest against the catalog's sha256.
pub fn load_manifest(dir: &Path, expected_sha256: Option<&str>) -> Result<Manifest, Report> {
    let path = dir.join(FILES_MANIFEST);
    let file = verify::open_regular(&path).map_err(|(r, d)| Report::failed(r, d, &path))?;
    let mut text = Vec::new();
    let mut hasher = Sha256::new();
    io::BufReader::new(file)
        .read_to_end(&mut text)
        .map_err(|e| Report::failed(Reason::Unreadable, e.to_string(), &path))?;
    hasher.update(&text);
    let actual = hex(&hasher.finalize());
    if let Some(expected) = expected_sha256 {
        if actual != expected {
            let mut r = Report::failed(
                Reason::ManifestMismatch,
                format!("the chain manifest's sha256 is {actual}, the catalog says {expected}"),
                &path,
            );
            r.expected_sha256 = Some(expected.to_owned());
            r.actual_sha256 = Some(actual);
            return Err(r);
        }
    }
    let text = String::from_utf8(text)
        .map_err(|_| Report::failed(Reason::ManifestMismatch, "not UTF-8".into(), &path))?;
    Manifest::parse(&text).map_err(|d| Report::failed(Reason::ManifestMismatch, d, &path))
}

/// Verifies a native backup: the chain manifest against the catalog's sha256, then every file
/// this backup stores (decompressed and hashed); the files it refers to must exist in their
/// holders' directories (`holders`; the holders' own verification hashes them).
pub fn verify_backup(
    dir: &Path,
    expected_sha256: Option<&str>,
    holders: &HashMap<i64, PathBuf>,
    threads: usize,
    counters: &Counters<'_>,
) -> Report {
    let manifest = match load_manifest(dir, expected_sha256) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let own: Vec<FileRecord> = manifest
        .files
        .iter()
        .filter(|f| f.holder == manifest.backup_id)
        .cloned()
        .collect();
    for f in manifest
        .files
        .iter()
        .filter(|f| f.holder != manifest.backup_id)
    {
        let found = holders
            .get(&f.holder)
            .is_some_and(|h| h.join(&f.stored).is_file());
        if !found {
            return Report::failed(
                Reason::Missing,
                format!(
                    "\"{}\" is stored by backup {}, which is missing or lacks it",
                    f.path, f.holder
                ),
                &dir.join(FILES_MANIFEST),
            );
        }
    }
    let bytes = AtomicU64::new(0);
    let failure = verify::in_parallel(&own, threads, counters.cancel, |f, buf| {
        let path = dir.join(&f.stored);
        let (size, sum) = read_stored(&path, &mut io::sink(), buf, counters)
            .map_err(|(r, d)| Report::failed(r, d, &path))?;
        bytes.fetch_add(size, Ordering::Relaxed);
        judge(&path, f, size, &sum)
    });
    match failure.or_else(|| cancelled(counters, dir)) {
        Some(r) => r,
        None => Report {
            passed: true,
            reason: None,
            detail: None,
            expected_sha256: expected_sha256.map(str::to_owned),
            actual_sha256: expected_sha256.map(str::to_owned),
            expected_bytes: None,
            bytes: bytes.into_inner(),
            files: own.len(),
            failing_file: None,
        },
    }
}

/// A tablespace's directory in a backup (`pg_tblspc/<oid>`): its oid.
pub fn tablespace_oid(dir: &str) -> Option<&str> {
    let oid = dir.strip_prefix("pg_tblspc/")?;
    (!oid.is_empty() && oid.bytes().all(|b| b.is_ascii_digit())).then_some(oid)
}

/// Builds the complete data directory of a backup in `dest` (created, mode 0700) from its
/// chain: every file from its holder, decompressed and checked against the manifest's sha256,
/// plus PostgreSQL's manifest as `backup_manifest` for pg_verifybackup.  Each tablespace goes
/// to `tablespaces/<oid>` (created), linked from `pg_tblspc/<oid>` as PostgreSQL requires.
pub fn materialize(
    dir: &Path,
    manifest: &Manifest,
    holders: &HashMap<i64, PathBuf>,
    dest: &Path,
    tablespaces: &Path,
    threads: usize,
    counters: &Counters<'_>,
) -> Result<(), Report> {
    let fail = |d: String| Report::failed(Reason::Unreadable, d, dest);
    mkdir(dest).map_err(fail)?;
    for d in &manifest.dirs {
        match tablespace_oid(d) {
            Some(oid) => {
                mkdir(tablespaces).map_err(fail)?;
                let place = tablespaces.join(oid);
                mkdir(&place).map_err(fail)?;
                std::os::unix::fs::symlink(&place, dest.join(d))
                    .map_err(|e| fail(format!("linking tablespace {oid}: {e}")))?;
            }
            None => mkdir(&dest.join(d)).map_err(fail)?,
        }
    }
    let failure = verify::in_parallel(&manifest.files, threads, counters.cancel, |f, buf| {
        let holder = holders.get(&f.holder).ok_or_else(|| {
            Report::failed(
                Reason::Missing,
                format!(
                    "backup {} (holding \"{}\") is not available",
                    f.holder, f.path
                ),
                dir,
            )
        })?;
        let src = holder.join(&f.stored);
        let out_path = dest.join(&f.path);
        let mut out = create_private(&out_path)
            .map_err(|e| Report::failed(Reason::Unreadable, e, &out_path))?;
        let (size, sum) = read_stored(&src, &mut out, buf, counters)
            .map_err(|(r, d)| Report::failed(r, d, &src))?;
        judge(&src, f, size, &sum)
    });
    if let Some(r) = failure.or_else(|| cancelled(counters, dest)) {
        return Err(r);
    }
    let compressed = dir.join(format!("{PG_MANIFEST}.zst"));
    let mut out = create_private(&dest.join(PG_MANIFEST)).map_err(fail)?;
    let source = if compressed.exists() {
        compressed
    } else {
        dir.join(PG_MANIFEST)
    };
    let mut buf = vec![0u8; verify::CHUNK];
    read_stored(&source, &mut out, &mut buf, counters)
        .map_err(|(_, e)| fail(format!("copying {PG_MANIFEST}: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn manifest_round_trips_and_refuses_escapes() {
        let m = Manifest {
            backup_id: 7,
            parent: Some(3),
            dirs: vec!["base".into(), "base/5".into()],
            files: vec![FileRecord {
                path: "base/5/16384".into(),
                size: 8192,
                mtime: 1_700_000_000,
                sha256: "a".repeat(64),
                holder: 3,
                stored: "data/base/5/16384.zst".into(),
            }],
        };
        assert_eq!(Manifest::parse(&m.to_text()).unwrap(), m);
        assert_eq!(m.holders().into_iter().collect::<Vec<_>>(), vec![3]);
        for bad in [
            "f\t../x\t1\t1\taaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\t3\tdata/x",
            "f\tx\t1\t1\taaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\t3\t/etc/passwd",
            "f\tx\t1\t1\tnothex\t3\tdata/x",
            "d\t/abs",
            "d\ta/../../b",
        ] {
            let text = format!("# backup_mgmt native physical backup 1; parent none\n{bad}\n");
            assert!(Manifest::parse(&text).is_err(), "{bad}");
        }
    }

    #[test]
    fn postgres_manifest_checksum_covers_everything_before_its_line() {
        let m = Manifest {
            backup_id: 1,
            parent: None,
            dirs: vec![],
            files: vec![
                FileRecord {
                    path: "PG_VERSION".into(),
                    size: 3,
                    mtime: 0,
                    sha256: "b".repeat(64),
                    holder: 1,
                    stored: "data/PG_VERSION".into(),
                },
                FileRecord {
                    path: "pg_wal/000000010000000000000002".into(),
                    size: 16,
                    mtime: 0,
                    sha256: "c".repeat(64),
                    holder: 1,
                    stored: "data/pg_wal/000000010000000000000002".into(),
                },
            ],
        };
        let text = pg_manifest(&m, 1, 0x2000028, 0x2000100);
        assert!(!text.contains("pg_wal"), "WAL is not listed: {text}");
        let body_end = text[..text.len() - 1].rfind('\n').unwrap() + 1;
        let sum = hex(&Sha256::digest(&text.as_bytes()[..body_end]));
        assert!(text[body_end..].contains(&sum));
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["Files"][0]["Path"], "PG_VERSION");
        assert_eq!(json["WAL-Ranges"][0]["Start-LSN"], "0/2000028");
        assert_eq!(json["Files"][0]["Last-Modified"], "1970-01-01 00:00:00 GMT");
    }

    fn page(block: u32, lsn: u64, fill: u8) -> Vec<u8> {
        let mut p = vec![fill; BLCKSZ];
        p[0..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
        p[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
        p[14] = 0x40;
        p[15] = 0x1f;
        let arr: &[u8; BLCKSZ] = p.as_slice().try_into().unwrap();
        let c = pagecheck::page_checksum(arr, block);
        p[8..10].copy_from_slice(&c.to_le_bytes());
        p
    }

    fn write(root: &Path, rel: &str, bytes: &[u8]) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
    }

    fn spec(data: &Path, out: &Path, id: i64, parent: Option<(Manifest, i64)>) -> CopySpec {
        CopySpec {
            data_dir: data.to_owned(),
            out: out.to_owned(),
            backup_id: id,
            parent,
            level: Some(3),
            threads: 2,
            check_pages: true,
            start_lsn: 0x5000000,
        }
    }

    fn counters() -> (AtomicU64, AtomicBool) {
        (AtomicU64::new(0), AtomicBool::new(false))
    }

    /// Full, then incremental, then materialise: the chain refers to unchanged files, copies
    /// changed ones, reports an old bad page (and not a page being rewritten), and the
    /// materialised directory equals the source.
    #[test]
    fn chain_copies_changes_refers_to_the_rest_and_materializes() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("pgdata");
        let mut rel = Vec::new();
        for b in 0..4 {
            rel.extend(page(b, 0x1000000, b as u8 + 1));
        }
        // Block 2: an old page (LSN before the backup) with a broken checksum.
        rel[2 * BLCKSZ + 100] ^= 0xff;
        // Block 3: a page being rewritten (LSN after the start): its bad checksum is ignored.
        let mut young = page(3, 0x6000000, 9);
        young[200] ^= 1;
        rel[3 * BLCKSZ..].copy_from_slice(&young);
        write(&data, "base/5/16384", &rel);
        write(&data, "base/5/16390", &page(0, 1, 1));
        write(&data, "PG_VERSION", b"15\n");
        write(&data, "global/pg_control", &[1u8; 100]);
        write(&data, "pg_wal/000000010000000000000001", &[0u8; 10]);
        let (bytes, cancel) = counters();
        let c = Counters {
            bytes: &bytes,
            cancel: &cancel,
        };
        let out1 = tmp.path().join("b1");
        let full = copy_data(&spec(&data, &out1, 1, None), &c).unwrap();
        assert_eq!(full.copied, 4);
        assert_eq!(
            full.bad_pages,
            vec![BadPage {
                path: "base/5/16384".into(),
                block: 2,
                stored: full.bad_pages[0].stored,
                computed: full.bad_pages[0].computed
            }]
        );
        assert!(full.manifest.dirs.contains(&"pg_wal/archive_status".into()));
        let wal_src = tmp.path().join("walsrc");
        fs::write(&wal_src, vec![3u8; 4096]).unwrap();
        let f1 = finish(
            &out1,
            full,
            "START WAL LOCATION: 0/5000028\n",
            "",
            &[WalFile {
                name: "000000010000000000000005".into(),
                source: wal_src.clone(),
            }],
            Some(3),
            1,
            0x5000028,
            0x5000100,
        )
        .unwrap();
        assert!(out1.join("data/base/5/16384.zst").is_file());
        let empty = HashMap::new();
        assert!(verify_backup(&out1, Some(&f1.manifest_sha256), &empty, 2, &c).passed);

        // Change one file (size and time), add one; the rest is referred to.
        write(
            &data,
            "base/5/16390",
            &[page(0, 1, 1), page(1, 1, 2)].concat(),
        );
        write(&data, "base/5/16400", &page(0, 1, 4));
        let parent = (f1.manifest.clone(), chrono::Utc::now().timestamp() + 5);
        let out2 = tmp.path().join("b2");
        let incr = copy_data(&spec(&data, &out2, 2, Some(parent)), &c).unwrap();
        assert_eq!(
            (incr.copied, incr.referenced),
            (2, 3),
            "{:?}",
            incr.manifest
        );
        let f2 = finish(&out2, incr, "label 2\n", "", &[], None, 1, 1, 2).unwrap();
        assert_eq!(f2.manifest.parent, Some(1));
        assert_eq!(
            f2.manifest.holders().into_iter().collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(!out2.join("data/base/5/16384").exists());
        let holders: HashMap<i64, PathBuf> = [(1, out1.clone()), (2, out2.clone())].into();
        assert!(verify_backup(&out2, Some(&f2.manifest_sha256), &holders, 2, &c).passed);
        // Without its parent the incremental is not whole.
        let only2: HashMap<i64, PathBuf> = [(2, out2.clone())].into();
        assert_eq!(
            verify_backup(&out2, Some(&f2.manifest_sha256), &only2, 2, &c).reason,
            Some(Reason::Missing)
        );

        let dest = tmp.path().join("restored");
        let spaces = tmp.path().join("spaces");
        materialize(&out2, &f2.manifest, &holders, &dest, &spaces, 2, &c).unwrap();
        for f in ["base/5/16384", "base/5/16390", "base/5/16400", "PG_VERSION"] {
            assert_eq!(
                fs::read(dest.join(f)).unwrap(),
                fs::read(data.join(f)).unwrap(),
                "{f}"
            );
        }
        assert_eq!(fs::read(dest.join("backup_label")).unwrap(), b"label 2\n");
        assert!(dest.join("pg_wal/archive_status").is_dir());
        assert!(dest.join(PG_MANIFEST).is_file());

        // Damage in the parent's stored copy is found by materialising the child.
        let victim = out1.join("data/PG_VERSION.zst");
        let mut bytes_v = fs::read(&victim).unwrap();
        let last = bytes_v.len() - 6;
        bytes_v[last] ^= 0xff;
        fs::write(&victim, bytes_v).unwrap();
        let dest2 = tmp.path().join("restored2");
        assert!(materialize(&out2, &f2.manifest, &holders, &dest2, &spaces, 2, &c).is_err());
        assert!(!verify_backup(&out1, Some(&f1.manifest_sha256), &empty, 2, &c).passed);
        // A changed chain manifest is caught by its catalog checksum.
        let mpath = out2.join(FILES_MANIFEST);
        let mut text = fs::read_to_string(&mpath).unwrap();
        text.push_str("d\textra\n");
        fs::write(&mpath, text).unwrap();
        assert_eq!(
            verify_backup(&out2, Some(&f2.manifest_sha256), &holders, 2, &c).reason,
            Some(Reason::ManifestMismatch)
        );
    }

    #[test]
    fn block_numbers_follow_segment_files() {
        assert_eq!(first_block(Path::new("base/5/16384")), Some(0));
        assert_eq!(first_block(Path::new("base/5/16384.2")), Some(2 * 131_072));
        assert_eq!(first_block(Path::new("global/1262_vm")), Some(0));
        assert_eq!(first_block(Path::new("pg_xact/0000")), None);
        assert_eq!(first_block(Path::new("base/5/PG_VERSION")), None);
    }
}
