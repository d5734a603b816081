//! Where the worker puts a backup: `<root>/<database>/<job>/<YYYYMMDDTHHMMSSZ>-<execution id>`
//! plus a suffix per method, every name component percent-encoded so that no database or job
//! name can add a directory level.  What the worker wrote is recognisable by this layout alone.

use std::path::{Path, PathBuf};

use crate::paths::{path_component, with_suffix};
use crate::vocabulary::BackupMethod;

/// Output compression of a backup the worker takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd(i32),
}

impl Compression {
    /// As `backup_records.compression` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd(_) => "zstd",
        }
    }
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Zstd(_) => ".zst",
        }
    }
    pub fn level(self) -> Option<i32> {
        match self {
            Compression::None => None,
            Compression::Zstd(l) => Some(l),
        }
    }
}

/// `<root>/<database>/<job>/<YYYYMMDDTHHMMSSZ>-<execution id>`: the predictable layout.
pub fn backup_stem(
    root: &Path,
    database: &str,
    job: &str,
    started: chrono::DateTime<chrono::Utc>,
    execution_id: i64,
) -> PathBuf {
    root.join(path_component(database))
        .join(path_component(job))
        .join(format!(
            "{}-{execution_id}",
            started.format("%Y%m%dT%H%M%SZ")
        ))
}

/// The file or directory a backup produces (what the catalog's `backup_file_path` names).
pub fn output_path(method: BackupMethod, stem: &Path, compression: Compression) -> PathBuf {
    let ext = match method {
        BackupMethod::PgDump => format!(".dump{}", compression.suffix()),
        BackupMethod::PgDumpDirectory => ".dir".to_owned(),
        BackupMethod::PgBasebackup => format!(".tar{}", compression.suffix()),
        BackupMethod::NativePhysical => ".native".to_owned(),
        BackupMethod::PgDumpallGlobals | BackupMethod::ContinuousArchiving => {
            format!(".globals.sql{}", compression.suffix())
        }
    };
    with_suffix(stem, &ext)
}

/// The globals file written beside a logical dump (roles and tablespaces are not in it).
pub fn globals_path(stem: &Path, compression: Compression) -> PathBuf {
    with_suffix(stem, &format!(".globals.sql{}", compression.suffix()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_add_path_levels() {
        let when = chrono::DateTime::parse_from_rfc3339("2026-11-27T08:30:05Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let stem = backup_stem(Path::new("/b"), "../x", "nightly/1", when, 42);
        assert_eq!(
            stem,
            Path::new("/b/%2E.%2Fx/nightly%2F1/20261127T083005Z-42")
        );
        assert_eq!(
            output_path(BackupMethod::PgDump, &stem, Compression::Zstd(3)),
            Path::new("/b/%2E.%2Fx/nightly%2F1/20261127T083005Z-42.dump.zst")
        );
        assert_eq!(
            globals_path(&stem, Compression::None),
            Path::new("/b/%2E.%2Fx/nightly%2F1/20261127T083005Z-42.globals.sql")
        );
    }
}
