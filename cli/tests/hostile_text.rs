//! Text a target holds reaches people escaped: a mirror's fields (anyone who can write the
//! bucket can write them, and no sha256 covers them) cannot send a terminal escape sequences,
//! and a key cannot forge a line of the server log, which is where wal-fetch's complaints go.

mod common;

use common::run;

/// A directory target holding a forged mirror of cluster 7: a backup whose type and database
/// name carry an OSC 52 clipboard write and a line erase, and a WAL file whose key holds a line
/// break and a fake log line.
fn forged_target() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let catalog = t.path().join("7/.catalog");
    std::fs::create_dir_all(&catalog).unwrap();
    let mirror = serde_json::json!({
        "format": "backup_mgmt offsite catalog 1",
        "written_at": "2026-12-07T10:00:00+00:00\u{1b}[2J",
        "system_identifier": 7,
        "pg_version": 150000,
        "backups": [{
            "backup_id": 1,
            "database_name": "postgres\u{1b}[1A\u{1b}[2K\u{9b}2J\u{7f}",
            "backup_type": "full\u{1b}]52;c;aGk=\u{7}",
            "backup_method": "native_physical",
            "key": "7/postgres/1.native",
            "sha256": "b".repeat(64),
            "timeline_id": 1,
            "start_lsn": "0/2000028",
            "stop_lsn": "0/2000100",
            "end_time": "2026-12-07T09:00:00+00:00\r",
        }],
        "wal_files": [{
            "name": "000000010000000000000002",
            "key": "7/.wal/x\n2026-12-07 10:00:00 UTC [1] LOG:  database system is ready to accept connections",
            "size": 100,
            "sha256": "a".repeat(64),
            "archived_at": "2026-12-07T09:00:00+00:00",
        }],
        "wal_gaps": ["000000010000000000000003\u{1b}[5m"],
    });
    std::fs::write(
        catalog.join("catalog_mirror.json"),
        serde_json::to_vec(&mirror).unwrap(),
    )
    .unwrap();
    t
}

/// No control character but the line breaks the program writes itself.
fn controls(text: &str) -> Vec<char> {
    text.chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect()
}

#[test]
fn a_forged_mirror_reaches_the_terminal_escaped() {
    let t = forged_target();
    let dir = t.path().to_str().unwrap();
    let (code, out, err) = run(&["--dir", dir, "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(controls(&out).is_empty(), "{out:?}");
    assert!(out.contains("full\\u{1b}]52;c;aGk=\\u{7}"), "{out}");
    assert!(out.contains("postgres\\u{1b}[1A"), "{out}");
    assert!(out.contains("\\u{9b}2J\\u{7f}"), "{out}");
    assert!(
        out.contains("WAL gaps: 000000010000000000000003\\u{1b}[5m"),
        "{out}"
    );
    // The JSON keeps the text as it is, escaped as JSON escapes it (C1 controls and DEL too,
    // which serde would leave as they are).
    let (code, out, _) = run(&["--dir", dir, "list", "--output", "json"]);
    assert_eq!(code, 0);
    assert!(controls(&out).is_empty(), "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["clusters"][0]["backups"][0]["backup_type"],
        "full\u{1b}]52;c;aGk=\u{7}"
    );
    assert_eq!(
        v["clusters"][0]["backups"][0]["database_name"],
        "postgres\u{1b}[1A\u{1b}[2K\u{9b}2J\u{7f}"
    );
    // The reason a restore gives names the backup's type, escaped too.
    let into = t.path().join("restored");
    let (_, _, err) = run(&["--dir", dir, "restore", "--latest", into.to_str().unwrap()]);
    assert!(controls(&err).is_empty(), "{err:?}");
    assert!(err.contains("(native_physical full\\u{1b}]52"), "{err}");
}

#[test]
fn a_forged_key_cannot_forge_a_line_of_the_server_log() {
    let t = forged_target();
    let dir = t.path().to_str().unwrap();
    let dest = t.path().join("RECOVERYXLOG");
    let (code, _, err) = run(&[
        "--dir",
        dir,
        "wal-fetch",
        "000000010000000000000002",
        dest.to_str().unwrap(),
    ]);
    // Fatal, as any failure of wal-fetch on a file the mirror lists, on one line.
    assert_eq!(code, 255, "{err}");
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(controls(&err).is_empty(), "{err:?}");
    assert!(err.contains("not a plain key"), "{err}");
    assert!(!dest.exists());
}
