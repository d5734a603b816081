//! The `backup-mgmt` command-line program, built from this workspace and installed once per
//! test process where the server's OS user can run it (a restore's `restore_command` runs it as
//! that user).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

static INSTALLED: OnceLock<PathBuf> = OnceLock::new();

/// Where this test process installs the program: `/tmp/bm-program-<pid>`.  A static is never
/// dropped, so a temporary directory would outlive the process (about 120 MB each, one per
/// test binary and run); instead each process removes the ones whose process is gone.
fn install_dir() -> PathBuf {
    if let Ok(entries) = std::fs::read_dir("/tmp") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(owner) = name.strip_prefix("bm-program-") else {
                continue;
            };
            // Earlier versions' random names, or a process that has ended.
            let gone = owner
                .parse::<u32>()
                .map_or(true, |pid| !Path::new(&format!("/proc/{pid}")).exists());
            if gone {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let dir = PathBuf::from(format!("/tmp/bm-program-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).expect("create the program's directory");
    dir
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
            let dir = install_dir();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
            let installed = dir.join("backup-mgmt");
            std::fs::copy(target.join("debug").join("backup-mgmt"), &installed)
                .expect("copy backup-mgmt");
            std::fs::set_permissions(&installed, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
            installed
        })
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
