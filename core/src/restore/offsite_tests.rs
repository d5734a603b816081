use super::*;

/// `choose` for a host with no pg_combinebackup, staying on the backups' timelines.
fn pick(m: &Mirror, goal: &Goal, id: Option<i64>) -> Result<Choice, OffsiteRestoreError> {
    choose(m, goal, id, TarChains::PassOver, &Timelines::default())
}

fn mirror() -> Mirror {
    let wal = |n: u32, at: &str| MirrorWal {
        name: format!("0000000100000000{n:08X}"),
        key: format!("7/.wal/0000000100000000{n:08X}.zst"),
        size: 100,
        sha256: "a".repeat(64),
        archived_at: at.into(),
    };
    let backup = |id: i64, parent: Option<i64>, start: &str, stop: &str, end: &str| MirrorBackup {
        backup_id: id,
        database_name: "postgres".into(),
        backup_type: if parent.is_some() {
            "incremental"
        } else {
            "full"
        }
        .into(),
        backup_method: "native_physical".into(),
        key: format!("7/postgres/{id}.native"),
        size: Some(1),
        sha256: Some("b".repeat(64)),
        compression: None,
        parent_backup_id: parent,
        pg_version: None,
        timeline_id: Some(1),
        start_time: None,
        end_time: Some(end.into()),
        label: None,
        globals_key: None,
        globals_sha256: None,
        start_lsn: Some(start.into()),
        stop_lsn: Some(stop.into()),
        start_wal_segment: None,
        stop_wal_segment: None,
        pinned: None,
        verification: None,
        verified_at: None,
        failed_locally: None,
    };
    Mirror {
        format: FORMAT.into(),
        written_at: "2026-12-04T10:00:00+00:00".into(),
        system_identifier: 7,
        pg_version: Some(150000),
        wal_segment_size: Some(16 << 20),
        target: None,
        backups: vec![
            backup(
                1,
                None,
                "0/2000028",
                "0/2000100",
                "2026-12-04T09:00:00+00:00",
            ),
            backup(
                2,
                Some(1),
                "0/4000028",
                "0/4000100",
                "2026-12-04T09:30:00+00:00",
            ),
        ],
        wal_files: vec![
            wal(2, "2026-12-04T09:00:00+00:00"),
            wal(3, "2026-12-04T09:10:00+00:00"),
            wal(4, "2026-12-04T09:30:00+00:00"),
            wal(5, "2026-12-04T09:50:00+00:00"),
        ],
        wal_parts: vec![],
        wal_gaps: vec![],
    }
}

#[test]
fn newest_backup_before_the_goal_with_its_wal() {
    let m = mirror();
    let t = parse_time("2026-12-04 09:40:00+00").unwrap();
    let c = pick(&m, &Goal::Time(t), None).unwrap();
    assert_eq!(c.backup.backup_id, 2);
    assert_eq!(
        c.chain.iter().map(|b| b.backup_id).collect::<Vec<_>>(),
        [1, 2]
    );
    // From the incremental's start to the first segment archived after the target.
    assert_eq!(c.wal.len(), 2, "{:?}", c.wal);
    // Before the incremental ended: the full, with every segment from its start.
    let t = parse_time("2026-12-04T09:20:00Z").unwrap();
    let c = pick(&m, &Goal::Time(t), None).unwrap();
    assert_eq!(c.backup.backup_id, 1);
    assert_eq!(c.wal.len(), 3);
    assert!(!c.why.contains("backup 2"), "{}", c.why);
    // Before any backup ended: nothing to start from, and it says why.
    let t = parse_time("2026-12-04T08:00:00Z").unwrap();
    let e = pick(&m, &Goal::Time(t), None).unwrap_err().to_string();
    assert!(e.contains("1: ends after the goal"), "{e}");
}

