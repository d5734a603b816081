//! The WAL archive's copy of one file, as the archive module makes it (no PostgreSQL calls; the
//! callbacks are the extension's `recovery::archive_module`).
//!
//! Each file is copied into the cluster's archive directory as a `DurableFile` (hidden temporary
//! name, fsync, link, directory fsync); only then is success reported.  A file already archived
//! with the same content is success (PostgreSQL retries after a crash); one with different
//! content is refused, never overwritten.  A segment whose page header names another cluster is
//! refused.  Every archived file is appended, with its size and sha256, to the directory's
//! manifest (`manifest::archive`), which the worker ingests into the catalog.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use crate::files::durable::{self, DurableFile, Install, Temp};
use crate::files::error::{Context, IoError};
use crate::manifest::archive::{self as archive_manifest, ManifestLine};
use crate::stream::{self, Count, Hash, Observe, ThreadedHash};
use crate::threads::with_signals_blocked;
use crate::wal::{self, SegmentSize};

/// Copy chunk: a 16 MB segment in 16 reads and writes.
const CHUNK: usize = 1 << 20;
/// zstd worker threads for compressed archiving.
const ZSTD_WORKERS: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("\"{0}\" is not a WAL file name")]
    BadName(String),
    #[error("{name} is already archived with different content; refusing to overwrite it")]
    Conflict { name: String },
    #[error(
        "{name} belongs to another cluster (system identifier {found}, this cluster is {ours})"
    )]
    OtherCluster { name: String, found: u64, ours: u64 },
    #[error(transparent)]
    Io(#[from] IoError),
}

/// How archived files are stored (`backup_mgmt.archive_compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Plain,
    /// `<name>.zst`, at this zstd level.
    Zstd(i32),
}

/// What happened to a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Archived {
    /// Copied now, with this size and sha256.
    Copied { size: u64, sha256: String },
    /// Already there with identical content.
    AlreadyThere,
}

/// The system identifier in a WAL segment's first (long) page header, if `head` holds one.
fn segment_system_identifier(head: &[u8]) -> Option<u64> {
    // XLogLongPageHeaderData: xlp_magic u16, xlp_info u16, xlp_tli u32, xlp_pageaddr u64,
    // xlp_rem_len u32 (+4 padding), then xlp_sysid u64 at offset 24.  XLP_LONG_HEADER = 0x0002.
    if head.len() < 32 || u16::from_le_bytes([head[2], head[3]]) & 0x0002 == 0 {
        return None;
    }
    Some(u64::from_le_bytes(head[24..32].try_into().ok()?))
}

/// Whether `source` has the same content as the archived `target` (a `.zst` one decompressed);
/// if so, the archived file's size and sha256.
fn same_content(source: &Path, target: &Path) -> Result<Option<(u64, String)>, ArchiveError> {
    let fa = File::open(source).at("could not open", source)?;
    let fb = File::open(target).at("could not open", target)?;
    let compressed = target.extension().is_some_and(|e| e == "zst");
    let equal = if compressed {
        let decoder = stream::decompress(fb).at("could not read", target)?;
        same_bytes(fa, decoder, source, target)?
    } else {
        if fa.metadata().map(|m| m.len()).ok() != fb.metadata().map(|m| m.len()).ok() {
            return Ok(None);
        }
        same_bytes(fa, fb, source, target)?
    };
    if !equal {
        return Ok(None);
    }
    let mut stored = File::open(target).at("could not open", target)?;
    let mut buf = vec![0u8; 64 << 10];
    let (size, sha) = stream::hash_all(&mut stored, &mut buf, None, None)
        .map_err(|e| IoError::new("could not read", target, io::Error::other(e)))?;
    Ok(Some((size, sha)))
}

