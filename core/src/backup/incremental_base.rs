//! What a block-level incremental `pg_basebackup` (PostgreSQL 17+) builds on: the parent's
//! stored tar, and the `backup_manifest` inside it, which pg_basebackup sends the server so that
//! it answers with the blocks changed since (from its WAL summaries).  The manifest is read out
//! of the tar in the pass that checks the tar against its recorded sha256, and handed over on
//! pg_basebackup's stdin, never through a file.

use std::fs::File;
use std::io;
use std::path::PathBuf;

use super::{BackupError, Damage};
use crate::files::open::{open_regular, OpenError};
use crate::pgformat::tar::Capture;
use crate::progress::Progress;
use crate::stream::{self, Hash};

/// Read size of the parent's tar.
const CHUNK: usize = 1 << 20;

/// The backup a block-level incremental `pg_basebackup` builds on: its stored tar, whose
/// `backup_manifest` (the last member) pg_basebackup sends the server, which answers with the
/// blocks changed since, read from its WAL summaries.
#[derive(Debug, Clone)]
pub struct ParentTar {
    pub id: i64,
    pub path: PathBuf,
    /// Its recorded sha256: the tar is checked against it in the pass that reads the manifest,
    /// so an incremental is never built on a damaged or replaced parent.
    pub sha256: String,
    pub zstd: bool,
}

/// Where pg_basebackup reads the parent's manifest: its stdin, fed from memory, so that no file
/// of it is left anywhere if the backup is interrupted.
pub(super) const MANIFEST_FROM_STDIN: &str = "--incremental=/dev/stdin";

/// The tar member pg_basebackup appends its backup manifest as.
const MANIFEST_MEMBER: &str = "backup_manifest";

