//! PostgreSQL's own backup manifest format (version 1: sha256 per file, WAL range, manifest
//! checksum), written for a native backup so that `pg_verifybackup` checks a materialised data
//! directory exactly as it checks a pg_basebackup one.

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use super::native::Manifest;
use crate::checksum::hex;
use crate::wal::Lsn;

/// Its file name.
pub const PG_MANIFEST: &str = "backup_manifest";
/// The same, as a native backup keeps it when it compresses.
pub const PG_MANIFEST_ZST: &str = "backup_manifest.zst";

/// PostgreSQL's backup manifest for the complete data directory (pg_wal excluded, as in
/// pg_basebackup's): what `pg_verifybackup` reads.  The manifest checksum covers every byte up
/// to and including the newline before its own line.
pub fn render(m: &Manifest, timeline: u32, start_lsn: Lsn, stop_lsn: Lsn) -> String {
    let mut s = String::from("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [");
    let mut first = true;
    for f in m.files.iter().filter(|f| !f.path.starts_with("pg_wal/")) {
        s.push_str(if first { "\n" } else { ",\n" });
        first = false;
        let modified = chrono::DateTime::from_timestamp(f.mtime, 0)
            .unwrap_or_default()
            .format("%Y-%m-%d %H:%M:%S GMT");
        let _ = write!(
            s,
            "{{ \"Path\": {}, \"Size\": {}, \"Last-Modified\": \"{modified}\", \"Checksum-Algorithm\": \"SHA256\", \"Checksum\": \"{}\" }}",
            serde_json::Value::from(f.path.as_str()),
            f.size,
            f.sha256
        );
    }
    let _ = write!(
        s,
        "\n],\n\"WAL-Ranges\": [\n{{ \"Timeline\": {timeline}, \"Start-LSN\": \"{}\", \"End-LSN\": \"{}\" }}\n],\n",
        start_lsn,
        stop_lsn
    );
    let sum = hex(&Sha256::digest(s.as_bytes()));
    let _ = writeln!(s, "\"Manifest-Checksum\": \"{sum}\"}}");
    s
}

/// Why a backup manifest's own checksum does not vouch for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestChecksumError {
    #[error("it has no \"Manifest-Checksum\" line")]
    Missing,
    #[error("its \"Manifest-Checksum\" is not a sha256")]
    NotSha256,
    #[error("something follows its \"Manifest-Checksum\" line")]
    Trailing,
    #[error("its \"Manifest-Checksum\" is {recorded}, its content's sha256 {found}")]
    Differs { recorded: String, found: String },
}

/// Checks a backup manifest's own checksum (its last line against every byte before it), as
/// `pg_verifybackup` does first: a manifest copied from a target is not trusted blindly.
pub fn check_checksum(text: &[u8]) -> Result<(), ManifestChecksumError> {
    const KEY: &[u8] = b"\n\"Manifest-Checksum\": \"";
    let at = text
        .windows(KEY.len())
        .rposition(|w| w == KEY)
        .ok_or(ManifestChecksumError::Missing)?;
    let rest = &text[at + KEY.len()..];
    let recorded = rest
        .get(..64)
        .filter(|r| r.iter().all(u8::is_ascii_hexdigit))
        .and_then(|r| std::str::from_utf8(r).ok())
        .ok_or(ManifestChecksumError::NotSha256)?;
    if !matches!(&rest[64..], b"\"}\n" | b"\"}") {
        return Err(ManifestChecksumError::Trailing);
    }
    let found = hex(&Sha256::digest(&text[..=at]));
    if !found.eq_ignore_ascii_case(recorded) {
        return Err(ManifestChecksumError::Differs {
            recorded: recorded.to_owned(),
            found,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::native::FileRecord;

    #[test]
    fn postgres_manifest_checksum_covers_everything_before_its_line() {
        let m = Manifest {
            backup_id: 1,
            parent: None,
            dirs: vec![],
            files: vec![
                FileRecord {
                    path: "PG_VERSION".into(),
                    size: 3,
                    mtime: 0,
                    sha256: "b".repeat(64),
                    holder: 1,
                    stored: "data/PG_VERSION".into(),
                },
                FileRecord {
                    path: "pg_wal/000000010000000000000002".into(),
                    size: 16,
                    mtime: 0,
                    sha256: "c".repeat(64),
                    holder: 1,
                    stored: "data/pg_wal/000000010000000000000002".into(),
                },
            ],
        };
        let text = render(&m, 1, Lsn(0x2000028), Lsn(0x2000100));
        assert!(!text.contains("pg_wal"), "WAL is not listed: {text}");
        let body_end = text[..text.len() - 1].rfind('\n').unwrap() + 1;
        let sum = hex(&Sha256::digest(&text.as_bytes()[..body_end]));
        assert!(text[body_end..].contains(&sum));
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["Files"][0]["Path"], "PG_VERSION");
        assert_eq!(json["WAL-Ranges"][0]["Start-LSN"], "0/2000028");
        assert_eq!(json["Files"][0]["Last-Modified"], "1970-01-01 00:00:00 GMT");

        // Its own checksum holds; a changed byte anywhere, or a cut, is caught.
        check_checksum(text.as_bytes()).unwrap();
        let mut changed = text.clone().into_bytes();
        changed[40] ^= 1;
        assert!(matches!(
            check_checksum(&changed),
            Err(ManifestChecksumError::Differs { .. })
        ));
        assert!(check_checksum(&changed)
            .unwrap_err()
            .to_string()
            .contains("sha256"));
        let cut = &text.as_bytes()[..text.len() / 2];
        assert!(check_checksum(cut).is_err());
        let mut trailing = text.clone();
        trailing.push_str("{}\n");
        assert_eq!(
            check_checksum(trailing.as_bytes()),
            Err(ManifestChecksumError::Trailing)
        );
    }
}
