//! What a directory backup's copy must hold, checked against the backup's own manifest as it
//! is copied: a directory-format dump's `backup_manifest.sha256` (`DumpManifest`), a native
//! backup's chain manifest (`NativeMembers`).  The catalog records only the manifest's sha256,
//! so a member that rotted on this host's disk after the backup was taken would otherwise land
//! off-site as though it were the backup, and be found only by the restore after the host is
//! lost; found here, the backup can still be taken again.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};

use sha2::{Digest, Sha256};

use super::StorageError;
use crate::checksum;
use crate::files::beneath::{entries_of, Kind, Root};
use crate::files::error::IoError;
use crate::manifest::directory::{self, DIRECTORY_MANIFEST};
use crate::manifest::native::{FileRecord, Manifest, FILES_MANIFEST};
use crate::progress::Counters;
use crate::stream::Hash;
use crate::verify::native::read_stream;

/// Reads a manifest beneath `root`, at most `MANIFEST_LIMIT` bytes; returns its text.
fn read_manifest(local: &Path, root: &Root, name: &str) -> Result<String, StorageError> {
    let path = local.join(name);
    let mut text = String::new();
    root.open_file(Path::new(name))
        .map_err(|e| IoError::new("could not open", &path, e))?
        .take(MANIFEST_LIMIT + 1)
        .read_to_string(&mut text)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => StorageError::Manifest {
                member: path.clone(),
                why: "is not UTF-8 text".into(),
            },
            _ => IoError::new("could not read", &path, e).into(),
        })?;
    if text.len() as u64 > MANIFEST_LIMIT {
        return Err(StorageError::Manifest {
            member: path,
            why: format!("is larger than {MANIFEST_LIMIT} bytes"),
        });
    }
    Ok(text)
}

/// A native backup's chain manifest as this host holds it: its sha256 and the record of each
/// file this backup's directory stores (`holder` = its id; the rest are its ancestors').
pub(super) struct NativeMembers {
    sha256: String,
    stored: HashMap<PathBuf, FileRecord>,
}

impl NativeMembers {
    /// Reads the chain manifest in `local` and checks, before anything is copied, that every
    /// file it says this directory stores is among `files`.  Other files (PostgreSQL's
    /// `backup_manifest`, `tablespace_map`) are copied as they are, as before.
    pub(super) fn read(
        local: &Path,
        root: &Root,
        files: &[PathBuf],
    ) -> Result<NativeMembers, StorageError> {
        let text = read_manifest(local, root, FILES_MANIFEST)?;
        let manifest = Manifest::parse(&text).map_err(|e| StorageError::Manifest {
            member: local.join(FILES_MANIFEST),
            why: e.to_string(),
        })?;
        let stored: HashMap<PathBuf, FileRecord> = manifest
            .files
            .into_iter()
            .filter(|f| f.holder == manifest.backup_id)
            .map(|f| (PathBuf::from(&f.stored), f))
            .collect();
        let present: HashSet<&Path> = files.iter().map(PathBuf::as_path).collect();
        if let Some(gone) = stored.keys().find(|n| !present.contains(n.as_path())) {
            return Err(StorageError::Manifest {
                member: local.join(gone),
                why: "is in the backup's chain manifest but not in its directory".into(),
            });
        }
        Ok(NativeMembers {
            sha256: checksum::hex(&Sha256::digest(text.as_bytes())),
            stored,
        })
    }

    /// Checks the member `rel`, opened as `file`, against its record: decompressed when stored
    /// so, hashed, compared; then rewinds `file` for the copy.  Returns the sha256 of the bytes
    /// as stored, which the copy must land with (so what landed is what was checked), or None
    /// for a file the manifest does not record.  A mismatch is `StorageError::Member`.
    pub(super) fn check(
        &self,
        local: &Path,
        rel: &Path,
        file: &mut File,
        buf: &mut [u8],
    ) -> Result<Option<String>, StorageError> {
        let Some(record) = self.stored.get(rel) else {
            return Ok(None);
        };
        let shown = local.join(rel);
        let zst = rel.extension().is_some_and(|e| e == "zst");
        let (bytes, never) = (AtomicU64::new(0), AtomicBool::new(false));
        let counters = Counters {
            bytes: &bytes,
            cancel: &never,
            files: None,
        };
        let mut raw = Hash::new(&mut *file);
        let (size, sum) = read_stream(
            &mut raw,
            zst,
            record.size,
            &mut std::io::sink(),
            buf,
            &counters,
        )
        .map_err(|(_, why)| StorageError::Member {
            member: shown.clone(),
            why: format!("could not be read back as stored: {why}"),
        })?;
        // The rest of the stored bytes too (a zstd frame may end before the file does).
        std::io::copy(&mut raw, &mut std::io::sink()).map_err(|e| StorageError::Member {
            member: shown.clone(),
            why: format!("could not be read back as stored: {e}"),
        })?;
        let (_, as_stored) = raw.finish();
        if size != record.size || sum != record.sha256 {
            return Err(StorageError::Member {
                member: shown,
                why: format!(
                    "holds {size} bytes with sha256 {sum}; the chain manifest records {} bytes, {}",
                    record.size, record.sha256
                ),
            });
        }
        file.seek(SeekFrom::Start(0))
            .map_err(|e| IoError::new("could not rewind", &shown, e))?;
        Ok(Some(as_stored))
    }

