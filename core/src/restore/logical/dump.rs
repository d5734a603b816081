//! The dump on the target: where pg_restore reads it from (a custom-format stream, or a
//! directory dump fetched and checked first), who owns what in it, and pg_restore run over it as
//! the restore role with the stored bytes hashed on the way.

use std::io::{Read, Seek};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{LogicalError, Options, Server};
use crate::checksum::is_sha256_hex;
use crate::conninfo::Connection;
use crate::files::beneath::ScratchDir;
use crate::files::error::IoError;
use crate::manifest::directory::{self, DIRECTORY_MANIFEST};
use crate::pgformat::dumpfacts::{self, Owners};
use crate::process;
use crate::progress::Progress;
use crate::restore::fetch::{read_checked, FetchError};
use crate::restore::offsite::MirrorBackup;
use crate::restore::scratch_server::feed;
use crate::restore::unprivileged::{not_restored, relevant_line, NotRestored, RestoreRole};
use crate::storage::{member_key, Storage};
use crate::stream::{self, Hash, Observe};

/// The sha256 the mirror records for `what` of backup `b`.
pub(super) fn recorded<'a>(
    b: &MirrorBackup,
    sha: Option<&'a str>,
    what: &str,
) -> Result<&'a str, FetchError> {
    sha.filter(|s| is_sha256_hex(s)).ok_or_else(|| {
        FetchError::Bad(format!(
            "backup {} has no sha256 for its {what} in the mirror",
            b.backup_id
        ))
    })
}

/// Reads a stored object whole (at most `limit` bytes), checked against `sha256`
/// (`fetch::read_checked`), decompressed when its key ends in `.zst`.
pub(super) fn read_small(
    storage: &dyn Storage,
    key: &str,
    sha256: &str,
    limit: u64,
) -> Result<Vec<u8>, FetchError> {
    let stored = read_checked(storage, key, sha256, limit)?;
    if !key.ends_with(".zst") {
        return Ok(stored);
    }
    let mut plain = Vec::new();
    stream::decompress(&stored[..])
        .and_then(|d| d.take(limit + 1).read_to_end(&mut plain))
        .map_err(|e| FetchError::Bad(format!("{key}: {e}")))?;
    Ok(plain)
}

/// How feeding a dump to pg_restore ended.
pub(super) enum Fed {
    /// Every stored byte was read: their sha256, and why they could not be decompressed if
    /// they could not (pg_restore may also have stopped reading early).
    Whole {
        sha256: String,
        unreadable: Option<String>,
    },
    /// The target could not be read.
    Unreadable(String),
}

/// Where pg_restore reads the dump from.
pub(super) enum Source {
    /// A custom-format stream from the target (zstd or not), checked against this sha256.
    Stream { key: String, sha256: String },
    /// A directory-format dump fetched (checked, decompressed) into a scratch directory.
    Directory(ScratchDir),
}

