//! Restore recipes: bash scripts that restore a base backup (a pg_basebackup tar or a native
//! physical backup's chain) and, for point-in-time recovery, configure the archived WAL it
//! needs, using only bash, coreutils, tar, zstd and PostgreSQL's own programs, so that they run
//! on a machine where backup_mgmt is not installed and the catalog is gone.  Also `wal_needed`:
//! which archived segments a recovery needs and which of them are missing.
//!
//! A recipe checks every sha256 before it writes anything, extracts or materialises the base
//! backup into an empty directory, and appends `restore_command`, the target and
//! `recovery_target_action = 'promote'` to `postgresql.auto.conf`, with `recovery.signal`.  The
//! restored copy has the same catalog and backup roots as the original, so the recipe also turns
//! `archive_mode` and `backup_mgmt.enabled` off.  Everything it embeds is quoted for its context
//! (shell word, postgresql.conf string) and checked where it is written out.

use std::fmt::Write as _;

use crate::checksum::is_sha256_hex;
use crate::manifest::native::FILES_MANIFEST;
use crate::wal::{self, Lsn};

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
    /// For a time target with no last segment: WAL archived after the target exists, every
    /// archived segment from the backup's end on has been read, and none has a transaction after
    /// the target.
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
    // Only when WAL from after the target is archived: before that (a target in the future, or
    // just now) the archive simply has not got there yet, which is said differently.
    let no_later_transaction = target_segment.is_none()
        && last.is_none()
        && later.iter().any(|s| s.archived_after_target)
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
    /// The WAL archive (None: only the WAL inside the backup, for an `Immediate` target).
    pub archive_dir: Option<String>,
    pub wal: Vec<Segment>,
    pub target: Target,
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
            let l = l.to_string();
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
            if *compressed {
                s.push_str("zstd -dcq -- \"$base\" | tar -xf - -C \"$target\"\n");
            } else {
                s.push_str("tar -xf \"$base\" -C \"$target\"\n");
            }
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
    case "$1" in ''|/*|..|../*|*/..|*/../*) return 0 ;; *) return 1 ;; esac
}
while IFS=$'\t' read -r kind path size mtime sum id stored; do
    # The manifest's sha256 was checked against the catalog; its fields are still checked here,
    # so that no line can lead outside the directories it names.
    if unsafe_path "$path"; then
        echo "recipe: refusing the chain manifest's path \"$path\"" >&2
        exit 1
    fi
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

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn conf_values_read_back_as_written() {
        for s in [
            r"plain",
            r"it's",
            r"C:\dir",
            r"\047;touch /tmp/x;\047",
            r"'\''",
            r"a\\b",
        ] {
            assert_eq!(conf_unquote(&conf_quote(s)), s, "{s}");
        }
        assert_eq!(conf_quote(r"\047"), r"'\\047'");
    }

    fn segment_file_name(timeline: u32, number: i64, _: u64) -> String {
        wal::Segment {
            timeline,
            number: number as u64,
        }
        .file_name(wal::SegmentSize::default())
    }

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
        // A target in the future: every segment read, none archived after it: not "no later
        // transaction" but "the archive has not got there yet" (however far the scan is).
        let mut future = early.clone();
        for s in future.iter_mut() {
            s.xact_after_target = Some(false);
        }
        let ahead = wal_needed(3, 4, None, &future);
        assert_eq!(ahead.last, None);
        assert!(!ahead.no_later_transaction);
    }

    fn sha256_of(path: &std::path::Path) -> String {
        use sha2::Digest;
        crate::checksum::hex(&sha2::Sha256::digest(std::fs::read(path).unwrap()))
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
                earlier: Vec::new(),
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
        let command = conf_unquote(&format!("'{line}"));
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
        assert!(matches!(recipe(&bad), Err(RecipeError::UnsafePath { .. })));
        // A forged digest or WAL name from the catalog is refused where it is written out.
        let mut forged = input.clone();
        forged.wal[0].sha256 = format!(
            "{}\nBACKUP_MGMT_WAL_LIST\ntouch /tmp/pwned\n",
            "a".repeat(64)
        );
        assert!(matches!(
            recipe(&forged),
            Err(RecipeError::UnsafeValue { .. })
        ));
        let mut forged = input.clone();
        forged.wal[0].file = "../../etc/passwd".into();
        assert!(matches!(
            recipe(&forged),
            Err(RecipeError::UnsafeValue { .. })
        ));
        let mut forged = input;
        forged.wal[0].name = "x'; touch /tmp/pwned; '".into();
        assert!(matches!(
            recipe(&forged),
            Err(RecipeError::UnsafeValue { .. })
        ));
    }
}
