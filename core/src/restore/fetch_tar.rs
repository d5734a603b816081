//! Restoring a `pg_basebackup` backup from an off-site target: one tar stream (zstd or not, its
//! WAL inside) extracted into a new data directory while its stored bytes are checked against
//! the mirror's sha256, or, for a block-level incremental (PostgreSQL 17+), every tar of its
//! chain extracted and checked the same way and combined by `pg_combinebackup` into the new
//! directory.  What tar and `pg_combinebackup` made is checked before anything starts on it:
//! regular files and directories only.

use std::ffi::OsString;
use std::fs::{self, DirBuilder};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::fetch::{recorded_sha256, FetchError, Restored};
use super::materialize;
use super::offsite::{Choice, MirrorBackup};
use super::scratch_server::{combine, extract_stream};
use crate::files::error::IoError;
use crate::files::{beneath, durable};
use crate::pgformat::datadir::TABLESPACE_MAP;
use crate::progress::Progress;
use crate::storage::Storage;

/// Restores the chosen `pg_basebackup` backup into `dest`, which must not exist.  A chain of
/// block-level incrementals needs `combine`, the directory of a `pg_combinebackup` of the
/// backups' major version; its members are extracted beside `dest` (in `.<name>.chain-<pid>`,
/// so the filesystem needs room for the chain and the result) and removed afterwards, whether
/// the restore worked or not (a killed run leaves them for the operator).  A backup that is not
/// what the mirror says leaves no directory behind.
pub fn restore_tar(
    storage: &dyn Storage,
    choice: &Choice,
    dest: &Path,
    combine: Option<&Path>,
    progress: &Progress,
) -> Result<Restored, FetchError> {
    let b = &choice.backup;
    // The mirror is read from a target anyone with its credentials could have written: the
    // chain is checked here, not only when it was chosen.
    for m in &choice.chain {
        if m.backup_method != "pg_basebackup" {
            return Err(FetchError::Bad(format!(
                "backup {} of backup {}'s chain is a {} backup, not a pg_basebackup one",
                m.backup_id, b.backup_id, m.backup_method
            )));
        }
        recorded_sha256(m)?;
    }
    if choice.chain.last().map(|m| m.backup_id) != Some(b.backup_id) {
        return Err(FetchError::Bad(format!(
            "backup {}'s chain does not end with it",
            b.backup_id
        )));
    }
    let bindir = match (choice.chain.len(), combine) {
        (1, _) => None,
        (_, Some(d)) => Some(d),
        (n, None) => {
            return Err(FetchError::Refused(format!(
                "backup {} is a pg_basebackup incremental; its chain of {n} backups needs pg_combinebackup",
                b.backup_id
            )))
        }
    };
    if dest.file_name().is_none() {
        return Err(FetchError::Refused(format!(
            "\"{}\" does not name a new directory",
            dest.display()
        )));
    }
    // Created here, exclusively: what is removed after a failure is only ever this run's.
    if let Err(e) = durable::create_new_private_dir(dest) {
        return Err(match e.kind() {
            std::io::ErrorKind::AlreadyExists => FetchError::Refused(format!(
                "\"{}\" exists; a pg_basebackup backup is restored into a new directory",
                dest.display()
            )),
            _ => e.into(),
        });
    }
    let made = match bindir {
        None => extract_member(storage, b, dest, progress),
        Some(bindir) => combined(storage, choice, dest, bindir, progress),
    };
    let checked = made
        .and_then(|()| plain_tree(dest).map_err(|odd| odd_entry(b, dest, &odd)))
        .and_then(|counted| no_tablespace_map(b, dest).map(|()| counted))
        .and_then(|counted| {
            // Installed once the recovery settings are written (`install_control`): until
            // then the directory cannot start, as the backup alone.
            materialize::stage_extracted_control(dest)?;
            Ok(counted)
        });
    let (files, bytes) = match checked {
        Ok(counted) => counted,
        Err(e) => {
            let _ = beneath::remove_path(dest);
            return Err(e);
        }
    };
    if let Err(e) = durable::sync_filesystem(dest) {
        let _ = beneath::remove_path(dest);
        return Err(e.into());
    }
    Ok(Restored {
        backup_id: b.backup_id,
        data_directory: dest.to_path_buf(),
        files,
        bytes,
        wal_segments: choice.wal.len(),
        delta: None,
        writes: None,
    })
}

