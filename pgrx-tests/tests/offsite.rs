//! End-to-end off-site copies to a filesystem target (a second disk inside the backup roots):
//! the worker copies new backups, verifies each copy, records every attempt (retries included),
//! removes the copies of expired backups, and the 3-2-1 view counts the copies.

use std::path::PathBuf;
use std::time::Duration;

use backup_mgmt_e2e::cluster::{sha256sum, Cluster};
use backup_mgmt_e2e::offsite::add_filesystem_target;

fn wait_backups(cluster: &Cluster, db: &mut postgres::Client, n: i64) {
    let ok = Cluster::wait_for(Duration::from_secs(120), || {
        db.query_one(
            "SELECT count(*) FROM backup_management.backup_records WHERE label = 'nightly' AND status <> 'running'",
            &[],
        )
        .map(|r| r.get::<_, i64>(0) >= n)
        .unwrap_or(false)
    });
    assert!(ok, "backups not taken\n{}", cluster.log());
}

fn wait_synced(cluster: &Cluster, db: &mut postgres::Client) {
    wait_synced_to(cluster, db, "second-disk");
}

/// Waits until target `name`'s sync run has ended.
fn wait_synced_to(cluster: &Cluster, db: &mut postgres::Client, name: &str) {
    let ok = Cluster::wait_for(Duration::from_secs(60), || {
        db.query_one(
            "SELECT sync_status IN ('completed', 'failed') FROM backup_management.remote_backup_configs
              WHERE config_name = $1",
            &[&name],
        )
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false)
    });
    assert!(ok, "no sync\n{}", cluster.log());
}

/// A cluster with a second backup root for the target, database `appdb` and job `nightly`
/// backing it up by `method` (a dump without globals); the target is not added yet.
fn nightly(method: &str) -> (Cluster, PathBuf, postgres::Client) {
    let cluster = Cluster::start_with_backups(&[]);
    let offsite = cluster.second_backup_root("offsite");
    let mut db = cluster.connect("postgres");
    db.batch_execute("CREATE DATABASE appdb").unwrap();
    db.batch_execute("CREATE EXTENSION backup_mgmt").unwrap();
    // Globals belong to a dump; a native backup copies the whole cluster.
    let options = match method {
        "native_physical" => "{}",
        _ => "{\"include_globals\": false}",
    };
    db.execute(
        "SELECT backup_mgmt.schedule_backup('nightly', '@yearly', 'appdb', 'full', $1, $2::text::jsonb)",
        &[&method, &options],
    )
    .unwrap();
    (cluster, offsite, db)
}

