//! Restoring from an off-site target with no host and no catalog: a native chain fetched file
//! by file into a new data directory (each file decompressed and checked against the chain
//! manifest's sha256 as it is written, on several threads), the recovery settings that make
//! PostgreSQL fetch the rest of the WAL through `wal-fetch`, and `wal-fetch` itself (one file,
//! checked against the mirror's sha256 before PostgreSQL sees it).

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::materialize::{
    materialize_delta, materialize_from, tablespace_oid, Delta, Writers, CONTROL, CONTROL_HELD,
};
use super::offsite::{Choice, Goal, Mirror, MirrorWal};
use super::recipe::conf_quote;
pub use super::recipe::sh_quote;
use super::recovery_conf::{self, recovery_settings};
use super::remote_files::RemoteHolders;
use crate::checksum::{hex, is_sha256_hex};
use crate::files::direct::{Measured, Pace, Writes};
use crate::files::durable::{self, DurableFile, Install, Temp};
use crate::files::error::IoError;
use crate::manifest::native::{Manifest, FILES_MANIFEST};
use crate::pgformat::datadir::{POSTMASTER_OPTS, POSTMASTER_PID, RECOVERY_SIGNAL, STANDBY_SIGNAL};
use crate::progress::Counters;
use crate::storage::{member_key, Storage, StorageError};
use crate::stream::{self, Hash};
use crate::timeline::HISTORY_LIMIT;
use crate::wal;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("{what}: sha256 {found}, the mirror says {expected}")]
    Mismatch {
        what: String,
        expected: String,
        found: String,
    },
    #[error("{0}")]
    Bad(String),
    #[error("WAL file {0} is not in the target's mirror")]
    NotOnTarget(String),
    /// What was asked cannot be done to this destination (it exists, it is not a data
    /// directory, its server runs): nothing was touched.
    #[error("{0}")]
    Refused(String),
    #[error("{detail} ({file})")]
    File { detail: String, file: String },
    /// A stored file that is not what the backup's manifest says (its size, its sha256, bytes
    /// that do not decompress): the target's copy is damaged.
    #[error("{detail} ({file})")]
    Damaged { detail: String, file: String },
}

/// Reads a whole (small) object, at most `limit` bytes, and checks its sha256 (a larger one is
/// cut short, and fails the check).
pub(crate) fn read_checked(
    storage: &dyn Storage,
    key: &str,
    expected: &str,
    limit: u64,
) -> Result<Vec<u8>, FetchError> {
    let mut bytes = Vec::new();
    storage
        .get(key)?
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| IoError::new("could not read", Path::new(key), e))?;
    let found = hex(&Sha256::digest(&bytes));
    if found != expected {
        return Err(FetchError::Mismatch {
            what: key.to_owned(),
            expected: expected.to_owned(),
            found,
        });
    }
    Ok(bytes)
}

/// What a restore wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Restored {
    pub backup_id: i64,
    pub data_directory: PathBuf,
    pub files: usize,
    pub bytes: u64,
    pub wal_segments: usize,
    /// For a delta restore: files kept, fetched, removed.
    pub delta: Option<Delta>,
    /// Which way large files were written, when a file measured it (`files::pace`).
    pub writes: Option<Measured>,
}

/// The sha256 the mirror records for a backup (a native backup's: its chain manifest's).
pub(super) fn recorded_sha256(b: &super::offsite::MirrorBackup) -> Result<&str, FetchError> {
    b.sha256
        .as_deref()
        .filter(|s| is_sha256_hex(s))
        .ok_or_else(|| {
            FetchError::Bad(format!(
                "backup {} has no sha256 in the mirror",
                b.backup_id
            ))
        })
}