/// The `backup_manifest` inside a parent's stored tar, read in one pass that also checks the
/// stored bytes against the parent's recorded sha256 (stages: sha256 of the file as stored, then
/// zstd when it is compressed, then the tar parser keeping that one member).
pub fn parent_manifest(parent: &ParentTar, progress: &Progress) -> Result<Vec<u8>, BackupError> {
    let refuse = |damage: Damage, detail: String| BackupError::DamagedParent {
        id: parent.id,
        path: parent.path.clone(),
        damage,
        detail,
    };
    let mut file = open_regular(&parent.path).map_err(|e| match e {
        OpenError::Missing(_) => refuse(Damage::Missing, format!("it is missing ({e})")),
        _ => refuse(Damage::Unreadable, format!("it cannot be opened ({e})")),
    })?;
    let mut buf = vec![0u8; CHUNK];
    let write_err = |source| stream::PumpError::Write { after: 0, source };
    let read =
        |file: &mut File, buf: &mut [u8]| -> Result<(Option<Vec<u8>>, String), stream::PumpError> {
            let cancel = Some(progress.cancel_flag());
            let tar = Capture::new(MANIFEST_MEMBER);
            let (tar, sha) = if parent.zstd {
                let mut chain = Hash::new(stream::decompress_into(tar).map_err(write_err)?);
                stream::pump(file, &mut chain, buf, cancel)?;
                let (mut dec, sha) = chain.finish();
                io::Write::flush(&mut dec).map_err(write_err)?;
                (dec.into_inner(), sha)
            } else {
                let mut chain = Hash::new(tar);
                stream::pump(file, &mut chain, buf, cancel)?;
                chain.finish()
            };
            let found = tar
                .finish()
                .map_err(|e| write_err(io::Error::new(io::ErrorKind::InvalidData, e)))?;
            Ok((found, sha))
        };
    let (found, sha) = match read(&mut file, &mut buf) {
        Ok(r) => r,
        Err(stream::PumpError::Cancelled) => {
            return Err(BackupError::Cancelled("reading the parent backup".into()))
        }
        // A stream that does not decompress or parse: the stored bytes say whether they are the
        // recorded ones.
        Err(e) => {
            let rehashed = io::Seek::rewind(&mut file)
                .map_err(|source| stream::PumpError::Read { after: 0, source })
                .and_then(|_| stream::hash_all(&mut file, &mut buf, None, None));
            return Err(match rehashed {
                Ok((_, sha)) if sha != parent.sha256 => refuse(
                    Damage::Changed,
                    format!("its sha256 is {sha}, not the recorded {}", parent.sha256),
                ),
                _ => refuse(Damage::Unreadable, format!("reading it: {e}")),
            });
        }
    };
    if sha != parent.sha256 {
        return Err(refuse(
            Damage::Changed,
            format!("its sha256 is {sha}, not the recorded {}", parent.sha256),
        ));
    }
    found.ok_or_else(|| refuse(Damage::Changed, format!("it holds no {MANIFEST_MEMBER}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::hex;
    use sha2::{Digest, Sha256};
    use std::fs;
    use std::path::Path;
    use std::process::Command;

    /// A tar the way pg_basebackup writes one, by the system's tar, with a manifest last.
    fn parent_tar(dir: &Path, zstd: bool) -> ParentTar {
        parent_tar_of(dir, zstd, &["base", "backup_manifest"])
    }

    fn parent_tar_of(dir: &Path, zstd: bool, members: &[&str]) -> ParentTar {
        let src = dir.join("src");
        fs::create_dir_all(src.join("base/1")).unwrap();
        fs::write(src.join("base/1/1259"), vec![3u8; 100_000]).unwrap();
        fs::write(src.join("backup_manifest"), b"{\"manifest\": true}\n").unwrap();
        let tar = dir.join("parent.tar");
        let ok = Command::new("/bin/tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&src)
            .args(members)
            .status()
            .unwrap();
        assert!(ok.success());
        let mut bytes = fs::read(&tar).unwrap();
        let path = if zstd {
            bytes = zstd::encode_all(&bytes[..], 3).unwrap();
            let p = dir.join("parent.tar.zst");
            fs::write(&p, &bytes).unwrap();
            p
        } else {
            tar
        };
        ParentTar {
            id: 7,
            path,
            sha256: hex(&Sha256::digest(&bytes)),
            zstd,
        }
    }

    #[test]
    fn the_parents_manifest_is_read_only_from_the_recorded_bytes() {
        let progress = Progress::default();
        for zstd in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let parent = parent_tar(dir.path(), zstd);
            assert_eq!(
                parent_manifest(&parent, &progress).unwrap(),
                b"{\"manifest\": true}\n"
            );
            // Another sha256 on record (the file was replaced or damaged): refused, by id.
            let other = ParentTar {
                sha256: "f".repeat(64),
                ..parent.clone()
            };
            let err = parent_manifest(&other, &progress).unwrap_err().to_string();
            assert!(
                err.contains("parent backup 7") && err.contains("sha256"),
                "{err}"
            );
            // Bytes flipped in the stored file (inside the zstd frame, which then fails to
            // decompress): reported as a changed parent, by its sha256.
            let mut bytes = fs::read(&parent.path).unwrap();
            let at = bytes.len() / 2;
            bytes[at] ^= 0x10;
            let damaged = dir.path().join("damaged");
            fs::write(&damaged, &bytes).unwrap();
            let err = parent_manifest(
                &ParentTar {
                    path: damaged,
                    ..parent.clone()
                },
                &progress,
            )
            .unwrap_err();
            assert!(
                matches!(
                    &err,
                    BackupError::DamagedParent {
                        damage: Damage::Changed,
                        id: 7,
                        ..
                    }
                ),
                "{err}"
            );
            // A missing one.
            let err = parent_manifest(
                &ParentTar {
                    path: dir.path().join("gone"),
                    ..parent.clone()
                },
                &progress,
            )
            .unwrap_err();
            assert!(
                matches!(
                    &err,
                    BackupError::DamagedParent {
                        damage: Damage::Missing,
                        ..
                    }
                ),
                "{err}"
            );
            // A symlink in its place is not followed.
            let link = dir.path().join("link");
            std::os::unix::fs::symlink(&parent.path, &link).unwrap();
            let linked = ParentTar {
                path: link,
                ..parent.clone()
            };
            assert!(parent_manifest(&linked, &progress).is_err());
        }
        // A tar without a manifest.
        let dir = tempfile::tempdir().unwrap();
        let parent = parent_tar_of(dir.path(), false, &["base"]);
        let err = parent_manifest(&parent, &progress).unwrap_err().to_string();
        assert!(err.contains("holds no backup_manifest"), "{err}");
        // One cut short.
        let bytes = fs::read(&parent.path).unwrap();
        fs::write(&parent.path, &bytes[..5000]).unwrap();
        let cut = ParentTar {
            sha256: hex(&Sha256::digest(&bytes[..5000])),
            ..parent
        };
        let err = parent_manifest(&cut, &progress).unwrap_err().to_string();
        assert!(err.contains("ended inside a member"), "{err}");
    }
}
