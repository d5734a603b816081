//! `backup-mgmt`: what an operator runs when the host is gone.  It reads an off-site target
//! (a directory or an S3-compatible bucket) and the catalog mirror the extension keeps there, and
//! needs no PostgreSQL server and no catalog database: `list` shows what is there, `restore`
//! builds a data directory that recovers to a chosen point, `wal-fetch` is its
//! `restore_command`; `wal-set-aside` frees a WAL file's key that another object holds.  Everything it does is in the core crate; this file is the command line.

#[macro_use]
mod output;
mod finish;
mod logical;
mod programs;
mod target;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64};

use backup_mgmt_core::files::direct::{Pace, Writes};
use backup_mgmt_core::printable::lines;
use backup_mgmt_core::progress::{Counters, Progress};
use backup_mgmt_core::restore::fetch::{self, FetchError, Sync};
use backup_mgmt_core::restore::fetch_history;
use backup_mgmt_core::restore::fetch_tar;
use backup_mgmt_core::restore::logical::LogicalError;
use backup_mgmt_core::restore::materialize;
use backup_mgmt_core::restore::mirror_parts::around;
use backup_mgmt_core::restore::offsite::{self, Goal, OffsiteRestoreError, TarChains};
use backup_mgmt_core::restore::wal_spool::Spool;
use backup_mgmt_core::storage::set_aside::{self, SetAside, SetAsideError};
use backup_mgmt_core::storage::{Storage, StorageError};
use backup_mgmt_core::threads;
use backup_mgmt_core::timeline::TargetTimeline;
use backup_mgmt_core::vocabulary::BackupMethod;
use backup_mgmt_core::wal::Lsn;
use clap::{Args, Parser, Subcommand, ValueEnum};

use target::TargetArgs;

