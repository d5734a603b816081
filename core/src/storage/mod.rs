//! Storage targets for off-site copies, behind one trait: a filesystem directory (an NFS mount, a
//! second disk), S3-compatible object storage and Azure Blob storage.  Keys start with the cluster's system
//! identifier, so that a fleet of clusters can share one target; every component of a key is
//! percent-encoded, so no name can add a level or climb out.
//!
//! Every copy is verified where it landed (a filesystem copy or an Azure blob read back and
//! hashed; an S3 object's size and server-computed ETag compared).  No target replaces different
//! content already under a key (a WAL segment archived twice with different bytes, a second
//! cluster with the same system identifier): an identical copy already there counts as copied,
//! a different one is an error and stays as it is.  Only the catalog mirror is replaced.

pub mod azure;
pub mod credentials;
pub mod download;
pub mod etag;
pub mod filesystem;
pub mod limits;
pub mod listing;
mod members;
pub mod object;
pub mod s3;
pub mod set_aside;
pub mod transport;

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::files::beneath::Root;
use crate::files::error::IoError;
use crate::files::open::{open_regular, OpenError};
use crate::manifest::directory::DIRECTORY_MANIFEST;
use crate::manifest::native::FILES_MANIFEST;
use crate::paths::path_component;
use members::{DumpManifest, NativeMembers};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error("\"{0}\" is not a regular file")]
    NotAFile(PathBuf),
    #[error("the copy on the target differs: sha256 {found}, expected {expected}")]
    Mismatch { expected: String, found: String },
    #[error("{key} already holds different content ({found}; ours: sha256 {ours}): it is left as it is, a copy is never replaced")]
    Occupied {
        key: String,
        found: String,
        ours: String,
    },
    /// A directory backup's member, as it landed, is not what the backup's manifest records.
    #[error("{}: {why}", .member.display())]
    Member { member: PathBuf, why: String },
    /// A directory backup's files are not the ones its manifest names: nothing was copied.
    #[error("{}: {why}; nothing was copied", .member.display())]
    Manifest { member: PathBuf, why: String },
    #[error("credentials {reference}: {why}")]
    Credential { reference: String, why: String },
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Http(String),
}

/// An error as a line for the catalog and the log: the library's message with the causes it
/// wraps (a TLS failure says which certificate was refused only there), and an S3 or Azure
/// error reply shortened to its status, code and message.
pub fn described(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cause = c.source();
    }
    let status = text
        .find("status code: ")
        .and_then(|i| text[i + 13..].split_whitespace().next());
    let described = match (status, xml_value(&text, "Code")) {
        (Some(status), Some(code)) => format!(
            "HTTP {status} {code} {}",
            // Azure appends "RequestId:…" and "Time:…" lines to the message.
            xml_value(&text, "Message")
                .and_then(|m| m.lines().next())
                .unwrap_or_default()
        )
        .trim_end()
        .to_owned(),
        // A reply without a readable code (cut short, not XML): the status first all the same.
        (Some(status), None) => format!("HTTP {status}: {text}"),
        _ => text,
    };
    // A server's reply is not ours to store whole: it goes into a catalog row and a log line.
    match described.char_indices().nth(DESCRIBED_CHARS) {
        Some((cut, _)) => format!("{}…", &described[..cut]),
        None => described,
    }
}

/// At most this many characters of an error's description are kept.
const DESCRIBED_CHARS: usize = 500;

/// The text between `<tag>` and `</tag>` in an XML error reply.
fn xml_value<'a>(body: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{tag}>"))? + start;
    Some(&body[start..end])
}

/// What a copy produced on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    pub size: u64,
    pub sha256: String,
}

/// An object being fetched ahead of its reader (`Storage::get_ahead`): calling it waits for the
/// server's answer and gives what `get` would have.
pub type Ahead = Box<dyn FnOnce() -> Result<Box<dyn Read + Send>, StorageError> + Send>;

