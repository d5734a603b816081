//! What a logical restore runs as the superuser: queries of the server's roles, tablespaces and
//! settings (names hex-encoded, so that no name can pass for another), and the globals file
//! applied as its vetted statements.

use std::collections::BTreeSet;

use super::dump::{read_small, recorded};
use super::{LogicalError, Options, Server, GLOBALS_LIMIT};
use crate::pgformat::globals;
use crate::progress::Progress;
use crate::restore::fetch::FetchError;
use crate::restore::offsite::MirrorBackup;
use crate::restore::unprivileged;
use crate::storage::Storage;

/// Runs `sql` as the superuser in `db`.
pub(super) fn admin(
    server: &Server,
    db: &str,
    sql: &str,
    what: &str,
) -> Result<String, LogicalError> {
    unprivileged::psql(
        &server.bindir,
        &server.connection.conninfo(Some(db)),
        None,
        server.passfile.as_deref(),
        sql,
        &Progress::default(),
    )
    .map_err(|source| LogicalError::Server {
        what: what.to_owned(),
        source,
    })
}

/// Rows of a query as the superuser, fields split.
pub(super) fn rows(
    server: &Server,
    sql: &str,
    what: &str,
) -> Result<Vec<Vec<String>>, LogicalError> {
    Ok(admin(server, &server.maintenance_db, sql, what)?
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\u{1f}').map(str::to_owned).collect())
        .collect())
}

/// Names from the server, hex-encoded by the query (a name may hold a line break or the field
/// separator, which would otherwise split it), decoded.
pub(super) fn names(
    server: &Server,
    sql: &str,
    what: &str,
) -> Result<BTreeSet<String>, LogicalError> {
    Ok(rows(server, sql, what)?
        .into_iter()
        .filter_map(|r| {
            let hex = r.first()?;
            let bytes: Option<Vec<u8>> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
                .collect();
            String::from_utf8(bytes?).ok()
        })
        .collect())
}

/// The server's roles.
pub(super) fn roles(server: &Server) -> Result<BTreeSet<String>, LogicalError> {
    names(
        server,
        "SELECT pg_catalog.encode(pg_catalog.convert_to(rolname, 'UTF8'), 'hex') FROM pg_catalog.pg_roles",
        "could not list the server's roles",
    )
}

/// The roles whose rights reach no further than their own: no superuser, CREATEROLE,
/// REPLICATION or BYPASSRLS, and no member (however indirectly) of such a role or of a
/// predefined one.  Only
/// these may lend their rights to the restore role, or receive what a superuser owned.
pub(super) fn plain_roles(server: &Server) -> Result<BTreeSet<String>, LogicalError> {
    names(
        server,
        "SELECT pg_catalog.encode(pg_catalog.convert_to(r.rolname, 'UTF8'), 'hex') FROM pg_catalog.pg_roles r \
          WHERE NOT (r.rolsuper OR r.rolcreaterole OR r.rolreplication OR r.rolbypassrls) \
            AND r.rolname OPERATOR(pg_catalog.!~~) 'pg\\_%' \
            AND NOT EXISTS (SELECT FROM pg_catalog.pg_roles s \
                             WHERE s.oid OPERATOR(pg_catalog.<>) r.oid \
                               AND (s.rolsuper OR s.rolcreaterole OR s.rolreplication OR s.rolbypassrls \
                                    OR s.rolname OPERATOR(pg_catalog.~~) 'pg\\_%') \
                               AND pg_catalog.pg_has_role(r.oid, s.oid, 'MEMBER'))",
        "could not read the server's roles",
    )
}

/// The globals file applied as its vetted statements.
pub(super) fn apply_globals(
    storage: &dyn Storage,
    server: &Server,
    b: &MirrorBackup,
    key: &str,
    options: &Options,
) -> Result<globals::Script, LogicalError> {
    let sha = recorded(b, b.globals_sha256.as_deref(), "globals file")?;
    let text = read_small(storage, key, sha, GLOBALS_LIMIT)?;
    let text =
        String::from_utf8(text).map_err(|_| FetchError::Bad(format!("{key} is not UTF-8 text")))?;
    let existing = roles(server)?;
    let spaces = names(
        server,
        "SELECT pg_catalog.encode(pg_catalog.convert_to(spcname, 'UTF8'), 'hex') FROM pg_catalog.pg_tablespace",
        "could not list the server's tablespaces",
    )?;
    let settings: BTreeSet<String> = rows(
        server,
        "SELECT name FROM pg_catalog.pg_settings WHERE context OPERATOR(pg_catalog.=) 'user'",
        "could not list the server's settings",
    )?
    .into_iter()
    .filter_map(|r| r.into_iter().next())
    .collect();
    let policy = globals::Policy {
        existing_roles: &existing,
        existing_tablespaces: &spaces,
        user_settings: &settings,
        tablespaces: options.tablespaces,
        trust: options.trust_globals,
    };
    let script = globals::vet(&text, &policy).map_err(|source| LogicalError::Globals {
        backup_id: b.backup_id,
        source,
    })?;
    // The file's own text is not what runs: the vetted statements are, read as the vetting read
    // them (UTF-8, standard strings).
    let mut sql =
        String::from("SET client_encoding = 'UTF8';\nSET standard_conforming_strings = on;\n");
    for st in &script.statements {
        sql.push_str(st);
        sql.push_str(";\n");
    }
    admin(
        server,
        &server.maintenance_db,
        &sql,
        &format!("applying the globals of backup {}", b.backup_id),
    )?;
    Ok(script)
}
