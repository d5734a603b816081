//! Restoring a logical backup (`pg_dump` custom or directory format) from an off-site target into
//! a new database of a running server, with no catalog database: the dump is chosen from the
//! target's mirror, its globals file (roles, memberships, tablespaces) is applied first, then the
//! dump is streamed from the target into `pg_restore`, its sha256 checked on the way.
//!
//! Who runs what: applying globals needs a superuser, so that file is never run as it stands:
//! only the statements `pg_dumpall --globals-only` writes are applied (`globals::vet`); anything
//! else refuses the whole file.  The dump itself, which can hold any SQL, runs as a throwaway
//! login role (`RestoreRole`) that is no superuser and borrows the rights of the dump's owners
//! this restore created, so that their ownership is restored as dumped; what only a superuser may
//! create is named, not restored.  Afterwards the role is disarmed; what it still owns (what a
//! superuser owned in the dump) goes to the database's owner when that is no superuser, or stays
//! with the role for the operator to review.
//!
//! `superuser`: what runs as the superuser (queries of roles, the globals applied); `dump`: the
//! dump on the target (where pg_restore reads it from, its owners, pg_restore run over it).

mod dump;
mod superuser;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

use super::fetch::FetchError;
use super::offsite::{MirrorBackup, OffsiteRestoreError};
use super::unprivileged::{
    self, quote_ident, quote_literal, NotRestored, PsqlFailed, RestoreRole, Why,
};
use crate::conninfo::Connection;
use crate::files::error::IoError;
use crate::pgformat::globals;
use crate::progress::Progress;
use crate::storage::Storage;
use dump::{dump_owners, fetch_directory, recorded, run_pg_restore, Source};
use superuser::{admin, apply_globals, plain_roles, roles, rows};

