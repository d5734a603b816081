//! The recipes' unit tests: what they embed, how they quote it, and a recipe run with bash.

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
    // Segment 5 archived late, after the target, but 6 was archived before it: 5 was finished
    // before the target too, and the first archived after it from 7 on stands in (before, the
    // check ended at 5 and never looked at 6 and 7).
    let late: Vec<Segment> = (3..=9).map(|n| seg(n, n == 5 || n >= 7)).collect();
    let need = wal_needed(3, 4, None, &late);
    assert_eq!(need.last, Some(7));
    assert!(need.missing.is_empty());
    // With 6 not in the archive, nothing tells that 5 was finished before the target: it stands
    // in (recovery that needs 6 then stops, loudly, short of the target).
    let lost6: Vec<Segment> = late.iter().filter(|s| s.number != 6).cloned().collect();
    assert_eq!(wal_needed(3, 4, None, &lost6).last, Some(5));
    // 8 archived before the target as well: the stand-in is 9.
    let mut later: Vec<Segment> = late.clone();
    later[5].archived_after_target = false;
    assert_eq!(wal_needed(3, 4, None, &later).last, Some(9));
    // Read segments decide for themselves: a transaction after the target read in 5 is where
    // recovery stops, whatever was archived when.
    let mut read5 = late.clone();
    read5[2].xact_after_target = Some(true);
    assert_eq!(wal_needed(3, 4, None, &read5).last, Some(5));
    // Every segment read, none with a transaction after the target, and the only one archived
    // after it a late one (before 6, archived before the target): the archive has not got past
    // the target yet, which is not "no later transaction".
    let mut late_read: Vec<Segment> = (3..=6).map(|n| seg(n, n == 5)).collect();
    for s in late_read.iter_mut() {
        s.xact_after_target = Some(false);
    }
    let pending = wal_needed(3, 4, None, &late_read);
    assert_eq!(pending.last, None);
    assert!(!pending.no_later_transaction);
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

/// A pg_basebackup-like tar of a tiny data directory, `base.tar` in `root`.
fn tar_base(tmp: &std::path::Path, root: &std::path::Path) -> std::path::PathBuf {
    let src = tmp.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("PG_VERSION"), "15\n").unwrap();
    std::fs::write(src.join("postgresql.auto.conf"), "# original\n").unwrap();
    std::fs::create_dir_all(src.join("global")).unwrap();
    std::fs::write(src.join("global/pg_control"), "control\n").unwrap();
    let base = root.join("base.tar");
    // pg_basebackup's order: the control file last.
    make_tar(
        &base,
        &src,
        &["PG_VERSION", "postgresql.auto.conf", "global"],
    );
    base
}

/// `tar -cf base -C src ARGS…` with GNU tar.
fn make_tar(base: &std::path::Path, src: &std::path::Path, args: &[&str]) {
    assert!(std::process::Command::new("tar")
        .arg("-cf")
        .arg(base)
        .arg("-C")
        .arg(src)
        .args(args)
        .status()
        .unwrap()
        .success());
}

/// Writes the point-in-time recipe of the tar `base` (no archive) beside it and runs it into
/// `tmp/restored`: what it printed, and that directory.
fn run_tar_recipe(
    tmp: &std::path::Path,
    base: &std::path::Path,
) -> (std::process::Output, std::path::PathBuf) {
    let script = tmp.join("recipe.sh");
    std::fs::write(
        &script,
        recipe(&time_recipe(base, &[], Vec::new())).unwrap(),
    )
    .unwrap();
    let restored = tmp.join("restored");
    (run_recipe(&script, &restored), restored)
}

/// Archives segment `n` (content `segment N`) into `archive`, compressed or not, as a recipe
/// lists it.
fn archive_segment(archive: &std::path::Path, n: i64, compressed: bool) -> Segment {
    let name = segment_file_name(1, n, 16 << 20);
    let (file, bytes) = if compressed {
        let z = zstd::encode_all(format!("segment {n}").as_bytes(), 3).unwrap();
        (format!("{name}.zst"), z)
    } else {
        (name.clone(), format!("segment {n}").into_bytes())
    };
    std::fs::write(archive.join(&file), bytes).unwrap();
    Segment {
        number: n,
        sha256: sha256_of(&archive.join(&file)),
        name,
        file,
        archived_after_target: true,
        xact_after_target: None,
    }
}

