//! The recovery settings a restore appends to `postgresql.auto.conf`: one text for the restore
//! program and the recipes, so that both reset what an earlier restore (or the standby the
//! backup was taken of) left there and pin the timeline they checked the WAL of.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::recipe::conf_quote;
use crate::files::error::IoError;

/// The lines appended after `# Written by {written_by}`: `restore_command`, every recovery
/// target reset, every other setting recovery runs or connects with reset, then `target` (a
/// whole setting line such as `recovery_target_time = '…'`; None recovers to the end of the
/// WAL) with promotion, on `timeline` (None: the backup's own), for a server of `pg_version`
/// (`180001`; None: unknown, settings of later versions left out).
///
/// `restore_command` must be one line; the caller checks it.
pub fn recovery_settings(
    written_by: &str,
    restore_command: &str,
    target: Option<&str>,
    timeline: Option<u32>,
    pg_version: Option<i64>,
) -> String {
    // A backup of a cluster restored before carries that restore's settings (a recipe's
    // `recovery_target_lsn` beside this one's `recovery_target_time` is "multiple recovery
    // targets", and the server refuses to start): every target is reset (the last value of a
    // setting wins), then this one is set.
    let mut text = format!(
        "\n# Written by {written_by}\nrestore_command = {}\n\
         recovery_target = ''\nrecovery_target_time = ''\nrecovery_target_lsn = ''\n\
         recovery_target_xid = ''\nrecovery_target_name = ''\nrecovery_target_inclusive = on\n",
        conf_quote(restore_command)
    );
    // What else recovery acts on, as a backup may carry it: a standby's (or a forger's)
    // `primary_conninfo` would stream WAL from that server instead of the WAL checked here (when
    // a `standby.signal` came with the backup: the restore removes it), the two commands
    // would run whatever they say on this host while recovering, and a delayed standby's
    // `recovery_min_apply_delay` holds every commit back that long in any archive recovery.
    // Restoring is this text's job; the rest of the backed-up configuration is the operator's
    // to review.
    text.push_str(
        "primary_conninfo = ''\nprimary_slot_name = ''\n\
         recovery_end_command = ''\narchive_cleanup_command = ''\n\
         recovery_min_apply_delay = 0\n",
    );
    // What the backed-up configuration would run, load from a path, write or open to others on
    // this host before anyone has read it (a forged backup on an off-site target can say
    // anything; a backup of the original shares its catalog and backup roots): the shell
    // commands and the library search path are reset (a library named plainly then loads from
    // this host's `$libdir` only), archiving and backup_mgmt's scheduler are off, the server
    // log goes to `log` beneath the data directory with the default names and prefix (a log
    // line must never be writable onto a file, nor read back as a configuration line), and the
    // server listens on localhost only until its pg_hba.conf has been read; no library is
    // loaded into each session.  `shared_preload_libraries` and `archive_library` stay: the
    // restore program checks the former for paths (`backed_up_config`; the latter is not
    // loaded with archiving off), the recipes reset both.
    text.push_str(
        "archive_mode = 'off'\narchive_command = ''\nbackup_mgmt.enabled = 'off'\n\
         session_preload_libraries = ''\n\
         ssl_passphrase_command = ''\nexternal_pid_file = ''\n\
         dynamic_library_path = '$libdir'\njit_provider = 'llvmjit'\n\
         log_directory = 'log'\nlog_filename = 'postgresql-%Y-%m-%d_%H%M%S.log'\n\
         log_line_prefix = '%m [%p] '\nlisten_addresses = 'localhost'\n",
    );
    if pg_version.is_some_and(|v| v >= 180000) {
        // PostgreSQL 18: where CREATE EXTENSION reads control files and scripts (this host's),
        // and the libraries loaded when a client authenticates with `oauth` (pg_hba.conf is the
        // backup's too).  An older server refuses to start on a name it does not know.
        text.push_str("extension_control_path = '$system'\noauth_validator_libraries = ''\n");
    }
    // The WAL was checked along the path to this timeline: recovery keeps to it, not to
    // whichever timeline is newest in the archive, which may have branched off elsewhere
    // (PostgreSQL's 'latest' would then refuse to start).  The backup's own is 'current', which
    // needs no history file of it (a number other than 1 would).
    text.push_str(&match timeline {
        Some(tl) => format!("recovery_target_timeline = '{tl}'\n"),
        None => "recovery_target_timeline = 'current'\n".to_owned(),
    });
    if let Some(target) = target {
        text.push_str(target);
        text.push_str("\nrecovery_target_action = 'promote'\n");
    }
    text
}

/// Appends `text` to `dest`'s `postgresql.auto.conf` and makes it durable: never through a
/// symlink planted in the backup.  The directory is fsynced when the control file goes in.
pub fn append_to_auto_conf(dest: &Path, text: &str) -> Result<(), IoError> {
    let conf = dest.join("postgresql.auto.conf");
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&conf)
        .map_err(|e| IoError::new("could not open", &conf, e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| IoError::new("could not write", &conf, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every target an earlier restore may have left is reset before this one is set, and the
    /// timeline is the one checked (or the backup's own).
    #[test]
    fn settings_reset_earlier_targets_and_pin_the_timeline() {
        let s = recovery_settings(
            "test",
            "cp '/a/%f' \"%p\"",
            Some("recovery_target_lsn = '0/5000000'"),
            Some(2),
            Some(180001),
        );
        let reset = s.find("recovery_target_lsn = ''").unwrap();
        let set = s.find("recovery_target_lsn = '0/5000000'").unwrap();
        assert!(reset < set, "{s}");
        assert!(s.contains("recovery_target_timeline = '2'\n"), "{s}");
        assert!(s.contains("recovery_target_action = 'promote'"), "{s}");
        for reset in [
            "primary_conninfo = ''\n",
            "primary_slot_name = ''\n",
            "recovery_end_command = ''\n",
            "archive_cleanup_command = ''\n",
            "recovery_min_apply_delay = 0\n",
            "archive_mode = 'off'\n",
            "archive_command = ''\n",
            "backup_mgmt.enabled = 'off'\n",
            "session_preload_libraries = ''\n",
            "log_directory = 'log'\n",
            "log_line_prefix = '%m [%p] '\n",
            "listen_addresses = 'localhost'\n",
            "ssl_passphrase_command = ''\n",
            "external_pid_file = ''\n",
            "dynamic_library_path = '$libdir'\n",
            "jit_provider = 'llvmjit'\n",
            "extension_control_path = '$system'\n",
            "oauth_validator_libraries = ''\n",
        ] {
            assert!(s.contains(reset), "{reset} missing from {s}");
        }
        assert!(
            s.contains(r#"restore_command = 'cp ''/a/%f'' "%p"'"#),
            "{s}"
        );
        // To the end of the WAL, on the backup's own timeline: no target, no promotion.
        let to_the_end = recovery_settings("test", "false", None, None, Some(150014));
        assert!(!to_the_end.contains("oauth"), "{to_the_end}");
        assert!(to_the_end.contains("recovery_target_timeline = 'current'\n"));
        assert!(!to_the_end.contains("promote"), "{to_the_end}");
    }
}
