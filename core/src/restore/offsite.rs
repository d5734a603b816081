//! The off-site mirror read back: what a target holds of a cluster (`<system identifier>/
//! .catalog/catalog_mirror.json`, format `backup_mgmt offsite catalog 2` with its WAL listed in
//! parts (`mirror_parts`), or format 1 with every WAL file in the one document, written by the
//! extension's worker), and the choice of the backup a restore to a goal starts from, with the
//! WAL it needs, made as `plan_recovery` makes it (`base_choice`): among the physical backups that
//! end before the goal, whose chain is on the target and not known damaged, with every segment
//! from its start to the goal there, the newest whose whole chain passed verification, else the
//! newest.
//!
//! Everything here is input: the mirror is a file on a target that others may write.  Keys are
//! checked again where they are opened (`storage::plain_key`), digests and names here.

use std::collections::{BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::checksum::is_sha256_hex;
use crate::restore::base_choice::{choose_base, Candidate};
use crate::restore::mirror_parts::{self, Parts, WalPartRef};
use crate::restore::recipe::{wal_needed, Segment};
use crate::storage::{Storage, StorageError};
use crate::timeline::{
    path_for, timelines_above, Histories, RouteError, TargetTimeline, TimelinePath,
};
use crate::vocabulary::BackupMethod;
use crate::wal::{self, Lsn, SegmentSize};

/// The format line of a mirror listing its WAL in the one document (written before 0.14.0;
/// still read).
pub const FORMAT: &str = "backup_mgmt offsite catalog 1";
/// The mirror's file name.
pub const MIRROR_FILE: &str = "catalog_mirror.json";
/// Mirrors larger than this are refused (a million WAL files take about 250 MB).
const MIRROR_LIMIT: u64 = 1 << 30;

/// Where a cluster's mirror lives on a target.
pub fn mirror_key(system_identifier: i64) -> String {
    format!("{system_identifier}/.catalog/{MIRROR_FILE}")
}

#[derive(Debug, thiserror::Error)]
pub enum OffsiteRestoreError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the mirror of cluster {sysid} on the target is not readable: {why}")]
    BadMirror { sysid: i64, why: String },
    #[error("the target holds no cluster's catalog mirror")]
    NoCluster,
    #[error("the target holds several clusters ({0}); name one with --cluster")]
    SeveralClusters(String),
    #[error("no backup to restore from: {0}")]
    NoBase(String),
    /// What the command line asks is malformed or ambiguous (exit 2): a time that is not one,
    /// a backup of the other kind, several databases to choose from.
    #[error("{0}")]
    Goal(String),
}

/// Why a restore to a goal cannot start from a backup (one candidate's reason, named in the
/// refusal when no candidate can be used).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("backup {0}'s chain loops")]
    ChainLoops(i64),
    #[error("its parent {0} is not on the target")]
    ParentMissing(i64),
    #[error("backup {0} of its chain failed verification")]
    ChainMemberFailed(i64),
    #[error("backup {backup_id} of its chain is a {method} backup")]
    ChainMixesMethods { backup_id: i64, method: String },
    #[error("no WAL location recorded")]
    NoLocation,
    #[error("no end time recorded")]
    NoEndTime,
    #[error(
        "a pg_basebackup incremental, whose chain needs pg_combinebackup, and none was found \
         (the restore program takes its directory from --pg-bin)"
    )]
    NoCombine,
    #[error("timeline {0:?} is no timeline")]
    NoTimeline(Option<i64>),
    #[error(transparent)]
    Route(#[from] RouteError),
    #[error("no WAL archived at or after the target time is on the target yet")]
    NoWalAfterGoal,
    #[error("WAL segment {name} is not on the target ({missing} missing)")]
    WalMissing { name: String, missing: usize },
}

