//! End-to-end off-site copies to a real S3-compatible server on loopback (s3rver, from npm):
//! backups land as multipart uploads, each upload is verified, retention removes an expired copy
//! and keeps the pinned one, unknown credentials are refused, and the secret never lands in a
//! table, a log line or a NOTIFY payload.  (s3rver checks the access key id but not the V4
//! signature itself; the signing code is checked against AWS's published example in s3.rs.)

use std::path::PathBuf;
use std::time::Duration;

use backup_mgmt_e2e::cluster::{sha256sum, Cluster};
use backup_mgmt_e2e::s3server::S3Server;
use postgres::fallible_iterator::FallibleIterator;

/// s3rver's fixed secret (its access key id is the same string).
const SECRET: &str = "S3RVER";
/// A wrong secret, distinctive enough to grep for.
const WRONG: &str = "wrong-secret-7f3a9c";

fn sync_and_wait(cluster: &Cluster, db: &mut postgres::Client, config: &str) -> String {
    db.execute("SELECT backup_mgmt.sync_remote_now($1)", &[&config])
        .unwrap();
    let mut status = String::new();
    let ok = Cluster::wait_for(Duration::from_secs(120), || {
        status = db
            .query_one(
                "SELECT sync_status FROM backup_management.remote_backup_configs WHERE config_name = $1",
                &[&config],
            )
            .map(|r| r.get(0))
            .unwrap_or_default();
        status == "completed" || status == "failed"
    });
    assert!(ok, "{config}: no sync ({status})\n{}", cluster.log());
    status
}

/// A cluster with an `appdb` (made by `appdb_sql`), and a credentials file for s3rver's key.
fn cluster_with_appdb(appdb_sql: &str) -> (Cluster, postgres::Client, PathBuf) {
    let cluster = Cluster::start_with_backups(&[]);
    let key_file = cluster.dir().join("s3.key");
    cluster.write_private_file(&key_file, &format!("S3RVER:{SECRET}\n"));
    let mut db = cluster.connect("postgres");
    db.batch_execute("CREATE DATABASE appdb").unwrap();
    if !appdb_sql.is_empty() {
        cluster.connect("appdb").batch_execute(appdb_sql).unwrap();
    }
    (cluster, db, key_file)
}

/// Waits until job `label` has `n` completed backups.
fn wait_completed(cluster: &Cluster, db: &mut postgres::Client, label: &str, n: i64) {
    let ok = Cluster::wait_for(Duration::from_secs(120), || {
        db.query_one(
            "SELECT count(*) FROM backup_management.backup_records WHERE label = $1 AND status = 'completed'",
            &[&label],
        )
        .map(|r| r.get::<_, i64>(0) >= n)
        .unwrap_or(false)
    });
    assert!(ok, "{label}: {n} backups not taken\n{}", cluster.log());
}

