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
}