/// One backup as the mirror lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MirrorBackup {
    pub backup_id: i64,
    pub database_name: String,
    pub backup_type: String,
    pub backup_method: String,
    pub key: String,
    #[serde(default)]
    pub size: Option<i64>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub compression: Option<String>,
    #[serde(default)]
    pub parent_backup_id: Option<i64>,
    #[serde(default)]
    pub pg_version: Option<i64>,
    #[serde(default)]
    pub timeline_id: Option<i64>,
    #[serde(default)]
    pub start_time: Option<String>,
    #[serde(default)]
    pub end_time: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub globals_key: Option<String>,
    #[serde(default)]
    pub globals_sha256: Option<String>,
    #[serde(default)]
    pub start_lsn: Option<String>,
    #[serde(default)]
    pub stop_lsn: Option<String>,
    #[serde(default)]
    pub start_wal_segment: Option<String>,
    #[serde(default)]
    pub stop_wal_segment: Option<String>,
    #[serde(default)]
    pub pinned: Option<bool>,
    #[serde(default)]
    pub verification: Option<String>,
    #[serde(default)]
    pub verified_at: Option<String>,
    /// Its verification failed (`verification`, the catalog's standing verdict) only because
    /// the source host's own copy is not there (its file missing, or outside that host's
    /// roots): no failure that stands says anything of the backup's bytes.  After a failover the new primary finds the old one's local
    /// backups missing.  It says nothing of the backup's bytes: the copy on the target is
    /// usable (a restore checks every file against the recorded digests), not as a verified
    /// one.  Absent in mirrors written before it, and null when never verified.
    #[serde(default)]
    pub failed_locally: Option<bool>,
}

impl MirrorBackup {
    /// Whether its verification failed only because the source host's copy is not
    /// there (`failed_locally`).
    pub fn failed_only_locally(&self) -> bool {
        self.verification.as_deref() == Some("failed") && self.failed_locally == Some(true)
    }

    /// Whether its verification found the backup itself bad, not only the source host's
    /// copy of it.
    pub fn known_bad(&self) -> bool {
        self.verification.as_deref() == Some("failed") && !self.failed_only_locally()
    }

    /// Its method, None when the mirror names one this program does not know (a newer
    /// writer's): such a backup is neither restored nor offered.
    pub fn method(&self) -> Option<BackupMethod> {
        BackupMethod::parse(&self.backup_method).ok()
    }

    /// Whether `restore-logical` restores it (`BackupMethod::is_dump`).
    pub fn is_dump(&self) -> bool {
        self.method().is_some_and(BackupMethod::is_dump)
    }

    /// Whether `restore` can start from it (`BackupMethod::is_cluster_copy`).
    pub fn is_cluster_copy(&self) -> bool {
        self.method().is_some_and(BackupMethod::is_cluster_copy)
    }
}

/// One archived WAL file on the target.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MirrorWal {
    pub name: String,
    pub key: String,
    pub size: i64,
    pub sha256: String,
    pub archived_at: String,
}

/// A cluster's mirror.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mirror {
    pub format: String,
    pub written_at: String,
    pub system_identifier: i64,
    #[serde(default)]
    pub pg_version: Option<i64>,
    #[serde(default)]
    pub wal_segment_size: Option<u64>,
    #[serde(default)]
    pub target: Option<String>,
    #[serde(default)]
    pub backups: Vec<MirrorBackup>,
    /// Every WAL file of the parts read (format 2) or of the document (format 1), by name.
    #[serde(default)]
    pub wal_files: Vec<MirrorWal>,
    /// Format 2: the parts the WAL files are listed in (`mirror_parts`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wal_parts: Vec<WalPartRef>,
    #[serde(default)]
    pub wal_gaps: Vec<String>,
}

impl Mirror {
    /// The cluster's WAL segment size (16 MB when the mirror does not say).
    pub fn segment_size(&self) -> SegmentSize {
        self.wal_segment_size
            .and_then(SegmentSize::new)
            .unwrap_or_default()
    }

    /// The WAL file `name` on the target, when the mirror lists it with a plain name and digest.
    pub fn wal_file(&self, name: &str) -> Option<&MirrorWal> {
        self.wal_files.iter().find(|w| w.name == name)
    }

    pub fn backup(&self, id: i64) -> Option<&MirrorBackup> {
        self.backups.iter().find(|b| b.backup_id == id)
    }
}

