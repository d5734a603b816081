//! Point-in-time recovery planning: `plan_recovery(target_time)` and
//! `plan_recovery_lsn(target_lsn)`, and `restore_recipe(backup_id)` for a native backup.
//!
//! A plan names the base backup to start from (the newest completed, not failed-verification
//! pg_basebackup of this cluster that ended before the target), the archived WAL it needs (from
//! the backup's start segment to the segment that covers the target), what is missing, and a
//! restore recipe (`backup_mgmt_core::restore::recipe`): a bash script that uses only
//! PostgreSQL's own programs and coreutils, tar and zstd, so that it runs on a machine where
//! backup_mgmt is not installed and the catalog is gone.  Segment numbers and names use this
//! cluster's WAL segment size, as the archive's catalog does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use backup_mgmt_core::backup::layout::wal_archive_dir;
use backup_mgmt_core::restore::base_choice::{choose_base, Candidate, Chosen, WINDOW};
use backup_mgmt_core::restore::recipe::{
    recipe, wal_needed, Base, RecipeError, RecipeInput, Segment, TarPart, Target,
};
use backup_mgmt_core::timeline::TimelinePath;
use backup_mgmt_core::verify::archive::locate;
use backup_mgmt_core::wal::{self, Lsn, WalRange};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiError, SpiHeapTupleData};

use super::timelines::{Line, LineError};
use crate::catalog::queries::{chain_members, chain_problem, chain_unverified, standing_verdict};
use crate::pg::{guc, server};

#[derive(Debug, thiserror::Error)]
pub enum PitrError {
    #[error("the recovery target must not be NULL")]
    Null,
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error("backup {0} does not exist or has not completed")]
    UnknownBackup(i64),
    #[error("backup {id} is a {method} backup; restore_recipe() restores native_physical backups")]
    NotNative { id: i64, method: String },
    #[error("backup {0} was registered, not made by the worker; recipes restore only the worker's own backups")]
    Registered(i64),
    #[error("catalog access failed: {0}")]
    Spi(#[from] SpiError),
}

/// A base backup's `Base`: a tar, or a native backup with its chain's directories.
fn base_of(
    c: &SpiClient<'_>,
    id: i64,
    method: &str,
    path: &str,
    sha: &str,
    compression: &str,
) -> Result<Base, PitrError> {
    let members = chain_members(c, id)?;
    if method != "native_physical" {
        let compressed =
            |compression: &str, path: &str| compression == "zstd" || path.ends_with(".zst");
        return Ok(Base::Tar {
            path: path.to_owned(),
            sha256: sha.to_owned(),
            compressed: compressed(compression, path),
            earlier: members
                .into_iter()
                .filter(|m| m.id != id)
                .map(|m| TarPart {
                    id: m.id,
                    compressed: compressed(&m.compression, &m.path),
                    path: m.path,
                    sha256: m.checksum.unwrap_or_default(),
                })
                .collect(),
        });
    }
    let holders = members.into_iter().map(|m| (m.id, m.path)).collect();
    Ok(Base::Native {
        dir: path.to_owned(),
        manifest_sha256: sha.to_owned(),
        holders,
    })
}

/// The recipe that restores native physical backup `backup_id` (any member of a chain) to the
/// end of that backup, from the WAL inside it: the data directory is materialised from the
/// chain with standard tools, every file checked against its sha256.
#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn restore_recipe(backup_id: Option<i64>) -> Result<String, ErrorReport> {
    let id = backup_id.ok_or(PitrError::Null)?;
    Ok(Spi::connect(|c| -> Result<String, PitrError> {
        let t = c.select(
            "SELECT backup_method, backup_file_path, checksum, compression, system_identifier, \
                    pg_version / 10000, origin \
               FROM backup_management.backup_records WHERE backup_id = $1 AND status = 'completed'",
            None,
            &[id.into()],
        )?;
        if t.is_empty() {
            return Err(PitrError::UnknownBackup(id));
        }
        let row = t.first();
        let method: String = row.get(1)?.unwrap_or_default();
        if method != "native_physical" {
            return Err(PitrError::NotNative { id, method });
        }
        // A registered directory has no manifest the worker wrote: its recipe would restore
        // whatever is there.
        if row.get::<String>(7)?.as_deref() != Some("worker") {
            return Err(PitrError::Registered(id));
        }
        let path: String = row.get(2)?.unwrap_or_default();
        let sha: String = row.get(3)?.unwrap_or_default();
        let compression: String = row.get(4)?.unwrap_or_default();
        let base = base_of(c, id, &method, &path, &sha, &compression)?;
        Ok(recipe(&RecipeInput {
            system_identifier: row.get(5)?.unwrap_or_default(),
            backup_id: id,
            base,
            archive_dirs: Vec::new(),
            wal: Vec::new(),
            target: Target::Immediate,
            timeline: None,
            pg_major: row.get(6)?.unwrap_or_default(),
        })?)
    })?)
}

