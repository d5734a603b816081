//! The `backup-mgmt` command-line program, built from this workspace and installed once per
//! test process where the server's OS user can run it (a restore's `restore_command` runs it as
//! that user).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

static INSTALLED: OnceLock<(std::fs::File, PathBuf)> = OnceLock::new();

/// A directory for this test process's copy of the program, locked (`<dir>/lock`) while the
/// process lives.  A static is never dropped, so a `TempDir` would outlive the process (about
/// 120 MB each, one per test binary and run); instead each process removes the directories
/// whose lock it can take (their process has ended), and those without a lock an hour old
/// (earlier versions').  Returns the lock, to be kept open, and the directory.
fn install_dir() -> (std::fs::File, PathBuf) {
    if let Ok(entries) = std::fs::read_dir("/tmp") {
        for e in entries.flatten() {
            if !e.file_name().to_string_lossy().starts_with("bm-program-") {
                continue;
            }
            let gone = match std::fs::File::open(e.path().join("lock")) {
                Ok(lock) => lock.try_lock().is_ok(),
                // Being made (the lock comes next), or an earlier version's.
                Err(_) => e
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age.as_secs() > 3600)),
            };
            if gone {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = tempfile::Builder::new()
        .prefix("bm-program-")
        .tempdir_in("/tmp")
        .expect("temp dir")
        .keep();
    // Locked before it is named `lock`: another process never finds it free meanwhile.
    let lock = std::fs::File::create(dir.join("lock.new")).expect("create the lock");
    lock.lock().expect("lock");
    std::fs::rename(dir.join("lock.new"), dir.join("lock")).expect("name the lock");
    (lock, dir)
}

/// Path of the installed program (built with cargo on first use).
pub fn backup_mgmt() -> PathBuf {
    INSTALLED
        .get_or_init(|| {
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let built = Command::new(cargo)
                .args(["build", "--quiet", "-p", "backup_mgmt_cli"])
                .current_dir(&workspace)
                .status()
                .expect("cargo runs");
            assert!(built.success(), "cargo build -p backup_mgmt_cli failed");
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace.join("target"));
            let (lock, dir) = install_dir();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            let installed = dir.join("backup-mgmt");
            std::fs::copy(target.join("debug").join("backup-mgmt"), &installed)
                .expect("copy backup-mgmt");
            std::fs::set_permissions(&installed, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
            (lock, installed)
        })
        .1
        .clone()
}

/// Runs the program as the server's OS user of `as_user` (as a restore host would): its exit
/// code, standard output and standard error.
pub fn run<S: AsRef<std::ffi::OsStr>>(
    as_user: &crate::cluster::Cluster,
    args: &[S],
) -> (i32, String, String) {
    let out = as_user
        .server_command(backup_mgmt().to_str().expect("a UTF-8 path"))
        .args(args)
        .output()
        .expect("backup-mgmt runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
