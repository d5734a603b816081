//! Retention against the catalog: previews, applying, the safety rules, bad input (beside
//! `mod.rs`, which had grown past the size of one file).

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[allow(unused_imports)]
    use crate::testing::*;

    /// Retention in the catalog: previews name the rules; applying marks records expired;
    /// pins and the newest verified backup survive a policy that keeps nothing; WAL older than
    /// the oldest retained base backup expires; bad input is refused by name.
    #[pg_test]
    fn retention_previews_applies_and_respects_safety_rules() {
        let dflt = Spi::get_one::<i32>(
            "SELECT keep_daily FROM backup_management.retention_policies WHERE policy_name = 'default'",
        )
        .unwrap();
        assert_eq!(dflt, Some(30));
        Spi::run(
            "INSERT INTO backup_management.retention_policies \
                 (policy_name, keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly) \
             VALUES ('last-1', 1, 0, 0, 0, 0), ('nothing', NULL, 0, 0, 0, 0)",
        )
        .unwrap();
        // Four script-recorded backups (no job): ids a < b < c < d.
        let mut ids = Vec::new();
        for _ in 0..4 {
            let id = start();
            Spi::run_with_args(
                "SELECT backup_mgmt.record_backup_complete($1, 1, repeat('b', 64))",
                &[id.into()],
            )
            .unwrap();
            ids.push(id);
        }
        Spi::run_with_args(
            "SELECT backup_mgmt.pin_backup($1, 'legal hold #7')",
            &[ids[0].into()],
        )
        .unwrap();
        // d's restore test failed; the checksum pass after it does not make d the newest verified.
        add_verification(ids[1], "checksum", "passed", "{}", "0");
        add_verification(ids[3], "restore_test", "failed", "{}", "0");
        add_verification(ids[3], "checksum", "passed", "{}", "0");
        let verdict = |policy: &str, id: i64| {
            Spi::get_two_with_args::<String, Vec<String>>(
                "SELECT action, reasons FROM backup_mgmt.retention_preview(NULL, $1) WHERE backup_id = $2",
                &[policy.into(), id.into()],
            )
            .unwrap()
        };
        let (a, why) = verdict("nothing", ids[0]);
        assert_eq!(a.as_deref(), Some("keep"));
        assert_eq!(why.unwrap(), vec!["pinned: legal hold #7"]);
        let (a, why) = verdict("nothing", ids[1]);
        assert_eq!(a.as_deref(), Some("keep"));
        assert_eq!(
            why.unwrap(),
            vec!["safety: newest verified backup of its database"]
        );
        assert_eq!(verdict("nothing", ids[2]).0.as_deref(), Some("expire"));
        let (a, why) = verdict("last-1", ids[3]);
        assert_eq!(a.as_deref(), Some("keep"));
        assert_eq!(why.unwrap(), vec!["last 1 (#1)"]);
        // Applying 'last-1': c expires (kept for audit, with the reasons), the others stay.
        let expired = Spi::get_one::<i64>(
            "SELECT count(*) FROM backup_mgmt.apply_retention(NULL, 'last-1') WHERE action = 'expire'",
        )
        .unwrap();
        assert_eq!(expired, Some(1));
        let (status, policy) = Spi::get_two_with_args::<String, String>(
            "SELECT status, annotations->>'expired_by_policy' FROM backup_management.backup_records WHERE backup_id = $1",
            &[ids[2].into()],
        )
        .unwrap();
        assert_eq!(
            (status.as_deref(), policy.as_deref()),
            (Some("expired"), Some("last-1"))
        );
        let kept = Spi::get_one_with_args::<i64>(
            "SELECT count(*) FROM backup_management.backup_records WHERE backup_id = ANY($1) AND status = 'completed'",
            &[vec![ids[0], ids[1], ids[3]].into()],
        )
        .unwrap();
        assert_eq!(kept, Some(3));
        // An expired backup cannot be pinned; unknown names are refused.
        assert_fails(
            &format!("SELECT backup_mgmt.pin_backup({}, 'late')", ids[2]),
            "55000",
            "expired",
        );
        assert_fails(
            &format!("SELECT backup_mgmt.pin_backup({}, NULL)", ids[3]),
            "22004",
            "reason",
        );
        assert_fails(
            "SELECT * FROM backup_mgmt.retention_preview('no-such-job')",
            "42704",
            "no-such-job",
        );
        assert_fails(
            "SELECT * FROM backup_mgmt.retention_preview(NULL, 'no-such-policy')",
            "42704",
            "no-such-policy",
        );
        Spi::run("INSERT INTO backup_management.retention_policies (policy_name, time_zone) VALUES ('mars', 'Mars/Olympus')").unwrap();
        assert_fails(
            "SELECT * FROM backup_mgmt.retention_preview(NULL, 'mars')",
            "22023",
            "Mars/Olympus",
        );
        // Unpinned, the pin no longer protects a.
        Spi::run_with_args("SELECT backup_mgmt.unpin_backup($1)", &[ids[0].into()]).unwrap();
        assert_eq!(verdict("nothing", ids[0]).0.as_deref(), Some("expire"));
    }

    /// WAL segments older than the start of the oldest retained base backup expire; newer ones,
    /// and everything when there is no base backup, stay.
    #[pg_test]
    fn wal_before_the_oldest_base_backup_expires() {
        Spi::run(
            "INSERT INTO backup_management.wal_archive \
                 (system_identifier, file_name, timeline_id, segment_number, file_path, file_size, checksum, archived_at) \
             SELECT (SELECT system_identifier FROM pg_control_system()), \
                    '0000000100000000000000' || lpad(to_hex(g), 2, '0'), 1, g, \
                    '/tmp/backup_mgmt_pgtest_root/no-such-wal-' || g, 16777216, repeat('c', 64), now() \
               FROM generate_series(1, 9) g",
        )
        .unwrap();
        let expired = || {
            Spi::get_one::<i64>(
                "SELECT count(*) FROM backup_management.wal_archive WHERE expired_at IS NOT NULL",
            )
            .unwrap()
            .unwrap()
        };
        Spi::run("SELECT * FROM backup_mgmt.apply_retention(NULL, 'default')").unwrap();
        assert_eq!(expired(), 0, "no base backup: nothing expires");
        let id = Spi::get_one::<i64>(
            "SELECT backup_mgmt.record_backup_start('postgres', 'full', 'pg_basebackup', '/tmp/backup_mgmt_pgtest_root/b.tar')",
        )
        .unwrap()
        .unwrap();
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_complete($1, 10, repeat('a', 64))",
            &[id.into()],
        )
        .unwrap();
        Spi::run_with_args(
            "UPDATE backup_management.backup_records \
                SET start_lsn = '0/5000028', stop_lsn = '0/5000100', timeline_id = 1, \
                    system_identifier = (SELECT system_identifier FROM pg_control_system()) \
              WHERE backup_id = $1",
            &[id.into()],
        )
        .unwrap();
        Spi::run("SELECT * FROM backup_mgmt.apply_retention(NULL, 'default')").unwrap();
        // Segments 1-4 go; 5 (where the backup starts) and later stay, and no gap is reported.
        assert_eq!(expired(), 4);
        let gaps = Spi::get_one::<i64>("SELECT count(*) FROM backup_mgmt.wal_gaps").unwrap();
        assert_eq!(gaps, Some(0));
    }

    /// The newest verified backup that the safety rule keeps is verified as a whole: an
    /// incremental that passed its checksum, whose full failed its restore test, restores
    /// nothing; the older chain that does is the one kept.
    #[pg_test]
    fn the_newest_verified_backup_is_verified_with_its_ancestors() {
        Spi::run(
            "INSERT INTO backup_management.retention_policies \
                 (policy_name, keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly) \
             VALUES ('none-kept', NULL, 0, 0, 0, 0)",
        )
        .unwrap();
        let native = |kind: &str, name: &str, hours: i32, parent: Option<i64>| {
            Spi::get_one::<i64>(&format!(
                "INSERT INTO backup_management.backup_records
                     (database_name, backup_type, backup_method, backup_file_path, status, start_time,
                      end_time, duration, checksum, origin, parent_backup_id)
                 VALUES ('chains', '{kind}', 'native_physical', '/tmp/backup_mgmt_pgtest_root/{name}',
                         'completed', now() - interval '{hours} hours', now() - interval '{hours} hours',
                         '0', repeat('d', 64), 'worker', {})
                 RETURNING backup_id",
                parent.map_or("NULL".to_owned(), |p| p.to_string())
            ))
            .unwrap()
            .unwrap()
        };
        let old = native("full", "old", 30, None);
        let full = native("full", "full", 20, None);
        let incr = native("incremental", "incr", 10, Some(full));
        add_verification(old, "checksum", "passed", "{}", "0");
        add_verification(full, "restore_test", "failed", "{}", "0");
        add_verification(incr, "checksum", "passed", "{}", "0");
        let verdict = |id: i64| {
            Spi::get_two_with_args::<String, Vec<String>>(
                "SELECT action, reasons FROM backup_mgmt.retention_preview(NULL, 'none-kept') WHERE backup_id = $1",
                &[id.into()],
            )
            .unwrap()
        };
        let (action, why) = verdict(old);
        assert_eq!(action.as_deref(), Some("keep"));
        assert_eq!(
            why.unwrap(),
            vec!["safety: newest verified backup of its database"]
        );
        assert_eq!(verdict(incr).0.as_deref(), Some("expire"));
        assert_eq!(verdict(full).0.as_deref(), Some("expire"));
    }
}