/// The chosen backup's chain manifest, read from the target and checked against the mirror's
/// sha256 (the catalog's checksum of a native backup is its manifest's).
pub fn chain_manifest(storage: &dyn Storage, choice: &Choice) -> Result<Manifest, FetchError> {
    let b = &choice.backup;
    let expected = recorded_sha256(b)?;
    let text = read_checked(
        storage,
        &member_key(&b.key, Path::new(FILES_MANIFEST)),
        expected,
        1 << 30,
    )?;
    let text =
        String::from_utf8(text).map_err(|_| FetchError::Bad("chain manifest not UTF-8".into()))?;
    let manifest = Manifest::parse(&text).map_err(|e| FetchError::Bad(e.to_string()))?;
    if manifest.backup_id != b.backup_id {
        return Err(FetchError::Bad(format!(
            "the chain manifest under {} is backup {}'s, not {}'s",
            b.key, manifest.backup_id, b.backup_id
        )));
    }
    Ok(manifest)
}

/// How a restore treats its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Into {
    /// A new directory (it must not exist).
    New,
    /// The data directory of a stopped server: matching files kept, the rest fetched, extra
    /// files removed.
    Delta,
}

/// Where a native restore writes: the data directory, the directory tablespaces go to (each
/// as `<oid>`), and whether the data directory is new or brought back by delta.
pub struct Destination<'a> {
    pub data: &'a Path,
    pub tablespaces: &'a Path,
    pub into: Into,
    /// Past the page cache or not (`Writes::Direct` unless the operator said otherwise).
    pub writes: Writes,
    /// When past it: the restore's measurement of which way the device takes faster, which
    /// its large files follow (`files::direct::Pace`); the caller reads what it found.
    pub pace: Option<&'a Arc<Pace>>,
}

/// Why a new restore must not write to `dest` and `tablespaces`, if it must not: the data
/// directory exists, or a tablespace's directory does (one already there may be a live
/// cluster's tablespace, which the restore would write into).
pub fn new_refusal(dest: &Path, tablespaces: &Path, manifest: &Manifest) -> Option<String> {
    if fs::symlink_metadata(dest).is_ok() {
        return Some(format!(
            "\"{}\" exists; restore into a new directory (or use --delta)",
            dest.display()
        ));
    }
    manifest
        .dirs
        .iter()
        .filter_map(|d| tablespace_oid(d))
        .map(|oid| tablespaces.join(oid))
        .find(|place| fs::symlink_metadata(place).is_ok())
        .map(|taken| {
            format!(
                "the tablespace directory \"{}\" exists; restore tablespaces into new \
                 directories (name another place with --tablespaces)",
                taken.display()
            )
        })
}

/// Why a directory is not one a delta restore may rewrite, or None when it is: a PostgreSQL
/// data directory (PG_VERSION, global/pg_control) whose server is not running.
pub fn delta_refusal(dest: &Path, sysid: i64) -> Option<String> {
    let shown = dest.display();
    // A delta restore that did not finish left the directory's control file aside (the
    // directory cannot start until one finishes): it still says whose cluster this is.  Never
    // through a symlink: what is read and later moved must be the directory's own.
    let regular = |p: &Path| fs::symlink_metadata(p).map(|m| m.file_type());
    let global_dir = regular(&dest.join("global")).is_ok_and(|t| t.is_dir());
    let control = match regular(&dest.join(CONTROL)) {
        Ok(t) if t.is_file() => Some(dest.join(CONTROL)),
        Ok(_) => {
            return Some(format!(
            "\"{shown}\": {CONTROL} is not a regular file; --delta rewrites only a data directory"
        ))
        }
        Err(_) => regular(&dest.join(CONTROL_HELD))
            .is_ok_and(|t| t.is_file())
            .then(|| dest.join(CONTROL_HELD)),
    };
    let Some(control) = control.filter(|_| global_dir && dest.join("PG_VERSION").is_file()) else {
        return Some(format!(
            "\"{shown}\" is not a PostgreSQL data directory (no PG_VERSION or {CONTROL}); --delta rewrites only a data directory"
        ));
    };
    // The first field of pg_control is the cluster's system identifier: a delta restore of
    // another cluster's backup would empty this one.
    let mut head = [0u8; 8];
    let read = crate::files::open::open_regular(&control)
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head));
    if read.is_err() || i64::from_le_bytes(head) != sysid {
        return Some(format!(
            "\"{shown}\" is the data directory of cluster {}, not of cluster {sysid} whose backup this is",
            i64::from_le_bytes(head)
        ));
    }
    if dest.join("postmaster.pid").exists() {
        return Some(format!(
            "\"{shown}\" has a postmaster.pid: stop its server first (a delta restore never rewrites a running cluster)"
        ));
    }
    None
}

