//! Turning a native backup's chain back into a data directory: every file from the backup that
//! holds it, decompressed and checked against the chain manifest's sha256, tablespaces in a
//! directory of the restorer's choosing linked from `pg_tblspc/<oid>`, and PostgreSQL's manifest
//! as `backup_manifest` for `pg_verifybackup`.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::files::durable;
use crate::manifest::native::Manifest;
use crate::manifest::postgres::PG_MANIFEST;
use crate::progress::Counters;
use crate::verify::native::{cancelled, judge, read_stream};
use crate::verify::{self, Reason, Report};

/// A tablespace's directory in a backup (`pg_tblspc/<oid>`): its oid.
pub fn tablespace_oid(dir: &str) -> Option<&str> {
    let oid = dir.strip_prefix("pg_tblspc/")?;
    (!oid.is_empty() && oid.bytes().all(|b| b.is_ascii_digit())).then_some(oid)
}

/// Where the stored files of a chain come from: opened by holder and stored path (`None`: that
/// backup is not available), and named in reports.
pub trait StoredFiles: Sync {
    fn open(&self, holder: i64, stored: &str) -> Option<Result<Box<dyn Read + Send>, String>>;
    fn shown(&self, holder: i64, stored: &str) -> PathBuf;
}

/// The chain's backup directories on this host, by backup id.
pub struct LocalHolders<'a>(pub &'a HashMap<i64, PathBuf>);

impl StoredFiles for LocalHolders<'_> {
    fn open(&self, holder: i64, stored: &str) -> Option<Result<Box<dyn Read + Send>, String>> {
        let path = self.0.get(&holder)?.join(stored);
        Some(
            crate::files::open::open_regular(&path)
                .map(|f| Box::new(f) as Box<dyn Read + Send>)
                .map_err(|e| e.to_string()),
        )
    }
    fn shown(&self, holder: i64, stored: &str) -> PathBuf {
        self.0
            .get(&holder)
            .map_or_else(|| PathBuf::from(stored), |d| d.join(stored))
    }
}

/// Builds the complete data directory of a backup in `dest` (created, mode 0700) from its
/// chain: every file from its holder, decompressed and checked against the manifest's sha256,
/// plus PostgreSQL's manifest as `backup_manifest` for pg_verifybackup.  Each tablespace goes
/// to `tablespaces/<oid>` (created), linked from `pg_tblspc/<oid>` as PostgreSQL requires.
pub fn materialize(
    manifest: &Manifest,
    holders: &HashMap<i64, PathBuf>,
    dest: &Path,
    tablespaces: &Path,
    threads: usize,
    counters: &Counters<'_>,
) -> Result<(), Report> {
    materialize_from(
        &LocalHolders(holders),
        manifest,
        dest,
        tablespaces,
        threads,
        counters,
    )
}

/// `materialize` from any source of stored files (this host's directories, an off-site
/// target).  Files written by threads in parallel, each checked while it is written.
pub fn materialize_from(
    source: &dyn StoredFiles,
    manifest: &Manifest,
    dest: &Path,
    tablespaces: &Path,
    threads: usize,
    counters: &Counters<'_>,
) -> Result<(), Report> {
    let fail = |d: String| Report::failed(Reason::Unreadable, d, dest);
    let mkdir = |p: &Path| durable::create_private_dir(p, false).map_err(|e| e.to_string());
    mkdir(dest).map_err(fail)?;
    for d in &manifest.dirs {
        match tablespace_oid(d) {
            Some(oid) => {
                mkdir(tablespaces).map_err(fail)?;
                let place = tablespaces.join(oid);
                mkdir(&place).map_err(fail)?;
                std::os::unix::fs::symlink(&place, dest.join(d))
                    .map_err(|e| fail(format!("linking tablespace {oid}: {e}")))?;
            }
            None => mkdir(&dest.join(d)).map_err(fail)?,
        }
    }
    let failure = verify::in_parallel(&manifest.files, threads, counters.cancel, |f, buf| {
        let src = source.shown(f.holder, &f.stored);
        let input = source
            .open(f.holder, &f.stored)
            .ok_or_else(|| {
                Report::failed(
                    Reason::Missing,
                    format!(
                        "backup {} (holding \"{}\") is not available",
                        f.holder, f.path
                    ),
                    &src,
                )
            })?
            .map_err(|e| Report::failed(Reason::Unreadable, e, &src))?;
        let out_path = dest.join(&f.path);
        let mut out = durable::create_new(&out_path)
            .map_err(|e| Report::failed(Reason::Unreadable, e.to_string(), &out_path))?;
        let zst = f.stored.ends_with(".zst");
        let (size, sum) = read_stream(input, zst, &mut out, buf, counters)
            .map_err(|(r, d)| Report::failed(r, d, &src))?;
        judge(&src, f, size, &sum)
    });
    if let Some(r) = failure.or_else(|| cancelled(counters, dest)) {
        return Err(r);
    }
    // PostgreSQL's manifest, kept compressed or not by the backup itself.
    let id = manifest.backup_id;
    let compressed = format!("{PG_MANIFEST}.zst");
    let (input, zst) = match source.open(id, &compressed) {
        Some(Ok(r)) => (r, true),
        _ => match source.open(id, PG_MANIFEST) {
            Some(Ok(r)) => (r, false),
            Some(Err(e)) => return Err(fail(format!("opening {PG_MANIFEST}: {e}"))),
            None => return Err(fail(format!("backup {id} is not available"))),
        },
    };
    let mut out = durable::create_new(&dest.join(PG_MANIFEST)).map_err(|e| fail(e.to_string()))?;
    let mut buf = vec![0u8; verify::CHUNK];
    read_stream(input, zst, &mut out, &mut buf, counters)
        .map_err(|(_, e)| fail(format!("copying {PG_MANIFEST}: {e}")))?;
    Ok(())
}