#[test]
fn a_verified_chain_is_preferred_as_plan_recovery_prefers_it() {
    let mut m = mirror();
    // Nothing verified: the newest, said so.
    let c = pick(&m, &Goal::Latest, None).unwrap();
    assert_eq!(c.backup.backup_id, 2);
    assert!(
        c.why
            .contains("and this one is not: backup 2 has no passed verification"),
        "{}",
        c.why
    );
    // The full passed, the incremental was never verified: the full, and why not the
    // incremental.
    m.backups[0].verification = Some("passed".into());
    let c = pick(&m, &Goal::Latest, None).unwrap();
    assert_eq!(c.backup.backup_id, 1, "{}", c.why);
    assert!(
        c.why.contains(
            "its whole chain passed verification; newer ones not used: backup 2: not verified \
             as a whole (backup 2 has no passed verification)"
        ),
        "{}",
        c.why
    );
    // Both passed: the incremental.
    m.backups[1].verification = Some("passed".into());
    let c = pick(&m, &Goal::Latest, None).unwrap();
    assert_eq!(c.backup.backup_id, 2);
    assert!(
        c.why.contains("its whole chain passed verification"),
        "{}",
        c.why
    );
    // The full failed: neither.
    m.backups[0].verification = Some("failed".into());
    let e = pick(&m, &Goal::Latest, None).unwrap_err().to_string();
    assert!(e.contains("backup 2: backup 1 of its chain failed"), "{e}");
}

#[test]
fn gaps_and_damaged_parents_pass_a_backup_over() {
    let mut m = mirror();
    m.wal_files.retain(|w| !w.name.ends_with("03"));
    let t = parse_time("2026-12-04T09:40:00Z").unwrap();
    // The incremental needs only 4 and 5; the full would need 3.
    assert_eq!(pick(&m, &Goal::Time(t), None).unwrap().backup.backup_id, 2);
    let e = pick(&m, &Goal::Time(t), Some(1)).unwrap_err().to_string();
    assert!(
        e.contains("000000010000000000000003 is not on the target"),
        "{e}"
    );
    m.backups[0].verification = Some("failed".into());
    let e = pick(&m, &Goal::Time(t), None).unwrap_err().to_string();
    assert!(e.contains("failed verification"), "{e}");
    // Failed reading the source host's own copy (after a failover, the new primary finds the
    // old one's local files missing): not the backup's fault, and not this copy's, which was
    // checked when it landed and is checked again as it is restored.  Usable, but not counted
    // as verified, and said so.
    m.backups[0].failed_locally = Some(true);
    m.backups[1].verification = Some("passed".into());
    let c = pick(&m, &Goal::Time(t), None).unwrap();
    assert_eq!(c.backup.backup_id, 2);
    assert!(
        c.why.contains(
            "backup 1's verification failed only because the source host's own copy is missing"
        ),
        "{}",
        c.why
    );
    // A passed chain still comes first.
    let mut passed = m.clone();
    passed.backups.push(MirrorBackup {
        backup_id: 3,
        parent_backup_id: None,
        backup_type: "full".into(),
        verification: Some("passed".into()),
        failed_locally: None,
        // Older than backup 2: chosen only because it passed.
        start_lsn: Some("0/4000010".into()),
        stop_lsn: Some("0/4000050".into()),
        end_time: Some("2026-12-04T09:20:00+00:00".into()),
        ..passed.backups[1].clone()
    });
    let c = pick(&passed, &Goal::Time(t), None).unwrap();
    assert_eq!(c.backup.backup_id, 3, "{}", c.why);
    m.backups[0].failed_locally = Some(false);
    let e = pick(&m, &Goal::Time(t), None).unwrap_err().to_string();
    assert!(e.contains("failed verification"), "{e}");
    m.backups.remove(0);
    let e = pick(&m, &Goal::Latest, None).unwrap_err().to_string();
    assert!(e.contains("parent 1 is not on the target"), "{e}");
}

#[test]
fn the_target_time_must_have_wal_after_it() {
    let m = mirror();
    let t = parse_time("2026-12-04T11:00:00Z").unwrap();
    let e = pick(&m, &Goal::Time(t), None).unwrap_err().to_string();
    assert!(e.contains("no WAL archived at or after"), "{e}");
    assert_eq!(pick(&m, &Goal::Latest, None).unwrap().wal.len(), 2);
    assert!(parse_time("yesterday").is_none());
}