/// Restores the chosen native backup (its `manifest` from `chain_manifest`) into `dest`,
/// tablespaces into `tablespaces/<oid>`: every file checked as it is written, `threads` at a
/// time, every file durable; the control file staged, for `materialize::install_control` once
/// the recovery settings are written.
pub fn restore_native(
    storage: &dyn Storage,
    choice: &Choice,
    manifest: &Manifest,
    to: &Destination<'_>,
    threads: usize,
    counters: &Counters<'_>,
) -> Result<Restored, FetchError> {
    let (dest, tablespaces, into) = (to.data, to.tablespaces, to.into);
    let writers = Writers {
        threads,
        writes: to.writes,
        pace: to.pace,
    };
    let b = &choice.backup;
    let keys: HashMap<i64, String> = choice
        .chain
        .iter()
        .map(|c| (c.backup_id, c.key.clone()))
        .collect();
    let source = RemoteHolders::new(storage, keys);
    let failed = |r: crate::verify::Report| {
        use crate::verify::Reason::*;
        let (detail, file) = (
            r.detail.unwrap_or_default(),
            r.failing_file.unwrap_or_default(),
        );
        match r.reason {
            Some(SizeMismatch | ChecksumMismatch | ManifestMismatch | Corrupt | Truncated) => {
                FetchError::Damaged { detail, file }
            }
            _ => FetchError::File { detail, file },
        }
    };
    let delta = match into {
        Into::New => {
            if let Some(why) = new_refusal(dest, tablespaces, manifest) {
                return Err(FetchError::Refused(why));
            }
            materialize_from(&source, manifest, dest, tablespaces, writers, counters)
                .map_err(failed)?;
            None
        }
        Into::Delta => {
            if let Some(why) = delta_refusal(dest, choice.backup_sysid) {
                return Err(FetchError::Refused(why));
            }
            let held = |mut r: crate::verify::Report| {
                if let Some(hint) = crate::restore::materialize::held_hint(dest, true) {
                    let detail = r.detail.take().unwrap_or_default();
                    r.detail = Some(format!("{detail}; {hint}"));
                }
                failed(r)
            };
            Some(
                materialize_delta(&source, manifest, dest, tablespaces, writers, counters)
                    .map_err(held)?,
            )
        }
    };
    // Every file and directory is durable: `materialize` synced them before staging the
    // control file.
    Ok(Restored {
        backup_id: b.backup_id,
        data_directory: dest.to_path_buf(),
        files: manifest.files.len(),
        bytes: manifest.logical_bytes(),
        wal_segments: choice.wal.len(),
        delta,
        writes: to.pace.and_then(|p| p.measured()),
    })
}

