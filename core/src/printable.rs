//! Text from elsewhere (a target's mirror, a dump's object names, a caller's error) on its way
//! to a terminal or a log: control characters escaped, so that it can neither forge a line of
//! the server log nor send a terminal escape sequences (moving the cursor, erasing lines,
//! writing the clipboard).

use std::borrow::Cow;

/// `s` fit for one line: every control character (line breaks too) escaped as Rust writes it
/// (`\n`, `\u{1b}`).
pub fn one_line(s: &str) -> Cow<'_, str> {
    escaped(s, |_| true)
}

/// `s` for a terminal, its line breaks kept (a program's own complaint may span lines): every
/// other control character escaped.
pub fn lines(s: &str) -> Cow<'_, str> {
    escaped(s, |c| c != '\n')
}

fn escaped(s: &str, escape: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() && escape(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() && escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_forge_a_line_or_reach_a_terminal() {
        let forged = "boom\n2026-12-03 10:00:00 UTC [1] LOG:  all is well\r\t";
        let e = one_line(forged);
        assert!(!e.contains('\n') && !e.contains('\r'), "{e}");
        assert!(e.contains("\\n2026"));
        assert_eq!(one_line("café"), "café");
        assert!(matches!(one_line("plain"), Cow::Borrowed(_)));
        // An OSC 52 clipboard write and a line erase, from a mirror's field.
        let hostile = "full\u{1b}]52;c;aGk=\u{7}\u{1b}[1A\u{1b}[2K";
        for e in [one_line(hostile), lines(hostile)] {
            assert!(!e.chars().any(char::is_control), "{e:?}");
            assert!(e.starts_with("full\\u{1b}]52"), "{e}");
        }
        // C1 controls too (U+009B is CSI on some terminals).
        assert!(!one_line("a\u{9b}2K").chars().any(char::is_control));
        assert_eq!(lines("one\ntwo\r"), "one\ntwo\\r");
    }
}
