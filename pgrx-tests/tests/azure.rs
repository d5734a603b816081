//! End-to-end against Azurite (Microsoft's Azure Blob emulator, which checks every request's
//! SharedKey signature), on loopback: a dump with its globals (a multipart upload of 5 MB
//! blocks), archived WAL and the catalog mirror reach an `azure` target and are verified by
//! reading them back; the restore program, with only the container and the key's reference,
//! lists the cluster, fetches a WAL file and brings the dump back into a fresh server, roles
//! first.  A target with a wrong key is refused (HTTP 403), recorded as failed, and neither key
//! reaches the log.

use std::time::Duration;

use backup_mgmt_e2e::azurite::{Azurite, ACCOUNT, KEY};
use backup_mgmt_e2e::cluster::Cluster;
use backup_mgmt_e2e::program::run;

/// A well-formed key that is not the account's.
const WRONG: &str = "d3JvbmctYnV0LXdlbGwtZm9ybWVkLWtleS1mb3ItdGhlLXRlc3QtMDEyMzQ1Njc4OQ==";

#[test]
fn backups_wal_and_the_mirror_reach_azure_verified_and_come_back() {
    let azure = Azurite::start();
    azure.create_container("backups").create_container("forged");
    let cluster =
        Cluster::start_with_backups(&["archive_mode = on", "archive_library = 'backup_mgmt'"]);
    let good = cluster.dir().join("azure.key");
    cluster.write_private_file(&good, &format!("{ACCOUNT}:{KEY}\n"));
    let bad = cluster.dir().join("wrong.key");
    cluster.write_private_file(&bad, &format!("{ACCOUNT}:{WRONG}\n"));
    let mut db = cluster.connect("postgres");
    db.batch_execute(
        "CREATE EXTENSION backup_mgmt;
         CREATE ROLE shop_owner LOGIN;
         CREATE SCHEMA shop AUTHORIZATION shop_owner;
         SET ROLE shop_owner;
         CREATE TABLE shop.big AS SELECT g, md5(g::text) || md5((g * 7)::text) AS pad FROM generate_series(1, 150000) g;
         RESET ROLE;
         SELECT backup_mgmt.schedule_backup('dump', '@yearly', 'postgres', 'full', 'pg_dump',
                '{\"include_globals\": true, \"compression\": \"none\"}');
         SELECT backup_mgmt.run_job_now('dump');",
    )
    .unwrap();
    let done = Cluster::wait_for(Duration::from_secs(120), || {
        db.query_one(
            "SELECT count(*) FROM backup_management.backup_records WHERE label = 'dump' AND status = 'completed'",
            &[],
        )
        .map(|r| r.get::<_, i64>(0) == 1)
        .unwrap_or(false)
    });
    assert!(done, "no dump\n{}", cluster.log());
    db.execute(
        "INSERT INTO backup_management.remote_backup_configs
             (config_name, database_name, remote_type, remote_endpoint, remote_path, credentials_ref, options)
         VALUES ('azure', 'postgres', 'azure', $1, 'backups/pg', $2, '{\"part_size_mb\": 5, \"io_timeout_s\": 30}'),
                ('forged', 'postgres', 'azure', $1, 'forged/pg', $3, '{}'),
                ('missing', 'postgres', 'azure', $1, 'nosuch/pg', $2, '{}')",
        &[
            &azure.endpoint(),
            &format!("file:{}", good.display()),
            &format!("file:{}", bad.display()),
        ],
    )
    .unwrap();
    for target in ["azure", "forged", "missing"] {
        db.execute("SELECT backup_mgmt.sync_remote_now($1)", &[&target])
            .unwrap();
    }
    db.batch_execute("SELECT pg_switch_wal()").unwrap();
    let settled = Cluster::wait_for(Duration::from_secs(120), || {
        db.query_one(
            "SELECT count(*) FROM backup_management.remote_backup_configs
              WHERE sync_status IN ('completed', 'failed')",
            &[],
        )
        .map(|r| r.get::<_, i64>(0) == 3)
        .unwrap_or(false)
    });
    assert!(settled, "{}", cluster.log());

    // The dump (several blocks) and its globals: copied, read back, their sha256 the catalog's.
    let copies = db
        .query(
            "SELECT r.checksum, x.remote_checksum, r.backup_size, x.sync_status
               FROM backup_management.backup_records r
               JOIN backup_management.remote_backup_records x USING (backup_id)
               JOIN backup_management.remote_backup_configs c USING (config_id)
              WHERE c.config_name = 'azure'",
            &[],
        )
        .unwrap();
    assert!(!copies.is_empty(), "{}", cluster.log());
    for c in &copies {
        assert_eq!(c.get::<_, String>(3), "completed", "{}", cluster.log());
        assert_eq!(c.get::<_, Option<String>>(0), c.get::<_, Option<String>>(1));
    }
    assert!(
        copies.iter().any(|c| c.get::<_, i64>(2) > 10 << 20),
        "not a multipart upload"
    );

    // Its WAL and the catalog mirror follow.
    let sysid: i64 = db
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .unwrap()
        .get(0);
    let shipped = Cluster::wait_for(Duration::from_secs(90), || {
        db.query_one(
            "SELECT pending_segments = 0 AND failures = 0 FROM backup_mgmt.offsite_wal_status
              WHERE config_name = 'azure'",
            &[],
        )
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false)
    });
    assert!(shipped, "{}", cluster.log());
    let wal: Vec<String> = db
        .query(
            "SELECT r.remote_key FROM backup_management.remote_wal_records r
               JOIN backup_management.remote_backup_configs c USING (config_id)
              WHERE c.config_name = 'azure' ORDER BY r.remote_key",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!wal.is_empty());

    // A wrong key: refused by the server, recorded, neither key in the log.
    let error: String = db
        .query_one(
            "SELECT x.error_message FROM backup_management.remote_backup_records x
               JOIN backup_management.remote_backup_configs c USING (config_id)
              WHERE c.config_name = 'forged' ORDER BY x.record_id DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(error.contains("HTTP 403"), "{error}");
    let log = cluster.log();
    assert!(!log.contains(KEY) && !log.contains(WRONG));
    let recorded: String = db
        .query_one(
            "SELECT coalesce(string_agg(error_message, ' '), '') FROM backup_management.remote_backup_records",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(!recorded.contains(KEY) && !recorded.contains(WRONG));
    // A container that does not exist: said so, nothing created.
    let missing: String = db
        .query_one(
            "SELECT x.error_message FROM backup_management.remote_backup_records x
               JOIN backup_management.remote_backup_configs c USING (config_id)
              WHERE c.config_name = 'missing' ORDER BY x.record_id DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(
        missing.contains("container nosuch does not exist"),
        "{missing}"
    );

    // The restore program, with the container and the key's reference only.
    let restorer = Cluster::start(&[]);
    let key_file = restorer.dir().join("azure.key");
    restorer.write_private_file(&key_file, &format!("{ACCOUNT}:{KEY}\n"));
    let with = |more: &[&str]| -> Vec<String> {
        [
            "--azure-endpoint",
            &azure.endpoint(),
            "--azure-path",
            "backups/pg",
            "--azure-credentials",
            &format!("file:{}", key_file.display()),
        ]
        .iter()
        .chain(more)
        .map(|s| s.to_string())
        .collect()
    };
    let mirrored = Cluster::wait_for(Duration::from_secs(60), || {
        let (code, out, _) = run(&restorer, &with(&["--output", "json", "list"]));
        code == 0
            && serde_json::from_str::<serde_json::Value>(&out).is_ok_and(|v| {
                v["clusters"].as_array().is_some_and(|c| {
                    c.iter().any(|c| {
                        c["system_identifier"].as_i64() == Some(sysid)
                            && c["backups"].as_array().is_some_and(|b| !b.is_empty())
                    })
                })
            })
    });
    assert!(mirrored, "{}", cluster.log());

    // One WAL file, checked against the mirror's sha256 as it is fetched.
    let first = wal[0].rsplit('/').next().unwrap();
    let segment = first.split('.').next().unwrap();
    let dest = restorer.dir().join("fetched");
    let (code, _, err) = run(
        &restorer,
        &with(&[
            "--cluster",
            &sysid.to_string(),
            "wal-fetch",
            segment,
            dest.to_str().unwrap(),
        ]),
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), 16 << 20);

    // The dump into a fresh database of that server: its roles first, then the data.
    let (code, out, err) = run(
        &restorer,
        &with(&[
            "--cluster",
            &sysid.to_string(),
            "--output",
            "json",
            "restore-logical",
            "--source-database",
            "postgres",
            "--database",
            "restored",
            "--host",
            restorer.socket_dir().to_str().unwrap(),
            "--port",
            &restorer.port.to_string(),
            "--user",
            "postgres",
            "--pg-bin",
            backup_mgmt_e2e::cluster::bindir().to_str().unwrap(),
        ]),
    );
    assert_eq!(code, 0, "{out}\n{err}\n{}", restorer.log());
    let mut r = restorer.connect("restored");
    let row = r
        .query_one(
            "SELECT count(*), pg_catalog.pg_get_userbyid(c.relowner)::text
               FROM shop.big, pg_catalog.pg_class c
              WHERE c.oid = 'shop.big'::regclass GROUP BY c.relowner",
            &[],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 150_000);
    assert_eq!(row.get::<_, String>(1), "shop_owner", "{out}");
}