/// Appends the recovery settings to `dest/postgresql.auto.conf` and creates
/// `recovery.signal`: `restore_command` is `fetch_command` (a shell command line, every word
/// quoted by the caller, ending in `%f %p`), the target from `goal` on `timeline` (None: the
/// backup's own), then promotion.
pub fn write_recovery_settings(
    dest: &Path,
    fetch_command: &str,
    goal: &Goal,
    timeline: Option<u32>,
    pg_version: Option<i64>,
) -> Result<(), FetchError> {
    if fetch_command.contains(['\n', '\r', '\0']) {
        return Err(FetchError::Bad(
            "the restore command must be one line".into(),
        ));
    }
    let target = match goal {
        Goal::EndOfBackup => "recovery_target = 'immediate'".to_owned(),
        Goal::Latest => String::new(),
        Goal::Time(t) => format!(
            "recovery_target_time = {}",
            conf_quote(&t.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string())
        ),
        Goal::Lsn(l) => format!("recovery_target_lsn = {}", conf_quote(&l.to_string())),
    };
    // The WAL was checked along the path to `timeline` (`offsite::choose`).
    let text = recovery_settings(
        "backup-mgmt restore",
        fetch_command,
        (!target.is_empty()).then_some(target.as_str()),
        timeline,
        pg_version,
    );
    recovery_conf::append_to_auto_conf(dest, &text)?;
    // A backup of a standby (or a forged one) brings its `standby.signal`, which outranks
    // `recovery.signal`: the server would stay a standby, so a `--latest` restore would never
    // promote (and one to a target not in the WAL would wait for it forever instead of
    // stopping).  A `recovery.signal` it brought is replaced by ours.  Both go before ours is
    // written; the directory is fsynced when the control file goes in (`install_control`).
    // A `postmaster.opts` (or `postmaster.pid`) in a forged backup goes too: `pg_ctl restart`
    // runs whatever program the former names.
    for name in [
        STANDBY_SIGNAL,
        RECOVERY_SIGNAL,
        POSTMASTER_OPTS,
        POSTMASTER_PID,
    ] {
        let signal = dest.join(name);
        match std::fs::remove_file(&signal) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(IoError::new("could not remove", &signal, e).into()),
        }
    }
    durable::write_new(&dest.join(RECOVERY_SIGNAL), b"")?;
    Ok(())
}

/// Fetches WAL file `name` for `restore_command` into `dest` (PostgreSQL's `%p`): the object
/// the mirror names, its stored bytes checked against the mirror's sha256 before the file is
/// put in place (temporary name, fsync, rename), decompressed when stored as `.zst`.  A name the
/// mirror does not list is `NotOnTarget` (PostgreSQL asks for files that never existed, such as
/// the next timeline's history).
/// Whether a fetched WAL file is fsynced: the spool's are (they are served later, after a
/// crash perhaps); `%p` is not (recovery reads it at once and asks again after a crash).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    Durable,
    AtomicOnly,
}