#[test]
fn backups_reach_object_storage_verified_and_no_secret_leaks() {
    let s3 = S3Server::start();
    s3.create_bucket("offsite");
    let (cluster, mut db, key_file) = cluster_with_appdb(
        "CREATE TABLE t AS SELECT g, md5(g::text) || md5((g * 7)::text) AS pad FROM generate_series(1, 150000) g",
    );
    let bad_file = cluster.dir().join("bad.key");
    cluster.write_private_file(&bad_file, &format!("NOSUCHKEY:{WRONG}\n"));
    let mut listener = cluster.connect("postgres");
    listener.batch_execute("LISTEN backup_mgmt").unwrap();
    db.batch_execute(
        "CREATE EXTENSION backup_mgmt;
         SELECT backup_mgmt.schedule_backup('nightly', '@yearly', 'appdb', 'full', 'pg_dump',
                '{\"include_globals\": false, \"compression\": \"none\"}');
         INSERT INTO backup_management.retention_policies
             (policy_name, keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly)
         VALUES ('nothing', NULL, 0, 0, 0, 0);",
    )
    .unwrap();
    db.execute(
        "INSERT INTO backup_management.remote_backup_configs
             (config_name, database_name, remote_type, remote_endpoint, remote_path, credentials_ref, options)
         VALUES ('bucket', 'appdb', 's3', $1, 'offsite/fleet', $2,
                 '{\"region\": \"us-east-1\", \"part_size_mb\": 5}'),
                ('bad-key', 'appdb', 's3', $1, 'offsite/bad', $3, '{}')",
        &[
            &s3.endpoint(),
            &format!("file:{}", key_file.display()),
            &format!("file:{}", bad_file.display()),
        ],
    )
    .unwrap();
    for n in 1..=2i64 {
        db.execute("SELECT backup_mgmt.run_job_now('nightly')", &[])
            .unwrap();
        wait_completed(&cluster, &mut db, "nightly", n);
    }
    let backups: Vec<(i64, i64, String, String)> = db
        .query(
            "SELECT backup_id, backup_size, checksum, backup_file_path FROM backup_management.backup_records
              WHERE label = 'nightly' ORDER BY backup_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    // Larger than one 5 MB part: a multipart upload.
    assert!(backups.iter().all(|b| b.1 > 5 << 20), "{backups:?}");

    assert_eq!(
        sync_and_wait(&cluster, &mut db, "bucket"),
        "completed",
        "{}",
        cluster.log()
    );
    let copies: Vec<(i64, String, String, i32)> = db
        .query(
            "SELECT x.backup_id, x.remote_file_path, x.remote_checksum, x.attempt
               FROM backup_management.remote_backup_records x
               JOIN backup_management.remote_backup_configs c USING (config_id)
              WHERE c.config_name = 'bucket' AND x.sync_status = 'completed' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(copies.len(), 2);
    for ((id, key, sha, attempt), (bid, _, checksum, _)) in copies.iter().zip(&backups) {
        assert_eq!((id, sha, *attempt), (bid, checksum, 1));
        // What the server stored is the backup, byte for byte.
        let stored = s3.object_file("offsite", &format!("fleet/{key}"));
        assert_eq!(&sha256sum(&stored), checksum, "{}", stored.display());
    }

    // Unknown credentials: refused by the server, recorded as failed.
    assert_eq!(sync_and_wait(&cluster, &mut db, "bad-key"), "failed");
    let errors: Vec<String> = db
        .query(
            "SELECT x.error_message FROM backup_management.remote_backup_records x
               JOIN backup_management.remote_backup_configs c USING (config_id)
              WHERE c.config_name = 'bad-key'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!errors.is_empty());
    assert!(
        errors
            .iter()
            .all(|e| e.contains("SignatureDoesNotMatch") || e.contains("HTTP 403")),
        "{errors:?}"
    );

    // Retention: the pinned backup's copy stays, the other's is removed from the bucket.
    let (pinned, expired) = (backups[0].0, backups[1].0);
    db.execute(
        "SELECT backup_mgmt.pin_backup($1, 'legal hold')",
        &[&pinned],
    )
    .unwrap();
    db.query(
        "SELECT * FROM backup_mgmt.apply_retention('nightly', 'nothing')",
        &[],
    )
    .unwrap();
    assert_eq!(sync_and_wait(&cluster, &mut db, "bucket"), "completed");
    let key_of = |id: i64| copies.iter().find(|c| c.0 == id).unwrap().1.clone();
    assert!(s3
        .object_file("offsite", &format!("fleet/{}", key_of(pinned)))
        .exists());
    assert!(!s3
        .object_file("offsite", &format!("fleet/{}", key_of(expired)))
        .exists());
    let status: String = db
        .query_one(
            "SELECT sync_status FROM backup_management.remote_backup_records WHERE backup_id = $1 AND sync_status <> 'failed'",
            &[&expired],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "expired");

    // No secret anywhere: not in any table (a full dump of the catalog database), not in the
    // server log, not in a notification.
    let dump = cluster.run_client("pg_dump", &["--data-only", "postgres"]);
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.contains("file:"),
        "the dump has the credential references"
    );
    for secret in [SECRET, WRONG] {
        assert!(!dump.contains(secret), "{secret} in a table");
        assert!(!cluster.log().contains(secret), "{secret} in the log");
    }
    let notes: Vec<String> = listener
        .notifications()
        .timeout_iter(Duration::from_secs(1))
        .iterator()
        .filter_map(Result::ok)
        .map(|n| n.payload().to_owned())
        .collect();
    assert!(!notes.is_empty(), "no notifications seen");
    assert!(notes
        .iter()
        .all(|n| !n.contains(SECRET) && !n.contains(WRONG)));
}

/// A directory-format backup goes up file by file under its key, each file verified, and
/// retention removes all of them.
#[test]
fn directory_backups_are_copied_file_by_file() {
    let s3 = S3Server::start();
    s3.create_bucket("dirs");
    let (cluster, mut db, key_file) = cluster_with_appdb(
        "CREATE TABLE a AS SELECT generate_series(1, 50000) g; CREATE TABLE b AS SELECT 1 x",
    );
    db.batch_execute(
        "CREATE EXTENSION backup_mgmt;
         SELECT backup_mgmt.schedule_backup('dir', '@yearly', 'appdb', 'full', 'pg_dump_directory');
         SELECT backup_mgmt.run_job_now('dir');
         INSERT INTO backup_management.retention_policies
             (policy_name, keep_last, keep_daily, keep_weekly, keep_monthly, keep_yearly)
         VALUES ('nothing', NULL, 0, 0, 0, 0);",
    )
    .unwrap();
    db.execute(
        "INSERT INTO backup_management.remote_backup_configs
             (config_name, database_name, remote_type, remote_endpoint, remote_path, credentials_ref, options)
         VALUES ('bucket', 'appdb', 's3', $1, 'dirs', $2, '{}')",
        &[&s3.endpoint(), &format!("file:{}", key_file.display())],
    )
    .unwrap();
    wait_completed(&cluster, &mut db, "dir", 1);
    assert_eq!(
        sync_and_wait(&cluster, &mut db, "bucket"),
        "completed",
        "{}",
        cluster.log()
    );
    let (local, key, sha, checksum): (String, String, String, String) = db
        .query_one(
            "SELECT b.backup_file_path, x.remote_file_path, x.remote_checksum, b.checksum
               FROM backup_management.remote_backup_records x JOIN backup_management.backup_records b USING (backup_id)
              WHERE x.sync_status = 'completed'",
            &[],
        )
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .unwrap();
    assert_eq!(sha, checksum, "the copy's sha256 is the manifest's");
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(&local)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.len() >= 3, "{files:?}");
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let stored = s3.object_file("dirs", &format!("{key}/{name}"));
        assert_eq!(sha256sum(&stored), sha256sum(f), "{name}");
    }
    db.query(
        "SELECT * FROM backup_mgmt.apply_retention('dir', 'nothing')",
        &[],
    )
    .unwrap();
    assert_eq!(sync_and_wait(&cluster, &mut db, "bucket"), "completed");
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !s3.object_file("dirs", &format!("{key}/{name}")).exists(),
            "{name} left in the bucket"
        );
    }
}

