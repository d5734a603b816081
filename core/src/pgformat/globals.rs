//! What a globals file (`pg_dumpall --globals-only`) creates: its roles and tablespaces, read
//! off its `CREATE ROLE` and `CREATE TABLESPACE` statements.  A restore test checks that every
//! role owning something in the dump is among them, so that the backup restores on a new
//! cluster, not only on the one it came from.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::Path;

use crate::files::open::{open_regular, OpenError};
use crate::stream;

/// Globals files are small (a few kB to a few MB); anything larger is not one.
const MAX_GLOBALS_BYTES: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum GlobalsError {
    #[error("the globals file: {0}")]
    Open(#[from] OpenError),
    #[error("reading the globals file: {0}")]
    Read(std::io::Error),
    #[error("the globals file is larger than {MAX_GLOBALS_BYTES} bytes")]
    TooLarge,
}

/// The roles and tablespaces a globals file creates.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Globals {
    pub roles: BTreeSet<String>,
    pub tablespaces: BTreeSet<String>,
}

/// An identifier as pg_dumpall prints it (quoted when needed, `""` for a quote), at the start
/// of `s`.
fn identifier(s: &str) -> Option<String> {
    if let Some(rest) = s.strip_prefix('"') {
        let mut out = String::new();
        let mut chars = rest.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    out.push('"');
                } else {
                    return Some(out);
                }
            } else {
                out.push(c);
            }
        }
        None
    } else {
        let name: String = s
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '$')
            .collect();
        (!name.is_empty()).then_some(name)
    }
}

impl Globals {
    /// The roles of `owners` that the globals do not create.  Predefined roles (`pg_*`, such as
    /// `pg_database_owner`, which owns schema `public` since PostgreSQL 15) exist in every
    /// cluster and are never in a globals file; no other role may have such a name.
    pub fn missing_roles<'a>(&self, owners: impl IntoIterator<Item = &'a String>) -> Vec<String> {
        owners
            .into_iter()
            .filter(|o| !o.starts_with("pg_") && !self.roles.contains(*o))
            .cloned()
            .collect()
    }
}

/// Reads a globals file (`.zst` decompressed) and what it creates.
pub fn read_file(path: &Path) -> Result<Globals, GlobalsError> {
    let file = open_regular(path)?;
    let mut text = Vec::new();
    let limited = |r: &mut dyn Read, text: &mut Vec<u8>| {
        r.take(MAX_GLOBALS_BYTES + 1)
            .read_to_end(text)
            .map_err(GlobalsError::Read)
    };
    if path.extension().is_some_and(|e| e == "zst") {
        let mut dec = stream::decompress(file).map_err(GlobalsError::Read)?;
        limited(&mut dec, &mut text)?;
    } else {
        let mut file = file;
        limited(&mut file, &mut text)?;
    }
    if text.len() as u64 > MAX_GLOBALS_BYTES {
        return Err(GlobalsError::TooLarge);
    }
    Ok(parse(&String::from_utf8_lossy(&text)))
}

/// Reads a globals file's text.
pub fn parse(sql: &str) -> Globals {
    let mut g = Globals::default();
    for line in sql.lines() {
        if let Some(rest) = line.strip_prefix("CREATE ROLE ") {
            g.roles.extend(identifier(rest));
        } else if let Some(rest) = line.strip_prefix("CREATE TABLESPACE ") {
            g.tablespaces.extend(identifier(rest));
        }
    }
    g
}

/// Why a globals file is not applied to a server.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(
        "statement {n} of the globals file is not one pg_dumpall --globals-only writes ({why}): \"{text}\""
    )]
    Statement {
        n: usize,
        why: &'static str,
        text: String,
    },
    #[error("the globals file ends inside a quoted string or identifier, or without a final ';'")]
    Unterminated,
}

/// A globals file's statements, vetted to be applied by a superuser to another cluster.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Script {
    /// The statements to run, in the file's order, each without its `;`.
    pub statements: Vec<String>,
    /// Roles the file creates that exist already (their `CREATE ROLE` is left out; their
    /// `ALTER ROLE` still runs, as `pg_dumpall`'s own output would).
    pub existing_roles: Vec<String>,
    /// Statements left out on purpose (tablespaces when not wanted, per-role settings that load
    /// libraries), shown to the operator.
    pub skipped: Vec<String>,
}

