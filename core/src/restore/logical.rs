//! Restoring a logical backup (`pg_dump` custom or directory format) from an off-site target into
//! a new database of a running server, with no catalog database: the dump is chosen from the
//! target's mirror, its globals file (roles, memberships, tablespaces) is applied first, then the
//! dump is streamed from the target into `pg_restore`, its sha256 checked on the way.
//!
//! Who runs what: applying globals needs a superuser, so that file is never run as it stands:
//! only the statements `pg_dumpall --globals-only` writes are applied (`globals::vet`); anything
//! else refuses the whole file.  The dump itself, which can hold any SQL, runs as a throwaway
//! login role (`RestoreRole`) that is no superuser and is a member of the roles that own the
//! dump's objects, so that their ownership is restored as dumped; what only a superuser may
//! create is named, not restored.  Afterwards the objects still owned by the throwaway role
//! (those a superuser owned) go to the database's owner, and the role is dropped.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

use super::fetch::FetchError;
use super::offsite::{MirrorBackup, OffsiteRestoreError};
use super::scratch_server::feed;
use super::unprivileged::{
    self, not_restored, quote_ident, quote_literal, relevant_line, NotRestored, PsqlFailed,
    RestoreRole, Why,
};
use crate::checksum::is_sha256_hex;
use crate::conninfo::Connection;
use crate::files::beneath::ScratchDir;
use crate::files::error::IoError;
use crate::manifest::directory::{self, DIRECTORY_MANIFEST};
use crate::pgformat::dumpfacts::{self, Owners};
use crate::pgformat::globals;
use crate::process;
use crate::progress::Progress;
use crate::storage::{member_key, Storage};
use crate::stream::{self, Hash, Observe};

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

/// Runs `sql` as the superuser in `db`.
fn admin(server: &Server, db: &str, sql: &str, what: &str) -> Result<String, LogicalError> {
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
fn rows(server: &Server, sql: &str, what: &str) -> Result<Vec<Vec<String>>, LogicalError> {
    Ok(admin(server, &server.maintenance_db, sql, what)?
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\u{1f}').map(str::to_owned).collect())
        .collect())
}

/// Names from the server, hex-encoded by the query (a name may hold a line break or the field
/// separator, which would otherwise split it), decoded.
fn names(server: &Server, sql: &str, what: &str) -> Result<BTreeSet<String>, LogicalError> {
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
fn roles(server: &Server) -> Result<BTreeSet<String>, LogicalError> {
    names(
        server,
        "SELECT pg_catalog.encode(pg_catalog.convert_to(rolname, 'UTF8'), 'hex') FROM pg_catalog.pg_roles",
        "could not list the server's roles",
    )
}

/// The roles whose rights reach no further than their own: no superuser and no member (however
/// indirectly) of one or of a predefined role, no CREATEROLE, REPLICATION or BYPASSRLS.  Only
/// these may lend their rights to the restore role, or receive what a superuser owned.
fn plain_roles(server: &Server) -> Result<BTreeSet<String>, LogicalError> {
    names(
        server,
        "SELECT pg_catalog.encode(pg_catalog.convert_to(r.rolname, 'UTF8'), 'hex') FROM pg_catalog.pg_roles r \
          WHERE NOT (r.rolsuper OR r.rolcreaterole OR r.rolreplication OR r.rolbypassrls) \
            AND r.rolname OPERATOR(pg_catalog.!~~) 'pg\\_%' \
            AND NOT EXISTS (SELECT FROM pg_catalog.pg_roles s \
                             WHERE s.oid OPERATOR(pg_catalog.<>) r.oid \
                               AND (s.rolsuper OR s.rolname OPERATOR(pg_catalog.~~) 'pg\\_%') \
                               AND pg_catalog.pg_has_role(r.oid, s.oid, 'MEMBER'))",
        "could not read the server's roles",
    )
}

/// The sha256 the mirror records for `what` of backup `b`.
fn recorded<'a>(b: &MirrorBackup, sha: Option<&'a str>, what: &str) -> Result<&'a str, FetchError> {
    sha.filter(|s| is_sha256_hex(s)).ok_or_else(|| {
        FetchError::Bad(format!(
            "backup {} has no sha256 for its {what} in the mirror",
            b.backup_id
        ))
    })
}

