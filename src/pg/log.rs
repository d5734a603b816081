//! Text from callers on its way into the server log.

/// `s` fit for one log line: control characters (line breaks above all) escaped, so that text a
/// caller chose (an error message, a path) cannot forge log lines.
pub fn escape_for_log(s: &str) -> String {
    backup_mgmt_core::printable::one_line(s).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn line_breaks_cannot_start_a_log_line() {
        let forged = "boom\n2026-12-03 10:00:00 UTC [1] LOG:  all is well\r\t";
        let e = super::escape_for_log(forged);
        assert!(!e.contains('\n') && !e.contains('\r'), "{e}");
        assert!(e.contains("\\n2026"));
        assert_eq!(super::escape_for_log("café"), "café");
    }
}