const EXIT_CODES: &str = "Exit codes:
  0  done
  1  failed (I/O, the target or the server unreachable, a file that could not be written;
     restore-logical: objects that failed for reasons other than privileges)
  2  the command line is wrong, or the destination refuses it (restore-logical: the database exists;
     wal-set-aside: the object is this cluster's own copy, or too large to be a WAL file)
  3  integrity: a file, the chain manifest or the mirror is not what the mirror says, or a
     globals file holds statements pg_dumpall does not write, or the backed-up
     postgresql.conf moves the data directory elsewhere (wal-set-aside: the copy set
     aside did not land as read; an object that changed under its key meanwhile is 1)
  4  nothing to restore from: no backup reaches the goal, or (wal-fetch, wal-set-aside) the
     target has no such WAL file
wal-fetch exits 255 on any other failure (a mistyped option and an internal error included),
which PostgreSQL takes as fatal: recovery stops rather than ending early without the WAL it
could not fetch.";

/// Restore PostgreSQL clusters from backup_mgmt's off-site targets, with no host and no
/// catalog database.
#[derive(Parser)]
#[command(
    name = "backup-mgmt",
    version,
    after_help = EXIT_CODES,
    long_about = "Restore PostgreSQL clusters from backup_mgmt's off-site targets alone.\n\n\
The extension copies every backup, every archived WAL file and a mirror of its catalog \
(<system identifier>/.catalog/catalog_mirror.json) to each off-site target. This program \
reads only that target: run it as the PostgreSQL server's operating-system user, on any host, \
with the target's directory or its S3 endpoint and a credentials reference. Only wal-set-aside \
writes to the target (and removes the object it moves): it needs credentials that may.\n\n\
Examples:\n  backup-mgmt --dir /mnt/offsite list\n  backup-mgmt --dir /mnt/offsite restore \
--target-time '2026-12-04 10:00:00+00' /var/lib/postgresql/15/restored\n  backup-mgmt \
--s3-endpoint https://s3.example.com --s3-path backups/pg --s3-credentials file:/etc/backup_mgmt/s3 \
restore --latest /srv/pg/new"
)]
struct Cli {
    #[command(flatten)]
    target: TargetArgs,
    /// The cluster (system identifier); needed only when the target holds several.
    #[arg(long, global = true, value_name = "SYSID")]
    cluster: Option<i64>,
    /// `table` for people, `json` for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Clusters on the target, their backups and their archived WAL (like `pgbackrest info`).
    List,
    /// Restores a physical backup into a new data directory, set to recover to the goal.
    #[command(after_help = EXIT_CODES)]
    Restore(RestoreArgs),
    /// Restores a pg_dump backup into a new database of a running server, its globals first.
    #[command(
        name = "restore-logical",
        after_help = EXIT_CODES,
        long_about = "Restores a logical backup (pg_dump custom or directory format) from the \
target into a new database of a running server, as the server's operating-system user.\n\n\
The backup's globals file (pg_dumpall --globals-only) is applied first, statement by statement: \
a file holding anything but role, membership, grant and tablespace statements is refused. \
Unless --trust-globals, it only creates: new roles (without SUPERUSER, CREATEROLE, REPLICATION, \
BYPASSRLS), their settings any role may set, memberships in them; roles that exist are left \
as they are, and what is left out is listed. The dump then runs as a throwaway role that is no \
superuser and borrows the rights of the owners the globals created (or --owner-role names), so \
that ownership is restored as dumped; objects only a superuser may create are named, not \
restored, and what a superuser owned stays with the throwaway role (no login) for review unless \
--trust-superuser-objects. The dump's sha256 is checked while it streams; a damaged dump leaves \
no database.\n\n\
Example:\n  backup-mgmt --dir /mnt/offsite restore-logical --source-database shop \
--database shop_restored --target-time '2026-12-04 10:00:00+00'"
    )]
    RestoreLogical(logical::LogicalArgs),
    /// restore_command: fetches one WAL file (%f) to %p, its sha256 checked against the mirror.
    #[command(name = "wal-fetch", after_help = EXIT_CODES)]
    WalFetch {
        #[command(flatten)]
        ahead: ReadAhead,
        /// The WAL file name PostgreSQL asks for (%f).
        name: String,
        /// Where PostgreSQL wants it (%p).
        path: PathBuf,
    },
    /// Moves aside the object that occupies an archived WAL file's key on the target, so that
    /// the extension's next copy of that file lands. Use it when
    /// backup_mgmt.offsite_wal_status reports "… already holds different content …" for the
    /// file (a second cluster with the same system identifier wrote there, a copy restored
    /// from elsewhere) and you have looked at both: the object is copied to
    /// <SYSID>/.set-aside/<stored name>.<UTC time>, checked there, and only then removed from
    /// its key. Nothing is deleted; a restore never reads .set-aside.
    #[command(
        after_help = "Example:\n  backup-mgmt --dir /mnt/offsite --cluster 7345812345678901234 \
wal-set-aside 000000010000000000000005\n\nThe extension retries a file held back this way \
within a minute."
    )]
    WalSetAside {
        /// The WAL file as PostgreSQL names it (or as stored on the target, with .zst).
        name: String,
    },
    /// wal-fetch's read-ahead, started by it in the background.
    #[command(name = "wal-prefetch", hide = true)]
    WalPrefetch {
        #[command(flatten)]
        ahead: ReadAhead,
        name: String,
    },
}

#[derive(Args, Clone)]
struct ReadAhead {
    /// A private directory where the next WAL files are fetched (checked) while recovery
    /// replays this one, as pgBackRest's spool; without it, no read-ahead.
    #[arg(long, value_name = "DIR")]
    spool: Option<PathBuf>,
    /// How many WAL files to fetch ahead into the spool (1-256; each is a segment, 16 MB by
    /// default, on the spool's disk).
    #[arg(long, value_name = "N", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    read_ahead: u16,
    /// The timeline recovery ends on (`restore` writes it): no later timeline's WAL files are
    /// fetched ahead. Without it, the newest the target lists.
    #[arg(long, value_name = "TLI", value_parser = clap::value_parser!(u32).range(1..))]
    timeline: Option<u32>,
}

#[derive(Args)]
#[group(id = "goal", multiple = false)]
struct GoalArgs {
    /// Recover to this time (`2026-12-04 10:00:00+00` or RFC 3339); the base backup is the
    /// newest that ended before it.
    #[arg(long, group = "goal", value_name = "TIME")]
    target_time: Option<String>,
    /// Recover to this WAL location (`0/3000028`).
    #[arg(long, group = "goal", value_name = "LSN")]
    target_lsn: Option<String>,
    /// Recover through every WAL file on the target.
    #[arg(long, group = "goal")]
    latest: bool,
}