pub fn wal_fetch(
    storage: &dyn Storage,
    mirror: &Mirror,
    name: &str,
    dest: &Path,
    sync: Sync,
) -> Result<u64, FetchError> {
    if !wal::is_archivable_name(name) {
        return Err(FetchError::Refused(format!(
            "{name:?} is not a WAL file name"
        )));
    }
    let w: &MirrorWal = mirror
        .wal_file(name)
        .ok_or_else(|| FetchError::NotOnTarget(name.to_owned()))?;
    if !is_sha256_hex(&w.sha256) {
        return Err(FetchError::Bad(format!(
            "the mirror's sha256 of {name} is malformed"
        )));
    }
    let zst = w.key.ends_with(".zst");
    let mut out = DurableFile::create(dest, Temp::Suffix)?;
    // The stored bytes are hashed as they arrive; decompression writes the segment.  No WAL
    // file is larger than a segment (a history file than its limit): bytes that would be are
    // not what the mirror says, and are refused before they fill pg_wal or the spool.
    let mut input = storage.get(&w.key)?;
    let mut buf = vec![0u8; 1 << 20];
    let limit = mirror.segment_size().bytes().max(HISTORY_LIMIT);
    let written = {
        let file = stream::AtMost::new(out.file(), limit);
        let sink: Box<dyn Write> = if zst {
            Box::new(stream::decompress_into(file).map_err(|e| IoError::new("zstd", dest, e))?)
        } else {
            Box::new(file)
        };
        let mut hashed = Hash::new(sink);
        let n = stream::pump(&mut input, &mut hashed, &mut buf, None).map_err(|e| {
            FetchError::File {
                detail: e.to_string(),
                file: w.key.clone(),
            }
        })?;
        let (mut sink, sum) = hashed.finish();
        sink.flush()
            .map_err(|e| IoError::new("could not write", dest, e))?;
        if sum != w.sha256 {
            return Err(FetchError::Mismatch {
                what: w.key.clone(),
                expected: w.sha256.clone(),
                found: sum,
            });
        }
        n
    };
    match sync {
        Sync::Durable => out.commit(Install::Replace)?,
        Sync::AtomicOnly => out.commit_atomically(Install::Replace)?,
    }
    Ok(written)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::restore::offsite::FORMAT;
    use crate::storage::filesystem::FilesystemTarget;

    /// A mirror listing one WAL file (other tests of fetching add theirs).
    pub(crate) fn mirror_with(name: &str, key: &str, sha256: String) -> Mirror {
        Mirror {
            format: FORMAT.into(),
            written_at: "2026-12-04T10:00:00+00:00".into(),
            system_identifier: 7,
            pg_version: None,
            wal_segment_size: None,
            target: None,
            backups: vec![],
            wal_files: vec![MirrorWal {
                name: name.into(),
                key: key.into(),
                size: 5,
                sha256,
                archived_at: "2026-12-04T10:00:00+00:00".into(),
            }],
            wal_parts: vec![],
            wal_gaps: vec![],
        }
    }

    #[test]
    fn wal_fetch_checks_the_bytes_before_postgres_sees_them() {
        let tmp = tempfile::tempdir().unwrap();
        let target = FilesystemTarget {
            dir: tmp.path().join("t"),
            rate: None,
        };
        let name = "000000010000000000000003";
        let key = format!("7/.wal/{name}.zst");
        let segment = b"WAL bytes".repeat(1000);
        let stored = zstd::encode_all(&segment[..], 3).unwrap();
        std::fs::create_dir_all(tmp.path().join("t/7/.wal")).unwrap();
        std::fs::write(tmp.path().join("t").join(&key), &stored).unwrap();
        let good = mirror_with(name, &key, hex(&Sha256::digest(&stored)));
        let dest = tmp.path().join("pg_wal_RECOVERYXLOG");
        wal_fetch(&target, &good, name, &dest, Sync::AtomicOnly).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), segment);

        // Another object under the key (a tampered or damaged copy): refused, nothing written.
        let dest2 = tmp.path().join("other");
        let bad = mirror_with(name, &key, "0".repeat(64));
        assert!(matches!(
            wal_fetch(&target, &bad, name, &dest2, Sync::Durable),
            Err(FetchError::Mismatch { .. })
        ));
        assert!(!dest2.exists());
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            2,
            "a temporary file was left"
        );
        // A file the mirror does not list, and a name that is not a WAL file name.
        assert!(matches!(
            wal_fetch(
                &target,
                &good,
                "000000010000000000000004",
                &dest2,
                Sync::Durable
            ),
            Err(FetchError::NotOnTarget(_))
        ));
        assert!(wal_fetch(&target, &good, "../../etc/passwd", &dest2, Sync::Durable).is_err());

        // The object replaced by a few kB of zstd that claim 64 MB (more than a segment of the
        // mirror's 16 MB): refused once past a segment, before its sha256 is known, and not
        // written out past that.
        let bomb = zstd::encode_all(&vec![0u8; 64 << 20][..], 19).unwrap();
        assert!(bomb.len() < 64 << 10, "{}", bomb.len());
        std::fs::write(tmp.path().join("t").join(&key), &bomb).unwrap();
        let claimed = mirror_with(name, &key, hex(&Sha256::digest(&bomb)));
        let e = wal_fetch(&target, &claimed, name, &dest2, Sync::Durable).unwrap_err();
        assert!(
            matches!(&e, FetchError::File { detail, .. } if detail.contains("more than 16777216 bytes")),
            "{e}"
        );
        assert!(!dest2.exists());
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 2);
        // Stored uncompressed, likewise.
        let key = format!("7/.wal/{name}");
        let big = vec![1u8; (16 << 20) + 1];
        std::fs::write(tmp.path().join("t").join(&key), &big).unwrap();
        let claimed = mirror_with(name, &key, hex(&Sha256::digest(&big)));
        assert!(matches!(
            wal_fetch(&target, &claimed, name, &dest2, Sync::Durable),
            Err(FetchError::File { .. })
        ));
        // A whole segment is no more than a segment.
        let whole = vec![1u8; 16 << 20];
        std::fs::write(tmp.path().join("t").join(&key), &whole).unwrap();
        let claimed = mirror_with(name, &key, hex(&Sha256::digest(&whole)));
        wal_fetch(&target, &claimed, name, &dest2, Sync::Durable).unwrap();
        assert_eq!(std::fs::metadata(&dest2).unwrap().len(), 16 << 20);
    }

    #[test]
    fn keys_from_a_mirror_cannot_leave_the_target() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("t/7")).unwrap();
        std::fs::write(tmp.path().join("secret"), b"outside").unwrap();
        let target = FilesystemTarget {
            dir: tmp.path().join("t"),
            rate: None,
        };
        for key in ["../secret", "7/../../secret", "/secret", "7//x", ""] {
            assert!(target.get(key).is_err(), "{key}");
        }
        // A symlink planted on the target is not followed.
        std::os::unix::fs::symlink(tmp.path().join("secret"), tmp.path().join("t/7/link")).unwrap();
        assert!(target.get("7/link").is_err());
        std::os::unix::fs::symlink(tmp.path(), tmp.path().join("t/up")).unwrap();
        assert!(target.get("up/secret").is_err());
        // The mirror pointing a WAL file at such a key gets nothing either.
        let m = mirror_with(
            "000000010000000000000003",
            "7/link",
            hex(&Sha256::digest(b"outside")),
        );
        assert!(wal_fetch(
            &target,
            &m,
            "000000010000000000000003",
            &tmp.path().join("d"),
            Sync::Durable
        )
        .is_err());
    }

    #[test]
    fn a_new_restore_refuses_an_existing_data_or_tablespace_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let (dest, spaces) = (tmp.path().join("data"), tmp.path().join("data.tablespaces"));
        let manifest = Manifest {
            backup_id: 1,
            parent: None,
            dirs: [
                "base",
                "pg_tblspc",
                "pg_tblspc/16384",
                "pg_tblspc/16384/PG_15_1",
            ]
            .map(String::from)
            .to_vec(),
            files: vec![],
        };
        assert_eq!(new_refusal(&dest, &spaces, &manifest), None);
        // The container may exist (several restores share one); a tablespace's own may not.
        std::fs::create_dir_all(spaces.join("99")).unwrap();
        assert_eq!(new_refusal(&dest, &spaces, &manifest), None);
        std::os::unix::fs::symlink(tmp.path(), spaces.join("16384")).unwrap();
        assert!(new_refusal(&dest, &spaces, &manifest)
            .unwrap()
            .contains("16384\" exists"));
        std::fs::create_dir(&dest).unwrap();
        assert!(new_refusal(&dest, &spaces, &manifest)
            .unwrap()
            .contains("--delta"));
    }

    #[test]
    fn delta_refuses_what_is_not_this_clusters_stopped_data_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        assert!(delta_refusal(d, 7)
            .unwrap()
            .contains("not a PostgreSQL data directory"));
        std::fs::create_dir(d.join("global")).unwrap();
        std::fs::write(d.join("PG_VERSION"), b"15\n").unwrap();
        let mut control = 8i64.to_le_bytes().to_vec();
        control.extend_from_slice(&[0u8; 100]);
        std::fs::write(d.join("global/pg_control"), &control).unwrap();
        assert!(delta_refusal(d, 7)
            .unwrap()
            .contains("cluster 8, not of cluster 7"));
        assert_eq!(delta_refusal(d, 8), None);
        // A global directory that is a link elsewhere is not this directory's own.
        let other = tmp.path().join("other-global");
        std::fs::rename(d.join("global"), &other).unwrap();
        std::os::unix::fs::symlink(&other, d.join("global")).unwrap();
        assert!(delta_refusal(d, 8)
            .unwrap()
            .contains("not a PostgreSQL data directory"));
        std::fs::remove_file(d.join("global")).unwrap();
        std::fs::rename(&other, d.join("global")).unwrap();
        std::fs::write(d.join("postmaster.pid"), b"1").unwrap();
        assert!(delta_refusal(d, 8).unwrap().contains("postmaster.pid"));
    }

    #[test]
    fn recovery_settings_quote_what_they_embed() {
        let tmp = tempfile::tempdir().unwrap();
        let goal = Goal::Time(crate::restore::offsite::parse_time("2026-12-04T10:00:00Z").unwrap());
        let cmd = format!("{} wal-fetch %f %p", sh_quote("/opt/it's here/backup-mgmt"));
        write_recovery_settings(tmp.path(), &cmd, &goal, None, None).unwrap();
        let conf = std::fs::read_to_string(tmp.path().join("postgresql.auto.conf")).unwrap();
        // As PostgreSQL reads it back: exactly the shell-quoted command, whose `'\''` (a quote
        // inside shell quotes) needs its backslash doubled in the file.
        let value = conf
            .lines()
            .find_map(|l| l.strip_prefix("restore_command = "))
            .unwrap();
        assert_eq!(crate::restore::recipe::conf_unquote(value), cmd);
        assert!(
            conf.contains(
                r#"restore_command = '''/opt/it''\\''''s here/backup-mgmt'' wal-fetch %f %p'"#
            ),
            "{conf}"
        );
        // A path holding a backslash escape stays inside its quotes.
        let sneaky = format!(
            "{} wal-fetch %f %p",
            sh_quote(r"/x\047;touch /tmp/owned;\047")
        );
        let other = tempfile::tempdir().unwrap();
        write_recovery_settings(other.path(), &sneaky, &goal, None, None).unwrap();
        let conf = std::fs::read_to_string(other.path().join("postgresql.auto.conf")).unwrap();
        let value = conf
            .lines()
            .find_map(|l| l.strip_prefix("restore_command = '"))
            .map(|v| format!("'{v}"))
            .unwrap();
        assert_eq!(crate::restore::recipe::conf_unquote(&value), sneaky);
        assert!(conf.contains("recovery_target_time = '2026-12-04 10:00:00.000000+00'"));
        // Earlier targets are reset before this one; the timeline chosen is kept to.
        let reset = conf.find("recovery_target_time = ''").unwrap();
        assert!(reset < conf.find("recovery_target_time = '2026").unwrap());
        assert!(conf.contains("recovery_target_timeline = 'current'"));
        assert!(tmp.path().join("recovery.signal").is_file());
        // What a standby's backup brings with it goes: recovery ends at the goal and promotes.
        std::fs::write(other.path().join("standby.signal"), b"").unwrap();
        std::fs::write(other.path().join("recovery.signal"), b"theirs").unwrap();
        std::fs::write(other.path().join("postmaster.opts"), b"/tmp/evil -D x").unwrap();
        write_recovery_settings(other.path(), &sneaky, &goal, None, None).unwrap();
        assert!(!other.path().join("standby.signal").exists());
        assert!(!other.path().join("postmaster.opts").exists());
        assert_eq!(
            std::fs::read(other.path().join("recovery.signal")).unwrap(),
            b""
        );
        let conf = std::fs::read_to_string(other.path().join("postgresql.auto.conf")).unwrap();
        assert!(
            conf.ends_with(
                "primary_conninfo = ''\nprimary_slot_name = ''\nrecovery_end_command = ''\n\
             archive_cleanup_command = ''\nrecovery_min_apply_delay = 0\n\
             archive_mode = 'off'\narchive_command = ''\nbackup_mgmt.enabled = 'off'\n\
             session_preload_libraries = ''\nssl_passphrase_command = ''\nexternal_pid_file = ''\n\
             dynamic_library_path = '$libdir'\njit_provider = 'llvmjit'\n\
             log_directory = 'log'\nlog_filename = 'postgresql-%Y-%m-%d_%H%M%S.log'\n\
             log_line_prefix = '%m [%p] '\nlisten_addresses = 'localhost'\n\
             recovery_target_timeline = 'current'\n\
             recovery_target_time = '2026-12-04 10:00:00.000000+00'\n\
             recovery_target_action = 'promote'\n"
            ),
            "{conf}"
        );
        assert!(write_recovery_settings(
            tmp.path(),
            "x\nrecovery_target = 'immediate'",
            &goal,
            None,
            None
        )
        .is_err());
    }
}
