//! The chain manifest of a native physical backup, `backup_mgmt.files`: one line per directory
//! (`d<TAB>path`) and per file (`f<TAB>path<TAB>size<TAB>mtime<TAB>sha256<TAB>holder<TAB>stored`)
//! of the *complete* data directory.  `holder` is the id of the backup whose directory stores
//! the bytes, `stored` the path there: an incremental or differential backup refers to unchanged
//! files by their holder, so every member of a chain names, directly, every backup it needs.  Its
//! sha256 is the catalog's checksum of the backup.
//!
//! The file is input like any other under the backup roots: parsing refuses a path that could
//! leave its directory, a line break inside a field, and a sha256 that is not 64 hex digits.

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;
use std::path::{Component, Path};

/// The chain manifest's file name in a backup directory.
pub const FILES_MANIFEST: &str = "backup_mgmt.files";
/// Where the data files live inside a backup directory.
pub const DATA: &str = "data";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not a backup_mgmt chain manifest (first line)")]
    NotAManifest,
    #[error("malformed first line of the chain manifest")]
    BadHeader,
    #[error("bad backup id \"{0}\" in the chain manifest")]
    BadId(String),
    #[error("malformed manifest line \"{0}\"")]
    BadLine(String),
    #[error("the chain manifest names \"{0}\" twice")]
    Twice(String),
}

/// One file of a backup's complete data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRecord {
    pub path: String,
    pub size: u64,
    pub mtime: i64,
    pub sha256: String,
    /// The backup whose directory stores the bytes.
    pub holder: i64,
    /// Path of the stored copy inside the holder's directory (`data/…`, `.zst` when compressed).
    pub stored: String,
}

/// A backup's chain manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub backup_id: i64,
    pub parent: Option<i64>,
    pub dirs: Vec<String>,
    pub files: Vec<FileRecord>,
}

/// A relative path that stays inside the directory it is joined to: no root, no `..`, no `.`,
/// and nothing that would break the manifest's lines.
pub fn plain_relative(p: &str) -> bool {
    // Canonical too (no `a//b`, `a/./b`, trailing `/`, which `components` would let through):
    // one file has one name, so that a name the restore treats apart (`global/pg_control`)
    // cannot come in under another spelling.
    !p.is_empty()
        && !p.contains(['\t', '\n', '\r'])
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

impl Manifest {
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "# backup_mgmt native physical backup {}; parent {}\n",
            self.backup_id,
            self.parent.map_or("none".to_owned(), |p| p.to_string())
        );
        for d in &self.dirs {
            let _ = writeln!(s, "d\t{d}");
        }
        for f in &self.files {
            let _ = writeln!(
                s,
                "f\t{}\t{}\t{}\t{}\t{}\t{}",
                f.path, f.size, f.mtime, f.sha256, f.holder, f.stored
            );
        }
        s
    }

    /// Reads a chain manifest; refuses any line whose paths could leave their directory.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let mut m = Manifest::default();
        let mut lines = text.lines();
        let head = lines.next().unwrap_or_default();
        let rest = head
            .strip_prefix("# backup_mgmt native physical backup ")
            .ok_or(ManifestError::NotAManifest)?;
        let (id, parent) = rest
            .split_once("; parent ")
            .ok_or(ManifestError::BadHeader)?;
        m.backup_id = id
            .parse()
            .map_err(|_| ManifestError::BadId(id.to_owned()))?;
        m.parent = match parent {
            "none" => None,
            p => Some(p.parse().map_err(|_| ManifestError::BadId(p.to_owned()))?),
        };
        for line in lines {
            let bad = || ManifestError::BadLine(line.to_owned());
            let fields: Vec<&str> = line.split('\t').collect();
            match fields.as_slice() {
                ["d", path] if plain_relative(path) => m.dirs.push((*path).to_owned()),
                ["f", path, size, mtime, sum, holder, stored]
                    if plain_relative(path)
                        && plain_relative(stored)
                        && crate::checksum::is_sha256_hex(sum) =>
                {
                    m.files.push(FileRecord {
                        path: (*path).to_owned(),
                        size: size.parse().map_err(|_| bad())?,
                        mtime: mtime.parse().map_err(|_| bad())?,
                        sha256: (*sum).to_owned(),
                        holder: holder.parse().map_err(|_| bad())?,
                        stored: (*stored).to_owned(),
                    })
                }
                _ => return Err(bad()),
            }
        }
        let mut seen = HashSet::new();
        if let Some(twice) = m
            .dirs
            .iter()
            .chain(m.files.iter().map(|f| &f.path))
            .find(|p| !seen.insert(p.as_str()))
        {
            return Err(ManifestError::Twice(twice.clone()));
        }
        Ok(m)
    }

    /// Every backup whose directory this backup needs (itself included).
    pub fn holders(&self) -> BTreeSet<i64> {
        self.files.iter().map(|f| f.holder).collect()
    }

    /// Total size of the data directory it describes.
    pub fn logical_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_and_refuses_escapes() {
        let m = Manifest {
            backup_id: 7,
            parent: Some(3),
            dirs: vec!["base".into(), "base/5".into()],
            files: vec![FileRecord {
                path: "base/5/16384".into(),
                size: 8192,
                mtime: 1_700_000_000,
                sha256: "a".repeat(64),
                holder: 3,
                stored: "data/base/5/16384.zst".into(),
            }],
        };
        assert_eq!(Manifest::parse(&m.to_text()).unwrap(), m);
        assert_eq!(m.holders().into_iter().collect::<Vec<_>>(), vec![3]);
        for bad in [
            "f\t../x\t1\t1\taaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\t3\tdata/x",
            "f\tx\t1\t1\taaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\t3\t/etc/passwd",
            "f\tx\t1\t1\tnothex\t3\tdata/x",
            "d\t/abs",
            "d\ta/../../b",
            // One file, one spelling: the restore treats global/pg_control apart.
            "f\tglobal//pg_control\t1\t1\taaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\t3\tdata/x",
            "f\tglobal/./pg_control\t1\t1\taaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\t3\tdata/x",
            "d\tglobal/",
            "d\tbase\nd\tbase",
            "d\tglobal\nf\tglobal\t1\t1\taaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\t3\tdata/x",
        ] {
            let text = format!("# backup_mgmt native physical backup 1; parent none\n{bad}\n");
            assert!(Manifest::parse(&text).is_err(), "{bad}");
        }
        let twice = m.to_text() + "f\tbase/5/16384\t1\t1\t" + &"b".repeat(64) + "\t3\tdata/y\n";
        assert!(matches!(
            Manifest::parse(&twice),
            Err(ManifestError::Twice(p)) if p == "base/5/16384"
        ));
    }
}