/// The system identifiers of the clusters whose mirror a target holds.
pub fn clusters(storage: &dyn Storage) -> Result<Vec<i64>, OffsiteRestoreError> {
    let mut ids = Vec::new();
    for name in storage.children("")? {
        let Ok(id) = name.parse::<i64>() else {
            continue;
        };
        if storage
            .children(&format!("{id}/.catalog/"))?
            .iter()
            .any(|n| n == MIRROR_FILE)
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// The one cluster to work on: `named`, or the only one the target holds.
pub fn pick_cluster(storage: &dyn Storage, named: Option<i64>) -> Result<i64, OffsiteRestoreError> {
    if let Some(id) = named {
        return Ok(id);
    }
    match clusters(storage)?.as_slice() {
        [] => Err(OffsiteRestoreError::NoCluster),
        [one] => Ok(*one),
        many => Err(OffsiteRestoreError::SeveralClusters(
            many.iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// Reads and checks cluster `sysid`'s mirror, with every WAL file it lists.
pub fn load_mirror(storage: &dyn Storage, sysid: i64) -> Result<Mirror, OffsiteRestoreError> {
    mirror_parts::load(storage, sysid, MIRROR_LIMIT, Parts::All)
}

/// Reads and checks cluster `sysid`'s mirror with the WAL files of the parts `wanted` accepts
/// (all of them in a mirror of format 1, which has no parts): what `wal-fetch` needs of a
/// large archive's mirror.
pub fn load_mirror_parts(
    storage: &dyn Storage,
    sysid: i64,
    wanted: &dyn Fn(&str, SegmentSize) -> bool,
) -> Result<Mirror, OffsiteRestoreError> {
    mirror_parts::load(storage, sysid, MIRROR_LIMIT, Parts::Only(wanted))
}

/// What to recover to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Goal {
    /// The end of the backup itself (only the WAL it holds, or the archive up to its end).
    EndOfBackup,
    /// Every WAL file the target has.
    Latest,
    Time(DateTime<Utc>),
    Lsn(Lsn),
}

/// `2026-12-04 10:00:00+00`, `2026-12-04T10:00:00.5Z` or an RFC 3339 time.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let t = text.trim();
    DateTime::parse_from_rfc3339(t)
        .or_else(|_| DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

/// A backup a restore starts from, its chain (full first) and the archived WAL it needs.
#[derive(Debug, Clone)]
pub struct Choice {
    /// The cluster the mirror describes.
    pub backup_sysid: i64,
    pub backup: MirrorBackup,
    pub chain: Vec<MirrorBackup>,
    pub wal: Vec<MirrorWal>,
    /// The timelines recovery reads, from the backup's to the one it ends on.
    pub path: TimelinePath,
    /// Why this backup, in a sentence for the operator.
    pub why: String,
}

/// The timeline a restore should end on, and the history files the target holds (read by
/// `fetch_history::read_histories`).
#[derive(Debug, Clone, Default)]
pub struct Timelines {
    pub target: TargetTimeline,
    pub histories: Histories,
}

impl Timelines {
    /// Recovery that stays on the base backup's timeline (a drill to the end of a backup).
    pub fn current() -> Timelines {
        Timelines {
            target: TargetTimeline::Current,
            histories: Histories::new(),
        }
    }
}

/// Whether a chain of block-level incremental `pg_basebackup` backups (PostgreSQL 17+) can be
/// restored here: it needs a `pg_combinebackup`, which a restore host may not have.  Without
/// one such a backup is passed over (for its full and more WAL), with the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TarChains {
    Combine,
    PassOver,
}

fn time_of(t: &Option<String>) -> Option<DateTime<Utc>> {
    t.as_deref().and_then(parse_time)
}

/// The mirror looked up by backup id and WAL file name, and its WAL segments parsed, once per
/// choice: each candidate's chain and WAL are then found without walking the whole mirror again
/// (a mirror is input, and may list thousands of backups and a million WAL files).  Where an id
/// or a name is listed twice, the first entry counts, as `Mirror::backup` and `wal_file` say.
struct Index<'a> {
    backups: HashMap<i64, &'a MirrorBackup>,
    wal: HashMap<&'a str, &'a MirrorWal>,
    /// The WAL segments listed with a plain digest, parsed.
    segments: Vec<(wal::Segment, &'a MirrorWal)>,
    /// The timelines the target holds WAL of (whatever its digest), for every candidate's path.
    with_wal: BTreeSet<u32>,
}

impl<'a> Index<'a> {
    fn of(m: &'a Mirror) -> Index<'a> {
        let mut backups = HashMap::with_capacity(m.backups.len());
        for b in &m.backups {
            backups.entry(b.backup_id).or_insert(b);
        }
        let mut wal = HashMap::with_capacity(m.wal_files.len());
        for w in &m.wal_files {
            wal.entry(w.name.as_str()).or_insert(w);
        }
        let size = m.segment_size();
        let (mut segments, mut with_wal) = (Vec::new(), BTreeSet::new());
        for (s, w) in m
            .wal_files
            .iter()
            .filter_map(|w| Some((wal::Segment::parse(&w.name, size)?, w)))
        {
            with_wal.insert(s.timeline);
            if is_sha256_hex(&w.sha256) {
                segments.push((s, w));
            }
        }
        Index {
            backups,
            wal,
            segments,
            with_wal,
        }
    }
}

/// The chain of `b`, full first, when every backup of it is on the target and none is known
/// damaged; else why not.
fn chain_of<'a>(index: &Index<'a>, b: &'a MirrorBackup) -> Result<Vec<&'a MirrorBackup>, Unusable> {
    let mut chain = vec![b];
    let mut at = b;
    while let Some(p) = at.parent_backup_id {
        // Longer than the backups there are, or than any chain a retention policy keeps: it
        // comes back on itself.
        if chain.len() > index.backups.len().min(10_000) {
            return Err(Unusable::ChainLoops(b.backup_id));
        }
        at = index
            .backups
            .get(&p)
            .copied()
            .ok_or(Unusable::ParentMissing(p))?;
        chain.push(at);
    }
    if let Some(bad) = chain.iter().find(|c| c.known_bad()) {
        return Err(Unusable::ChainMemberFailed(bad.backup_id));
    }
    chain.reverse();
    Ok(chain)
}

/// The archived segments the mirror lists that recovery along `path` reads (each number from
/// the timeline the path is on there), numbered, with whether each was archived at or after
/// `after`.
fn segments_on(
    index: &Index<'_>,
    path: &TimelinePath,
    size: SegmentSize,
    after: Option<DateTime<Utc>>,
) -> Vec<Segment> {
    let mut out: Vec<Segment> = index
        .segments
        .iter()
        .filter(|(s, _)| s.timeline == path.timeline_of(s.number, size))
        .map(|(s, w)| Segment {
            number: s.number as i64,
            name: w.name.clone(),
            file: w.key.rsplit('/').next().unwrap_or_default().to_owned(),
            sha256: w.sha256.clone(),
            archived_after_target: match (after, parse_time(&w.archived_at)) {
                (Some(t), Some(a)) => a >= t,
                _ => false,
            },
            xact_after_target: None,
        })
        .collect();
    out.sort_by_key(|s| s.number);
    out
}

/// Chooses the backup to restore to `goal` from (or checks `backup_id`, when given).
pub fn choose(
    m: &Mirror,
    goal: &Goal,
    backup_id: Option<i64>,
    chains: TarChains,
    timelines: &Timelines,
) -> Result<Choice, OffsiteRestoreError> {
    let mut candidates: Vec<&MirrorBackup> = m
        .backups
        .iter()
        .filter(|b| b.is_cluster_copy())
        .filter(|b| backup_id.is_none_or(|id| b.backup_id == id))
        .collect();
    // Newest first as plan_recovery orders them: by where they end, then by id.
    candidates.sort_by_key(|b| {
        std::cmp::Reverse((
            b.stop_lsn.as_deref().and_then(Lsn::parse).map(|l| l.0),
            b.backup_id,
        ))
    });
    if candidates.is_empty() {
        return Err(OffsiteRestoreError::NoBase(match backup_id {
            Some(id) => format!("backup {id} is not a physical backup on the target"),
            None => "the target holds no physical backup of this cluster".into(),
        }));
    }
    // As for plan_recovery, a backup that ends after the goal is no candidate at all (it is
    // only named when nothing can be used).
    let (late, candidates): (Vec<&MirrorBackup>, Vec<&MirrorBackup>) =
        candidates.into_iter().partition(|b| ends_after(goal, b));
    let index = Index::of(m);
    let physical = candidates.into_iter().map(|b| {
        let usable = usable(m, &index, goal, b, chains, timelines);
        Candidate {
            backup_id: b.backup_id,
            problem: usable.as_ref().err().map(Unusable::to_string),
            unverified: usable.as_ref().ok().and_then(|(chain, _, _)| {
                // The member nearest the backup first, as plan_recovery names it.
                chain
                    .iter()
                    .rev()
                    .find(|c| c.verification.as_deref() != Some("passed"))
                    .map(|c| match c.failed_only_locally() {
                        true => format!(
                            "backup {}'s verification failed only because the source \
                             host's own copy is missing there",
                            c.backup_id
                        ),
                        false => format!("backup {} has no passed verification", c.backup_id),
                    })
            }),
            item: usable.ok().map(|(chain, wal, path)| (b, chain, wal, path)),
        }
    });
    let chosen = choose_base(physical).map_err(|not_used| {
        let late = late
            .iter()
            .map(|b| format!("backup {}: ends after the goal", b.backup_id));
        OffsiteRestoreError::NoBase(late.chain(not_used).collect::<Vec<_>>().join("; "))
    })?;
    let Some((b, chain, wal, path)) = chosen.item else {
        return Err(OffsiteRestoreError::NoBase(format!(
            "backup {} is not usable",
            chosen.backup_id
        )));
    };
    let followed = match path.changes_timeline() {
        false => String::new(),
        true => format!(", along timelines {}", path.describe()),
    };
    // Ending on the newest timeline that continues from the backup is not ending on the newest
    // timeline: a newer branch (a later failover from before this backup ended) may be where
    // the cluster lives now, reached only from a backup that ended before it branched off or
    // was taken on it.  Not for an LSN goal: its path is cut there, and a timeline above the
    // cut may well continue from this backup.
    let passed_over = match (timelines.target, goal) {
        (TargetTimeline::Latest, Goal::Latest | Goal::Time(_)) => {
            timelines_above(path.target(), &timelines.histories, &index.with_wal)
        }
        _ => BTreeSet::new(),
    };
    let passed_over = match passed_over.len() {
        0 => String::new(),
        n => format!(
            "; passed over newer timeline{} {}, which {} not continue from this backup (branched \
             off before it ended, or from another timeline): to end on {}, pass \
             --target-timeline with its number (a backup that ended before it branched off, or \
             one taken on it, reaches it)",
            if n == 1 { "" } else { "s" },
            passed_over
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            if n == 1 { "does" } else { "do" },
            if n == 1 { "it" } else { "one of them" },
        ),
    };
    let why = format!(
        "backup {} ({} {}, ended {}) ends before the goal with its chain ({} backup{}) on the \
         target and not known damaged, and {}; {} WAL segment{} from {} on are there without a \
         gap{followed}{passed_over}",
        b.backup_id,
        b.backup_method,
        b.backup_type,
        b.end_time.as_deref().unwrap_or("?"),
        chain.len(),
        if chain.len() == 1 { "" } else { "s" },
        chosen.why,
        wal.len(),
        if wal.len() == 1 { "" } else { "s" },
        b.start_wal_segment.as_deref().unwrap_or("its start"),
    );
    Ok(Choice {
        backup_sysid: m.system_identifier,
        backup: b.clone(),
        chain: chain.into_iter().cloned().collect(),
        wal: wal.into_iter().cloned().collect(),
        path,
        why,
    })
}

/// Whether `b` ends after `goal` (a backup without its end recorded does not: it is refused
/// for that later, with its reason).
fn ends_after(goal: &Goal, b: &MirrorBackup) -> bool {
    match goal {
        Goal::Time(t) => time_of(&b.end_time).is_some_and(|e| e > *t),
        Goal::Lsn(l) => b
            .stop_lsn
            .as_deref()
            .and_then(Lsn::parse)
            .is_some_and(|stop| stop.0 > l.0),
        Goal::EndOfBackup | Goal::Latest => false,
    }
}

/// One candidate's chain and WAL, borrowed from the mirror (cloned only for the chosen one).
type Usable<'a> = (Vec<&'a MirrorBackup>, Vec<&'a MirrorWal>, TimelinePath);

/// Whether a restore to `goal` can start from `b`: its chain (full first) and the WAL it needs
/// from the target, or why not.
fn usable<'a>(
    m: &Mirror,
    index: &Index<'a>,
    goal: &Goal,
    b: &'a MirrorBackup,
    chains: TarChains,
    timelines: &Timelines,
) -> Result<Usable<'a>, Unusable> {
    let size = m.segment_size();
    let stop = b.stop_lsn.as_deref().and_then(Lsn::parse);
    let start = b.start_lsn.as_deref().and_then(Lsn::parse);
    let (Some(start), Some(stop)) = (start, stop) else {
        return Err(Unusable::NoLocation);
    };
    if matches!(goal, Goal::Time(_)) && time_of(&b.end_time).is_none() {
        return Err(Unusable::NoEndTime);
    }
    let chain = chain_of(index, b)?;
    if let Some(other) = chain.iter().find(|c| c.backup_method != b.backup_method) {
        return Err(Unusable::ChainMixesMethods {
            backup_id: other.backup_id,
            method: other.backup_method.clone(),
        });
    }
    if b.method() == Some(BackupMethod::PgBasebackup)
        && chain.len() > 1
        && chains == TarChains::PassOver
    {
        return Err(Unusable::NoCombine);
    }
    let Some(timeline) = u32::try_from(b.timeline_id.unwrap_or(1))
        .ok()
        .filter(|t| *t > 0)
    else {
        return Err(Unusable::NoTimeline(b.timeline_id));
    };
    // Recovery to the end of the backup reads only the backup's own timeline; to a location,
    // none of the timelines that begin after it.
    let followed = |t| path_for(timeline, stop, t, &timelines.histories, &index.with_wal);
    let path = match goal {
        Goal::EndOfBackup => TimelinePath::stay(timeline),
        Goal::Lsn(l) => followed(timelines.target)?.up_to(*l, size),
        Goal::Latest | Goal::Time(_) => followed(timelines.target)?,
    };
    let after = match goal {
        Goal::Time(t) => Some(*t),
        _ => None,
    };
    let archived = segments_on(index, &path, size, after);
    let first = size.segment_of(start.0) as i64;
    let last_of_backup = size.segment_of(stop.0.saturating_sub(1).max(start.0)) as i64;
    let target_segment = match goal {
        Goal::Lsn(l) => Some(size.segment_of(l.0) as i64),
        Goal::EndOfBackup => Some(last_of_backup),
        _ => None,
    };
    let mut need = wal_needed(first, last_of_backup, target_segment, &archived);
    // The latest WAL is on the last timeline of the path: recovery gets there only through its
    // first segment (which holds the switch), whatever the timelines before it still hold.
    if *goal == Goal::Latest {
        if let Some(reach) = path.first_segment_of_target(size) {
            let upto = need
                .needed
                .iter()
                .map(|s| s.number)
                .max()
                .unwrap_or(first)
                .max(last_of_backup);
            need.missing.extend(upto + 1..=reach as i64);
        }
    }
    if let Goal::Time(_) = goal {
        if need.last.is_none() {
            return Err(Unusable::NoWalAfterGoal);
        }
    }
    // A physical backup holds the WAL from its start to its end itself (native copies it,
    // pg_basebackup runs with --wal-method=fetch).
    if *goal != Goal::EndOfBackup {
        if let Some(n) = need.missing.first() {
            let name = wal::Segment {
                timeline: path.timeline_of(*n as u64, size),
                number: *n as u64,
            }
            .file_name(size);
            return Err(Unusable::WalMissing {
                name,
                missing: need.missing.len(),
            });
        }
    }
    let wal = need
        .needed
        .iter()
        .filter_map(|s| index.wal.get(s.name.as_str()).copied())
        .collect();
    Ok((chain, wal, path))
}

#[cfg(test)]
#[path = "offsite_tests.rs"]
mod tests;