/// A place copies go to.
pub trait Storage: Send + Sync {
    /// Stores the local file `local` under `key` and checks it where it landed.  An identical
    /// copy already there is success; a different one is `Occupied`, left untouched.
    fn put_file(&self, local: &Path, key: &str) -> Result<Copied, StorageError> {
        self.put_opened(open_local(local)?, local, key)
    }
    /// `put_file` for a file already opened (beneath a root's handle); `shown` names it in
    /// errors.
    fn put_opened(&self, file: File, shown: &Path, key: &str) -> Result<Copied, StorageError>;
    /// Stores `bytes` under `key`, replacing what is there as one atomic step (a reader sees the
    /// old object or the new one, never a mix): for the catalog mirror, which is rewritten
    /// whole.  Checked where it landed.
    fn replace(&self, bytes: &[u8], key: &str) -> Result<(), StorageError>;
    /// The keys (relative to the target's own prefix) that start with `prefix`.
    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError>;
    /// The names one level below `prefix` ("" or ending in `/`), files and directories alike:
    /// the clusters of a target without listing every WAL file.
    fn children(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut names: Vec<String> = self
            .list(prefix)?
            .iter()
            .filter_map(|k| k.strip_prefix(prefix)?.split('/').next().map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }
    /// Removes `key` and every key below `key/`; what is already gone is fine.
    fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// Removes the one object under `key`, nothing below it; what is already gone is fine, and
    /// on a directory target a directory (or a symlink on the way) is refused, not removed.
    fn delete_one(&self, key: &str) -> Result<(), StorageError>;
    /// Reads the object under `key`, streamed (a restore without the host).  The key is input
    /// (it comes from a mirror on the target): one that could leave the target is refused.  The
    /// caller checks what it reads against the sha256 the mirror names.
    fn get(&self, key: &str) -> Result<Box<dyn Read + Send>, StorageError>;
    /// `get` started now and finished later (`Ahead`: calling it waits for the answer), for a
    /// store where every request is a round trip: a restore starts the next objects' requests
    /// while its threads write the last ones.  `None` where that gains nothing (a directory):
    /// the caller then uses `get` when it needs the object.
    fn get_ahead(&self, _key: &str) -> Option<Ahead> {
        None
    }
    /// Before a run: whatever the target needs to exist (a bucket, when asked for).
    fn prepare(&self) -> Result<(), StorageError> {
        Ok(())
    }
}

/// Where a backup's copy lives on a target: `<system identifier>/<database>/<file name>`.
pub fn object_key(system_identifier: i64, database: &str, local: &Path) -> String {
    let name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(
        "{}/{}/{}",
        system_identifier,
        path_component(database),
        path_component(&name)
    )
}

/// Where file `rel` of a directory backup copied to `key` lives (each component of the
/// relative path percent-encoded, as `put_backup` stores it).
pub fn member_key(key: &str, rel: &Path) -> String {
    let parts: Vec<String> = rel
        .iter()
        .map(|c| path_component(&c.to_string_lossy()))
        .collect();
    format!("{key}/{}", parts.join("/"))
}

/// A key that stays inside the target: non-empty components, none `.` or `..`, no NUL.
pub fn plain_key(key: &str) -> Result<&str, StorageError> {
    // A control character is in no key this project writes (`path_component` encodes them):
    // one from a mirror would reach a terminal or the server log (wal-fetch's messages) raw.
    if key.is_empty()
        || key.chars().any(char::is_control)
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(StorageError::Config(format!(
            "key {key:?} is not a plain key below the target"
        )));
    }
    Ok(key)
}

/// Where an archived WAL file's copy lives on a target: `<system identifier>/.wal/<stored name>`
/// (a database name never makes a leading-dot component: `path_component` encodes it).
pub fn wal_key(system_identifier: i64, stored: &str) -> String {
    format!("{system_identifier}/{WAL_DIR}/{}", path_component(stored))
}

/// The level under a cluster's prefix that holds its archived WAL.
pub const WAL_DIR: &str = ".wal";

/// Opens a local file to copy (no symlink at the end, no FIFO or device).
pub(crate) fn open_local(path: &Path) -> Result<File, StorageError> {
    open_regular(path).map_err(|e| match e {
        OpenError::NotRegular => StorageError::NotAFile(path.to_owned()),
        OpenError::Missing(source) | OpenError::Unreadable(source) => {
            IoError::new("could not open", path, source).into()
        }
    })
}

