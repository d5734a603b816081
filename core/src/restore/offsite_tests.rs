use super::*;

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
        wal_gaps: vec![],
    }
}

#[test]
fn newest_backup_before_the_goal_with_its_wal() {
    let m = mirror();
    let t = parse_time("2026-12-04 09:40:00+00").unwrap();
    let c = choose(&m, &Goal::Time(t), None, TarChains::PassOver).unwrap();
    assert_eq!(c.backup.backup_id, 2);
    assert_eq!(
        c.chain.iter().map(|b| b.backup_id).collect::<Vec<_>>(),
        [1, 2]
    );
    // From the incremental's start to the first segment archived after the target.
    assert_eq!(c.wal.len(), 2, "{:?}", c.wal);
    // Before the incremental ended: the full, with every segment from its start.
    let t = parse_time("2026-12-04T09:20:00Z").unwrap();
    let c = choose(&m, &Goal::Time(t), None, TarChains::PassOver).unwrap();
    assert_eq!(c.backup.backup_id, 1);
    assert_eq!(c.wal.len(), 3);
    assert!(!c.why.contains("backup 2"), "{}", c.why);
    // Before any backup ended: nothing to start from, and it says why.
    let t = parse_time("2026-12-04T08:00:00Z").unwrap();
    let e = choose(&m, &Goal::Time(t), None, TarChains::PassOver)
        .unwrap_err()
        .to_string();
    assert!(e.contains("1: ends after the goal"), "{e}");
}

#[test]
fn a_verified_chain_is_preferred_as_plan_recovery_prefers_it() {
    let mut m = mirror();
    // Nothing verified: the newest, said so.
    let c = choose(&m, &Goal::Latest, None, TarChains::PassOver).unwrap();
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
    let c = choose(&m, &Goal::Latest, None, TarChains::PassOver).unwrap();
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
    let c = choose(&m, &Goal::Latest, None, TarChains::PassOver).unwrap();
    assert_eq!(c.backup.backup_id, 2);
    assert!(
        c.why.contains("its whole chain passed verification"),
        "{}",
        c.why
    );
    // The full failed: neither.
    m.backups[0].verification = Some("failed".into());
    let e = choose(&m, &Goal::Latest, None, TarChains::PassOver)
        .unwrap_err()
        .to_string();
    assert!(e.contains("backup 2: backup 1 of its chain failed"), "{e}");
}

#[test]
fn gaps_and_damaged_parents_pass_a_backup_over() {
    let mut m = mirror();
    m.wal_files.retain(|w| !w.name.ends_with("03"));
    let t = parse_time("2026-12-04T09:40:00Z").unwrap();
    // The incremental needs only 4 and 5; the full would need 3.
    assert_eq!(
        choose(&m, &Goal::Time(t), None, TarChains::PassOver)
            .unwrap()
            .backup
            .backup_id,
        2
    );
    let e = choose(&m, &Goal::Time(t), Some(1), TarChains::PassOver)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("000000010000000000000003 is not on the target"),
        "{e}"
    );
    m.backups[0].verification = Some("failed".into());
    let e = choose(&m, &Goal::Time(t), None, TarChains::PassOver)
        .unwrap_err()
        .to_string();
    assert!(e.contains("failed its newest verification"), "{e}");
    m.backups.remove(0);
    let e = choose(&m, &Goal::Latest, None, TarChains::PassOver)
        .unwrap_err()
        .to_string();
    assert!(e.contains("parent 1 is not on the target"), "{e}");
}

#[test]
fn the_target_time_must_have_wal_after_it() {
    let m = mirror();
    let t = parse_time("2026-12-04T11:00:00Z").unwrap();
    let e = choose(&m, &Goal::Time(t), None, TarChains::PassOver)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no WAL archived at or after"), "{e}");
    assert_eq!(
        choose(&m, &Goal::Latest, None, TarChains::PassOver)
            .unwrap()
            .wal
            .len(),
        2
    );
    assert!(parse_time("yesterday").is_none());
}

fn backup(id: i64, method: &str, db: &str, end: &str) -> MirrorBackup {
    serde_json::from_value(serde_json::json!({
        "backup_id": id, "database_name": db, "backup_type": "full",
        "backup_method": method, "key": format!("1/{db}/{id}.dump.zst"),
        "sha256": "00".repeat(32), "end_time": end,
    }))
    .unwrap()
}

#[test]
fn the_newest_dump_before_the_goal_is_chosen() {
    let mut m: Mirror = serde_json::from_value(serde_json::json!({
        "format": FORMAT, "written_at": "2026-12-04 10:00:00+00",
        "system_identifier": 1,
    }))
    .unwrap();
    m.backups = vec![
        backup(1, "pg_dump", "shop", "2026-12-04 08:00:00+00"),
        backup(2, "native_physical", "postgres", "2026-12-04 08:30:00+00"),
        backup(3, "pg_dump_directory", "shop", "2026-12-04 09:00:00+00"),
        backup(4, "pg_dump", "shop", "2026-12-04 09:30:00+00"),
    ];
    m.backups[3].verification = Some("failed".into());
    assert_eq!(choose_dump(&m, None, None, None).unwrap().backup_id, 3);
    let before = Some("2026-12-04 08:45:00+00");
    assert_eq!(
        choose_dump(&m, None, Some("shop"), before)
            .unwrap()
            .backup_id,
        1
    );
    assert!(choose_dump(&m, None, Some("crm"), None).is_err());
    assert!(
        choose_dump(&m, Some(2), None, None).is_err(),
        "a physical backup"
    );
    assert_eq!(choose_dump(&m, Some(4), None, None).unwrap().backup_id, 4);
    m.backups
        .push(backup(5, "pg_dump", "crm", "2026-12-04 09:40:00+00"));
    let several = choose_dump(&m, None, None, None).unwrap_err().to_string();
    assert!(several.contains("crm, shop"), "{several}");
}

#[test]
fn a_pg_basebackup_chain_is_chosen_only_where_it_can_be_combined() {
    let mut m = mirror();
    for b in &mut m.backups {
        b.backup_method = "pg_basebackup".into();
        b.key = format!("7/postgres/{}.tar.zst", b.backup_id);
    }
    // No pg_combinebackup here: the full and more WAL, and why not the incremental.
    let c = choose(&m, &Goal::Latest, None, TarChains::PassOver).unwrap();
    assert_eq!((c.backup.backup_id, c.chain.len()), (1, 1), "{}", c.why);
    assert!(
        c.why.contains("backup 2: a pg_basebackup incremental") && c.why.contains("--pg-bin"),
        "{}",
        c.why
    );
    let e = choose(&m, &Goal::Latest, Some(2), TarChains::PassOver)
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs pg_combinebackup"), "{e}");
    // With one: the incremental, its chain full first, WAL from its own start.
    let c = choose(&m, &Goal::Latest, None, TarChains::Combine).unwrap();
    let ids: Vec<i64> = c.chain.iter().map(|b| b.backup_id).collect();
    assert_eq!((c.backup.backup_id, ids), (2, vec![1, 2]), "{}", c.why);
    assert_eq!(c.wal.len(), 2, "{}", c.why);
    // A chain mixing methods is no chain of either.
    m.backups[0].backup_method = "native_physical".into();
    let e = choose(&m, &Goal::Latest, Some(2), TarChains::Combine)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("backup 1 of its chain is a native_physical backup"),
        "{e}"
    );
}