/// Fetches a directory-format dump: its manifest checked against the mirror, every file it
/// names checked against the manifest while it is decompressed into `work_dir`.
pub(super) fn fetch_directory(
    storage: &dyn Storage,
    b: &MirrorBackup,
    work_dir: &Path,
    bytes: &AtomicU64,
) -> Result<ScratchDir, LogicalError> {
    let sha = recorded(b, b.sha256.as_deref(), "manifest")?;
    let manifest_key = member_key(&b.key, Path::new(DIRECTORY_MANIFEST));
    let manifest = read_small(storage, &manifest_key, sha, 64 << 20)?;
    let manifest = String::from_utf8_lossy(&manifest).into_owned();
    let names = directory::parse(&manifest).map_err(|e| FetchError::Bad(e.to_string()))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let rel = format!(
        "backup-mgmt-dump-{}-{}-{nanos}",
        b.backup_id,
        std::process::id()
    );
    let scratch = ScratchDir::create(work_dir, Path::new(&rel))
        .map_err(|e| IoError::new("could not create a directory in", work_dir, e))?;
    let mut buf = vec![0u8; 1 << 20];
    for (sum, name) in names {
        let key = member_key(&b.key, Path::new(&name));
        let plain = name.strip_suffix(".zst").unwrap_or(&name);
        let out = scratch
            .create_file(plain)
            .map_err(|e| IoError::new("could not create", &scratch.path().join(plain), e))?;
        let mut hashed = Hash::new(storage.get(&key).map_err(FetchError::from)?);
        let mut sink = Observe::new(out, |c: &[u8]| {
            bytes.fetch_add(c.len() as u64, Ordering::Relaxed);
        });
        // Where a copy failed: writing lies with the work directory; reading, with the target
        // (while fetching) or with bytes that match the manifest yet do not decompress.
        let failed = |e: stream::PumpError, damaged: bool| match e {
            stream::PumpError::Write { source, .. } => {
                FetchError::from(IoError::new("could not write into", scratch.path(), source))
            }
            e if damaged => FetchError::Damaged {
                detail: format!("its bytes match its manifest but do not decompress: {e}"),
                file: key.clone(),
            },
            e => FetchError::File {
                detail: format!("could not be fetched: {e}"),
                file: key.clone(),
            },
        };
        let checked = |hashed: Hash<_>| {
            let (_, found) = hashed.finish();
            if found == sum {
                Ok(())
            } else {
                Err(FetchError::Mismatch {
                    what: key.clone(),
                    expected: sum.clone(),
                    found,
                })
            }
        };
        if name.ends_with(".zst") {
            // The stored bytes first, into a file with no name, and decompressed only once
            // their sha256 is the manifest's: a replaced member of a few kB of zstd may claim
            // terabytes, which would fill the work directory's disk before the mismatch showed.
            let mut stored = scratch
                .unnamed_file()
                .map_err(|e| IoError::new("could not create a file in", scratch.path(), e))?;
            stream::pump(&mut hashed, &mut stored, &mut buf, None).map_err(|e| failed(e, false))?;
            checked(hashed)?;
            stored
                .rewind()
                .map_err(|e| IoError::new("could not read back", scratch.path(), e))?;
            stream::decompress(stored)
                .map_err(|source| stream::PumpError::Read { after: 0, source })
                .and_then(|mut d| stream::pump(&mut d, &mut sink, &mut buf, None))
                .map_err(|e| failed(e, true))?;
        } else {
            // As many bytes written as stored: checked once they are all read.
            stream::pump(&mut hashed, &mut sink, &mut buf, None).map_err(|e| failed(e, false))?;
            checked(hashed)?;
        }
    }
    Ok(scratch)
}

/// Who owns what in the dump, read off its table of contents (the beginning of the stream, or
/// the directory's `toc.dat`).
pub(super) fn dump_owners(storage: &dyn Storage, source: &Source) -> Result<Owners, LogicalError> {
    let read = match source {
        Source::Stream { key, .. } => {
            let input = storage.get(key).map_err(FetchError::from)?;
            if key.ends_with(".zst") {
                let dec = stream::decompress(input)
                    .map_err(|e| FetchError::Bad(format!("{key}: {e}")))?;
                dumpfacts::read_owners(dec)
            } else {
                dumpfacts::read_owners(input)
            }
        }
        Source::Directory(dir) => std::fs::File::open(dir.path().join("toc.dat"))
            .map_err(|e| dumpfacts::Unavailable(format!("toc.dat: {e}")))
            .and_then(dumpfacts::read_owners),
    };
    read.map_err(|e| FetchError::Bad(format!("the dump's table of contents: {e}")).into())
}

