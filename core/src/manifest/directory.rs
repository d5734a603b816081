//! The manifest of a directory-format dump, `backup_manifest.sha256`: one `sha256  name` line per
//! file, as `sha256sum` writes and `sha256sum --check` reads it (a `sha256 *name` line, which
//! `sha256sum --binary` writes for a dump registered by a script, is read too: on Linux the two
//! modes hash the same bytes).  Its own sha256 is the
//! catalog's checksum of the backup.  Names are plain file names: a line naming a path, `.` or
//! `..`, a name already named, or with a digest that is not 64 hex digits is refused.

use crate::checksum::is_sha256_hex;

/// Its file name inside the backup directory.
pub const DIRECTORY_MANIFEST: &str = "backup_manifest.sha256";

#[derive(Debug, thiserror::Error)]
#[error("malformed manifest line \"{0}\"")]
pub struct BadLine(pub String);

/// One line per (sha256, name), in the order given.
pub fn render<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    files
        .into_iter()
        .map(|(sha256, name)| format!("{sha256}  {name}\n"))
        .collect()
}

/// The (sha256, name) lines of a manifest.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, BadLine> {
    // A name given twice (with two digests) is refused: the readers would otherwise disagree
    // on which line counts.
    let mut seen = std::collections::HashSet::new();
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let bad = || BadLine(line.to_owned());
            // The digest is the first 64 characters, then the mode mark: " " (text) or "*"
            // (binary); split there, not at the first "  ", so a name may hold any character.
            let (sum, rest) = line.split_at_checked(64).ok_or_else(bad)?;
            let name = rest
                .strip_prefix("  ")
                .or_else(|| rest.strip_prefix(" *"))
                .ok_or_else(bad)?;
            let plain = !name.is_empty()
                && !name.contains('/')
                && name != "."
                && name != ".."
                && is_sha256_hex(sum);
            if plain && seen.insert(name) {
                Ok((sum.to_owned(), name.to_owned()))
            } else {
                Err(bad())
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_names_cannot_leave_the_directory() {
        let s = "a".repeat(64);
        assert!(parse(&format!("{s}  ../etc/passwd\n")).is_err());
        assert!(parse(&format!("{s}  ..\n")).is_err());
        assert!(parse(&format!("{}  ok.dat\n", "A".repeat(64))).is_err());
        assert_eq!(
            parse(&render([(s.as_str(), "ok.dat")])).unwrap(),
            vec![(s.clone(), "ok.dat".to_owned())]
        );
    }

    /// `sha256sum --binary` marks each name with `*`; the mark is not part of the name, and a
    /// binary line still may not leave the directory.
    #[test]
    fn binary_mode_lines_name_the_same_files() {
        let s = "b".repeat(64);
        assert_eq!(
            parse(&format!("{s} *toc.dat\n{s}  3001.dat.gz\n")).unwrap(),
            vec![
                (s.clone(), "toc.dat".to_owned()),
                (s.clone(), "3001.dat.gz".to_owned())
            ]
        );
        assert!(parse(&format!("{s} *../toc.dat\n")).is_err());
        assert!(parse(&format!("{s} *\n")).is_err());
        // One space and no mark, or a short digest, is not a sha256sum line.
        assert!(parse(&format!("{s} toc.dat\n")).is_err());
        assert!(parse(&format!("{}  toc.dat\n", &s[..63])).is_err());
        // One name twice, in either mode, is refused whatever the digests.
        assert!(parse(&format!("{s}  toc.dat\n{s} *toc.dat\n")).is_err());
        assert!(parse(&format!("{s}  toc.dat\n{s}  toc.dat\n")).is_err());
        // Non-ASCII text where the digest ends is refused, not a panic.
        assert!(parse(&format!("{}é  toc.dat\n", &s[..63])).is_err());
    }
}
