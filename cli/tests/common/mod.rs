//! The program as the tests run it: with an empty environment, its output kept.

use std::process::Command;

/// The exit code, stdout and stderr of `backup-mgmt ARGS`.
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_backup-mgmt"))
        .args(args)
        .env_clear()
        .output()
        .expect("backup-mgmt runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