/// A recipe to a time from the tar `base`, reading `wal` from `archives`.
fn time_recipe(
    base: &std::path::Path,
    archives: &[&std::path::Path],
    wal: Vec<Segment>,
) -> RecipeInput {
    RecipeInput {
        system_identifier: 42,
        backup_id: 7,
        base: Base::Tar {
            path: base.to_string_lossy().into_owned(),
            sha256: sha256_of(base),
            compressed: false,
            earlier: Vec::new(),
        },
        archive_dirs: archives
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        wal,
        target: Target::Time("2026-11-27 10:00:00.000000+00".into()),
        timeline: None,
        pg_major: 15,
    }
}

/// Runs the recipe `script` into `dir` with bash, as its user would.
fn run_recipe(script: &std::path::Path, dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new("bash")
        .arg(script)
        .arg(dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap()
}

/// The restored `restore_command`, as PostgreSQL would run it (through sh, %f and %p replaced,
/// `%%` made `%`) in the data directory `dir` for segment `n`: whether it succeeded, and what
/// it wrote.
fn restore_segment(dir: &std::path::Path, n: i64) -> (bool, String) {
    let conf = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
    let line = conf
        .lines()
        .find_map(|l| l.strip_prefix("restore_command = '"))
        .unwrap();
    // Left to right, as PostgreSQL's replace_percent_placeholders reads it.
    let mut command = String::new();
    let mut chars = conf_unquote(&format!("'{line}"))
        .chars()
        .collect::<Vec<_>>()
        .into_iter();
    while let Some(c) = chars.next() {
        match (c, chars.as_slice().first()) {
            ('%', Some('f')) => command.push_str(&segment_file_name(1, n, 16 << 20)),
            ('%', Some('p')) => command.push_str("pg_wal/RECOVERYXLOG"),
            ('%', Some('%')) => command.push('%'),
            _ => {
                command.push(c);
                continue;
            }
        }
        chars.next();
    }
    std::fs::create_dir_all(dir.join("pg_wal")).unwrap();
    let _ = std::fs::remove_file(dir.join("pg_wal/RECOVERYXLOG"));
    let ok = std::process::Command::new("sh")
        .args(["-c", &command])
        .current_dir(dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    (
        ok,
        std::fs::read_to_string(dir.join("pg_wal/RECOVERYXLOG")).unwrap_or_default(),
    )
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
    let base = tar_base(tmp.path(), &root);
    // Segment 3 is stored compressed (backup_mgmt.archive_compression = zstd).
    let wal = (3..=4)
        .map(|n| archive_segment(&archive, n, n == 3))
        .collect();
    let input = time_recipe(&base, &[&archive], wal);
    let script = tmp.path().join("recipe.sh");
    std::fs::write(&script, recipe(&input).unwrap()).unwrap();
    let run = |dir: &std::path::Path| run_recipe(&script, dir);
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
    // The control file went in last, under its own name.
    assert_eq!(
        std::fs::read_to_string(restored.join("global/pg_control")).unwrap(),
        "control\n"
    );
    assert!(!restored.join("global/pg_control.restored").exists());
    let conf = std::fs::read_to_string(restored.join("postgresql.auto.conf")).unwrap();
    assert!(conf.starts_with("# original\n"), "{conf}");
    assert!(conf.contains("recovery_target_time = '2026-11-27 10:00:00.000000+00'"));
    // The script points to the restore program, for the same cluster and goal.
    assert!(
        std::fs::read_to_string(&script).unwrap().contains(
            "#   backup-mgmt --dir OFFSITE_DIRECTORY --cluster 42 restore --target-time '2026-11-27 10:00:00.000000+00' --target-timeline current NEW_DATA_DIRECTORY\n"
        ),
        "{}",
        std::fs::read_to_string(&script).unwrap()
    );
    assert!(conf.contains("backup_mgmt.enabled = 'off'"));
    // Nothing the backed-up configuration names runs, loads or logs outside the copy.
    for line in [
        "archive_command = ''\n",
        "archive_library = ''\n",
        "shared_preload_libraries = ''\n",
        "session_preload_libraries = ''\n",
        "external_pid_file = ''\n",
        "dynamic_library_path = '$libdir'\n",
        "log_directory = 'log'\n",
    ] {
        assert!(conf.contains(line), "{line} missing from {conf}");
    }
    // The backup's own timeline, unless the plan followed a later one; earlier targets
    // (of a cluster restored before) reset.
    assert!(
        conf.contains("recovery_target_timeline = 'current'\n"),
        "{conf}"
    );
    assert!(conf.contains("recovery_target_lsn = ''\n"), "{conf}");
    let mut later = input.clone();
    later.timeline = Some(3);
    let text = recipe(&later).unwrap();
    assert!(text.contains("recovery_target_timeline = '3'\n"), "{text}");
    assert!(text.contains("ending on timeline:          3\n"), "{text}");
    // The restore_command, as PostgreSQL would run it, copies the archived file despite the
    // quote in the path; a file the archive does not have fails, as PostgreSQL expects at the
    // end of the archive.
    for n in [3, 4] {
        assert_eq!(
            restore_segment(&restored, n),
            (true, format!("segment {n}"))
        );
    }
    assert!(!restore_segment(&restored, 9).0);
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
    bad.archive_dirs = vec!["/tmp/x\nrm -rf /".into()];
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
    let mut forged = input.clone();
    forged.target = Target::Time("2026-11-27 10:00:00+00\ntouch /tmp/pwned".into());
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

/// WAL in two archive directories (the archive moved to a new first backup root): the recipe
/// checks each file as restore_command will serve it, from the first directory holding it, and
/// restore_command serves every segment; a `%` in a directory does not change what it reads.
#[test]
fn a_recipe_reads_wal_from_several_archive_directories() {
    let tmp = tempfile::tempdir().unwrap();
    let old_root = tmp.path().join("old 50%p root");
    let new_root = tmp.path().join("new%%root");
    let (old, new) = (old_root.join("wal/42"), new_root.join("wal/42"));
    std::fs::create_dir_all(&old).unwrap();
    std::fs::create_dir_all(&new).unwrap();
    let base = tar_base(tmp.path(), &old_root);
    let mut wal: Vec<Segment> = (3..=4).map(|n| archive_segment(&old, n, n == 4)).collect();
    wal.extend((5..=6).map(|n| archive_segment(&new, n, false)));
    // Another segment 4 under the new root: restore_command serves the old root's, the one
    // checked (the directories are read in order).
    let four = segment_file_name(1, 4, 16 << 20);
    std::fs::write(
        new.join(format!("{four}.zst")),
        zstd::encode_all(&b"another segment 4"[..], 3).unwrap(),
    )
    .unwrap();
    let input = time_recipe(&base, &[&old, &new], wal);
    let script = tmp.path().join("recipe.sh");
    std::fs::write(&script, recipe(&input).unwrap()).unwrap();
    let restored = tmp.path().join("restored");
    let out = run_recipe(&script, &restored);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for n in 3..=6 {
        assert_eq!(
            restore_segment(&restored, n),
            (true, format!("segment {n}"))
        );
    }
    assert!(!restore_segment(&restored, 7).0);
    // A compressed file behind a symlink is served as it is checked (sha256sum and zstd both
    // read through it).
    let elsewhere = tmp.path().join("elsewhere.zst");
    std::fs::rename(old.join(format!("{four}.zst")), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, old.join(format!("{four}.zst"))).unwrap();
    let linked = tmp.path().join("linked");
    assert!(run_recipe(&script, &linked).status.success());
    assert_eq!(restore_segment(&linked, 4), (true, "segment 4".to_owned()));
    // Each refusal comes before anything is written.
    let refused = |why: &str| {
        let again = tmp.path().join("again");
        let out = run_recipe(&script, &again);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{why}");
        assert!(err.contains(why), "{err}");
        assert!(!again.exists(), "{why}");
    };
    // Another segment 5 in the directory read first: restore_command would serve it.
    std::fs::write(old.join(segment_file_name(1, 5, 16 << 20)), "not segment 5").unwrap();
    refused("is not the archived file");
    // The same bytes, compressed there: not the file the catalog recorded.
    std::fs::remove_file(old.join(segment_file_name(1, 5, 16 << 20))).unwrap();
    archive_segment(&old, 5, true);
    refused("would read");
    std::fs::remove_file(old.join(format!("{}.zst", segment_file_name(1, 5, 16 << 20)))).unwrap();
    // A segment in neither directory.
    std::fs::remove_file(new.join(segment_file_name(1, 6, 16 << 20))).unwrap();
    refused("is in none of the archive directories");
}

/// A recipe that stops after extracting the backup (here: its recovery settings cannot be
/// written, `postgresql.auto.conf` being a directory) leaves a directory without
/// `global/pg_control`, which PostgreSQL refuses to start, rather than one that would start as
/// the backup alone; the control file waits under its staged name.
#[test]
fn a_recipe_stopped_before_its_end_leaves_no_control_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("global")).unwrap();
    std::fs::create_dir_all(src.join("postgresql.auto.conf")).unwrap();
    std::fs::write(src.join("PG_VERSION"), "15\n").unwrap();
    std::fs::write(src.join("global/pg_control"), "control\n").unwrap();
    let base = root.join("base.tar");
    // Named with ./ as `tar -C dir .` writes them: the control file is still staged.
    make_tar(&base, &src, &["."]);
    let (out, restored) = run_tar_recipe(tmp.path(), &base);
    assert!(!out.status.success());
    assert!(restored.join("PG_VERSION").is_file());
    assert!(!restored.join("global/pg_control").exists());
    assert_eq!(
        std::fs::read_to_string(restored.join("global/pg_control.restored")).unwrap(),
        "control\n"
    );
}

/// A backed-up configuration that moves the data directory (as `postgres -C data_directory`
/// reports it, here a stand-in `postgres` named by POSTGRES) is refused after the files are in
/// place, and the control file removed, so that the directory cannot start on another one; the
/// same directory, or a configuration that cannot be read, lets the recipe finish (the latter
/// with a caution).
#[test]
fn a_recipe_refuses_a_configuration_that_moves_the_data_directory() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let base = tar_base(tmp.path(), &root);
    let script = tmp.path().join("recipe.sh");
    std::fs::write(
        &script,
        recipe(&time_recipe(&base, &[], Vec::new())).unwrap(),
    )
    .unwrap();
    let postgres = tmp.path().join("postgres");
    let run = |n: usize, says: &str| {
        // Called as `postgres -C data_directory -D DIR [-c config_file=/dev/null]`.
        std::fs::write(&postgres, format!("#!/bin/sh\n{says}\n")).unwrap();
        std::fs::set_permissions(&postgres, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = tmp.path().join(format!("restored{n}"));
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg(&dir)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("POSTGRES", &postgres)
            .output()
            .unwrap();
        (out, dir)
    };
    let (out, dir) = run(1, "echo /var/lib/elsewhere");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("its configuration moves the data directory to /var/lib/elsewhere"),
        "{err}"
    );
    assert!(!dir.join("global/pg_control").exists());
    assert!(!dir.join("global/pg_control.restored").exists());
    // The directory itself, however spelt (`DIR/.`), and with no postgresql.conf of its own
    // (the tar has none) read with an empty configuration file.
    let (out, dir) = run(
        2,
        r#"[ "$1 $2 $3 $5 $6" = "-C data_directory -D -c config_file=/dev/null" ] && echo "$4/.""#,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("caution"), "{err}");
    assert!(dir.join("global/pg_control").is_file());
    // What the configuration makes postgres print reaches the terminal without its control
    // characters.
    let (out, _) = run(4, r#"printf '/var/lib/\033[2Jelsewhere\n'"#);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("moves the data directory to /var/lib/?[2Jelsewhere;"),
        "{err}"
    );
    // Not read: said, and the restore stands.
    let (out, dir) = run(3, "echo 'FATAL: bad setting' >&2; exit 1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("could not read the backed-up configuration within 30 s, so its data_directory is unchecked: FATAL: bad setting"),
        "{err}"
    );
    assert!(dir.join("global/pg_control").is_file());
    // No such postgres: said, and the restore stands.
    let dir = tmp.path().join("restored5");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("POSTGRES", tmp.path().join("no-such-postgres"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("no-such-postgres not found, so the backed-up configuration's data_directory is unchecked"),
        "{err}"
    );
    assert!(dir.join("global/pg_control").is_file());
}

/// A tar holding a symlink (here `postgresql.auto.conf` leading to another cluster's file):
/// the recipe stops after extracting, before it appends through the link; the file it leads
/// to is untouched and the directory cannot start.
#[test]
fn a_recipe_refuses_a_tar_with_a_link_before_writing_through_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let victim = tmp.path().join("production.auto.conf");
    std::fs::write(&victim, "# production\n").unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("global")).unwrap();
    std::fs::write(src.join("PG_VERSION"), "15\n").unwrap();
    std::fs::write(src.join("global/pg_control"), "control\n").unwrap();
    std::os::unix::fs::symlink(&victim, src.join("postgresql.auto.conf")).unwrap();
    let base = root.join("base.tar");
    make_tar(
        &base,
        &src,
        &["PG_VERSION", "postgresql.auto.conf", "global"],
    );
    let (out, restored) = run_tar_recipe(tmp.path(), &base);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("neither a regular file nor a directory"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "# production\n");
    assert!(!restored.join("recovery.signal").exists());
    assert!(!restored.join("global/pg_control").exists());
}

