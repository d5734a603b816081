//! The WAL archive's manifest, `archive_manifest.jsonl` in each archive directory: one JSON line
//! per archived file, appended (and fsynced) by the archive module once the file is durable.
//! The archiver has no database connection; the worker ingests these lines into
//! `backup_management.wal_archive`.
//!
//! A line is input like any file under the backup roots: `ManifestLine::validated` refuses a
//! name that is not a WAL file name, a stored file name that is neither the name nor the name
//! plus `.zst`, a sha256 that is not 64 lower-case hex digits, a negative size, an unparseable
//! time or a segment size PostgreSQL cannot have, before anything of it reaches the catalog.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::checksum::is_sha256_hex;
use crate::files::error::{Context, IoError};
use crate::wal::{self, SegmentSize};

/// Its file name.
pub const MANIFEST: &str = "archive_manifest.jsonl";

/// One line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestLine {
    pub name: String,
    /// The name it is stored under (`name` or `name.zst`); the oldest lines have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub size: i64,
    pub sha256: String,
    pub archived_at: String,
    /// The cluster's WAL segment size; lines written before it was recorded have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_size: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadLine {
    #[error("\"{0}\" is not a WAL file name")]
    Name(String),
    #[error("stored file \"{0}\" is neither the WAL file name nor it plus .zst")]
    File(String),
    #[error("\"{0}\" is not a sha256 digest")]
    Sha256(String),
    #[error("size {0} is negative")]
    Size(i64),
    #[error("\"{0}\" is not a time")]
    Time(String),
    #[error("{0} is not a WAL segment size")]
    SegmentSize(u64),
}

impl ManifestLine {
    /// The file name on disk.
    pub fn stored_name(&self) -> &str {
        self.file.as_deref().unwrap_or(&self.name)
    }

    /// The line, when every field is what the archive module writes.
    pub fn validated(self) -> Result<ManifestLine, BadLine> {
        if !wal::is_archivable_name(&self.name) {
            return Err(BadLine::Name(self.name));
        }
        if let Some(f) = &self.file {
            if *f != self.name && *f != format!("{}.zst", self.name) {
                return Err(BadLine::File(f.clone()));
            }
        }
        if !is_sha256_hex(&self.sha256) {
            return Err(BadLine::Sha256(self.sha256));
        }
        if self.size < 0 {
            return Err(BadLine::Size(self.size));
        }
        if chrono::DateTime::parse_from_rfc3339(&self.archived_at).is_err() {
            return Err(BadLine::Time(self.archived_at));
        }
        if let Some(s) = self.segment_size.filter(|s| SegmentSize::new(*s).is_none()) {
            return Err(BadLine::SegmentSize(s));
        }
        Ok(self)
    }
}

/// Appends `line` to `dir`'s manifest, durably.
pub fn append(dir: &Path, line: &ManifestLine) -> Result<(), IoError> {
    let mut text = serde_json::to_string(line).unwrap_or_default();
    text.push('\n');
    let manifest = dir.join(MANIFEST);
    let mut m = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&manifest)
        .at("could not open", &manifest)?;
    m.write_all(text.as_bytes())
        .and_then(|_| m.sync_all())
        .at("could not write", &manifest)
}

/// Why a manifest line was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("unreadable line: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Bad(#[from] BadLine),
}

/// The whole lines of `text` (a manifest read from some offset), and how many bytes they take:
/// a line the archiver is appending right now is left for the next read.  Lines that do not
/// parse or validate are returned as errors, in order, so that the caller can report them.
pub fn parse_complete(text: &str) -> (Vec<Result<ManifestLine, LineError>>, usize) {
    let Some(end) = text.rfind('\n') else {
        return (Vec::new(), 0);
    };
    let lines = text[..end]
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| Ok(serde_json::from_str::<ManifestLine>(l)?.validated()?))
        .collect();
    (lines, end + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> ManifestLine {
        ManifestLine {
            name: "000000010000000000000003".into(),
            file: Some("000000010000000000000003.zst".into()),
            size: 123,
            sha256: "a".repeat(64),
            archived_at: "2026-12-03T10:00:00+00:00".into(),
            segment_size: Some(16 << 20),
        }
    }

    #[test]
    fn lines_round_trip_and_old_lines_still_read() {
        let dir = tempfile::tempdir().unwrap();
        append(dir.path(), &line()).unwrap();
        let old = "{\"name\":\"000000010000000000000004\",\"size\":5,\"sha256\":\"".to_owned()
            + &"b".repeat(64)
            + "\",\"archived_at\":\"2026-11-01T00:00:00Z\"}\n";
        let mut text = std::fs::read_to_string(dir.path().join(MANIFEST)).unwrap();
        text.push_str(&old);
        text.push_str("{\"name\":\"0000000100000000000000");
        let (lines, used) = parse_complete(&text);
        assert_eq!(used, text.rfind('\n').unwrap() + 1);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].as_ref().unwrap(), &line());
        let second = lines[1].as_ref().unwrap();
        assert_eq!(second.stored_name(), "000000010000000000000004");
        assert_eq!(second.segment_size, None);
    }

    #[test]
    fn forged_fields_are_refused() {
        let bad = |f: fn(&mut ManifestLine)| {
            let mut l = line();
            f(&mut l);
            l.validated().unwrap_err()
        };
        assert!(matches!(
            bad(|l| l.name = "../../etc/passwd".into()),
            BadLine::Name(_)
        ));
        assert!(matches!(
            bad(|l| l.file = Some("x; rm -rf /".into())),
            BadLine::File(_)
        ));
        assert!(matches!(
            bad(|l| l.sha256 = format!("{}\nrm -rf /\n", "a".repeat(10))),
            BadLine::Sha256(_)
        ));
        assert!(matches!(
            bad(|l| l.sha256 = "A".repeat(64)),
            BadLine::Sha256(_)
        ));
        assert!(matches!(bad(|l| l.size = -1), BadLine::Size(_)));
        assert!(matches!(
            bad(|l| l.archived_at = "yesterday".into()),
            BadLine::Time(_)
        ));
        assert!(matches!(
            bad(|l| l.segment_size = Some(3)),
            BadLine::SegmentSize(3)
        ));
    }
}