#[test]
fn backups_are_copied_verified_and_expired_off_site() {
    let (cluster, offsite, mut db) = nightly("pg_dump");
    db.batch_execute(
        "INSERT INTO backup_management.retention_policies
             (policy_name, keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly)
         VALUES ('nothing', NULL, 0, 0, 0, 0);",
    )
    .unwrap();
    add_filesystem_target(&mut db, "second-disk", "appdb", &offsite);
    for n in 1..=2 {
        db.execute("SELECT backup_mgmt.run_job_now('nightly')", &[])
            .unwrap();
        wait_backups(&cluster, &mut db, n);
    }
    db.execute("SELECT backup_mgmt.sync_remote_now('second-disk')", &[])
        .unwrap();
    wait_synced(&cluster, &mut db);

    // Both copied, verified: the copy's sha256 is the catalog's, and the file's.
    let rows = db
        .query(
            "SELECT b.backup_id, b.checksum, x.remote_checksum, x.remote_file_path, x.attempt, x.bytes_transferred, b.backup_size
               FROM backup_management.remote_backup_records x
               JOIN backup_management.backup_records b USING (backup_id)
              WHERE x.sync_status = 'completed' ORDER BY 1",
            &[],
        )
        .unwrap();
    assert_eq!(rows.len(), 2, "{}", cluster.log());
    let sysid: i64 = db
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .unwrap()
        .get(0);
    for r in &rows {
        let (local, remote, key): (String, String, String) = (r.get(1), r.get(2), r.get(3));
        assert_eq!(local, remote);
        assert!(key.starts_with(&format!("{sysid}/appdb/")), "{key}");
        let copy = offsite.join("pg").join(&key);
        assert_eq!(sha256sum(&copy), local);
        assert_eq!(r.get::<_, i32>(4), 1);
        assert_eq!(r.get::<_, Option<i64>>(5), Some(r.get::<_, i64>(6)));
    }

    // The 3-2-1 view: the database, its backup, one copy on a second disk: 3 copies, 2 media,
    // but not off site until the target says so.
    let view = |db: &mut postgres::Client| -> (i64, i64, bool, bool) {
        let r = db
            .query_one(
                "SELECT copies, media, offsite, rule_3_2_1 FROM backup_mgmt.backup_copies WHERE database_name = 'appdb'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert_eq!(view(&mut db), (3, 2, false, false));
    db.batch_execute(
        "UPDATE backup_management.remote_backup_configs SET options = '{\"offsite\": true}' WHERE config_name = 'second-disk'",
    )
    .unwrap();
    assert_eq!(view(&mut db), (3, 2, true, true));

    // A backup that no longer matches its checksum is not copied: one attempt (it will not
    // heal by waiting), recorded as failed, and the target marked failed.
    db.execute("SELECT backup_mgmt.run_job_now('nightly')", &[])
        .unwrap();
    wait_backups(&cluster, &mut db, 3);
    let third: (i64, String) = db
        .query_one(
            "SELECT backup_id, backup_file_path FROM backup_management.backup_records
              WHERE label = 'nightly' ORDER BY backup_id DESC LIMIT 1",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(PathBuf::from(&third.1))
            .unwrap();
        f.seek(SeekFrom::Start(10)).unwrap();
        f.write_all(b"rot").unwrap();
    }
    db.execute("SELECT backup_mgmt.sync_remote_now('second-disk')", &[])
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    wait_synced(&cluster, &mut db);
    let failed: Vec<(i32, String)> = db
        .query(
            "SELECT attempt, error_message FROM backup_management.remote_backup_records
              WHERE backup_id = $1 ORDER BY attempt",
            &[&third.0],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed.iter().all(|(_, e)| e.contains("no longer matches")),
        "{failed:?}"
    );
    let status: String = db
        .query_one(
            "SELECT sync_status FROM backup_management.remote_backup_configs WHERE config_name = 'second-disk'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "failed");

    // Retention expires the backups; the next sync removes their copies.
    db.query(
        "SELECT * FROM backup_mgmt.apply_retention('nightly', 'nothing')",
        &[],
    )
    .unwrap();
    db.execute("SELECT backup_mgmt.sync_remote_now('second-disk')", &[])
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    wait_synced(&cluster, &mut db);
    let left: Vec<String> = db
        .query(
            "SELECT remote_file_path FROM backup_management.remote_backup_records WHERE sync_status = 'completed'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    for r in &rows {
        let key: String = r.get(3);
        assert!(
            !offsite.join("pg").join(&key).exists(),
            "{key} still off site"
        );
    }
}

/// A directory-format dump whose member rotted on this disk after the dump is not copied: its
/// manifest (what the catalog's sha256 covers) is intact, so only checking every member as it
/// lands finds it. One attempt (it will not heal), naming the member, and nothing left on the
/// target to pass for a copy or to block the next one.
#[test]
fn a_dump_directory_with_a_rotten_member_is_not_copied() {
    a_rotten_member_is_not_copied("pg_dump_directory");
}

/// The same for a native backup: its members are stored compressed while its chain manifest
/// records the files' own digests, so each is decompressed and hashed as it is copied.
#[test]
fn a_native_backup_with_a_rotten_member_is_not_copied() {
    a_rotten_member_is_not_copied("native_physical");
}

fn a_rotten_member_is_not_copied(method: &str) {
    let (cluster, offsite, mut db) = nightly(method);
    let mut app = cluster.connect("appdb");
    app.batch_execute("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g")
        .unwrap();
    db.execute("SELECT backup_mgmt.run_job_now('nightly')", &[])
        .unwrap();
    wait_backups(&cluster, &mut db, 1);
    let (id, dir): (i64, String) = db
        .query_one(
            "SELECT backup_id, backup_file_path FROM backup_management.backup_records
              WHERE label = 'nightly' AND status = 'completed'",
            &[],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    // The largest member (a table's data), not a manifest.
    let mut members = Vec::new();
    let mut dirs = vec![PathBuf::from(&dir)];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().map(Result::unwrap) {
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            } else {
                members.push(e.path());
            }
        }
    }
    let member = members
        .into_iter()
        .filter(|p| {
            !p.file_name()
                .unwrap()
                .to_string_lossy()
                .contains("manifest")
        })
        .filter(|p| p.file_name().unwrap() != "backup_mgmt.files")
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&member).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x20;
    std::fs::write(&member, &bytes).unwrap();
    add_filesystem_target(&mut db, "second-disk", "appdb", &offsite);
    db.execute("SELECT backup_mgmt.sync_remote_now('second-disk')", &[])
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    wait_synced(&cluster, &mut db);
    let failed: Vec<(String, String)> = db
        .query(
            "SELECT sync_status, error_message FROM backup_management.remote_backup_records
              WHERE backup_id = $1 ORDER BY attempt",
            &[&id],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get::<_, Option<String>>(1).unwrap_or_default()))
        .collect();
    let name = member.file_name().unwrap().to_string_lossy().into_owned();
    // It will not heal: one attempt, not three.
    assert_eq!(failed.len(), 1, "{failed:?}\n{}", cluster.log());
    // A dump's member is hashed as it lands; a native one is decompressed first, which a
    // flipped byte may break before any digest is compared.
    assert!(
        failed.iter().all(|(s, e)| s == "failed"
            && e.contains(&name)
            && (e.contains("manifest records") || e.contains("read back as stored"))),
        "{failed:?}"
    );
    // Nothing of the backup is left on the target.
    let mut left = Vec::new();
    let mut dirs = vec![offsite.join("pg")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            } else if !e.path().to_string_lossy().contains("/.catalog/") {
                left.push(e.path());
            }
        }
    }
    assert!(left.is_empty(), "{left:?}");
}

