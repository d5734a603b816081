//! Point-in-time recovery planning: `plan_recovery(target_time)` and
//! `plan_recovery_lsn(target_lsn)`.
//!
//! A plan names the base backup to start from (the newest completed, not failed-verification
//! pg_basebackup of this cluster that ended before the target), the archived WAL it needs (from
//! the backup's start segment to the segment that covers the target), what is missing, and a
//! restore recipe: a bash script that uses only PostgreSQL's own programs and coreutils, tar and
//! zstd, so that it runs on a machine where backup_mgmt is not installed and the catalog is gone.
//!
//! The recipe checks every sha256 before it writes anything, extracts the base backup into an
//! empty directory, and appends `restore_command`, the target and `recovery_target_action =
//! 'promote'` to `postgresql.auto.conf`, with `recovery.signal`.  The restored copy has the same
//! catalog and backup roots as the original, so the recipe also turns `archive_mode` and
//! `backup_mgmt.enabled` off: the copy must not archive into the original's archive or run its
//! jobs until the DBA decides it takes over.

use std::fmt::Write as _;

use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiError};
use pgrx::{pg_sys::panic::ErrorReport, PgSqlErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum PitrError {
    #[error("the recovery target must not be NULL")]
    Null,
    #[error("{what} \"{path}\" contains a line break; a recipe cannot name it safely")]
    UnsafePath { what: &'static str, path: String },
    #[error("backup {0} does not exist or has not completed")]
    UnknownBackup(i64),
    #[error("backup {id} is a {method} backup; restore_recipe() restores native_physical backups")]
    NotNative { id: i64, method: String },
    #[error("catalog access failed: {0}")]
    Spi(#[from] SpiError),
}

impl From<PitrError> for ErrorReport {
    fn from(e: PitrError) -> Self {
        use PgSqlErrorCode::*;
        let message = e.to_string();
        let (code, hint) = match e {
            PitrError::Null => (
                ERRCODE_NULL_VALUE_NOT_ALLOWED,
                "Pass a time, e.g. plan_recovery(now() - interval '10 minutes').",
            ),
            PitrError::UnsafePath { .. } => (
                ERRCODE_INVALID_PARAMETER_VALUE,
                "Rename the backup root or the file so that it has no line break.",
            ),
            PitrError::UnknownBackup(_) => (
                ERRCODE_UNDEFINED_OBJECT,
                "List completed backups with SELECT backup_id FROM backup_management.backup_records WHERE status = 'completed'.",
            ),
            PitrError::NotNative { .. } => (
                ERRCODE_WRONG_OBJECT_TYPE,
                "For pg_basebackup backups use plan_recovery(target_time); for logical dumps use pg_restore.",
            ),
            PitrError::Spi(_) => (
                ERRCODE_INTERNAL_ERROR,
                "This is a bug in backup_mgmt; please report it.",
            ),
        };
        ErrorReport::new(code, message, "backup_mgmt").set_hint(hint)
    }
}

/// What to recover to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A time, as `YYYY-MM-DD HH:MI:SS.US+00` (UTC).
    Time(String),
    /// A WAL location.
    Lsn(u64),
    /// The end of the base backup itself (`recovery_target = 'immediate'`), from the WAL inside
    /// a native backup.
    Immediate,
}

/// What the recipe restores the data directory from.
#[derive(Debug, Clone)]
pub enum Base {
    /// A pg_basebackup tar file, zstd-compressed or not.
    Tar {
        path: String,
        sha256: String,
        compressed: bool,
    },
    /// A native physical backup: its directory, its chain manifest's sha256, and the directory
    /// of every backup of its chain (itself included) by id.
    Native {
        dir: String,
        manifest_sha256: String,
        holders: Vec<(i64, String)>,
    },
}

/// An archived WAL segment on the base backup's timeline, at or after its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub number: i64,
    pub name: String,
    /// The name it is stored under in the archive (`name`, or `name.zst`).
    pub file: String,
    pub sha256: String,
    /// For a time target: archived at or after it (so it was finished at or after it).
    pub archived_after_target: bool,
    /// For a time target, once the worker has read the segment's transaction times: whether a
    /// transaction ended in it after the target (where recovery stops).
    pub xact_after_target: Option<bool>,
}

/// Which archived WAL a recovery needs, and what of it is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalNeed {
    /// The segments needed, first to last, that are in the archive.
    pub needed: Vec<Segment>,
    /// Segment numbers in the needed range that are not.
    pub missing: Vec<i64>,
    /// The last segment needed, when the archive reaches the target at all.
    pub last: Option<i64>,
    /// For a time target with no last segment: every archived segment from the backup's end on
    /// has been read and none has a transaction after the target.
    pub no_later_transaction: bool,
}