/// pg_restore as the restore role; the objects it could not restore.  A dump that is not what
/// the mirror says fails as `Fetch`.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_pg_restore(
    storage: &dyn Storage,
    source: &Source,
    conn: &Connection,
    role: &RestoreRole,
    server: &Server,
    options: &Options,
    bytes: Arc<AtomicU64>,
    progress: &Progress,
) -> Result<Vec<NotRestored>, LogicalError> {
    // Not --exit-on-error: what needs a superuser is skipped and named; --verbose names the
    // object of every error.
    let mut argv = vec![
        server.bindir.join("pg_restore").into_os_string(),
        "--no-password".into(),
        "--verbose".into(),
        format!("--dbname={}", conn.conninfo(Some(&options.database))).into(),
    ];
    if !options.tablespaces {
        argv.push("--no-tablespaces".into());
    }
    let mut fed = None;
    let input = match source {
        Source::Directory(dir) => {
            argv.push(format!("--jobs={}", options.jobs.max(1)).into());
            argv.push(dir.path().as_os_str().to_owned());
            process::Input::Nothing
        }
        Source::Stream { key, sha256 } => {
            let input = storage.get(key).map_err(FetchError::from)?;
            let zst = key.ends_with(".zst");
            let (tx, rx) = std::sync::mpsc::channel();
            fed = Some((key.clone(), sha256.clone(), rx));
            process::Input::Fed(Box::new(move |sink| {
                let mut hashed = Hash::new(input);
                let counted = Observe::new(sink, |c: &[u8]| {
                    bytes.fetch_add(c.len() as u64, Ordering::Relaxed);
                });
                let fed = feed(&mut hashed, zst, counted);
                // Whatever stopped the feeding, the rest of the stored bytes are hashed too, so
                // that a damaged dump is told apart from a pg_restore that gave up.
                let outcome = match std::io::copy(&mut hashed, &mut std::io::sink()) {
                    Err(e) => Fed::Unreadable(e.to_string()),
                    Ok(_) => Fed::Whole {
                        sha256: hashed.finish().1,
                        unreadable: match fed {
                            Err(e @ stream::PumpError::Read { .. }) => Some(e.to_string()),
                            _ => None,
                        },
                    },
                };
                let _ = tx.send(outcome);
                Ok(())
            }))
        }
    };
    let mut cmd = process::command(&argv);
    cmd.env("PGPASSWORD", &role.password);
    let ran = process::run_collecting_lines(cmd, input, Some(relevant_line), progress)
        .map_err(|e| LogicalError::Archive(format!("pg_restore: {e}")))?;
    if let Some((key, expected, rx)) = fed {
        match rx.recv() {
            Ok(Fed::Whole { sha256: found, .. }) if found != expected => {
                return Err(FetchError::Mismatch {
                    what: key,
                    expected,
                    found,
                }
                .into())
            }
            Ok(Fed::Unreadable(detail))
            | Ok(Fed::Whole {
                unreadable: Some(detail),
                ..
            }) => return Err(FetchError::File { detail, file: key }.into()),
            // pg_restore stopped reading: its own complaint says why (below).
            Ok(Fed::Whole { .. }) | Err(_) => {}
        }
    }
    let complaints = not_restored(&ran.stderr);
    // pg_restore that went through to the end with errors says so; one that stopped (the
    // connection lost, a damaged archive) does not, and its database is not a restore.
    if !ran.success && !ran.stderr.contains("errors ignored on restore") {
        return Err(LogicalError::Archive(format!(
            "pg_restore stopped ({}): {}",
            ran.status,
            process::tail(&ran.stderr)
        )));
    }
    if !ran.success && complaints.is_empty() {
        return Err(LogicalError::Archive(format!(
            "pg_restore failed ({}): {}",
            ran.status,
            process::tail(&ran.stderr)
        )));
    }
    Ok(complaints)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::hex;
    use crate::storage::filesystem::FilesystemTarget;
    use sha2::{Digest, Sha256};
    use std::fs;

    fn sha(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    /// A member replaced on the target by a zstd bomb (a few kB that decompress to 64 MB) is
    /// refused by its sha256 before a byte of it is decompressed; the genuine one restores.
    #[test]
    fn a_directory_dump_member_is_decompressed_only_once_its_bytes_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let dump = tmp.path().join("t/7/postgres/dump");
        fs::create_dir_all(&dump).unwrap();
        let zst = |plain: &[u8]| zstd::encode_all(plain, 3).unwrap();
        let data = zst(b"1\tone\n2\ttwo\n\\.\n");
        fs::write(dump.join("3456.dat.zst"), &data).unwrap();
        fs::write(dump.join("toc.dat"), b"toc").unwrap();
        let manifest = directory::render([
            (sha(&data).as_str(), "3456.dat.zst"),
            (sha(b"toc").as_str(), "toc.dat"),
        ]);
        fs::write(dump.join(DIRECTORY_MANIFEST), &manifest).unwrap();
        let b: MirrorBackup = serde_json::from_value(serde_json::json!({
            "backup_id": 9, "database_name": "postgres", "backup_type": "full",
            "backup_method": "pg_dump_directory", "key": "7/postgres/dump",
            "sha256": sha(manifest.as_bytes()),
        }))
        .unwrap();
        let target = FilesystemTarget {
            dir: tmp.path().join("t"),
            rate: None,
        };
        let work = tmp.path().join("work");
        fs::create_dir(&work).unwrap();

        let bytes = AtomicU64::new(0);
        let fetched = fetch_directory(&target, &b, &work, &bytes).unwrap();
        assert_eq!(
            fs::read(fetched.path().join("3456.dat")).unwrap(),
            b"1\tone\n2\ttwo\n\\.\n"
        );
        assert_eq!(fs::read(fetched.path().join("toc.dat")).unwrap(), b"toc");
        drop(fetched);

        let bomb = zst(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 64 << 10);
        fs::write(dump.join("3456.dat.zst"), &bomb).unwrap();
        let bytes = AtomicU64::new(0);
        let e = fetch_directory(&target, &b, &work, &bytes)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sha256") && e.contains("3456.dat.zst"), "{e}");
        assert_eq!(
            bytes.load(Ordering::Relaxed),
            0,
            "decompressed before checked"
        );
        assert_eq!(fs::read_dir(&work).unwrap().count(), 0, "left behind");
    }
}
