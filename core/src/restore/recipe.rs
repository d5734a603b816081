//! Restore recipes: bash scripts that restore a base backup (a pg_basebackup tar or a native
//! physical backup's chain) and, for point-in-time recovery, configure the archived WAL it
//! needs, using only bash, GNU coreutils, findutils and tar, zstd and PostgreSQL's own programs, so that they run
//! on a machine where backup_mgmt is not installed and the catalog is gone.  Also `wal_needed`:
//! which archived segments a recovery needs and which of them are missing.
//!
//! A recipe checks every sha256 before it writes anything, extracts or materialises the base
//! backup into an empty directory, and appends `restore_command`, the target and
//! `recovery_target_action = 'promote'` to `postgresql.auto.conf`, with `recovery.signal`; the
//! backup's control file goes in last, after a `sync` (like `backup-mgmt restore`'s), so that a
//! recipe stopped part-way leaves a directory PostgreSQL refuses to start.  The
//! restored copy has the same catalog and backup roots as the original, so the recipe also turns
//! `archive_mode` and `backup_mgmt.enabled` off.  Everything it embeds is quoted for its context
//! (shell word, postgresql.conf string) and checked where it is written out.

use std::fmt::Write as _;

use crate::checksum::is_sha256_hex;
use crate::manifest::native::FILES_MANIFEST;
use crate::wal::{self, Lsn};

use super::recovery_conf::recovery_settings;

mod tar_chain;

use tar_chain::combine_chain;
pub use tar_chain::TarPart;

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{what} \"{path}\" contains a line break; a recipe cannot name it safely")]
    UnsafePath { what: &'static str, path: String },
    #[error(
        "{what} {value:?} is not what the catalog may hold; refusing to write it into a recipe"
    )]
    UnsafeValue { what: &'static str, value: String },
}

/// What to recover to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A time, as `YYYY-MM-DD HH:MI:SS.US+00` (UTC).
    Time(String),
    /// A WAL location.
    Lsn(Lsn),
    /// The end of the base backup itself (`recovery_target = 'immediate'`), from the WAL inside
    /// a native backup.
    Immediate,
}

/// What the recipe restores the data directory from.
#[derive(Debug, Clone)]
pub enum Base {
    /// A pg_basebackup tar file, zstd-compressed or not; for a block-level incremental, the
    /// backups it builds on (its full first), combined with it by `pg_combinebackup`.
    Tar {
        path: String,
        sha256: String,
        compressed: bool,
        earlier: Vec<TarPart>,
    },
    /// A native physical backup: its directory, its chain manifest's sha256, and the directory
    /// of every backup of its chain (itself included) by id.
    Native {
        dir: String,
        manifest_sha256: String,
        holders: Vec<(i64, String)>,
    },
}

/// An archived WAL segment recovery reads (on the timeline of the path it is on there), at or
/// after the base backup's start; a recipe lists a history file the same way (number 0).
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
    /// For a time target with no last segment: WAL archived after the target exists, every
    /// archived segment from the backup's end on has been read, and none has a transaction after
    /// the target.
    pub no_later_transaction: bool,
}