/// The segments from `start` (the backup's first) to the one that covers the target: for a
/// LSN, the segment holding it (never before the backup's `stop`); for a time, the first segment
/// archived at or after it.  WAL written at the target time lies in a segment finished after
/// it, so in that segment or a later one; replay stops at the first commit after the target, and
/// `restore_command` serves whatever further segments the archive has.
pub fn wal_needed(
    start: i64,
    stop: i64,
    target_segment: Option<i64>,
    archived: &[Segment],
) -> WalNeed {
    // A segment with a transaction after the target holds recovery's stopping point; before
    // the worker has read a segment, one archived after the target may hold it.
    let covers = |s: &Segment| s.xact_after_target.unwrap_or(s.archived_after_target);
    let last = match target_segment {
        Some(t) => Some(t.max(stop)),
        None => archived
            .iter()
            .filter(|s| s.number >= stop && covers(s))
            .map(|s| s.number)
            .min(),
    };
    let later: Vec<&Segment> = archived.iter().filter(|s| s.number >= stop).collect();
    let no_later_transaction = target_segment.is_none()
        && last.is_none()
        && !later.is_empty()
        && later.iter().all(|s| s.xact_after_target == Some(false));
    let upto = last.unwrap_or_else(|| {
        archived
            .iter()
            .map(|s| s.number)
            .max()
            .unwrap_or(stop)
            .max(stop)
    });
    let needed: Vec<Segment> = archived
        .iter()
        .filter(|s| s.number >= start && s.number <= upto)
        .cloned()
        .collect();
    let missing = (start..=upto)
        .filter(|n| !needed.iter().any(|s| s.number == *n))
        .collect();
    WalNeed {
        needed,
        missing,
        last,
        no_later_transaction,
    }
}

/// The file name of segment `number` on `timeline`, `segment_size` bytes a segment.
pub fn segment_file_name(timeline: u32, number: i64, segment_size: u64) -> String {
    let per_log = (0x1_0000_0000u64 / segment_size) as i64;
    format!(
        "{:08X}{:08X}{:08X}",
        timeline,
        number / per_log,
        number % per_log
    )
}

/// Everything a recipe names.
#[derive(Debug, Clone)]
pub struct RecipeInput {
    pub system_identifier: i64,
    pub backup_id: i64,
    pub base: Base,
    /// The WAL archive (None: only the WAL inside the backup, for an `Immediate` target).
    pub archive_dir: Option<String>,
    pub wal: Vec<Segment>,
    pub target: Target,
    pub pg_major: i32,
}

/// `s` as one shell word.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `s` as a postgresql.conf string value.
fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn single_line<'a>(what: &'static str, s: &'a str) -> Result<&'a str, PitrError> {
    if s.contains(['\n', '\r']) {
        return Err(PitrError::UnsafePath {
            what,
            path: s.to_owned(),
        });
    }
    Ok(s)
}