#[test]
fn a_pg_basebackup_chain_is_chosen_only_where_it_can_be_combined() {
    let mut m = mirror();
    for b in &mut m.backups {
        b.backup_method = "pg_basebackup".into();
        b.key = format!("7/postgres/{}.tar.zst", b.backup_id);
    }
    // No pg_combinebackup here: the full and more WAL, and why not the incremental.
    let c = pick(&m, &Goal::Latest, None).unwrap();
    assert_eq!((c.backup.backup_id, c.chain.len()), (1, 1), "{}", c.why);
    assert!(
        c.why.contains("backup 2: a pg_basebackup incremental") && c.why.contains("--pg-bin"),
        "{}",
        c.why
    );
    let e = pick(&m, &Goal::Latest, Some(2)).unwrap_err().to_string();
    assert!(e.contains("needs pg_combinebackup"), "{e}");
    // With one: the incremental, its chain full first, WAL from its own start.
    let c = choose(
        &m,
        &Goal::Latest,
        None,
        TarChains::Combine,
        &Timelines::default(),
    )
    .unwrap();
    let ids: Vec<i64> = c.chain.iter().map(|b| b.backup_id).collect();
    assert_eq!((c.backup.backup_id, ids), (2, vec![1, 2]), "{}", c.why);
    assert_eq!(c.wal.len(), 2, "{}", c.why);
    // A chain mixing methods is no chain of either.
    m.backups[0].backup_method = "native_physical".into();
    let e = choose(
        &m,
        &Goal::Latest,
        Some(2),
        TarChains::Combine,
        &Timelines::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("backup 1 of its chain is a native_physical backup"),
        "{e}"
    );
}

