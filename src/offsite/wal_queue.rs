//! What waits for each off-site target: the archived files to copy there and the expired copies
//! to remove, oldest first.  Read from `remote_wal_queue` (0.13.0, kept by triggers, so that a
//! check costs what waits rather than the size of the archive), else, in a catalog not yet
//! updated to it, by comparing `wal_archive` with `remote_wal_records` as 0.12.0 did.

use std::collections::HashSet;
use std::path::PathBuf;

use backup_mgmt_core::storage;
use backup_mgmt_core::verify::archive;
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiError};

use super::wal_copy::{Expired, Pending};

/// Files per batch and target (the rest waits for the next batch, a second later at most).
const BATCH: i64 = 128;

/// Whether the catalog has the queue (0.13.0; a library installed before `ALTER EXTENSION
/// backup_mgmt UPDATE` finds it missing and compares the tables as 0.12.0 did, so that WAL keeps
/// leaving the host meanwhile), after repairing it when `repair` says so.
pub fn queue_ready(c: &mut SpiClient<'_>, repair: bool) -> Result<bool, SpiError> {
    let queued = c
        .select(
            "SELECT pg_catalog.to_regclass('backup_management.remote_wal_queue') IS NOT NULL",
            None,
            &[],
        )?
        .first()
        .get_one::<bool>()?
        .unwrap_or(false);
    if queued && repair {
        let changed = c
            .update("SELECT backup_mgmt.remote_wal_queue_repair()", None, &[])?
            .first()
            .get_one::<i64>()?
            .unwrap_or_default();
        if changed > 0 {
            log!("backup_mgmt: the off-site WAL queue was out of step with the catalog in {changed} rows; repaired");
        }
    }
    Ok(queued)
}

/// The files copied and the copies removed, from the queue or (`queued` false) by comparing the
/// tables.  Both check each file as the comparison does: a queue out of step can delay a file
/// until the next repair, never copy one twice or remove a copy still needed.
const PENDING_QUEUED: &str =
    "SELECT a.system_identifier, a.file_name, a.file_path, a.archived_at::text, a.checksum \
       FROM backup_management.remote_wal_queue q \
       JOIN backup_management.wal_archive a \
         ON a.system_identifier = q.system_identifier AND a.file_name = q.file_name \
      WHERE q.config_id = $1 AND q.action = 'copy' \
        AND a.expired_at IS NULL AND a.lost_at IS NULL \
        AND a.system_identifier = (SELECT system_identifier FROM pg_catalog.pg_control_system()) \
        AND NOT EXISTS (SELECT FROM backup_management.remote_wal_records r \
                         WHERE r.config_id = $1 AND r.system_identifier = a.system_identifier \
                           AND r.file_name = a.file_name) \
      ORDER BY q.archived_at, q.file_name LIMIT $2";
const PENDING_COMPARED: &str =
    "SELECT a.system_identifier, a.file_name, a.file_path, a.archived_at::text, a.checksum \
       FROM backup_management.wal_archive a \
      WHERE a.expired_at IS NULL AND a.lost_at IS NULL \
        AND a.system_identifier = (SELECT system_identifier FROM pg_catalog.pg_control_system()) \
        AND NOT EXISTS (SELECT FROM backup_management.remote_wal_records r \
                         WHERE r.config_id = $1 AND r.system_identifier = a.system_identifier \
                           AND r.file_name = a.file_name) \
      ORDER BY a.archived_at, a.file_name LIMIT $2";
const EXPIRED_QUEUED: &str = "SELECT r.system_identifier, r.file_name, r.remote_key \
       FROM backup_management.remote_wal_queue q \
       JOIN backup_management.remote_wal_records r \
         ON r.config_id = q.config_id AND r.system_identifier = q.system_identifier \
        AND r.file_name = q.file_name \
      WHERE q.config_id = $1 AND q.action = 'remove' \
        AND NOT EXISTS (SELECT FROM backup_management.wal_archive a \
                         WHERE a.system_identifier = r.system_identifier \
                           AND a.file_name = r.file_name AND a.expired_at IS NULL) \
      ORDER BY q.archived_at, q.file_name LIMIT $2";
const EXPIRED_COMPARED: &str = "SELECT r.system_identifier, r.file_name, r.remote_key \
       FROM backup_management.remote_wal_records r \
      WHERE r.config_id = $1 \
        AND NOT EXISTS (SELECT FROM backup_management.wal_archive a \
                         WHERE a.system_identifier = r.system_identifier \
                           AND a.file_name = r.file_name AND a.expired_at IS NULL) \
      ORDER BY r.archived_at, r.file_name LIMIT $2";

