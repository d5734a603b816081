//! The timelines a recovery plan follows: this server's own line of history, and the archived
//! history file recovery will read.
//!
//! A plan recovers this cluster as it is, so recovery ends on the timeline this server is on,
//! along the history PostgreSQL keeps for it in `pg_wal` (`0000000N.history`, never removed):
//! not on whichever timeline is newest in the archive, which may be a branch that was
//! abandoned (a promoted standby thrown away, a drill).  `backup_mgmt_core::timeline` builds the
//! path from a backup's timeline to this one, as for the restore program.
//!
//! Recovery itself reads the history file of the timeline it ends on through `restore_command`,
//! so the archived copy must be there and sound: it is read beneath its root, checked against
//! the size and sha256 recorded when it was archived, and compared with the server's own.
//! Catalog rows and files under the roots are input: a row whose path is not where the archive
//! module puts that file, or a file that is not what was archived, is a reason, never read past
//! a history file's limit.

use std::io::Read;
use std::path::PathBuf;

use backup_mgmt_core::restore::recipe::Segment;
use backup_mgmt_core::timeline::{
    decompressed_history, history_file_name, history_of, Switch, TimelinePath, HISTORY_LIMIT,
};
use backup_mgmt_core::verify::archive::{locate, read_small};
use backup_mgmt_core::wal::Lsn;
use pgrx::spi::{SpiClient, SpiError};

use crate::pg::{guc, server};

/// The history of `timeline` as this server keeps it in `pg_wal` (timeline 1 has none).
fn own_history(timeline: u32) -> Result<Vec<Switch>, String> {
    if timeline == 1 {
        return Ok(Vec::new());
    }
    let path = server::data_directory()
        .join("pg_wal")
        .join(history_file_name(timeline));
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(HISTORY_LIMIT + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("\"{}\": {e}", path.display()))?;
    if bytes.len() as u64 > HISTORY_LIMIT {
        return Err(format!(
            "\"{}\" is larger than a history file",
            path.display()
        ));
    }
    history_of(timeline, bytes)
}

/// An archived history file that was read and checked.
#[derive(Debug, Clone)]
pub struct ArchivedHistory {
    pub history: Vec<Switch>,
    /// How a recipe lists it among the files it checks.
    pub listed: Segment,
    /// Its archive directory, as the catalog records it.
    pub dir: PathBuf,
}

/// The archived history file of `timeline` of cluster `system_identifier`: None when the
/// catalog records none; else the file read and checked, or why it cannot be used (lost, not
/// in the archive, not what was archived, not a history file).
pub fn archived_history(
    c: &SpiClient<'_>,
    system_identifier: i64,
    timeline: u32,
) -> Result<Option<Result<ArchivedHistory, String>>, SpiError> {
    let name = history_file_name(timeline);
    let rows = c.select(
        "SELECT file_path, checksum, file_size, \
                CASE WHEN lost_at IS NOT NULL THEN coalesce(lost_reason, 'no reason recorded') END \
           FROM backup_management.wal_archive \
          WHERE system_identifier = $1 AND file_name = $2 AND expired_at IS NULL",
        None,
        &[system_identifier.into(), name.as_str().into()],
    )?;
    let Some(row) = rows.into_iter().next() else {
        return Ok(None);
    };
    let path: String = row.get(1)?.unwrap_or_default();
    let sha256: String = row.get(2)?.unwrap_or_default();
    let size = row.get::<i64>(3)?.and_then(|s| u64::try_from(s).ok());
    let lost: Option<String> = row.get(4)?;
    let read = (|| -> Result<ArchivedHistory, String> {
        if let Some(why) = lost {
            return Err(format!("it is lost ({why})"));
        }
        let size = size.ok_or("its size is not recorded")?;
        let roots = guc::backup_roots().map_err(|e| e.to_string())?;
        let file = locate(&path, &name, system_identifier, &roots).ok_or_else(|| {
            "its recorded path is not in the WAL archive of a backup root".to_owned()
        })?;
        let stored = read_small(&file, size, &sha256, HISTORY_LIMIT)?;
        let compressed = file.stored.ends_with(".zst");
        let history = history_of(
            timeline,
            decompressed_history(stored, compressed, HISTORY_LIMIT)?,
        )?;
        // The directory as the roots name it, not as the catalog row spells it.
        let dir = file.root.join(&file.dir);
        let listed = Segment {
            number: 0,
            name: name.clone(),
            file: file.stored,
            sha256,
            archived_after_target: false,
            xact_after_target: None,
        };
        Ok(ArchivedHistory {
            history,
            listed,
            dir,
        })
    })();
    // The path is catalog text: quoted, so that it cannot forge a line of a NOTICE or the log.
    Ok(Some(read.map_err(|why| format!("{path:?}: {why}"))))
}