/// After a failover: timeline 2 branched off timeline 1 in segment 5 (whose timeline-1 copy the
/// old primary archived too).  Recovery past it reads timeline 1 up to segment 4, then timeline
/// 2's files, and every one of those must be there.
#[test]
fn recovery_follows_the_timelines_after_a_failover() {
    let mut m = mirror();
    let tl2 = |n: u32| MirrorWal {
        name: format!("0000000200000000{n:08X}"),
        key: format!("7/.wal/0000000200000000{n:08X}.zst"),
        size: 100,
        sha256: "a".repeat(64),
        archived_at: "2026-12-04T10:00:00+00:00".into(),
    };
    m.wal_files.extend((5..=8).map(tl2));
    let switched = |target| Timelines {
        target,
        histories: [(
            2,
            crate::timeline::parse_history(2, "1\t0/50000A0\tno recovery target specified\n")
                .map_err(|e| crate::timeline::HistoryUnusable::NotAHistory {
                    file: "a history".into(),
                    why: e.into(),
                }),
        )]
        .into(),
    };
    let along = |m: &Mirror, goal: &Goal, id: Option<i64>, t: TargetTimeline| {
        choose(m, goal, id, TarChains::PassOver, &switched(t))
    };
    let names = |c: &Choice| {
        c.wal
            .iter()
            .map(|w| w.name[7..8].to_owned() + &w.name[22..])
            .collect::<Vec<_>>()
    };
    let c = along(&m, &Goal::Latest, None, TargetTimeline::Latest).unwrap();
    assert_eq!(c.path.target(), 2);
    assert_eq!(names(&c), ["104", "205", "206", "207", "208"]);
    assert!(
        c.why.ends_with("along timelines 1 -> 2 (from 0/50000A0)"),
        "{}",
        c.why
    );
    // Staying on the backup's timeline reads its own copy of segment 5, and ends there.
    let c = along(&m, &Goal::Latest, None, TargetTimeline::Current).unwrap();
    assert_eq!(c.path.target(), 1);
    assert_eq!(names(&c), ["104", "105"]);
    // A location on timeline 2 is reached along the path; not on timeline 1, which has no WAL
    // that far.
    let goal = Goal::Lsn(Lsn::parse("0/7000010").unwrap());
    let c = along(&m, &goal, None, TargetTimeline::Id(2)).unwrap();
    assert_eq!(names(&c), ["104", "205", "206", "207"]);
    // A location before the switch but in its segment, whose timeline-1 copy is only a
    // .partial after a failover: read from timeline 2's copy, as PostgreSQL does.
    let mut partial = m.clone();
    partial
        .wal_files
        .retain(|w| w.name != "000000010000000000000005");
    let goal_in_five = Goal::Lsn(Lsn::parse("0/5000050").unwrap());
    let c = along(&partial, &goal_in_five, None, TargetTimeline::Latest).unwrap();
    assert_eq!(c.path.target(), 2);
    assert_eq!(names(&c), ["104", "205"]);
    let e = along(&m, &goal, None, TargetTimeline::Current)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("WAL segment 000000010000000000000006 is not on the target"),
        "{e}"
    );
    // A hole in timeline 2 is a hole in the restore, named on its timeline (before, only the
    // backup's timeline was looked at, and recovery would have ended early at the hole).
    m.wal_files.retain(|w| w.name != "000000020000000000000007");
    let e = along(&m, &Goal::Latest, None, TargetTimeline::Latest)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("WAL segment 000000020000000000000007 is not on the target"),
        "{e}"
    );
    // Timeline 2's history without any of its WAL (or only later segments): recovery would end
    // on timeline 1 short of the switch, so the switch's segment is named as missing.
    let without_two: Vec<MirrorWal> = m.wal_files.clone();
    m.wal_files.retain(|w| !w.name.starts_with("00000002"));
    for names in [vec![], vec!["000000020000000000000008"]] {
        let mut holed = m.clone();
        holed.wal_files.extend(
            without_two
                .iter()
                .filter(|w| names.contains(&w.name.as_str()))
                .cloned(),
        );
        let e = along(&holed, &Goal::Latest, None, TargetTimeline::Latest)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("WAL segment 000000020000000000000005 is not on the target"),
            "{names:?}: {e}"
        );
    }
    m.wal_files = without_two;
    // A backup that ended after timeline 1 was left is not on timeline 2's path: latest stays
    // on timeline 1 for it (whose segment 6 is then needed), and asking for timeline 2 says
    // why not.
    m.backups[1].stop_lsn = Some("0/6000100".into());
    m.wal_files.push(MirrorWal {
        name: "000000010000000000000006".into(),
        ..m.wal_files[0].clone()
    });
    let c = along(&m, &Goal::Latest, Some(2), TargetTimeline::Latest).unwrap();
    assert_eq!(c.path.target(), 1);
    // ... and says that it passed timeline 2 over, which may be where the cluster lives now.
    assert!(
        c.why
            .contains("passed over newer timeline 2, which does not continue from this backup"),
        "{}",
        c.why
    );
    let c = along(&m, &Goal::Latest, Some(2), TargetTimeline::Current).unwrap();
    assert!(!c.why.contains("passed over"), "{}", c.why);
    // Two such branches are both named; an LSN goal's path is cut there, so none is.
    let mut two = switched(TargetTimeline::Latest);
    two.histories.insert(
        3,
        crate::timeline::parse_history(3, "1\t0/5000010\tno recovery target specified\n").map_err(
            |e| crate::timeline::HistoryUnusable::NotAHistory {
                file: "a history".into(),
                why: e.into(),
            },
        ),
    );
    let c = choose(&m, &Goal::Latest, Some(2), TarChains::PassOver, &two).unwrap();
    assert!(
        c.why
            .contains("passed over newer timelines 2, 3, which do not continue"),
        "{}",
        c.why
    );
    let at = Goal::Lsn(Lsn::parse("0/6000200").unwrap());
    let c = choose(&m, &at, Some(2), TarChains::PassOver, &two).unwrap();
    assert!(!c.why.contains("passed over"), "{}", c.why);
    let e = choose(
        &m,
        &Goal::Latest,
        Some(2),
        TarChains::PassOver,
        &switched(TargetTimeline::Id(2)),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("leaves timeline 1 at 0/50000A0, before the backup ended at 0/6000100"),
        "{e}"
    );
}

