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
    decompressed_history, history_file_name, history_of, HistoryError, RouteError, Switch,
    TimelinePath, HISTORY_LIMIT,
};
use backup_mgmt_core::verify::archive::{locate, read_small, SmallFileError};
use backup_mgmt_core::wal::Lsn;
use pgrx::spi::{SpiClient, SpiError};

use crate::pg::{guc, server};

/// Why a timeline's history, this server's own or the archived copy, cannot be followed.  The
/// words reach `plan_recovery`'s reasons and NOTICEs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LineError {
    /// This server's own `pg_wal/0000000N.history` could not be read.
    #[error("\"{path}\": {why}")]
    OwnUnreadable { path: String, why: String },
    #[error("\"{0}\" is larger than a history file")]
    OwnTooLarge(String),
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("it is lost ({0})")]
    Lost(String),
    #[error("its size is not recorded")]
    SizeNotRecorded,
    /// `backup_mgmt.backup_roots` cannot be read (the setting's error).
    #[error("{0}")]
    Roots(String),
    #[error("its recorded path is not in the WAL archive of a backup root")]
    NotInArchive,
    #[error(transparent)]
    Archived(#[from] SmallFileError),
    /// An archived history file's problem, named by its catalog path: quoted, as catalog text,
    /// so that it cannot forge a line of a NOTICE or the log.
    #[error("{path:?}: {why}")]
    At { path: String, why: Box<LineError> },
    #[error("{file:?}: it differs from this server's own pg_wal/{name}")]
    DiffersFromOwn { file: PathBuf, name: String },
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error(
        "recovery from its timeline {base} to this server's timeline {current} needs the \
         history of timeline {current}, which cannot be read: {why}"
    )]
    NoHistory {
        base: u32,
        current: u32,
        why: Box<LineError>,
    },
    #[error(
        "the archived history file of timeline {ends_on}, which recovery reads, cannot be used: \
         {why}"
    )]
    ArchivedUnusable { ends_on: u32, why: Box<LineError> },
    #[error(
        "the archive holds no history file of timeline {ends_on}, which recovery reads to follow \
         it (a server that became this timeline with archive_mode off, as a recipe's restored \
         copy does, never archived it; its pg_wal/{name} has it, but the catalog cannot vouch \
         for a copy put there by hand: take a base backup on this timeline)"
    )]
    NotArchived { ends_on: u32, name: String },
}

/// The history of `timeline` as this server keeps it in `pg_wal` (timeline 1 has none).
fn own_history(timeline: u32) -> Result<Vec<Switch>, LineError> {
    if timeline == 1 {
        return Ok(Vec::new());
    }
    let path = server::data_directory()
        .join("pg_wal")
        .join(history_file_name(timeline));
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(HISTORY_LIMIT + 1).read_to_end(&mut bytes))
        .map_err(|e| LineError::OwnUnreadable {
            path: path.display().to_string(),
            why: e.to_string(),
        })?;
    if bytes.len() as u64 > HISTORY_LIMIT {
        return Err(LineError::OwnTooLarge(path.display().to_string()));
    }
    Ok(history_of(timeline, bytes)?)
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
) -> Result<Option<Result<ArchivedHistory, LineError>>, SpiError> {
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
    let read = (|| -> Result<ArchivedHistory, LineError> {
        if let Some(why) = lost {
            return Err(LineError::Lost(why));
        }
        let size = size.ok_or(LineError::SizeNotRecorded)?;
        let roots = guc::backup_roots().map_err(|e| LineError::Roots(e.to_string()))?;
        let file =
            locate(&path, &name, system_identifier, &roots).ok_or(LineError::NotInArchive)?;
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
    Ok(Some(read.map_err(|why| LineError::At {
        path,
        why: Box::new(why),
    })))
}

/// This server's timeline and its history: where the recovery a plan describes ends.
pub struct Line {
    pub current: u32,
    /// Its history, from `pg_wal` (or the archived copy when `pg_wal` has none).
    history: Result<Vec<Switch>, LineError>,
    /// The archived history file of `current`, as `archived_history` found it.
    archived: Option<Result<ArchivedHistory, LineError>>,
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
                        archived = Some(Err(LineError::DiffersFromOwn {
                            file: a.dir.join(&a.listed.file),
                            name: history_file_name(current),
                        }));
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
    pub fn route(&self, base: u32, stop: Lsn) -> Result<TimelinePath, LineError> {
        if base == self.current {
            return Ok(TimelinePath::stay(base));
        }
        match &self.history {
            Ok(h) => Ok(TimelinePath::to(base, stop, self.current, h)?),
            Err(e) => Err(LineError::NoHistory {
                base,
                current: self.current,
                why: Box::new(e.clone()),
            }),
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
    ) -> Result<Result<Option<ArchivedHistory>, LineError>, SpiError> {
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
            Some(Err(why)) => Err(LineError::ArchivedUnusable {
                ends_on,
                why: Box::new(why),
            }),
            None if route.changes_timeline() => Err(LineError::NotArchived {
                ends_on,
                name: history_file_name(ends_on),
            }),
            None => Ok(None),
        })
    }
}
