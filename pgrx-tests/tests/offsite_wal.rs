//! End-to-end: archived WAL leaves the host.  A cluster archiving through the module copies every
//! archived file to a filesystem target and to an S3-compatible server on loopback, each copy
//! verified; the S3 server goes down, the lag alarm fires (WARNING, NOTIFY, the view) while the
//! other target keeps up, the server comes back and the target catches up without loss or
//! duplicates, and the alarm clears; an expired file's copies are removed; each target holds a
//! mirror of the cluster's catalog that names every object and its sha256 (a dump and its
//! globals included); a second cluster writing to the same bucket keeps to its own prefix and
//! its own mirror.

use std::collections::BTreeSet;
use std::time::Duration;

use backup_mgmt_e2e::cluster::{sha256sum, Cluster};
use backup_mgmt_e2e::offsite::{mirror_wal_count, with_wal_files};
use backup_mgmt_e2e::offsite_wal::{
    add_disk_target, archived, archiving_cluster, copies, status, switch_segments, wait_caught_up,
};
use backup_mgmt_e2e::s3server::S3Server;
use postgres::fallible_iterator::FallibleIterator;

const SECRET: &str = "S3RVER";
const BUCKET: &str = "offsite";

fn add_s3_target(cluster: &Cluster, db: &mut postgres::Client, s3: &S3Server) {
    s3.create_bucket(BUCKET);
    let key_file = cluster.dir().join("s3.key");
    cluster.write_private_file(&key_file, &format!("S3RVER:{SECRET}\n"));
    db.execute(
        "INSERT INTO backup_management.remote_backup_configs
             (config_name, database_name, remote_type, remote_endpoint, remote_path, credentials_ref, options)
         VALUES ('bucket', 'postgres', 's3', $1, $2, $3, '{}')",
        &[
            &s3.endpoint(),
            &format!("{BUCKET}/fleet"),
            &format!("file:{}", key_file.display()),
        ],
    )
    .unwrap();
}

/// The keys stored in the bucket under `prefix` (s3rver's layout on disk).
fn bucket_keys(s3: &S3Server, prefix: &str) -> BTreeSet<String> {
    let base = s3.dir.path().join(BUCKET).join("fleet");
    let mut out = BTreeSet::new();
    let mut stack = vec![base.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(k) = p
                .strip_prefix(&base)
                .ok()
                .and_then(|k| k.to_str())
                .and_then(|k| k.strip_suffix("._S3rver_object"))
            {
                if k.starts_with(prefix) {
                    out.insert(k.to_owned());
                }
            }
        }
    }
    out
}

