//! The restore test of a logical backup (`pg_dump` custom or directory format): first checked
//! against its sha256, then restored with `pg_restore --exit-on-error` into a freshly created
//! scratch database (an existing database is never touched), and every table's row count in the
//! restored database compared with the counts captured from the dump while it was written
//! (`backup_mgmt_core::pgformat::dumpfacts`); its globals file must create every role that owns
//! something in the dump.  The scratch database is dropped afterwards unless asked to keep it.
//!
//! The programs run on a helper thread as separate sessions over the server's socket; this
//! backend waits on its latch and stops them on cancel or `statement_timeout`.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use backup_mgmt_core::conninfo::Connection;
use backup_mgmt_core::files::durable;
use backup_mgmt_core::files::error::{Context, IoError};
use backup_mgmt_core::files::open::{open_regular, OpenError};
use backup_mgmt_core::manifest::directory::{self, DIRECTORY_MANIFEST};
use backup_mgmt_core::pgformat::globals;
use backup_mgmt_core::process::{self, ProcessError};
use backup_mgmt_core::progress::Progress;
use backup_mgmt_core::restore::scratch_server::feed;
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
use crate::pg::server;
use crate::pg::wait::in_background;

/// Row counts of every ordinary table of the connected database, "schema.table" and count,
/// separated by a unit separator.  Fixed text: no value is interpolated into it.
const COUNT_ROWS: &str = "SELECT n.nspname || '.' || c.relname, \
        (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname), false, true, '')))[1]::text \
   FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
  WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' \
  ORDER BY 1";

/// What the helper thread found.
struct Outcome {
    restored: bool,
    restore_time: Duration,
    counts: BTreeMap<String, u64>,
    error: Option<String>,
    dropped: bool,
}

fn bin(bindir: &Path, program: &str) -> OsString {
    bindir.join(program).into_os_string()
}

/// Where and how a restore test restores.
struct Scratch {
    /// The new database's name.
    name: String,
    keep: bool,
    conn: Connection,
    /// The database createdb and dropdb connect to (this session's).
    maintenance_db: String,
    bindir: std::path::PathBuf,
}