/// Copies a backup, a file or a directory, to `key` on `target`, every file verified.  A
/// directory backup (pg_dump's directory format, a native physical backup) goes file by file
/// under `<key>/<relative path>`; the result's sha256 is then its manifest's, which is what the
/// catalog records for it.  A directory-format dump is checked against its manifest
/// (`DumpManifest`): the files it names must be the directory's before anything is copied, and
/// each must land with the digest it records.  A native backup's members are checked against
/// its chain manifest (`NativeMembers`), each decompressed and hashed before it is sent, and must
/// land as checked.  `put_backup_expecting` also compares the manifest with the catalog's
/// checksum before anything is sent, so the whole copy is then the recorded backup.
pub fn put_backup(target: &dyn Storage, local: &Path, key: &str) -> Result<Copied, StorageError> {
    put_backup_expecting(target, local, key, None)
}

/// `put_backup` of a backup whose catalog checksum is `expected` (a directory's manifest's
/// sha256): a directory whose manifest is not that one is refused before any member is sent (a
/// file's sha256 is the caller's to compare, with what landed).
pub fn put_backup_expecting(
    target: &dyn Storage,
    local: &Path,
    key: &str,
    expected: Option<&str>,
) -> Result<Copied, StorageError> {
    if !fs::symlink_metadata(local).is_ok_and(|m| m.is_dir()) {
        return target.put_file(local, key);
    }
    // Listed and opened beneath the directory's handle: a symlink below it (planted, or a
    // directory swapped for one meanwhile) is neither listed nor copied through.
    let root = Root::open(local).map_err(|e| IoError::new("could not open", local, e))?;
    let files = root
        .files_below(Path::new(""))
        .map_err(|e| IoError::new("could not list", local, e))?;
    let has = |name: &str| files.iter().any(|f| f == Path::new(name));
    let (dump, native) = if has(DIRECTORY_MANIFEST) {
        (Some(DumpManifest::read(local, &root, &files)?), None)
    } else if has(FILES_MANIFEST) {
        (None, Some(NativeMembers::read(local, &root, &files)?))
    } else {
        // Without a manifest (a regular file: a symlink is not listed) a directory is not a
        // backup: refused before any member is copied, not after, so no stray members are left.
        return Err(StorageError::NotAFile(local.join(DIRECTORY_MANIFEST)));
    };
    let (name, read) = match (&dump, &native) {
        (Some(dump), _) => (DIRECTORY_MANIFEST, dump.sha256()),
        (_, Some(native)) => (FILES_MANIFEST, native.sha256()),
        _ => unreachable!("one of the two manifests was read"),
    };
    if let Some(expected) = expected.filter(|e| *e != read) {
        return Err(StorageError::Manifest {
            member: local.join(name),
            why: format!("has sha256 {read}, the catalog records {expected}"),
        });
    }
    // Each member is opened (and a native one checked) on a helper thread a file or two ahead
    // of the copy, so that decompressing and hashing overlap the copy's writes and fsyncs.
    let (size, landed) = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        let (files, root, native) = (&files, &root, &native);
        scope.spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            for rel in files {
                let shown = local.join(rel);
                let opened = open_member(root, rel, &shown).and_then(|mut file| {
                    let checked = match native {
                        Some(native) => native.check(local, rel, &mut file, &mut buf)?,
                        None => None,
                    };
                    Ok((file, checked))
                });
                let failed = opened.is_err();
                // The copy stopped (its receiver gone) or this member failed: nothing further.
                if tx.send((rel, shown, opened)).is_err() || failed {
                    break;
                }
            }
        });
        let mut size = 0u64;
        let mut landed = Vec::with_capacity(files.len());
        for (rel, shown, opened) in rx {
            let (file, checked) = opened?;
            let copied = target.put_opened(file, &shown, &member_key(key, rel))?;
            if let Some(checked) = checked.filter(|sha| *sha != copied.sha256) {
                return Err(StorageError::Member {
                    member: shown,
                    why: format!("landed with sha256 {}, checked as {checked}", copied.sha256),
                });
            }
            size += copied.size;
            landed.push((rel.clone(), copied.sha256));
        }
        Ok((size, landed))
    })?;
    let manifest = landed
        .iter()
        .find(|(rel, _)| rel == Path::new(name))
        .map(|(_, sha)| sha.clone())
        .ok_or_else(|| StorageError::NotAFile(local.join(name)))?;
    if let Some(dump) = dump {
        dump.check_landed(local, &manifest, &landed)?;
    }
    if let Some(native) = native {
        native.check_landed(local, &manifest)?;
    }
    Ok(Copied {
        size,
        sha256: manifest,
    })
}

