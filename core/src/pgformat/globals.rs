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
    /// Statements left out on purpose (see `vet`), shown to the operator.
    pub skipped: Vec<String>,
    /// The roles the statements create.
    pub created_roles: Vec<String>,
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
    // psql reads a line only up to a NUL, and other control characters have no business in a
    // globals file: this splitter and psql must see the same text.
    if let Some(c) = sql
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(refuse(
            0,
            "a control character",
            &format!("U+{:04X}", c as u32),
        ));
    }
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
                    '\'' | '"'
                        if prev.is_some_and(|p| p.is_alphanumeric() || p == '_' || p == '&') =>
                    {
                        return Err(refuse(n, "a quoted string or name with a prefix", &current))
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

/// A token of a vetted statement (`statements` has refused what could be read two ways).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// An unquoted word: a keyword, an identifier (folded to lower case), a number.
    Word(String),
    /// A double-quoted identifier, unescaped.
    Quoted(String),
    /// A string literal.
    Literal,
    Other(char),
}

impl Token {
    fn is(&self, keyword: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(keyword))
    }
    /// The role or setting name this token is, as PostgreSQL reads it: an unquoted word folded
    /// to lower case as a UTF-8 server folds it (ASCII only); never one of the words that name
    /// a role without being its name (`CURRENT_USER`, `ALL`...).
    fn ident(&self) -> Option<String> {
        match self {
            Token::Word(w) if ROLE_SPECS.iter().any(|k| w.eq_ignore_ascii_case(k)) => None,
            Token::Word(w) => Some(w.to_ascii_lowercase()),
            Token::Quoted(q) => Some(q.clone()),
            _ => None,
        }
    }
}

/// Unquoted, these stand for a role (or every role) rather than name one.
const ROLE_SPECS: [&str; 6] = [
    "CURRENT_USER",
    "CURRENT_ROLE",
    "SESSION_USER",
    "ALL",
    "PUBLIC",
    "NONE",
];

/// A character of an unquoted word as PostgreSQL's scanner reads it (every non-ASCII
/// character is one).
fn word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$' || !c.is_ascii()
}

fn tokens(st: &str) -> Vec<Token> {
    let chars: Vec<char> = st.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == '\'' || c == '"' {
            let mut text = String::new();
            i += 1;
            while i < chars.len() {
                if chars[i] == c && chars.get(i + 1) == Some(&c) {
                    text.push(c);
                    i += 2;
                } else if chars[i] == c {
                    i += 1;
                    break;
                } else {
                    text.push(chars[i]);
                    i += 1;
                }
            }
            out.push(if c == '"' {
                Token::Quoted(text)
            } else {
                Token::Literal
            });
        } else if word_char(c) && c != '$' {
            let start = i;
            while i < chars.len() && word_char(chars[i]) {
                i += 1;
            }
            out.push(Token::Word(chars[start..i].iter().collect()));
        } else {
            out.push(Token::Other(c));
            i += 1;
        }
    }
    out
}

/// Role attributes that reach beyond the role itself: never applied from a file unless trusted.
const PRIVILEGED_ATTRIBUTES: [&str; 4] = ["SUPERUSER", "CREATEROLE", "REPLICATION", "BYPASSRLS"];
/// What else `ALTER ROLE ... WITH` may say.
const PLAIN_ATTRIBUTES: [&str; 17] = [
    "WITH",
    "NOSUPERUSER",
    "NOCREATEROLE",
    "NOREPLICATION",
    "NOBYPASSRLS",
    "INHERIT",
    "NOINHERIT",
    "CREATEDB",
    "NOCREATEDB",
    "LOGIN",
    "NOLOGIN",
    "CONNECTION",
    "LIMIT",
    "PASSWORD",
    "ENCRYPTED",
    "VALID",
    "UNTIL",
];

/// What applying a globals file may do to this server.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub existing_roles: &'a BTreeSet<String>,
    pub existing_tablespaces: &'a BTreeSet<String>,
    /// Settings any role may set for itself (`pg_settings.context = 'user'`): the only per-role
    /// settings applied unless trusted.
    pub user_settings: &'a BTreeSet<String>,
    /// Create the file's tablespaces (their locations must exist on this host).
    pub tablespaces: bool,
    /// Apply every statement of the kinds pg_dumpall writes: attributes such as SUPERUSER,
    /// memberships in any role, grants on objects and parameters, changes to existing roles.
    pub trust: bool,
}