/// A native chain manifest (its sha256 the catalog's, its content forged) that names the
/// control file in another spelling, or a restore's own file, is refused before that line is
/// written; the directory cannot start.  The plain manifest restores, the control file last.
#[test]
fn a_native_recipe_refuses_other_spellings_of_the_control_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("backup 5");
    std::fs::create_dir_all(dir.join("data/global")).unwrap();
    std::fs::write(dir.join("data/PG_VERSION"), "15\n").unwrap();
    std::fs::write(dir.join("data/global/pg_control"), "control\n").unwrap();
    std::fs::write(dir.join("backup_manifest"), "{}\n").unwrap();
    let sum = |p: &str| sha256_of(&dir.join("data").join(p));
    let run = |control_path: &str| {
        let manifest = format!(
            "backup_mgmt chain manifest\n\
             d\tglobal\t\t\t\t\t\n\
             f\tPG_VERSION\t3\t0\t{}\t5\tdata/PG_VERSION\n\
             f\t{control_path}\t8\t0\t{}\t5\tdata/global/pg_control\n",
            sum("PG_VERSION"),
            sum("global/pg_control"),
        );
        std::fs::write(dir.join(FILES_MANIFEST), &manifest).unwrap();
        let input = RecipeInput {
            system_identifier: 42,
            backup_id: 5,
            base: Base::Native {
                dir: dir.to_string_lossy().into_owned(),
                manifest_sha256: sha256_of(&dir.join(FILES_MANIFEST)),
                holders: vec![(5, dir.to_string_lossy().into_owned())],
            },
            archive_dirs: Vec::new(),
            wal: Vec::new(),
            target: Target::Immediate,
            timeline: None,
            pg_major: 15,
        };
        let script = tmp.path().join("native.sh");
        std::fs::write(&script, recipe(&input).unwrap()).unwrap();
        let restored = tmp.path().join(format!("r{}", control_path.len()));
        let _ = std::fs::remove_dir_all(&restored);
        (run_recipe(&script, &restored), restored)
    };
    let (out, restored) = run("global/pg_control");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(restored.join("global/pg_control")).unwrap(),
        "control\n"
    );
    assert!(!restored.join("global/pg_control.restored").exists());
    // Each refused by the loop itself, before its line is written (not only by the check of
    // the control file at the end).
    for (forged, why) in [
        ("global//pg_control", "refusing the chain manifest's path"),
        ("global/./pg_control", "refusing the chain manifest's path"),
        ("./global/pg_control", "refusing the chain manifest's path"),
        ("global/pg_control/", "refusing the chain manifest's path"),
        ("global/pg_control.restored", "a restore's own name"),
        ("global/pg_control.held-by-restore", "a restore's own name"),
    ] {
        let (out, restored) = run(forged);
        assert!(!out.status.success(), "{forged}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(why),
            "{forged}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!restored.join("global/pg_control").exists(), "{forged}");
        assert!(!restored.join("recovery.signal").exists(), "{forged}");
    }
}

/// A forged tar whose control file is named in another spelling (`global//pg_control`, which
/// the staging rename does not match and extraction still lands as `global/pg_control`): the
/// recipe removes it and refuses before the recovery settings, so the directory cannot start.
#[test]
fn a_recipe_refuses_a_control_file_in_another_spelling() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("global")).unwrap();
    std::fs::write(src.join("PG_VERSION"), "15\n").unwrap();
    std::fs::write(src.join("global/pg_control"), "control\n").unwrap();
    let base = root.join("base.tar");
    make_tar(
        &base,
        &src,
        &[
            "--transform=s,^global/pg_control$,global//pg_control,",
            "PG_VERSION",
            "global",
        ],
    );
    let listed = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&base)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains("global//pg_control\n"));
    let (out, restored) = run_tar_recipe(tmp.path(), &base);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("under another name"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(restored.join("PG_VERSION").is_file());
    assert!(!restored.join("global/pg_control").exists());
    assert!(!restored.join("recovery.signal").exists());
}