/// Reads a stored object whole (at most `limit` bytes), checked against `sha256`, decompressed
/// when its key ends in `.zst`.
fn read_small(
    storage: &dyn Storage,
    key: &str,
    sha256: &str,
    limit: u64,
) -> Result<Vec<u8>, FetchError> {
    let mut hashed = Hash::new(storage.get(key)?.take(limit + 1));
    let mut stored = Vec::new();
    hashed
        .read_to_end(&mut stored)
        .map_err(|e| IoError::new("could not read", Path::new(key), e))?;
    let (_, found) = hashed.finish();
    if stored.len() as u64 > limit {
        return Err(FetchError::Bad(format!(
            "{key} is larger than {limit} bytes"
        )));
    }
    if found != sha256 {
        return Err(FetchError::Mismatch {
            what: key.to_owned(),
            expected: sha256.to_owned(),
            found,
        });
    }
    if !key.ends_with(".zst") {
        return Ok(stored);
    }
    let mut plain = Vec::new();
    stream::decompress(&stored[..])
        .and_then(|d| d.take(limit + 1).read_to_end(&mut plain))
        .map_err(|e| FetchError::Bad(format!("{key}: {e}")))?;
    Ok(plain)
}

/// The globals file applied as its vetted statements.
fn apply_globals(
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

/// How feeding a dump to pg_restore ended.
enum Fed {
    /// Every stored byte was read: their sha256, and why they could not be decompressed if
    /// they could not (pg_restore may also have stopped reading early).
    Whole {
        sha256: String,
        unreadable: Option<String>,
    },
    /// The target could not be read.
    Unreadable(String),
}

/// Where pg_restore reads the dump from.
enum Source {
    /// A custom-format stream from the target (zstd or not), checked against this sha256.
    Stream { key: String, sha256: String },
    /// A directory-format dump fetched (checked, decompressed) into a scratch directory.
    Directory(ScratchDir),
}

/// Fetches a directory-format dump: its manifest checked against the mirror, every file it
/// names checked against the manifest while it is decompressed into `work_dir`.
fn fetch_directory(
    storage: &dyn Storage,
    b: &MirrorBackup,
    work_dir: &Path,
    bytes: &AtomicU64,
) -> Result<ScratchDir, LogicalError> {
    let sha = recorded(b, b.sha256.as_deref(), "manifest")?;
    let manifest_key = member_key(&b.key, Path::new(DIRECTORY_MANIFEST));
    let manifest = read_small(storage, &manifest_key, sha, 64 << 20)?;
    let manifest = String::from_utf8_lossy(&manifest).into_owned();
    let names = directory::parse(&manifest).map_err(|e| FetchError::Bad(e.to_string()))?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let rel = format!(
        "backup-mgmt-dump-{}-{}-{nanos}",
        b.backup_id,
        std::process::id()
    );
    let scratch = ScratchDir::create(work_dir, Path::new(&rel))
        .map_err(|e| IoError::new("could not create a directory in", work_dir, e))?;
    let mut buf = vec![0u8; 1 << 20];
    for (sum, name) in names {
        let key = member_key(&b.key, Path::new(&name));
        let plain = name.strip_suffix(".zst").unwrap_or(&name);
        let out = scratch
            .create_file(plain)
            .map_err(|e| IoError::new("could not create", &scratch.path().join(plain), e))?;
        let mut hashed = Hash::new(storage.get(&key).map_err(FetchError::from)?);
        let mut sink = Observe::new(out, |c: &[u8]| {
            bytes.fetch_add(c.len() as u64, Ordering::Relaxed);
        });
        let copied = if name.ends_with(".zst") {
            stream::decompress(&mut hashed)
                .map_err(|source| stream::PumpError::Read { after: 0, source })
                .and_then(|mut d| stream::pump(&mut d, &mut sink, &mut buf, None))
        } else {
            stream::pump(&mut hashed, &mut sink, &mut buf, None)
        };
        copied.map_err(|e| FetchError::File {
            detail: format!("not what its manifest says: {e}"),
            file: key.clone(),
        })?;
        let (_, found) = hashed.finish();
        if found != sum {
            return Err(FetchError::Mismatch {
                what: key,
                expected: sum,
                found,
            }
            .into());
        }
    }
    Ok(scratch)
}

/// Who owns what in the dump, read off its table of contents (the beginning of the stream, or
/// the directory's `toc.dat`).
fn dump_owners(storage: &dyn Storage, source: &Source) -> Result<Owners, LogicalError> {
    let read = match source {
        Source::Stream { key, .. } => {
            let input = storage.get(key).map_err(FetchError::from)?;
            if key.ends_with(".zst") {
                let dec = stream::decompress(input)
                    .map_err(|e| FetchError::Bad(format!("{key}: {e}")))?;
                dumpfacts::read_owners(dec)
            } else {
                dumpfacts::read_owners(input)
            }
        }
        Source::Directory(dir) => std::fs::File::open(dir.path().join("toc.dat"))
            .map_err(|e| dumpfacts::Unavailable(format!("toc.dat: {e}")))
            .and_then(dumpfacts::read_owners),
    };
    read.map_err(|e| FetchError::Bad(format!("the dump's table of contents: {e}")).into())
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
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let role = RestoreRole::new(&format!(
        "backup_mgmt_restorer_{}_{}_{nanos}",
        b.backup_id,
        std::process::id()
    ))
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
    let owner_is_plain = plain.contains(&database_owner);
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
    let handed = !failed && (owner_is_plain || options.trust_superuser_objects);
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

/// pg_restore as the restore role; the objects it could not restore.  A dump that is not what
/// the mirror says fails as `Fetch`.
#[allow(clippy::too_many_arguments)]
fn run_pg_restore(
    storage: &dyn Storage,
    source: &Source,
    conn: &Connection,
    role: &RestoreRole,
    server: &Server,
    options: &Options,
    bytes: Arc<AtomicU64>,
    progress: &Progress,
) -> Result<Vec<NotRestored>, LogicalError> {
    // Not --exit-on-error: what needs a superuser is skipped and named; --verbose names the
    // object of every error.
    let mut argv = vec![
        server.bindir.join("pg_restore").into_os_string(),
        "--no-password".into(),
        "--verbose".into(),
        format!("--dbname={}", conn.conninfo(Some(&options.database))).into(),
    ];
    if !options.tablespaces {
        argv.push("--no-tablespaces".into());
    }
    let mut fed = None;
    let input = match source {
        Source::Directory(dir) => {
            argv.push(format!("--jobs={}", options.jobs.max(1)).into());
            argv.push(dir.path().as_os_str().to_owned());
            process::Input::Nothing
        }
        Source::Stream { key, sha256 } => {
            let input = storage.get(key).map_err(FetchError::from)?;
            let zst = key.ends_with(".zst");
            let (tx, rx) = std::sync::mpsc::channel();
            fed = Some((key.clone(), sha256.clone(), rx));
            process::Input::Fed(Box::new(move |sink| {
                let mut hashed = Hash::new(input);
                let counted = Observe::new(sink, |c: &[u8]| {
                    bytes.fetch_add(c.len() as u64, Ordering::Relaxed);
                });
                let fed = feed(&mut hashed, zst, counted);
                // Whatever stopped the feeding, the rest of the stored bytes are hashed too, so
                // that a damaged dump is told apart from a pg_restore that gave up.
                let outcome = match std::io::copy(&mut hashed, &mut std::io::sink()) {
                    Err(e) => Fed::Unreadable(e.to_string()),
                    Ok(_) => Fed::Whole {
                        sha256: hashed.finish().1,
                        unreadable: match fed {
                            Err(e @ stream::PumpError::Read { .. }) => Some(e.to_string()),
                            _ => None,
                        },
                    },
                };
                let _ = tx.send(outcome);
                Ok(())
            }))
        }
    };
    let mut cmd = process::command(&argv);
    cmd.env("PGPASSWORD", &role.password);
    let ran = process::run_collecting_lines(cmd, input, Some(relevant_line), progress)
        .map_err(|e| LogicalError::Archive(format!("pg_restore: {e}")))?;
    if let Some((key, expected, rx)) = fed {
        match rx.recv() {
            Ok(Fed::Whole { sha256: found, .. }) if found != expected => {
                return Err(FetchError::Mismatch {
                    what: key,
                    expected,
                    found,
                }
                .into())
            }
            Ok(Fed::Unreadable(detail))
            | Ok(Fed::Whole {
                unreadable: Some(detail),
                ..
            }) => return Err(FetchError::File { detail, file: key }.into()),
            // pg_restore stopped reading: its own complaint says why (below).
            Ok(Fed::Whole { .. }) | Err(_) => {}
        }
    }
    let complaints = not_restored(&ran.stderr);
    // pg_restore that went through to the end with errors says so; one that stopped (the
    // connection lost, a damaged archive) does not, and its database is not a restore.
    if !ran.success && !ran.stderr.contains("errors ignored on restore") {
        return Err(LogicalError::Archive(format!(
            "pg_restore stopped ({}): {}",
            ran.status,
            process::tail(&ran.stderr)
        )));
    }
    if !ran.success && complaints.is_empty() {
        return Err(LogicalError::Archive(format!(
            "pg_restore failed ({}): {}",
            ran.status,
            process::tail(&ran.stderr)
        )));
    }
    Ok(complaints)
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