    /// The manifest's sha256 as read (the catalog's checksum of the backup).
    pub(super) fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Checks the landed manifest (`manifest`: its sha256) against the one read before the copy.
    pub(super) fn check_landed(&self, local: &Path, manifest: &str) -> Result<(), StorageError> {
        if manifest != self.sha256 {
            return Err(StorageError::Member {
                member: local.join(FILES_MANIFEST),
                why: "changed while the backup was copied".into(),
            });
        }
        Ok(())
    }
}

/// A directory-format dump's manifest as this host holds it: its sha256 and the digest of each
/// file it names.  A member that rotted on this host's disk after the dump was taken (which the
/// manifest's own sha256, the catalog's, cannot show) is found while the backup can still be
/// taken again, not by the restore after the host is lost.
pub(super) struct DumpManifest {
    sha256: String,
    digests: HashMap<PathBuf, String>,
}

impl DumpManifest {
    /// The manifest's sha256 as read (the catalog's checksum of the backup).
    pub(super) fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Reads the manifest in `local` and checks, before anything is copied, that the files it
    /// names are the directory's `files` (relative paths): none missing, none added.  A
    /// mismatch is `StorageError::Manifest`: nothing landed, so nothing is removed.
    pub(super) fn read(
        local: &Path,
        root: &Root,
        files: &[PathBuf],
    ) -> Result<DumpManifest, StorageError> {
        let refused = |m: &Path, why: String| StorageError::Manifest {
            member: local.join(m),
            why,
        };
        let text = read_manifest(local, root, DIRECTORY_MANIFEST)?;
        let digests: HashMap<PathBuf, String> = directory::parse(&text)
            .map_err(|bad| refused(Path::new(DIRECTORY_MANIFEST), bad.to_string()))?
            .into_iter()
            .map(|(sum, name)| (PathBuf::from(name), sum))
            .collect();
        // A dump directory is flat and holds only regular files: a symlink or a subdirectory
        // (which the listing skips or descends) would fail the backup's own verification, so
        // it is not copied as though it were the backup either.
        let top = root
            .open_dir(Path::new(""))
            .and_then(|dir| entries_of(&dir))
            .map_err(|e| IoError::new("could not list", local, e))?;
        if let Some((name, _)) = top.iter().find(|(_, kind)| *kind != Kind::File) {
            return Err(refused(
                Path::new(name),
                "is not a regular file; a dump directory holds only its files".into(),
            ));
        }
        let present: HashSet<&Path> = files.iter().map(PathBuf::as_path).collect();
        if let Some(extra) = files
            .iter()
            .find(|f| *f != Path::new(DIRECTORY_MANIFEST) && !digests.contains_key(*f))
        {
            return Err(refused(extra, "is not in the backup's manifest".into()));
        }
        if let Some(gone) = digests.keys().find(|n| !present.contains(n.as_path())) {
            return Err(refused(
                gone,
                "is in the backup's manifest but not in its directory".into(),
            ));
        }
        Ok(DumpManifest {
            sha256: checksum::hex(&Sha256::digest(text.as_bytes())),
            digests,
        })
    }

    /// Checks what landed (`landed`: relative path, sha256; `manifest`: the manifest's) against
    /// the manifest read before the copy.  A mismatch is `StorageError::Member`: what landed is
    /// not the backup.
    pub(super) fn check_landed(
        &self,
        local: &Path,
        manifest: &str,
        landed: &[(PathBuf, String)],
    ) -> Result<(), StorageError> {
        if manifest != self.sha256 {
            return Err(StorageError::Member {
                member: local.join(DIRECTORY_MANIFEST),
                why: "changed while the backup was copied".into(),
            });
        }
        for (rel, sha) in landed {
            if let Some(sum) = self.digests.get(rel).filter(|sum| *sum != sha) {
                return Err(StorageError::Member {
                    member: local.join(rel),
                    why: format!("landed with sha256 {sha}, the manifest records {sum}"),
                });
            }
        }
        Ok(())
    }
}

/// A directory-format dump's manifest is one line of about 80 bytes per table and large object:
/// a million of them fit many times over.
const MANIFEST_LIMIT: u64 = 1 << 30;
