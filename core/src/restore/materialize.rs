//! Turning a native backup's chain back into a data directory: every file from the backup that
//! holds it, decompressed and checked against the chain manifest's sha256, tablespaces in a
//! directory of the restorer's choosing linked from `pg_tblspc/<oid>`, and PostgreSQL's manifest
//! as `backup_manifest` for `pg_verifybackup`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::files::durable;
use crate::manifest::native::Manifest;
use crate::manifest::postgres::PG_MANIFEST;
use crate::progress::Counters;
use crate::verify::native::{cancelled, judge, read_stored};
use crate::verify::{self, Reason, Report};

/// A tablespace's directory in a backup (`pg_tblspc/<oid>`): its oid.
pub fn tablespace_oid(dir: &str) -> Option<&str> {
    let oid = dir.strip_prefix("pg_tblspc/")?;
    (!oid.is_empty() && oid.bytes().all(|b| b.is_ascii_digit())).then_some(oid)
}

/// Builds the complete data directory of a backup in `dest` (created, mode 0700) from its
/// chain: every file from its holder, decompressed and checked against the manifest's sha256,
/// plus PostgreSQL's manifest as `backup_manifest` for pg_verifybackup.  Each tablespace goes
/// to `tablespaces/<oid>` (created), linked from `pg_tblspc/<oid>` as PostgreSQL requires.
pub fn materialize(
    dir: &Path,
    manifest: &Manifest,
    holders: &HashMap<i64, PathBuf>,
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
        let holder = holders.get(&f.holder).ok_or_else(|| {
            Report::failed(
                Reason::Missing,
                format!(
                    "backup {} (holding \"{}\") is not available",
                    f.holder, f.path
                ),
                dir,
            )
        })?;
        let src = holder.join(&f.stored);
        let out_path = dest.join(&f.path);
        let mut out = durable::create_new(&out_path)
            .map_err(|e| Report::failed(Reason::Unreadable, e.to_string(), &out_path))?;
        let (size, sum) = read_stored(&src, &mut out, buf, counters)
            .map_err(|(r, d)| Report::failed(r, d, &src))?;
        judge(&src, f, size, &sum)
    });
    if let Some(r) = failure.or_else(|| cancelled(counters, dest)) {
        return Err(r);
    }
    let compressed = dir.join(format!("{PG_MANIFEST}.zst"));
    let mut out = durable::create_new(&dest.join(PG_MANIFEST)).map_err(|e| fail(e.to_string()))?;
    let source = if compressed.exists() {
        compressed
    } else {
        dir.join(PG_MANIFEST)
    };
    let mut buf = vec![0u8; verify::CHUNK];
    read_stored(&source, &mut out, &mut buf, counters)
        .map_err(|(_, e)| fail(format!("copying {PG_MANIFEST}: {e}")))?;
    Ok(())
}