/// A JSON file's document, or Null while it is missing or not whole.
fn json_file(path: &std::path::Path) -> serde_json::Value {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

#[test]
fn wal_reaches_every_target_verified_survives_an_outage_and_raises_the_alarm() {
    let mut s3 = S3Server::start();
    let (mut cluster, second) = archiving_cluster(true);
    let second = second.unwrap();
    let mut db = cluster.connect("postgres");
    db.batch_execute("CREATE EXTENSION backup_mgmt").unwrap();
    let sysid = add_disk_target(&mut db, &second);
    add_s3_target(&cluster, &mut db, &s3);
    let mut listener = cluster.connect("postgres");
    listener.batch_execute("LISTEN backup_mgmt").unwrap();

    // Archived WAL reaches both targets, each copy verified against the archive's sha256.
    switch_segments(&mut db, 3);
    wait_caught_up(&cluster, &mut db, "disk", 3);
    wait_caught_up(&cluster, &mut db, "bucket", 3);
    let on_disk = copies(&mut db, "disk");
    assert_eq!(on_disk.len() as i64, archived(&mut db));
    for (key, remote, local) in &on_disk {
        assert!(key.starts_with(&format!("{sysid}/.wal/")), "{key}");
        assert_eq!(remote, local, "{key}");
        assert_eq!(&sha256sum(&second.join("pg").join(key)), local, "{key}");
    }
    let in_bucket = copies(&mut db, "bucket");
    assert_eq!(in_bucket.len(), on_disk.len());
    for (key, remote, local) in &in_bucket {
        assert_eq!(remote, local, "{key}");
        let object = s3.object_file(BUCKET, &format!("fleet/{key}"));
        assert_eq!(&sha256sum(&object), local, "{key}");
    }

    // The S3 server goes down: the alarm fires for it (past 4 s), the filesystem target keeps
    // up, and the archiver never waits (nothing fails in pg_stat_archiver).
    s3.kill();
    switch_segments(&mut db, 3);
    let raised = Cluster::wait_for(Duration::from_secs(60), || {
        let (pending, failures, alarm) = status(&mut db, "bucket");
        pending > 0 && failures > 0 && alarm
    });
    assert!(
        raised,
        "no alarm: {:?}\n{}",
        status(&mut db, "bucket"),
        cluster.log()
    );
    wait_caught_up(&cluster, &mut db, "disk", 6);
    // Caught up, so its alarm is down by the worker's next look at it (a test host running four
    // clusters at once can hold it past the 4 s threshold for a moment).
    let calm = Cluster::wait_for(Duration::from_secs(10), || !status(&mut db, "disk").2);
    assert!(calm, "the target that kept up stays alarmed");
    let last_error: String = db
        .query_one(
            "SELECT last_error FROM backup_mgmt.offsite_wal_status WHERE config_name = 'bucket'",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!last_error.contains(SECRET), "{last_error}");
    // Down for longer than the first backoffs, then back.
    std::thread::sleep(Duration::from_secs(15));
    s3.restart();
    wait_caught_up(&cluster, &mut db, "bucket", 6);
    let cleared = Cluster::wait_for(Duration::from_secs(30), || !status(&mut db, "bucket").2);
    assert!(cleared, "the alarm stayed\n{}", cluster.log());
    let failed: i64 = db
        .query_one("SELECT failed_count FROM pg_stat_archiver", &[])
        .unwrap()
        .get(0);
    assert_eq!(failed, 0);

    // No loss, no duplicates: one record and one object per archived file.
    let in_bucket = copies(&mut db, "bucket");
    assert_eq!(in_bucket.len() as i64, archived(&mut db));
    let keys: BTreeSet<String> = in_bucket.iter().map(|c| c.0.clone()).collect();
    assert_eq!(keys.len(), in_bucket.len());
    assert_eq!(bucket_keys(&s3, &format!("{sysid}/.wal/")), keys);
    for (key, remote, local) in &in_bucket {
        assert_eq!(remote, local, "{key}");
        let object = s3.object_file(BUCKET, &format!("fleet/{key}"));
        assert_eq!(&sha256sum(&object), local, "{key}");
    }

    // The alarm was heard: a WARNING, and NOTIFYs that carry ids only.
    let log = cluster.log();
    assert!(
        log.contains("off-site target \"bucket\" is") && log.contains("behind the WAL archive"),
        "{log}"
    );
    assert!(
        log.contains("off-site target \"bucket\" caught up"),
        "{log}"
    );
    assert!(!log.contains(SECRET), "the secret reached the log");
    listener.batch_execute("SELECT 1").unwrap();
    let notes: Vec<String> = listener
        .notifications()
        .iter()
        .iterator()
        .filter_map(Result::ok)
        .map(|n| n.payload().to_owned())
        .collect();
    let config_id: i32 = db
        .query_one(
            "SELECT config_id FROM backup_management.remote_backup_configs WHERE config_name = 'bucket'",
            &[],
        )
        .unwrap()
        .get(0);
    let lagging = format!("{{\"event\":\"offsite_wal_lagging\",\"config_id\":{config_id},");
    let caught_up = format!("{{\"event\":\"offsite_wal_caught_up\",\"config_id\":{config_id}}}");
    assert!(notes.iter().any(|n| n.starts_with(&lagging)), "{notes:?}");
    assert!(notes.contains(&caught_up), "{notes:?}");

    // metrics() reports each target's lag.
    let metrics: String = db
        .query_one("SELECT backup_mgmt.metrics()", &[])
        .unwrap()
        .get(0);
    assert!(
        metrics.contains("backup_mgmt_offsite_wal_lag_seconds{target=\"bucket\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("backup_mgmt_offsite_wal_pending_segments{target=\"disk\"} 0"),
        "{metrics}"
    );

    // A file that expires from the local archive leaves the targets too.
    let row = db
        .query_one(
            "UPDATE backup_management.wal_archive a SET expired_at = now()
               FROM backup_management.remote_wal_records r
               JOIN backup_management.remote_backup_configs c USING (config_id)
              WHERE c.config_name = 'disk' AND r.system_identifier = a.system_identifier
                AND r.file_name = a.file_name
                AND a.file_name = (SELECT min(file_name) FROM backup_management.wal_archive
                                    WHERE segment_number IS NOT NULL)
             RETURNING a.file_name, r.remote_key",
            &[],
        )
        .unwrap();
    let (gone, key): (String, String) = (row.get(0), row.get(1));
    let removed = Cluster::wait_for(Duration::from_secs(30), || {
        db.query_one(
            "SELECT count(*) FROM backup_management.remote_wal_records WHERE file_name = $1",
            &[&gone],
        )
        .map(|r| r.get::<_, i64>(0) == 0)
        .unwrap_or(false)
    });
    assert!(removed, "{gone} still recorded\n{}", cluster.log());
    assert!(!second.join("pg").join(&key).exists(), "{key}");
    assert!(!s3.object_file(BUCKET, &format!("fleet/{key}")).exists());

    // The catalog travels with the data: a dump with its globals is copied to the disk target,
    // and each target's mirror of this cluster says which object is which, with every sha256.
    db.batch_execute(
        "SELECT backup_mgmt.schedule_backup('dump', '@yearly', 'postgres', 'full', 'pg_dump',
                                            '{\"include_globals\": true}');
         SELECT backup_mgmt.run_job_now('dump');",
    )
    .unwrap();
    let dumped = Cluster::wait_for(Duration::from_secs(120), || {
        db.query_one(
            "SELECT count(*) FROM backup_management.backup_records
              WHERE label = 'dump' AND status = 'completed' AND globals_file_path IS NOT NULL",
            &[],
        )
        .map(|r| r.get::<_, i64>(0) == 1)
        .unwrap_or(false)
    });
    assert!(dumped, "no dump\n{}", cluster.log());
    db.execute("SELECT backup_mgmt.sync_remote_now('disk')", &[])
        .unwrap();
    let mirror_on_disk = second
        .join("pg")
        .join(format!("{sysid}/.catalog/catalog_mirror.json"));
    let mut doc = serde_json::Value::Null;
    let described = Cluster::wait_for(Duration::from_secs(90), || {
        doc = std::fs::read_to_string(&mirror_on_disk)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        doc["backups"].as_array().is_some_and(|b| !b.is_empty())
            && mirror_wal_count(&doc) == copies(&mut db, "disk").len() as i64
            && with_wal_files(&mut doc, |k| std::fs::read(second.join("pg").join(k)).ok())
    });
    assert!(described, "mirror: {doc}\n{}", cluster.log());
    assert_eq!(doc["format"], "backup_mgmt offsite catalog 2");
    // The WAL list is in parts, under this target's own directory, each named by its digest.
    let disk_id: i32 = db
        .query_one(
            "SELECT config_id FROM backup_management.remote_backup_configs WHERE config_name = 'disk'",
            &[],
        )
        .unwrap()
        .get(0);
    for p in doc["wal_parts"].as_array().unwrap() {
        let key = p["key"].as_str().unwrap();
        assert!(
            key.starts_with(&format!("{sysid}/.catalog/wal/{disk_id}/")),
            "{key}"
        );
        assert!(key.contains(&p["sha256"].as_str().unwrap()[..16]), "{key}");
    }
    assert_eq!(doc["system_identifier"], sysid);
    assert_eq!(doc["target"], "disk");
    let backup = &doc["backups"][0];
    let (recorded_sha, recorded_globals): (String, String) = {
        let r = db
            .query_one(
                "SELECT checksum, globals_checksum FROM backup_management.backup_records WHERE label = 'dump'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(backup["sha256"], recorded_sha.as_str());
    let key = backup["key"].as_str().unwrap();
    assert_eq!(sha256sum(&second.join("pg").join(key)), recorded_sha);
    let globals_key = backup["globals_key"].as_str().unwrap();
    assert_eq!(
        sha256sum(&second.join("pg").join(globals_key)),
        recorded_globals
    );
    for f in doc["wal_files"].as_array().unwrap() {
        let key = f["key"].as_str().unwrap();
        assert_eq!(
            sha256sum(&second.join("pg").join(key)),
            f["sha256"].as_str().unwrap(),
            "{key}"
        );
    }
    // RPO that survives the host: the dump, verified, with its verified copy on the disk target,
    // and the newest WAL copied off site.
    db.batch_execute(
        "SELECT backup_mgmt.verify_backup_integrity(backup_id)
           FROM backup_management.backup_records WHERE label = 'dump';
         INSERT INTO disaster_recovery.recovery_plans
             (plan_name, database_name, rpo_minutes, rto_minutes, backup_strategy, recovery_procedure)
         VALUES ('site-loss', 'postgres', 60, 30, 'dump and WAL off site', 'restore from the target');",
    )
    .unwrap();
    let r = db
        .query_one(
            "SELECT offsite_verified_backup_at = (SELECT end_time FROM backup_management.backup_records WHERE label = 'dump'),
                    offsite_last_wal_at = (SELECT max(archived_at) FROM backup_management.remote_wal_records),
                    extract(epoch FROM offsite_rpo_exposure)::float8, offsite_rpo_status, rpo_status
               FROM backup_mgmt.recovery_status WHERE plan_name = 'site-loss'",
            &[],
        )
        .unwrap();
    assert_eq!(r.get::<_, Option<bool>>(0), Some(true));
    assert_eq!(r.get::<_, Option<bool>>(1), Some(true));
    let exposure: f64 = r.get(2);
    assert!((0.0..600.0).contains(&exposure), "{exposure}");
    assert_eq!(r.get::<_, String>(3), "ok");
    let metrics: String = db
        .query_one("SELECT backup_mgmt.metrics()", &[])
        .unwrap()
        .get(0);
    assert!(
        metrics.contains(
            "backup_mgmt_offsite_rpo_exposure_seconds{plan=\"site-loss\",database=\"postgres\"}"
        ),
        "{metrics}"
    );

    // The bucket holds no copy of the dump (not synced there) but its own mirror of the WAL.
    let bucket_mirror = s3.object_file(
        BUCKET,
        &format!("fleet/{sysid}/.catalog/catalog_mirror.json"),
    );
    // s3rver writes an object in place and the worker rewrites the mirror: retry until it parses.
    let mut doc = serde_json::Value::Null;
    let has_mirror = Cluster::wait_for(Duration::from_secs(60), || {
        doc = json_file(&bucket_mirror);
        doc.is_object()
    });
    assert!(has_mirror, "{}", cluster.log());
    assert_eq!(doc["target"], "bucket");
    assert_eq!(doc["backups"], serde_json::json!([]));

    // A second cluster writing to the same bucket keeps to its own prefix.
    let (other, _) = archiving_cluster(false);
    let mut odb = other.connect("postgres");
    odb.batch_execute("CREATE EXTENSION backup_mgmt").unwrap();
    let other_sysid: i64 = odb
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .unwrap()
        .get(0);
    assert_ne!(other_sysid, sysid);
    add_s3_target(&other, &mut odb, &s3);
    switch_segments(&mut odb, 2);
    wait_caught_up(&other, &mut odb, "bucket", 2);
    let theirs = bucket_keys(&s3, &format!("{other_sysid}/.wal/"));
    assert_eq!(theirs.len() as i64, archived(&mut odb));
    let ours: BTreeSet<String> = copies(&mut db, "bucket").into_iter().map(|c| c.0).collect();
    assert_eq!(bucket_keys(&s3, &format!("{sysid}/.wal/")), ours);
    // Each cluster's mirror lies under its own prefix and describes only itself.
    let theirs_mirror = s3.object_file(
        BUCKET,
        &format!("fleet/{other_sysid}/.catalog/catalog_mirror.json"),
    );
    // Read whole, as above: retried until the object parses (and its parts with it).
    let read = |k: &str| std::fs::read(s3.object_file(BUCKET, &format!("fleet/{k}"))).ok();
    let mut doc = serde_json::Value::Null;
    let mirrored = Cluster::wait_for(Duration::from_secs(60), || {
        doc = json_file(&theirs_mirror);
        doc.is_object() && with_wal_files(&mut doc, read)
    });
    assert!(mirrored, "{}", other.log());
    let mirrors: BTreeSet<String> = bucket_keys(&s3, "")
        .into_iter()
        .filter(|k| k.ends_with("/.catalog/catalog_mirror.json"))
        .collect();
    assert_eq!(
        mirrors,
        BTreeSet::from([
            format!("{sysid}/.catalog/catalog_mirror.json"),
            format!("{other_sysid}/.catalog/catalog_mirror.json")
        ])
    );
    assert_eq!(doc["system_identifier"], other_sysid);
    assert!(doc["wal_parts"].as_array().unwrap().iter().all(|p| p["key"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{other_sysid}/.catalog/wal/"))));
    assert!(doc["wal_files"].as_array().unwrap().iter().all(|f| f["key"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{other_sysid}/"))));

    // A target disabled while its alarm stands: the alarm is cleared and said so, not left
    // standing where the view no longer shows the target.
    s3.kill();
    switch_segments(&mut db, 2);
    let raised = Cluster::wait_for(Duration::from_secs(60), || status(&mut db, "bucket").2);
    assert!(raised, "no alarm\n{}", cluster.log());
    db.batch_execute(
        "UPDATE backup_management.remote_backup_configs SET is_active = false
          WHERE config_name = 'bucket'",
    )
    .unwrap();
    let cleared = Cluster::wait_for(Duration::from_secs(30), || {
        db.query_one(
            "SELECT alarm_since IS NULL FROM backup_management.remote_wal_state WHERE config_id = $1",
            &[&config_id],
        )
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false)
    });
    assert!(
        cleared,
        "the disabled target's alarm stayed\n{}",
        cluster.log()
    );
    assert!(
        cluster
            .log()
            .contains("off-site target \"bucket\" was disabled; its WAL lag alarm is cleared"),
        "{}",
        cluster.log()
    );
    listener.batch_execute("SELECT 1").unwrap();
    let disabled =
        format!("{{\"event\":\"offsite_wal_target_disabled\",\"config_id\":{config_id}}}");
    let heard = listener
        .notifications()
        .iter()
        .iterator()
        .filter_map(Result::ok)
        .any(|n| n.payload() == disabled);
    assert!(heard, "no {disabled}");

    // A part of the disk target's mirror damaged in place (one bit, its length kept): no
    // listing sees it, and it would never be rewritten (its key is its content).  The worker's
    // first mirror after a start (and one every 15 minutes) reads every part back and puts a
    // damaged one again, with a WARNING.
    // The mirror first describes every copy on the disk target: the part damaged below is the
    // one the document names from now on (nothing is archived until the end of the test).
    let archived_now = archived(&mut db);
    wait_caught_up(&cluster, &mut db, "disk", archived_now);
    let mut doc = serde_json::Value::Null;
    let current = Cluster::wait_for(Duration::from_secs(60), || {
        doc = json_file(&mirror_on_disk);
        mirror_wal_count(&doc) == copies(&mut db, "disk").len() as i64
            && with_wal_files(&mut doc, |k| std::fs::read(second.join("pg").join(k)).ok())
    });
    assert!(current, "mirror: {doc}\n{}", cluster.log());
    let part = &doc["wal_parts"][0];
    let (part_key, part_sha) = (
        part["key"].as_str().unwrap().to_owned(),
        part["sha256"].as_str().unwrap().to_owned(),
    );
    let part_path = second.join("pg").join(&part_key);
    assert_eq!(sha256sum(&part_path), part_sha);
    let mut bytes = std::fs::read(&part_path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&part_path, &bytes).unwrap();
    drop((db, listener));
    cluster.pg_ctl_stop("fast");
    cluster.pg_ctl_start();
    let repaired = Cluster::wait_for(Duration::from_secs(90), || {
        sha256sum(&part_path) == part_sha
    });
    assert!(repaired, "the damaged part stayed\n{}", cluster.log());
    // Said by the worker once the copy thread that put the part again has reported back: a
    // moment after the part is whole on the target.
    let said = format!("the catalog mirror's part \"{part_key}\" did not hold what its key says");
    let logged = Cluster::wait_for(Duration::from_secs(30), || cluster.log().contains(&said));
    assert!(logged, "no WARNING naming the part\n{}", cluster.log());
}

#[test]
fn a_role_that_is_not_a_superuser_cannot_forge_what_a_target_holds() {
    let (cluster, _) = archiving_cluster(false);
    let mut db = cluster.connect("postgres");
    db.batch_execute(
        "CREATE EXTENSION backup_mgmt;
         CREATE ROLE ops LOGIN IN ROLE backup_admin;",
    )
    .unwrap();
    let mut ops = cluster.connect_as("postgres", "ops").unwrap();
    // The view and the records are readable; the records are written by the worker only.
    ops.query("SELECT * FROM backup_mgmt.offsite_wal_status", &[])
        .unwrap();
    for sql in [
        "INSERT INTO backup_management.remote_wal_records
             (config_id, system_identifier, file_name, remote_key, file_size, remote_checksum, archived_at)
         VALUES (1, 1, '000000010000000000000001', '1/.wal/x', 1, repeat('a', 64), now())",
        "UPDATE backup_management.remote_wal_state SET alarm_since = NULL",
        "DELETE FROM backup_management.remote_wal_records",
    ] {
        let e = ops.batch_execute(sql).unwrap_err();
        assert_eq!(
            e.code(),
            Some(&postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {e}"
        );
    }
}

/// An archived file replaced by a symlink to a file outside the roots (what a role with the
/// server's OS account, or a planted path, could try) is never followed: the file is not copied,
/// the target never receives the outside file's bytes, and every other file is, one at a time
/// behind it (the broken file is the oldest: it must not stall the queue).  Then the target is
/// moved to another path: its copies are forgotten and made again there.
#[test]
fn attack_a_symlink_planted_in_the_archive_is_never_followed_off_site() {
    let (cluster, second) = archiving_cluster(true);
    let second = second.unwrap();
    let mut db = cluster.connect("postgres");
    db.batch_execute("ALTER SYSTEM SET backup_mgmt.offsite_wal_parallel = 1")
        .unwrap();
    db.batch_execute("SELECT pg_reload_conf(); CREATE EXTENSION backup_mgmt")
        .unwrap();
    db.execute(
        "INSERT INTO backup_management.remote_backup_configs
             (config_name, database_name, remote_type, remote_endpoint, remote_path, is_active)
         VALUES ('disk', 'postgres', 'filesystem', $1, 'pg', false)",
        &[&second.to_string_lossy().as_ref()],
    )
    .unwrap();
    switch_segments(&mut db, 3);
    assert!(Cluster::wait_for(Duration::from_secs(60), || archived(
        &mut db
    ) >= 3));
    let secret = cluster.dir().join("secret.txt");
    cluster.write_private_file(&secret, "TOPSECRET-not-for-the-target\n");
    let (name, path): (String, String) = {
        let r = db
            .query_one(
                "SELECT file_name, file_path FROM backup_management.wal_archive
                  WHERE segment_number IS NOT NULL ORDER BY archived_at, file_name LIMIT 1",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&secret, &path).unwrap();
    db.batch_execute(
        "UPDATE backup_management.remote_backup_configs SET is_active = true WHERE config_name = 'disk'",
    )
    .unwrap();
    let total = archived(&mut db);
    let settled = Cluster::wait_for(Duration::from_secs(60), || {
        let copied: i64 = db
            .query_one(
                "SELECT count(*) FROM backup_management.remote_wal_records",
                &[],
            )
            .unwrap()
            .get(0);
        copied == total - 1
            && (status(&mut db, "disk").1 > 0
                || db
                    .query_one(
                        "SELECT lost_at IS NOT NULL FROM backup_management.wal_archive WHERE file_name = $1",
                        &[&name],
                    )
                    .unwrap()
                    .get::<_, bool>(0))
    });
    assert!(settled, "{:?}\n{}", status(&mut db, "disk"), cluster.log());
    assert!(total >= 3, "{total}");
    let recorded: i64 = db
        .query_one(
            "SELECT count(*) FROM backup_management.remote_wal_records WHERE file_name = $1",
            &[&name],
        )
        .unwrap()
        .get(0);
    assert_eq!(recorded, 0);
    let mut stack = vec![second.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                assert!(
                    !bytes.windows(9).any(|w| w == b"TOPSECRET"),
                    "{p:?} holds the outside file"
                );
            }
        }
    }

    // The target moves to another path: what it held there is not at the new place, so every
    // file is copied again (the planted one still not), and the mirror too.
    db.batch_execute(
        "UPDATE backup_management.remote_backup_configs SET remote_path = 'moved' WHERE config_name = 'disk'",
    )
    .unwrap();
    let sysid: i64 = db
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .unwrap()
        .get(0);
    let moved = second.join("moved");
    let again = Cluster::wait_for(Duration::from_secs(90), || {
        let keys: Vec<String> = db
            .query(
                "SELECT remote_key FROM backup_management.remote_wal_records",
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        keys.len() as i64 == total - 1
            && keys.iter().all(|k| moved.join(k).is_file())
            && moved
                .join(format!("{sysid}/.catalog/catalog_mirror.json"))
                .is_file()
    });
    assert!(again, "{}", cluster.log());
    assert!(cluster.log().contains("names another place now"));
}

/// `options.max_rate_mb` holds a target to a bandwidth: a 16 MB segment at 4 MB/s takes about
/// 4 s to land (a floor, never a speed target); a value that is not a positive number is refused.
#[test]
fn a_bandwidth_limit_holds_a_target_to_its_rate() {
    let (cluster, second) = archiving_cluster(true);
    let second = second.unwrap();
    let mut db = cluster.connect("postgres");
    db.batch_execute("CREATE EXTENSION backup_mgmt").unwrap();
    for bad in ["\"fast\"", "0", "-1"] {
        let e = db
            .execute(
                &format!(
                    "INSERT INTO backup_management.remote_backup_configs
                         (config_name, database_name, remote_type, remote_endpoint, remote_path, options)
                     VALUES ('bad', 'postgres', 'filesystem', $1, 'pg', '{{\"max_rate_mb\": {bad}}}')"
                ),
                &[&second.to_string_lossy().as_ref()],
            )
            .unwrap_err();
        assert_eq!(
            e.code(),
            Some(&postgres::error::SqlState::CHECK_VIOLATION),
            "{bad}: {e}"
        );
    }
    db.execute(
        "INSERT INTO backup_management.remote_backup_configs
             (config_name, database_name, remote_type, remote_endpoint, remote_path, options)
         VALUES ('slow', 'postgres', 'filesystem', $1, 'pg', '{\"max_rate_mb\": 4}')",
        &[&second.to_string_lossy().as_ref()],
    )
    .unwrap();
    switch_segments(&mut db, 2);
    wait_caught_up(&cluster, &mut db, "slow", 2);
    let slowest: f64 = db
        .query_one(
            "SELECT min(extract(epoch FROM r.copied_at - r.archived_at))::float8
               FROM backup_management.remote_wal_records r
              WHERE r.file_size = 16777216",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        slowest >= 3.5,
        "a 16 MB segment landed in {slowest} s at 4 MB/s"
    );
}
