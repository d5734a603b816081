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

use backup_mgmt_core::restore::base_choice::{choose_base, Candidate, Chosen, WINDOW};
use backup_mgmt_core::restore::recipe::{
    recipe, wal_needed, Base, RecipeError, RecipeInput, Segment, TarPart, Target,
};
use backup_mgmt_core::wal::{self, Lsn, WalRange};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiError, SpiHeapTupleData};

use crate::catalog::queries::{
    chain_members, chain_problem, chain_unverified, newest_verification_status,
};
use crate::pg::server;

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
            archive_dir: None,
            wal: Vec::new(),
            target: Target::Immediate,
            pg_major: row.get(6)?.unwrap_or_default(),
        })?)
    })?)
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
    newest_verification_status!(),
    " = 'failed' THEN 'it failed its newest verification' ELSE ",
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
        // The newest base backup of this cluster that was consistent before the target, whose
        // newest verification did not fail, and whose whole chain is usable; and the newer ones
        // that could not be used, with why (said in a NOTICE, and in the reason when none can).
        let first =
            format!("{CANDIDATES} ORDER BY r.stop_lsn DESC, r.backup_id DESC LIMIT {WINDOW}");
        let args = [target_time.into(), target_lsn_text.clone().into()];
        fn candidate(
            row: SpiHeapTupleData<'_>,
        ) -> Result<Candidate<SpiHeapTupleData<'_>>, PitrError> {
            Ok(Candidate {
                backup_id: row.get::<i64>(1)?.unwrap_or_default(),
                problem: row.get::<String>(12)?,
                unverified: row.get::<String>(14)?,
                item: row,
            })
        }
        let mut candidates = Vec::new();
        for row in c.select(&first, None, &args)? {
            candidates.push(candidate(row)?);
        }
        // Twenty newer ones unusable: the newest usable one further back (a verified chain
        // first), if any.
        if candidates.len() == WINDOW && candidates.iter().all(|c| c.problem.is_some()) {
            let further = format!(
                "SELECT x.* FROM ({CANDIDATES}) x WHERE x.problem IS NULL \
                  ORDER BY x.unverified IS NULL DESC, x.stop_order DESC, x.backup_id DESC LIMIT 1"
            );
            if let Some(row) = c.select(&further, None, &args)?.next() {
                candidates.push(candidate(row)?);
            }
        }
        let Chosen {
            item: row,
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
        notice!("backup_mgmt: plan_recovery chose base backup {chose}: {why_this}");
        let id: i64 = row.get(1)?.unwrap_or_default();
        let path: String = row.get(2)?.unwrap_or_default();
        let sha: String = row.get(3)?.unwrap_or_default();
        let compression: String = row.get(4)?.unwrap_or_default();
        let end: Option<TimestampWithTimeZone> = row.get(5)?;
        let timeline: i32 = row.get(6)?.unwrap_or(1);
        let start_text: Option<String> = row.get(7)?;
        let stop_text: Option<String> = row.get(8)?;
        let sysid: i64 = row.get(9)?.unwrap_or_default();
        let major: i32 = row.get(10)?.unwrap_or_default();
        let method: String = row.get(11)?.unwrap_or_default();
        let lsn = |t: &Option<String>| t.as_deref().and_then(Lsn::parse).unwrap_or_default();
        let range = WalRange {
            start: lsn(&start_text),
            stop: lsn(&stop_text),
            timeline: timeline as u32,
        };
        let segments = range.segment_numbers(segment_size);
        let (start_seg, stop_seg) = (*segments.start() as i64, *segments.end() as i64);
        let target_seg = match &target {
            Target::Lsn(l) => Some(segment_size.segment_of(l.0) as i64),
            Target::Time(_) | Target::Immediate => None,
        };
        let name_of = |number: i64| {
            wal::Segment {
                timeline: timeline as u32,
                number: number as u64,
            }
            .file_name(segment_size)
        };

        let rows = c.select(
            "SELECT segment_number, file_name, checksum, \
                    coalesce(archived_at >= $4, false), file_path, \
                    regexp_replace(file_path, '^.*/', ''), \
                    CASE WHEN xact_scanned THEN coalesce(last_xact_at > $4, false) END \
               FROM backup_management.wal_archive \
              WHERE system_identifier = $1 AND timeline_id = $2 AND segment_number >= $3 \
                AND expired_at IS NULL AND lost_at IS NULL \
              ORDER BY segment_number",
            None,
            &[
                sysid.into(),
                timeline.into(),
                start_seg.into(),
                target_time.into(),
            ],
        )?;
        let mut archived = Vec::new();
        let mut archive_dir: Option<String> = None;
        for r in rows {
            let file_path: Option<String> = r.get(5)?;
            if archive_dir.is_none() {
                archive_dir = file_path
                    .as_deref()
                    .and_then(|p| std::path::Path::new(p).parent())
                    .map(|d| d.to_string_lossy().into_owned());
            }
            archived.push(Segment {
                number: r.get(1)?.unwrap_or_default(),
                name: r.get(2)?.unwrap_or_default(),
                file: r.get(6)?.unwrap_or_default(),
                sha256: r.get(3)?.unwrap_or_default(),
                archived_after_target: r.get(4)?.unwrap_or(false),
                xact_after_target: r.get(7)?,
            });
        }
        let need = wal_needed(start_seg, stop_seg, target_seg, &archived);
        let missing: Vec<String> = need.missing.iter().map(|n| name_of(*n)).collect();
        let first_name = name_of(start_seg);
        let last_name = need.last.map(name_of);
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
        } else {
            "reachable".into()
        };
        let reachable = reason == "reachable";
        let recipe_text = match (&archive_dir, reachable) {
            (Some(dir), true) => Some(recipe(&RecipeInput {
                system_identifier: sysid,
                backup_id: id,
                base: base_of(c, id, &method, &path, &sha, &compression)?,
                archive_dir: Some(dir.clone()),
                wal: need.needed.clone(),
                target: target.clone(),
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
            Some(timeline),
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

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[allow(unused_imports)]
    use crate::testing::*;

    /// Recovery planning: a NULL target is refused; with no base backup (or one that ended
    /// after the target) the plan says so instead of pretending.
    #[pg_test]
    fn recovery_plans_explain_what_is_missing() {
        assert_fails(
            "SELECT * FROM backup_mgmt.plan_recovery(NULL)",
            "22004",
            "NULL",
        );
        let (reachable, reason) = Spi::get_two::<bool, String>(
            "SELECT reachable, reason FROM backup_mgmt.plan_recovery(now())",
        )
        .unwrap();
        assert_eq!(reachable, Some(false));
        assert!(reason.unwrap().contains("no completed pg_basebackup"));
        // A base backup without its WAL positions cannot be a starting point; with them, and
        // no archived WAL, the plan lists what is missing.
        let id = Spi::get_one::<i64>(
            "SELECT backup_mgmt.record_backup_start('postgres', 'full', 'pg_basebackup', '/tmp/backup_mgmt_pgtest_root/base.tar')",
        )
        .unwrap()
        .unwrap();
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_complete($1, 10, repeat('a', 64))",
            &[id.into()],
        )
        .unwrap();
        let before = Spi::get_one::<bool>(
            "SELECT reachable FROM backup_mgmt.plan_recovery_lsn('0/5000000')",
        )
        .unwrap();
        assert_eq!(before, Some(false));
        Spi::run_with_args(
            "UPDATE backup_management.backup_records \
                SET start_lsn = '0/3000028', stop_lsn = '0/3000100', timeline_id = 1, origin = 'worker', \
                    system_identifier = (SELECT system_identifier FROM pg_control_system()) \
              WHERE backup_id = $1",
            &[id.into()],
        )
        .unwrap();
        let (reachable, missing) = Spi::get_two::<bool, Vec<String>>(
            "SELECT reachable, missing_wal_files FROM backup_mgmt.plan_recovery_lsn('0/5000000')",
        )
        .unwrap();
        assert_eq!(reachable, Some(false));
        assert_eq!(
            missing.unwrap(),
            vec![
                "000000010000000000000003",
                "000000010000000000000004",
                "000000010000000000000005"
            ]
        );
        let recipe =
            Spi::get_one::<String>("SELECT recipe FROM backup_mgmt.plan_recovery_lsn('0/5000000')")
                .unwrap();
        assert_eq!(recipe, None, "no recipe for an unreachable target");
    }

    /// A native chain in the catalog: the parent cannot be deleted or expired while a child is
    /// retained; children first is fine.  restore_recipe refuses what it cannot restore.
    #[pg_test]
    fn native_chains_are_units_and_recipes_refuse_other_backups() {
        let record = |kind: &str, path: &str| -> i64 {
            let id = Spi::get_one_with_args::<i64>(
                "SELECT backup_mgmt.record_backup_start('postgres', $1, 'native_physical', $2)",
                &[kind.into(), path.into()],
            )
            .unwrap()
            .unwrap();
            Spi::run_with_args(
                "SELECT backup_mgmt.record_backup_complete($1, 10, repeat('b', 64))",
                &[id.into()],
            )
            .unwrap();
            id
        };
        let full = record("full", "/tmp/backup_mgmt_pgtest_root/f.native");
        let incr = record("incremental", "/tmp/backup_mgmt_pgtest_root/i.native");
        Spi::run_with_args(
            "UPDATE backup_management.backup_records SET parent_backup_id = $2 WHERE backup_id = $1",
            &[incr.into(), full.into()],
        )
        .unwrap();
        assert_fails(
            &format!("DELETE FROM backup_management.backup_records WHERE backup_id = {full}"),
            "2BP01",
            &format!("backup {full} is the parent of backup {incr}"),
        );
        assert_fails(
            &format!("UPDATE backup_management.backup_records SET status = 'expired' WHERE backup_id = {full}"),
            "2BP01",
            &incr.to_string(),
        );
        // One statement expiring the whole chain is fine, whichever row it reaches first.
        Spi::run_with_args(
            "UPDATE backup_management.backup_records SET status = 'expired' WHERE backup_id = ANY($1)",
            &[vec![full, incr].into()],
        )
        .unwrap();

        assert_fails("SELECT backup_mgmt.restore_recipe(NULL)", "22004", "NULL");
        assert_fails(
            "SELECT backup_mgmt.restore_recipe(424242)",
            "42704",
            "424242",
        );
        let dump = start();
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_complete($1, 10, repeat('c', 64))",
            &[dump.into()],
        )
        .unwrap();
        assert_fails(
            &format!("SELECT backup_mgmt.restore_recipe({dump})"),
            "42809",
            "pg_dump",
        );
    }

    /// Records a completed native backup by the worker (`kind` full or incremental) whose WAL
    /// runs from `{lsn}28` to `{lsn}FF`; returns its id.
    fn native(kind: &str, name: &str, lsn: &str, parent: Option<i64>) -> i64 {
        Spi::run(&format!(
            "INSERT INTO backup_management.backup_records
                 (database_name, backup_type, backup_method, backup_file_path, status, start_time, end_time,
                  duration, checksum, origin, system_identifier, timeline_id, start_lsn, stop_lsn, parent_backup_id)
             VALUES ('postgres', '{kind}', 'native_physical', '/tmp/backup_mgmt_pgtest_root/{name}', 'completed',
                     now(), now(), '0', repeat('d', 64), 'worker',
                     (SELECT system_identifier FROM pg_control_system()), 1, '{lsn}28', '{lsn}FF', {})",
            parent.map_or("NULL".to_owned(), |p| p.to_string())
        ))
        .unwrap();
        Spi::get_one::<i64>("SELECT max(backup_id) FROM backup_management.backup_records")
            .unwrap()
            .unwrap()
    }

    /// Records a checksum verification of backup `id` with `status`.
    fn verify(id: i64, status: &str) {
        Spi::run(&format!(
            "INSERT INTO backup_management.backup_verifications (backup_id, verification_type, verification_status)
             VALUES ({id}, 'checksum', '{status}')"
        ))
        .unwrap();
    }

    /// A chain is only as good as its ancestors (issue 15): an incremental whose full failed
    /// verification is not a base, even when it was never verified itself; the plan takes an
    /// older whole chain and says what it could not use.
    #[pg_test]
    fn plans_skip_a_chain_whose_ancestor_failed_verification() {
        let old = native("full", "old", "0/30000", None);
        verify(old, "passed");
        let full = native("full", "full", "0/60000", None);
        verify(full, "failed");
        let incr = native("incremental", "incr", "0/90000", Some(full));
        let base = Spi::get_one::<i64>(
            "SELECT base_backup_id FROM backup_mgmt.plan_recovery_lsn('0/A000000')",
        )
        .unwrap();
        assert_eq!(base, Some(old));
        // Still found behind more than twenty unusable ones.
        let mut parent = incr;
        for i in 0..24 {
            parent = native(
                "incremental",
                &format!("incr{i}"),
                &format!("0/9{:02X}00", i + 1),
                Some(parent),
            );
        }
        let base = Spi::get_one::<i64>(
            "SELECT base_backup_id FROM backup_mgmt.plan_recovery_lsn('0/A000000')",
        )
        .unwrap();
        assert_eq!(base, Some(old));
        // With no whole chain left, the reason names each backup it could not use and why.
        verify(old, "failed");
        let (reachable, reason) = Spi::get_two::<bool, String>(
            "SELECT reachable, reason FROM backup_mgmt.plan_recovery_lsn('0/A000000')",
        )
        .unwrap();
        assert_eq!(reachable, Some(false));
        let reason = reason.unwrap_or_default();
        assert!(
            reason.contains(&format!(
                "backup {parent}: its ancestor {full} failed its newest verification"
            )),
            "{reason}"
        );
    }

    /// A chain verified as a whole is preferred to a newer one that is not (issue 15): the newer
    /// base whose full was never verified is passed over, with a NOTICE saying why; once its
    /// chain passes it is chosen; with no verified chain the newest usable one is still a plan.
    #[pg_test]
    fn plans_prefer_a_chain_verified_as_a_whole() {
        let base = || {
            Spi::get_one::<i64>(
                "SELECT base_backup_id FROM backup_mgmt.plan_recovery_lsn('0/A000000')",
            )
            .unwrap()
        };
        // Nothing verified: the newest usable chain is still the plan.
        let old = native("full", "vold", "0/30000", None);
        let full = native("full", "vfull", "0/60000", None);
        let incr = native("incremental", "vincr", "0/90000", Some(full));
        assert_eq!(base(), Some(incr));
        // The old full passes; the newer chain's incremental passes but its full was never
        // verified: the old, verified one is chosen.
        verify(old, "passed");
        verify(incr, "passed");
        assert_eq!(base(), Some(old));
        // The full passes too: the newer chain is verified as a whole and wins.
        verify(full, "passed");
        assert_eq!(base(), Some(incr));
        // A newer verification that fails takes the chain out altogether.
        verify(full, "failed");
        assert_eq!(base(), Some(old));
    }
}