/// Per-role settings that make the server load a library when the role logs in: never applied
/// from a file.
const LIBRARY_SETTINGS: [&str; 2] = ["session_preload_libraries", "local_preload_libraries"];

/// Splits a globals file into statements, refusing whatever psql or the server could read
/// differently from this splitter: backslashes (psql meta-commands) and `:` (psql variables)
/// outside quotes, `/* */` comments, dollar quotes, and string literals with a prefix (`E''`
/// escapes move the end of a string).  pg_dumpall writes none of these in a globals file; its
/// `\restrict`/`\unrestrict` lines (PostgreSQL 17.6, 16.10, 15.14 on) are left out, as they
/// only guard psql against the file itself.
pub fn statements(sql: &str) -> Result<Vec<String>, Refused> {
    #[derive(PartialEq)]
    enum At {
        Code,
        Single,
        Double,
        Comment,
    }
    let refuse = |n: usize, why: &'static str, text: &str| Refused::Statement {
        n,
        why,
        text: text.chars().take(120).collect(),
    };
    let mut out = Vec::new();
    let mut current = String::new();
    let mut at = At::Code;
    let chars: Vec<char> = sql.chars().collect();
    let mut i = 0;
    let mut line_start = true;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match at {
            At::Comment => {
                if c == '\n' {
                    at = At::Code;
                    current.push('\n');
                }
            }
            At::Single => {
                current.push(c);
                if c == '\'' {
                    if next == Some('\'') {
                        current.push('\'');
                        i += 1;
                    } else {
                        at = At::Code;
                    }
                }
            }
            At::Double => {
                current.push(c);
                if c == '"' {
                    if next == Some('"') {
                        current.push('"');
                        i += 1;
                    } else {
                        at = At::Code;
                    }
                }
            }
            At::Code => {
                let n = out.len() + 1;
                let prev = current.chars().last();
                match c {
                    '\\' if line_start && current.trim().is_empty() => {
                        let line: String = chars[i..].iter().take_while(|c| **c != '\n').collect();
                        let word = line.split_whitespace().next().unwrap_or("");
                        if word != "\\restrict" && word != "\\unrestrict" {
                            return Err(refuse(n, "a psql meta-command", &line));
                        }
                        i += line.chars().count();
                        continue;
                    }
                    '\\' => return Err(refuse(n, "a backslash outside quotes", &current)),
                    ':' => return Err(refuse(n, "a psql variable", &current)),
                    '/' if next == Some('*') => return Err(refuse(n, "a /* */ comment", &current)),
                    '$' if !prev.is_some_and(|p| p.is_alphanumeric() || p == '_') => {
                        return Err(refuse(n, "a dollar quote", &current))
                    }
                    '\'' if prev.is_some_and(|p| p.is_alphanumeric() || p == '_' || p == '&') => {
                        return Err(refuse(n, "a string literal with a prefix", &current))
                    }
                    '-' if next == Some('-') => at = At::Comment,
                    '\'' => {
                        current.push(c);
                        at = At::Single;
                    }
                    '"' => {
                        current.push(c);
                        at = At::Double;
                    }
                    ';' => {
                        out.push(current.trim().to_owned());
                        current.clear();
                    }
                    _ => current.push(c),
                }
            }
        }
        line_start = c == '\n';
        i += 1;
    }
    if at == At::Single || at == At::Double || !current.trim().is_empty() {
        return Err(Refused::Unterminated);
    }
    Ok(out.into_iter().filter(|s| !s.is_empty()).collect())
}

/// An identifier that is the whole of `s` (after trimming), as pg_dumpall prints it.
fn sole_identifier(s: &str) -> Option<String> {
    let s = s.trim();
    let name = identifier(s)?;
    let printed_len = if s.starts_with('"') {
        name.len() + name.matches('"').count() + 2
    } else {
        name.len()
    };
    (printed_len == s.len()).then_some(name)
}

