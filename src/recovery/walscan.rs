//! The worker's scan of archived WAL for transaction times: for each archived segment, the
//! first and last commit or abort timestamp in it, read with the server's own `pg_waldump
//! --rmgr=Transaction` on a helper thread.  `plan_recovery(target_time)` uses them to find the
//! segment holding the first transaction after the target (where recovery stops) and to say
//! when no archived transaction is after it (recovery would end before the target: PostgreSQL
//! stops with "recovery ended before configured recovery target was reached").

use std::path::{Path, PathBuf};
use std::time::Duration;

use backup_mgmt_core::backup::layout;
use backup_mgmt_core::files::beneath::ScratchDir;
use backup_mgmt_core::files::open::open_regular;
use backup_mgmt_core::process;
use backup_mgmt_core::stream;
use backup_mgmt_core::threads::{Helper, Throttle};
use pgrx::prelude::*;
use pgrx::spi::SpiError;

use crate::pg::spi::in_transaction;
use crate::pg::{roots, server};

/// How often unscanned segments are looked for when none was found.
const SEARCH_EVERY: Duration = Duration::from_secs(2);
/// Segments scanned per helper run.
const BATCH: i64 = 16;

/// First and last transaction end (commit or abort) times in pg_waldump's output, as
/// PostgreSQL timestamptz text (`YYYY-MM-DD HH:MM:SS.ffffff+00`).
pub fn transaction_times(waldump: &str) -> (Option<String>, Option<String>) {
    let mut first = None;
    let mut last = None;
    for line in waldump.lines() {
        let Some(desc) = line.split("desc: ").nth(1) else {
            continue;
        };
        let rest = desc
            .strip_prefix("COMMIT ")
            .or_else(|| desc.strip_prefix("ABORT "))
            .or_else(|| desc.strip_prefix("COMMIT_PREPARED "))
            .or_else(|| desc.strip_prefix("ABORT_PREPARED "));
        let Some(rest) = rest else { continue };
        // "2026-11-27 12:59:56.617555 UTC; inval msgs: …" (pg_waldump runs with TZ=UTC).
        let stamp: String = rest.split(';').next().unwrap_or("").trim().to_owned();
        let Some(at) = stamp.strip_suffix(" UTC") else {
            continue;
        };
        let at = format!("{at}+00");
        if first.is_none() {
            first = Some(at.clone());
        }
        last = Some(at);
    }
    (first, last)
}

struct Scanned {
    system_identifier: i64,
    file_name: String,
    first: Option<String>,
    last: Option<String>,
}

#[derive(Default)]
pub struct WalScan {
    in_flight: Option<Helper<Vec<Scanned>>>,
    last_search: Throttle,
}

impl WalScan {
    pub fn tick(&mut self) {
        if let Some(h) = self.in_flight.take_if(|h| h.is_finished()) {
            if let Some(scanned) = h.join() {
                record(&scanned);
            }
        }
        if self.in_flight.is_some() {
            return;
        }
        if !self.last_search.ready(SEARCH_EVERY) {
            return;
        }
        let work = in_transaction("looking for archived WAL to scan", || {
            Spi::connect(|c| {
                let t = c.select(
                    "SELECT file_name, file_path, system_identifier FROM backup_management.wal_archive \
                      WHERE NOT xact_scanned AND segment_number IS NOT NULL AND expired_at IS NULL \
                      ORDER BY archived_at LIMIT $1",
                    None,
                    &[BATCH.into()],
                )?;
                let mut v = Vec::new();
                for r in t {
                    let name: Option<String> = r.get(1)?;
                    let path: Option<String> = r.get(2)?;
                    let sysid: i64 = r.get(3)?.unwrap_or_default();
                    if let (Some(n), Some(p)) = (name, path) {
                        v.push((sysid, n, PathBuf::from(p)));
                    }
                }
                Ok::<_, SpiError>(v)
            })
        })
        .unwrap_or_default();
        if work.is_empty() {
            return;
        }
        let bindir = server::bindir();
        // Decompressed segments go to a scratch directory created exclusively beneath the first
        // root (never through a planted symlink), one per scan, removed beneath it again.
        let scratch = roots::first_root().ok();
        self.in_flight = Some(Helper::spawn(
            move || {
                work.into_iter()
                    .map(|(sysid, name, path)| {
                        let (first, last) = scan(&bindir, &name, &path, scratch.as_deref());
                        Scanned {
                            system_identifier: sysid,
                            file_name: name,
                            first,
                            last,
                        }
                    })
                    .collect()
            },
            server::wake_worker,
        ));
    }