/// The oldest archived files the target does not hold yet (lost files are gaps, not work).
pub fn pending_files(
    c: &SpiClient<'_>,
    queued: bool,
    config_id: i32,
    roots: &[PathBuf],
    held: &HashSet<(i64, String)>,
) -> Result<Vec<Pending>, SpiError> {
    // This cluster's files only: another cluster's archive under the roots (a restored copy's,
    // an upgraded one's) is its own to ship, and retention here never expires it.
    let t = c.select(
        if queued {
            PENDING_QUEUED
        } else {
            PENDING_COMPARED
        },
        None,
        &[config_id.into(), (BATCH + held.len() as i64).into()],
    )?;
    let mut out = Vec::new();
    for r in t {
        let system_identifier = r.get::<i64>(1)?.unwrap_or_default();
        let file_name = r.get::<String>(2)?.unwrap_or_default();
        if held.contains(&(system_identifier, file_name.clone())) {
            continue;
        }
        let file_path = r.get::<String>(3)?.unwrap_or_default();
        // The row's path is input: only a file exactly where the archive module puts it is read.
        let file = archive::locate(&file_path, &file_name, system_identifier, roots);
        out.push(Pending {
            system_identifier,
            file_name,
            file_path,
            archived_at: r.get::<String>(4)?.unwrap_or_default(),
            sha256: r.get::<String>(5)?.unwrap_or_default(),
            file,
        });
    }
    Ok(out)
}

