//! Checking archived WAL against what was archived: the file a catalog row names is found only in
//! the shape the archive module writes (`<root>/wal/<system identifier>/<name>[.zst]`, a row's path
//! being input), opened beneath the root without following a symlink, and compared with the
//! recorded size (cheap: one `fstat`) or size and sha256 (a full read).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};

use crate::backup::layout::wal_archive_dir;
use crate::files::beneath::{open_file_at, Root};
use sha2::{Digest, Sha256};

use crate::checksum::hex;
use crate::stream;

/// How the reason of a file lost for its bytes begins (such a file keeps its size, so only a
/// read judges it again).
pub const DIGEST_REASON: &str = "its sha256";

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The size (and, when read, the sha256) is what was archived.
    Intact,
    /// Nothing under the name.
    Missing,
    /// Something that is not a regular file (a directory, a symlink, a FIFO).
    NotRegular,
    /// A regular file of another size.
    Size { actual: u64 },
    /// A regular file of the right size whose bytes differ.
    Digest { actual: String },
    /// The recorded path is not a file of a WAL archive under a backup root: nothing is opened.
    NotInArchive,
    /// It could not be read (permissions, I/O error); not a finding about the file.
    Unreadable(String),
}

impl Found {
    /// Why the segment is lost, for `wal_archive.lost_reason`; None when it is intact or the
    /// check could not tell.
    pub fn lost_reason(&self, expected_size: u64) -> Option<String> {
        match self {
            Found::Intact | Found::Unreadable(_) => None,
            Found::Missing => Some("missing from the archive directory".into()),
            Found::NotRegular => Some("not a regular file in the archive directory".into()),
            Found::Size { actual } => {
                Some(format!("{actual} bytes on disk, {expected_size} archived"))
            }
            Found::Digest { actual } => Some(format!(
                "{DIGEST_REASON} is {actual}, not the one recorded when it was archived"
            )),
            Found::NotInArchive => {
                Some("its recorded path is not in the WAL archive of a backup root".into())
            }
        }
    }
}

/// Where an archived file is: a root, the archive directory below it, the stored name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ArchivedFile {
    pub root: PathBuf,
    /// `wal/<system identifier>`, relative to the root.
    pub dir: PathBuf,
    pub stored: String,
}

/// The archived file a catalog row names, when its path is exactly what the archive module
/// records for that cluster and name under one of `roots`.
pub fn locate(
    file_path: &str,
    file_name: &str,
    system_identifier: i64,
    roots: &[PathBuf],
) -> Option<ArchivedFile> {
    let path = Path::new(file_path);
    let stored = path.file_name()?.to_str()?;
    if stored != file_name && stored != format!("{file_name}.zst") {
        return None;
    }
    let dir = wal_archive_dir(system_identifier as u64);
    roots.iter().find_map(|root| {
        (path.parent()? == root.join(&dir)).then(|| ArchivedFile {
            root: root.clone(),
            dir: dir.clone(),
            stored: stored.to_owned(),
        })
    })
}

/// Opens the archive directory of `file` beneath its root (no symlink followed).
pub fn open_dir(file: &ArchivedFile) -> io::Result<File> {
    Root::open(&file.root)?.open_dir(&file.dir)
}

/// Opens the archived file itself beneath its root (to copy it off site): what `Found` says when
/// it cannot be.
pub fn open_archived(file: &ArchivedFile) -> Result<File, Found> {
    let dir = open_dir(file).map_err(|e| Found::Unreadable(e.to_string()))?;
    open(&dir, &file.stored)
}

fn open(dir: &File, stored: &str) -> Result<File, Found> {
    let f = open_file_at(dir, OsStr::new(stored)).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => Found::Missing,
        Some(libc::ELOOP) | Some(libc::ENXIO) => Found::NotRegular,
        _ => Found::Unreadable(e.to_string()),
    })?;
    let meta = f.metadata().map_err(|e| Found::Unreadable(e.to_string()))?;
    if !meta.is_file() {
        return Err(Found::NotRegular);
    }
    Ok(f)
}