/// The segments from `start` (the backup's first) to the one that covers the target: for a
/// LSN, the segment holding it (never before the backup's `stop`); for a time, the first segment
/// archived at or after it that comes after every segment archived before it.  WAL written at
/// the target time lies in a segment finished after it, so in that segment or a later one;
/// replay stops at the first commit after the target, and `restore_command` serves whatever
/// further segments the archive has.
pub fn wal_needed(
    start: i64,
    stop: i64,
    target_segment: Option<i64>,
    archived: &[Segment],
) -> WalNeed {
    // A segment archived before the target was finished before it, and so was every segment
    // before it (WAL is written in order): nothing up to the last of them holds the stopping
    // point, whenever they were archived (an archiver that lagged, a segment of the old timeline
    // archived late after a failover).
    let finished_before = archived
        .iter()
        .filter(|s| !s.archived_after_target)
        .map(|s| s.number)
        .max();
    // Archived after the target, and not before a segment archived before it.
    let late_enough =
        |s: &Segment| s.archived_after_target && finished_before.is_none_or(|f| s.number > f);
    // A segment with a transaction after the target holds recovery's stopping point; before
    // the worker has read a segment, the first archived after the target, past those finished
    // before it, may hold it.
    let covers = |s: &Segment| s.xact_after_target.unwrap_or_else(|| late_enough(s));
    let last = match target_segment {
        Some(t) => Some(t.max(stop)),
        None => archived
            .iter()
            .filter(|s| s.number >= stop && covers(s))
            .map(|s| s.number)
            .min(),
    };
    let later: Vec<&Segment> = archived.iter().filter(|s| s.number >= stop).collect();
    // Only when WAL from after the target is archived: before that (a target in the future, or
    // just now) the archive simply has not got there yet, which is said differently.
    let no_later_transaction = target_segment.is_none()
        && last.is_none()
        && later.iter().any(|s| late_enough(s))
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

/// Everything a recipe names.
#[derive(Debug, Clone)]
pub struct RecipeInput {
    pub system_identifier: i64,
    pub backup_id: i64,
    pub base: Base,
    /// The WAL archive directories `restore_command` reads, in the order it tries them (the
    /// archive moves to a new first backup root when the roots change; none: only the WAL
    /// inside the backup, for an `Immediate` target).
    pub archive_dirs: Vec<String>,
    /// The archived files recovery reads, each checked before anything is written: segments,
    /// and the history file of the timeline it ends on when that is not the backup's.
    pub wal: Vec<Segment>,
    pub target: Target,
    /// The timeline recovery ends on when it leaves the backup's (None: the backup's own).
    pub timeline: Option<u32>,
    pub pg_major: i32,
}

/// `s` as one shell word.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `s` as a postgresql.conf string value.  PostgreSQL's configuration parser reads backslash
/// escapes inside quotes (`\047` is a quote), so backslashes are doubled as well as quotes, as
/// PostgreSQL's own `escape_single_quotes_ascii` does; otherwise a value holding `\047` (a
/// target path a role that is no superuser wrote, say) would end the string early and put
/// the rest of a `restore_command` line outside its shell quoting.
pub fn conf_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// What PostgreSQL's configuration parser makes of a quoted value (`GUC_scanstr`): `''` is a
/// quote; `\b \f \n \r \t`, up to three octal digits, or any other character after a
/// backslash stand for themselves.  For tests of what `conf_quote` wrote.
#[cfg(test)]
pub(crate) fn conf_unquote(quoted: &str) -> String {
    let inner = &quoted[1..quoted.len() - 1];
    let mut out = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('b') => out.push('\u{8}'),
                Some('f') => out.push('\u{c}'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some(d @ '0'..='7') => {
                    let mut v = d.to_digit(8).unwrap_or(0);
                    for _ in 0..2 {
                        match chars.peek().and_then(|c| c.to_digit(8)) {
                            Some(n) => {
                                v = v * 8 + n;
                                chars.next();
                            }
                            None => break,
                        }
                    }
                    out.push(char::from_u32(v).unwrap_or('?'));
                }
                Some(other) => out.push(other),
                None => {}
            },
            '\'' if chars.peek() == Some(&'\'') => {
                chars.next();
                out.push('\'');
            }
            other => out.push(other),
        }
    }
    out
}

fn single_line<'a>(what: &'static str, s: &'a str) -> Result<&'a str, RecipeError> {
    if s.contains(['\n', '\r']) {
        return Err(RecipeError::UnsafePath {
            what,
            path: s.to_owned(),
        });
    }
    Ok(s)
}

