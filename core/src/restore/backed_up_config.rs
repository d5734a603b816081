//! The configuration a restored data directory brings with it, read the way its server will
//! read it before that server ever starts: `postgres -D <dir> -C <setting>` (postgresql.conf,
//! its includes, postgresql.auto.conf with the recovery settings appended).  What appending
//! cannot override, or must not reset for everyone, is decided here from the value in force:
//!
//! - `data_directory` set in the backed-up postgresql.conf moves the server to another
//!   directory, whose postgresql.auto.conf (and none of the restore's settings) it then reads:
//!   refused.
//! - a `shared_preload_libraries` naming a library by its path (`./x.so`, `/tmp/x`) loads it
//!   from outside this host's `$libdir` (one the backup itself shipped): reset to nothing.
//!   Plain names stay (`pg_stat_statements`, `backup_mgmt`): with `dynamic_library_path`
//!   reset by the recovery settings they load this host's installed libraries only.
//!
//! The log location, the commands and the library search path are reset for every restore by
//! the appended recovery settings (`recovery_conf`), whatever they were.  What is checked holds
//! for the server's first start: a file an include names that appears later (a log, a WAL
//! file) is read at a later one, after the operator has had the configuration to review.

use std::ffi::OsString;
use std::path::{Component, Path};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::recipe::conf_quote;
use super::recovery_conf::append_to_auto_conf;
use crate::files::error::IoError;
use crate::printable;
use crate::process;
use std::io::Read as _;

/// Why the configuration was not checked, or what it was refused for.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The server program could not be run, or would not read the configuration (a syntax
    /// error, a missing include: the server would not start on it either).
    #[error("{program} -C {setting}: {detail}")]
    NotRead {
        program: String,
        setting: &'static str,
        detail: String,
    },
    /// PostgreSQL's programs refuse to run as root.
    #[error("postgres does not run as root: restore as the server's OS user")]
    AsRoot,
    /// The backed-up postgresql.conf (or a file it includes) sets `data_directory` to another
    /// directory.
    #[error(
        "the backed-up postgresql.conf moves the data directory to {found}: the server would \
         start there and read none of this restore's settings (a forged backup?); refused. A \
         cluster whose configuration names its own directory restores to that path only"
    )]
    Moved { found: String },
    #[error(transparent)]
    Io(#[from] IoError),
}

/// A setting reset because of what the backed-up configuration set it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reset {
    pub setting: &'static str,
    /// The value in force before (escaped for one line of output).
    pub was: String,
    pub now: &'static str,
    pub why: &'static str,
}

/// The settings read, each by a `postgres -C` of its own (it takes one), at the same time: the
/// data directory, and the libraries every server process loads.  The other lists are not
/// read, to keep a restore's last step short: `session_preload_libraries` is reset by the
/// recovery settings, `archive_library` is not loaded while they keep `archive_mode` off,
/// `local_preload_libraries` loads from `$libdir/plugins` only, and PostgreSQL 18's
/// `oauth_validator_libraries` is reset (`check`).
const READ: [&str; 2] = ["data_directory", "shared_preload_libraries"];

/// How long one `postgres -C` may take: a configuration that includes `/dev/tty` or a pipe
/// would make it (and the server) wait forever.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Checks `dest`'s configuration with `postgres` (the program, of the backup's major version;
/// run as the server's OS user: it refuses root), appends the resets it needs to `dest`'s
/// postgresql.auto.conf, and returns them.  A `shared_preload_libraries` that `postgres` would
/// not print is reset as if it named a path: a value that cannot be judged is not kept.
pub fn check(postgres: &Path, dest: &Path) -> Result<Vec<Reset>, ConfigError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Err(ConfigError::AsRoot);
    }
    let [data_directory, libraries] = read(postgres, READ, dest);
    let data_directory = data_directory?;
    if !same_directory(Path::new(&data_directory), dest) {
        return Err(ConfigError::Moved {
            found: printable::one_line(&data_directory).into_owned(),
        });
    }
    let (was, why) = match libraries {
        Ok(v) if !names_a_path(&v) => return Ok(Vec::new()),
        Ok(v) => (
            printable::one_line(&v).into_owned(),
            "names a library by its path",
        ),
        Err(e) => (e.to_string(), "could not be read"),
    };
    let reset = Reset {
        setting: "shared_preload_libraries",
        was,
        now: "",
        why,
    };
    append_to_auto_conf(
        dest,
        &format!(
            "\n# Reset by backup-mgmt restore: the backed-up {} {}\n# (review it before setting \
             it again)\n{} = {}\n",
            reset.setting,
            reset.why,
            reset.setting,
            conf_quote(reset.now)
        ),
    )?;
    Ok(vec![reset])
}

/// Whether a list of libraries holds one named by a path outside this host's `$libdir`:
/// PostgreSQL loads such a name as it is, not from `dynamic_library_path`.
/// `$libdir/plugins/auto_explain` (the documented form for `local_preload_libraries`) is not.
/// A list with a double quote or a byte beyond ASCII is split by rules this function does not
/// copy (a quoted name may hold a comma, `""` is a quote, only ASCII spaces are trimmed): with
/// a `/` anywhere in it, it counts as naming a path.
fn names_a_path(list: &str) -> bool {
    if !list.is_ascii() || list.contains('"') {
        return list.contains('/');
    }
    list.split(',')
        .map(|entry| entry.trim_matches(|c: char| c.is_ascii_whitespace()))
        .any(|entry| match entry.strip_prefix("$libdir/") {
            Some(rest) => Path::new(rest)
                .components()
                .any(|c| !matches!(c, Component::Normal(_))),
            None => entry.contains('/'),
        })
}

