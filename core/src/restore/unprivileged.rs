//! What a logical restore test needs to run backup content without privileges: a throwaway
//! login role of its own (a random password that never appears in any argument vector, log or
//! table: the server only ever sees its SCRAM verifier), the SQL that creates it and a scratch
//! database it owns, the SQL that removes them again, and the reading of pg_restore's complaints
//! into the objects that could not be restored and why.
//!
//! Why a login role and not `SET ROLE`: content restored after `SET ROLE` can `RESET ROLE`
//! back to the superuser that connected; a session that logs in as the role has nowhere to go.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;

use crate::conninfo::Connection;
use crate::process;
use crate::progress::Progress;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Iterations of the verifier (PostgreSQL's default, `scram_iterations`).
const SCRAM_ITERATIONS: u32 = 4096;

/// An SQL identifier, double-quoted.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// An SQL string literal, standard-conforming (no backslash escapes).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn random_bytes(n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // An HMAC takes a key of any length: this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// `Hi()` of RFC 5802: PBKDF2 with HMAC-SHA-256, one block.
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut first = salt.to_vec();
    first.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &first);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

/// The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (as `pg_authid.rolpassword`
/// holds it), so that `CREATE ROLE ... PASSWORD '<verifier>'` never shows the password itself to
/// the server, its log or `pg_stat_activity`.  `password` must be ASCII (SASLprep is identity).
pub fn scram_verifier(password: &str, salt: &[u8], iterations: u32) -> String {
    let salted = salted_password(password.as_bytes(), salt, iterations);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key");
    let b64 = base64::engine::general_purpose::STANDARD;
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        b64.encode(salt),
        b64.encode(stored_key),
        b64.encode(server_key)
    )
}

/// A new name for the role that restores backup `id` (unique: a role left by a crash is never
/// reused).
pub fn restore_role_name(id: i64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("backup_mgmt_restorer_{id}_{}_{nanos}", std::process::id())
}

/// A throwaway role for one restore test.
#[derive(Debug, Clone)]
pub struct RestoreRole {
    pub name: String,
    /// Handed to the programs in `PGPASSWORD`, never in an argument.
    pub password: String,
}

impl RestoreRole {
    /// A role named `name` with a random password.
    pub fn new(name: &str) -> std::io::Result<RestoreRole> {
        let password: String = random_bytes(24)?.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        Ok(RestoreRole {
            name: name.to_owned(),
            password,
        })
    }

    /// The SQL (for psql's stdin, as a superuser) that creates the role alone, without any
    /// privilege beyond logging in, valid for a day, its server messages in English.
    pub fn create_role_sql(&self) -> std::io::Result<String> {
        let verifier = scram_verifier(&self.password, &random_bytes(16)?, SCRAM_ITERATIONS);
        let role = quote_ident(&self.name);
        Ok(format!(
            "CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS \
                 PASSWORD {verifier} VALID UNTIL {until};\n\
             ALTER ROLE {role} SET lc_messages TO 'C';\n",
            verifier = quote_literal(&verifier),
            until = quote_literal(
                &(chrono::Utc::now() + chrono::Duration::days(1))
                    .format("%Y-%m-%d %H:%M:%S+00")
                    .to_string()
            ),
        ))
    }

    /// The SQL (for psql's stdin, as a superuser) that creates the role, without any privilege
    /// beyond logging in, and the scratch database it owns, which nobody else may connect to.
    /// Server messages to the role are in English (`lc_messages = C`), so that pg_restore's
    /// complaints can be read.
    pub fn create_sql(&self, database: &str) -> std::io::Result<String> {
        let db = quote_ident(database);
        Ok(format!(
            "{}CREATE DATABASE {db} OWNER {} TEMPLATE template0;\n\
             REVOKE ALL ON DATABASE {db} FROM PUBLIC;\n",
            self.create_role_sql()?,
            quote_ident(&self.name),
        ))
    }

    /// The SQL that removes what `create_sql` made: the database (unless kept) and the role.  A
    /// kept database keeps its owner, which can no longer log in.
    pub fn drop_sql(&self, database: &str, keep_database: bool) -> String {
        let role = quote_ident(&self.name);
        let db = quote_ident(database);
        if keep_database {
            format!("ALTER ROLE {role} NOLOGIN PASSWORD NULL;\n")
        } else {
            format!("DROP DATABASE IF EXISTS {db} WITH (FORCE);\nDROP ROLE IF EXISTS {role};\n")
        }
    }
}

