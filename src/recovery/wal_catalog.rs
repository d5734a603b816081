//! The worker's side of the WAL archive: reads what the archive module appended to each archive
//! directory's manifest since the last look, and records it in `backup_management.wal_archive`,
//! each segment numbered with its cluster's segment size.
//!
//! Manifest lines are input like any file under the roots: a line whose fields are not what the
//! archive module writes (a forged digest, a path for a name) is logged and never reaches the
//! catalog, from which restore recipes are written.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use backup_mgmt_core::files::open::open_regular;
use backup_mgmt_core::manifest::archive::{self, ManifestLine};
use backup_mgmt_core::threads::Throttle;
use backup_mgmt_core::wal::{Segment, SegmentSize};
use pgrx::spi::SpiError;

use crate::catalog::mirror;
use crate::pg::log::escape_for_log;
use crate::pg::spi::in_transaction;
use crate::pg::{guc, server};

/// How often the manifests are read (an open and a read of nothing when nothing was archived;
/// every second, because off-site WAL copies start from what is recorded here).
const INGEST_EVERY: Duration = Duration::from_secs(1);

/// The segment size of the cluster whose archive this is: what the line says, or, for lines
/// written before the archive module recorded it, this cluster's (for its own archive) or
/// PostgreSQL's default.
pub fn segment_size_of(line: &ManifestLine, system_identifier: u64) -> SegmentSize {
    line.segment_size
        .and_then(SegmentSize::new)
        .unwrap_or_else(|| {
            if system_identifier == server::system_identifier() {
                server::segment_size()
            } else {
                SegmentSize::default()
            }
        })
}

#[derive(Default)]
pub struct Ingest {
    /// Bytes of each manifest already ingested.
    offsets: HashMap<PathBuf, u64>,
    last: Throttle,
}

impl Ingest {
    pub fn tick(&mut self) {
        if !self.last.ready(INGEST_EVERY) {
            return;
        }
        let Ok(roots) = guc::backup_roots() else {
            return;
        };
        for root in roots {
            let Ok(clusters) = fs::read_dir(root.join("wal")) else {
                continue;
            };
            for cluster in clusters.filter_map(Result::ok) {
                let dir = cluster.path();
                let Some(sysid) = dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                self.ingest_dir(&dir, sysid);
            }
        }
    }

    fn ingest_dir(&mut self, dir: &Path, sysid: u64) {
        let manifest = dir.join(archive::MANIFEST);
        let offset = self.offsets.get(&manifest).copied().unwrap_or(0);
        // Never through a symlink: a manifest is read as the archive module wrote it.
        let Ok(mut f) = open_regular(&manifest) else {
            return;
        };
        let mut text = String::new();
        if f.seek(SeekFrom::Start(offset)).is_err() || f.read_to_string(&mut text).is_err() {
            return;
        }
        // Only whole lines: the archiver may be appending right now.
        let (parsed, used) = archive::parse_complete(&text);
        let mut lines = Vec::with_capacity(parsed.len());
        for line in parsed {
            match line {
                Ok(l) => lines.push(l),
                // The line is input: escaped, so that it cannot forge log lines.
                Err(why) => pgrx::warning!(
                    "backup_mgmt: ignoring a line of \"{}\": {}",
                    manifest.display(),
                    escape_for_log(&why.to_string())
                ),
            }
        }
        let dir_text = dir.to_string_lossy().into_owned();
        let stored = in_transaction("recording archived WAL", || {
            pgrx::Spi::connect_mut(|c| {
                for l in &lines {
                    let size = segment_size_of(l, sysid);
                    let position = Segment::parse(&l.name, size);
                    let path = format!("{dir_text}/{}", l.stored_name());
                    c.update(
                        "INSERT INTO backup_management.wal_archive \
                             (system_identifier, file_name, timeline_id, segment_number, file_path, \
                              file_size, checksum, archived_at, segment_size) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8::timestamptz, $9) \
                         ON CONFLICT (system_identifier, file_name) DO NOTHING",
                        None,
                        &[
                            (sysid as i64).into(),
                            l.name.as_str().into(),
                            position.map(|p| p.timeline as i32).into(),
                            position.map(|p| p.number as i64).into(),
                            path.as_str().into(),
                            l.size.into(),
                            l.sha256.as_str().into(),
                            l.archived_at.as_str().into(),
                            position.map(|_| size.bytes() as i64).into(),
                        ],
                    )?;
                }
                Ok::<(), SpiError>(())
            })
        });
        if stored.is_some() {
            self.offsets.insert(manifest, offset + used as u64);
            if !lines.is_empty() {
                mirror::refresh();
            }
        }
    }
}
