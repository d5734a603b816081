//! `restore-logical`: a `pg_dump` backup from the target into a new database of a running
//! server, its globals (roles, memberships, tablespaces) first.  The work is
//! `backup_mgmt_core::restore::logical`; this is its command line and its report.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backup_mgmt_core::conninfo::Connection;
use backup_mgmt_core::progress::Progress;
use backup_mgmt_core::restore::dump_choice;
use backup_mgmt_core::restore::logical::{self, LogicalRestored, Options, Server};
use backup_mgmt_core::restore::offsite::{self, Mirror};
use backup_mgmt_core::restore::unprivileged::Why;
use backup_mgmt_core::storage::Storage;
use clap::Args;

use crate::CliError;

#[derive(Args)]
pub struct LogicalArgs {
    /// The database whose dump is restored (needed when the target holds dumps of several).
    #[arg(long, value_name = "NAME")]
    source_database: Option<String>,
    /// The new database (must not exist; default: the source database's name).
    #[arg(long, value_name = "NAME")]
    database: Option<String>,
    /// Restore this backup (by id) instead of the newest dump.
    #[arg(long, value_name = "ID", conflicts_with = "target_time")]
    backup_id: Option<i64>,
    /// The newest dump that ended before this time (`2026-12-04 10:00:00+00`).
    #[arg(long, value_name = "TIME")]
    target_time: Option<String>,
    /// Do not apply the backup's globals file (its roles must exist already).
    #[arg(long)]
    no_globals: bool,
    /// Apply the globals file whole: attributes such as SUPERUSER, memberships in any role,
    /// grants on objects and parameters, changes to roles that exist. Without it, the file only
    /// creates roles that reach no further than themselves (the rest is listed, not applied).
    #[arg(long)]
    trust_globals: bool,
    /// Create the globals' tablespaces (their directories must exist on this host) and put
    /// objects in them; without it every object goes to the default tablespace.
    #[arg(long)]
    tablespaces: bool,
    /// An existing role the dump may run as to restore what it owns (repeatable). Roles the
    /// globals create are used without it; an existing role is not, unless named here.
    #[arg(long, value_name = "ROLE")]
    owner_role: Vec<String>,
    /// Hand what a superuser owned in the dump to the database's owner even when that is a
    /// superuser. Without it such objects stay with the restore role (kept without login or
    /// memberships) for you to review: owned by a superuser, a SECURITY DEFINER function or a
    /// view in the dump would act with a superuser's rights.
    #[arg(long)]
    trust_superuser_objects: bool,
    /// The server's socket directory or host (default: $PGHOST or /var/run/postgresql).
    #[arg(long, value_name = "HOST")]
    host: Option<String>,
    /// The server's port (default: $PGPORT or 5432).
    #[arg(long, value_name = "PORT")]
    port: Option<u16>,
    /// A superuser to connect as (default: $PGUSER or your user name); its password, when it
    /// needs one, from $PGPASSFILE.
    #[arg(long, value_name = "ROLE")]
    user: Option<String>,
    /// The database that superuser connects to first.
    #[arg(long, value_name = "NAME", default_value = "postgres")]
    maintenance_db: String,
    /// The directory of psql and pg_restore (default: /usr/lib/postgresql/<the dump's major
    /// version>/bin when it exists, else the directory of pg_restore on $PATH).
    #[arg(long, value_name = "DIR")]
    pg_bin: Option<PathBuf>,
    /// pg_restore jobs for a directory-format dump, 1-128 (default: the number of cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=128))]
    jobs: Option<u16>,
    /// Where a directory-format dump is fetched before pg_restore reads it (default: $TMPDIR
    /// or /tmp, often memory): room for the whole dump decompressed plus its largest file.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

fn env_or(explicit: Option<&String>, var: &str, default: &str) -> String {
    explicit
        .cloned()
        .or_else(|| std::env::var(var).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| default.to_owned())
}

pub fn run(
    storage: &dyn Storage,
    cluster: Option<i64>,
    args: &LogicalArgs,
    json: bool,
) -> Result<(), CliError> {
    let sysid = offsite::pick_cluster(storage, cluster)?;
    let mirror: Mirror = offsite::load_mirror(storage, sysid)?;
    let choice = dump_choice::choose_dump(
        &mirror,
        args.backup_id,
        args.source_database.as_deref(),
        args.target_time.as_deref(),
    )?;
    let b = choice.backup;
    let port = match args.port {
        Some(p) => p,
        None => env_or(None, "PGPORT", "5432")
            .parse()
            .map_err(|_| CliError::Usage("$PGPORT is not a port number; give --port".into()))?,
    };
    let me = std::env::var("USER").unwrap_or_else(|_| "postgres".into());
    let server = Server {
        connection: Connection {
            host: env_or(args.host.as_ref(), "PGHOST", "/var/run/postgresql"),
            port,
            user: env_or(args.user.as_ref(), "PGUSER", &me),
        },
        maintenance_db: args.maintenance_db.clone(),
        bindir: crate::programs::bindir(
            args.pg_bin.as_deref(),
            b.pg_version.or(mirror.pg_version),
            "pg_restore",
        )?,
        passfile: std::env::var_os("PGPASSFILE").map(PathBuf::from),
    };
    let options = Options {
        database: args
            .database
            .clone()
            .unwrap_or_else(|| b.database_name.clone()),
        globals: !args.no_globals,
        tablespaces: args.tablespaces,
        jobs: args
            .jobs
            .map_or_else(backup_mgmt_core::threads::cores, usize::from),
        work_dir: args.work_dir.clone().unwrap_or_else(std::env::temp_dir),
        trust_superuser_objects: args.trust_superuser_objects,
        trust_globals: args.trust_globals,
        owner_roles: args.owner_role.clone(),
    };
    if !json {
        tell!(
            "backup-mgmt: restoring backup {} ({} of database \"{}\", ended {}) into new database \"{}\"{}",
            b.backup_id,
            b.backup_method,
            b.database_name,
            b.end_time.as_deref().unwrap_or("?"),
            options.database,
            if options.globals && b.globals_key.is_some() {
                ", its globals first"
            } else {
                ""
            }
        );
    }
    // On stderr in both modes: a script reading the JSON should not be the only one to know.
    if let Some(c) = &choice.caution {
        tell!(
            "backup-mgmt: caution: {c} (the dump's bytes are still checked against its sha256 as \
             they arrive)"
        );
    }
    let bytes = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let bar = (!json && std::io::stderr().is_terminal()).then(crate::output::spinner);
    let restored = crate::output::while_showing(bar, &bytes, None, || {
        logical::restore_dump(
            storage,
            b,
            &server,
            &options,
            bytes.clone(),
            &Progress::default(),
        )
    })?;
    report(
        &restored,
        choice.caution.as_deref(),
        started.elapsed(),
        json,
    );
    if logical::complete(&restored) {
        Ok(())
    } else {
        Err(CliError::Reported(format!(
            "database \"{}\" was restored, but some objects failed for reasons other than privileges (listed above)",
            restored.database
        )))
    }
}

fn report(r: &LogicalRestored, caution: Option<&str>, took: Duration, json: bool) {
    if json {
        let mut v = serde_json::to_value(r).unwrap_or_default();
        v["caution"] = serde_json::json!(caution);
        v["seconds"] = serde_json::json!(took.as_secs_f64());
        v["complete"] = serde_json::json!(logical::complete(r));
        crate::output::print_json(&v.to_string());
        return;
    }
    say!(
        "restored backup {} (database \"{}\") into database \"{}\", owned by \"{}\", in {:.1} s ({} bytes of dump)",
        r.backup_id,
        r.source_database,
        r.database,
        r.owner,
        took.as_secs_f64(),
        r.bytes
    );
    if !r.had_globals {
        say!("the backup has no globals file: its roles were not created here");
    }
    if !r.roles_created.is_empty() {
        say!("roles created: {}", r.roles_created.join(", "));
    }
    if !r.roles_existing.is_empty() {
        say!(
            "roles that existed (left as they are): {}",
            r.roles_existing.join(", ")
        );
    }
    for s in &r.globals_skipped {
        say!("globals statement left out: {s}");
    }
    if let Some(k) = &r.kept_role {
        say!(
            "{} object(s) a superuser owned in the dump are owned by role \"{}\" (no login, no \
             memberships); review them, then as a superuser in the new database: REASSIGN OWNED BY \"{}\" TO \"{}\"; \
             DROP OWNED BY \"{}\"; and DROP ROLE \"{}\" (or restore with --trust-superuser-objects)",
            k.objects, k.name, k.name, r.owner, k.name, k.name
        );
    }
    // With a kept role every such object is its (counted above; listed in --output json).
    if r.kept_role.is_none() {
        for c in &r.owners_changed {
            say!(
                "owned by \"{}\" here, by superuser \"{}\" in the dump: {}",
                c.owner_here,
                c.owner_in_dump,
                c.object
            );
        }
    }
    for n in &r.not_restored {
        let why = match n.why {
            Why::NeedsSuperuser => "needs a superuser; create it yourself if you trust it",
            Why::Consequence => "depends on an object that was not restored",
            Why::Failed => "FAILED",
        };
        say!("not restored: {} ({why}): {}", n.object, n.error);
    }
    say!("run ANALYZE in the new database before you put load on it");
}