/// Every value the recipe embeds that did not come from the recipe itself (digests, WAL names
/// from the catalog, holder directories) is checked here, where it is written out, whatever
/// checked it before: a digest is 64 hex digits, a WAL file is a WAL name (or it plus `.zst`).
fn check_embedded(r: &RecipeInput) -> Result<(), RecipeError> {
    let unsafe_value = |what: &'static str, value: &str| RecipeError::UnsafeValue {
        what,
        value: value.to_owned(),
    };
    let base_sha = match &r.base {
        Base::Tar { sha256, .. } => sha256,
        Base::Native {
            manifest_sha256, ..
        } => manifest_sha256,
    };
    if !is_sha256_hex(base_sha) {
        return Err(unsafe_value("base backup sha256", base_sha));
    }
    if let Base::Tar { earlier, .. } = &r.base {
        for part in earlier {
            if !is_sha256_hex(&part.sha256) {
                return Err(unsafe_value("chain backup sha256", &part.sha256));
            }
        }
    }
    // Written into the script's comments and the program's example line: one line of text.
    if let Target::Time(t) = &r.target {
        if t.trim().is_empty() || t.chars().any(char::is_control) {
            return Err(unsafe_value("recovery target time", t));
        }
    }
    for w in &r.wal {
        if !is_sha256_hex(&w.sha256) {
            return Err(unsafe_value("WAL file sha256", &w.sha256));
        }
        if !wal::is_archivable_name(&w.name) {
            return Err(unsafe_value("WAL file name", &w.name));
        }
        if w.file != w.name && w.file != format!("{}.zst", w.name) {
            return Err(unsafe_value("archived WAL file", &w.file));
        }
    }
    Ok(())
}

