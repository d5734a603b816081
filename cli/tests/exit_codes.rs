//! The program's exit codes where no target is reached: a command line it cannot take.  As
//! `restore_command`, `wal-fetch` must fail fatally (255) even before it runs: an exit code
//! below 126 tells PostgreSQL "not archived", which ends recovery early on a new timeline.

use std::process::Command;

mod common;

/// The exit code and stderr.
fn run(args: &[&str]) -> (i32, String) {
    let (code, _, err) = common::run(args);
    (code, err)
}

#[test]
fn a_command_line_wal_fetch_cannot_take_is_fatal_to_recovery() {
    // A mistyped option in a hand-written restore_command, a missing argument.
    let (code, err) = run(&[
        "--dir",
        "/nonexistent",
        "--cluster",
        "7",
        "wal-fetch",
        "--no-such-option",
        "000000010000000000000001",
        "pg_wal/RECOVERYXLOG",
    ]);
    assert_eq!(code, 255, "{err}");
    assert!(err.contains("--no-such-option"), "{err}");
    let (code, err) = run(&["--dir", "/nonexistent", "--cluster", "7", "wal-fetch"]);
    assert_eq!(code, 255, "{err}");
}

#[test]
fn other_commands_keep_the_usage_exit_code() {
    let (code, err) = run(&["--dir", "/nonexistent", "list", "--no-such-option"]);
    assert_eq!(code, 2, "{err}");
    // A count of threads or files that is none, or absurd, is refused before anything.
    for bad in [["--jobs", "0"], ["--jobs", "100000"]] {
        let (code, err) = run(&["--dir", "/nonexistent", "restore", bad[0], bad[1], "/tmp/x"]);
        assert_eq!(code, 2, "{err}");
    }
    // Help is not a failure.
    let (code, _) = run(&["wal-fetch", "--help"]);
    assert_eq!(code, 0);
}

/// With `--output json` a failure is one JSON object on stdout as well (its exit code and
/// message), so that a script reading stdout never gets nothing; the text stays on stderr.
#[test]
fn a_failure_with_output_json_is_a_json_object_on_stdout() {
    let out = Command::new(env!("CARGO_BIN_EXE_backup-mgmt"))
        .args([
            "--dir",
            "/nonexistent/backup-mgmt-target",
            "--output",
            "json",
            "list",
        ])
        .env_clear()
        .output()
        .expect("backup-mgmt runs");
    let code = out.status.code().unwrap_or(-1);
    assert_ne!(code, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
    assert_eq!(v["error"]["exit_code"], code, "{stdout}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("/nonexistent/backup-mgmt-target"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains(message));
}

/// A command line clap refuses is a JSON object too when it asked for JSON (either spelling),
/// exit 2 as without it.
#[test]
fn a_refused_command_line_with_output_json_is_a_json_object() {
    for output in [&["--output", "json"][..], &["--output=json"][..]] {
        let mut args = vec!["--dir", "/nonexistent"];
        args.extend_from_slice(output);
        args.extend_from_slice(&["restore", "--jobs", "0", "/tmp/x"]);
        let out = Command::new(env!("CARGO_BIN_EXE_backup-mgmt"))
            .args(&args)
            .env_clear()
            .output()
            .expect("backup-mgmt runs");
        assert_eq!(out.status.code(), Some(2));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(&stdout).expect("one JSON object");
        assert_eq!(v["error"]["exit_code"], 2, "{stdout}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("--jobs"),
            "{stdout}"
        );
    }
    // Without it, stdout stays empty.
    let out = Command::new(env!("CARGO_BIN_EXE_backup-mgmt"))
        .args(["--dir", "/nonexistent", "restore", "--jobs", "0", "/tmp/x"])
        .env_clear()
        .output()
        .expect("backup-mgmt runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
}

/// A target that holds no cluster at all (a mount point with nothing mounted) is no "not
/// archived": wal-fetch fails fatally, so recovery stops rather than ends early.
#[test]
fn wal_fetch_from_a_target_with_no_cluster_is_fatal() {
    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().to_str().unwrap();
    let (code, err) = run(&[
        "--dir",
        dir,
        "wal-fetch",
        "000000010000000000000001",
        "pg_wal/RECOVERYXLOG",
    ]);
    assert_eq!(code, 255, "{err}");
    // Other commands keep their code: nothing to restore from.
    let (code, err) = run(&["--dir", dir, "restore", "--latest", "/tmp/never-made"]);
    assert_eq!(code, 4, "{err}");
    assert!(!std::path::Path::new("/tmp/never-made").exists());
}