/// A complete copy already on the target that this target's catalog rows do not know (a second
/// target configured on the same directory, a catalog restored from before the copy) is never
/// removed by a later attempt that finds the local directory changed: a file added to it is
/// refused before anything is copied, and a member that rotted meets the copy's own member
/// (a copy is never replaced).
#[test]
fn a_copy_already_on_the_target_survives_a_changed_local_directory() {
    let (cluster, offsite, mut db) = nightly("pg_dump_directory");
    db.execute("SELECT backup_mgmt.run_job_now('nightly')", &[])
        .unwrap();
    wait_backups(&cluster, &mut db, 1);
    let dir: String = db
        .query_one(
            "SELECT backup_file_path FROM backup_management.backup_records WHERE label = 'nightly'",
            &[],
        )
        .unwrap()
        .get(0);
    add_filesystem_target(&mut db, "second-disk", "appdb", &offsite);
    db.execute("SELECT backup_mgmt.sync_remote_now('second-disk')", &[])
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    wait_synced(&cluster, &mut db);
    let key: String = db
        .query_one(
            "SELECT remote_file_path FROM backup_management.remote_backup_records WHERE sync_status = 'completed'",
            &[],
        )
        .unwrap()
        .get(0);
    let copy = offsite.join("pg").join(&key);
    let files = |d: &std::path::Path| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| {
                (
                    p.file_name().unwrap().to_string_lossy().into_owned(),
                    sha256sum(&p),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = files(&copy);
    assert!(before.len() >= 2, "{before:?}");
    // The same directory as a second target, whose catalog rows know no copy.
    db.execute(
        "UPDATE backup_management.remote_backup_configs SET is_active = false WHERE config_name = 'second-disk'",
        &[],
    )
    .unwrap();
    add_filesystem_target(&mut db, "same-disk", "appdb", &offsite);
    let sync_same = |db: &mut postgres::Client| -> Vec<String> {
        db.execute("SELECT backup_mgmt.sync_remote_now('same-disk')", &[])
            .unwrap();
        std::thread::sleep(Duration::from_secs(1));
        wait_synced_to(&cluster, db, "same-disk");
        db.query(
            "SELECT coalesce(x.error_message, '') FROM backup_management.remote_backup_records x
               JOIN backup_management.remote_backup_configs c USING (config_id)
              WHERE c.config_name = 'same-disk' ORDER BY x.record_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    };
    std::fs::write(std::path::Path::new(&dir).join("planted.dat"), b"x").unwrap();
    let errors = sync_same(&mut db);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("planted.dat") && e.contains("nothing was copied")),
        "{errors:?}"
    );
    assert_eq!(files(&copy), before, "the copy on the target changed");
    std::fs::remove_file(std::path::Path::new(&dir).join("planted.dat")).unwrap();
    // A member rotted: the copy's own member is there with other bytes, and stays.
    let member = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap() != "backup_manifest.sha256")
        .unwrap();
    let mut bytes = std::fs::read(&member).unwrap();
    bytes[0] ^= 0x01;
    std::fs::write(&member, &bytes).unwrap();
    let errors = sync_same(&mut db);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("already holds different content")),
        "{errors:?}"
    );
    assert_eq!(files(&copy), before, "the copy on the target changed");
}
