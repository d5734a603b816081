//! Verification of a native physical backup: its chain manifest against the catalog's sha256,
//! then every file it stores (decompressed and hashed) against the manifest.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::{Reason, Report};
use crate::checksum::hex;
use crate::files::direct::RestoredFile;
use crate::manifest::native::{FileRecord, Manifest, FILES_MANIFEST};
use crate::progress::Counters;
use crate::stream::{self, Count, Hash, PumpError, ThreadedHash};

/// Reads a stored file (decompressing `.zst`) into `sink`; returns its size and sha256.
/// `expected` is the size the manifest gives it: how it is read (hashed on a thread when
/// large), and where reading stops (one byte past it, which the caller's size check refuses).
pub fn read_stored(
    path: &Path,
    expected: u64,
    sink: &mut dyn Write,
    buf: &mut [u8],
    counters: &Counters<'_>,
) -> Result<(u64, String), (Reason, String)> {
    let file = super::open_regular(path)?;
    let zst = path.extension().is_some_and(|e| e == "zst");
    read_stream(file, zst, expected, sink, buf, counters)
}

/// Files the manifest gives at least this size are hashed on a helper thread while the calling
/// one decompresses and writes.  One large relation file (pgbench_accounts is one 640 MB file
/// at scale 50) is otherwise the long pole of a restore or a verification: decompressing,
/// hashing and writing it on one core after the other threads have run out of small files.
const HASH_ON_A_THREAD_FROM: u64 = 32 << 20;

/// `read_stored` of a stream (a file read from an off-site target): decompressed when `zst`,
/// hashed and counted on its way into `sink`.
pub fn read_stream(
    input: impl Read,
    zst: bool,
    expected: u64,
    sink: &mut dyn Write,
    buf: &mut [u8],
    counters: &Counters<'_>,
) -> Result<(u64, String), (Reason, String)> {
    // A failure reading the stored bytes (a disk, a connection) is told apart from zstd
    // refusing what was read: the first is the storage's, the second the file's damage.
    let source_failed = Cell::new(false);
    let mut reader = opened(input, zst, expected, &source_failed)?;
    let pumped = |e| judged(e, zst, &source_failed);
    let counted = Count::new(sink, Some(counters.bytes));
    if expected >= HASH_ON_A_THREAD_FROM {
        let mut chain = ThreadedHash::new(counted);
        stream::pump(&mut reader, &mut chain, buf, Some(counters.cancel)).map_err(pumped)?;
        let (counted, sha256) = chain
            .finish()
            .map_err(|e| (Reason::Unreadable, e.to_string()))?;
        return Ok((counted.bytes(), sha256));
    }
    let mut chain = Hash::new(counted);
    stream::pump(&mut reader, &mut chain, buf, Some(counters.cancel)).map_err(pumped)?;
    let (counted, sha256) = chain.finish();
    Ok((counted.bytes(), sha256))
}

/// `input`, decompressed when `zst`, and cut one byte past the `expected` size (which then
/// fails the size check): stored bytes others may have replaced are judged only once read, and
/// a few kB of zstd can claim a terabyte, written where the restore writes.  A failure of `input`
/// itself is noted in `failed`.
fn opened<'a>(
    input: impl Read + 'a,
    zst: bool,
    expected: u64,
    failed: &'a Cell<bool>,
) -> Result<Box<dyn Read + 'a>, (Reason, String)> {
    let input = Watched {
        inner: input,
        failed,
    };
    let limit = expected.saturating_add(1);
    Ok(if zst {
        Box::new(
            stream::decompress(input)
                .map_err(|e| (Reason::Unreadable, format!("zstd: {e}")))?
                .take(limit),
        )
    } else {
        Box::new(input.take(limit))
    })
}

/// What a failed pump of a stored file means: damage when zstd refused what the storage gave.
fn judged(e: PumpError, zst: bool, source_failed: &Cell<bool>) -> (Reason, String) {
    match e {
        PumpError::Cancelled => (Reason::Cancelled, "cancelled".to_owned()),
        PumpError::Read { after, source } if zst && !source_failed.get() => (
            Reason::Corrupt,
            format!("the stored bytes do not decompress after {after} bytes (zstd: {source})"),
        ),
        e => (Reason::Unreadable, e.to_string()),
    }
}