/// The timelines recovery from the candidate base backup `row` reads to end on this server's
/// timeline (cut at `target` for a location), or why it cannot.
fn route_of(
    row: &SpiHeapTupleData<'_>,
    line: &Line,
    target: &Target,
    size: wal::SegmentSize,
) -> Result<Result<TimelinePath, LineError>, PitrError> {
    // As before timelines were followed: a row without its timeline is on the first.
    let timeline = row
        .get::<i32>(6)?
        .and_then(|t| u32::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(1);
    let stop = match row.get::<String>(8)? {
        Some(stop) => Some(stop),
        None => row.get::<String>(7)?,
    };
    let stop = stop.as_deref().and_then(Lsn::parse).unwrap_or_default();
    Ok(line.route(timeline, stop).map(|r| match target {
        Target::Lsn(l) => r.up_to(*l, size),
        Target::Time(_) | Target::Immediate => r,
    }))
}

/// A candidate's catalog row, and the timelines recovery from it reads (or why it cannot).
type Routed<'a> = (SpiHeapTupleData<'a>, Result<TimelinePath, LineError>);

/// A candidate base backup: what makes it unusable (its verification, its chain, or the
/// timelines that lead on from it), and the timelines recovery from it reads.
fn candidate<'a>(
    row: SpiHeapTupleData<'a>,
    line: &Line,
    target: &Target,
    size: wal::SegmentSize,
) -> Result<Candidate<Routed<'a>>, PitrError> {
    let route = route_of(&row, line, target, size)?;
    Ok(Candidate {
        backup_id: row.get::<i64>(1)?.unwrap_or_default(),
        problem: row
            .get::<String>(12)?
            .or(route.as_ref().err().map(LineError::to_string)),
        unverified: row.get::<String>(14)?,
        item: (row, route),
    })
}

/// One row of a plan.
type PlanRow = (
    bool,
    String,
    Option<i64>,
    Option<String>,
    Option<TimestampWithTimeZone>,
    Option<i32>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i32,
    Vec<String>,
    Option<String>,
);

fn unreachable_row(reason: String) -> PlanRow {
    (
        false,
        reason,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        0,
        Vec::new(),
        None,
    )
}

/// The base backups a plan may start from: this cluster's completed physical backups by the
/// worker, consistent before the target (`$1` a time, else `$2` an LSN), each with what makes it
/// unusable (`problem`: its own failed verification, or its chain's), NULL when nothing does, and
/// which member of its chain has no passed verification (`unverified`), NULL when all passed.
const CANDIDATES: &str = concat!(
    "SELECT r.backup_id, r.backup_file_path, r.checksum, r.compression, r.end_time, \
            r.timeline_id, r.start_lsn::text, r.stop_lsn::text, r.system_identifier, \
            r.pg_version / 10000, r.backup_method, \
            CASE WHEN ",
    standing_verdict!(),
    " = 'failed' THEN 'it failed verification' ELSE ",
    chain_problem!(),
    " END AS problem, r.stop_lsn AS stop_order, ",
    chain_unverified!(),
    " AS unverified \
       FROM backup_management.backup_records r \
      WHERE r.expired_at IS NULL AND r.status = 'completed' AND r.backup_method IN ('pg_basebackup', 'native_physical') \
        AND r.origin = 'worker' AND r.start_lsn IS NOT NULL AND r.checksum IS NOT NULL \
        AND r.system_identifier = (SELECT system_identifier FROM pg_catalog.pg_control_system()) \
        AND CASE WHEN $1::timestamptz IS NOT NULL THEN r.end_time <= $1 \
                 ELSE r.stop_lsn <= $2::text::pg_lsn END"
);

