//! End-to-end against an S3 server that checks AWS Signature V4 on every request (s3s-fs, on
//! loopback): a multipart backup copy, archived WAL and the catalog mirror signed with the right
//! secret are accepted and land intact; the same requests signed with a wrong secret are refused
//! (SignatureDoesNotMatch), recorded as failures, and nothing lands in their bucket.

use std::time::Duration;

use backup_mgmt_e2e::cluster::{sha256sum, Cluster};
use backup_mgmt_e2e::s3server::S3Server;

const ACCESS: &str = "bmtest";
const SECRET: &str = "s3s-secret-4b7e1d";
const WRONG: &str = "wrong-secret-9c2f";

#[test]
fn a_server_that_checks_signatures_accepts_ours_and_refuses_a_wrong_secret() {
    let s3 = S3Server::start_checking_signatures(ACCESS, SECRET);
    s3.create_bucket("good").create_bucket("bad");
    let cluster =
        Cluster::start_with_backups(&["archive_mode = on", "archive_library = 'backup_mgmt'"]);
    let good = cluster.dir().join("good.key");
    cluster.write_private_file(&good, &format!("{ACCESS}:{SECRET}\n"));
    let bad = cluster.dir().join("bad.key");
    cluster.write_private_file(&bad, &format!("{ACCESS}:{WRONG}\n"));
    let mut db = cluster.connect("postgres");
    db.batch_execute(
        "CREATE EXTENSION backup_mgmt;
         CREATE TABLE big AS SELECT g, md5(g::text) || md5((g * 7)::text) AS pad FROM generate_series(1, 150000) g;
         SELECT backup_mgmt.schedule_backup('dump', '@yearly', 'postgres', 'full', 'pg_dump',
                '{\"include_globals\": false, \"compression\": \"none\"}');
         SELECT backup_mgmt.run_job_now('dump');",
    )
    .unwrap();
    db.execute(
        "INSERT INTO backup_management.remote_backup_configs
             (config_name, database_name, remote_type, remote_endpoint, remote_path, credentials_ref, options)
         VALUES ('signed', 'postgres', 's3', $1, 'good/pg', $2, '{\"part_size_mb\": 5}'),
                ('forged', 'postgres', 's3', $1, 'bad/pg', $3, '{}')",
        &[
            &s3.endpoint(),
            &format!("file:{}", good.display()),
            &format!("file:{}", bad.display()),
        ],
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
    for target in ["signed", "forged"] {
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
        .map(|r| r.get::<_, i64>(0) == 2)
        .unwrap_or(false)
    });
    assert!(settled, "{}", cluster.log());

    // Signed right: the dump (a multipart upload of 5 MB parts) lands intact.
    let (sha, size, key): (String, i64, String) = {
        let r = db
            .query_one(
                "SELECT r.checksum, r.backup_size, x.remote_file_path
                   FROM backup_management.backup_records r
                   JOIN backup_management.remote_backup_records x USING (backup_id)
                   JOIN backup_management.remote_backup_configs c USING (config_id)
                  WHERE c.config_name = 'signed' AND x.sync_status = 'completed'",
                &[],
            )
            .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log()));
        (r.get(0), r.get(1), r.get(2))
    };
    assert!(size > 10 << 20, "{size}: not a multipart upload");
    assert_eq!(
        sha256sum(&s3.object_file("good", &format!("pg/{key}"))),
        sha
    );

    // Its WAL and the catalog mirror too.
    let sysid: i64 = db
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .unwrap()
        .get(0);
    let mirror = s3.object_file("good", &format!("pg/{sysid}/.catalog/catalog_mirror.json"));
    let copied = Cluster::wait_for(Duration::from_secs(60), || {
        mirror.is_file()
            && db
                .query_one(
                    "SELECT pending_segments = 0 FROM backup_mgmt.offsite_wal_status WHERE config_name = 'signed'",
                    &[],
                )
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false)
    });
    assert!(copied, "{}", cluster.log());
    let wal = db
        .query(
            "SELECT r.remote_key, r.remote_checksum FROM backup_management.remote_wal_records r
               JOIN backup_management.remote_backup_configs c USING (config_id)
              WHERE c.config_name = 'signed'",
            &[],
        )
        .unwrap();
    assert!(!wal.is_empty());
    for r in &wal {
        let key: String = r.get(0);
        let sha: String = r.get(1);
        assert_eq!(
            sha256sum(&s3.object_file("good", &format!("pg/{key}"))),
            sha
        );
    }

    // Signed with a wrong secret: refused, recorded, nothing stored, the secret nowhere.
    let error: String = db
        .query_one(
            "SELECT x.error_message FROM backup_management.remote_backup_records x
               JOIN backup_management.remote_backup_configs c USING (config_id)
              WHERE c.config_name = 'forged' ORDER BY x.record_id DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(error.contains("SignatureDoesNotMatch"), "{error}");
    let failing = Cluster::wait_for(Duration::from_secs(60), || {
        db.query_one(
            "SELECT failures > 0 AND last_error LIKE '%SignatureDoesNotMatch%'
               FROM backup_mgmt.offsite_wal_status WHERE config_name = 'forged'",
            &[],
        )
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false)
    });
    assert!(failing, "{}", cluster.log());
    // Nothing landed in the forged target's bucket (s3s-fs keeps a bucket's objects, and its
    // own metadata files, in the bucket's directory).
    let landed: Vec<_> = std::fs::read_dir(s3.dir.path().join("bad"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(landed.is_empty(), "{landed:?}");
    // ...nor beside it (its metadata files: `.bucket-<base64 of the bucket's name>.…`).
    let metadata: Vec<_> = std::fs::read_dir(s3.dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".bucket-YmFk."))
        .collect();
    assert!(metadata.is_empty(), "{metadata:?}");
    let log = cluster.log();
    assert!(!log.contains(SECRET) && !log.contains(WRONG));
}