/// The restore recipe: a bash script taking the new data directory as its only argument.
pub fn recipe(r: &RecipeInput) -> Result<String, RecipeError> {
    check_embedded(r)?;
    let archives = r
        .archive_dirs
        .iter()
        .map(|a| single_line("WAL archive directory", a).map(sh_quote))
        .collect::<Result<Vec<_>, _>>()?
        .join(" ");
    let (target_line, target_text) = match &r.target {
        Target::Time(t) => (
            format!("recovery_target_time = {}", conf_quote(t)),
            t.clone(),
        ),
        Target::Lsn(l) => {
            let l = l.to_string();
            (format!("recovery_target_lsn = {}", conf_quote(&l)), l)
        }
        Target::Immediate => (
            "recovery_target = 'immediate'".to_owned(),
            "the end of the backup".to_owned(),
        ),
    };
    // PostgreSQL replaces %f (a WAL file name) and %p (a path under the data directory, both
    // plain) before the shell sees the command.  The first directory holding the file serves
    // it, stored zstd-compressed or not (the recipe checks that copy; zstd reads it from stdin,
    // which follows a symlink as the check's sha256sum does, where zstd would skip one).
    // Without an archive the command always fails, and recovery reads the WAL restored into
    // pg_wal.  A `%` in a directory is written `%%`: PostgreSQL would otherwise replace `%p` or
    // `%%` in it, and restore_command would read another directory than the one checked.
    let restore_command = match r.archive_dirs.is_empty() {
        false => format!(
            "for d in {}; do f=\"$d/%f\"; if [ -f \"$f.zst\" ]; then exec zstd -dcq < \"$f.zst\" > \"%p\"; elif [ -f \"$f\" ]; then exec cp -- \"$f\" \"%p\"; fi; done; exit 1",
            archives.replace('%', "%%")
        ),
        true => "false".to_owned(),
    };
    let (base_shown, base_kind) = match &r.base {
        Base::Tar { path, earlier, .. } => (
            single_line("base backup path", path)?,
            if earlier.is_empty() {
                "pg_basebackup tar"
            } else {
                "pg_basebackup incremental, combined with the backups it builds on"
            },
        ),
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
#   ending on timeline:          {timeline}
#   WAL files checked:           {nwal} (segments, history file), from {archive}
# Needs only bash, GNU coreutils, findutils and tar, zstd and PostgreSQL {major}'s server programs; backup_mgmt
# need not be installed.  (If it is not, remove it from shared_preload_libraries in the restored
# postgresql.conf before starting.)
#
# Usage, as the operating-system user that will run the restored server:
#   bash recipe.sh NEW_DATA_DIRECTORY [TABLESPACE_DIRECTORY]
# then start it (pg_ctl -D NEW_DATA_DIRECTORY start, on a free port): it replays the WAL up to
# the target and promotes.  POSTGRES may name PostgreSQL {major}'s postgres, with which the recipe
# checks that the backed-up configuration does not move the data directory elsewhere.
#
# This script is the zero-dependency fallback.  Where backup_mgmt copies to an off-site target,
# its restore program brings back the same point from that target alone, files fetched and
# checked in parallel (see docs/restore-program.md), for example:
#   backup-mgmt --dir OFFSITE_DIRECTORY --cluster {sysid} restore {goal} NEW_DATA_DIRECTORY
set -euo pipefail
target=${{1:?usage: bash recipe.sh NEW_DATA_DIRECTORY}}
base={base_q}

if [ -e "$target" ] && [ -n "$(ls -A -- "$target")" ]; then
    echo "recipe: $target is not empty; refusing to restore over it" >&2
    exit 1
fi
# What a backup's tar may hold: regular files and directories (pg_basebackup --pgdata=- writes
# no tablespace link).  Anything else (a symlink leading out, a device) is refused before the
# recipe writes through it or another program reads it.
# A hard link (two names, one file) is refused too: appending to one would change the other.
# -H: the target itself may be a symlink to the directory.
plain_tree() {{
    local odd
    odd=$(find -H "$1" \( ! -type f ! -type d -o -type f -links +1 \) -print -quit)
    if [ -n "$odd" ]; then
        echo "recipe: refusing the backup: $odd is neither a regular file nor a directory with one name" >&2
        exit 1
    fi
}}
"#,
        now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
        sysid = r.system_identifier,
        id = r.backup_id,
        base = base_shown,
        nwal = r.wal.len(),
        timeline = r
            .timeline
            .map_or("the backup's own".to_owned(), |t| t.to_string()),
        archive = match r.archive_dirs.is_empty() {
            true => "(none: the WAL inside the backup)".to_owned(),
            false => r.archive_dirs.join(", "),
        },
        major = r.pg_major,
        base_q = sh_quote(base_shown),
        goal = {
            // The timeline this recipe checked: its number, or the base backup's own.
            let timeline = r.timeline.map_or("current".to_owned(), |t| t.to_string());
            match &r.target {
                Target::Time(t) => {
                    format!("--target-time {} --target-timeline {timeline}", sh_quote(t))
                }
                Target::Lsn(l) => format!("--target-lsn {l} --target-timeline {timeline}"),
                Target::Immediate => format!("--backup-id {}", r.backup_id),
            }
        },
    );
    if !r.archive_dirs.is_empty() {
        // Each file as restore_command will serve it: from the first directory that holds it,
        // in the form found there, which must be the archived file the catalog recorded.
        let _ = write!(
            s,
            r#"archives=({archives})
echo "recipe: checking the sha256 of {n} archived WAL files"
while read -r sum file; do
    name=${{file%.zst}}
    served=
    for d in "${{archives[@]}}"; do
        if [ -f "$d/$name.zst" ]; then served="$d/$name.zst"; break; fi
        if [ -f "$d/$name" ]; then served="$d/$name"; break; fi
    done
    if [ -z "$served" ]; then
        echo "recipe: the archived WAL file $file is in none of the archive directories" >&2
        exit 1
    fi
    if [ "${{served##*/}}" != "$file" ]; then
        echo "recipe: restore_command would read $served, not the archived $file this recipe checks" >&2
        exit 1
    fi
    if ! printf '%s  %s\n' "$sum" "$served" | sha256sum --check --quiet - >&2; then
        echo "recipe: $served is not the archived file (its sha256 differs)" >&2
        exit 1
    fi
done <<'BACKUP_MGMT_WAL_LIST'
"#,
            n = r.wal.len()
        );
        for w in &r.wal {
            let _ = writeln!(s, "{}  {}", w.sha256, w.file);
        }
        s.push_str("BACKUP_MGMT_WAL_LIST\n");
    }
    match &r.base {
        Base::Tar {
            sha256,
            compressed,
            earlier,
            ..
        } if earlier.is_empty() => {
            let _ = writeln!(
                s,
                "echo \"recipe: checking the base backup's sha256\"\n\
                 printf '%s  %s\\n' {} \"$base\" | sha256sum --check --quiet -",
                sh_quote(sha256)
            );
            s.push_str("\necho \"recipe: extracting the base backup into $target\"\n");
            s.push_str("mkdir -p -- \"$target\"\nchmod 0700 \"$target\"\n");
            // The control file is extracted under its staged name (see the end).
            let stage =
                "--transform='s,^\\(\\./\\)*global/pg_control$,global/pg_control.restored,'";
            if *compressed {
                let _ = writeln!(
                    s,
                    "zstd -dcq -- \"$base\" | tar -xf - -C \"$target\" {stage}"
                );
            } else {
                let _ = writeln!(s, "tar -xf \"$base\" -C \"$target\" {stage}");
            }
            s.push_str("plain_tree \"$target\"\n");
        }
        Base::Tar {
            sha256,
            compressed,
            earlier,
            ..
        } => combine_chain(
            &mut s,
            r.backup_id,
            sha256,
            *compressed,
            earlier,
            r.pg_major,
        )?,
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
                files = FILES_MANIFEST,
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
unsafe_path() {
    # Plain relative paths only, each spelt one way: no `..`, no `.`, no empty component.
    case "$1" in ''|/*|..|../*|*/..|*/../*|.|./*|*/.|*/./*|*//*|*/) return 0 ;; *) return 1 ;; esac
}
while IFS=$'\t' read -r kind path size mtime sum id stored; do
    # The manifest's sha256 was checked against the catalog; its fields are still checked here,
    # so that no line can lead outside the directories it names.
    if unsafe_path "$path"; then
        echo "recipe: refusing the chain manifest's path \"$path\"" >&2
        exit 1
    fi
    case "$path" in
        global/pg_control.restored|global/pg_control.held-by-restore|global/.pg_control.restored*)
            echo "recipe: refusing the chain manifest's path \"$path\" (a restore's own name)" >&2
            exit 1 ;;
    esac
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
            case "$id" in ''|*[!0-9]*) echo "recipe: bad holder \"$id\" in the chain manifest" >&2; exit 1 ;; esac
            if unsafe_path "$stored"; then
                echo "recipe: refusing the chain manifest's stored path \"$stored\"" >&2
                exit 1
            fi
            src="${holder[$id]:?backup $id of the chain is not named in this recipe}/$stored"
            # The control file under its staged name (see the end).
            out=$path
            if [ "$path" = global/pg_control ]; then out=global/pg_control.restored; fi
            case "$stored" in
                *.zst) zstd -dcq -- "$src" > "$target/$out" ;;
                *) cp -T -- "$src" "$target/$out" ;;
            esac
            printf '%s  %s\n' "$sum" "$out" >> "$sums" ;;
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
    // Before anything is written beside the backup's files: its control file only under the
    // staged name, a regular file in a real directory.  One it brought in under another
    // spelling (a forged manifest or tar) is refused and removed, so the directory cannot start.
    s.push_str(
        r#"
staged="$target/global/pg_control.restored"
if [ -L "$target/global" ] || [ ! -d "$target/global" ]; then
    echo "recipe: the backup has no global directory; $target cannot start" >&2
    exit 1
fi
if [ -e "$target/global/pg_control" ] || [ -L "$target/global/pg_control" ]; then
    rm -rf -- "$target/global/pg_control"
    echo "recipe: refusing the backup: it holds global/pg_control under another name ($target cannot start)" >&2
    exit 1
fi
if [ -L "$staged" ] || [ ! -f "$staged" ]; then
    echo "recipe: the backup has no global/pg_control; $target cannot start" >&2
    exit 1
fi
"#,
    );
    let settings = recovery_settings(
        "the backup_mgmt restore recipe",
        &restore_command,
        Some(&target_line),
        r.timeline,
        Some(i64::from(r.pg_major) * 10000),
    );
    let _ = write!(
        s,
        r#"
cat >> "$target/postgresql.auto.conf" <<'BACKUP_MGMT_CONF'
{settings}# Nor load a library the backed-up configuration names (it may name any path): review it
# before setting these again.  This copy shares the original's catalog and backup roots: it
# archives nothing and runs no scheduled backup (above) until you decide it takes over.
shared_preload_libraries = ''
local_preload_libraries = ''
{archive_library}BACKUP_MGMT_CONF
# A backup of a standby brings its standby.signal, which outranks recovery.signal: the copy
# would be a standby (streaming from nobody, since primary_conninfo is reset above) that waits
# for more WAL where archive recovery ends, should the target not be reached.
rm -f -- "$target/standby.signal"
# pg_ctl restart runs the program postmaster.opts names: only a server's own, never a backup's.
rm -f -- "$target/postmaster.opts" "$target/postmaster.pid"
touch "$target/recovery.signal"
# A backed-up postgresql.conf may move the data directory (data_directory = '...'): a server
# started on $target would run on that other directory, with its configuration instead of the
# settings above.  PostgreSQL's own postgres says which directory it would use: POSTGRES, else
# Debian's PostgreSQL {major}, else the one on PATH.  Read from /, as the server may be started
# from anywhere; without a postgresql.conf the operator's configuration file will be used.
if [ -n "${{POSTGRES:-}}" ]; then
    postgres=$POSTGRES
elif [ -x /usr/lib/postgresql/{major}/bin/postgres ]; then
    postgres=/usr/lib/postgresql/{major}/bin/postgres
else
    postgres=postgres
fi
# The configuration is the backup's: it may include a FIFO or a terminal, so no stdin and a
# time limit; what it makes postgres print is shown with control characters replaced.
here=$(realpath -e -- "$target")
config=()
if [ -L "$target/postgresql.conf" ] || [ ! -f "$target/postgresql.conf" ]; then config=(-c config_file=/dev/null); fi
said=$(mktemp)
if ! command -v -- "$postgres" >/dev/null; then
    echo "recipe: caution: $postgres not found, so the backed-up configuration's data_directory is unchecked (set POSTGRES to PostgreSQL {major}'s postgres)" >&2
elif ! moved=$(cd / && timeout 30 "$postgres" -C data_directory -D "$here" ${{config[@]+"${{config[@]}}"}} </dev/null 2>"$said"); then
    why=$(head -c 400 -- "$said" | tr -c '[:print:]' ' ')
    echo "recipe: caution: $postgres could not read the backed-up configuration within 30 s, so its data_directory is unchecked: $why" >&2
elif [ "$(realpath -e -- "$moved" 2>/dev/null)" != "$here" ]; then
    rm -f -- "$staged" "$said"
    moved=$(printf '%s' "$moved" | tr -c '[:print:]' '?')
    echo "recipe: refusing the backup: its configuration moves the data directory to $moved; $target cannot start" >&2
    exit 1
fi
rm -f -- "$said"
# The control file goes in last, once every other file and the recovery settings are on disk:
# a recipe stopped before this point leaves a directory PostgreSQL refuses to start (no
# global/pg_control), never one that starts as a part-restored cluster or as the backup alone.
# syncfs of each filesystem written (which reports a write that failed).
echo "recipe: making the restored files durable"
sync -f -- "$target"
if [ -n "${{tablespaces:-}}" ] && [ -d "$tablespaces" ]; then
    # Each tablespace's directory too: one may be a mount point of its own.
    sync -f -- "$tablespaces"
    for t in "$tablespaces"/*; do
        if [ -d "$t" ]; then sync -f -- "$t"; fi
    done
fi
mv -T -- "$target/global/pg_control.restored" "$target/global/pg_control"
sync -- "$target/global"
echo "recipe: ready; start the server on $target to recover to "{target_q}
"#,
        target_q = sh_quote(&target_text),
        major = r.pg_major,
        // A setting PostgreSQL 14 and older do not know would stop the server starting.
        archive_library = if r.pg_major >= 15 {
            "archive_library = ''\n"
        } else {
            ""
        },
    );
    Ok(s)
}

#[cfg(test)]
mod unit;