/// Globals files are small; the same cap as `globals::read_file`'s.
const GLOBALS_LIMIT: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LogicalError {
    #[error(transparent)]
    Offsite(#[from] OffsiteRestoreError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The server's state forbids it (the database exists): nothing was touched.
    #[error("{0}")]
    Refused(String),
    #[error("the globals file of backup {backup_id}: {source}")]
    Globals {
        backup_id: i64,
        source: globals::Refused,
    },
    #[error("{what}: {source}")]
    Server { what: String, source: PsqlFailed },
    #[error("{0}")]
    Archive(String),
    #[error(transparent)]
    Io(#[from] IoError),
}

/// The running server a logical backup is restored into, and how to reach it.
#[derive(Debug, Clone)]
pub struct Server {
    /// As a superuser (creating roles and the database needs one).
    pub connection: Connection,
    /// The database that superuser connects to (`postgres`).
    pub maintenance_db: String,
    /// The directory of psql and pg_restore (at least the dump's major version).
    pub bindir: PathBuf,
    /// `PGPASSFILE` for the superuser's connection, when it needs a password.
    pub passfile: Option<PathBuf>,
}

/// What to restore where.
#[derive(Debug, Clone)]
pub struct Options {
    /// The new database's name; it must not exist.
    pub database: String,
    /// Apply the backup's globals file first.
    pub globals: bool,
    /// Create the globals file's tablespaces (their locations must exist here) and put objects
    /// in them; otherwise every object goes to the default tablespace.
    pub tablespaces: bool,
    /// pg_restore's `--jobs` for a directory-format dump.
    pub jobs: usize,
    /// Where a directory-format dump is fetched to before pg_restore reads it.
    pub work_dir: PathBuf,
    /// Hand what a superuser owned in the dump to the database's owner even when that is a
    /// superuser (the dump is trusted to act with a superuser's rights).
    pub trust_superuser_objects: bool,
    /// Apply the globals file whole (`globals::Policy::trust`).
    pub trust_globals: bool,
    /// Existing roles the dump may run as to restore what they own (vouched for by the
    /// operator; still only those whose rights reach no further than their own).
    pub owner_roles: Vec<String>,
}

/// What a logical restore did.
#[derive(Debug, Clone, Serialize)]
pub struct LogicalRestored {
    pub backup_id: i64,
    pub source_database: String,
    pub database: String,
    pub owner: String,
    /// Roles the globals file created, and those it found existing.
    pub roles_created: Vec<String>,
    pub roles_existing: Vec<String>,
    /// Globals statements left out (tablespaces, library-loading settings).
    pub globals_skipped: Vec<String>,
    /// Whether the backup came with a globals file.
    pub had_globals: bool,
    /// Objects pg_restore could not restore, and why.
    pub not_restored: Vec<NotRestored>,
    /// Objects a superuser owned in the dump that are owned by another role here (only a
    /// superuser may give a superuser an object): the database's owner, or the kept role.
    pub owners_changed: Vec<OwnerChanged>,
    /// The restore role, kept (no login, no memberships) because it owns what a superuser
    /// owned in the dump, for the operator to review and reassign.
    pub kept_role: Option<KeptRole>,
    /// Bytes read from the target.
    pub bytes: u64,
}

/// The restore role when it is kept.
#[derive(Debug, Clone, Serialize)]
pub struct KeptRole {
    pub name: String,
    /// How many objects of the new database it owns.
    pub objects: u64,
}

/// An object restored with another owner than in the dump.
#[derive(Debug, Clone, Serialize)]
pub struct OwnerChanged {
    pub object: String,
    pub owner_in_dump: String,
    pub owner_here: String,
}

/// The role an `ALTER ... OWNER TO` named when the restore role may not give it an object
/// (PostgreSQL 15's and 16's wordings).
fn refused_owner(error: &str) -> Option<&str> {
    ["must be member of role \"", "must be able to SET ROLE \""]
        .iter()
        .find_map(|p| error.strip_prefix(p)?.strip_suffix('"'))
}

/// Splits pg_restore's complaints: an ownership the restore role could not give to a superuser
/// is not a failure, what the role kept ends with `handed_to` (the database's owner, or the
/// role itself when it is kept); when that is not the superuser of the dump, the object is
/// listed as owned differently.
fn ownership_complaints(
    complaints: Vec<NotRestored>,
    handed_to: &str,
) -> (Vec<NotRestored>, Vec<OwnerChanged>) {
    let mut kept = Vec::new();
    let mut changed = Vec::new();
    for n in complaints {
        match refused_owner(&n.error) {
            Some(o) if o == handed_to => {}
            Some(o) => changed.push(OwnerChanged {
                object: n.object.clone(),
                owner_in_dump: o.to_owned(),
                owner_here: handed_to.to_owned(),
            }),
            None => kept.push(n),
        }
    }
    (kept, changed)
}

/// Restores logical backup `b` from `storage` into a new database of `server`.
pub fn restore_dump(
    storage: &dyn Storage,
    b: &MirrorBackup,
    server: &Server,
    options: &Options,
    bytes: Arc<AtomicU64>,
    progress: &Progress,
) -> Result<LogicalRestored, LogicalError> {
    let db = options.database.as_str();
    if db.is_empty() || db.contains('\0') || db.len() > 63 {
        return Err(LogicalError::Refused(format!(
            "\"{db}\" is not a database name PostgreSQL accepts"
        )));
    }
    let exists = rows(
        server,
        &format!(
            "SELECT 1 FROM pg_catalog.pg_database WHERE datname OPERATOR(pg_catalog.=) {}",
            quote_literal(db)
        ),
        "could not reach the server",
    )?;
    if !exists.is_empty() {
        return Err(LogicalError::Refused(format!(
            "database \"{db}\" exists; a logical backup is restored into a new database (name one with --database)"
        )));
    }
    let source = match b.backup_method.as_str() {
        "pg_dump" => Source::Stream {
            key: b.key.clone(),
            sha256: recorded(b, b.sha256.as_deref(), "dump")?.to_owned(),
        },
        _ => Source::Directory(fetch_directory(storage, b, &options.work_dir, &bytes)?),
    };
    let owners = dump_owners(storage, &source)?;

    // Roles first: the dump's objects are owned by them.
    let mut script = globals::Script::default();
    let had_globals = b.globals_key.is_some();
    if let (true, Some(key)) = (options.globals, b.globals_key.as_deref()) {
        script = apply_globals(storage, server, b, key, options)?;
    }
    let known = roles(server)?;
    let plain = plain_roles(server)?;
    let database_owner = owners
        .database
        .clone()
        .filter(|o| known.contains(o))
        .unwrap_or_else(|| server.connection.user.clone());
    let role = RestoreRole::new(&unprivileged::restore_role_name(b.backup_id))
        .map_err(|e| LogicalError::Archive(format!("could not make a password: {e}")))?;
    let restorer = quote_ident(&role.name);
    // The role runs the dump with the rights of the owners it names, so that their ownership is
    // restored as dumped: only owners this restore created (or the operator named with
    // --owner-role) whose rights reach no further than their own.  An existing role is never
    // lent (the dump could take it over), nor one that leads to a superuser.  A database owned
    // by such a role is owned by it from the start, so that the role's objects may live in
    // schema public (its CREATE belongs to the database's owner).
    let lenders: Vec<&String> = owners
        .roles
        .iter()
        .filter(|o| plain.contains(*o))
        .filter(|o| script.created_roles.contains(o) || options.owner_roles.contains(o))
        .collect();
    let mut sql = role
        .create_role_sql()
        .map_err(|e| LogicalError::Archive(format!("could not make a password verifier: {e}")))?;
    for name in &lenders {
        sql.push_str(&format!("GRANT {} TO {restorer};\n", quote_ident(name)));
    }
    let owner_lent = lenders.contains(&&database_owner);
    sql.push_str(&format!(
        "CREATE DATABASE {} OWNER {} TEMPLATE template0;\n",
        quote_ident(db),
        if owner_lent {
            quote_ident(&database_owner)
        } else {
            restorer.clone()
        }
    ));
    let created = admin(
        server,
        &server.maintenance_db,
        &sql,
        "could not create the database and its restore role",
    );
    // CREATE DATABASE is the script's last statement: the database is this run's only if the
    // script succeeded (one of that name made meanwhile by someone else is never dropped).
    let created_db = created.is_ok();
    let result = created.and_then(|_| {
        let conn =
            unprivileged::role_connection(&server.connection, &role, db, &server.bindir, progress)
                .map_err(|source| LogicalError::Server {
                    what: "connecting as the restore role".into(),
                    source,
                })?;
        run_pg_restore(
            storage,
            &source,
            &conn,
            &role,
            server,
            options,
            bytes.clone(),
            progress,
        )
    });
    let failed = result.is_err();
    // First, whatever happened: the role can no longer log in nor use the owners' rights.
    let mut disarm = format!("ALTER ROLE {restorer} NOLOGIN PASSWORD NULL;\n");
    for name in &lenders {
        disarm.push_str(&format!("REVOKE {} FROM {restorer};\n", quote_ident(name)));
    }
    let disarmed = admin(
        server,
        &server.maintenance_db,
        &disarm,
        "disarming the restore role",
    )
    .map(|_| ());
    // What the role kept is what a superuser owned in the dump.  Handed to a superuser (or a
    // role that leads to one), the dump's content would act with a superuser's rights after
    // all (a SECURITY DEFINER function, a view over pg_authid, both callable by anyone granted
    // them): unless the operator trusts the dump, such objects stay with the role, for the
    // operator to review and reassign.
    // Only to an owner the dump could run as anyway (lent): an existing role handed objects
    // from the dump (a SECURITY DEFINER function) could be taken over through them.
    let handed = !failed && (owner_lent || options.trust_superuser_objects);
    let mut in_db = format!(
        "ALTER DATABASE {} OWNER TO {};\n",
        quote_ident(db),
        quote_ident(&database_owner)
    );
    if handed {
        in_db.push_str(&format!(
            "REASSIGN OWNED BY {restorer} TO {o};\nDROP OWNED BY {restorer};\n",
            o = quote_ident(&database_owner)
        ));
    }
    let in_db = if failed {
        Ok(String::new())
    } else {
        admin(
            server,
            db,
            &in_db,
            "handing the restored objects to the database's owner",
        )
    };
    let mut kept = None;
    let mut dropped: Result<(), LogicalError> = Ok(());
    if failed {
        let mut cleanup = String::new();
        if created_db {
            cleanup.push_str(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE);\n",
                quote_ident(db)
            ));
        }
        cleanup.push_str(&format!("DROP ROLE IF EXISTS {restorer};\n"));
        dropped = admin(
            server,
            &server.maintenance_db,
            &cleanup,
            "dropping the restore role",
        )
        .map(|_| ());
    } else if handed && in_db.is_ok() {
        dropped = admin(
            server,
            &server.maintenance_db,
            &format!("DROP ROLE IF EXISTS {restorer};\n"),
            "dropping the restore role",
        )
        .map(|_| ());
    } else if in_db.is_ok() {
        let owned = rows(
            server,
            &format!(
                "SELECT count(*) FROM pg_catalog.pg_shdepend s \
                   JOIN pg_catalog.pg_database d ON d.oid OPERATOR(pg_catalog.=) s.dbid \
                  WHERE d.datname OPERATOR(pg_catalog.=) {} AND s.deptype OPERATOR(pg_catalog.=) 'o' \
                    AND s.refobjid OPERATOR(pg_catalog.=) {}::pg_catalog.regrole",
                quote_literal(db),
                quote_literal(&restorer)
            ),
            "counting what the restore role owns",
        )?
        .first()
        .and_then(|r| r.first()?.parse::<u64>().ok())
        .unwrap_or(0);
        if owned == 0 {
            // Nothing to review: its grants go with it.
            dropped = admin(
                server,
                db,
                &format!("DROP OWNED BY {restorer};\n"),
                "dropping the restore role",
            )
            .and_then(|_| {
                admin(
                    server,
                    &server.maintenance_db,
                    &format!("DROP ROLE {restorer};\n"),
                    "dropping the restore role",
                )
            })
            .map(|_| ());
        } else {
            kept = Some(KeptRole {
                name: role.name.clone(),
                objects: owned,
            });
        }
    }
    let handed_to = if kept.is_some() {
        role.name.as_str()
    } else {
        database_owner.as_str()
    };
    let (not_restored, owners_changed) = ownership_complaints(result?, handed_to);
    in_db?;
    disarmed?;
    dropped?;
    Ok(LogicalRestored {
        backup_id: b.backup_id,
        source_database: b.database_name.clone(),
        database: db.to_owned(),
        owner: database_owner,
        roles_created: globals::parse(&script.statements.join(";\n"))
            .roles
            .into_iter()
            .collect(),
        roles_existing: script.existing_roles,
        globals_skipped: script.skipped,
        had_globals,
        not_restored,
        owners_changed,
        kept_role: kept,
        bytes: bytes.load(Ordering::Relaxed),
    })
}

/// Whether every object was restored, or only those that need a superuser were left out.
pub fn complete(restored: &LogicalRestored) -> bool {
    restored.not_restored.iter().all(|n| n.why != Why::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complaint(object: &str, error: &str) -> NotRestored {
        NotRestored {
            object: object.into(),
            error: error.into(),
            why: Why::Failed,
        }
    }

    #[test]
    fn a_superusers_ownership_is_the_database_owners() {
        let (kept, changed) = ownership_complaints(
            vec![
                complaint(
                    "TABLE markers postgres",
                    "must be member of role \"postgres\"",
                ),
                complaint("TABLE audit admin", "must be able to SET ROLE \"admin\""),
                complaint(
                    "CONSTRAINT t t_check app",
                    "check constraint \"t_check\" is violated",
                ),
            ],
            "postgres",
        );
        assert_eq!(kept.len(), 1);
        assert!(kept[0].error.contains("violated"));
        assert_eq!(changed.len(), 1);
        assert_eq!(changed[0].owner_in_dump, "admin");
    }
}