/// The statements of a globals file to apply to a server, as a superuser.  Only the kinds
/// pg_dumpall writes are accepted (roles, their settings, comments and memberships, grants,
/// tablespaces); anything else refuses the whole file.  Unless `policy.trust`, what is applied
/// only creates: new roles with attributes that reach no further than themselves, per-role
/// settings any role may set, memberships in roles created here, comments on them, new
/// tablespaces when asked; the rest (roles that exist, SUPERUSER and the like, memberships in
/// roles that existed, grants on objects or parameters, REVOKE) is left out and listed.  So a
/// file on a target, which others may write, can add roles but not take over this server.
pub fn vet(sql: &str, policy: &Policy<'_>) -> Result<Script, Refused> {
    let mut script = Script::default();
    let mut created_spaces: BTreeSet<String> = BTreeSet::new();
    for (i, st) in statements(sql)?.into_iter().enumerate() {
        let t = tokens(&st);
        let refused = |why| Refused::Statement {
            n: i + 1,
            why,
            text: st.chars().take(120).collect(),
        };
        let kw = |k: usize, word: &str| t.get(k).is_some_and(|x| x.is(word));
        let ident = |k: usize| t.get(k).and_then(Token::ident);
        let ours = |name: &Option<String>| {
            name.as_ref()
                .is_some_and(|n| script.created_roles.contains(n))
        };
        enum Verdict {
            Apply,
            Skip,
        }
        let verdict = if kw(0, "SET") {
            match ident(1).as_deref() {
                // This side sends its own (UTF8, standard strings).
                Some(
                    "client_encoding"
                    | "default_transaction_read_only"
                    | "standard_conforming_strings",
                ) => continue,
                _ => return Err(refused("a SET of something other than the encoding")),
            }
        } else if kw(0, "CREATE") && kw(1, "ROLE") {
            let name = ident(2)
                .filter(|_| t.len() == 3)
                .ok_or_else(|| refused("not CREATE ROLE name"))?;
            if policy.existing_roles.contains(&name) {
                script.existing_roles.push(name);
                continue;
            }
            script.created_roles.push(name);
            Verdict::Apply
        } else if kw(0, "ALTER") && kw(1, "ROLE") {
            let name = ident(2);
            let words: Vec<String> = t[3.min(t.len())..]
                .iter()
                .filter_map(|x| match x {
                    Token::Word(w) => Some(w.to_ascii_uppercase()),
                    _ => None,
                })
                .collect();
            // The setting an ALTER ROLE ... [IN DATABASE d] SET names.
            let setting = if kw(3, "SET") {
                Some(ident(4))
            } else if kw(3, "IN") && kw(4, "DATABASE") && kw(6, "SET") {
                Some(ident(7))
            } else {
                None
            };
            match setting {
                Some(s) => {
                    let s = s.ok_or_else(|| refused("a setting without a name"))?;
                    let s = s.to_ascii_lowercase();
                    if LIBRARY_SETTINGS.contains(&s.as_str())
                        || !(policy.trust || ours(&name) && policy.user_settings.contains(&s))
                    {
                        Verdict::Skip
                    } else {
                        Verdict::Apply
                    }
                }
                None if kw(3, "RESET") => Verdict::Skip,
                None => {
                    // The grammar reads a quoted word as an attribute too ("superuser"): only
                    // unquoted words and literals may follow the name.
                    if t[3.min(t.len())..]
                        .iter()
                        .any(|x| matches!(x, Token::Quoted(_)))
                    {
                        return Err(refused("a quoted role attribute"));
                    }
                    if let Some(w) = words.iter().find(|w| {
                        !PLAIN_ATTRIBUTES.contains(&w.as_str())
                            && !PRIVILEGED_ATTRIBUTES.contains(&w.as_str())
                            && !w.starts_with(|c: char| c.is_ascii_digit())
                            && w.as_str() != "NULL"
                    }) {
                        let _ = w;
                        return Err(refused("not a role attribute pg_dumpall writes"));
                    }
                    let privileged = words
                        .iter()
                        .any(|w| PRIVILEGED_ATTRIBUTES.contains(&w.as_str()));
                    if policy.trust || ours(&name) && !privileged {
                        Verdict::Apply
                    } else {
                        Verdict::Skip
                    }
                }
            }
        } else if kw(0, "COMMENT") && kw(1, "ON") && kw(2, "ROLE") {
            if policy.trust || ours(&ident(3)) {
                Verdict::Apply
            } else {
                Verdict::Skip
            }
        } else if kw(0, "GRANT") || kw(0, "REVOKE") {
            // A membership: GRANT role TO grantee [WITH ...] [GRANTED BY grantor].
            let membership = kw(0, "GRANT") && kw(2, "TO") && !t.iter().any(|x| x.is("ON"));
            if policy.trust || membership && ours(&ident(1)) {
                Verdict::Apply
            } else {
                Verdict::Skip
            }
        } else if kw(0, "CREATE") && kw(1, "TABLESPACE") {
            let name = ident(2).ok_or_else(|| refused("not CREATE TABLESPACE name"))?;
            if policy.tablespaces && !policy.existing_tablespaces.contains(&name) {
                created_spaces.insert(name);
                Verdict::Apply
            } else {
                Verdict::Skip
            }
        } else if (kw(0, "ALTER") && kw(1, "TABLESPACE"))
            || (kw(0, "COMMENT") && kw(1, "ON") && kw(2, "TABLESPACE"))
        {
            let at = if kw(0, "ALTER") { 2 } else { 3 };
            if policy.tablespaces && ident(at).is_some_and(|n| created_spaces.contains(&n)) {
                Verdict::Apply
            } else {
                Verdict::Skip
            }
        } else {
            return Err(refused(
                "not a role, membership, grant or tablespace statement",
            ));
        };
        match verdict {
            Verdict::Apply => script.statements.push(st),
            Verdict::Skip => script.skipped.push(st),
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

    fn policy<'a>(
        existing: &'a BTreeSet<String>,
        settings: &'a BTreeSet<String>,
        tablespaces: bool,
        trust: bool,
    ) -> Policy<'a> {
        Policy {
            existing_roles: existing,
            existing_tablespaces: settings,
            user_settings: settings,
            tablespaces,
            trust,
        }
    }

    const DUMPALL: &str = "--\n-- PostgreSQL database cluster dump\n--\n\n\\restrict abcDEF123\n\n\
SET default_transaction_read_only = off;\n\nSET client_encoding = 'UTF8';\nSET standard_conforming_strings = on;\n\n\
CREATE ROLE app_owner;\nALTER ROLE app_owner WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS CONNECTION LIMIT -1 PASSWORD 'SCRAM-SHA-256$4096:YEZb==$Hw=:Ly=' VALID UNTIL 'infinity';\n\
CREATE ROLE postgres;\nALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;\n\
CREATE ROLE \"Sales \"\"Team\"\"\";\nCREATE ROLE readers;\nCOMMENT ON ROLE readers IS 'multi\nline; -- not a comment';\n\
CREATE ROLE dba;\nALTER ROLE dba WITH SUPERUSER LOGIN;\n\
ALTER ROLE app_owner SET work_mem TO '8MB';\nALTER ROLE app_owner SET session_preload_libraries TO 'evil';\n\
ALTER ROLE app_owner IN DATABASE shop SET lo_compat_privileges TO 'on';\n\
GRANT readers TO app_owner WITH INHERIT TRUE GRANTED BY postgres;\n\
GRANT postgres TO app_owner;\nGRANT SET ON PARAMETER archive_command TO app_owner;\n\
CREATE TABLESPACE fast OWNER postgres LOCATION '/ssd';\n\n\\unrestrict abcDEF123\n\n--\n-- done\n--\n";

    #[test]
    fn a_pg_dumpall_file_creates_roles_and_takes_over_nothing() {
        let existing: BTreeSet<String> = ["postgres".to_owned()].into();
        let settings: BTreeSet<String> = ["work_mem".to_owned()].into();
        let s = vet(DUMPALL, &policy(&existing, &settings, false, false)).unwrap();
        assert_eq!(s.existing_roles, vec!["postgres"]);
        assert_eq!(
            s.created_roles,
            vec!["app_owner", "Sales \"Team\"", "readers", "dba"]
        );
        assert_eq!(s.statements[0], "CREATE ROLE app_owner");
        assert!(s.statements[1].contains("PASSWORD 'SCRAM-SHA-256$4096:YEZb==$Hw=:Ly='"));
        assert!(s
            .statements
            .contains(&"COMMENT ON ROLE readers IS 'multi\nline; -- not a comment'".to_owned()));
        assert!(s
            .statements
            .contains(&"ALTER ROLE app_owner SET work_mem TO '8MB'".to_owned()));
        assert!(s.statements.iter().any(|x| x.starts_with("GRANT readers")));
        // Left out: the existing superuser's attributes, a new superuser, a library, a setting
        // only a superuser may set, a membership in an existing role, a parameter grant, the
        // tablespace (not asked for).
        for left in [
            "ALTER ROLE postgres WITH SUPERUSER",
            "ALTER ROLE dba WITH SUPERUSER LOGIN",
            "session_preload_libraries",
            "lo_compat_privileges",
            "GRANT postgres TO app_owner",
            "GRANT SET ON PARAMETER",
            "CREATE TABLESPACE",
        ] {
            assert!(
                s.skipped.iter().any(|x| x.contains(left)),
                "{left}: {:?}",
                s.skipped
            );
            assert!(!s.statements.iter().any(|x| x.contains(left)), "{left}");
        }
        // Trusted, all of it but the library and the existing role's creation; the tablespace
        // when asked for, unless it exists.
        let all = vet(DUMPALL, &policy(&existing, &settings, true, true)).unwrap();
        assert!(all
            .statements
            .iter()
            .any(|x| x.contains("ALTER ROLE dba WITH SUPERUSER")));
        assert!(all
            .statements
            .iter()
            .any(|x| x == "GRANT postgres TO app_owner"));
        assert!(all
            .statements
            .last()
            .unwrap()
            .starts_with("CREATE TABLESPACE"));
        assert_eq!(all.skipped.len(), 1);
        let there: BTreeSet<String> = ["fast".to_owned(), "work_mem".to_owned()].into();
        let s = vet(DUMPALL, &policy(&existing, &there, true, true)).unwrap();
        assert!(s.skipped.iter().any(|x| x.starts_with("CREATE TABLESPACE")));
    }

    #[test]
    fn a_globals_file_cannot_smuggle_sql_past_the_vetting() {
        let none = BTreeSet::new();
        let p = policy(&none, &none, true, true);
        for evil in [
            "COPY (SELECT 1) TO PROGRAM 'touch /tmp/x';\n",
            "CREATE ROLE a; DO $$BEGIN PERFORM 1; END$$;\n",
            "ALTER SYSTEM SET archive_command = 'x';\n",
            // An escape string whose end this splitter and the server would see differently.
            "COMMENT ON ROLE a IS E'\\' '; COPY t TO PROGRAM 'x'; --';\n",
            "COMMENT ON ROLE a IS /* ' */ 'y'; COPY t TO PROGRAM 'x'; --';\n",
            // psql stops reading a line at a NUL: the rest would be read differently.
            "COMMENT ON ROLE a IS 'x\0';\nCOMMENT ON ROLE a IS '; COPY (SELECT 1) TO PROGRAM ''id''; --';\n",
            "ALTER ROLE a SET U&\"session\\005Fpreload_libraries\" TO 'x';\n",
            "CREATE ROLE a \\! touch /tmp/x\n;\n",
            "\\! touch /tmp/x\n",
            "CREATE ROLE :foo;\n",
            "CREATE ROLE a; SELECT pg_read_file('/etc/passwd');\n",
            "CREATE ROLE a WITH SUPERUSER; CREATE ROLE b\n",
            "COMMENT ON ROLE a IS 'never ends;\n",
            "SET role = postgres;\n",
            "SET session_authorization = postgres;\n",
            "CREATE ROLE a; ALTER ROLE a\nRENAME TO postgres2;\n",
        ] {
            assert!(vet(evil, &p).is_err(), "{evil}");
        }
        // The grammar reads a quoted word as an attribute.
        let none2 = BTreeSet::new();
        let strict = policy(&none2, &none2, false, false);
        assert!(vet(
            "CREATE ROLE x;\nALTER ROLE x WITH \"superuser\" LOGIN;\n",
            &strict
        )
        .is_err());
        // Words that stand for a role are never the name of one created here; case folds as a
        // UTF-8 server folds it (ASCII only).
        for sly in [
            "CREATE ROLE \"current_user\";\nALTER ROLE CURRENT_USER WITH PASSWORD 'p';\n",
            "CREATE ROLE \"all\";\nALTER ROLE ALL SET search_path TO 'x';\n",
            "CREATE ROLE \"session_user\";\nGRANT SESSION_USER TO x;\n",
            "CREATE ROLE \"é\";\nALTER ROLE É WITH LOGIN;\n",
        ] {
            let s = vet(sly, &strict).unwrap();
            assert_eq!(s.statements.len(), 1, "{sly}: {:?}", s.statements);
            assert_eq!(s.skipped.len(), 1, "{sly}");
        }
        // A dollar sign inside a name is a name, not a quote.
        assert!(vet("CREATE ROLE a$b;\n", &p).is_ok());
    }
}