/// Whether `found` names the directory `dest` (both resolved; one that does not exist is not).
fn same_directory(found: &Path, dest: &Path) -> bool {
    match (std::fs::canonicalize(found), std::fs::canonicalize(dest)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The values in force of `settings`, each from its own `postgres -C`, run at the same time
/// (their output read while they run), in the order asked.
fn read<const N: usize>(
    postgres: &Path,
    settings: [&'static str; N],
    dest: &Path,
) -> [Result<String, ConfigError>; N] {
    // A backup of a cluster whose configuration lives elsewhere (Debian's /etc/postgresql)
    // has no postgresql.conf: the server will be started with the operator's, which is not
    // the backup's; its postgresql.auto.conf is still read, from the data directory.
    let own_conf = dest
        .join("postgresql.conf")
        .symlink_metadata()
        .is_ok_and(|m| m.is_file());
    let argv = |setting: &str| -> Vec<OsString> {
        let mut a: Vec<OsString> = vec![
            postgres.as_os_str().to_owned(),
            "-C".into(),
            setting.into(),
            "-D".into(),
            dest.as_os_str().to_owned(),
        ];
        if !own_conf {
            a.extend(["-c".into(), "config_file=/dev/null".into()]);
        }
        a
    };
    let program = postgres.display().to_string();
    let not_read = |setting: &'static str, detail: String| ConfigError::NotRead {
        program: program.clone(),
        setting,
        detail,
    };
    let deadline = Instant::now() + READ_TIMEOUT;
    std::thread::scope(|scope| {
        let running = settings.map(|setting| {
            // From `/`, not wherever this program runs: a relative `data_directory` names
            // another directory for every operator who starts the server from elsewhere.
            let spawned = process::command(&argv(setting))
                .current_dir("/")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn();
            let run = spawned.map(|mut child| {
                // Drained while it runs: a value longer than a pipe holds must not stall it.
                let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
                    scope.spawn(move || {
                        let mut bytes = Vec::new();
                        if let Some(mut p) = pipe {
                            let _ = p.read_to_end(&mut bytes);
                        }
                        bytes
                    })
                };
                let out = drain(child.stdout.take().map(|p| Box::new(p) as _));
                let err = drain(child.stderr.take().map(|p| Box::new(p) as _));
                (child, out, err)
            });
            (setting, run)
        });
        running.map(|(setting, run)| {
            run.map_err(|e| not_read(setting, format!("could not run: {e}")))
                .and_then(|(mut child, out, err)| {
                    let status = loop {
                        match child.try_wait() {
                            Ok(Some(status)) => break Ok(status),
                            Ok(None) if Instant::now() < deadline => {
                                std::thread::sleep(Duration::from_millis(2))
                            }
                            Ok(None) => {
                                break Err(format!(
                                    "did not finish in {} s",
                                    READ_TIMEOUT.as_secs()
                                ))
                            }
                            Err(e) => break Err(format!("could not wait: {e}")),
                        }
                    };
                    if status.is_err() {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                    let (out, err) = (
                        out.join().unwrap_or_default(),
                        err.join().unwrap_or_default(),
                    );
                    let status = status.map_err(|why| not_read(setting, why))?;
                    if !status.success() {
                        let err = String::from_utf8_lossy(&err);
                        return Err(not_read(
                            setting,
                            printable::one_line(&process::tail(&err)).into_owned(),
                        ));
                    }
                    let out = String::from_utf8(out).map_err(|_| {
                        not_read(setting, "printed a value that is not UTF-8".into())
                    })?;
                    // The one line ending -C's output; a value may itself end in a line
                    // break.
                    Ok(out.strip_suffix('\n').unwrap_or(&out).to_owned())
                })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain library names and `$libdir/...` stay; a list holding a path elsewhere (relative,
    /// absolute, climbing out of `$libdir`, quoted) is reset.
    #[test]
    fn paths_are_reset_and_plain_names_stay() {
        for fine in [
            "",
            "pg_stat_statements, backup_mgmt",
            " $libdir/plugins/auto_explain ,pg_stat_statements",
            "$libdir/backup_mgmt",
        ] {
            assert!(!names_a_path(fine), "{fine}");
        }
        for forged in [
            "pg_stat_statements,\"./x.so\"",
            "/tmp/evil",
            "backup_mgmt, x/y",
            "$libdir/../../../tmp/evil",
            "$libdir/plugins/../../x",
            // Split as PostgreSQL splits, these name a path too.
            "\"a,$libdir/x\"",
            "\"\"\"$libdir/x\"",
            "\u{a0}$libdir/x",
        ] {
            assert!(names_a_path(forged), "{forged}");
        }
    }

    #[test]
    fn a_directory_is_the_same_only_when_both_resolve_to_it() {
        let tmp = tempfile::tempdir().unwrap();
        let a = tmp.path().join("a");
        std::fs::create_dir(&a).unwrap();
        std::os::unix::fs::symlink(&a, tmp.path().join("l")).unwrap();
        assert!(same_directory(&tmp.path().join("l"), &a));
        assert!(same_directory(&a.join("."), &a));
        assert!(!same_directory(tmp.path(), &a));
        assert!(!same_directory(&tmp.path().join("missing"), &a));
    }
}
