//! The native physical backup's copy engine, in plain Rust.  The worker's side
//! (pg_backup_start/stop through SPI, choosing the parent, recording) is the extension's
//! `methods::native`; verification of a stored backup is `verify::native`, turning a chain back
//! into a data directory `restore::materialize`.
//!
//! A backup is a directory `<stem>.native/`:
//! - `data/…`: the files this backup stored (zstd-compressed ones end in `.zst`), its
//!   `backup_label`, and the WAL from its start to its stop position under `data/pg_wal/`, so
//!   that it restores without the WAL archive;
//! - `backup_mgmt.files`: the chain manifest (`manifest::native`), whose sha256 is the catalog's
//!   checksum of the backup;
//! - `backup_manifest` (`.zst` when the backup is compressed): PostgreSQL's own manifest
//!   (`manifest::postgres`), for `pg_verifybackup`;
//! - `tablespace_map`, when the cluster has tablespaces (for reference: a materialised data
//!   directory gets each tablespace in a directory of the restorer's choosing).
//!
//! A file is stored again unless the parent has it with the same size and modification time and
//! that time is before the parent began (`datadir::plan_incremental`), as pgBackRest does by
//! default.  Each file is read once: sha256, page checksums and zstd are stages of one pass
//! (`stream`).  Page checksums are checked when the cluster has data checksums: a page whose LSN
//! is at or after the backup's start is being rewritten and WAL replay replaces it (full-page
//! writes are forced during a backup), so only an older page that fails twice is reported.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::checksum::hex;
use crate::files::durable;
use crate::files::error::{Context, IoError};
use crate::files::open::open_regular;
use crate::manifest::native::{plain_relative, FileRecord, Manifest, DATA, FILES_MANIFEST};
use crate::manifest::postgres::{self, PG_MANIFEST, PG_MANIFEST_ZST};
use crate::pgformat::datadir::{self, Change, Entry, ParentFile};
use crate::pgformat::pagecheck::{self, PageState, BLCKSZ};
use crate::progress::Counters;
use crate::stream::{self, Count, Hash, Observe, PumpError};
use crate::threads;
use crate::wal::Lsn;

/// Read size of the copy: a multiple of the page size.
const COPY_CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("the file name \"{0}\" cannot be recorded (not UTF-8, a tab or a newline)")]
    Name(String),
    #[error("\"{0}\" is no longer a regular file")]
    NotRegular(String),
    #[error("copying \"{path}\": {source}")]
    Copy { path: String, source: PumpError },
    #[error("WAL file {name}: {detail}")]
    Wal { name: String, detail: String },
    #[error("cancelled")]
    Cancelled,
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
    pub start_lsn: Lsn,
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