/// Opens a member of a directory backup beneath its handle: a symlink or anything but a regular
/// file where a member was listed is that backup's problem (`NotAFile`), not a passing failure.
fn open_member(root: &Root, rel: &Path, shown: &Path) -> Result<File, StorageError> {
    root.open_file(rel).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidInput
            || matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR))
        {
            StorageError::NotAFile(shown.to_owned())
        } else {
            IoError::new("could not open", shown, e).into()
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_plain_key_stays_below_the_target_and_holds_no_control_character() {
        for good in ["7/.wal/000000010000000000000005.zst", "7/db%0Aname/x", "a"] {
            assert_eq!(super::plain_key(good).ok(), Some(good));
        }
        for bad in [
            "",
            "7//x",
            "7/./x",
            "7/../x",
            "/7/x",
            "7/x/",
            "7/x\0",
            "7/.wal/x\n2026-12-07 LOG:  database system is ready",
            "7/\u{1b}[2Kx",
            "7/x\r",
            "7/\u{85}x",
        ] {
            let e = super::plain_key(bad).unwrap_err().to_string();
            assert!(e.contains("not a plain key"), "{bad:?}: {e}");
            assert!(!e.contains('\n') && !e.contains('\u{1b}'), "quoted: {e}");
        }
    }

    #[test]
    fn errors_are_described_with_their_causes_and_short_replies() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("error sending request")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        // A cause only the chain names (a refused certificate) is kept.
        let tls = Outer(std::io::Error::other(
            "invalid peer certificate: UnknownIssuer",
        ));
        assert_eq!(
            described(&tls),
            "error sending request: invalid peer certificate: UnknownIssuer"
        );
        // An S3 or Azure error reply: its status, code and the message's first line only.
        let reply = std::io::Error::other(
            "Error performing PUT http://h/c/k in 5ms - Server returned non-2xx status code: 403 Forbidden: \
             <?xml version=\"1.0\"?><Error><Code>AuthenticationFailed</Code><Message>Server failed to \
             authenticate the request.\nRequestId:1f\nTime:2026</Message></Error>",
        );
        assert_eq!(
            described(&reply),
            "HTTP 403 AuthenticationFailed Server failed to authenticate the request."
        );
        // A reply without an error code is kept, but not at any length.
        let endless = std::io::Error::other("x".repeat(100_000));
        assert_eq!(described(&endless).chars().count(), 501);
    }

    use super::filesystem::FilesystemTarget;
    use super::*;
    use crate::checksum::hex;
    use crate::manifest::directory;
    use sha2::{Digest, Sha256};
    /// A directory-format dump whose member rotted on this disk after the dump, a member the
    /// manifest does not name, or one it names that is gone: the copy is refused, naming it.
    #[test]
    fn a_dump_directory_is_copied_only_as_its_manifest_records_it() {
        let tmp = tempfile::tempdir().unwrap();
        let local = tmp.path().join("d.dir");
        std::fs::create_dir(&local).unwrap();
        std::fs::write(local.join("toc.dat"), b"toc").unwrap();
        std::fs::write(local.join("3001.dat.gz"), b"rows").unwrap();
        let manifest = directory::render([
            (hex(&Sha256::digest(b"toc")).as_str(), "toc.dat"),
            (hex(&Sha256::digest(b"rows")).as_str(), "3001.dat.gz"),
        ]);
        std::fs::write(local.join(DIRECTORY_MANIFEST), &manifest).unwrap();
        let target = FilesystemTarget {
            dir: tmp.path().join("offsite"),
            rate: None,
        };
        let put = |n: u32| put_backup(&target, &local, &format!("1/app/try-{n}"));
        let landed = |n: u32| tmp.path().join(format!("offsite/1/app/try-{n}")).exists();
        put(1).unwrap();
        // A member that rotted after the dump: found as it lands (what landed is not the
        // backup; the caller removes it).
        std::fs::write(local.join("3001.dat.gz"), b"rot!").unwrap();
        let e = put(2).unwrap_err();
        assert!(matches!(e, StorageError::Member { .. }), "{e}");
        assert!(
            e.to_string().contains("3001.dat.gz") && e.to_string().contains("the manifest records"),
            "{e}"
        );
        std::fs::write(local.join("3001.dat.gz"), b"rows").unwrap();
        // Files other than the manifest names: refused before anything is copied, so a copy
        // already under the key (made before the directory changed) is not touched.
        let refused = |e: StorageError, member: &str, why: &str| {
            let text = e.to_string();
            assert!(matches!(e, StorageError::Manifest { .. }), "{text}");
            assert!(text.contains(member) && text.contains(why), "{text}");
        };
        std::fs::write(local.join("extra.dat"), b"x").unwrap();
        refused(
            put(3).unwrap_err(),
            "extra.dat",
            "not in the backup's manifest",
        );
        refused(
            put(1).unwrap_err(),
            "extra.dat",
            "not in the backup's manifest",
        );
        assert!(!landed(3) && landed(1));
        std::fs::remove_file(local.join("extra.dat")).unwrap();
        std::fs::remove_file(local.join("toc.dat")).unwrap();
        refused(put(4).unwrap_err(), "toc.dat", "not in its directory");
        assert!(!landed(4));
        std::fs::write(local.join("toc.dat"), b"toc").unwrap();
        put(5).unwrap();

        // A member swapped for a symlink to a file elsewhere with the same bytes (a secret the
        // attacker knows the digest of): the link is not listed, so the manifest names a file
        // that is not in the directory, and nothing is read through it.
        let outside = tmp.path().join("secret");
        std::fs::write(&outside, b"rows").unwrap();
        std::fs::remove_file(local.join("3001.dat.gz")).unwrap();
        std::os::unix::fs::symlink(&outside, local.join("3001.dat.gz")).unwrap();
        refused(put(6).unwrap_err(), "3001.dat.gz", "not a regular file");
        assert!(!landed(6));
        std::fs::remove_file(local.join("3001.dat.gz")).unwrap();
        std::fs::write(local.join("3001.dat.gz"), b"rows").unwrap();
        // The manifest itself a symlink (to a manifest written elsewhere): not a backup.
        let planted = tmp.path().join("planted.sha256");
        std::fs::write(&planted, &manifest).unwrap();
        std::fs::remove_file(local.join(DIRECTORY_MANIFEST)).unwrap();
        std::os::unix::fs::symlink(&planted, local.join(DIRECTORY_MANIFEST)).unwrap();
        assert!(matches!(put(7).unwrap_err(), StorageError::NotAFile(_)));
        assert!(!landed(7), "members were copied without their manifest");
        // A symlinked or a real subdirectory: refused as the backup's verification refuses
        // it, nothing read through the link.
        std::fs::remove_file(local.join(DIRECTORY_MANIFEST)).unwrap();
        std::fs::write(local.join(DIRECTORY_MANIFEST), &manifest).unwrap();
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("key.pem"), b"secret").unwrap();
        std::os::unix::fs::symlink(&elsewhere, local.join("sub")).unwrap();
        refused(put(8).unwrap_err(), "sub", "not a regular file");
        assert!(!landed(8));
        std::fs::remove_file(local.join("sub")).unwrap();
        std::fs::create_dir(local.join("sub")).unwrap();
        refused(put(9).unwrap_err(), "sub", "not a regular file");
        std::fs::remove_dir(local.join("sub")).unwrap();
        put(10).unwrap();
    }

    #[test]
    fn directory_backups_are_copied_file_by_file() {
        let tmp = tempfile::tempdir().unwrap();
        let local = tmp.path().join("b.dir");
        std::fs::create_dir(&local).unwrap();
        let sum = |b: &[u8]| hex(&Sha256::digest(b));
        std::fs::write(local.join("toc.dat.zst"), b"toc").unwrap();
        std::fs::write(local.join("3001.dat.zst"), vec![1u8; 5000]).unwrap();
        let manifest = format!(
            "{}  toc.dat.zst\n{}  3001.dat.zst\n",
            sum(b"toc"),
            sum(&[1u8; 5000])
        );
        let manifest = manifest.as_bytes();
        std::fs::write(local.join(DIRECTORY_MANIFEST), manifest).unwrap();
        let target = FilesystemTarget {
            dir: tmp.path().join("offsite"),
            rate: None,
        };
        let key = object_key(1, "shop", &local);
        let c = put_backup(&target, &local, &key).unwrap();
        assert_eq!(c.size, 3 + 5000 + manifest.len() as u64);
        assert_eq!(c.sha256, hex(&Sha256::digest(manifest)));
        let copy = tmp.path().join("offsite").join(&key);
        assert_eq!(
            std::fs::read(copy.join("3001.dat.zst")).unwrap(),
            vec![1u8; 5000]
        );
        // Without its manifest a directory is not a backup.
        std::fs::remove_file(local.join(DIRECTORY_MANIFEST)).unwrap();
        assert!(put_backup(
            &target,
            &local,
            &object_key(1, "shop", Path::new("/x/c.dir"))
        )
        .is_err());
        target.delete(&key).unwrap();
        assert!(!copy.exists());

        // A native physical backup: nested directories, its chain manifest as the checksum,
        // each member it stores checked against the manifest as it is copied (decompressed).
        let native = tmp.path().join("n.native");
        std::fs::create_dir_all(native.join("data/base/5")).unwrap();
        let member = native.join("data/base/5/16384.zst");
        std::fs::write(&member, zstd::encode_all(&b"rel"[..], 3).unwrap()).unwrap();
        std::fs::write(native.join("data/backup_label"), b"label").unwrap();
        std::fs::write(native.join("backup_manifest"), b"{}").unwrap();
        let chain = format!(
            "# backup_mgmt native physical backup 2; parent 1\n\
             f\tbackup_label\t5\t0\t{}\t2\tdata/backup_label\n\
             f\tbase/5/16384\t3\t0\t{}\t2\tdata/base/5/16384.zst\n\
             f\tbase/5/1259\t4\t0\t{}\t1\tdata/base/5/1259\n",
            hex(&Sha256::digest(b"label")),
            hex(&Sha256::digest(b"rel")),
            hex(&Sha256::digest(b"held")),
        );
        std::fs::write(native.join(FILES_MANIFEST), &chain).unwrap();
        let key = object_key(1, "postgres", &native);
        // A chain manifest other than the catalog's: refused before anything is sent.
        let e = put_backup_expecting(&target, &native, &key, Some(&hex(&Sha256::digest(b"x"))))
            .unwrap_err();
        assert!(matches!(e, StorageError::Manifest { .. }), "{e}");
        let copy = tmp.path().join("offsite").join(&key);
        assert!(!copy.exists());
        let c = put_backup_expecting(&target, &native, &key, Some(&hex(&Sha256::digest(&chain))))
            .unwrap();
        assert_eq!(c.sha256, hex(&Sha256::digest(&chain)));
        assert_eq!(
            zstd::decode_all(&std::fs::read(copy.join("data/base/5/16384.zst")).unwrap()[..])
                .unwrap(),
            b"rel"
        );
        target.delete(&key).unwrap();
        assert!(!copy.exists());
        // A member that rotted on this host (other bytes, still valid zstd; or not zstd at
        // all) is not copied as the backup, and what landed before it is removed by the caller.
        for rotten in [zstd::encode_all(&b"reX"[..], 3).unwrap(), b"rel".to_vec()] {
            std::fs::write(&member, rotten).unwrap();
            let e = put_backup(&target, &native, &key).unwrap_err();
            assert!(matches!(e, StorageError::Member { .. }), "{e}");
            assert!(e.to_string().contains("16384.zst"), "{e}");
            target.delete(&key).unwrap();
        }
        // A member the manifest says this directory stores, missing: refused before anything.
        std::fs::remove_file(&member).unwrap();
        let e = put_backup(&target, &native, &key).unwrap_err();
        assert!(matches!(e, StorageError::Manifest { .. }), "{e}");
        assert!(!copy.exists());
    }

    #[test]
    fn wal_keys_are_per_cluster_apart_from_every_database() {
        assert_eq!(
            wal_key(7, "000000010000000000000003.zst"),
            "7/.wal/000000010000000000000003.zst"
        );
        // No database's copies can land among the WAL: its component never starts with a dot.
        let k = object_key(7, ".wal", Path::new("/b/x/000000010000000000000003"));
        assert!(!k.starts_with("7/.wal/"), "{k}");
        assert!(!wal_key(7, "../../x").contains("/../"));
    }

    #[test]
    fn keys_are_per_cluster_and_cannot_climb_out() {
        assert_eq!(
            object_key(
                7,
                "shop",
                Path::new("/b/shop/nightly/20261127T010000Z-4.dump.zst")
            ),
            "7/shop/20261127T010000Z-4.dump.zst"
        );
        let k = object_key(7, "../etc", Path::new("/b/x/../passwd"));
        assert!(!k.split('/').any(|p| p == ".."), "{k}");
    }
}