/// The statements of a globals file to apply to a server where `existing_roles` and
/// `existing_tablespaces` exist: only the kinds pg_dumpall writes (roles, their settings,
/// comments and memberships, tablespaces, grants), anything else refuses the whole file, so
/// that a file on a target cannot run arbitrary SQL with the superuser's rights that applying
/// globals needs.  `tablespaces`: whether tablespace statements are applied (their locations
/// must exist on this host) or skipped.
pub fn vet(
    sql: &str,
    existing_roles: &BTreeSet<String>,
    existing_tablespaces: &BTreeSet<String>,
    tablespaces: bool,
) -> Result<Script, Refused> {
    let mut script = Script::default();
    for (i, st) in statements(sql)?.into_iter().enumerate() {
        let words: Vec<String> = st
            .split_whitespace()
            .take(3)
            .map(|w| w.to_ascii_uppercase())
            .collect();
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        let refused = |why| Refused::Statement {
            n: i + 1,
            why,
            text: st.chars().take(120).collect(),
        };
        let after = |k: usize| st.split_whitespace().skip(k).collect::<Vec<_>>().join(" ");
        match w.as_slice() {
            ["SET", setting, ..] => {
                let setting = setting.to_ascii_lowercase();
                if setting == "client_encoding" {
                    script.statements.push(st.clone());
                } else if setting != "default_transaction_read_only"
                    && setting != "standard_conforming_strings"
                {
                    return Err(refused("a SET of something other than the encoding"));
                }
            }
            ["CREATE", "ROLE", ..] => {
                let name =
                    sole_identifier(&after(2)).ok_or_else(|| refused("not CREATE ROLE name"))?;
                if existing_roles.contains(&name) {
                    script.existing_roles.push(name);
                } else {
                    script.statements.push(st.clone());
                }
            }
            ["ALTER", "ROLE", ..] => {
                let lower = st.to_ascii_lowercase();
                if LIBRARY_SETTINGS.iter().any(|s| lower.contains(s)) {
                    script.skipped.push(st.clone());
                } else if lower.contains(" rename ") {
                    return Err(refused("a role renamed"));
                } else {
                    script.statements.push(st.clone());
                }
            }
            ["COMMENT", "ON", "ROLE"] | ["GRANT", ..] | ["REVOKE", ..] => {
                script.statements.push(st.clone())
            }
            ["CREATE", "TABLESPACE", ..]
            | ["ALTER", "TABLESPACE", ..]
            | ["COMMENT", "ON", "TABLESPACE"] => {
                let exists = w[0] == "CREATE"
                    && identifier(&after(2)).is_some_and(|t| existing_tablespaces.contains(&t));
                if tablespaces && !exists {
                    script.statements.push(st.clone());
                } else {
                    script.skipped.push(st.clone());
                }
            }
            _ => {
                return Err(refused(
                    "not a role, membership, grant or tablespace statement",
                ))
            }
        }
    }
    Ok(script)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_tablespaces_are_read_with_their_quoting() {
        let sql =
            "--\n-- Roles\n--\n\nCREATE ROLE postgres;\nALTER ROLE postgres WITH SUPERUSER;\n\
                   CREATE ROLE \"Sales \"\"Team\"\"\";\nCREATE ROLE app_user;\n\
                   CREATE TABLESPACE fast OWNER postgres LOCATION '/ssd';\n\
                   -- CREATE ROLE not_me;\n";
        let g = parse(sql);
        assert_eq!(
            g.roles.iter().cloned().collect::<Vec<_>>(),
            vec!["Sales \"Team\"", "app_user", "postgres"]
        );
        let owners: BTreeSet<String> = [
            "app_user".to_owned(),
            "gone".to_owned(),
            "pg_database_owner".to_owned(),
        ]
        .into();
        assert_eq!(g.missing_roles(&owners), vec!["gone"]);
        assert_eq!(g.tablespaces.into_iter().collect::<Vec<_>>(), vec!["fast"]);
    }

    #[test]
    fn compressed_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.globals.sql.zst");
        std::fs::write(
            &path,
            zstd::encode_all(&b"CREATE ROLE a;\n"[..], 3).unwrap(),
        )
        .unwrap();
        assert!(read_file(&path).unwrap().roles.contains("a"));
        assert!(read_file(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn a_pg_dumpall_file_is_applied_as_it_was_written() {
        let sql = "--\n-- PostgreSQL database cluster dump\n--\n\n\\restrict abcDEF123\n\n\
SET default_transaction_read_only = off;\n\nSET client_encoding = 'UTF8';\nSET standard_conforming_strings = on;\n\n\
CREATE ROLE app_owner;\nALTER ROLE app_owner WITH NOSUPERUSER INHERIT LOGIN PASSWORD 'SCRAM-SHA-256$4096:YEZb==$Hw=:Ly=';\n\
CREATE ROLE postgres;\nALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;\n\
CREATE ROLE \"Sales \"\"Team\"\"\";\nCOMMENT ON ROLE readers IS 'multi\nline; -- not a comment';\n\
ALTER ROLE app_owner SET work_mem TO '8MB';\nALTER ROLE app_owner SET session_preload_libraries TO 'evil';\n\
GRANT readers TO app_owner WITH INHERIT TRUE GRANTED BY postgres;\n\
CREATE TABLESPACE fast OWNER postgres LOCATION '/ssd';\n\n\\unrestrict abcDEF123\n\n--\n-- done\n--\n";
        let existing: BTreeSet<String> = ["postgres".to_owned()].into();
        let s = vet(sql, &existing, &BTreeSet::new(), false).unwrap();
        assert_eq!(s.existing_roles, vec!["postgres"]);
        assert_eq!(s.statements[0], "SET client_encoding = 'UTF8'");
        assert_eq!(s.statements[1], "CREATE ROLE app_owner");
        assert!(s.statements[2].ends_with("PASSWORD 'SCRAM-SHA-256$4096:YEZb==$Hw=:Ly='"));
        assert!(s
            .statements
            .contains(&"CREATE ROLE \"Sales \"\"Team\"\"\"".to_owned()));
        assert!(s
            .statements
            .contains(&"COMMENT ON ROLE readers IS 'multi\nline; -- not a comment'".to_owned()));
        assert!(s.statements.iter().any(|x| x.starts_with("GRANT readers")));
        assert_eq!(s.skipped.len(), 2, "{:?}", s.skipped);
        assert!(s.skipped[0].contains("session_preload_libraries"));
        assert!(s.skipped[1].starts_with("CREATE TABLESPACE"));
        let with = vet(sql, &existing, &BTreeSet::new(), true).unwrap();
        assert!(with
            .statements
            .last()
            .unwrap()
            .starts_with("CREATE TABLESPACE"));
        let there: BTreeSet<String> = ["fast".to_owned()].into();
        assert_eq!(vet(sql, &existing, &there, true).unwrap().skipped.len(), 2);
    }

    #[test]
    fn a_globals_file_cannot_smuggle_sql_past_the_vetting() {
        let none = BTreeSet::new();
        for evil in [
            "COPY (SELECT 1) TO PROGRAM 'touch /tmp/x';\n",
            "CREATE ROLE a; DO $$BEGIN PERFORM 1; END$$;\n",
            "ALTER SYSTEM SET archive_command = 'x';\n",
            // An escape string whose end this splitter and the server would see differently.
            "COMMENT ON ROLE a IS E'\\' '; COPY t TO PROGRAM 'x'; --';\n",
            "COMMENT ON ROLE a IS /* ' */ 'y'; COPY t TO PROGRAM 'x'; --';\n",
            "CREATE ROLE a \\! touch /tmp/x\n;\n",
            "\\! touch /tmp/x\n",
            "CREATE ROLE :foo;\n",
            "CREATE ROLE a; SELECT pg_read_file('/etc/passwd');\n",
            "CREATE ROLE a WITH SUPERUSER; CREATE ROLE b\n",
            "COMMENT ON ROLE a IS 'never ends;\n",
            "SET role = postgres;\n",
            "SET session_authorization = postgres;\n",
            "CREATE ROLE a; ALTER ROLE a RENAME TO postgres2;\n",
        ] {
            assert!(vet(evil, &none, &none, true).is_err(), "{evil}");
        }
        // A dollar sign inside a name is a name, not a quote.
        assert!(vet("CREATE ROLE a$b;\n", &none, &none, true).is_ok());
    }
}