/// Whether two streams have the same bytes.
fn same_bytes(
    mut a: impl Read,
    mut b: impl Read,
    source: &Path,
    target: &Path,
) -> Result<bool, ArchiveError> {
    let (mut ba, mut bb) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    loop {
        let n = stream::read_full(&mut a, &mut ba).at("could not read", source)?;
        let m = stream::read_full(&mut b, &mut bb[..n.max(1)]).at("could not read", target)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

thread_local! {
    /// The copy buffer, kept between segments: the archiver copies one 16 MB segment after
    /// another, and a fresh megabyte would be page-faulted in again every time.
    static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Copies `input` into `out` through the stages of `stored`, showing the first piece to
/// `check_head` before anything is written; returns the stored file's size and sha256.
fn copy(
    input: &mut File,
    out: &mut DurableFile,
    stored: Stored,
    check_head: &dyn Fn(&[u8]) -> Result<(), ArchiveError>,
) -> Result<(u64, String), ArchiveError> {
    let mut buf = BUFFER.with(|b| std::mem::take(&mut *b.borrow_mut()));
    buf.resize(CHUNK, 0);
    let result = (|| {
        let temp = out.temp_path().to_owned();
        let n = stream::read_full(input, &mut buf).at("could not read", &temp)?;
        check_head(&buf[..n])?;
        let io_err =
            |e: stream::PumpError| IoError::new("could not write", &temp, io::Error::other(e));
        match stored {
            // sha256 on a helper thread while this one reads and writes the next piece.
            Stored::Plain => {
                let mut sink = Count::new(ThreadedHash::new(out.file()), None);
                sink.write_all(&buf[..n]).at("could not write", &temp)?;
                if n == buf.len() {
                    stream::pump(input, &mut sink, &mut buf, None).map_err(io_err)?;
                }
                let (hashed, size) = sink.finish();
                let (_, sha) = hashed.finish().at("could not hash", &temp)?;
                Ok((size, sha))
            }
            // zstd's own worker threads compress while this thread reads and writes; they start
            // on the first write and end when the encoder is dropped, so all of it runs with the
            // archiver's signals blocked.
            Stored::Zstd(level) => with_signals_blocked(|| {
                let sink = Hash::new(Count::new(out.file(), None));
                let mut enc =
                    stream::compress(sink, level).at("could not start zstd for", &temp)?;
                enc.multithread(ZSTD_WORKERS)
                    .at("could not start zstd workers for", &temp)?;
                let mut chain = Observe::new(enc, |_: &[u8]| {});
                chain.write_all(&buf[..n]).at("could not write", &temp)?;
                if n == buf.len() {
                    stream::pump(input, &mut chain, &mut buf, None).map_err(io_err)?;
                }
                let (enc, _) = chain.finish();
                let (counted, sha) = enc.finish().at("could not write", &temp)?.finish();
                Ok((counted.bytes(), sha))
            }),
        }
    })();
    BUFFER.with(|b| *b.borrow_mut() = buf);
    result
}

/// Archives `source` as `name` into `dir` (created if needed), durably, never overwriting.
/// `system_identifier` is this cluster's; a segment naming another one is refused.
/// `segment_size` is written into the manifest line, so the catalog numbers segments right.
pub fn archive_file(
    source: &Path,
    name: &str,
    dir: &Path,
    system_identifier: u64,
    segment_size: SegmentSize,
    stored: Stored,
) -> Result<Archived, ArchiveError> {
    if !wal::is_archivable_name(name) {
        return Err(ArchiveError::BadName(name.to_owned()));
    }
    durable::create_private_dir(dir, true)?;
    let line = |file: &str, size, sha256: &str| ManifestLine {
        name: name.to_owned(),
        file: Some(file.to_owned()),
        size: size as i64,
        sha256: sha256.to_owned(),
        archived_at: chrono::Utc::now().to_rfc3339(),
        segment_size: Some(segment_size.bytes()),
    };
    // Already archived, in either form (compression may have been turned on or off since)?
    for existing in [name.to_owned(), format!("{name}.zst")] {
        let path = dir.join(&existing);
        if !path.exists() {
            continue;
        }
        return match same_content(source, &path)? {
            // A crash between the link and the manifest line would leave the file out of the
            // manifest (and the catalog) for good: the retry writes the line again.  The worker
            // ignores duplicates.
            Some((size, sha256)) => {
                archive_manifest::append(dir, &line(&existing, size, &sha256))?;
                Ok(Archived::AlreadyThere)
            }
            None => Err(ArchiveError::Conflict {
                name: name.to_owned(),
            }),
        };
    }
    let file_name = match stored {
        Stored::Plain => name.to_owned(),
        Stored::Zstd(_) => format!("{name}.zst"),
    };
    let mut input = File::open(source).at("could not open", source)?;
    let mut out = DurableFile::create(&dir.join(&file_name), Temp::Hidden)?;
    let check_head = |head: &[u8]| match segment_system_identifier(head) {
        Some(found) if wal::is_segment_name(name) && found != system_identifier => {
            Err(ArchiveError::OtherCluster {
                name: name.to_owned(),
                found,
                ours: system_identifier,
            })
        }
        _ => Ok(()),
    };
    let (size, sha256) = copy(&mut input, &mut out, stored, &check_head)?;
    // link(2), not rename(2): nothing is ever overwritten, even by a concurrent archiver.
    out.commit(Install::NoReplace)?;
    // Listed only once the file is durable under its name.
    archive_manifest::append(dir, &line(&file_name, size, &sha256))?;
    Ok(Archived::Copied { size, sha256 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::hex;
    use crate::manifest::archive::MANIFEST;
    use sha2::{Digest, Sha256};

    fn segment(sysid: u64, fill: u8) -> Vec<u8> {
        let mut v = vec![fill; 64 * 1024];
        v[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        v[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
        v[24..32].copy_from_slice(&sysid.to_le_bytes());
        v
    }

    const SIZE: SegmentSize = SegmentSize::DEFAULT;

    #[test]
    fn archives_once_accepts_identical_refuses_different() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("000000010000000000000003");
        std::fs::write(&src, segment(42, 7)).unwrap();
        let dir = tmp.path().join("wal").join("42");
        let name = "000000010000000000000003";
        let first = archive_file(&src, name, &dir, 42, SIZE, Stored::Plain).unwrap();
        let Archived::Copied { size, sha256 } = first else {
            panic!("not copied: {first:?}")
        };
        assert_eq!(size, 64 * 1024);
        assert_eq!(sha256, hex(&Sha256::digest(std::fs::read(&src).unwrap())));
        assert_eq!(
            std::fs::read(dir.join(name)).unwrap(),
            std::fs::read(&src).unwrap()
        );
        // The same file again (a retry after a crash): success, nothing rewritten.
        assert_eq!(
            archive_file(&src, name, &dir, 42, SIZE, Stored::Plain).unwrap(),
            Archived::AlreadyThere
        );
        // Different content under the same name: refused, the archived copy untouched.
        std::fs::write(&src, segment(42, 8)).unwrap();
        let e = archive_file(&src, name, &dir, 42, SIZE, Stored::Plain).unwrap_err();
        assert!(matches!(e, ArchiveError::Conflict { .. }), "{e}");
        assert_eq!(std::fs::read(dir.join(name)).unwrap(), segment(42, 7));
        // Another cluster's segment: refused.
        let other = tmp.path().join("000000010000000000000004");
        std::fs::write(&other, segment(99, 1)).unwrap();
        let e = archive_file(
            &other,
            "000000010000000000000004",
            &dir,
            42,
            SIZE,
            Stored::Plain,
        )
        .unwrap_err();
        assert!(
            matches!(e, ArchiveError::OtherCluster { found: 99, .. }),
            "{e}"
        );
        assert!(!dir.join("000000010000000000000004").exists());
        // The manifest lists the file copied (again for the identical retry), nothing else, with
        // the segment size.
        let manifest = std::fs::read_to_string(dir.join(MANIFEST)).unwrap();
        assert_eq!(manifest.lines().count(), 2);
        assert!(manifest.lines().all(|l| l.contains(&sha256)
            && l.contains(name)
            && l.contains("\"segment_size\":16777216")));
        // No temporary file is left behind.
        assert!(std::fs::read_dir(&dir).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
    }

    /// zstd storage: `<name>.zst` that decompresses to the segment, listed with the compressed
    /// file's sha256; an identical retry in either form is success, a different file refused.
    #[test]
    fn compressed_archive_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("000000010000000000000007");
        std::fs::write(&src, segment(42, 3)).unwrap();
        let dir = tmp.path().join("wal");
        let name = "000000010000000000000007";
        let Archived::Copied { size, sha256 } =
            archive_file(&src, name, &dir, 42, SIZE, Stored::Zstd(3)).unwrap()
        else {
            panic!("not copied")
        };
        let stored = dir.join(format!("{name}.zst"));
        assert!(!dir.join(name).exists());
        let bytes = std::fs::read(&stored).unwrap();
        assert_eq!(
            (size, sha256.clone()),
            (bytes.len() as u64, hex(&Sha256::digest(&bytes)))
        );
        assert!(size < 64 * 1024 / 10, "not compressed: {size}");
        assert_eq!(zstd::decode_all(&bytes[..]).unwrap(), segment(42, 3));
        // Compression turned off meanwhile: the compressed copy still counts.
        assert_eq!(
            archive_file(&src, name, &dir, 42, SIZE, Stored::Plain).unwrap(),
            Archived::AlreadyThere
        );
        std::fs::write(&src, segment(42, 4)).unwrap();
        assert!(matches!(
            archive_file(&src, name, &dir, 42, SIZE, Stored::Zstd(3)),
            Err(ArchiveError::Conflict { .. })
        ));
        let manifest = std::fs::read_to_string(dir.join(MANIFEST)).unwrap();
        assert_eq!(manifest.lines().count(), 2);
        assert!(manifest
            .lines()
            .all(|l| l.contains(&format!("\"file\":\"{name}.zst\"")) && l.contains(&sha256)));
        // Another cluster's segment is refused before anything is kept.
        let other = tmp.path().join("000000010000000000000008");
        std::fs::write(&other, segment(99, 1)).unwrap();
        assert!(matches!(
            archive_file(
                &other,
                "000000010000000000000008",
                &dir,
                42,
                SIZE,
                Stored::Zstd(3)
            ),
            Err(ArchiveError::OtherCluster { .. })
        ));
        assert!(!dir.join("000000010000000000000008.zst").exists());
    }

    /// Several chunks and a short last one, plain and compressed; the head check sees the first
    /// chunk before anything is kept.
    #[test]
    fn multi_chunk_files_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let mut data: Vec<u8> = (0..(5 * CHUNK / 2)).map(|i| (i * 7 % 251) as u8).collect();
        data[..64 * 1024].copy_from_slice(&segment(42, 0));
        let src = tmp.path().join("src");
        std::fs::write(&src, &data).unwrap();
        for (i, stored) in [Stored::Plain, Stored::Zstd(1)].into_iter().enumerate() {
            let name = format!("00000001000000000000000{i}");
            let dir = tmp.path().join(format!("d{i}"));
            archive_file(&src, &name, &dir, 42, SIZE, stored).unwrap();
            let file = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&name))
                .unwrap();
            let bytes = std::fs::read(file).unwrap();
            let plain = match stored {
                Stored::Plain => bytes,
                Stored::Zstd(_) => zstd::decode_all(&bytes[..]).unwrap(),
            };
            assert_eq!(plain, data);
            let e = archive_file(&src, &name.replace('0', "1"), &dir, 7, SIZE, stored);
            assert!(matches!(e, Err(ArchiveError::OtherCluster { .. })));
        }
    }
}
