//! The data directory as a native physical backup (`native.rs`) sees it, in plain Rust: which files
//! to copy (what PostgreSQL's documentation and pg_basebackup leave out), and, for an
//! incremental or differential backup, which files changed since the parent.
//!
//! Left out (directory kept, contents skipped): `pg_wal`, `pg_dynshmem`, `pg_notify`,
//! `pg_replslot`, `pg_serial`, `pg_snapshots`, `pg_stat_tmp`, `pg_subtrans`.  Left out entirely:
//! `postmaster.pid`, `postmaster.opts`, `backup_label` and `tablespace_map` (the backup writes its
//! own), `*.tmp` configuration leftovers, relation cache init files (`pg_internal.init`),
//! anything named `pgsql_tmp*`, what a restore keeps beside `global/pg_control` while it works,
//! and every fork but `_init` of an unlogged relation (a database
//! directory file `N` whose `N_init` exists), which recovery resets anyway.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const CONTENTS_SKIPPED: [&str; 8] = [
    "pg_wal",
    "pg_dynshmem",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];
const FILES_SKIPPED: [&str; 7] = [
    POSTMASTER_PID,
    POSTMASTER_OPTS,
    "backup_label",
    TABLESPACE_MAP,
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "pg_internal.init",
];

/// One file or directory to back up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the data directory.
    pub path: PathBuf,
    pub is_dir: bool,
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
}

/// A file of the parent backup's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentFile {
    pub size: u64,
    pub mtime: i64,
}

/// What an incremental backup does with a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Copy it (new, or changed, or not provably unchanged).
    Copy,
    /// Unchanged since the parent: the backup refers to the parent's copy.
    Reference,
}

/// The file that tells PostgreSQL, at the first start of a restored directory, where each
/// tablespace is (it re-points `pg_tblspc/<oid>` as it says).  A native backup writes its own
/// beside its data, never in it.
pub const TABLESPACE_MAP: &str = "tablespace_map";

/// The file that makes a starting server recover from the archive, then promote.
pub const RECOVERY_SIGNAL: &str = "recovery.signal";

/// The file that makes a starting server a standby; it outranks `RECOVERY_SIGNAL`.
pub const STANDBY_SIGNAL: &str = "standby.signal";
/// A running server's lock file and the command line it was started with (`pg_ctl restart`
/// runs the program its first word names): a server's own, never a backup's.
pub const POSTMASTER_PID: &str = "postmaster.pid";
pub const POSTMASTER_OPTS: &str = "postmaster.opts";

/// A data directory's control file: a restore writes it last.
pub const CONTROL: &str = "global/pg_control";

/// Where a delta restore keeps the directory's own control file while it works (the directory
/// cannot start meanwhile; a delta restore run again still knows whose cluster it is).
pub const CONTROL_HELD: &str = "global/pg_control.held-by-restore";

/// Where a restore puts the backup's control file, checked and durable, until the recovery
/// settings are written and it can go in as `CONTROL`.
pub const CONTROL_STAGED: &str = "global/pg_control.restored";

/// Whether `name` is one of a restore's own files beside the control file (the two above, or
/// the staged one's temporary name): never backed up, never restored from a backup.
pub fn restore_own(name: &str) -> bool {
    // Bare file names (in any directory), compared without building a string per file a
    // backup walks.
    let base = |p: &'static str| p.rsplit_once('/').map_or(p, |(_, b)| b);
    let staged = base(CONTROL_STAGED);
    name == base(CONTROL_HELD)
        || name == staged
        || name
            .strip_prefix('.')
            .is_some_and(|rest| rest.starts_with(staged))
}

fn skipped_name(name: &str) -> bool {
    name.starts_with("pgsql_tmp") || FILES_SKIPPED.contains(&name) || restore_own(name)
}

/// The relfilenode a relation fork file belongs to (`16384`, `16384.1`, `16384_fsm`,
/// `16384_vm.2`, `16384_init` → `16384`), if the name is one.
pub(crate) fn relfilenode(name: &str) -> Option<&str> {
    let digits = name.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let rest = &name[digits..];
    let rest = rest.split_once('.').map(|(a, _)| a).unwrap_or(rest);
    matches!(rest, "" | "_fsm" | "_vm" | "_init").then_some(&name[..digits])
}

/// Whether `dir` (relative) holds relation files: `base/<oid>`, `global`, or a tablespace's
/// `<version dir>/<oid>`.
pub(crate) fn is_relation_dir(rel: &Path) -> bool {
    let parts: Vec<&str> = rel.iter().filter_map(|p| p.to_str()).collect();
    matches!(
        parts.as_slice(),
        ["base", _] | ["global"] | ["pg_tblspc", _, _, _]
    )
}

