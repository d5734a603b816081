//! The configuration a restored data directory brings with it, read the way its server will
//! read it before that server ever starts: `postgres -D <dir> -C <setting>` (postgresql.conf,
//! its includes, postgresql.auto.conf with the recovery settings appended).  What appending
//! cannot override, or must not reset for everyone, is decided here from the value in force:
//!
//! - `data_directory` set in the backed-up postgresql.conf moves the server to another
//!   directory, whose postgresql.auto.conf (and none of the restore's settings) it then reads:
//!   refused.
//! - a preload list or `archive_library` naming a path (`./x.so`, `/tmp/x`) loads a library
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

/// Checks `dest`'s configuration with `postgres` (the program, of the backup's major version
/// `major`; run as the server's OS user: it refuses root), appends the resets it needs to
/// `dest`'s postgresql.auto.conf, and returns them.
pub fn check(postgres: &Path, major: Option<i64>, dest: &Path) -> Result<Vec<Reset>, ConfigError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Err(ConfigError::AsRoot);
    }
    let values = read(postgres, &READ, dest)?;
    let value = |name: &str| {
        values
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, v)| v.as_str())
    };
    let found = value("data_directory");
    if !same_directory(Path::new(found), dest) {
        return Err(ConfigError::Moved {
            found: printable::one_line(found).into_owned(),
        });
    }
    let resets = resets(&values);
    let mut text = String::new();
    for r in &resets {
        text.push_str(&format!("{} = {}\n", r.setting, conf_quote(r.now)));
    }
    if major.is_some_and(|m| m >= 18) {
        // PostgreSQL 18: where CREATE EXTENSION reads control files and scripts (this host's),
        // and the libraries loaded when a client authenticates with `oauth` (pg_hba.conf is
        // the backup's too).
        text.push_str("extension_control_path = '$system'\noauth_validator_libraries = ''\n");
    }
    if !text.is_empty() {
        append_to_auto_conf(
            dest,
            &format!(
                "\n# Reset by backup-mgmt restore: libraries the backed-up configuration names \
                 by their path,\n# or may (review it before setting them again)\n{text}"
            ),
        )?;
    }
    Ok(resets)
}

/// What must be reset, given the values in force (`settings_read`'s).
fn resets(values: &[(&'static str, String)]) -> Vec<Reset> {
    values
        .iter()
        .filter(|(name, v)| *name != "data_directory" && names_a_path(v))
        .map(|(name, v)| Reset {
            setting: name,
            was: printable::one_line(v).into_owned(),
            now: "",
            why: "names a library by its path",
        })
        .collect()
}

/// Whether a list of libraries holds one named by a path outside this host's `$libdir`:
/// PostgreSQL loads such a name as it is, not from `dynamic_library_path`.
/// `$libdir/plugins/auto_explain` (the documented form for `local_preload_libraries`) is not.
fn names_a_path(list: &str) -> bool {
    list.split(',')
        .map(|entry| entry.trim().trim_matches('"'))
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

/// The values in force of `settings`, each from its own `postgres -C`, run at the same time.
fn read(
    postgres: &Path,
    settings: &[&'static str],
    dest: &Path,
) -> Result<Vec<(&'static str, String)>, ConfigError> {
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
    let program = process::program_name(&process::command(&argv("data_directory")));
    let not_read = |setting: &'static str, detail: String| ConfigError::NotRead {
        program: program.clone(),
        setting,
        detail,
    };
    let mut children = Vec::new();
    for setting in settings {
        // From `/`, not wherever this program runs: a relative `data_directory` names another
        // directory for every operator who starts the server from elsewhere.
        let child = process::command(&argv(setting))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| not_read(setting, format!("could not run: {e}")));
        children.push((*setting, child));
    }
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut values = Vec::new();
    let mut failed = None;
    for (setting, child) in children {
        let outcome = child.and_then(|mut child| {
            // Its few lines fit in the pipe: it exits without being read.
            let status = loop {
                match child.try_wait() {
                    Ok(Some(status)) => break Ok(status),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Ok(None) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break Err(not_read(
                            setting,
                            format!("did not finish in {} s", READ_TIMEOUT.as_secs()),
                        ));
                    }
                    Err(e) => break Err(not_read(setting, format!("could not wait: {e}"))),
                }
            }?;
            let mut out = String::new();
            let mut err = String::new();
            if let Some(mut o) = child.stdout.take() {
                let _ = std::io::Read::read_to_string(&mut o, &mut out);
            }
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            if !status.success() {
                return Err(not_read(
                    setting,
                    printable::one_line(&process::tail(&err)).into_owned(),
                ));
            }
            // The one line ending -C's output; a value may itself end in a line break.
            Ok(out.strip_suffix('\n').unwrap_or(&out).to_owned())
        });
        match outcome {
            Ok(v) => values.push((setting, v)),
            Err(e) => failed = failed.or(Some(e)),
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(values),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(pairs: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    /// Plain library names and `$libdir/...` stay; a list holding a path elsewhere (relative,
    /// absolute, climbing out of `$libdir`, quoted) is reset.
    #[test]
    fn paths_are_reset_and_plain_names_stay() {
        let fine = values(&[
            ("data_directory", "/srv/restored"),
            (
                "shared_preload_libraries",
                "pg_stat_statements, backup_mgmt",
            ),
            ("local_preload_libraries", "$libdir/plugins/auto_explain"),
            ("archive_library", "backup_mgmt"),
            ("session_preload_libraries", ""),
        ]);
        assert_eq!(resets(&fine), vec![]);
        let forged = values(&[
            ("shared_preload_libraries", "pg_stat_statements,\"./x.so\""),
            ("session_preload_libraries", "/tmp/evil"),
            ("local_preload_libraries", "$libdir/../../../tmp/evil"),
            ("archive_library", "backup_mgmt"),
            ("data_directory", "/srv/x/../restored"),
        ]);
        let r = resets(&forged);
        let names: Vec<_> = r.iter().map(|r| r.setting).collect();
        assert_eq!(
            names,
            [
                "shared_preload_libraries",
                "session_preload_libraries",
                "local_preload_libraries"
            ]
        );
        assert!(r.iter().all(|r| r.now.is_empty()));
        assert_eq!(r[1].was, "/tmp/evil");
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
