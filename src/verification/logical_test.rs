//! The restore test of a logical backup (`pg_dump` custom or directory format): first checked
//! against its sha256, then restored into a freshly created scratch database (an existing
//! database is never touched) **by an unprivileged role of its own** that owns that database
//! (`pg_restore --no-owner --no-privileges`, logged in with a random password: backup content
//! never runs with a superuser's rights), and every table's row count in the restored database,
//! counted by that role with fully qualified queries, compared with the counts captured from the
//! dump while it was written (`backup_mgmt_core::pgformat::dumpfacts`); its globals file must
//! create every role that owns something in the dump.  Objects only a superuser may create
//! (C functions, untrusted languages, event triggers...) are skipped and named in the result; any
//! other object that fails fails the test.  The scratch database and the role are dropped
//! afterwards unless asked to keep the database (then its owner remains, unable to log in, and
//! nobody but superusers may connect).
//!
//! The programs run on a helper thread as separate sessions over the server's socket; this
//! backend waits on its latch and stops them on cancel or `statement_timeout`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::Path;
use std::time::{Duration, Instant};

use backup_mgmt_core::conninfo::Connection;
use backup_mgmt_core::files::beneath::ScratchDir;
use backup_mgmt_core::files::error::{Context, IoError};
use backup_mgmt_core::files::open::{open_regular, OpenError};
use backup_mgmt_core::manifest::directory::{self, DIRECTORY_MANIFEST};
use backup_mgmt_core::paths::PathError;
use backup_mgmt_core::pgformat::globals;
use backup_mgmt_core::process::{self, ProcessError};
use backup_mgmt_core::progress::Progress;
use backup_mgmt_core::restore::scratch_server::feed;
use backup_mgmt_core::restore::unprivileged::{
    self, not_restored, relevant_line, NotRestored, PsqlFailed, RestoreRole, Why,
};
use backup_mgmt_core::stream;
use backup_mgmt_core::verify::{self, Report};
use backup_mgmt_core::vocabulary as catalog;
use pgrx::prelude::*;
use pgrx::spi::SpiError;
use serde_json::{json, Value};

use super::integrity::{self as verification, Target};
use super::restore_outcome::{
    integrity_first, open_backup, record_restore_test, RestoreError, RestoreResult,
};
use super::scratch::verification_scratch;
use crate::pg::log::escape_for_log;
use crate::pg::server;
use crate::pg::wait::in_background;

/// Row counts of every ordinary table of the connected database, "schema.table" and count,
/// separated by a unit separator: a query that writes one `SELECT count(*)` per table, which
/// psql's `\gexec` runs (no libxml needed, which `query_to_xml` was: PostgreSQL builds without
/// it exist).  Fixed text: no value is interpolated into it; each table name reaches the
/// generated statements quoted by `format` (`%I`, `%L`).  Every function and operator is
/// schema-qualified (and the session's search_path is pinned by the client): nothing the
/// restored content defines is called.
const COUNT_ROWS: &str = "SELECT pg_catalog.format('SELECT %L, pg_catalog.count(*) FROM %I.%I', \
        n.nspname OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) c.relname, n.nspname, c.relname) \
   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
  WHERE c.relkind OPERATOR(pg_catalog.=) 'r' AND n.nspname OPERATOR(pg_catalog.<>) 'information_schema' \
    AND n.nspname OPERATOR(pg_catalog.!~~) 'pg\\_%' \
  ORDER BY n.nspname, c.relname \\gexec\n";

/// What the helper thread found.
struct Outcome {
    restored: bool,
    restore_time: Duration,
    counts: BTreeMap<String, u64>,
    error: Option<String>,
    dropped: bool,
    /// Objects pg_restore could not restore (those that need a superuser, and any other).
    not_restored: Vec<NotRestored>,
    /// Why the role or the database could not be removed afterwards.
    cleanup_error: Option<String>,
}

fn bin(bindir: &Path, program: &str) -> OsString {
    bindir.join(program).into_os_string()
}