#[derive(Args)]
struct RestoreArgs {
    #[command(flatten)]
    goal: GoalArgs,
    /// Restore this backup (by id) instead of the one chosen for the goal.
    #[arg(long, value_name = "ID")]
    backup_id: Option<i64>,
    /// The timeline recovery ends on, after a failover or an earlier point-in-time recovery:
    /// `latest` (the newest on the target that continues from the base backup), `current`
    /// (the base backup's own), or a number. Recovery reads each ancestor's WAL up to where the
    /// next timeline branched off, every segment of that path checked to be on the target.
    /// Default: latest. Needs --latest, --target-time or --target-lsn.
    #[arg(long, value_name = "TIMELINE", value_parser = parse_timeline)]
    target_timeline: Option<TargetTimeline>,
    /// Files fetched and checked at the same time, 1-128 (default: the number of cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=128))]
    jobs: Option<u16>,
    /// Where tablespaces go, each as <DIR>/<oid> (default: <DATA_DIRECTORY>.tablespaces).
    #[arg(long, value_name = "DIR")]
    tablespaces: Option<PathBuf>,
    /// Restore into the existing data directory of a stopped server: files whose size and
    /// sha256 match are kept, the others fetched, files the backup lacks removed.
    #[arg(long)]
    delta: bool,
    /// Write every file through the page cache. By default files of 256 kB or more are
    /// written past it (O_DIRECT) on ext4, XFS and btrfs, which is faster where the kernel's
    /// copying and writeback, not the disk, is the limit; the first file of 64 MB or more
    /// measures both ways (16 MB each) and the rest follow the faster, which the report states.
    /// Everything is made durable either way.
    #[arg(long)]
    no_direct_io: bool,
    /// The directory of PostgreSQL's programs of the backups' major version (default:
    /// /usr/lib/postgresql/<major>/bin when it has them, else $PATH). Its postgres reads the
    /// restored configuration as the server will: a data_directory elsewhere is refused, a
    /// shared_preload_libraries naming a library by its path reset (when none is found, or
    /// run as root, the restore says the configuration was not checked). Its pg_combinebackup
    /// combines a chain of block-level incremental pg_basebackup backups (PostgreSQL 17+);
    /// without one such a backup is passed over for its full and more WAL. The chain is
    /// extracted beside the new directory, which needs room for it and the result.
    #[arg(long, value_name = "DIR")]
    pg_bin: Option<PathBuf>,
    /// The new data directory (must not exist), or with --delta the one to bring back.
    data_directory: PathBuf,
}

#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Offsite(#[from] OffsiteRestoreError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Logical(#[from] LogicalError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Incomplete(String),
    /// The target cannot be reached (a `--dir` that is missing or no directory).
    #[error("{0}")]
    Unreachable(String),
    /// A failure the command's own report (its JSON with `--output json`) already showed.
    #[error("{0}")]
    Reported(String),
    #[error("{0}")]
    Missing(String),
    #[error(transparent)]
    SetAside(#[from] SetAsideError),
}

/// Exit code of a failed fetch from the target.
fn fetch_code(f: &FetchError) -> u8 {
    match f {
        FetchError::Refused(_) => 2,
        FetchError::Mismatch { .. }
        | FetchError::Damaged { .. }
        | FetchError::Bad(_)
        | FetchError::Storage(StorageError::Config(_)) => 3,
        FetchError::NotOnTarget(_) => 4,
        FetchError::File { detail, .. }
            if detail.contains("sha256") || detail.contains("manifest says") =>
        {
            3
        }
        _ => 1,
    }
}