/// What pg_restore reads.
enum Source {
    /// A custom-format file, zstd-compressed or not, fed on stdin.
    Stream(std::fs::File, bool),
    /// A directory-format dump, decompressed into a scratch directory.
    Directory(std::path::PathBuf),
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
/// `into`, for pg_restore, which reads only plain files.
fn unpack_directory(from: &Path, into: &Path) -> Result<(), UnpackError> {
    durable::create_private_dir(into, false)?;
    let manifest_path = from.join(DIRECTORY_MANIFEST);
    let manifest = std::fs::read_to_string(&manifest_path).at("could not read", &manifest_path)?;
    let mut buf = vec![0u8; 1 << 20];
    for (_, name) in directory::parse(&manifest)? {
        if name.starts_with('.') {
            return Err(UnpackError::Name(name));
        }
        let source = open_regular(&from.join(&name))?;
        let plain = name.strip_suffix(".zst").unwrap_or(&name);
        let mut out = durable::create_new(&into.join(plain))?;
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

/// Creates the scratch database, restores into it, counts rows, drops it (unless kept).
fn restore_logical(source: Source, scratch: &Scratch, progress: &Progress) -> Outcome {
    let Scratch {
        name: scratch,
        keep,
        conn,
        maintenance_db,
        bindir,
    } = scratch;
    let (scratch, keep, bindir) = (scratch.as_str(), *keep, bindir.as_path());
    let maintenance = format!("--maintenance-db={}", conn.conninfo(Some(maintenance_db)));
    let target = format!("--dbname={}", conn.conninfo(Some(scratch)));
    let started = Instant::now();
    let mut outcome = Outcome {
        restored: false,
        restore_time: Duration::ZERO,
        counts: BTreeMap::new(),
        error: None,
        dropped: false,
    };
    let created = process::run_to_end(
        &[
            bin(bindir, "createdb"),
            "--no-password".into(),
            maintenance.clone().into(),
            "--".into(),
            scratch.into(),
        ],
        None,
        progress,
    );
    if let Err(e) = created {
        outcome.error = Some(format!(
            "could not create the scratch database: {}",
            failure(e)
        ));
        return outcome;
    }
    let mut restore_argv = vec![
        bin(bindir, "pg_restore"),
        "--no-password".into(),
        "--exit-on-error".into(),
        target.clone().into(),
    ];
    let restored = match source {
        Source::Directory(dir) => {
            restore_argv.push("--jobs=2".into());
            restore_argv.push(dir.into_os_string());
            process::run_to_end(&restore_argv, None, progress)
                .map(|_| ())
                .map_err(failure)
        }
        Source::Stream(file, true) => {
            // Decompress on a thread into pg_restore's stdin.
            let mut cmd = process::command(&restore_argv);
            cmd.stdin(Stdio::piped());
            match process::spawn(cmd, progress, Stdio::null()) {
                Err(e) => Err(failure(e)),
                Ok(mut child) => {
                    let stderr = process::collect_stderr(&mut child);
                    let fed = child.stdin.take().map(|sink| {
                        std::thread::spawn(move || {
                            feed(file, true, sink)
                                .map_err(|e| format!("decompressing the backup: {e}"))
                        })
                    });
                    let done = process::finish(child, "pg_restore".into(), stderr, progress)
                        .map_err(failure);
                    let fed = fed
                        .map(|t| {
                            t.join()
                                .unwrap_or_else(|_| Err("decompressor panicked".into()))
                        })
                        .unwrap_or(Ok(()));
                    // pg_restore's own error explains more than a broken pipe does.
                    done.and(fed)
                }
            }
        }
        Source::Stream(file, false) => {
            process::run_to_end(&restore_argv, Some(Stdio::from(file)), progress)
                .map(|_| ())
                .map_err(failure)
        }
    };
    outcome.restore_time = started.elapsed();
    match restored {
        Ok(()) => {
            outcome.restored = true;
            match process::run_to_end(
                &[
                    bin(bindir, "psql"),
                    "--no-psqlrc".into(),
                    "--no-password".into(),
                    "--no-align".into(),
                    "--tuples-only".into(),
                    "--field-separator=\u{1f}".into(),
                    "--set=ON_ERROR_STOP=1".into(),
                    target.into(),
                    format!("--command={COUNT_ROWS}").into(),
                ],
                None,
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
                Err(e) => {
                    outcome.error = Some(format!("could not count restored rows: {}", failure(e)))
                }
            }
        }
        Err(e) => outcome.error = Some(format!("pg_restore failed: {e}")),
    }
    if !keep {
        outcome.dropped = process::run_to_end(
            &[
                bin(bindir, "dropdb"),
                "--no-password".into(),
                "--if-exists".into(),
                maintenance.into(),
                "--".into(),
                scratch.into(),
            ],
            None,
            &Progress::default(),
        )
        .is_ok();
    }
    outcome
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
    let conn = server::local_connection(conn_user);
    let place = Scratch {
        name: scratch.clone(),
        keep: keep_database,
        conn,
        maintenance_db: server::current_database(),
        bindir: server::bindir(),
    };
    let started = Instant::now();
    let zstd = compression == "zstd";
    let moved = target.clone();
    let unpack_into = verification_scratch(id).map_err(verification::VerificationError::from)?;
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
        let source = if moved.method == "pg_dump_directory" {
            path.as_deref()
                .ok_or_else(|| "the backup directory is missing".to_owned())
                .and_then(|p| unpack_directory(p, &unpack_into).map_err(|e| e.to_string()))
                .map(|_| Source::Directory(unpack_into.clone()))
                .map_err(|d| Report::failed(verify::Reason::Unreadable, d, Path::new(shown)))
        } else {
            open_backup(path.as_deref(), shown).map(|f| Source::Stream(f, zstd))
        };
        let source = match source {
            Ok(s) => s,
            Err(failed) => {
                let _ = std::fs::remove_dir_all(&unpack_into);
                return (failed, None, globals);
            }
        };
        let outcome = restore_logical(source, &place, &progress);
        let _ = std::fs::remove_dir_all(&unpack_into);
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
