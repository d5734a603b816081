//! Verification of a native physical backup: its chain manifest against the catalog's sha256,
//! then every file it stores (decompressed and hashed) against the manifest.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::{Reason, Report};
use crate::checksum::hex;
use crate::manifest::native::{FileRecord, Manifest, FILES_MANIFEST};
use crate::progress::Counters;
use crate::stream::{self, Count, Hash, PumpError};

/// Reads a stored file (decompressing `.zst`) into `sink`; returns its size and sha256.
pub fn read_stored(
    path: &Path,
    sink: &mut dyn Write,
    buf: &mut [u8],
    counters: &Counters<'_>,
) -> Result<(u64, String), (Reason, String)> {
    let file = super::open_regular(path)?;
    let zst = path.extension().is_some_and(|e| e == "zst");
    read_stream(file, zst, sink, buf, counters)
}

/// `read_stored` of a stream (a file read from an off-site target): decompressed when `zst`,
/// hashed and counted on its way into `sink`.
pub fn read_stream(
    input: impl Read,
    zst: bool,
    sink: &mut dyn Write,
    buf: &mut [u8],
    counters: &Counters<'_>,
) -> Result<(u64, String), (Reason, String)> {
    let mut reader: Box<dyn Read> = if zst {
        Box::new(stream::decompress(input).map_err(|e| (Reason::Unreadable, format!("zstd: {e}")))?)
    } else {
        Box::new(input)
    };
    let mut chain = Hash::new(Count::new(sink, Some(counters.bytes)));
    stream::pump(&mut reader, &mut chain, buf, Some(counters.cancel)).map_err(|e| match e {
        PumpError::Cancelled => (Reason::Cancelled, "cancelled".to_owned()),
        e => (Reason::Unreadable, e.to_string()),
    })?;
    let (counted, sha256) = chain.finish();
    Ok((counted.bytes(), sha256))
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
    let bytes = AtomicU64::new(0);
    let failure = super::in_parallel(&files, threads, counters.cancel, |(path, f), buf| {
        let (size, sum) = read_stored(path, &mut io::sink(), buf, counters).map_err(|(r, d)| {
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