/// This server's timeline and its history: where the recovery a plan describes ends.
pub struct Line {
    pub current: u32,
    /// Its history, from `pg_wal` (or the archived copy when `pg_wal` has none).
    history: Result<Vec<Switch>, String>,
    /// The archived history file of `current`, as `archived_history` found it.
    archived: Option<Result<ArchivedHistory, String>>,
    system_identifier: i64,
}

impl Line {
    pub fn read(c: &SpiClient<'_>) -> Result<Line, SpiError> {
        let system_identifier = server::system_identifier() as i64;
        let current = server::timeline();
        let mut archived = archived_history(c, system_identifier, current)?;
        let history = match own_history(current) {
            Ok(own) => {
                // Recovery follows the archived copy: it must say what the server says.
                if let Some(Ok(a)) = &archived {
                    if a.history != own {
                        archived = Some(Err(format!(
                            "{:?}: it differs from this server's own pg_wal/{}",
                            a.dir.join(&a.listed.file),
                            history_file_name(current)
                        )));
                    }
                }
                Ok(own)
            }
            Err(e) => match &archived {
                Some(Ok(a)) => Ok(a.history.clone()),
                _ => Err(e),
            },
        };
        Ok(Line {
            current,
            history,
            archived,
            system_identifier,
        })
    }

    /// The timelines recovery from a backup on `base` that ended at `stop` reads to end on this
    /// server's timeline, or why it cannot (this timeline branched off before the backup ended,
    /// or elsewhere; its history cannot be read).
    pub fn route(&self, base: u32, stop: Lsn) -> Result<TimelinePath, String> {
        if base == self.current {
            return Ok(TimelinePath::stay(base));
        }
        match &self.history {
            Ok(h) => TimelinePath::to(base, stop, self.current, h),
            Err(e) => Err(format!(
                "recovery from its timeline {base} to this server's timeline {} needs the \
                 history of timeline {}, which cannot be read: {e}",
                self.current, self.current
            )),
        }
    }

    /// The archived history file recovery along `route` reads (that of the timeline it ends
    /// on, from 2 on), checked: Ok(None) when there is none to read and recovery can do without
    /// (it stays on the backup's timeline, whose history is in the backup's `pg_wal`); Err: why
    /// recovery would fail on it.
    pub fn history_read(
        &self,
        c: &SpiClient<'_>,
        route: &TimelinePath,
    ) -> Result<Result<Option<ArchivedHistory>, String>, SpiError> {
        let ends_on = route.target();
        if ends_on == 1 {
            return Ok(Ok(None));
        }
        let archived = match ends_on == self.current {
            true => self.archived.clone(),
            false => archived_history(c, self.system_identifier, ends_on)?,
        };
        Ok(match archived {
            Some(Ok(a)) => Ok(Some(a)),
            Some(Err(why)) => Err(format!(
                "the archived history file of timeline {ends_on}, which recovery reads, cannot \
                 be used: {why}"
            )),
            None if route.changes_timeline() => Err(format!(
                "the archive holds no history file of timeline {ends_on}, which recovery reads \
                 to follow it (a server that became this timeline with archive_mode off, as a \
                 recipe's restored copy does, never archived it; its pg_wal/{} has it, but \
                 the catalog cannot vouch for a copy put there by hand: take a base backup on \
                 this timeline)",
                history_file_name(ends_on)
            )),
            None => Ok(None),
        })
    }
}