/// Exit code of a failed reading of the mirror or choice of a backup.
fn offsite_code(o: &OffsiteRestoreError) -> u8 {
    match o {
        // What the command line asks is ambiguous or malformed: a time that is not one, a
        // backup of the other kind, several databases or clusters to choose from.
        OffsiteRestoreError::SeveralClusters(_) | OffsiteRestoreError::Goal(_) => 2,
        OffsiteRestoreError::BadMirror { .. } => 3,
        OffsiteRestoreError::NoBase(_) | OffsiteRestoreError::NoCluster => 4,
        OffsiteRestoreError::Storage(_) => 1,
    }
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Logical(LogicalError::Refused(_)) => 2,
            CliError::Offsite(o) | CliError::Logical(LogicalError::Offsite(o)) => offsite_code(o),
            CliError::Fetch(f) | CliError::Logical(LogicalError::Fetch(f)) => fetch_code(f),
            CliError::Logical(LogicalError::Globals { .. }) => 3,
            CliError::Logical(_)
            | CliError::Incomplete(_)
            | CliError::Reported(_)
            | CliError::Unreachable(_) => 1,
            CliError::Missing(_) => 4,
            CliError::SetAside(SetAsideError::OwnCopy { .. } | SetAsideError::TooLarge { .. }) => 2,
            CliError::SetAside(SetAsideError::Storage(StorageError::Mismatch { .. })) => 3,
            CliError::SetAside(_) => 1,
        }
    }
}

/// `wal-set-aside`: finds the key of WAL file `name` of cluster `sysid` and moves its object
/// aside, spooled through an unlinked temporary file (`$TMPDIR`, as large as the file).
fn wal_set_aside(storage: &dyn Storage, sysid: i64, name: &str) -> Result<SetAside, CliError> {
    let key = match set_aside::wal_occupant(storage, sysid, name) {
        Ok(Some(key)) => key,
        Ok(None) => {
            return Err(CliError::Missing(format!(
                "the target holds no WAL file {name} of cluster {sysid}"
            )))
        }
        Err(StorageError::Config(why)) => return Err(CliError::Usage(why)),
        Err(e) => return Err(OffsiteRestoreError::Storage(e).into()),
    };
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let to = set_aside::aside_key(sysid, &key, &stamp);
    let spool = tempfile::tempfile().map_err(|e| {
        CliError::Incomplete(format!("could not create a temporary file for {key}: {e}"))
    })?;
    // This cluster's own copy (the one the mirror lists for the key) is never set aside: a
    // mistyped name must not empty a good key that the worker counts as copied.  Without a
    // mirror there is nothing to compare with; a mirror that cannot be read stops here.
    let own = match offsite::clusters(storage)?.contains(&sysid) {
        // Every part: `name` may be a stored name (`00000002.history.zst`) as well as a WAL
        // file's, and this command is rare.
        true => offsite::load_mirror(storage, sysid)?
            .wal_files
            .into_iter()
            .find(|w| w.key == key)
            .map(|w| w.sha256),
        false => None,
    };
    Ok(set_aside::set_aside(
        storage,
        &key,
        &to,
        own.as_deref(),
        spool,
    )?)
}

/// `wal-fetch`'s exit code for anything but "no such file on the target": PostgreSQL takes
/// an exit code above 125 as fatal and stops recovery, where any lower one means "not archived"
/// and would end recovery early, on a new timeline, with the later WAL silently left behind.
const WAL_FETCH_FATAL: u8 = 255;