/// `read_stream` into a file being restored.  One that hashes its own blocks (a large file
/// written past the page cache, `RestoredFile::create_hashing`) is filled in place: the
/// decompressed bytes are copied nowhere, and its sha256 comes from `finish_hashed` (None
/// here).  Any other goes through `read_stream`.
pub fn read_into_file(
    input: impl Read,
    zst: bool,
    expected: u64,
    out: &mut RestoredFile,
    buf: &mut [u8],
    counters: &Counters<'_>,
) -> Result<(u64, Option<String>), (Reason, String)> {
    let Some(file) = out.in_place() else {
        return read_stream(input, zst, expected, out, buf, counters).map(|(n, s)| (n, Some(s)));
    };
    let source_failed = Cell::new(false);
    let mut reader = opened(input, zst, expected, &source_failed)?;
    let n = stream::pump_in_place(
        &mut reader,
        file,
        Some(counters.cancel),
        Some(counters.bytes),
    )
    .map_err(|e| judged(e, zst, &source_failed))?;
    Ok((n, None))
}

/// A reader that notes whether it failed itself (rather than a decompressor reading from it).
struct Watched<'a, R> {
    inner: R,
    failed: &'a Cell<bool>,
}

impl<R: Read> Read for Watched<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|_| self.failed.set(true))
    }
}

/// The report of a run stopped by `cancel` before every file was done.
pub(crate) fn cancelled(counters: &Counters<'_>, at: &Path) -> Option<Report> {
    counters
        .cancel
        .load(Ordering::Relaxed)
        .then(|| Report::failed(Reason::Cancelled, "cancelled".into(), at))
}

pub(crate) fn judge(path: &Path, f: &FileRecord, size: u64, sum: &str) -> Result<(), Report> {
    if size == f.size && sum == f.sha256 {
        return Ok(());
    }
    let mut r = Report::failed(
        if size != f.size {
            Reason::SizeMismatch
        } else {
            Reason::ChecksumMismatch
        },
        // Reading stops one byte past the manifest's size (`opened`): how much more it holds,
        // and its sha256, are not known.
        match size > f.size {
            true => format!(
                "\"{}\" holds more than the {} bytes the manifest says (sha256 {})",
                f.path, f.size, f.sha256
            ),
            false => format!(
                "\"{}\" holds {size} bytes with sha256 {sum}; the manifest says {} bytes, {}",
                f.path, f.size, f.sha256
            ),
        },
        path,
    );
    r.expected_sha256 = Some(f.sha256.clone());
    r.actual_sha256 = (size <= f.size).then(|| sum.to_owned());
    r.expected_bytes = Some(f.size);
    r.bytes = size;
    Err(r)
}

/// Reads and checks a backup's chain manifest against the catalog's sha256.
pub fn load_manifest(dir: &Path, expected_sha256: Option<&str>) -> Result<Manifest, Report> {
    let path = dir.join(FILES_MANIFEST);
    let mut file = super::open_regular(&path).map_err(|(r, d)| Report::failed(r, d, &path))?;
    let mut text = Vec::new();
    file.read_to_end(&mut text)
        .map_err(|e| Report::failed(Reason::Unreadable, e.to_string(), &path))?;
    let actual = hex(&Sha256::digest(&text));
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
    Manifest::parse(&text)
        .map_err(|e| Report::failed(Reason::ManifestMismatch, e.to_string(), &path))
}