/// HTTPS with a self-signed certificate: trusted through the target's `ca_file`, refused
/// without it.
#[test]
fn https_with_a_private_ca() {
    // A private CA and a server certificate it signed, for 127.0.0.1.
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    let (cert, key) = (d.join("cert.pem"), d.join("key.pem"));
    std::fs::write(d.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    let openssl = |args: &[&str]| {
        let ok = std::process::Command::new("openssl")
            .args(args)
            .current_dir(d)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl {args:?}");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=backup_mgmt test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "key.pem",
        "-out",
        "server.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        "-out",
        "cert.pem",
    ]);
    let s3 = S3Server::start_tls(&cert, &key);
    s3.create_bucket("tls");
    assert!(s3.endpoint().starts_with("https://"));
    let (cluster, mut db, key_file) = cluster_with_appdb("");
    let ca = cluster.dir().join("ca.pem");
    cluster.write_private_file(&ca, &std::fs::read_to_string(d.join("ca.pem")).unwrap());
    db.batch_execute(
        "CREATE EXTENSION backup_mgmt;
         SELECT backup_mgmt.schedule_backup('nightly', '@yearly', 'appdb');
         SELECT backup_mgmt.run_job_now('nightly');",
    )
    .unwrap();
    let options = format!("{{\"ca_file\": \"{}\"}}", ca.display());
    db.execute(
        "INSERT INTO backup_management.remote_backup_configs
             (config_name, database_name, remote_type, remote_endpoint, remote_path, credentials_ref, options)
         VALUES ('trusted', 'appdb', 's3', $1, 'tls/a', $2, $3::text::jsonb),
                ('untrusted', 'appdb', 's3', $1, 'tls/b', $2, '{}')",
        &[&s3.endpoint(), &format!("file:{}", key_file.display()), &options],
    )
    .unwrap();
    wait_completed(&cluster, &mut db, "nightly", 1);
    assert_eq!(
        sync_and_wait(&cluster, &mut db, "trusted"),
        "completed",
        "{}",
        cluster.log()
    );
    assert_eq!(sync_and_wait(&cluster, &mut db, "untrusted"), "failed");
    let error: String = db
        .query_one(
            "SELECT x.error_message FROM backup_management.remote_backup_records x
               JOIN backup_management.remote_backup_configs c USING (config_id)
              WHERE c.config_name = 'untrusted' LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(error.to_lowercase().contains("certificate"), "{error}");
}

/// Whether s3rver has stored at least one part of a multipart upload (`<part>.md5` is written
/// after the part's bytes).
fn a_part_landed(dir: &std::path::Path) -> bool {
    fn walk(dir: &std::path::Path) -> bool {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                let p = e.path();
                if p.is_dir() {
                    walk(&p)
                } else {
                    p.extension().is_some_and(|x| x == "md5")
                        && p.parent()
                            .and_then(|d| d.parent())
                            .is_some_and(|d| d.to_string_lossy().contains("uploads"))
                }
            })
    }
    walk(dir)
}