fn plan(target: Target, target_time: Option<TimestampWithTimeZone>) -> Result<PlanRow, PitrError> {
    let segment_size = server::segment_size();
    let target_lsn_text = match &target {
        Target::Lsn(l) => Some(l.to_string()),
        Target::Time(_) | Target::Immediate => None,
    };
    Spi::connect(|c| {
        // Recovery ends on this server's timeline, along its history: the plan checks the WAL
        // along that path from each candidate (see `timelines`).
        let line = Line::read(c)?;
        // The newest base backup of this cluster that was consistent before the target, whose
        // verification did not fail, whose whole chain is usable and from which the
        // timelines lead on; and the newer ones that could not be used, with why (said in a
        // NOTICE, and in the reason when none can).
        let first =
            format!("{CANDIDATES} ORDER BY r.stop_lsn DESC, r.backup_id DESC LIMIT {WINDOW}");
        let args = [target_time.into(), target_lsn_text.clone().into()];
        let candidate = |row| candidate(row, &line, &target, segment_size);
        let mut candidates = Vec::new();
        let mut seen = Vec::new();
        for row in c.select(&first, None, &args)? {
            let c = candidate(row)?;
            seen.push(c.backup_id);
            candidates.push(c);
        }
        // Twenty newer ones unusable: the newest usable one further back (a verified chain
        // first), if any; a window of them, since the timelines may rule some out.
        if candidates.len() == WINDOW && candidates.iter().all(|c| c.problem.is_some()) {
            let further = format!(
                "SELECT x.* FROM ({CANDIDATES}) x \
                  WHERE x.problem IS NULL AND x.backup_id <> ALL($3) \
                  ORDER BY x.unverified IS NULL DESC, x.stop_order DESC, x.backup_id DESC \
                  LIMIT {WINDOW}"
            );
            let args = [
                target_time.into(),
                target_lsn_text.clone().into(),
                seen.clone().into(),
            ];
            for row in c.select(&further, None, &args)? {
                candidates.push(candidate(row)?);
            }
        }
        let Chosen {
            item: (row, route),
            backup_id: chose,
            why: why_this,
        } = match choose_base(candidates) {
            Ok(chosen) => chosen,
            Err(not_used) => {
                let mut reason = "no completed pg_basebackup or native physical backup of this cluster, with its WAL positions recorded, no failed verification and a whole chain, ended before the target".to_owned();
                if !not_used.is_empty() {
                    reason.push_str(&format!(" (not usable: {})", not_used.join("; ")));
                }
                return Ok(unreachable_row(reason));
            }
        };
        // Never an Err: a candidate whose path failed had that as its problem.
        let route = route.unwrap_or_else(|_| TimelinePath::stay(1));
        // The backup's timeline, as `route_of` read it (the catalog is input).
        let base_timeline = route.legs().first().map_or(1, |l| l.timeline);
        let id: i64 = row.get(1)?.unwrap_or_default();
        let path: String = row.get(2)?.unwrap_or_default();
        let sha: String = row.get(3)?.unwrap_or_default();
        let compression: String = row.get(4)?.unwrap_or_default();
        let end: Option<TimestampWithTimeZone> = row.get(5)?;
        let start_text: Option<String> = row.get(7)?;
        let stop_text: Option<String> = row.get(8)?;
        let sysid: i64 = row.get(9)?.unwrap_or_default();
        let major: i32 = row.get(10)?.unwrap_or_default();
        let method: String = row.get(11)?.unwrap_or_default();
        let lsn = |t: &Option<String>| t.as_deref().and_then(Lsn::parse).unwrap_or_default();
        let range = WalRange {
            start: lsn(&start_text),
            stop: lsn(&stop_text),
            timeline: base_timeline,
        };
        let segments = range.segment_numbers(segment_size);
        let (start_seg, stop_seg) = (*segments.start() as i64, *segments.end() as i64);
        let target_seg = match &target {
            Target::Lsn(l) => Some(segment_size.segment_of(l.0) as i64),
            Target::Time(_) | Target::Immediate => None,
        };
        // Each segment under the timeline the path is on there.
        let name_of = |number: i64| {
            wal::Segment {
                timeline: route.timeline_of(number as u64, segment_size),
                number: number as u64,
            }
            .file_name(segment_size)
        };
        let on_path: Vec<i32> = route.legs().iter().map(|l| l.timeline as i32).collect();

        let rows = c.select(
            "SELECT segment_number, file_name, checksum, \
                    coalesce(archived_at >= $4, false), file_path, \
                    CASE WHEN xact_scanned THEN coalesce(last_xact_at > $4, false) END, \
                    timeline_id \
               FROM backup_management.wal_archive \
              WHERE system_identifier = $1 AND timeline_id = ANY($2) AND segment_number >= $3 \
                AND expired_at IS NULL AND lost_at IS NULL \
              ORDER BY segment_number",
            None,
            &[
                sysid.into(),
                on_path.into(),
                start_seg.into(),
                target_time.into(),
            ],
        )?;
        let mut archived = Vec::new();
        // Where each segment is, for the recipe's restore_command.
        let mut dir_of = HashMap::new();
        // Unreadable roots make every segment "outside" them; the reason then says why.
        let (roots, roots_error) = match guc::backup_roots() {
            Ok(roots) => (roots, None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        for r in rows {
            let number: i64 = r.get(1)?.unwrap_or_default();
            let on: i32 = r.get(7)?.unwrap_or_default();
            if on as u32 != route.timeline_of(number as u64, segment_size) {
                continue;
            }
            let file_path: Option<String> = r.get(5)?;
            let name: String = r.get(2)?.unwrap_or_default();
            // A catalog row is input: a recipe reads a segment only from the WAL archive of a
            // backup root, as the archive module lays it out (one that is not has no directory).
            let stored = match file_path
                .as_deref()
                .and_then(|p| locate(p, &name, sysid, &roots))
            {
                Some(f) => {
                    dir_of.insert(name.clone(), f.root.join(&f.dir));
                    f.stored
                }
                None => String::new(),
            };
            archived.push(Segment {
                number,
                name,
                file: stored,
                sha256: r.get(3)?.unwrap_or_default(),
                archived_after_target: r.get(4)?.unwrap_or(false),
                xact_after_target: r.get(6)?,
            });
        }
        let need = wal_needed(start_seg, stop_seg, target_seg, &archived);
        let missing: Vec<String> = need.missing.iter().map(|n| name_of(*n)).collect();
        let first_name = name_of(start_seg);
        let last_name = need.last.map(name_of);
        // Recovery to a time stops in the segment that covers it: a timeline that begins after
        // that segment is never reached (and its history file never read).  Only once the
        // worker has read that segment's transaction times: until then it is the first segment
        // archived after the target, and recovery may have to go on past it, into the next
        // timeline (the old one's copy of the switch segment is only .partial).
        let stops_in = |n: i64| {
            archived
                .iter()
                .any(|s| s.number == n && s.xact_after_target == Some(true))
        };
        let route = match (&target, need.last) {
            (Target::Time(_), Some(last)) if stops_in(last) => {
                route.up_to(Lsn(segment_size.start_of(last as u64)), segment_size)
            }
            _ => route,
        };
        let along = match route.changes_timeline() {
            true => format!(", along timelines {}", route.describe()),
            false => String::new(),
        };
        notice!("backup_mgmt: plan_recovery chose base backup {chose}: {why_this}{along}");
        // What recovery reads from the archive: the segments, and the history file of the
        // timeline it ends on (each checked by the recipe before it writes anything).
        let history = line.history_read(c, &route)?;
        let mut reads = need.needed.clone();
        // The directories restore_command reads, in the order their files come (the archive
        // moves to a new first backup root when the roots change), then every root's archive
        // of this cluster (recovery may read on past the last segment checked); compared as
        // paths.
        let mut dirs: Vec<&Path> = Vec::new();
        let read_from = need
            .needed
            .iter()
            .filter_map(|s| dir_of.get(&s.name).map(PathBuf::as_path));
        let history_dir = history
            .as_ref()
            .ok()
            .and_then(|h| h.as_ref().map(|h| h.dir.as_path()));
        let archives: Vec<PathBuf> = roots
            .iter()
            .map(|r| r.join(wal_archive_dir(sysid as u64)))
            .collect();
        for dir in read_from
            .chain(history_dir)
            .chain(archives.iter().map(PathBuf::as_path))
        {
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        if let Ok(Some(h)) = &history {
            reads.push(h.listed.clone());
        }
        let reason = if !missing.is_empty() {
            format!(
                "{} WAL file(s) needed are missing from the archive, first {}",
                missing.len(),
                missing[0]
            )
        } else if need.no_later_transaction {
            "no transaction committed or aborted after the target in the archived WAL: recovery would end before reaching it (choose an earlier target, or wait until a later transaction is archived)".into()
        } else if need.last.is_none() {
            "the archive has no WAL from after the target yet (wait for the next segment to be archived, or call pg_switch_wal())".into()
        } else if let Some(s) = need.needed.iter().find(|s| !dir_of.contains_key(&s.name)) {
            match &roots_error {
                Some(e) => format!("backup_mgmt.backup_roots cannot be read: {e}"),
                None => format!(
                    "WAL file {} is recorded at a path that is not in the WAL archive of a \
                     backup root",
                    s.name
                ),
            }
        } else if let Err(why) = &history {
            why.to_string()
        } else {
            "reachable".into()
        };
        let reachable = reason == "reachable";
        let recipe_text = match (dirs.is_empty(), reachable) {
            (false, true) => Some(recipe(&RecipeInput {
                system_identifier: sysid,
                backup_id: id,
                base: base_of(c, id, &method, &path, &sha, &compression)?,
                archive_dirs: dirs
                    .iter()
                    .map(|d| d.to_string_lossy().into_owned())
                    .collect(),
                wal: reads,
                target: target.clone(),
                timeline: route.recovery_target(),
                pg_major: major,
            })?),
            _ => None,
        };
        Ok((
            reachable,
            reason,
            Some(id),
            Some(path),
            end,
            Some(base_timeline as i32),
            start_text,
            stop_text,
            Some(first_name),
            last_name,
            need.needed.len() as i32,
            missing,
            recipe_text,
        ))
    })
}

/// Plans a point-in-time recovery of this cluster to `target_time`: the base backup, the WAL,
/// whether it is reachable, and a restore recipe.
#[allow(clippy::type_complexity)]
#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn plan_recovery(
    target_time: Option<TimestampWithTimeZone>,
) -> Result<
    TableIterator<
        'static,
        (
            name!(reachable, bool),
            name!(reason, String),
            name!(base_backup_id, Option<i64>),
            name!(base_backup_path, Option<String>),
            name!(base_backup_end, Option<TimestampWithTimeZone>),
            name!(timeline_id, Option<i32>),
            name!(start_lsn, Option<String>),
            name!(stop_lsn, Option<String>),
            name!(first_wal_file, Option<String>),
            name!(last_wal_file, Option<String>),
            name!(wal_files, i32),
            name!(missing_wal_files, Vec<String>),
            name!(recipe, Option<String>),
        ),
    >,
    ErrorReport,
> {
    let t = target_time.ok_or(PitrError::Null)?;
    let text = Spi::get_one_with_args::<String>(
        "SELECT to_char($1 AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'",
        &[t.into()],
    )
    .map_err(PitrError::from)?
    .unwrap_or_default();
    Ok(TableIterator::once(plan(Target::Time(text), Some(t))?))
}

/// The LSN variant, `plan_recovery_lsn(target_lsn pg_lsn)`.  pgrx has no pg_lsn type; a pg_lsn
/// is an 8-byte by-value datum, so the function is declared by hand and reads it as an int8.
#[allow(clippy::type_complexity)]
#[pg_extern(
    stable,
    parallel_safe,
    security_definer,
    sql = "CREATE FUNCTION backup_mgmt.plan_recovery_lsn(target_lsn pg_lsn) RETURNS TABLE (
        reachable bool, reason text, base_backup_id bigint, base_backup_path text,
        base_backup_end timestamptz, timeline_id integer, start_lsn text, stop_lsn text,
        first_wal_file text, last_wal_file text, wal_files integer, missing_wal_files text[],
        recipe text)
    STABLE SECURITY DEFINER PARALLEL SAFE
    SET search_path TO pg_catalog, pg_temp
    LANGUAGE c AS 'MODULE_PATHNAME', 'plan_recovery_lsn_wrapper';"
)]
fn plan_recovery_lsn(
    target_lsn: Option<i64>,
) -> Result<
    TableIterator<
        'static,
        (
            name!(reachable, bool),
            name!(reason, String),
            name!(base_backup_id, Option<i64>),
            name!(base_backup_path, Option<String>),
            name!(base_backup_end, Option<TimestampWithTimeZone>),
            name!(timeline_id, Option<i32>),
            name!(start_lsn, Option<String>),
            name!(stop_lsn, Option<String>),
            name!(first_wal_file, Option<String>),
            name!(last_wal_file, Option<String>),
            name!(wal_files, i32),
            name!(missing_wal_files, Vec<String>),
            name!(recipe, Option<String>),
        ),
    >,
    ErrorReport,
> {
    let lsn = target_lsn.ok_or(PitrError::Null)? as u64;
    Ok(TableIterator::once(plan(Target::Lsn(Lsn(lsn)), None)?))
}
