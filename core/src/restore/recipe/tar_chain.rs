//! The part of a recipe that restores a chain of block-level incremental pg_basebackup backups:
//! every member's sha256 checked before anything is written, each tar extracted into a work
//! directory beside the target, then `pg_combinebackup` writes the data directory there, its
//! control file is set aside (durably) and what it wrote is moved into the target entry by entry
//! (so that the target may exist, empty; renames on one filesystem, copies when the target is
//! a mount point, the work directory being on its parent's): a recipe killed meanwhile leaves
//! no directory that could start without its recovery settings.

use std::fmt::Write as _;

use super::{sh_quote, single_line, RecipeError};

/// One earlier backup of a pg_basebackup chain.
#[derive(Debug, Clone)]
pub struct TarPart {
    pub id: i64,
    pub path: String,
    pub sha256: String,
    pub compressed: bool,
}

/// A chain of block-level incrementals: every member's sha256 checked, each extracted into a
/// work directory beside the target, then `pg_combinebackup` (of the PostgreSQL version that
/// took them; `PG_COMBINEBACKUP` names it when it is not on PATH) writes the data directory.
pub(super) fn combine_chain(
    s: &mut String,
    backup_id: i64,
    sha256: &str,
    compressed: bool,
    earlier: &[TarPart],
    major: i32,
) -> Result<(), RecipeError> {
    let mut parts: Vec<(i64, String, &str, bool)> = Vec::new();
    for p in earlier {
        let path = single_line("chain backup path", &p.path)?;
        parts.push((p.id, sh_quote(path), p.sha256.as_str(), p.compressed));
    }
    parts.push((backup_id, "\"$base\"".to_owned(), sha256, compressed));
    let _ = writeln!(s, "major={major}");
    let _ = writeln!(
        s,
        "echo \"recipe: checking the sha256 of the {} backups of the chain\"",
        parts.len()
    );
    for (_, path, sha, _) in &parts {
        let _ = writeln!(
            s,
            "printf '%s  %s\\n' {} {path} | sha256sum --check --quiet -",
            sh_quote(sha)
        );
    }
    s.push_str(
        r#"# pg_combinebackup of the version that took the backups: PG_COMBINEBACKUP, else Debian's
# place for it, else PATH.
combine=${PG_COMBINEBACKUP:-}
if [ -z "$combine" ]; then
    combine=/usr/lib/postgresql/$major/bin/pg_combinebackup
    [ -x "$combine" ] || combine=pg_combinebackup
fi
command -v -- "$combine" >/dev/null || { echo "recipe: $combine not found; set PG_COMBINEBACKUP to PostgreSQL $major's pg_combinebackup" >&2; exit 1; }
work=$(mktemp -d -- "${target%/}.chain.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
"#,
    );
    let mut dirs = String::new();
    for (id, path, _, zstd) in &parts {
        let _ = writeln!(
            s,
            "echo \"recipe: extracting backup {id} of the chain\"\nmkdir -- \"$work/{id}\""
        );
        if *zstd {
            let _ = writeln!(s, "zstd -dcq -- {path} | tar -xf - -C \"$work/{id}\"");
        } else {
            let _ = writeln!(s, "tar -xf {path} -C \"$work/{id}\"");
        }
        let _ = writeln!(s, "plain_tree \"$work/{id}\"");
        let _ = write!(dirs, " \"$work/{id}\"");
    }
    let _ = writeln!(
        s,
        "echo \"recipe: combining the chain into $target\"\n\
         \"$combine\"{dirs} --output \"$work/combined\"\n\
         mv -T -- \"$work/combined/global/pg_control\" \"$work/combined/global/pg_control.restored\"\n\
         sync -- \"$work/combined/global\"\n\
         mkdir -p -- \"$target\"\nchmod 0700 \"$target\"\n\
         (shopt -s dotglob; mv -t \"$target\" -- \"$work/combined\"/*)\n\
         rm -rf -- \"$work\""
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;

    fn sha256_of(path: &std::path::Path) -> String {
        use sha2::Digest;
        crate::checksum::hex(&sha2::Sha256::digest(std::fs::read(path).unwrap()))
    }

    /// A chain recipe for real (bash, sha256sum, tar, zstd), with a stand-in for
    /// pg_combinebackup that records its arguments: every member checked and extracted oldest
    /// first, a path with a quote in it survives, a damaged member stops it before anything is
    /// written.  (The real pg_combinebackup runs in the PostgreSQL 18 end-to-end test.)
    #[test]
    fn chain_recipe_checks_every_member_and_combines_them_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let mk = |name: &str, content: &str, zstd: bool| -> (String, String) {
            let src = tmp.path().join(format!("src-{name}"));
            std::fs::create_dir_all(&src).unwrap();
            std::fs::write(src.join("who"), content).unwrap();
            let tar = tmp.path().join(format!("{name}.tar"));
            assert!(std::process::Command::new("tar")
                .arg("-cf")
                .arg(&tar)
                .arg("-C")
                .arg(&src)
                .arg("who")
                .status()
                .unwrap()
                .success());
            let path = if zstd {
                let z = tmp.path().join(format!("{name}.tar.zst"));
                let bytes = zstd::encode_all(&std::fs::read(&tar).unwrap()[..], 3).unwrap();
                std::fs::write(&z, bytes).unwrap();
                z
            } else {
                tar
            };
            (path.to_string_lossy().into_owned(), sha256_of(&path))
        };
        let (full, full_sha) = mk("it's full", "full", true);
        let (i1, i1_sha) = mk("incr1", "incr1", false);
        let (i2, i2_sha) = mk("incr2", "incr2", true);
        let fake = tmp.path().join("combine.sh");
        std::fs::write(
            &fake,
            "#!/bin/bash\nout=\"${@: -1}\"\nmkdir -p \"$out\"\nfor d in \"${@:1:$#-2}\"; do cat \"$d/who\" >> \"$out/order\"; echo >> \"$out/order\"; done\nmkdir -p \"$out/global\"\necho control > \"$out/global/pg_control\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let input = |i1_sha: &str| RecipeInput {
            system_identifier: 42,
            backup_id: 9,
            base: Base::Tar {
                path: i2.clone(),
                sha256: i2_sha.clone(),
                compressed: true,
                earlier: vec![
                    TarPart {
                        id: 3,
                        path: full.clone(),
                        sha256: full_sha.clone(),
                        compressed: true,
                    },
                    TarPart {
                        id: 5,
                        path: i1.clone(),
                        sha256: i1_sha.to_owned(),
                        compressed: false,
                    },
                ],
            },
            archive_dirs: Vec::new(),
            wal: Vec::new(),
            target: Target::Immediate,
            timeline: None,
            pg_major: 18,
        };
        let run = |script: &str, dir: &std::path::Path| {
            let path = tmp.path().join("chain.sh");
            std::fs::write(&path, script).unwrap();
            std::process::Command::new("bash")
                .arg(&path)
                .arg(dir)
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("PG_COMBINEBACKUP", &fake)
                .output()
                .unwrap()
        };
        // Into an existing empty directory (a mount point may be one), its name awkward.
        let restored = tmp.path().join("restored {} here");
        std::fs::create_dir(&restored).unwrap();
        let out = run(&recipe(&input(&i1_sha)).unwrap(), &restored);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(restored.join("order")).unwrap(),
            "full\nincr1\nincr2\n"
        );
        assert!(restored.join("recovery.signal").is_file());
        // pg_combinebackup's control file set aside, then put back last.
        assert!(restored.join("global/pg_control").is_file());
        assert!(!restored.join("global/pg_control.restored").exists());
        // No work directory is left beside the target.
        let left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".chain."))
            .collect();
        assert!(left.is_empty());
        // A member whose bytes are not the recorded ones: nothing is written.
        let other = tmp.path().join("again");
        let out = run(&recipe(&input(&"0".repeat(64))).unwrap(), &other);
        assert!(!out.status.success());
        assert!(!other.exists());
        // A member's digest that is not a digest is refused when the recipe is written.
        assert!(matches!(
            recipe(&input("$(reboot)")),
            Err(RecipeError::UnsafeValue { .. })
        ));
    }
}