/// Every file and directory of the data directory at `root` that a backup copies, sorted.
/// Symlinks are followed (tablespaces under `pg_tblspc` are links); only directories and
/// regular files are listed, never a device, socket or FIFO.
pub fn walk(root: &Path) -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    walk_dir(root, Path::new(""), &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk_dir(root: &Path, rel: &Path, out: &mut Vec<Entry>) -> io::Result<()> {
    let mut names: Vec<String> = Vec::new();
    for e in fs::read_dir(root.join(rel))? {
        names.push(e?.file_name().to_string_lossy().into_owned());
    }
    // Unlogged relations in this directory: those with an init fork.
    let unlogged: HashSet<String> = if is_relation_dir(rel) {
        names
            .iter()
            .filter(|n| n.ends_with("_init"))
            .filter_map(|n| relfilenode(n).map(str::to_owned))
            .collect()
    } else {
        HashSet::new()
    };
    for name in names {
        if skipped_name(&name) {
            continue;
        }
        if let Some(node) = relfilenode(&name) {
            if unlogged.contains(node) && !name.ends_with("_init") {
                continue;
            }
        }
        let path = rel.join(&name);
        let full = root.join(&path);
        let meta = fs::metadata(&full)?;
        if meta.is_dir() {
            out.push(Entry {
                path: path.clone(),
                is_dir: true,
                size: 0,
                mtime: meta.mtime(),
            });
            let skip_contents =
                rel.as_os_str().is_empty() && CONTENTS_SKIPPED.contains(&name.as_str());
            if !skip_contents {
                walk_dir(root, &path, out)?;
            } else if name == "pg_wal" {
                // Recovery needs pg_wal/archive_status to exist.
                out.push(Entry {
                    path: path.join("archive_status"),
                    is_dir: true,
                    size: 0,
                    mtime: meta.mtime(),
                });
            }
        } else if meta.is_file() {
            out.push(Entry {
                path,
                is_dir: false,
                size: meta.len(),
                mtime: meta.mtime(),
            });
        }
    }
    Ok(())
}

/// For each file, whether an incremental (or differential) backup copies it or refers to the
/// parent's copy.  A file is referred to only when the parent has it with the same size and
/// modification time, and that time is before the parent backup started: a file written in
/// the same second as the parent's copy of it could have changed unseen.
pub fn plan_incremental(
    files: &[Entry],
    parent: &HashMap<PathBuf, ParentFile>,
    parent_started: i64,
) -> Vec<(PathBuf, Change)> {
    files
        .iter()
        .filter(|e| !e.is_dir)
        .map(|e| {
            let unchanged = parent.get(&e.path).is_some_and(|p| {
                p.size == e.size && p.mtime == e.mtime && e.mtime < parent_started
            });
            (
                e.path.clone(),
                if unchanged {
                    Change::Reference
                } else {
                    Change::Copy
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod unit {
    use super::*;

    fn touch(root: &Path, rel: &str, bytes: usize) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, vec![7u8; bytes]).unwrap();
    }

    #[test]
    fn walk_leaves_out_what_postgres_says() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        for f in [
            "PG_VERSION",
            "postgresql.conf",
            "global/pg_control",
            "global/1262",
            "base/5/16384",
            "base/5/16384.1",
            "base/5/16384_fsm",
            "base/5/16390",
            "base/5/16390_fsm",
            "base/5/16390_init",
            "base/5/pg_internal.init",
            "base/pgsql_tmp/pgsql_tmp123.0",
            "pg_wal/000000010000000000000001",
            "pg_wal/archive_status/000000010000000000000001.done",
            "pg_stat_tmp/global.stat",
            "pg_replslot/s1/state",
            "postmaster.pid",
            "postmaster.opts",
            "backup_label",
            "postgresql.auto.conf.tmp",
            "pg_xact/0000",
        ] {
            touch(r, f, 10);
        }
        let got: Vec<String> = walk(r)
            .unwrap()
            .iter()
            .map(|e| format!("{}{}", e.path.display(), if e.is_dir { "/" } else { "" }))
            .collect();
        assert_eq!(
            got,
            vec![
                "PG_VERSION",
                "base/",
                "base/5/",
                "base/5/16384",
                "base/5/16384.1",
                "base/5/16384_fsm",
                "base/5/16390_init",
                "global/",
                "global/1262",
                "global/pg_control",
                "pg_replslot/",
                "pg_stat_tmp/",
                "pg_wal/",
                "pg_wal/archive_status/",
                "pg_xact/",
                "pg_xact/0000",
                "postgresql.conf",
            ]
        );
    }

    #[test]
    fn incremental_refers_only_to_provably_unchanged_files() {
        let e = |p: &str, size, mtime| Entry {
            path: PathBuf::from(p),
            is_dir: false,
            size,
            mtime,
        };
        let files = vec![
            e("base/5/1", 8192, 100),  // unchanged, old
            e("base/5/2", 16384, 100), // grew
            e("base/5/3", 8192, 150),  // rewritten in place, same size
            e("base/5/4", 8192, 200),  // same as parent, but written the second the parent began
            e("base/5/5", 8192, 100),  // new
        ];
        let parent: HashMap<PathBuf, ParentFile> = [
            ("base/5/1", 8192, 100),
            ("base/5/2", 8192, 100),
            ("base/5/3", 8192, 100),
            ("base/5/4", 8192, 200),
        ]
        .into_iter()
        .map(|(p, size, mtime)| (PathBuf::from(p), ParentFile { size, mtime }))
        .collect();
        let plan = plan_incremental(&files, &parent, 200);
        let changes: Vec<Change> = plan.iter().map(|(_, c)| *c).collect();
        assert_eq!(
            changes,
            vec![
                Change::Reference,
                Change::Copy,
                Change::Copy,
                Change::Copy,
                Change::Copy
            ]
        );
    }

    #[test]
    fn relation_file_names() {
        assert_eq!(relfilenode("16384"), Some("16384"));
        assert_eq!(relfilenode("16384.12"), Some("16384"));
        assert_eq!(relfilenode("16384_vm.2"), Some("16384"));
        assert_eq!(relfilenode("16384_init"), Some("16384"));
        assert_eq!(relfilenode("PG_VERSION"), None);
        assert_eq!(relfilenode("16384_xyz"), None);
        assert!(is_relation_dir(Path::new("base/5")));
        assert!(is_relation_dir(Path::new(
            "pg_tblspc/16400/PG_15_202209061/5"
        )));
        assert!(!is_relation_dir(Path::new("pg_xact")));
    }
}