/// Where and how a restore test restores.
struct Scratch {
    /// The new database's name.
    name: String,
    keep: bool,
    /// This server as the superuser the test runs as: creates and drops the role and database.
    admin: Connection,
    /// The database the superuser's psql connects to (this session's).
    maintenance_db: String,
    bindir: std::path::PathBuf,
    /// The unprivileged role that restores and counts.
    role: RestoreRole,
}

/// What pg_restore reads.
enum Source {
    /// A custom-format file, zstd-compressed or not, fed on stdin.
    Stream(std::fs::File, bool),
    /// A directory-format dump, decompressed into a scratch directory.
    Directory(ScratchDir),
}

/// Why a directory backup could not be unpacked for pg_restore.
#[derive(Debug, thiserror::Error)]
enum UnpackError {
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Manifest(#[from] directory::BadLine),
    #[error("malformed manifest name \"{0}\"")]
    Name(String),
    #[error("{name}: {source}")]
    Copy {
        name: String,
        source: stream::PumpError,
    },
}

/// Unpacks a directory backup (every file its manifest names, `.zst` ones decompressed) into
/// the scratch directory `into`, for pg_restore, which reads only plain files.
fn unpack_directory(from: &Path, into: &ScratchDir) -> Result<(), UnpackError> {
    let manifest_path = from.join(DIRECTORY_MANIFEST);
    let manifest = std::fs::read_to_string(&manifest_path).at("could not read", &manifest_path)?;
    let mut buf = vec![0u8; 1 << 20];
    for (_, name) in directory::parse(&manifest)? {
        if name.starts_with('.') {
            return Err(UnpackError::Name(name));
        }
        let source = open_regular(&from.join(&name))?;
        let plain = name.strip_suffix(".zst").unwrap_or(&name);
        let out_path = into.path().join(plain);
        let mut out = into.create_file(plain).at("could not create", &out_path)?;
        let copied = if name.ends_with(".zst") {
            stream::decompress(source)
                .map_err(|source| stream::PumpError::Read { after: 0, source })
                .and_then(|mut dec| stream::pump(&mut dec, &mut out, &mut buf, None))
        } else {
            let mut source = source;
            stream::pump(&mut source, &mut out, &mut buf, None)
        };
        copied.map_err(|source| UnpackError::Copy { name, source })?;
    }
    Ok(())
}

/// A program's failure as the text a restore test records.
fn failure(e: ProcessError) -> String {
    process::tail(&e.to_string())
}

/// psql as the test's superuser (no password) or as the restore role.
fn psql(
    bindir: &Path,
    conninfo: &str,
    password: Option<&str>,
    sql: &str,
    progress: &Progress,
) -> Result<String, PsqlFailed> {
    unprivileged::psql(bindir, conninfo, password, None, sql, progress)
}

/// Creates the restore role and the scratch database it owns, restores into it as that role,
/// counts rows as that role, and drops both (a kept database stays, its owner unable to log in).
fn restore_logical(source: Source, scratch: &Scratch, progress: &Progress) -> Outcome {
    let bindir = scratch.bindir.as_path();
    let admin = scratch.admin.conninfo(Some(&scratch.maintenance_db));
    let started = Instant::now();
    let mut outcome = Outcome {
        restored: false,
        restore_time: Duration::ZERO,
        counts: BTreeMap::new(),
        error: None,
        dropped: false,
        not_restored: Vec::new(),
        cleanup_error: None,
    };
    // The password verifier's salt comes from the OS's random source, which can fail.
    let created = match scratch.role.create_sql(&scratch.name) {
        Ok(sql) => psql(bindir, &admin, None, &sql, progress).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match created {
        Err(e) => {
            outcome.error = Some(format!(
                "could not create the scratch database and its restore role: {e}"
            ))
        }
        Ok(_) => match unprivileged::role_connection(
            &scratch.admin,
            &scratch.role,
            &scratch.name,
            bindir,
            progress,
        ) {
            Err(e) => outcome.error = Some(e.0),
            Ok(conn) => restore_as_role(source, scratch, &conn, started, &mut outcome, progress),
        },
    }
    // Removing them must happen even after a cancel: a fresh Progress.
    let dropped = psql(
        bindir,
        &admin,
        None,
        &scratch.role.drop_sql(&scratch.name, scratch.keep),
        &Progress::default(),
    );
    outcome.dropped = !scratch.keep && dropped.is_ok();
    outcome.cleanup_error = dropped.err().map(|e| e.0);
    outcome
}

/// pg_restore (and the row counts) as the restore role.
fn restore_as_role(
    source: Source,
    scratch: &Scratch,
    conn: &Connection,
    started: Instant,
    outcome: &mut Outcome,
    progress: &Progress,
) {
    let bindir = scratch.bindir.as_path();
    let target = conn.conninfo(Some(&scratch.name));
    // Not --exit-on-error: what cannot be restored without a superuser is skipped and named
    // (read from pg_restore's complaints), and the data decides the verdict.
    let mut argv = vec![
        bin(bindir, "pg_restore"),
        "--no-password".into(),
        "--no-owner".into(),
        "--no-privileges".into(),
        // Names the object of every error ("from TOC entry"); the per-object chatter is
        // dropped as it arrives.
        "--verbose".into(),
        format!("--dbname={target}").into(),
    ];
    let mut unpacked = None;
    let input = match source {
        Source::Directory(dir) => {
            argv.push("--jobs=2".into());
            argv.push(dir.path().as_os_str().to_owned());
            unpacked = Some(dir);
            process::Input::Nothing
        }
        Source::Stream(file, true) => {
            process::Input::Fed(Box::new(move |sink| feed(file, true, sink)))
        }
        Source::Stream(file, false) => process::Input::File(file),
    };
    let mut cmd = process::command(&argv);
    cmd.env("PGPASSWORD", &scratch.role.password);
    let ran = process::run_collecting_lines(cmd, input, Some(relevant_line), progress);
    drop(unpacked);
    outcome.restore_time = started.elapsed();
    let ran = match ran {
        Ok(r) => r,
        Err(e) => {
            outcome.error = Some(format!("pg_restore failed: {}", failure(e)));
            return;
        }
    };
    outcome.not_restored = not_restored(&ran.stderr);
    if let Some(e) = ran.input_error {
        // Only a compressed backup is fed through a thread: decompressing it failed.
        outcome.error = Some(format!("pg_restore failed: decompressing the backup: {e}"));
        return;
    }
    let other: Vec<&NotRestored> = outcome
        .not_restored
        .iter()
        .filter(|n| n.why == Why::Failed)
        .collect();
    if !ran.success && outcome.not_restored.is_empty() {
        outcome.error = Some(format!(
            "pg_restore failed ({}): {}",
            ran.status,
            process::tail(&ran.stderr)
        ));
        return;
    }
    if !other.is_empty() {
        outcome.error = Some(format!(
            "pg_restore could not restore {} object(s) for reasons other than privileges, e.g. {}: {}",
            other.len(),
            other[0].object,
            other[0].error
        ));
        return;
    }
    outcome.restored = true;
    match psql(
        bindir,
        &target,
        Some(&scratch.role.password),
        COUNT_ROWS,
        progress,
    ) {
        Ok(out) => {
            for line in out.lines() {
                if let Some((name, n)) = line.split_once('\u{1f}') {
                    outcome
                        .counts
                        .insert(name.to_owned(), n.trim().parse().unwrap_or(u64::MAX));
                }
            }
        }
        Err(e) => outcome.error = Some(format!("could not count restored rows: {e}")),
    }
}

/// Compares restored counts with the captured facts: (verified, mismatches).
pub fn compare(
    facts: &BTreeMap<String, u64>,
    restored: &BTreeMap<String, u64>,
) -> (bool, Vec<Value>) {
    let mismatches: Vec<Value> = facts
        .iter()
        .filter(|(t, n)| restored.get(*t) != Some(n))
        .map(|(t, n)| json!({"table": t, "expected_rows": n, "restored_rows": restored.get(t)}))
        .collect();
    (mismatches.is_empty(), mismatches)
}

/// Restores a logical backup into a new scratch database and checks its data and its globals.
pub(super) fn logical_restore_test(
    target: Target,
    test_database_name: Option<&str>,
    keep_database: bool,
) -> Result<RestoreResult, RestoreError> {
    let id = target.backup_id;
    let scratch = match test_database_name {
        Some(n) => n.to_owned(),
        None => format!("backup_mgmt_restore_{id}_{}", std::process::id()),
    };
    catalog::validate_database_name(&scratch)?;
    if scratch.contains('\0') || server::database_exists(&scratch) {
        return Err(RestoreError::DatabaseExists(scratch));
    }
    let resolved = verification::confine(&target)?;
    let path = resolved.main.clone();
    let (facts, owners, compression, conn_user) = Spi::connect(|c| -> Result<_, SpiError> {
        let t = c.select(
            "SELECT annotations->'row_counts', annotations->'owners', compression, current_user::text \
               FROM backup_management.backup_records WHERE backup_id = $1",
            None,
            &[id.into()],
        )?;
        let row = t.first();
        let facts = row
            .get::<pgrx::JsonB>(1)?
            .and_then(|j| serde_json::from_value::<BTreeMap<String, u64>>(j.0).ok());
        let owners = row
            .get::<pgrx::JsonB>(2)?
            .and_then(|j| serde_json::from_value::<BTreeSet<String>>(j.0).ok());
        Ok((
            facts,
            owners,
            row.get::<String>(3)?.unwrap_or_default(),
            row.get::<String>(4)?.unwrap_or_default(),
        ))
    })
    .map_err(RestoreError::from)?;
    let role = RestoreRole::new(&unprivileged::restore_role_name(id)).map_err(|e| {
        RestoreError::Verification(verification::VerificationError::Path(PathError::Create {
            path: "/dev/urandom".into(),
            source: e,
        }))
    })?;
    let place = Scratch {
        name: scratch.clone(),
        keep: keep_database,
        admin: server::local_connection(conn_user),
        maintenance_db: server::current_database(),
        bindir: server::bindir(),
        role,
    };
    let place_role = place.role.name.clone();
    let started = Instant::now();
    let zstd = compression == "zstd";
    let moved = target.clone();
    let directory = moved.method == "pg_dump_directory";
    let unpack_into = if directory {
        Some(verification_scratch(id).map_err(verification::VerificationError::from)?)
    } else {
        None
    };
    let work = in_background(move |progress| {
        let shown = &moved.path;
        let integrity = match integrity_first(&moved, &resolved, &progress) {
            Ok(r) => r,
            Err(failed) => return (failed, None, None),
        };
        let globals = moved
            .globals
            .as_ref()
            .map(|_| check_globals(resolved.globals.as_deref(), owners.as_ref()));
        let source = match unpack_into {
            Some(into) => path
                .as_deref()
                .ok_or_else(|| "the backup directory is missing".to_owned())
                .and_then(|p| unpack_directory(p, &into).map_err(|e| e.to_string()))
                .map(|_| Source::Directory(into))
                .map_err(|d| Report::failed(verify::Reason::Unreadable, d, Path::new(shown))),
            None => open_backup(path.as_deref(), shown).map(|f| Source::Stream(f, zstd)),
        };
        let source = match source {
            Ok(s) => s,
            Err(failed) => return (failed, None, globals),
        };
        let outcome = restore_logical(source, &place, &progress);
        (integrity, Some(outcome), globals)
    });
    let elapsed = started.elapsed();
    let (integrity, outcome, globals) = work;
    // Without globals the backup restores only where its roles already exist; with globals
    // that miss a role owning something in it, not even there on a new cluster.
    let globals_ok = globals.as_ref().is_none_or(|g| g.ok);
    let globals_json = match &globals {
        None => json!({"part_of_backup": false}),
        Some(g) => g.json.clone(),
    };
    let (status, restore_time, verified, result) = match outcome {
        None => (
            "failed",
            None,
            false,
            json!({"stage": "integrity", "reason": integrity.reason, "detail": integrity.detail}),
        ),
        Some(o) => {
            let (matched, mismatches) = match &facts {
                Some(f) => compare(f, &o.counts),
                None => (false, Vec::new()),
            };
            let verified =
                o.restored && o.error.is_none() && facts.is_some() && matched && globals_ok;
            if let Some(e) = &o.cleanup_error {
                warning!(
                    "backup_mgmt: could not remove restore role \"{place_role}\" or database \"{scratch}\": {}",
                    escape_for_log(e)
                );
            }
            let needs_superuser: Vec<&NotRestored> = o
                .not_restored
                .iter()
                .filter(|n| n.why != Why::Failed)
                .collect();
            if !needs_superuser.is_empty() {
                // Named, not silently dropped: the operator reads them in the result and here.
                notice!(
                    "backup_mgmt: restore test of backup {id}: {} object(s) need a superuser to restore and were skipped: {}",
                    needs_superuser.len(),
                    needs_superuser
                        .iter()
                        .take(10)
                        .map(|n| n.object.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let status = if verified { "passed" } else { "failed" };
            let stage = if !o.restored {
                "restore"
            } else if !globals_ok {
                "globals"
            } else {
                "data_verification"
            };
            (
                status,
                Some(o.restore_time),
                verified,
                json!({
                    "stage": stage,
                    "globals": globals_json,
                    "scratch_database": scratch,
                    "restored_as": place_role,
                    "needs_superuser": needs_superuser,
                    "not_restored": o.not_restored.iter().filter(|n| n.why == Why::Failed).collect::<Vec<_>>(),
                    "kept": keep_database,
                    "dropped": o.dropped,
                    "restore_seconds": o.restore_time.as_secs_f64(),
                    "tables_checked": facts.as_ref().map(BTreeMap::len),
                    "facts_captured": facts.is_some(),
                    "mismatches": mismatches,
                    "error": o.error,
                }),
            )
        }
    };
    record_restore_test(id, &target.database_name, status, &result, elapsed)?;
    Ok(RestoreResult {
        passed: status == "passed",
        restore_time,
        data_verified: verified,
    })
}

/// What a restore test learned from a logical backup's globals file.
struct GlobalsCheck {
    ok: bool,
    json: Value,
}

/// Reads the globals file and checks that it creates every role owning something in the dump
/// (`owners`, read off the dump when it was written): otherwise the backup cannot be restored
/// on a new cluster.
fn check_globals(path: Option<&Path>, owners: Option<&BTreeSet<String>>) -> GlobalsCheck {
    let Some(path) = path else {
        return GlobalsCheck {
            ok: false,
            json: json!({"part_of_backup": true, "error": "the globals file is missing"}),
        };
    };
    match globals::read_file(path) {
        Err(e) => GlobalsCheck {
            ok: false,
            json: json!({"part_of_backup": true, "error": e.to_string()}),
        },
        Ok(g) => {
            let missing = owners.map(|o| g.missing_roles(o)).unwrap_or_default();
            GlobalsCheck {
                ok: missing.is_empty(),
                json: json!({
                    "part_of_backup": true,
                    "roles": g.roles.len(),
                    "tablespaces": g.tablespaces.len(),
                    "owners_checked": owners.map(BTreeSet::len),
                    "missing_roles": missing,
                }),
            }
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn comparison_names_every_mismatch() {
        let facts: BTreeMap<String, u64> =
            [("public.a".to_owned(), 3), ("public.b".to_owned(), 0)].into();
        let same = facts.clone();
        assert!(compare(&facts, &same).0);
        let mut fewer = same.clone();
        fewer.insert("public.a".into(), 2);
        let (ok, m) = compare(&facts, &fewer);
        assert!(!ok);
        assert_eq!(m[0]["table"], "public.a");
        let mut missing = same;
        missing.remove("public.b");
        assert!(!compare(&facts, &missing).0);
    }

    #[test]
    fn count_query_takes_no_values() {
        assert!(!COUNT_ROWS.contains('$'));
    }
}
