//! `test_backup_restore(backup_id, test_database_name, keep_database)`: a real restore test.
//!
//! A logical (`pg_dump` custom-format) backup is first checked against its sha256, then restored
//! with `pg_restore --exit-on-error` into a freshly created scratch database (an existing database
//! is never touched), and every table's row count in the restored database is compared with the
//! counts captured from the dump while it was written (`dumpfacts.rs`).  The scratch database is
//! dropped afterwards unless asked to keep it.  Every outcome is a `restore_test` row in
//! `backup_verifications`; a corrupted backup is a recorded failure, never a crash.
//!
//! The programs run on a helper thread as separate sessions over the server's socket; this
//! backend waits on its latch and stops them on cancel or `statement_timeout`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use pgrx::datum::Interval;
use pgrx::prelude::*;
use pgrx::spi::SpiError;
use pgrx::{pg_sys::panic::ErrorReport, PgSqlErrorCode};
use serde_json::{json, Value};

use crate::catalog;
use crate::executor::{self, Connection, Progress};
use crate::guc;
use crate::verification::{self, VerificationError};
use crate::verify::{self, Report};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Verification(#[from] VerificationError),
    #[error("database \"{0}\" already exists: a restore test only restores into a new database")]
    DatabaseExists(String),
    #[error("restore tests of {0} backups are not supported yet")]
    Unsupported(String),
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    #[error("catalog access failed: {0}")]
    Spi(#[from] SpiError),
}

impl From<RestoreError> for ErrorReport {
    fn from(e: RestoreError) -> Self {
        use PgSqlErrorCode::*;
        let message = e.to_string();
        let (code, hint) = match e {
            RestoreError::Verification(inner) => return inner.into(),
            RestoreError::Catalog(inner) => return inner.into(),
            RestoreError::DatabaseExists(_) => (
                ERRCODE_DUPLICATE_DATABASE,
                "Name a database that does not exist, or leave test_database_name NULL for a generated name.",
            ),
            RestoreError::Unsupported(_) => (
                ERRCODE_FEATURE_NOT_SUPPORTED,
                "Restore tests cover pg_dump (custom and directory format) and pg_basebackup backups; use verify_backup_integrity() for globals.",
            ),
            RestoreError::Spi(_) => (
                ERRCODE_INTERNAL_ERROR,
                "This is a bug in backup_mgmt; please report it.",
            ),
        };
        ErrorReport::new(code, message, "backup_mgmt").set_hint(hint)
    }
}

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

/// Unpacks a directory backup (every file its manifest names, `.zst` ones decompressed) into
/// `into`, for pg_restore, which reads only plain files.
fn unpack_directory(from: &Path, into: &Path) -> Result<(), String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(into)
        .map_err(|e| format!("could not create {}: {e}", into.display()))?;
    let manifest = std::fs::read_to_string(from.join(executor::DIRECTORY_MANIFEST))
        .map_err(|e| format!("manifest: {e}"))?;
    for line in manifest.lines().filter(|l| !l.is_empty()) {
        let name = line.split_once("  ").map(|(_, n)| n).unwrap_or_default();
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(format!("malformed manifest line \"{line}\""));
        }
        let source = verify::open_regular(&from.join(name)).map_err(|(_, d)| d)?;
        let plain = name.strip_suffix(".zst").unwrap_or(name);
        let mut out = std::fs::File::create(into.join(plain)).map_err(|e| e.to_string())?;
        if name.ends_with(".zst") {
            let mut dec = zstd::stream::read::Decoder::new(source).map_err(|e| e.to_string())?;
            std::io::copy(&mut dec, &mut out).map_err(|e| format!("{name}: {e}"))?;
        } else {
            let mut source = source;
            std::io::copy(&mut source, &mut out).map_err(|e| format!("{name}: {e}"))?;
        }
    }
    Ok(())
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
    let created = executor::run_to_end(
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
        outcome.error = Some(format!("could not create the scratch database: {e}"));
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
            executor::run_to_end(&restore_argv, None, progress).map(|_| ())
        }
        Source::Stream(file, true) => {
            // Decompress on a thread into pg_restore's stdin.
            let mut cmd = executor::command(&restore_argv);
            cmd.stdin(Stdio::piped());
            match executor::spawn(cmd, progress, Stdio::null()) {
                Err(e) => Err(e.to_string()),
                Ok(mut child) => {
                    let stderr = executor::collect_stderr(&mut child);
                    let fed = child.stdin.take().map(|mut sink| {
                        std::thread::spawn(move || -> Result<(), String> {
                            let mut dec = zstd::stream::read::Decoder::new(file)
                                .map_err(|e| format!("zstd: {e}"))?;
                            std::io::copy(&mut dec, &mut sink)
                                .map_err(|e| format!("decompressing the backup: {e}"))?;
                            sink.flush().map_err(|e| e.to_string())
                        })
                    });
                    let done = executor::finish(child, "pg_restore".into(), stderr, progress)
                        .map_err(|e| executor::tail(&e.to_string()));
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
            executor::run_to_end(&restore_argv, Some(Stdio::from(file)), progress).map(|_| ())
        }
    };
    outcome.restore_time = started.elapsed();
    match restored {
        Ok(()) => {
            outcome.restored = true;
            match executor::run_to_end(
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
                Err(e) => outcome.error = Some(format!("could not count restored rows: {e}")),
            }
        }
        Err(e) => outcome.error = Some(format!("pg_restore failed: {e}")),
    }
    if !keep {
        outcome.dropped = executor::run_to_end(
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

fn current_database() -> String {
    unsafe { std::ffi::CStr::from_ptr(pg_sys::get_database_name(pg_sys::MyDatabaseId)) }
        .to_string_lossy()
        .into_owned()
}

pub(crate) fn interval(d: Duration) -> Interval {
    Interval::from_micros(d.as_micros().min(i64::MAX as u128) as i64)
}

/// What a restore test found (also what a disaster-recovery drill builds on).
pub struct RestoreResult {
    pub passed: bool,
    pub restore_time: Option<Duration>,
    pub data_verified: bool,
}

/// Restores a backup into a new scratch database and checks its data; records a `restore_test`
/// verification.  Returns one row: test_status ('passed' or 'failed'), restore_time, and
/// data_verification (every table's row count equals the count captured at backup time).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn test_backup_restore(
    backup_id: Option<i64>,
    test_database_name: default!(Option<&str>, "NULL"),
    keep_database: default!(bool, false),
) -> Result<
    TableIterator<
        'static,
        (
            name!(test_status, String),
            name!(restore_time, Option<Interval>),
            name!(data_verification, bool),
        ),
    >,
    ErrorReport,
> {
    let id = backup_id.ok_or(VerificationError::Null)?;
    let r = restore_test(id, test_database_name, keep_database)?;
    Ok(TableIterator::once((
        if r.passed { "passed" } else { "failed" }.to_owned(),
        r.restore_time.map(interval),
        r.data_verified,
    )))
}

/// The restore test itself (see `test_backup_restore`).
pub fn restore_test(
    id: i64,
    test_database_name: Option<&str>,
    keep_database: bool,
) -> Result<RestoreResult, RestoreError> {
    let target = verification::load_target(id)?;
    if target.method == "pg_basebackup" {
        return physical_restore_test(target);
    }
    if target.method == "native_physical" {
        return native_restore_test(target);
    }
    if target.method != "pg_dump" && target.method != "pg_dump_directory" {
        return Err(RestoreError::Unsupported(target.method.clone()));
    }
    let scratch = match test_database_name {
        Some(n) => n.to_owned(),
        None => format!("backup_mgmt_restore_{id}_{}", std::process::id()),
    };
    catalog::validate_database_name(&scratch)?;
    let cname = std::ffi::CString::new(scratch.as_str())
        .map_err(|_| RestoreError::DatabaseExists(scratch.clone()))?;
    if unsafe { pg_sys::get_database_oid(cname.as_ptr(), true) } != pg_sys::InvalidOid {
        return Err(RestoreError::DatabaseExists(scratch));
    }
    let path = verification::confine(&target)?;
    let (facts, compression, conn_user): (Option<BTreeMap<String, u64>>, String, String) =
        Spi::connect(|c| -> Result<_, SpiError> {
            let t = c.select(
                "SELECT annotations->'row_counts', compression, current_user::text \
                   FROM backup_management.backup_records WHERE backup_id = $1",
                None,
                &[id.into()],
            )?;
            let row = t.first();
            let facts = row
                .get::<pgrx::JsonB>(1)?
                .and_then(|j| serde_json::from_value::<BTreeMap<String, u64>>(j.0).ok());
            Ok((
                facts,
                row.get::<String>(2)?.unwrap_or_default(),
                row.get::<String>(3)?.unwrap_or_default(),
            ))
        })
        .map_err(RestoreError::from)?;
    let conn = crate::worker::local_connection(conn_user);
    let place = Scratch {
        name: scratch.clone(),
        keep: keep_database,
        conn,
        maintenance_db: current_database(),
        bindir: crate::worker::bindir(),
    };
    let started = Instant::now();
    let zstd = compression == "zstd";
    let moved = target.clone();
    let unpack_into = verification_scratch(id)?;
    let work = crate::verification::in_background(move |progress| {
        let shown = &moved.path;
        let integrity = match integrity_first(&moved, path.as_deref(), &progress) {
            Ok(r) => r,
            Err(failed) => return (failed, None),
        };
        let source = if moved.method == "pg_dump_directory" {
            path.as_deref()
                .ok_or_else(|| "the backup directory is missing".to_owned())
                .and_then(|p| unpack_directory(p, &unpack_into))
                .map(|_| Source::Directory(unpack_into.clone()))
                .map_err(|d| Report::failed(verify::Reason::Unreadable, d, Path::new(shown)))
        } else {
            open_backup(path.as_deref(), shown).map(|f| Source::Stream(f, zstd))
        };
        let source = match source {
            Ok(s) => s,
            Err(failed) => {
                let _ = std::fs::remove_dir_all(&unpack_into);
                return (failed, None);
            }
        };
        let outcome = restore_logical(source, &place, &progress);
        let _ = std::fs::remove_dir_all(&unpack_into);
        (integrity, Some(outcome))
    });
    let elapsed = started.elapsed();
    let (integrity, outcome) = work;
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
            let verified = o.restored && o.error.is_none() && facts.is_some() && matched;
            let status = if verified { "passed" } else { "failed" };
            (
                status,
                Some(o.restore_time),
                verified,
                json!({
                    "stage": if !o.restored { "restore" } else { "data_verification" },
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

/// For a pg_basebackup backup whose checksum passed: extracts it, runs pg_verifybackup against
/// the manifest inside it, records a `pg_verifybackup` verification, and returns the verdict.
pub fn verify_base_backup(target: &verification::Target) -> Result<bool, RestoreError> {
    let id = target.backup_id;
    let Some(path) = verification::confine(target)? else {
        return Ok(false);
    };
    let scratch = verification_scratch(id)?;
    let compression = Spi::get_one_with_args::<String>(
        "SELECT compression FROM backup_management.backup_records WHERE backup_id = $1",
        &[id.into()],
    )?
    .unwrap_or_default();
    let bindir = crate::worker::bindir();
    let started = Instant::now();
    let (passed, output) =
        crate::verification::in_background(move |progress| match verify::open_regular(&path) {
            Ok(file) => crate::physical::verify_only(
                file,
                compression == "zstd",
                &scratch,
                &bindir,
                &progress,
            ),
            Err((_, d)) => (false, d),
        });
    record_verifybackup(id, passed, &output, started.elapsed())?;
    Ok(passed)
}

fn record_verifybackup(
    id: i64,
    passed: bool,
    output: &str,
    elapsed: Duration,
) -> Result<(), SpiError> {
    let status = if passed { "passed" } else { "failed" };
    let result = json!({ "output": output }).to_string();
    verification::insert(id, "pg_verifybackup", status, &result, elapsed).map(|_| ())
}

/// The backup's bytes against its checksum, first: a backup that fails it is not worth
/// restoring.  Err carries the failed report.
fn integrity_first(
    target: &verification::Target,
    path: Option<&Path>,
    progress: &Progress,
) -> Result<Report, Report> {
    let report = verification::run(target, path, progress.cancel_flag(), &AtomicU64::new(0));
    if report.passed {
        Ok(report)
    } else {
        Err(report)
    }
}

/// Opens a single-file backup for reading (a regular file only), or the report of why not.
fn open_backup(path: Option<&Path>, shown: &str) -> Result<std::fs::File, Report> {
    path.ok_or_else(|| "the backup file is missing".to_owned())
        .and_then(|p| verify::open_regular(p).map_err(|(_, d)| d))
        .map_err(|d| Report::failed(verify::Reason::Unreadable, d, Path::new(shown)))
}

/// A scratch directory for restore-testing backup `id`, inside the first backup root (its
/// parent is created).
fn verification_scratch(id: i64) -> Result<std::path::PathBuf, RestoreError> {
    let roots = guc::backup_roots().map_err(VerificationError::from)?;
    let root = roots
        .first()
        .and_then(|r| r.canonicalize().ok())
        .ok_or(VerificationError::Path(crate::security::PathError::NoRoots))?;
    let scratch = crate::physical::scratch_dir(&root, id);
    if let Some(parent) = scratch.parent() {
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent);
    }
    Ok(scratch)
}

/// The restore test of a pg_basebackup backup (`physical.rs`), recorded as a `pg_verifybackup`
/// verification (when it got that far) and a `restore_test` one.
fn physical_restore_test(target: verification::Target) -> Result<RestoreResult, RestoreError> {
    let id = target.backup_id;
    let path = verification::confine(&target)?;
    let scratch = verification_scratch(id)?;
    let (compression, user) = Spi::connect(|c| -> Result<_, SpiError> {
        let t = c.select(
            "SELECT compression, current_user::text FROM backup_management.backup_records WHERE backup_id = $1",
            None,
            &[id.into()],
        )?;
        let row = t.first();
        Ok((
            row.get::<String>(1)?.unwrap_or_default(),
            row.get::<String>(2)?.unwrap_or_default(),
        ))
    })?;
    let bindir = crate::worker::bindir();
    let started = Instant::now();
    let zstd = compression == "zstd";
    let moved = target.clone();
    let (integrity, outcome) = crate::verification::in_background(move |progress| {
        let integrity = match integrity_first(&moved, path.as_deref(), &progress) {
            Ok(r) => r,
            Err(failed) => return (failed, None),
        };
        let file = match open_backup(path.as_deref(), &moved.path) {
            Ok(f) => f,
            Err(failed) => return (failed, None),
        };
        let o = crate::physical::restore_test(file, zstd, &scratch, &bindir, &user, &progress);
        (integrity, Some(o))
    });
    finish_physical_test(
        id,
        &target.database_name,
        integrity,
        outcome,
        started.elapsed(),
    )
}

/// Records a physical restore test (its pg_verifybackup verdict and its restore_test row).
fn finish_physical_test(
    id: i64,
    database: &str,
    integrity: Report,
    outcome: Option<crate::physical::PhysicalOutcome>,
    elapsed: Duration,
) -> Result<RestoreResult, RestoreError> {
    let Some(o) = outcome else {
        let result =
            json!({"stage": "integrity", "reason": integrity.reason, "detail": integrity.detail});
        record_restore_test(id, database, "failed", &result, elapsed)?;
        return Ok(RestoreResult {
            passed: false,
            restore_time: None,
            data_verified: false,
        });
    };
    if let Some((passed, output)) = &o.verifybackup {
        record_verifybackup(id, *passed, output, elapsed)?;
    }
    let verified = o.restored && o.verifybackup.as_ref().is_some_and(|v| v.0);
    let status = if verified { "passed" } else { "failed" };
    let mut result = o.details.clone();
    if let Some(obj) = result.as_object_mut() {
        obj.insert(
            "stage".into(),
            json!(if o.restored {
                "data_verification"
            } else {
                "restore"
            }),
        );
        obj.insert(
            "restore_seconds".into(),
            json!(o.restore_time.as_secs_f64()),
        );
        obj.insert("error".into(), json!(o.error));
    }
    record_restore_test(id, database, status, &result, elapsed)?;
    Ok(RestoreResult {
        passed: verified,
        restore_time: o.restored.then_some(o.restore_time),
        data_verified: verified,
    })
}

/// The restore test of a native physical backup: its own files and its chain are checked, the
/// complete data directory is materialised from the chain (every file against the manifest's
/// sha256), then tested like a pg_basebackup one (pg_verifybackup with the backup's PostgreSQL
/// manifest, a temporary postmaster).
fn native_restore_test(target: verification::Target) -> Result<RestoreResult, RestoreError> {
    let id = target.backup_id;
    let path = verification::confine(&target)?;
    let scratch = verification_scratch(id)?;
    let user = Spi::get_one::<String>("SELECT current_user::text")?.unwrap_or_default();
    let bindir = crate::worker::bindir();
    let started = Instant::now();
    let moved = target.clone();
    let (integrity, outcome) = crate::verification::in_background(move |progress| {
        let integrity = match integrity_first(&moved, path.as_deref(), &progress) {
            Ok(r) => r,
            Err(failed) => return (failed, None),
        };
        let Some(dir) = path else {
            return (integrity, None);
        };
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let prepare = |scratch: &Path, progress: &Progress| -> Result<PathBuf, String> {
            let manifest = crate::native::load_manifest(&dir, moved.checksum.as_deref())
                .map_err(|r| r.detail.unwrap_or_default())?;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(scratch)
                .map_err(|e| format!("could not create {}: {e}", scratch.display()))?;
            let data = scratch.join("data");
            let counters = crate::native::Counters {
                bytes: progress.bytes_counter(),
                cancel: progress.cancel_flag(),
            };
            let spaces = scratch.join("tablespaces");
            crate::native::materialize(
                &dir,
                &manifest,
                &moved.chain,
                &data,
                &spaces,
                threads,
                &counters,
            )
            .map_err(|r| {
                format!(
                    "materialising the chain: {} ({})",
                    r.detail.unwrap_or_default(),
                    r.failing_file.unwrap_or_default()
                )
            })?;
            Ok(data)
        };
        let o = crate::physical::restore_test_with(prepare, &scratch, &bindir, &user, &progress);
        (integrity, Some(o))
    });
    finish_physical_test(
        id,
        &target.database_name,
        integrity,
        outcome,
        started.elapsed(),
    )
}

fn record_restore_test(
    id: i64,
    database: &str,
    status: &str,
    result: &Value,
    elapsed: Duration,
) -> Result<(), SpiError> {
    verification::insert(id, "restore_test", status, &result.to_string(), elapsed)?;
    if status != "passed" {
        let detail = result.to_string();
        pgrx::log!("backup_mgmt: restore test of backup {id} failed: {detail}");
        crate::events::notify(&crate::events::Event::VerificationFailed {
            backup_id: id,
            database_name: database,
            reason: "restore_test".into(),
            detail: &detail,
        });
    }
    Ok(())
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