/// The restore recipe: a bash script taking the new data directory as its only argument.
pub fn recipe(r: &RecipeInput) -> Result<String, PitrError> {
    let archive = r
        .archive_dir
        .as_deref()
        .map(|a| single_line("WAL archive directory", a))
        .transpose()?;
    let (target_line, target_text) = match &r.target {
        Target::Time(t) => (
            format!("recovery_target_time = {}", conf_quote(t)),
            t.clone(),
        ),
        Target::Lsn(l) => {
            let l = crate::executor::format_lsn(*l);
            (format!("recovery_target_lsn = {}", conf_quote(&l)), l)
        }
        Target::Immediate => (
            "recovery_target = 'immediate'".to_owned(),
            "the end of the backup".to_owned(),
        ),
    };
    // PostgreSQL replaces %f (a WAL file name) and %p (a path under the data directory, both
    // plain) before the shell sees the command.  A file may be stored zstd-compressed.  Without
    // an archive the command always fails, and recovery reads the WAL restored into pg_wal.
    let restore_command = match archive {
        Some(a) => format!(
            "f={}; if [ -f \"$f.zst\" ]; then zstd -dcq -- \"$f.zst\" > \"%p\"; else cp -- \"$f\" \"%p\"; fi",
            sh_quote(&format!("{a}/%f"))
        ),
        None => "false".to_owned(),
    };
    let (base_shown, base_kind) = match &r.base {
        Base::Tar { path, .. } => (single_line("base backup path", path)?, "pg_basebackup tar"),
        Base::Native { dir, .. } => (
            single_line("base backup directory", dir)?,
            "native physical backup",
        ),
    };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"#!/bin/bash
# backup_mgmt restore recipe, written at {now}.
#   cluster (system identifier): {sysid}
#   base backup:                 {id} ({base_kind}, {base})
#   recovery target:             {target_text}
#   WAL files checked:           {nwal}, from {archive}
# Needs only bash, coreutils, tar, zstd and PostgreSQL {major}'s server programs; backup_mgmt
# need not be installed.  (If it is not, remove it from shared_preload_libraries in the restored
# postgresql.conf before starting.)
#
# Usage, as the operating-system user that will run the restored server:
#   bash recipe.sh NEW_DATA_DIRECTORY [TABLESPACE_DIRECTORY]
# then start it (pg_ctl -D NEW_DATA_DIRECTORY start, on a free port): it replays the WAL up to
# the target and promotes.
set -euo pipefail
target=${{1:?usage: bash recipe.sh NEW_DATA_DIRECTORY}}
base={base_q}

if [ -e "$target" ] && [ -n "$(ls -A -- "$target")" ]; then
    echo "recipe: $target is not empty; refusing to restore over it" >&2
    exit 1
fi
"#,
        now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
        sysid = r.system_identifier,
        id = r.backup_id,
        base = base_shown,
        nwal = r.wal.len(),
        archive = archive.unwrap_or("(none: the WAL inside the backup)"),
        major = r.pg_major,
        base_q = sh_quote(base_shown),
    );
    if let Some(a) = archive {
        let _ = write!(
            s,
            "archive={}\necho \"recipe: checking the sha256 of {} archived WAL files\"\n\
             (cd -- \"$archive\" && sha256sum --check --quiet -) <<'BACKUP_MGMT_WAL_LIST'\n",
            sh_quote(a),
            r.wal.len()
        );
        for w in &r.wal {
            let _ = writeln!(s, "{}  {}", w.sha256, w.file);
        }
        s.push_str("BACKUP_MGMT_WAL_LIST\n");
    }
    match &r.base {
        Base::Tar {
            sha256, compressed, ..
        } => {
            let _ = writeln!(
                s,
                "echo \"recipe: checking the base backup's sha256\"\n\
                 printf '%s  %s\\n' {} \"$base\" | sha256sum --check --quiet -",
                sh_quote(sha256)
            );
            s.push_str("\necho \"recipe: extracting the base backup into $target\"\n");
            s.push_str("mkdir -p -- \"$target\"\nchmod 0700 \"$target\"\n");
            if *compressed {
                s.push_str("zstd -dcq -- \"$base\" | tar -xf - -C \"$target\"\n");
            } else {
                s.push_str("tar -xf \"$base\" -C \"$target\"\n");
            }
        }
        Base::Native {
            manifest_sha256,
            holders,
            ..
        } => {
            let _ = write!(
                s,
                r#"manifest="$base/{files}"
echo "recipe: checking the chain manifest's sha256"
printf '%s  %s\n' {sha} "$manifest" | sha256sum --check --quiet -
declare -A holder
"#,
                files = crate::native::FILES_MANIFEST,
                sha = sh_quote(manifest_sha256),
            );
            for (id, dir) in holders {
                let dir = single_line("backup directory", dir)?;
                let _ = writeln!(s, "holder[{id}]={}", sh_quote(dir));
            }
            s.push_str(
                r#"# Tablespaces go to TABLESPACE_DIRECTORY/<oid> (default: NEW_DATA_DIRECTORY.tablespaces),
# linked from pg_tblspc/<oid>; never to their original locations, which may be in use.
tablespaces=$(realpath -m -- "${2:-$target.tablespaces}")
echo "recipe: materialising the data directory in $target from the chain"
mkdir -p -- "$target"
chmod 0700 "$target"
sums=$(mktemp)
trap 'rm -f -- "$sums"' EXIT
while IFS=$'\t' read -r kind path size mtime sum id stored; do
    case "$kind" in
        d)
            case "$path" in
                pg_tblspc/*/*) mkdir -p -- "$target/$path" ;;
                pg_tblspc/*)
                    place="$tablespaces/${path#pg_tblspc/}"
                    if [ -e "$place" ] && [ -n "$(ls -A -- "$place")" ]; then
                        echo "recipe: $place is not empty; refusing to restore a tablespace over it" >&2
                        exit 1
                    fi
                    mkdir -p -- "$place"
                    chmod 0700 "$place"
                    ln -s -- "$place" "$target/$path" ;;
                *) mkdir -p -- "$target/$path" ;;
            esac ;;
        f)
            src="${holder[$id]:?backup $id of the chain is not named in this recipe}/$stored"
            case "$stored" in
                *.zst) zstd -dcq -- "$src" > "$target/$path" ;;
                *) cp -- "$src" "$target/$path" ;;
            esac
            printf '%s  %s\n' "$sum" "$path" >> "$sums" ;;
        *) echo "recipe: unexpected manifest line" >&2; exit 1 ;;
    esac
done < <(tail -n +2 -- "$manifest")
echo "recipe: checking the sha256 of every restored file"
(cd -- "$target" && sha256sum --check --quiet -- "$sums")
if [ -f "$base/backup_manifest.zst" ]; then
    zstd -dcq -- "$base/backup_manifest.zst" > "$target/backup_manifest"
else
    cp -- "$base/backup_manifest" "$target/backup_manifest"
fi
"#,
            );
        }
    }
    let _ = write!(
        s,
        r#"
cat >> "$target/postgresql.auto.conf" <<'BACKUP_MGMT_CONF'

# Added by the backup_mgmt restore recipe.
restore_command = {restore}
{target_line}
recovery_target_action = 'promote'
# This copy shares the original's catalog and backup roots: it must not archive into the
# original's WAL archive nor run its scheduled backups until you decide it takes over.
archive_mode = 'off'
backup_mgmt.enabled = 'off'
BACKUP_MGMT_CONF
touch "$target/recovery.signal"
echo "recipe: ready; start the server on $target to recover to {target_text}"
"#,
        restore = conf_quote(&restore_command),
    );
    Ok(s)
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
    if method != "native_physical" {
        return Ok(Base::Tar {
            path: path.to_owned(),
            sha256: sha.to_owned(),
            compressed: compression == "zstd" || path.ends_with(".zst"),
        });
    }
    let holders = crate::native_session::chain_members(c, id)?;
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
                    pg_version / 10000 \
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
        let path: String = row.get(2)?.unwrap_or_default();
        let sha: String = row.get(3)?.unwrap_or_default();
        let compression: String = row.get(4)?.unwrap_or_default();
        let base = base_of(c, id, &method, &path, &sha, &compression)?;
        recipe(&RecipeInput {
            system_identifier: row.get(5)?.unwrap_or_default(),
            backup_id: id,
            base,
            archive_dir: None,
            wal: Vec::new(),
            target: Target::Immediate,
            pg_major: row.get(6)?.unwrap_or_default(),
        })
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

fn plan(target: Target, target_time: Option<TimestampWithTimeZone>) -> Result<PlanRow, PitrError> {
    // SAFETY: a plain global, set once at startup.
    let segment_size = unsafe { pg_sys::wal_segment_size } as u64;
    let target_lsn_text = match &target {
        Target::Lsn(l) => Some(crate::executor::format_lsn(*l)),
        Target::Time(_) | Target::Immediate => None,
    };
    Spi::connect(|c| {
        // The newest base backup of this cluster that was consistent before the target and
        // whose newest verification did not fail.
        let base = c.select(
            "SELECT r.backup_id, r.backup_file_path, r.checksum, r.compression, r.end_time, \
                    r.timeline_id, r.start_lsn::text, r.stop_lsn::text, r.system_identifier, \
                    r.pg_version / 10000, r.backup_method \
               FROM backup_management.backup_records r \
              WHERE r.status = 'completed' AND r.backup_method IN ('pg_basebackup', 'native_physical') \
                AND r.start_lsn IS NOT NULL AND r.checksum IS NOT NULL \
                AND r.system_identifier = (SELECT system_identifier FROM pg_catalog.pg_control_system()) \
                AND CASE WHEN $1::timestamptz IS NOT NULL THEN r.end_time <= $1 \
                         ELSE r.stop_lsn <= $2::text::pg_lsn END \
                AND coalesce((SELECT v.verification_status FROM backup_management.backup_verifications v \
                               WHERE v.backup_id = r.backup_id \
                               ORDER BY v.verified_at DESC, v.verification_id DESC LIMIT 1), 'passed') = 'passed' \
              ORDER BY r.stop_lsn DESC, r.backup_id DESC LIMIT 1",
            None,
            &[target_time.into(), target_lsn_text.clone().into()],
        )?;
        if base.is_empty() {
            return Ok(unreachable_row(
                "no completed pg_basebackup or native physical backup of this cluster, with its WAL positions recorded and no failed verification, ended before the target".into(),
            ));
        }
        let row = base.first();
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
        let lsn = |t: &Option<String>| {
            t.as_deref()
                .and_then(crate::executor::parse_lsn)
                .unwrap_or_default()
        };
        let range = crate::executor::WalRange {
            start_lsn: lsn(&start_text),
            stop_lsn: lsn(&stop_text),
            timeline: timeline as u32,
        };
        let segments = range.segment_numbers(segment_size);
        let (start_seg, stop_seg) = (*segments.start() as i64, *segments.end() as i64);
        let target_seg = match &target {
            Target::Lsn(l) => Some((*l / segment_size) as i64),
            Target::Time(_) | Target::Immediate => None,
        };

        let rows = c.select(
            "SELECT segment_number, file_name, checksum, \
                    coalesce(archived_at >= $4, false), file_path, \
                    regexp_replace(file_path, '^.*/', ''), \
                    CASE WHEN xact_scanned THEN coalesce(last_xact_at > $4, false) END \
               FROM backup_management.wal_archive \
              WHERE system_identifier = $1 AND timeline_id = $2 AND segment_number >= $3 \
                AND expired_at IS NULL \
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
        let missing: Vec<String> = need
            .missing
            .iter()
            .map(|n| segment_file_name(timeline as u32, *n, segment_size))
            .collect();
        let first_name = segment_file_name(timeline as u32, start_seg, segment_size);
        let last_name = need
            .last
            .map(|n| segment_file_name(timeline as u32, n, segment_size));
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
    Ok(TableIterator::once(plan(Target::Lsn(lsn), None)?))
}

#[cfg(test)]
mod unit {
    use super::*;

    fn seg(number: i64, after: bool) -> Segment {
        Segment {
            number,
            name: segment_file_name(1, number, 16 << 20),
            file: segment_file_name(1, number, 16 << 20),
            sha256: format!("{number:064x}"),
            archived_after_target: after,
            xact_after_target: None,
        }
    }

    #[test]
    fn wal_needed_runs_from_the_backup_to_the_target() {
        let archived: Vec<Segment> = (3..=9).map(|n| seg(n, n >= 7)).collect();
        // A time target: up to the first segment archived after it.
        let need = wal_needed(3, 4, None, &archived);
        assert_eq!(need.last, Some(7));
        assert_eq!(need.needed.len(), 5);
        assert!(need.missing.is_empty());
        // An LSN target inside segment 5; never before the backup's end.
        assert_eq!(wal_needed(3, 4, Some(5), &archived).last, Some(5));
        assert_eq!(wal_needed(3, 6, Some(5), &archived).last, Some(6));
        // A hole is reported, by number.
        let holed: Vec<Segment> = archived.iter().filter(|s| s.number != 5).cloned().collect();
        assert_eq!(wal_needed(3, 4, None, &holed).missing, vec![5]);
        // Nothing archived after the target yet: no last segment.
        let early: Vec<Segment> = (3..=6).map(|n| seg(n, false)).collect();
        assert_eq!(wal_needed(3, 4, None, &early).last, None);
        // A target beyond the archive: the segments after it are missing.
        assert_eq!(wal_needed(3, 4, Some(11), &archived).missing, vec![10, 11]);
        // Once transaction times are known they decide: segment 8 holds the first transaction
        // after the target, although 7 was archived after it.
        let mut scanned = archived.clone();
        for s in scanned.iter_mut() {
            s.xact_after_target = Some(s.number >= 8);
        }
        assert_eq!(wal_needed(3, 4, None, &scanned).last, Some(8));
        // Archived after the target, but no transaction after it anywhere: not reachable, and
        // said so.
        for s in scanned.iter_mut() {
            s.xact_after_target = Some(false);
        }
        let none = wal_needed(3, 4, None, &scanned);
        assert_eq!(none.last, None);
        assert!(none.no_later_transaction);
        assert!(!wal_needed(3, 4, None, &early).no_later_transaction);
    }

    #[test]
    fn segment_names_follow_postgres() {
        assert_eq!(
            segment_file_name(1, 3, 16 << 20),
            "000000010000000000000003"
        );
        assert_eq!(
            segment_file_name(2, 256 + 10, 16 << 20),
            "00000002000000010000000A"
        );
        assert_eq!(
            segment_file_name(1, 64 + 1, 64 << 20),
            "000000010000000100000001"
        );
    }

    fn sha256_of(path: &std::path::Path) -> String {
        use sha2::Digest;
        crate::executor::hex(&sha2::Sha256::digest(std::fs::read(path).unwrap()))
    }

    /// Runs a recipe for real (bash, sha256sum, tar): checks, extracts, configures; a damaged WAL
    /// file stops it before anything is written.
    #[test]
    fn recipe_restores_and_refuses_damage() {
        let tmp = tempfile::tempdir().unwrap();
        // Awkward names: a space and a quote in the backup root.
        let root = tmp.path().join("it's a root");
        let archive = root.join("wal").join("42");
        std::fs::create_dir_all(&archive).unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("PG_VERSION"), "15\n").unwrap();
        std::fs::write(src.join("postgresql.auto.conf"), "# original\n").unwrap();
        let base = root.join("base.tar");
        let ok = std::process::Command::new("tar")
            .arg("-cf")
            .arg(&base)
            .arg("-C")
            .arg(&src)
            .args(["PG_VERSION", "postgresql.auto.conf"])
            .status()
            .unwrap();
        assert!(ok.success());
        let mut wal = Vec::new();
        for n in 3..=4 {
            let name = segment_file_name(1, n, 16 << 20);
            // Segment 3 is stored compressed (backup_mgmt.archive_compression = zstd).
            let (file, bytes) = if n == 3 {
                let z = zstd::encode_all(format!("segment {n}").as_bytes(), 3).unwrap();
                (format!("{name}.zst"), z)
            } else {
                (name.clone(), format!("segment {n}").into_bytes())
            };
            std::fs::write(archive.join(&file), bytes).unwrap();
            wal.push(Segment {
                number: n,
                sha256: sha256_of(&archive.join(&file)),
                name,
                file,
                archived_after_target: true,
                xact_after_target: None,
            });
        }
        let input = RecipeInput {
            system_identifier: 42,
            backup_id: 7,
            base: Base::Tar {
                path: base.to_string_lossy().into_owned(),
                sha256: sha256_of(&base),
                compressed: false,
            },
            archive_dir: Some(archive.to_string_lossy().into_owned()),
            wal,
            target: Target::Time("2026-11-27 10:00:00.000000+00".into()),
            pg_major: 15,
        };
        let script = tmp.path().join("recipe.sh");
        std::fs::write(&script, recipe(&input).unwrap()).unwrap();
        let run = |dir: &std::path::Path| {
            std::process::Command::new("bash")
                .arg(&script)
                .arg(dir)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .output()
                .unwrap()
        };
        let restored = tmp.path().join("restored");
        let out = run(&restored);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(restored.join("PG_VERSION")).unwrap(),
            "15\n"
        );
        assert!(restored.join("recovery.signal").is_file());
        let conf = std::fs::read_to_string(restored.join("postgresql.auto.conf")).unwrap();
        assert!(conf.starts_with("# original\n"), "{conf}");
        assert!(conf.contains("recovery_target_time = '2026-11-27 10:00:00.000000+00'"));
        assert!(conf.contains("backup_mgmt.enabled = 'off'"));
        // The restore_command, as PostgreSQL would run it (through sh, %f and %p replaced),
        // copies the archived file despite the quote in the path.
        let line = conf
            .lines()
            .find_map(|l| l.strip_prefix("restore_command = '"))
            .unwrap();
        let command = line.strip_suffix('\'').unwrap().replace("''", "'");
        std::fs::create_dir(restored.join("pg_wal")).unwrap();
        for n in [3, 4] {
            let command = command
                .replace("%f", &segment_file_name(1, n, 16 << 20))
                .replace("%p", "pg_wal/RECOVERYXLOG");
            let ok = std::process::Command::new("sh")
                .args(["-c", &command])
                .current_dir(&restored)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .status()
                .unwrap();
            assert!(ok.success(), "{command}");
            assert_eq!(
                std::fs::read_to_string(restored.join("pg_wal/RECOVERYXLOG")).unwrap(),
                format!("segment {n}")
            );
        }
        // A file the archive does not have: the command fails, as PostgreSQL expects at the
        // end of the archive.
        let missing = command
            .replace("%f", &segment_file_name(1, 9, 16 << 20))
            .replace("%p", "pg_wal/RECOVERYXLOG");
        let status = std::process::Command::new("sh")
            .args(["-c", &missing])
            .current_dir(&restored)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success());
        // Not over a non-empty directory.
        assert!(!run(&restored).status.success());
        // A damaged WAL file: refused before anything is extracted.
        std::fs::write(archive.join(segment_file_name(1, 4, 16 << 20)), "damaged").unwrap();
        let again = tmp.path().join("again");
        let out = run(&again);
        assert!(!out.status.success());
        assert!(!again.exists());
        // A path that would break the script is refused.
        let mut bad = input.clone();
        bad.archive_dir = Some("/tmp/x\nrm -rf /".into());
        assert!(matches!(recipe(&bad), Err(PitrError::UnsafePath { .. })));
    }
}