fn utf8(p: &Path) -> Result<String, NativeError> {
    match p.to_str() {
        Some(s) if plain_relative(s) => Ok(s.to_owned()),
        _ => Err(NativeError::Name(p.display().to_string())),
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

/// Copies `input` into a new file `dst_path` through the stages sha256 (of the plain bytes),
/// `observe`, optional zstd and a count of the bytes stored; returns (plain size, sha256,
/// stored size).  The file is fsynced; its directory is fsynced when the backup is complete.
fn store(
    input: &mut File,
    dst_path: &Path,
    level: Option<i32>,
    buf: &mut [u8],
    counters: &Counters<'_>,
    observe: impl FnMut(&[u8]),
) -> Result<(u64, String, u64), NativeError> {
    let dst = durable::create_new(dst_path)?;
    let copy_err = |source| NativeError::Copy {
        path: dst_path.display().to_string(),
        source,
    };
    let write_err = |source: io::Error| copy_err(PumpError::Write { after: 0, source });
    let sink = Count::new(io::BufWriter::with_capacity(1 << 20, &dst), None);
    let (size, sha256, sink) = match level {
        Some(level) => {
            let enc = stream::compress(sink, level).map_err(write_err)?;
            let mut chain = Hash::new(Count::new(Observe::new(enc, observe), Some(counters.bytes)));
            stream::pump(input, &mut chain, buf, Some(counters.cancel)).map_err(copy_err)?;
            let (counted, sha256) = chain.finish();
            let (observed, size) = counted.finish();
            let sink = observed.finish().0.finish().map_err(write_err)?;
            (size, sha256, sink)
        }
        None => {
            let mut chain = Hash::new(Count::new(
                Observe::new(sink, observe),
                Some(counters.bytes),
            ));
            stream::pump(input, &mut chain, buf, Some(counters.cancel)).map_err(copy_err)?;
            let (counted, sha256) = chain.finish();
            let (observed, size) = counted.finish();
            (size, sha256, observed.finish().0)
        }
    };
    let (mut writer, stored) = sink.finish();
    writer.flush().map_err(write_err)?;
    drop(writer);
    dst.sync_all().at("could not fsync", dst_path)?;
    Ok((size, sha256, stored))
}

/// Copies one file into `out`, hashing (and checking pages) in the same pass.  None when the
/// file vanished before it could be opened.
fn copy_file(
    spec: &CopySpec,
    entry: &Entry,
    buf: &mut [u8],
    counters: &Counters<'_>,
    bad: &mut Vec<BadPage>,
) -> Result<Option<(FileRecord, u64)>, NativeError> {
    let rel = utf8(&entry.path)?;
    let src_path = spec.data_dir.join(&entry.path);
    let mut src = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&src_path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(IoError::new("could not open", &src_path, e).into()),
    };
    let meta = src.metadata().at("could not stat", &src_path)?;
    if !meta.is_file() {
        return Err(NativeError::NotRegular(rel));
    }
    let stored = match spec.level {
        Some(_) => format!("{DATA}/{rel}.zst"),
        None => format!("{DATA}/{rel}"),
    };
    let pages_from = if spec.check_pages {
        first_block(&entry.path)
    } else {
        None
    };
    let reader = src.try_clone().at("could not open", &src_path)?;
    let mut offset = 0u64;
    let observe = |chunk: &[u8]| {
        if let Some(first) = pages_from {
            check_pages(&reader, &rel, first, offset, chunk, spec.start_lsn.0, bad);
        }
        offset += chunk.len() as u64;
    };
    let (size, sha256, stored_size) = store(
        &mut src,
        &spec.out.join(&stored),
        spec.level,
        buf,
        counters,
        observe,
    )?;
    Ok(Some((
        FileRecord {
            path: rel,
            size,
            mtime: entry.mtime,
            sha256,
            holder: spec.backup_id,
            stored,
        },
        stored_size,
    )))
}

/// Copies the data directory's changed files into `spec.out/data` on `spec.threads` threads
/// and returns the chain manifest of everything (copied and referenced).
pub fn copy_data(spec: &CopySpec, counters: &Counters<'_>) -> Result<Copied, NativeError> {
    let data_out = spec.out.join(DATA);
    if let Some(parent) = spec.out.parent() {
        durable::create_private_dir(parent, true)?;
    }
    durable::create_private_dir(&spec.out, false)?;
    durable::create_private_dir(&data_out, false)?;
    let entries = datadir::walk(&spec.data_dir).at("could not list", &spec.data_dir)?;
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
        durable::create_private_dir(&data_out.join(&rel), false)?;
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
    let results: Mutex<Vec<(FileRecord, u64)>> = Mutex::new(Vec::new());
    let bad_pages: Mutex<Vec<BadPage>> = Mutex::new(Vec::new());
    let vanished = AtomicUsize::new(0);
    let failure = threads::in_parallel(
        &to_copy,
        spec.threads,
        COPY_CHUNK,
        counters.cancel,
        |entry, buf| {
            let mut bad = Vec::new();
            let copied = copy_file(spec, entry, buf, counters, &mut bad)?;
            match copied {
                Some(r) => results.lock().unwrap_or_else(|p| p.into_inner()).push(r),
                None => {
                    vanished.fetch_add(1, Ordering::Relaxed);
                }
            }
            bad_pages
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(bad);
            Ok::<(), NativeError>(())
        },
    );
    if let Some(e) = failure {
        return Err(e);
    }
    if counters.cancel.load(Ordering::Relaxed) {
        return Err(NativeError::Cancelled);
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

/// Writes `bytes` as a new file at `path` (fsynced), returning its sha256.
fn write_hashed(path: &Path, bytes: &[u8]) -> Result<String, NativeError> {
    durable::write_new(path, bytes)?;
    Ok(hex(&Sha256::digest(bytes)))
}

/// A WAL file the backup needs, and where it is now.
pub struct WalFile {
    pub name: String,
    pub source: PathBuf,
}

/// Where the backup's WAL is, from its start to its stop.
pub struct WalSpan {
    pub timeline: u32,
    pub start: Lsn,
    pub stop: Lsn,
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

/// Completes a copied backup after pg_backup_stop: its backup_label, its WAL, the two manifests
/// and tablespace_map; fsyncs every directory.  The caller installs the directory under its
/// name (`durable::install_dir`).
pub fn finish(
    out: &Path,
    mut copied: Copied,
    label: &str,
    tablespace_map: &str,
    wal: &[WalFile],
    level: Option<i32>,
    span: &WalSpan,
) -> Result<Finished, NativeError> {
    let data = out.join(DATA);
    let id = copied.manifest.backup_id;
    let mut stored_bytes = copied.bytes_stored;
    let label_sum = write_hashed(&data.join("backup_label"), label.as_bytes())?;
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
        durable::write_new(
            &out.join(datadir::TABLESPACE_MAP),
            tablespace_map.as_bytes(),
        )?;
    }
    durable::create_private_dir(&data.join("pg_wal"), false)?;
    let mut buf = vec![0u8; COPY_CHUNK];
    let never = std::sync::atomic::AtomicBool::new(false);
    let uncounted = std::sync::atomic::AtomicU64::new(0);
    let quiet = Counters {
        bytes: &uncounted,
        cancel: &never,
        files: None,
    };
    for w in wal {
        let mut src = open_regular(&w.source).map_err(|e| NativeError::Wal {
            name: w.name.clone(),
            detail: e.to_string(),
        })?;
        let stored = match level {
            Some(_) => format!("{DATA}/pg_wal/{}.zst", w.name),
            None => format!("{DATA}/pg_wal/{}", w.name),
        };
        let (size, sha256, stored_size) = store(
            &mut src,
            &out.join(&stored),
            level,
            &mut buf,
            &quiet,
            |_| {},
        )?;
        stored_bytes += stored_size;
        copied.manifest.files.push(FileRecord {
            path: format!("pg_wal/{}", w.name),
            size,
            mtime: now,
            sha256,
            holder: id,
            stored,
        });
    }
    copied.manifest.files.sort_by(|a, b| a.path.cmp(&b.path));
    let pg = postgres::render(&copied.manifest, span.timeline, span.start, span.stop);
    // Stored compressed like the files it lists (it is a few hundred kB of JSON).
    let stored_pg = match level {
        Some(l) => {
            let name = out.join(PG_MANIFEST_ZST);
            let z = zstd::encode_all(pg.as_bytes(), l).at("could not compress", &name)?;
            durable::write_new(&name, &z)?;
            z.len()
        }
        None => {
            durable::write_new(&out.join(PG_MANIFEST), pg.as_bytes())?;
            pg.len()
        }
    };
    stored_bytes += stored_pg as u64;
    let text = copied.manifest.to_text();
    let manifest_sha256 = write_hashed(&out.join(FILES_MANIFEST), text.as_bytes())?;
    stored_bytes += text.len() as u64;
    sync_dirs(out)?;
    Ok(Finished {
        manifest_sha256,
        stored_bytes,
        manifest: copied.manifest,
    })
}

/// fsyncs `dir` and every directory below it (new files' names are durable only then).
pub fn sync_dirs(dir: &Path) -> Result<(), IoError> {
    for e in std::fs::read_dir(dir).at("could not list", dir)? {
        let e = e.at("could not list", dir)?;
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            sync_dirs(&e.path())?;
        }
    }
    durable::sync_dir(dir)
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::files::direct::Writes;
    use crate::restore::materialize::{materialize, Writers};

    const TWO: Writers = Writers {
        threads: 2,
        writes: Writes::Direct,
        pace: None,
    };
    use crate::verify::native::verify_backup;
    use crate::verify::Reason;
    use std::fs;
    use std::sync::atomic::{AtomicBool, AtomicU64};

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
            start_lsn: Lsn(0x5000000),
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
            files: None,
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
            &WalSpan {
                timeline: 1,
                start: Lsn(0x5000028),
                stop: Lsn(0x5000100),
            },
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
        let span = WalSpan {
            timeline: 1,
            start: Lsn(1),
            stop: Lsn(2),
        };
        let f2 = finish(&out2, incr, "label 2\n", "", &[], None, &span).unwrap();
        assert_eq!(f2.manifest.parent, Some(1));
        assert_eq!(
            f2.manifest.holders().into_iter().collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(!out2.join("data/base/5/16384").exists());
        let holders: HashMap<i64, PathBuf> = [(1, out1.clone()), (2, out2.clone())].into();
        let whole = verify_backup(&out2, Some(&f2.manifest_sha256), &holders, 2, &c);
        assert!(whole.passed);
        assert_eq!(whole.ancestors_verified, vec![1]);
        assert!(whole.files > 1);
        // Without its parent the incremental is not whole.
        let only2: HashMap<i64, PathBuf> = [(2, out2.clone())].into();
        assert_eq!(
            verify_backup(&out2, Some(&f2.manifest_sha256), &only2, 2, &c).reason,
            Some(Reason::Missing)
        );

        let dest = tmp.path().join("restored");
        let spaces = tmp.path().join("spaces");
        materialize(&f2.manifest, &holders, &dest, &spaces, TWO, &c).unwrap();
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
        assert!(materialize(&f2.manifest, &holders, &dest2, &spaces, TWO, &c).is_err());
        assert!(!verify_backup(&out1, Some(&f1.manifest_sha256), &empty, 2, &c).passed);
        // ...and by verifying the child, which reads its ancestors' files too (issue 15: it
        // used to check only that they exist).
        let child = verify_backup(&out2, Some(&f2.manifest_sha256), &holders, 2, &c);
        assert!(!child.passed);
        assert_eq!(child.ancestors_verified, vec![1]);
        assert!(
            child
                .detail
                .as_deref()
                .unwrap_or("")
                .contains("ancestor backup 1"),
            "{child:?}"
        );
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