/// A time goal on timeline 2 after a failover, where the old timeline's last whole segment was
/// archived late (after the goal): the check goes on along timeline 2 to the first segment
/// archived after the goal past those archived before it.  Before, it ended at the late
/// timeline-1 segment and never looked at timeline 2, so a hole there passed.
#[test]
fn a_late_archived_segment_does_not_end_a_time_goals_check() {
    let mut m = mirror();
    m.wal_files
        .iter_mut()
        .find(|w| w.name == "000000010000000000000004")
        .unwrap()
        .archived_at = "2026-12-04T10:40:00+00:00".into();
    m.wal_files.extend(
        [(5, "10:00"), (6, "10:10"), (7, "10:20"), (8, "10:30")].map(|(n, at)| MirrorWal {
            name: format!("0000000200000000{n:08X}"),
            key: format!("7/.wal/0000000200000000{n:08X}"),
            size: 100,
            sha256: "a".repeat(64),
            archived_at: format!("2026-12-04T{at}:00+00:00"),
        }),
    );
    let timelines = Timelines {
        target: TargetTimeline::Latest,
        histories: [(
            2,
            crate::timeline::parse_history(2, "1\t0/50000A0\tno recovery target specified\n")
                .map_err(|e| crate::timeline::HistoryUnusable::NotAHistory {
                    file: "a history".into(),
                    why: e.into(),
                }),
        )]
        .into(),
    };
    let goal = Goal::Time(parse_time("2026-12-04 10:15:00+00").unwrap());
    let c = choose(&m, &goal, None, TarChains::PassOver, &timelines).unwrap();
    assert_eq!(c.backup.backup_id, 2);
    let names: Vec<&str> = c.wal.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "000000010000000000000004",
            "000000020000000000000005",
            "000000020000000000000006",
            "000000020000000000000007"
        ]
    );
    m.wal_files.retain(|w| w.name != "000000020000000000000006");
    let e = choose(&m, &goal, None, TarChains::PassOver, &timelines)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("WAL segment 000000020000000000000006 is not on the target"),
        "{e}"
    );
}

/// A mirror is input: one listing thousands of backups in one long chain (each a candidate
/// whose chain is walked), a chain that comes back on itself, or an id listed twice, is judged
/// as any other, each candidate's chain looked up by id rather than by walking the mirror.
#[test]
fn long_looping_and_repeated_chains_are_judged_by_id() {
    let mut m = mirror();
    let template = m.backups[1].clone();
    m.backups.truncate(1);
    m.wal_files.clear();
    let n = 3000;
    m.backups.extend((2..=n).map(|id| {
        let mut b = template.clone();
        b.backup_id = id;
        b.parent_backup_id = Some(id - 1);
        b.stop_lsn = Some(format!("0/{:X}", 0x400_0100 + id));
        b
    }));
    let e = pick(&m, &Goal::Latest, None).unwrap_err().to_string();
    assert!(e.contains(&format!("backup {n}: WAL segment")), "{e}");
    // Backup 1 names n as its parent: every chain comes back on itself.
    m.backups[0].parent_backup_id = Some(n);
    let e = pick(&m, &Goal::Latest, Some(n)).unwrap_err().to_string();
    assert!(e.contains(&format!("backup {n}'s chain loops")), "{e}");
    // Two entries for one id: the first listed counts, as Mirror::backup says.
    let mut m = mirror();
    let mut other = m.backups[0].clone();
    other.verification = Some("failed".into());
    m.backups.push(other);
    let c = pick(&m, &Goal::Latest, Some(2)).unwrap();
    assert_eq!(
        c.chain.iter().map(|b| b.backup_id).collect::<Vec<_>>(),
        [1, 2]
    );
}