/// Verifies a native backup as a chain: the chain manifest against the catalog's sha256, then
/// every file a restore of it needs, decompressed and hashed against the manifest: the files it
/// stores and those it refers to in its ancestors' directories (`holders`), so that a damaged
/// file of the full fails the verification of every incremental built on it.  The report lists
/// the ancestors whose files were read.
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
    let mut files: Vec<(PathBuf, FileRecord)> = Vec::with_capacity(manifest.files.len());
    let mut ancestors: Vec<i64> = Vec::new();
    for f in &manifest.files {
        if f.holder == manifest.backup_id {
            files.push((dir.join(&f.stored), f.clone()));
            continue;
        }
        let Some(holder) = holders.get(&f.holder) else {
            return Report::failed(
                Reason::Missing,
                format!(
                    "\"{}\" is stored by backup {}, which is missing",
                    f.path, f.holder
                ),
                &dir.join(FILES_MANIFEST),
            );
        };
        if !ancestors.contains(&f.holder) {
            ancestors.push(f.holder);
        }
        files.push((holder.join(&f.stored), f.clone()));
    }
    ancestors.sort_unstable();
    // The largest first, as a restore takes them (`materialize::largest_first`): a large file
    // started last would keep one thread busy after the others are done.
    files.sort_by_key(|(_, f)| std::cmp::Reverse(f.size));
    let bytes = AtomicU64::new(0);
    let failure = super::in_parallel(&files, threads, counters.cancel, |(path, f), buf| {
        let (size, sum) =
            read_stored(path, f.size, &mut io::sink(), buf, counters).map_err(|(r, d)| {
                let mut report = Report::failed(r, d, path);
                if f.holder != manifest.backup_id {
                    report.detail = Some(format!(
                        "{} (stored by ancestor backup {})",
                        report.detail.unwrap_or_default(),
                        f.holder
                    ));
                }
                report
            })?;
        bytes.fetch_add(size, Ordering::Relaxed);
        judge(path, f, size, &sum)
    });
    match failure.or_else(|| cancelled(counters, dir)) {
        Some(mut r) => {
            r.ancestors_verified = ancestors;
            r
        }
        None => Report {
            passed: true,
            reason: None,
            detail: None,
            expected_sha256: expected_sha256.map(str::to_owned),
            actual_sha256: expected_sha256.map(str::to_owned),
            expected_bytes: None,
            bytes: bytes.into_inner(),
            files: files.len(),
            failing_file: None,
            ancestors_verified: ancestors,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// Counters of bytes and a cancel flag, no files.
    fn counting<'a>(bytes: &'a AtomicU64, cancel: &'a AtomicBool) -> Counters<'a> {
        Counters {
            bytes,
            cancel,
            files: None,
        }
    }

    /// A file large enough to be hashed on a helper thread yields what hashing it inline yields,
    /// passes every byte to the sink, and a single changed byte changes the sha256.
    #[test]
    fn a_large_file_is_hashed_on_a_thread_to_the_same_sha256() {
        let size = HASH_ON_A_THREAD_FROM as usize + 12_345;
        let data: Vec<u8> = (0..size).map(|i| (i * 7 / 4096) as u8).collect();
        let stored = zstd::encode_all(&data[..], 3).unwrap();
        let (bytes, cancel) = (AtomicU64::new(0), AtomicBool::new(false));
        let counters = counting(&bytes, &cancel);
        let mut buf = vec![0u8; super::super::CHUNK];
        let read = |input: &[u8], zst: bool, expected: u64, buf: &mut [u8]| {
            let mut sink = Vec::new();
            let r = read_stream(input, zst, expected, &mut sink, buf, &counters).unwrap();
            (r, sink)
        };
        let direct = hex(&Sha256::digest(&data));
        let (threaded, written) = read(&stored, true, size as u64, &mut buf);
        assert_eq!(threaded, (size as u64, direct.clone()));
        assert!(written == data, "the sink got other bytes than the file's");
        // Read no further than one byte past the size expected (which the size check refuses),
        // compressed or not: stored bytes that claim more are not written out first.
        for (input, zst) in [(&data, false), (&stored, true)] {
            let (cut, got) = read(input, zst, 100, &mut buf);
            assert_eq!(cut, (101, hex(&Sha256::digest(&data[..101]))));
            assert_eq!(got, &data[..101]);
        }
        let mut changed = data.clone();
        changed[size / 2] ^= 1;
        let (other, _) = read(&changed, false, size as u64, &mut buf);
        assert_eq!(other.0, size as u64);
        assert_ne!(other.1, direct);
    }

    /// A large compressed file decompressed in place into a file that hashes its own blocks:
    /// every byte written and counted, the sha256 the file's; damage still `corrupt`, a stream
    /// that stops early still short, a cancel still honoured.
    #[test]
    fn a_file_filled_in_place_is_written_hashed_and_judged_as_any_other() {
        use crate::files::direct::{Writes, BEHIND_FROM};
        let tmp = tempfile::tempdir().unwrap();
        let size = BEHIND_FROM as usize * 2 + 12_345;
        let data: Vec<u8> = (0..size).map(|i| (i * 7 / 4096 + i % 13) as u8).collect();
        let stored = zstd::encode_all(&data[..], 3).unwrap();
        let (bytes, cancel) = (AtomicU64::new(0), AtomicBool::new(false));
        let counters = counting(&bytes, &cancel);
        let mut buf = vec![0u8; super::super::CHUNK];
        let mut restore = |name: &str, input: &[u8]| {
            let path = tmp.path().join(name);
            let mut out =
                RestoredFile::create_hashing(&path, size as u64, Writes::Direct, None).unwrap();
            // This project's machines restore to ext4, where such a file hashes its blocks.
            assert!(out.in_place().is_some());
            let read = read_into_file(input, true, size as u64, &mut out, &mut buf, &counters);
            let finished = out.finish_hashed(&path).unwrap();
            (read, finished, std::fs::read(&path).unwrap())
        };
        let (read, finished, written) = restore("whole", &stored);
        assert_eq!(read, Ok((size as u64, None)));
        assert_eq!(finished, (size as u64, Some(hex(&Sha256::digest(&data)))));
        assert!(written == data, "other bytes than the file's were written");
        assert_eq!(bytes.load(Ordering::Relaxed), size as u64);

        // Its frame header damaged: zstd refuses it, the file's damage.
        let mut damaged = stored.clone();
        damaged[0] ^= 0xff;
        let (reason, detail) = restore("damaged", &damaged).0.unwrap_err();
        assert_eq!(reason, Reason::Corrupt, "{detail}");

        // Cut short (a download that ended early): fewer bytes, which `judge` refuses.
        let (read, finished, _) = restore("short", &stored[..stored.len() / 2]);
        let short = match read {
            Ok((n, None)) => n,
            Err((reason, detail)) => {
                assert_eq!(reason, Reason::Corrupt, "{detail}");
                finished.0
            }
            other => panic!("{other:?}"),
        };
        assert!(short < size as u64, "{short}");

        // Stored bytes that decompress to more than the size given (a few kB of zstd can claim a
        // terabyte): no more than one byte past it is read or written, and `judge` refuses it
        // without claiming to know the rest.
        let mut longer = data.clone();
        longer.extend(std::iter::repeat_n(0u8, 64 << 20));
        let claims = zstd::encode_all(&longer[..], 3).unwrap();
        let (read, finished, written) = restore("longer", &claims);
        assert!(written.len() <= size + 1, "{}", written.len());
        if let Ok((n, None)) = read {
            assert_eq!((n, finished.0), (size as u64 + 1, size as u64 + 1));
            let record = FileRecord {
                path: "base/1/2".into(),
                size: size as u64,
                mtime: 0,
                sha256: hex(&Sha256::digest(&data)),
                holder: 1,
                stored: "data/base/1/2.zst".into(),
            };
            let r = judge(tmp.path(), &record, n, finished.1.as_deref().unwrap()).unwrap_err();
            assert_eq!(r.reason, Some(Reason::SizeMismatch));
            assert!(r.detail.unwrap().contains("holds more than the"));
            assert_eq!(r.actual_sha256, None);
        }

        cancel.store(true, Ordering::Relaxed);
        let (read, _, _) = restore("cancelled", &stored);
        assert_eq!(read.unwrap_err().0, Reason::Cancelled);
    }

    /// Stored bytes that zstd refuses are the file's damage (`corrupt`); a read that fails is
    /// the storage's (`unreadable`).
    #[test]
    fn a_damaged_compressed_file_is_corrupt_and_a_failing_read_unreadable() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let mut stored = zstd::encode_all(&data[..], 3).unwrap();
        // A changed byte inside a block may decompress to other bytes (the sha256 tells);
        // one in the frame's header never decompresses.
        stored[0] ^= 0xff;
        let (bytes, cancel) = (AtomicU64::new(0), AtomicBool::new(false));
        let counters = counting(&bytes, &cancel);
        let mut buf = vec![0u8; super::super::CHUNK];
        let mut sink = Vec::new();
        let (reason, detail) =
            read_stream(&stored[..], true, 200_000, &mut sink, &mut buf, &counters).unwrap_err();
        assert_eq!(reason, Reason::Corrupt, "{detail}");
        assert!(detail.contains("do not decompress"), "{detail}");

        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    "reset by peer",
                ))
            }
        }
        for zst in [true, false] {
            let (reason, detail) =
                read_stream(Broken, zst, 10, &mut sink, &mut buf, &counters).unwrap_err();
            assert_eq!(reason, Reason::Unreadable, "{detail}");
            assert!(detail.contains("reset by peer"), "{detail}");
        }
    }
}