/// Why psql failed: its own complaint (the last lines of its stderr) or why it did not run.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PsqlFailed(pub String);

/// psql with `sql` on stdin (`ON_ERROR_STOP`), its output unaligned (fields separated by
/// U+001F): connected by `conninfo`, with `password` (in `PGPASSWORD`, never an argument) and
/// `passfile` (`PGPASSFILE`) when given.
pub fn psql(
    bindir: &Path,
    conninfo: &str,
    password: Option<&str>,
    passfile: Option<&Path>,
    sql: &str,
    progress: &Progress,
) -> Result<String, PsqlFailed> {
    let mut cmd = process::command(&[
        bindir.join("psql").into_os_string(),
        "--no-psqlrc".into(),
        "--no-password".into(),
        "--quiet".into(),
        "--no-align".into(),
        "--tuples-only".into(),
        "--field-separator=\u{1f}".into(),
        "--set=ON_ERROR_STOP=1".into(),
        OsString::from(format!("--dbname={conninfo}")),
    ]);
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    if let Some(f) = passfile {
        cmd.env("PGPASSFILE", f);
    }
    let ran = process::run_collecting(
        cmd,
        process::Input::Bytes(sql.as_bytes().to_vec()),
        progress,
    )
    .map_err(|e| PsqlFailed(process::tail(&e.to_string())))?;
    if ran.success {
        Ok(ran.stdout)
    } else {
        Err(PsqlFailed(process::tail(&ran.stderr)))
    }
}

/// How `role` reaches the server `admin` connects to: the same socket when pg_hba.conf lets a
/// password in there, else TCP on the loopback address.
pub fn role_connection(
    admin: &Connection,
    role: &RestoreRole,
    database: &str,
    bindir: &Path,
    progress: &Progress,
) -> Result<Connection, PsqlFailed> {
    let mut tried = Vec::new();
    for host in [admin.host.clone(), "127.0.0.1".to_owned()] {
        let conn = Connection {
            host,
            port: admin.port,
            user: role.name.clone(),
        };
        let info = conn.conninfo(Some(database));
        match psql(
            bindir,
            &info,
            Some(&role.password),
            None,
            "SELECT 1",
            progress,
        ) {
            Ok(_) => return Ok(conn),
            Err(e) => tried.push(format!("{}: {e}", conn.host)),
        }
    }
    Err(PsqlFailed(format!(
        "the restore role could not log in ({}); let password authentication in for it, e.g. \
         \"host all all 127.0.0.1/32 scram-sha-256\" in pg_hba.conf",
        tried.join("; ")
    )))
}

/// Why an object was not restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// Only a superuser may create it (an untrusted extension or language, a C function, an
    /// event trigger...).
    NeedsSuperuser,
    /// It refers to something that was not restored because it needs a superuser (a comment on
    /// such an extension, a function in its language).
    Consequence,
    /// Anything else: a restore problem.
    Failed,
}

/// One object pg_restore could not restore.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NotRestored {
    /// pg_restore's description of the object: its type, name and owner
    /// (`FUNCTION public evil() alice`).
    pub object: String,
    /// The server's error.
    pub error: String,
    pub why: Why,
}

/// Whether a server error message is a privilege refusal (the role runs with lc_messages = C).
fn is_privilege_error(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    [
        "permission denied",
        "must be superuser",
        "must be owner",
        "only superuser",
        "must have createrole",
        "must be a member of",
        "must have privileges",
        "is not trusted",
    ]
    .iter()
    .any(|p| e.contains(p))
}

/// Which lines of `pg_restore --verbose`'s stderr `not_restored` reads (the rest, one line per
/// object restored, is dropped as it arrives, however large the database).
pub fn relevant_line(line: &str) -> bool {
    line.starts_with("pg_restore: from TOC entry ")
        || line.starts_with("pg_restore: error: ")
        || line.starts_with("pg_restore: warning: ")
}

