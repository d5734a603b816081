//! The dump on the target: where pg_restore reads it from (a custom-format stream, or a
//! directory dump fetched and checked first), who owns what in it, and pg_restore run over it as
//! the restore role with the stored bytes hashed on the way.

use std::io::Read;
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
        let copied = if name.ends_with(".zst") {
            stream::decompress(&mut hashed)
                .map_err(|source| stream::PumpError::Read { after: 0, source })
                .and_then(|mut d| stream::pump(&mut d, &mut sink, &mut buf, None))
        } else {
            stream::pump(&mut hashed, &mut sink, &mut buf, None)
        };
        copied.map_err(|e| FetchError::File {
            detail: format!("not what its manifest says: {e}"),
            file: key.clone(),
        })?;
        let (_, found) = hashed.finish();
        if found != sum {
            return Err(FetchError::Mismatch {
                what: key,
                expected: sum,
                found,
            }
            .into());
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
