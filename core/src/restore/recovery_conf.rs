//! The recovery settings a restore appends to `postgresql.auto.conf`: one text for the restore
//! program and the recipes, so that both reset what an earlier restore (or the standby the
//! backup was taken of) left there and pin the timeline they checked the WAL of.

use super::recipe::conf_quote;

/// The lines appended after `# Written by {written_by}`: `restore_command`, every recovery
/// target reset, every other setting recovery runs or connects with reset, then `target` (a
/// whole setting line such as `recovery_target_time = '…'`; None recovers to the end of the
/// WAL) with promotion, on `timeline` (None: the backup's own).
///
/// `restore_command` must be one line; the caller checks it.
pub fn recovery_settings(
    written_by: &str,
    restore_command: &str,
    target: Option<&str>,
    timeline: Option<u32>,
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
        ] {
            assert!(s.contains(reset), "{reset} missing from {s}");
        }
        assert!(
            s.contains(r#"restore_command = 'cp ''/a/%f'' "%p"'"#),
            "{s}"
        );
        // To the end of the WAL, on the backup's own timeline: no target, no promotion.
        let to_the_end = recovery_settings("test", "false", None, None);
        assert!(to_the_end.contains("recovery_target_timeline = 'current'\n"));
        assert!(!to_the_end.contains("promote"), "{to_the_end}");
    }
}