/// Extracts one backup's tar into `dir` (which exists and is empty), its stored bytes checked
/// against the mirror's sha256 in the same pass.
fn extract_member(
    storage: &dyn Storage,
    b: &MirrorBackup,
    dir: &Path,
    progress: &Progress,
) -> Result<(), FetchError> {
    let sha = recorded_sha256(b)?.to_owned();
    let input = storage.get(&b.key)?;
    extract_stream(input, b.key.ends_with(".zst"), sha, dir, progress).map_err(|e| {
        FetchError::File {
            detail: format!("backup {}: {e}", b.backup_id),
            file: b.key.clone(),
        }
    })
}

/// The chain's members extracted (each checked) beside `dest`, then combined into it.
fn combined(
    storage: &dyn Storage,
    choice: &Choice,
    dest: &Path,
    bindir: &Path,
    progress: &Progress,
) -> Result<(), FetchError> {
    let members = Members::create(dest)?;
    let mut dirs = Vec::new();
    for m in &choice.chain {
        let dir = members.0.join(m.backup_id.to_string());
        DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| IoError::new("could not create directory", &dir, e))?;
        extract_member(storage, m, &dir, progress)?;
        // pg_combinebackup follows what it finds: a member holding a link out of it would have
        // the link's target copied into the new directory.
        plain_tree(&dir).map_err(|odd| odd_entry(m, &dir, &odd))?;
        dirs.push(dir);
    }
    combine(bindir, &dirs, dest, progress).map_err(|e| FetchError::File {
        detail: format!("pg_combinebackup could not combine the chain: {e}"),
        file: choice
            .chain
            .iter()
            .map(|m| m.key.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    Ok(())
}

/// The directory a chain's members are extracted into, beside the new data directory (on its
/// filesystem), created exclusively and private, and removed with whatever is in it when
/// dropped, whether the restore worked or not.
struct Members(PathBuf);

impl Members {
    fn create(dest: &Path) -> Result<Members, FetchError> {
        let mut name = OsString::from(".");
        name.push(dest.file_name().unwrap_or_default());
        name.push(format!(".chain-{}", std::process::id()));
        let dir = dest.with_file_name(name);
        DirBuilder::new().mode(0o700).create(&dir).map_err(|e| {
            IoError::new(
                "could not create the chain's work directory (one an interrupted restore left \
                 behind may be removed)",
                &dir,
                e,
            )
        })?;
        Ok(Members(dir))
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        let _ = beneath::remove_path(&self.0);
    }
}

/// The regular files (their count and bytes) below `dir`, or the first entry that is neither a
/// regular file nor a directory (a symlink, a device), or a directory that cannot be read.
fn plain_tree(dir: &Path) -> Result<(usize, u64), PathBuf> {
    let (mut files, mut bytes) = (0usize, 0u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        // A directory that cannot be read cannot be checked: refused like an odd entry.
        let entries = fs::read_dir(&d).map_err(|_| d.clone())?;
        for e in entries {
            // An entry that cannot be read cannot be checked either.
            let e = e.map_err(|_| d.clone())?;
            match e.path().symlink_metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if m.is_file() => {
                    files += 1;
                    bytes += m.len();
                }
                _ => return Err(e.path()),
            }
        }
    }
    Ok((files, bytes))
}

/// Refuses a `tablespace_map` that names a tablespace.  PostgreSQL reads one at its first start
/// (beside `backup_label`) and points `pg_tblspc/<oid>` wherever it says, replacing the links
/// there: WAL replay would then write outside the new directory.  `pg_basebackup` asks for one
/// in tar format, but a backup written to stdout, as the extension takes them, cannot hold a
/// tablespace, so the file is empty; one that is not came from elsewhere.
fn no_tablespace_map(b: &MirrorBackup, dir: &Path) -> Result<(), FetchError> {
    let map = dir.join(TABLESPACE_MAP);
    match fs::symlink_metadata(&map) {
        Ok(m) if m.len() > 0 => Err(FetchError::Bad(format!(
            "backup {} holds a tablespace_map that names tablespaces, which a backup written \
             to stdout cannot have: it would point them outside the new directory; nothing was \
             restored",
            b.backup_id
        ))),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(IoError::new("could not stat", &map, e).into()),
    }
}

fn odd_entry(b: &MirrorBackup, dir: &Path, odd: &Path) -> FetchError {
    FetchError::Bad(format!(
        "backup {} holds \"{}\", which is neither a regular file nor a directory; nothing was restored",
        b.backup_id,
        odd.strip_prefix(dir).unwrap_or(odd).display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::hex;
    use crate::storage::filesystem::FilesystemTarget;
    use crate::timeline::TimelinePath;
    use sha2::{Digest, Sha256};

    fn member(id: i64, parent: Option<i64>, key: &str, sha256: &str) -> MirrorBackup {
        serde_json::from_value(serde_json::json!({
            "backup_id": id, "database_name": "postgres",
            "backup_type": if parent.is_some() { "incremental" } else { "full" },
            "backup_method": "pg_basebackup", "key": key, "sha256": sha256, "timeline_id": 1,
            "parent_backup_id": parent
        }))
        .unwrap()
    }

    fn choice_of(key: &str, sha256: &str) -> Choice {
        let b = member(9, None, key, sha256);
        Choice {
            backup_sysid: 7,
            backup: b.clone(),
            chain: vec![b],
            wal: vec![],
            path: TimelinePath::stay(1),
            why: String::new(),
        }
    }

    /// A tar of `src` at `tar`, and its sha256.
    fn tar_of(src: &Path, tar: &Path) -> String {
        let _ = fs::remove_file(tar);
        let made = std::process::Command::new("/bin/tar")
            .arg("-cf")
            .arg(tar)
            .arg("-C")
            .arg(src)
            .arg(".")
            .status()
            .unwrap();
        assert!(made.success());
        hex(&Sha256::digest(fs::read(tar).unwrap()))
    }

    #[test]
    fn a_tar_with_a_symlink_or_damage_is_not_restored() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("global")).unwrap();
        fs::write(src.join("PG_VERSION"), b"15\n").unwrap();
        fs::write(src.join(materialize::CONTROL), b"control").unwrap();
        std::os::unix::fs::symlink("/etc", src.join("pg_wal")).unwrap();
        fs::create_dir_all(tmp.path().join("t/7/postgres")).unwrap();
        let tar = tmp.path().join("t/7/postgres/b.tar");
        let sha = tar_of(&src, &tar);
        let target = FilesystemTarget {
            dir: tmp.path().join("t"),
            rate: None,
        };
        let progress = Progress::default();
        let dest = tmp.path().join("data");
        let restore_into = |sha: &str, dest: &Path| {
            restore_tar(
                &target,
                &choice_of("7/postgres/b.tar", sha),
                dest,
                None,
                &progress,
            )
        };
        let restore = |sha: &str| restore_into(sha, &dest);
        let e = restore(&sha).unwrap_err().to_string();
        assert!(e.contains("neither a regular file nor a directory"), "{e}");
        assert!(!dest.exists());
        // Bytes other than the mirror's: refused, nothing left.
        let e = restore(&"0".repeat(64)).unwrap_err().to_string();
        assert!(e.contains("sha256"), "{e}");
        assert!(!dest.exists());
        // Without the symlink it restores.
        fs::remove_file(src.join("pg_wal")).unwrap();
        fs::create_dir(src.join("pg_wal")).unwrap();
        let sha = tar_of(&src, &tar);
        let counted = Progress::default();
        let r = restore_tar(
            &target,
            &choice_of("7/postgres/b.tar", &sha),
            &dest,
            None,
            &counted,
        )
        .unwrap();
        assert_eq!(r.files, 2);
        // Its control file staged: the directory cannot start until the caller, its
        // recovery settings written, installs it.
        assert!(!dest.join(materialize::CONTROL).exists());
        assert!(materialize::install_control(&dest).unwrap());
        assert_eq!(
            fs::read(dest.join(materialize::CONTROL)).unwrap(),
            b"control"
        );
        // Every stored byte counted as it arrived (what a progress bar shows).
        assert_eq!(counted.bytes(), fs::metadata(&tar).unwrap().len());
        assert_eq!(fs::read(dest.join("PG_VERSION")).unwrap(), b"15\n");
        // Into a directory that exists: refused, untouched.
        let e = restore(&sha).unwrap_err();
        assert!(matches!(e, FetchError::Refused(_)), "{e}");
        assert_eq!(fs::read(dest.join("PG_VERSION")).unwrap(), b"15\n");

        // A tablespace_map naming a tablespace (PostgreSQL would point pg_tblspc there at the
        // first start): refused, nothing left; an empty one, as pg_basebackup's tar format
        // writes it for a cluster without tablespaces, is restored.
        let fresh = tmp.path().join("data-map");
        fs::write(
            src.join("tablespace_map"),
            b"16384 /var/lib/postgresql/elsewhere\n",
        )
        .unwrap();
        let sha = tar_of(&src, &tar);
        let e = restore_into(&sha, &fresh).unwrap_err().to_string();
        assert!(e.contains("tablespace_map"), "{e}");
        assert!(!fresh.exists());
        fs::write(src.join("tablespace_map"), b"").unwrap();
        let sha = tar_of(&src, &tar);
        restore_into(&sha, &fresh).unwrap();
        assert_eq!(fs::metadata(fresh.join("tablespace_map")).unwrap().len(), 0);
    }

    #[test]
    fn a_chain_is_checked_member_by_member_and_leaves_nothing_when_it_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("t/7/postgres");
        fs::create_dir_all(&store).unwrap();
        let mut chain = vec![];
        for (id, parent) in [(1, None), (2, Some(1))] {
            let src = tmp.path().join(format!("src{id}"));
            fs::create_dir_all(&src).unwrap();
            fs::write(src.join("PG_VERSION"), b"18\n").unwrap();
            let sha = tar_of(&src, &store.join(format!("{id}.tar")));
            chain.push(member(id, parent, &format!("7/postgres/{id}.tar"), &sha));
        }
        let target = FilesystemTarget {
            dir: tmp.path().join("t"),
            rate: None,
        };
        let choice = |chain: Vec<MirrorBackup>| Choice {
            backup_sysid: 7,
            backup: chain.last().unwrap().clone(),
            chain,
            wal: vec![],
            path: TimelinePath::stay(1),
            why: String::new(),
        };
        let dest = tmp.path().join("data");
        let progress = Progress::default();
        let nothing_left = || {
            let names: Vec<_> = fs::read_dir(tmp.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.contains("data"))
                .collect();
            assert!(names.is_empty(), "{names:?}");
        };
        // No pg_combinebackup: said so, nothing created.
        let e = restore_tar(&target, &choice(chain.clone()), &dest, None, &progress).unwrap_err();
        assert!(matches!(e, FetchError::Refused(_)), "{e}");
        assert!(e.to_string().contains("needs pg_combinebackup"), "{e}");
        nothing_left();
        // The incremental's stored bytes are not the mirror's: refused before combining.
        let mut damaged = chain.clone();
        damaged[1].sha256 = Some("0".repeat(64));
        let e = restore_tar(
            &target,
            &choice(damaged),
            &dest,
            Some(Path::new("/nonexistent")),
            &progress,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("backup 2") && e.contains("sha256"), "{e}");
        nothing_left();
        // A member holding a symlink: refused before pg_combinebackup could follow it.
        let linked = tmp.path().join("src1");
        std::os::unix::fs::symlink("/etc", linked.join("pg_wal")).unwrap();
        let mut with_link = chain.clone();
        with_link[0].sha256 = Some(tar_of(&linked, &store.join("1.tar")));
        let e = restore_tar(
            &target,
            &choice(with_link),
            &dest,
            Some(Path::new("/nonexistent")),
            &progress,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("backup 1 holds \"pg_wal\", which is neither a regular file"),
            "{e}"
        );
        nothing_left();
        fs::remove_file(linked.join("pg_wal")).unwrap();
        chain[0].sha256 = Some(tar_of(&linked, &store.join("1.tar")));
        // A member of another method, or a chain not ending with the backup: refused.
        let mut mixed = chain.clone();
        mixed[0].backup_method = "native_physical".into();
        let e = restore_tar(
            &target,
            &choice(mixed),
            &dest,
            Some(Path::new("/x")),
            &progress,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a pg_basebackup one"), "{e}");
        let mut c = choice(chain.clone());
        c.backup = chain[0].clone();
        let e = restore_tar(&target, &c, &dest, Some(Path::new("/x")), &progress)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not end with it"), "{e}");
        // pg_combinebackup missing where it was said to be: the program's failure, nothing left.
        let e = restore_tar(
            &target,
            &choice(chain),
            &dest,
            Some(&tmp.path().join("no-bin")),
            &progress,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("pg_combinebackup"), "{e}");
        nothing_left();
    }
}