fn main() -> ExitCode {
    // As restore_command, every failure must be fatal, the ones before `run` too: a mistyped
    // option (clap's exit 2) or a panic (101) would otherwise read as "not archived".
    let as_restore_command = std::env::args_os().skip(1).any(|a| a == "wal-fetch");
    if as_restore_command {
        std::panic::set_hook(Box::new(|info| {
            tell!("backup-mgmt: {info}");
            std::process::exit(WAL_FETCH_FATAL.into());
        }));
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if as_restore_command && e.use_stderr() => {
            let _ = e.print();
            return ExitCode::from(WAL_FETCH_FATAL);
        }
        // A script that asked for JSON gets the refusal as JSON too (exit 2, as clap's).
        Err(e) if e.use_stderr() && asks_json(std::env::args_os().skip(1)) => {
            let _ = e.print();
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            output::error(2, first.strip_prefix("error: ").unwrap_or(first));
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    let new_dir = new_data_directory(&cli);
    let was_there = new_dir.as_ref().map(|d| d.symlink_metadata().is_ok());
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line (wal-fetch's stderr is the server log's; a mirror's text may hold line
            // breaks), but for a program's complaint in a logical restore's (pg_restore's).
            let text = e.to_string();
            match (as_restore_command, &e) {
                (false, CliError::Logical(_)) => eprintln!("backup-mgmt: {}", lines(&text)),
                _ => tell!("backup-mgmt: {text}"),
            }
            // A failed new restore removes what it made; what it could not is named, so that
            // no one starts a server on half a restore.
            if let (Some(dir), Some(false)) = (&new_dir, was_there) {
                if dir.symlink_metadata().is_ok() {
                    tell!(
                        "backup-mgmt: {} is what is left of this failed restore and could not be removed: remove it before using that path",
                        dir.display()
                    );
                }
            }
            let code = e.exit_code();
            let fetching = matches!(cli.command, Command::WalFetch { .. });
            // A script reading stdout gets the failure as JSON too, unless the command's own
            // report already said it.
            if cli.output == Output::Json && !fetching && !matches!(e, CliError::Reported(_)) {
                output::error(code, &e.to_string());
            }
            // Only "the target has no such file" may tell recovery "not archived": a target
            // that holds no cluster at all (an unmounted directory) is fatal like the rest.
            let absent = matches!(e, CliError::Fetch(FetchError::NotOnTarget(_)));
            ExitCode::from(if fetching && !absent {
                WAL_FETCH_FATAL
            } else {
                code
            })
        }
    }
}

/// The data directory a restore (not `--delta`) is to create.
fn new_data_directory(cli: &Cli) -> Option<PathBuf> {
    match &cli.command {
        Command::Restore(r) if !r.delta => std::path::absolute(&r.data_directory).ok(),
        _ => None,
    }
}

/// Whether a command line clap refused asked for `--output json` (spelled either way).
fn asks_json(args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    let mut previous_was_output = false;
    for a in args {
        if a == "--output=json" || (previous_was_output && a == "json") {
            return true;
        }
        previous_was_output = a == "--output";
    }
    false
}

fn run(cli: &Cli) -> Result<(), CliError> {
    let storage = cli.target.open()?;
    match &cli.command {
        Command::List => {
            let ids = match cli.cluster {
                Some(id) => vec![id],
                None => offsite::clusters(storage.as_ref())?,
            };
            let mirrors = ids
                .iter()
                .map(|id| offsite::load_mirror(storage.as_ref(), *id))
                .collect::<Result<Vec<_>, _>>()?;
            output::list(&mirrors, cli.output == Output::Json);
            Ok(())
        }
        Command::WalFetch { ahead, name, path } => {
            let sysid = offsite::pick_cluster(storage.as_ref(), cli.cluster)?;
            // Only the part of the mirror that lists `name` (and, for the read-ahead, the
            // segments after it): a large archive's whole list is not read for one file.
            let Some(dir) = &ahead.spool else {
                let mirror = offsite::load_mirror_parts(storage.as_ref(), sysid, &around(name, 0))?;
                fetch::wal_fetch(storage.as_ref(), &mirror, name, path, Sync::AtomicOnly)?;
                return Ok(());
            };
            // A spooled copy was checked when it was fetched: a rename serves it.  A spool that
            // cannot be used only costs speed.
            let spool = Spool::open(dir).ok().map(|s| s.ending_on(ahead.timeline));
            let served = spool
                .as_ref()
                .is_some_and(|s| s.take(name, path).unwrap_or(false));
            if !served {
                let mirror = offsite::load_mirror_parts(storage.as_ref(), sysid, &around(name, 0))?;
                fetch::wal_fetch(storage.as_ref(), &mirror, name, path, Sync::AtomicOnly)?;
            }
            if spool.is_some_and(|s| s.ready_after(name) * 2 < usize::from(ahead.read_ahead)) {
                start_prefetch(cli, sysid, ahead, name);
            }
            Ok(())
        }
        Command::WalPrefetch { ahead, name } => {
            let (Some(dir), Some(sysid)) = (&ahead.spool, cli.cluster) else {
                return Err(CliError::Usage(
                    "wal-prefetch needs --spool and --cluster".into(),
                ));
            };
            let spool = Spool::open(dir)?.ending_on(ahead.timeline);
            // One filler at a time; the lock goes with the process.
            if let Some(_lock) = spool.try_lock()? {
                let wanted = around(name, u64::from(ahead.read_ahead));
                let mirror = offsite::load_mirror_parts(storage.as_ref(), sysid, &wanted)?;
                let threads = usize::from(ahead.read_ahead.clamp(1, 4));
                spool.fill(
                    storage.as_ref(),
                    &mirror,
                    name,
                    usize::from(ahead.read_ahead),
                    threads,
                );
            }
            Ok(())
        }
        Command::WalSetAside { name } => {
            let sysid = offsite::pick_cluster(storage.as_ref(), cli.cluster)?;
            let moved = wal_set_aside(storage.as_ref(), sysid, name)?;
            output::set_aside(&moved, cli.output == Output::Json);
            Ok(())
        }
        Command::Restore(r) => restore(cli, storage.as_ref(), r),
        Command::RestoreLogical(args) => logical::run(
            storage.as_ref(),
            cli.cluster,
            args,
            cli.output == Output::Json,
        ),
    }
}

/// Starts the read-ahead after `name` in the background (its own process group, no stdio:
/// PostgreSQL's `system()` returns as soon as this process exits); a failure to start it only
/// costs speed.
fn start_prefetch(cli: &Cli, sysid: i64, ahead: &ReadAhead, name: &str) {
    let (Some(dir), Ok(words)) = (&ahead.spool, cli.target.words(sysid)) else {
        return;
    };
    if ahead.read_ahead == 0 {
        return;
    }
    use std::os::unix::process::CommandExt;
    let _ = std::process::Command::new(&words[0])
        .args(&words[1..])
        .arg("wal-prefetch")
        .arg("--spool")
        .arg(dir)
        .arg("--read-ahead")
        .arg(ahead.read_ahead.to_string())
        .args(
            ahead
                .timeline
                .into_iter()
                .flat_map(|t| ["--timeline".to_owned(), t.to_string()]),
        )
        .arg(name)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn();
}

fn parse_timeline(text: &str) -> Result<TargetTimeline, String> {
    TargetTimeline::parse(text).ok_or_else(|| {
        format!("{text:?} is no timeline: write latest, current or a number such as 2")
    })
}

fn goal_of(g: &GoalArgs) -> Result<Goal, CliError> {
    if let Some(t) = &g.target_time {
        return offsite::parse_time(t).map(Goal::Time).ok_or_else(|| {
            CliError::Usage(format!(
                "--target-time {t:?} is not a time; write it as 2026-12-04 10:00:00+00"
            ))
        });
    }
    if let Some(l) = &g.target_lsn {
        return Lsn::parse(l).map(Goal::Lsn).ok_or_else(|| {
            CliError::Usage(format!(
                "--target-lsn {l:?} is not a WAL location such as 0/3000028"
            ))
        });
    }
    Ok(if g.latest {
        Goal::Latest
    } else {
        Goal::EndOfBackup
    })
}

fn restore(
    cli: &Cli,
    storage: &dyn backup_mgmt_core::storage::Storage,
    r: &RestoreArgs,
) -> Result<(), CliError> {
    let goal = goal_of(&r.goal)?;
    let sysid = offsite::pick_cluster(storage, cli.cluster)?;
    let mirror = offsite::load_mirror(storage, sysid)?;
    // Looked for only when the target holds a chain to combine: --pg-bin may name a version
    // without pg_combinebackup (before 17) for backups that need none.
    let chained = mirror
        .backups
        .iter()
        .any(|b| b.method() == Some(BackupMethod::PgBasebackup) && b.parent_backup_id.is_some());
    let combiner = match chained {
        true => {
            // The cluster's version, else the newest any backup records.
            let version = mirror
                .pg_version
                .or_else(|| mirror.backups.iter().filter_map(|b| b.pg_version).max());
            programs::combiner(r.pg_bin.as_deref(), version)?
        }
        false => None,
    };
    let chains = if combiner.is_some() {
        TarChains::Combine
    } else {
        TarChains::PassOver
    };
    if r.target_timeline.is_some() && goal == Goal::EndOfBackup {
        return Err(CliError::Usage(
            "--target-timeline needs a goal past the backup's end: --latest, --target-time or --target-lsn".into(),
        ));
    }
    // Small files, read only to know the timelines' paths: one the target lacks or damaged
    // stands only in the way of a restore that needs it, and says so.
    let target = r.target_timeline.unwrap_or_default();
    let timelines = offsite::Timelines {
        target,
        histories: match (target, &goal) {
            (_, Goal::EndOfBackup) | (TargetTimeline::Current, _) => Default::default(),
            (TargetTimeline::Id(t), _) => fetch_history::read_histories(storage, &mirror, Some(t))?,
            (TargetTimeline::Latest, _) => fetch_history::read_histories(storage, &mirror, None)?,
        },
    };
    let choice = offsite::choose(&mirror, &goal, r.backup_id, chains, &timelines)?;
    fetch_history::check_histories_above(storage, &mirror, choice.path.target())?;
    let json = cli.output == Output::Json;
    if !json {
        tell!("backup-mgmt: {}", choice.why);
    }
    let dest = std::path::absolute(&r.data_directory)
        .map_err(|e| CliError::Usage(format!("{}: {e}", r.data_directory.display())))?;
    let spaces = match &r.tablespaces {
        Some(t) => {
            std::path::absolute(t).map_err(|e| CliError::Usage(format!("{}: {e}", t.display())))?
        }
        None => PathBuf::from(format!("{}.tablespaces", dest.display())),
    };
    // The recovery settings are built before anything is written: a path restore_command
    // cannot carry is refused while nothing is touched (exit 2 means so).
    let command =
        cli.target
            .wal_fetch_command(sysid, &finish::spool_of(&dest), choice.path.target())?;
    let bytes = AtomicU64::new(0);
    let cancel = AtomicBool::new(false);
    let files = AtomicU64::new(0);
    let counters = Counters {
        bytes: &bytes,
        cancel: &cancel,
        files: Some(&files),
    };
    if choice.backup.method() == Some(BackupMethod::PgBasebackup) {
        if r.delta {
            return Err(CliError::Usage(
                "--delta works on native backups; a pg_basebackup backup is restored into a new directory".into(),
            ));
        }
        let started = std::time::Instant::now();
        // The bar counts the tars' bytes as stored, as they arrive (pg_combinebackup's pass
        // over a chain comes after the last of them).
        let stored: u64 = choice
            .chain
            .iter()
            .filter_map(|b| b.size)
            .map(|s| s.max(0) as u64)
            .sum();
        let progress = Progress::default();
        let bar = (!json && std::io::stderr().is_terminal()).then(|| output::bar(stored));
        let restored = output::while_showing(bar, progress.bytes_counter(), None, || {
            fetch_tar::restore_tar(storage, &choice, &dest, combiner.as_deref(), &progress)
        })?;
        let finished = finish::finish(cli, r, &command, &goal, &choice, &restored, started);
        if finished.is_err() {
            // Without its recovery settings the directory would start as the backup alone.
            let _ = backup_mgmt_core::files::beneath::remove_path(&dest);
        }
        return finished;
    }
    let manifest = fetch::chain_manifest(storage, &choice)?;
    let total = manifest.logical_bytes();
    let started = std::time::Instant::now();
    let bar = (!json && std::io::stderr().is_terminal()).then(|| output::bar(total));
    let shown = output::FilesShown {
        done: &files,
        total: manifest.files.len(),
    };
    let pace = Pace::new();
    let restored = output::while_showing(bar, &bytes, Some(shown), || {
        fetch::restore_native(
            storage,
            &choice,
            &manifest,
            &fetch::Destination {
                data: &dest,
                tablespaces: &spaces,
                into: if r.delta {
                    fetch::Into::Delta
                } else {
                    fetch::Into::New
                },
                writes: if r.no_direct_io {
                    Writes::Buffered
                } else {
                    Writes::Direct
                },
                pace: Some(&pace),
            },
            r.jobs.map_or_else(threads::cores, usize::from),
            &counters,
        )
    })?;
    let finished = finish::finish(cli, r, &command, &goal, &choice, &restored, started);
    if let Err(e) = &finished {
        // The backup's configuration refused (it moves the data directory) is refused again
        // however often the same restore runs.
        let refused = matches!(e, CliError::Fetch(FetchError::Damaged { file, .. }) if file == "postgresql.conf");
        if let Some(hint) = materialize::held_hint(&dest, !refused) {
            tell!("backup-mgmt: {hint}");
        }
    }
    if finished.is_err() && !r.delta {
        // Without its recovery settings the directory would start as the backup alone, not
        // recover to the goal: a new restore that cannot finish leaves nothing.
        materialize::discard_new(&dest, &spaces, &manifest);
    }
    finished
}