/// Why a small archived file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SmallFileError {
    #[error("{size} bytes archived, more than {limit} are read")]
    TooLarge { size: u64, limit: u64 },
    #[error("it cannot be read: {0}")]
    Unreadable(String),
    /// It is not what was archived (`found`: missing, not a regular file, another size or
    /// sha256), `size` bytes having been archived.
    #[error("{}", .found.lost_reason(*.size).unwrap_or_default())]
    NotAsArchived { found: Found, size: u64 },
}

/// The whole of a small archived file (a timeline history file), read beneath its root and
/// checked against what was archived (`size`, `sha256`); a file of more than `limit` bytes is
/// refused, and no more than one byte past the limit is read.
pub fn read_small(
    file: &ArchivedFile,
    size: u64,
    sha256: &str,
    limit: u64,
) -> Result<Vec<u8>, SmallFileError> {
    let why = |found: Found| match found {
        Found::Unreadable(e) => SmallFileError::Unreadable(e),
        found => SmallFileError::NotAsArchived { found, size },
    };
    if size > limit {
        return Err(SmallFileError::TooLarge { size, limit });
    }
    let f = open_archived(file).map_err(why)?;
    let mut bytes = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| why(Found::Unreadable(e.to_string())))?;
    let actual = hex(&Sha256::digest(&bytes));
    if bytes.len() as u64 != size {
        return Err(why(Found::Size {
            actual: bytes.len() as u64,
        }));
    }
    if !actual.eq_ignore_ascii_case(sha256) {
        return Err(why(Found::Digest { actual }));
    }
    Ok(bytes)
}

/// Presence and size: one open and `fstat`, no read.
pub fn check_size(dir: &File, stored: &str, size: u64) -> Found {
    match open(dir, stored) {
        Err(found) => found,
        Ok(f) => match f.metadata() {
            Ok(m) if m.len() == size => Found::Intact,
            Ok(m) => Found::Size { actual: m.len() },
            Err(e) => Found::Unreadable(e.to_string()),
        },
    }
}