/// Copies on the target whose archived file expired or left the catalog.  The key removed is the
/// one this cluster's naming gives the file, never a key read back from a row as it stands.
pub fn expired_copies(
    c: &SpiClient<'_>,
    queued: bool,
    config_id: i32,
) -> Result<Vec<Expired>, SpiError> {
    let t = c.select(
        if queued {
            EXPIRED_QUEUED
        } else {
            EXPIRED_COMPARED
        },
        None,
        &[config_id.into(), BATCH.into()],
    )?;
    let mut out = Vec::new();
    for r in t {
        let system_identifier = r.get::<i64>(1)?.unwrap_or_default();
        let file_name = r.get::<String>(2)?.unwrap_or_default();
        let recorded = r.get::<String>(3)?.unwrap_or_default();
        let key = [
            storage::wal_key(system_identifier, &file_name),
            storage::wal_key(system_identifier, &format!("{file_name}.zst")),
        ]
        .into_iter()
        .find(|k| *k == recorded);
        if let Some(key) = key {
            out.push(Expired {
                system_identifier,
                file_name,
                key,
            });
        }
    }
    Ok(out)
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[allow(unused_imports)]
    use crate::testing::*;

    /// Runs `sql` through a read-write SPI call: a read-only one does not advance the command
    /// counter, so the statement's own AFTER triggers would not see its rows.
    fn run(sql: &str) {
        Spi::connect_mut(|c| c.update(sql, None, &[]).map(|_| ())).unwrap();
    }

    /// The queue as text, one row per line, in a fixed order.
    fn queue(from: &str) -> String {
        Spi::get_one::<String>(&format!(
            "SELECT coalesce(string_agg(format('%s %s %s %s', q.file_name, c.config_name, q.action,
                                               (q.system_identifier = (SELECT system_identifier FROM pg_control_system()))::text),
                                        E'\\n' ORDER BY q.file_name, c.config_name), '')
               FROM {from} q JOIN backup_management.remote_backup_configs c USING (config_id)"
        ))
        .unwrap()
        .unwrap_or_default()
    }

    /// The maintained queue equals its definition after `step`, and is what `expected` says.
    fn assert_queue(step: &str, expected: &[&str]) {
        let maintained = queue("backup_management.remote_wal_queue");
        assert_eq!(
            maintained,
            queue("backup_mgmt.remote_wal_queue_of()"),
            "after {step}"
        );
        assert_eq!(maintained, expected.join("\n"), "after {step}");
        // No row of a target that does not exist (the queue has no foreign key since 0.14.0).
        let strays = Spi::get_one::<i64>(
            "SELECT count(*) FROM backup_management.remote_wal_queue q
              WHERE NOT EXISTS (SELECT FROM backup_management.remote_backup_configs c
                                 WHERE c.config_id = q.config_id)",
        );
        assert_eq!(strays, Ok(Some(0)), "after {step}");
        let repaired = Spi::get_one::<i64>("SELECT backup_mgmt.remote_wal_queue_repair()");
        assert_eq!(repaired, Ok(Some(0)), "after {step}");
    }

    fn target(name: &str, active: bool) {
        run(&format!(
            "INSERT INTO backup_management.remote_backup_configs
                 (config_name, database_name, remote_type, remote_endpoint, remote_path, is_active)
             VALUES ('{name}', 'appdb', 'filesystem', '{TEST_ROOT}', '{name}', {active})"
        ));
    }

    /// Archives file `n` of timeline `tl` of this cluster (or of another one).  Each test has
    /// its own timeline and target names: pg_tests run side by side, and two transactions
    /// inserting the same key (or target name) wait for each other, which could deadlock.
    fn archived(tl: u32, n: i32, ours: bool) {
        let sysid = if ours {
            "(SELECT system_identifier FROM pg_control_system())"
        } else {
            "42"
        };
        run(&format!(
            "INSERT INTO backup_management.wal_archive
                 (system_identifier, file_name, timeline_id, segment_number, file_path, file_size,
                  checksum, archived_at)
             VALUES ({sysid}, '{tl:08X}000000000000000{n}', {tl}, {n}, '/a/{n}', 16777216,
                     repeat('a', 64), now() - make_interval(mins => 10 - {n}))"
        ));
    }

    fn copied(tl: u32, n: i32, to: &str) {
        run(&format!(
            "INSERT INTO backup_management.remote_wal_records
                 (config_id, system_identifier, file_name, remote_key, file_size, remote_checksum, archived_at)
             SELECT c.config_id, a.system_identifier, a.file_name, a.system_identifier || '/.wal/' || a.file_name,
                    a.file_size, a.checksum, a.archived_at
               FROM backup_management.wal_archive a, backup_management.remote_backup_configs c
              WHERE a.timeline_id = {tl} AND a.segment_number = {n} AND c.config_name = '{to}'
                AND a.system_identifier = (SELECT system_identifier FROM pg_control_system())"
        ));
    }

    #[pg_test]
    fn the_offsite_wal_queue_follows_every_change_of_what_it_derives_from() {
        const TL: u32 = 0x7E;
        let f = format!("{TL:08X}000000000000000");
        target("qa", true);
        target("qoff", false);
        archived(TL, 1, true);
        archived(TL, 2, true);
        archived(TL, 3, false);
        let row = |n: i32, t: &str, action: &str, ours: bool| format!("{f}{n} {t} {action} {ours}");
        let (a1, a2) = (row(1, "qa", "copy", true), row(2, "qa", "copy", true));
        assert_queue("two files archived", &[&a1, &a2]);
        // Copied: off the queue.  The view counts what waits, from the queue.
        copied(TL, 1, "qa");
        assert_queue("a copy recorded", &[&a2]);
        let pending = Spi::get_one::<i64>(
            "SELECT pending_segments FROM backup_mgmt.offsite_wal_status WHERE config_name = 'qa'",
        );
        assert_eq!(pending, Ok(Some(1)));
        // A target added, one enabled: the whole archive waits for each.
        target("qb", true);
        run("UPDATE backup_management.remote_backup_configs SET is_active = true WHERE config_name = 'qoff'");
        let (b1, b2) = (row(1, "qb", "copy", true), row(2, "qb", "copy", true));
        let (o1, o2) = (row(1, "qoff", "copy", true), row(2, "qoff", "copy", true));
        assert_queue("targets added and enabled", &[&b1, &o1, &a2, &b2, &o2]);
        run("UPDATE backup_management.remote_backup_configs SET is_active = false WHERE config_name = 'qoff'");
        assert_queue("a target disabled", &[&b1, &a2, &b2]);
        // A change that cannot move the queue (the sha256 pass) leaves it; a lost file leaves it
        // until it is found again.
        run("UPDATE backup_management.wal_archive SET checked_at = now()");
        assert_queue("files checked", &[&b1, &a2, &b2]);
        run("UPDATE backup_management.wal_archive SET lost_at = now() WHERE segment_number = 2");
        assert_queue("a file lost", &[&b1]);
        run("UPDATE backup_management.wal_archive SET lost_at = NULL WHERE segment_number = 2");
        assert_queue("a file found again", &[&b1, &a2, &b2]);
        // Expired: not copied any more, and its copy waits to be removed.
        run("UPDATE backup_management.wal_archive SET expired_at = now() WHERE segment_number = 1");
        let ra1 = row(1, "qa", "remove", true);
        assert_queue("a copied file expired", &[&ra1, &a2, &b2]);
        run(&format!(
            "DELETE FROM backup_management.remote_wal_records WHERE file_name = '{f}1'"
        ));
        assert_queue("the expired copy removed", &[&a2, &b2]);
        // A target that moved: its copies forgotten, everything waits again.
        copied(TL, 2, "qa");
        assert_queue("the second copied", &[&b2]);
        run(
            "DELETE FROM backup_management.remote_wal_records
              WHERE config_id = (SELECT config_id FROM backup_management.remote_backup_configs WHERE config_name = 'qa')",
        );
        assert_queue("the copies forgotten", &[&a2, &b2]);
        // A file deleted from the catalog: off the queue, and a copy of it waits to be removed.
        copied(TL, 2, "qb");
        run("DELETE FROM backup_management.wal_archive WHERE segment_number = 2");
        let rb2 = row(2, "qb", "remove", true);
        assert_queue("an archived file deleted", &[&rb2]);
        archived(TL, 4, true);
        let (a4, b4) = (row(4, "qa", "copy", true), row(4, "qb", "copy", true));
        // Deletes, not TRUNCATE: its lock would make the tests running beside this one wait.
        run("DELETE FROM backup_management.remote_wal_records");
        assert_queue("every copy record deleted", &[&a4, &b4]);
        // Out of step (only a superuser can do this): repaired, and the rows counted.
        run("DELETE FROM backup_management.remote_wal_queue");
        let repaired = Spi::get_one::<i64>("SELECT backup_mgmt.remote_wal_queue_repair()");
        assert_eq!(repaired, Ok(Some(2)));
        assert_queue("repaired", &[&a4, &b4]);
        run("DELETE FROM backup_management.remote_backup_configs WHERE config_name = 'qb'");
        assert_queue("a target deleted", &[&a4]);
        run(&format!(
            "DELETE FROM backup_management.wal_archive WHERE timeline_id = {TL}"
        ));
        assert_queue("the archive's files deleted", &[]);
    }

    #[pg_test]
    fn operators_keep_the_queue_through_their_targets_and_cannot_write_it() {
        const TL: u32 = 0x7F;
        archived(TL, 1, true);
        Spi::run("CREATE ROLE bm_test_queue_op IN ROLE backup_admin").unwrap();
        Spi::run("SET LOCAL ROLE bm_test_queue_op").unwrap();
        target("qop", true);
        let (state, _, _) = outcome("DELETE FROM backup_management.remote_wal_queue");
        assert_eq!(state, "42501");
        // The SECURITY DEFINER trigger function cannot be put on a table of the operator's own
        // (whose casts it would then run with its owner's rights), nor its upkeep called.
        run("CREATE TEMP TABLE remote_backup_configs (config_id integer, is_active boolean)");
        let (state, message, _) = outcome(
            "CREATE TRIGGER t AFTER INSERT ON pg_temp.remote_backup_configs REFERENCING NEW TABLE AS new_rows
                 FOR EACH STATEMENT EXECUTE FUNCTION backup_mgmt.remote_wal_queue_track()",
        );
        assert_eq!(state, "42501", "{message}");
        let (state, _, _) = outcome("SELECT backup_mgmt.remote_wal_queue_repair()");
        assert_eq!(state, "42501");
        run("UPDATE backup_management.remote_backup_configs SET is_active = false");
        Spi::run("RESET ROLE").unwrap();
        assert_queue("a target added and disabled by an operator", &[]);
        run("UPDATE backup_management.remote_backup_configs SET is_active = true");
        assert_queue(
            "enabled again",
            &[&format!("{TL:08X}0000000000000001 qop copy true")],
        );
        // Even a superuser's trigger on another table is refused by the function itself.
        run("CREATE TABLE public.wal_archive (system_identifier bigint, file_name text)");
        run(
            "CREATE TRIGGER t AFTER INSERT ON public.wal_archive REFERENCING NEW TABLE AS new_rows
                 FOR EACH STATEMENT EXECUTE FUNCTION backup_mgmt.remote_wal_queue_track()",
        );
        assert_fails(
            "INSERT INTO public.wal_archive VALUES (1, 'x')",
            "42501",
            "public.wal_archive",
        );
    }
}
