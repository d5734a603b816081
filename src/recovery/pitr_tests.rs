//! `plan_recovery` and `restore_recipe` against the catalog (beside `pitr`, which had grown past
//! the size of one file).

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

    /// Records a checksum verification of backup `id` with `status`.
    fn verify(id: i64, status: &str) {
        add_verification(id, "checksum", status, "{}", "0");
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
                "backup {parent}: its ancestor {full} failed verification"
            )),
            "{reason}"
        );
    }

    /// The chain functions have no SET clause (so that the planner inlines them) and so run
    /// under their caller's search_path: a schema ahead of pg_catalog with its own `=`, `<>`,
    /// `+` and `format` (a backup_admin member's own schema, or one a reader put first) changes
    /// none of their answers, for a superuser or for a backup_admin member.
    #[pg_test]
    fn chain_functions_ignore_operators_ahead_of_pg_catalog() {
        let full = native("full", "h-full", "0/60000", None);
        let incr = native("incremental", "h-incr", "0/90000", Some(full));
        verify(full, "failed");
        for sql in [
            "CREATE SCHEMA bm_evil",
            "GRANT USAGE ON SCHEMA bm_evil TO PUBLIC",
            "CREATE FUNCTION bm_evil.yes(bigint, bigint) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true'",
            "CREATE OPERATOR bm_evil.= (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = bm_evil.yes)",
            "CREATE FUNCTION bm_evil.yes(text, text) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT true'",
            "CREATE OPERATOR bm_evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = bm_evil.yes)",
            "CREATE FUNCTION bm_evil.no(text, text) RETURNS boolean LANGUAGE sql IMMUTABLE AS 'SELECT false'",
            "CREATE OPERATOR bm_evil.<> (LEFTARG = text, RIGHTARG = text, FUNCTION = bm_evil.no)",
            "CREATE FUNCTION bm_evil.plus(integer, integer) RETURNS integer LANGUAGE sql IMMUTABLE AS 'SELECT 20000'",
            "CREATE OPERATOR bm_evil.+ (LEFTARG = integer, RIGHTARG = integer, FUNCTION = bm_evil.plus)",
            "CREATE FUNCTION bm_evil.format(text, bigint) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT ''hijacked'''",
            "CREATE ROLE bm_test_chain IN ROLE backup_admin",
        ] {
            Spi::run(sql).unwrap();
        }
        let answers = || {
            let members = Spi::get_one::<String>(&format!(
                "SELECT string_agg(backup_id || ':' || depth, ',' ORDER BY depth) FROM backup_mgmt.backup_chain({incr})"
            ))
            .unwrap();
            let problem =
                Spi::get_one::<String>(&format!("SELECT backup_mgmt.chain_problem({incr})"))
                    .unwrap();
            let unverified =
                Spi::get_one::<String>(&format!("SELECT backup_mgmt.chain_unverified({incr})"))
                    .unwrap();
            (members, problem, unverified)
        };
        let honest = answers();
        assert_eq!(
            honest,
            (
                Some(format!("{incr}:0,{full}:1")),
                Some(format!("its ancestor {full} failed verification")),
                Some(format!("backup {incr} has no passed verification")),
            )
        );
        Spi::run("SET LOCAL search_path = bm_evil, pg_catalog").unwrap();
        assert_eq!(answers(), honest, "as a superuser");
        Spi::run("SET LOCAL ROLE bm_test_chain").unwrap();
        assert_eq!(answers(), honest, "as a backup_admin member");
    }

    /// A base whose restore test failed is not used while that failure stands: the worker's
    /// routine checksum pass afterwards (the bytes are the ones recorded) and a pg_verifybackup
    /// pass do not overturn it; a restore test that passes does.
    #[pg_test]
    fn a_checksum_pass_does_not_overturn_a_failed_restore_test() {
        let old = native("full", "old", "0/30000", None);
        verify(old, "passed");
        let full = native("full", "full", "0/60000", None);
        let record = |kind: &str, status: &str| {
            add_verification(full, kind, status, r#"{"stage": "data_verification"}"#, "0");
        };
        let base = || {
            Spi::get_one::<i64>(
                "SELECT base_backup_id FROM backup_mgmt.plan_recovery_lsn('0/A000000')",
            )
            .unwrap()
        };
        record("restore_test", "failed");
        verify(full, "passed");
        assert_eq!(base(), Some(old));
        // Nor does an incremental build on it.
        let incr = native("incremental", "incr", "0/90000", Some(full));
        assert_eq!(
            base(),
            Some(old),
            "incremental {incr} builds on a failed full"
        );
        record("pg_verifybackup", "passed");
        assert_eq!(base(), Some(old));
        record("restore_test", "passed");
        verify(incr, "passed");
        assert_eq!(base(), Some(incr));
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

    /// The archive holds a timeline 2 (its history file, its segments, a backup on it) that this
    /// server is not on: a branch abandoned after a failover drill, say.  A plan ends on this
    /// server's timeline: it passes the backup of the other branch over, takes timeline 1's own
    /// segments (the branch's hole does not matter), and pins 'current'.  The archived history
    /// file is read beneath its root and checked: one that is not what was archived, lost, or
    /// recorded outside the archive is a reason, quoted.
    #[pg_test]
    fn plans_keep_to_this_servers_timeline() {
        let sysid = Spi::get_one::<i64>("SELECT system_identifier FROM pg_control_system()")
            .unwrap()
            .unwrap();
        let dir = format!("{TEST_ROOT}/wal/{}", sysid as u64);
        std::fs::create_dir_all(&dir).unwrap();
        let history = "1\t0/5800000\tno recovery target specified\n";
        // Removed however the test ends: the directory is shared with other tests.
        struct Remove(String);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let history_path = Remove(format!("{dir}/00000002.history"));
        std::fs::write(&history_path.0, history).unwrap();
        let add = |name: &str, tli: Option<i32>, number: Option<i64>, sha: &str, size: i64| {
            Spi::run_with_args(
                "INSERT INTO backup_management.wal_archive \
                     (system_identifier, file_name, timeline_id, segment_number, file_path, \
                      file_size, checksum, archived_at) \
                 VALUES ($1, $2, $3, $4, $5 || '/' || $2, $6, $7, now())",
                &[
                    sysid.into(),
                    name.into(),
                    tli.into(),
                    number.into(),
                    dir.as_str().into(),
                    size.into(),
                    sha.into(),
                ],
            )
            .unwrap();
        };
        let seg = |tli: i32, n: i64| format!("{tli:08X}{:08X}{n:08X}", 0);
        let full = native("full", "tlfull", "0/30000", None);
        for n in 3..=7 {
            add(&seg(1, n), Some(1), Some(n), &"a".repeat(64), 16 << 20);
        }
        let sha = Spi::get_one_with_args::<String>(
            "SELECT encode(sha256(convert_to($1, 'UTF8')), 'hex')",
            &[history.into()],
        )
        .unwrap()
        .unwrap();
        add("00000002.history", None, None, &sha, history.len() as i64);
        // Timeline 2 has a hole at 6, and a newer backup.
        for n in [5, 7] {
            add(&seg(2, n), Some(2), Some(n), &"b".repeat(64), 16 << 20);
        }
        let other = native("full", "tlother", "0/60000", None);
        Spi::run_with_args(
            "UPDATE backup_management.backup_records SET timeline_id = 2 WHERE backup_id = $1",
            &[other.into()],
        )
        .unwrap();
        let (base, files, recipe) = Spi::get_three::<i64, String, String>(
            "SELECT base_backup_id, coalesce(last_wal_file, '') || ' ' || wal_files || ' ' || \
                    array_to_string(missing_wal_files, ','), coalesce(recipe, reason) \
               FROM backup_mgmt.plan_recovery_lsn('0/7000010')",
        )
        .unwrap();
        let recipe = recipe.unwrap();
        assert_eq!(base, Some(full), "{recipe}");
        assert_eq!(files.unwrap(), format!("{} 5 ", seg(1, 7)), "{recipe}");
        assert!(
            recipe.contains("recovery_target_timeline = 'current'"),
            "{recipe}"
        );
        assert!(!recipe.contains("00000002"), "{recipe}");

        // The archived history file, as a plan that follows timeline 2 would read it.
        let read = || {
            Spi::connect(|c| super::super::timelines::archived_history(c, sysid, 2))
                .unwrap()
                .unwrap()
        };
        let ok = read().unwrap();
        assert_eq!(ok.history.len(), 1);
        assert_eq!(ok.listed.sha256, sha);
        assert_eq!(ok.listed.file, "00000002.history");
        std::fs::write(
            &history_path.0,
            "1\t0/9800000\tno recovery target specified\n",
        )
        .unwrap();
        let e = read().unwrap_err().to_string();
        assert!(
            e.contains("00000002.history") && e.contains("sha256"),
            "{e}"
        );
        std::fs::write(&history_path.0, history).unwrap();
        Spi::run(
            "UPDATE backup_management.wal_archive SET lost_at = now(), lost_reason = 'gone' \
              WHERE file_name = '00000002.history'",
        )
        .unwrap();
        assert!(read()
            .unwrap_err()
            .to_string()
            .contains("it is lost (gone)"));
        Spi::run(
            "UPDATE backup_management.wal_archive \
                SET lost_at = NULL, file_path = E'/etc/x\\n/00000002.history' \
              WHERE file_name = '00000002.history'",
        )
        .unwrap();
        let e = read().unwrap_err().to_string();
        assert!(e.contains("not in the WAL archive of a backup root"), "{e}");
        assert!(e.contains("\\n") && !e.contains('\n'), "quoted: {e}");
        assert!(
            Spi::connect(|c| super::super::timelines::archived_history(c, sysid, 3))
                .unwrap()
                .is_none()
        );
    }
}