/// Issue 15: the server is killed (-9) in the middle of a multipart upload and comes back later.
/// Every attempt while it is gone is recorded as failed with its error, nothing is recorded as
/// copied, no object is visible under the backup's key; after the restart the next sync copies
/// the backup once, verified byte for byte, and the catalog then holds exactly one completed copy.
#[test]
fn the_server_dying_mid_upload_is_retried_and_nothing_partial_counts() {
    let mut s3 = S3Server::start();
    s3.create_bucket("offsite");
    // About 75 MB uncompressed: fifteen 5 MB parts, so the kill lands mid-upload.
    let (cluster, mut db, key_file) = cluster_with_appdb(
        "CREATE TABLE t AS SELECT g, md5(g::text) || md5((g * 7)::text) AS pad FROM generate_series(1, 1000000) g",
    );
    db.batch_execute(
        "CREATE EXTENSION backup_mgmt;
         SELECT backup_mgmt.schedule_backup('nightly', '@yearly', 'appdb', 'full', 'pg_dump',
                '{\"include_globals\": false, \"compression\": \"none\"}');",
    )
    .unwrap();
    db.execute(
        "INSERT INTO backup_management.remote_backup_configs
             (config_name, database_name, remote_type, remote_endpoint, remote_path, credentials_ref, options)
         VALUES ('bucket', 'appdb', 's3', $1, 'offsite/fleet', $2,
                 '{\"region\": \"us-east-1\", \"part_size_mb\": 5}')",
        &[&s3.endpoint(), &format!("file:{}", key_file.display())],
    )
    .unwrap();
    db.execute("SELECT backup_mgmt.run_job_now('nightly')", &[])
        .unwrap();
    wait_completed(&cluster, &mut db, "nightly", 1);
    let (backup_id, size, checksum): (i64, i64, String) = {
        let r = db
            .query_one(
                "SELECT backup_id, backup_size, checksum FROM backup_management.backup_records WHERE label = 'nightly'",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert!(
        size > 15 << 20,
        "{size} bytes: too few parts to stop mid-upload"
    );

    // The kill, as soon as the first part is stored.
    db.execute("SELECT backup_mgmt.sync_remote_now('bucket')", &[])
        .unwrap();
    // Polled closely: the rest of the upload takes well under a second.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !a_part_landed(s3.dir.path()) {
        assert!(
            std::time::Instant::now() < deadline,
            "no part reached the server\n{}",
            cluster.log()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    s3.kill();
    let mut status = String::new();
    let ended = Cluster::wait_for(Duration::from_secs(120), || {
        status = db
            .query_one(
                "SELECT sync_status FROM backup_management.remote_backup_configs WHERE config_name = 'bucket'",
                &[],
            )
            .map(|r| r.get(0))
            .unwrap_or_default();
        status == "completed" || status == "failed"
    });
    assert!(ended, "the sync did not end ({status})\n{}", cluster.log());
    assert_eq!(status, "failed", "{}", cluster.log());
    let attempts: Vec<(String, i32, Option<String>, Option<String>)> = db
        .query(
            "SELECT sync_status, attempt, remote_checksum, error_message
               FROM backup_management.remote_backup_records WHERE backup_id = $1 ORDER BY record_id",
            &[&backup_id],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    // Every attempt retried and failed, each with why; none counts as a copy.
    assert_eq!(
        attempts.iter().map(|a| a.1).collect::<Vec<_>>(),
        vec![1, 2, 3],
        "{attempts:?}"
    );
    for (status, _, sha, error) in &attempts {
        assert_eq!(status, "failed", "{attempts:?}");
        assert!(sha.is_none(), "{attempts:?}");
        assert!(
            error.as_deref().is_some_and(|e| !e.is_empty()),
            "{attempts:?}"
        );
    }
    // No object stored: the upload was never completed (its parts are not an object).  (The
    // cluster's catalog mirror, which the worker keeps on every active target, may be there.)
    let visible: Vec<_> = walk_objects(s3.dir.path())
        .into_iter()
        .filter(|o| !o.contains("/.catalog/"))
        .collect();
    assert!(visible.is_empty(), "{visible:?}");

    // The server comes back: the next sync copies the backup once, verified.
    s3.restart();
    assert_eq!(
        sync_and_wait(&cluster, &mut db, "bucket"),
        "completed",
        "{}",
        cluster.log()
    );
    let done: Vec<(String, String)> = db
        .query(
            "SELECT remote_file_path, remote_checksum FROM backup_management.remote_backup_records
              WHERE backup_id = $1 AND sync_status = 'completed'",
            &[&backup_id],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].1, checksum);
    let stored = s3.object_file("offsite", &format!("fleet/{}", done[0].0));
    assert_eq!(sha256sum(&stored), checksum, "{}", stored.display());
    // One object for the backup, not two.
    let objects: Vec<_> = walk_objects(s3.dir.path())
        .into_iter()
        .filter(|p| p.ends_with("._S3rver_object") && !p.contains("/.catalog/"))
        .collect();
    assert_eq!(objects.len(), 1, "{objects:?}");
    // A further sync has nothing left to copy: still one completed copy.
    assert_eq!(sync_and_wait(&cluster, &mut db, "bucket"), "completed");
    let copies: i64 = db
        .query_one(
            "SELECT count(*) FROM backup_management.remote_backup_records WHERE backup_id = $1 AND sync_status = 'completed'",
            &[&backup_id],
        )
        .unwrap()
        .get(0);
    assert_eq!(copies, 1);
}

/// Every file s3rver stores under `dir`, as paths relative to it (multipart upload parts
/// excluded).
fn walk_objects(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(dir)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            if rel.contains("uploads") {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if rel.ends_with("._S3rver_object") {
                out.push(rel);
            }
        }
    }
    out
}