/// Size and sha256: the whole file read through the hashing stage.
pub fn check_content(
    dir: &File,
    stored: &str,
    size: u64,
    sha256: &str,
    cancel: &AtomicBool,
    progress: &AtomicU64,
) -> Found {
    let mut f = match open(dir, stored) {
        Err(found) => return found,
        Ok(f) => f,
    };
    let mut buf = vec![0u8; super::CHUNK];
    match stream::hash_all(&mut f, &mut buf, Some(cancel), Some(progress)) {
        Err(e) => Found::Unreadable(e.to_string()),
        Ok((bytes, _)) if bytes != size => Found::Size { actual: bytes },
        Ok((_, actual)) if !actual.eq_ignore_ascii_case(sha256) => Found::Digest { actual },
        Ok(_) => Found::Intact,
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn sha256_hex(b: &[u8]) -> String {
        hex(&Sha256::digest(b))
    }

    fn archive() -> (tempfile::TempDir, PathBuf, ArchivedFile) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        std::fs::create_dir_all(root.join("wal/42")).unwrap();
        std::fs::write(
            root.join("wal/42/000000010000000000000003"),
            b"segment bytes",
        )
        .unwrap();
        let path = root.join("wal/42/000000010000000000000003");
        let file = locate(
            path.to_str().unwrap(),
            "000000010000000000000003",
            42,
            std::slice::from_ref(&root),
        )
        .unwrap();
        (t, root, file)
    }

    #[test]
    fn only_the_archive_modules_layout_is_located() {
        let roots = vec![PathBuf::from("/b")];
        let name = "000000010000000000000003";
        assert!(locate(&format!("/b/wal/42/{name}"), name, 42, &roots).is_some());
        assert!(locate(&format!("/b/wal/42/{name}.zst"), name, 42, &roots).is_some());
        // Another cluster's directory, another name, a path outside, a way up: refused.
        assert!(locate(&format!("/b/wal/43/{name}"), name, 42, &roots).is_none());
        assert!(locate("/b/wal/42/000000010000000000000004", name, 42, &roots).is_none());
        assert!(locate(&format!("/etc/wal/42/{name}"), name, 42, &roots).is_none());
        assert!(locate(&format!("/b/wal/42/../42/{name}"), name, 42, &roots).is_none());
        assert!(locate(&format!("/b/x/wal/42/{name}"), name, 42, &roots).is_none());
        // Identifiers of 2^63 and above are stored negative and named unsigned.
        let big = u64::MAX - 5;
        assert!(locate(&format!("/b/wal/{big}/{name}"), name, big as i64, &roots).is_some());
    }

    #[test]
    fn size_and_content_checks_tell_what_changed() {
        let (_t, root, file) = archive();
        let dir = open_dir(&file).unwrap();
        let sha = sha256_hex(b"segment bytes");
        let (cancel, progress) = (AtomicBool::new(false), AtomicU64::new(0));
        assert_eq!(check_size(&dir, &file.stored, 13), Found::Intact);
        assert_eq!(
            check_content(&dir, &file.stored, 13, &sha, &cancel, &progress),
            Found::Intact
        );
        assert_eq!(
            check_size(&dir, &file.stored, 14),
            Found::Size { actual: 13 }
        );
        // Same size, other bytes: only the content check sees it.
        std::fs::write(root.join("wal/42").join(&file.stored), b"segment bytez").unwrap();
        assert_eq!(check_size(&dir, &file.stored, 13), Found::Intact);
        assert!(matches!(
            check_content(&dir, &file.stored, 13, &sha, &cancel, &progress),
            Found::Digest { .. }
        ));
        // A symlink in its place is not followed.
        std::fs::remove_file(root.join("wal/42").join(&file.stored)).unwrap();
        assert_eq!(check_size(&dir, &file.stored, 13), Found::Missing);
        std::os::unix::fs::symlink("/etc/hostname", root.join("wal/42").join(&file.stored))
            .unwrap();
        assert_eq!(check_size(&dir, &file.stored, 13), Found::NotRegular);
        assert!(Found::Missing.lost_reason(13).unwrap().contains("missing"));
        assert_eq!(Found::Intact.lost_reason(13), None);
    }

    /// A small file is read whole only when it is what was archived, within the limit, and
    /// never through a symlink.
    #[test]
    fn small_files_are_read_whole_and_checked() {
        let (_t, root, file) = archive();
        let sha = sha256_hex(b"segment bytes");
        assert_eq!(read_small(&file, 13, &sha, 100).unwrap(), b"segment bytes");
        let e = read_small(&file, 13, &"0".repeat(64), 100)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sha256"), "{e}");
        let e = read_small(&file, 12, &sha, 100).unwrap_err().to_string();
        assert!(e.contains("13 bytes on disk, 12 archived"), "{e}");
        assert_eq!(
            read_small(&file, 13, &sha, 10),
            Err(SmallFileError::TooLarge {
                size: 13,
                limit: 10
            })
        );
        let e = read_small(&file, 13, &sha, 10).unwrap_err().to_string();
        assert!(e.contains("more than 10"), "{e}");
        // Grown on disk beyond the limit: no more than the limit is read.
        std::fs::write(root.join("wal/42").join(&file.stored), vec![b'x'; 1000]).unwrap();
        let e = read_small(&file, 13, &sha, 100).unwrap_err().to_string();
        assert!(e.contains("101 bytes on disk"), "{e}");
        std::fs::remove_file(root.join("wal/42").join(&file.stored)).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", root.join("wal/42").join(&file.stored))
            .unwrap();
        let e = read_small(&file, 13, &sha, 100).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