    pub fn abandon(&mut self) {
        self.in_flight = None;
    }
}

/// Runs pg_waldump on one archived segment (a `.zst` one decompressed into a scratch directory
/// beneath `root` first).
fn scan(
    bindir: &Path,
    name: &str,
    path: &Path,
    root: Option<&Path>,
) -> (Option<String>, Option<String>) {
    // Held until pg_waldump is done; dropping it removes the directory.
    let mut scratch = None;
    let dir = if path.extension().is_some_and(|e| e == "zst") {
        let Some(root) = root else {
            return (None, None);
        };
        let made = (|| -> std::io::Result<ScratchDir> {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            let rel =
                Path::new(layout::WALSCAN_SCRATCH).join(format!("{}-{nanos}", std::process::id()));
            let dir = ScratchDir::create(root, &rel)?;
            let input = open_regular(path).map_err(std::io::Error::other)?;
            let mut out = dir.create_file(name)?;
            let mut dec = stream::decompress(input)?;
            let mut buf = vec![0u8; 1 << 20];
            stream::pump(&mut dec, &mut out, &mut buf, None).map_err(std::io::Error::other)?;
            dir.verify()?;
            Ok(dir)
        })();
        let Ok(made) = made else {
            return (None, None);
        };
        let dir = made.path().to_path_buf();
        scratch = Some(made);
        dir
    } else {
        path.parent().unwrap_or(Path::new("/")).to_path_buf()
    };
    let argv: Vec<std::ffi::OsString> = vec![
        bindir.join("pg_waldump").into_os_string(),
        "--rmgr=Transaction".into(),
        format!("--path={}", dir.display()).into(),
        name.into(),
    ];
    let mut cmd = process::command(&argv);
    cmd.env("TZ", "UTC");
    // pg_waldump ends with an error at the end of the segment's WAL (it looks for the next
    // record); what it printed before is what counts.
    let out = cmd.output();
    drop(scratch);
    match out {
        Ok(o) => transaction_times(&String::from_utf8_lossy(&o.stdout)),
        Err(_) => (None, None),
    }
}

fn record(scanned: &[Scanned]) {
    in_transaction("recording transaction times of archived WAL", || {
        Spi::connect_mut(|c| {
            for s in scanned {
                c.update(
                    "UPDATE backup_management.wal_archive \
                        SET first_xact_at = $2::timestamptz, last_xact_at = $3::timestamptz, xact_scanned = true \
                      WHERE file_name = $1 AND system_identifier = $4",
                    None,
                    &[
                        s.file_name.as_str().into(),
                        s.first.as_deref().into(),
                        s.last.as_deref().into(),
                        s.system_identifier.into(),
                    ],
                )?;
            }
            Ok::<(), SpiError>(())
        })
    });
}

#[cfg(test)]
mod unit {
    #[test]
    fn commit_and_abort_times_are_read_off_pg_waldump() {
        let out = "rmgr: Transaction len (rec/tot):     34/    34, tx:        735, lsn: 0/0155B1E8, prev 0/0155B1B0, desc: COMMIT 2026-11-27 12:00:00.123456 UTC\n\
                   rmgr: Transaction len (rec/tot):     66/    66, tx:        736, lsn: 0/0155B2E8, prev 0/0155B1E8, desc: ABORT 2026-11-27 12:00:01.000001 UTC\n\
                   rmgr: Transaction len (rec/tot):     66/    66, tx:        737, lsn: 0/0155B3E8, prev 0/0155B2E8, desc: COMMIT 2026-11-27 12:00:02.5 UTC; inval msgs: catcache 21; sync\n\
                   pg_waldump: error: error in WAL record at 0/1511A88: invalid record length";
        assert_eq!(
            super::transaction_times(out),
            (
                Some("2026-11-27 12:00:00.123456+00".into()),
                Some("2026-11-27 12:00:02.5+00".into())
            )
        );
        assert_eq!(super::transaction_times("nothing here"), (None, None));
    }
}