/// Reads `pg_restore --verbose`'s stderr (without `--exit-on-error`) into the objects it could
/// not restore: each "from TOC entry" line names the object, the "error:" line after it says
/// why.
pub fn not_restored(stderr: &str) -> Vec<NotRestored> {
    let mut out: Vec<NotRestored> = Vec::new();
    let mut current: Option<String> = None;
    for line in stderr.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("pg_restore: from TOC entry ") {
            // "215; 1255 16386 FUNCTION public f() alice": the object without the numbers.
            let object = rest
                .split_once("; ")
                .map(|(_, o)| o.splitn(3, ' ').nth(2).unwrap_or(o))
                .unwrap_or(rest);
            current = Some(object.trim().to_owned());
        } else if let Some(rest) = line.strip_prefix("pg_restore: error: ") {
            let error = rest
                .split_once("ERROR:")
                .map(|(_, e)| e.trim())
                .unwrap_or(rest)
                .to_owned();
            let why = if is_privilege_error(&error) {
                Why::NeedsSuperuser
            } else if error.contains("does not exist")
                && out.iter().any(|n| n.why == Why::NeedsSuperuser)
            {
                Why::Consequence
            } else {
                Why::Failed
            };
            out.push(NotRestored {
                object: current.take().unwrap_or_else(|| "(not named)".to_owned()),
                error,
                why,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_has_postgres_form_and_known_value() {
        // RFC 7677's example: password "pencil", salt W22ZaJ0SNY7soEsUEjb6gQ==, 4096 iterations.
        let salt = base64::engine::general_purpose::STANDARD
            .decode("W22ZaJ0SNY7soEsUEjb6gQ==")
            .unwrap();
        let v = scram_verifier("pencil", &salt, 4096);
        assert!(
            v.starts_with("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"),
            "{v}"
        );
        let salted = salted_password(b"pencil", &salt, 4096);
        // SaltedPassword, as an independent PBKDF2 computes it:
        // openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt pass:pencil
        //   -kdfopt hexsalt:5b6d99689d12358eeca04b141236fa81 -kdfopt iter:4096 PBKDF2
        let hex: String = salted.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "c4a49510323ab4f952cac1fa99441939e78ea74d6be81ddf7096e87513dc615d"
        );
    }

    #[test]
    fn role_sql_quotes_and_never_carries_the_password() {
        let r = RestoreRole::new("backup_mgmt_restore\"x").unwrap();
        assert_eq!(r.password.len(), 48);
        let sql = r.create_sql("db'; DROP ROLE postgres; --").unwrap();
        assert!(!sql.contains(&r.password));
        assert!(sql.contains("CREATE ROLE \"backup_mgmt_restore\"\"x\" LOGIN NOSUPERUSER"));
        assert!(sql.contains("CREATE DATABASE \"db'; DROP ROLE postgres; --\" OWNER"));
        assert!(sql.contains("REVOKE ALL ON DATABASE"));
        assert!(r.drop_sql("d", true).contains("NOLOGIN"));
        assert!(r
            .drop_sql("d", false)
            .contains("DROP DATABASE IF EXISTS \"d\" WITH (FORCE)"));
    }

    #[test]
    fn pg_restore_complaints_name_the_objects() {
        // As pg_restore 15 --verbose writes them (the lines between are dropped by
        // relevant_line as they arrive).
        let stderr = "pg_restore: while PROCESSING TOC:\n\
pg_restore: from TOC entry 2; 3079 16390 EXTENSION pg_stat_statements (no owner)\n\
pg_restore: error: could not execute query: ERROR:  permission denied to create extension \"pg_stat_statements\"\n\
pg_restore: from TOC entry 3367; 0 0 COMMENT EXTENSION pg_stat_statements \n\
pg_restore: error: could not execute query: ERROR:  extension \"pg_stat_statements\" does not exist\n\
pg_restore: from TOC entry 3213; 3466 16389 EVENT TRIGGER et alice\n\
pg_restore: error: could not execute query: ERROR:  permission denied to create event trigger \"et\"\n\
pg_restore: from TOC entry 3301; 2606 16401 CONSTRAINT public t t_check alice\n\
pg_restore: error: could not execute query: ERROR:  check constraint \"t_check\" is violated by some row\n\
pg_restore: warning: errors ignored on restore: 4\n";
        let lines: Vec<&str> = stderr.lines().filter(|l| relevant_line(l)).collect();
        assert_eq!(lines.len(), 9);
        let n = not_restored(stderr);
        assert_eq!(n.len(), 4);
        assert_eq!(n[0].object, "EXTENSION pg_stat_statements (no owner)");
        assert_eq!(n[0].why, Why::NeedsSuperuser);
        assert_eq!(n[1].object, "COMMENT EXTENSION pg_stat_statements");
        assert_eq!(n[1].why, Why::Consequence);
        assert_eq!(n[2].object, "EVENT TRIGGER et alice");
        assert_eq!(n[2].why, Why::NeedsSuperuser);
        assert_eq!(n[3].why, Why::Failed, "{:?}", n[3]);
        assert!(n[3].error.contains("violated"));
    }
}
