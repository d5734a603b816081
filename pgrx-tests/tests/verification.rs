//! End-to-end: the worker fills in missing checksums and re-verifies backups on a cadence;
//! verification is for backup_admin only.

use std::time::Duration;

use backup_mgmt_e2e::cluster::{sha256sum, Cluster};
use postgres::fallible_iterator::FallibleIterator;

#[test]
fn worker_computes_missing_checksums_and_catches_bit_rot() {
    let cluster = Cluster::start_with_backups(&["backup_mgmt.verify_interval = 2"]);
    let mut db = cluster.connect("postgres");
    db.batch_execute("CREATE EXTENSION backup_mgmt").unwrap();
    let mut listener = cluster.connect("postgres");
    listener.batch_execute("LISTEN backup_mgmt").unwrap();

    // An external script recorded a backup without a checksum.
    let path = cluster.backup_root().join("external.dump");
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let id: i64 = db
        .query_one(
            "SELECT backup_mgmt.record_backup_start('postgres', 'full', 'pg_dump', $1)",
            &[&path.to_str().unwrap()],
        )
        .unwrap()
        .get(0);
    db.execute(
        "SELECT backup_mgmt.record_backup_complete($1, $2, NULL)",
        &[&id, &(data.len() as i64)],
    )
    .unwrap();

    let filled = Cluster::wait_for(Duration::from_secs(30), || {
        db.query_one(
            "SELECT checksum FROM backup_management.backup_records WHERE backup_id = $1",
            &[&id],
        )
        .map(|r| r.get::<_, Option<String>>(0).is_some())
        .unwrap_or(false)
    });
    assert!(filled, "no checksum computed\n{}", cluster.log());
    let stored: String = db
        .query_one(
            "SELECT checksum FROM backup_management.backup_records WHERE backup_id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(stored, sha256sum(&path));
    // The first checksum verification is the backfill's (same transaction as the checksum);
    // re-verifications every 2 s add more rows, and a detail may be absent.
    let detail: String = db
        .query_one(
            "SELECT verification_status || ': ' || coalesce(verification_result->>'detail', '(no detail)')
               FROM backup_management.backup_verifications
              WHERE backup_id = $1 AND verification_type = 'checksum'
              ORDER BY verification_id LIMIT 1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert!(
        detail.starts_with("passed: no checksum was recorded"),
        "{detail}"
    );

    // Bit rot: one byte changes on disk; the next scheduled verification records it.
    let mut rotten = data.clone();
    rotten[1_234_567] ^= 0x08;
    std::fs::write(&path, &rotten).unwrap();
    let caught = Cluster::wait_for(Duration::from_secs(40), || {
        db.query_one(
            "SELECT count(*) FROM backup_management.backup_verifications
              WHERE backup_id = $1 AND verification_status = 'failed'
                AND verification_result->>'reason' = 'checksum_mismatch'",
            &[&id],
        )
        .map(|r| r.get::<_, i64>(0) >= 1)
        .unwrap_or(false)
    });
    assert!(caught, "bit rot not detected\n{}", cluster.log());
    let notes: Vec<String> = listener
        .notifications()
        .timeout_iter(Duration::from_secs(2))
        .iterator()
        .filter_map(Result::ok)
        .map(|n| n.payload().to_owned())
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("\"event\":\"verification_failed\"")
                && n.contains(&format!("\"backup_id\":{id}"))
                && !n.contains("checksum_mismatch")),
        "{notes:?}"
    );
    assert!(cluster
        .log()
        .contains(&format!("verification of backup {id} failed")));

    // Only backup_admin members may verify.
    db.batch_execute("CREATE ROLE nobody LOGIN").unwrap();
    let mut nobody = cluster.connect_as("postgres", "nobody").unwrap();
    let e = nobody
        .query_one("SELECT backup_mgmt.verify_backup_integrity($1)", &[&id])
        .expect_err("an ordinary role verified a backup");
    assert_eq!(e.code().map(|c| c.code()), Some("42501"), "{e}");
}

/// The starvation of issue 15: a completed backup without a checksum whose file is gone was
/// retried first on every search, so with a short `verify_interval` no other backup was ever
/// verified again.  Now every backup gets its turn, and the unreadable one is tried less and less
/// often (each attempt recorded once), as `upkeep_queue` shows.
#[test]
fn an_unreadable_backup_does_not_starve_re_verification() {
    let cluster = Cluster::start_with_backups(&["backup_mgmt.verify_interval = 4"]);
    let mut db = cluster.connect("postgres");
    db.batch_execute("CREATE EXTENSION backup_mgmt").unwrap();
    let record = |db: &mut postgres::Client, name: &str, bytes: Option<&[u8]>| -> i64 {
        let path = cluster.backup_root().join(name);
        let id: i64 = db
            .query_one(
                "SELECT backup_mgmt.record_backup_start('postgres', 'full', 'pg_dump', $1)",
                &[&path.to_str().unwrap()],
            )
            .unwrap()
            .get(0);
        let (size, sum) = match bytes {
            Some(b) => {
                std::fs::write(&path, b).unwrap();
                (b.len() as i64, Some(sha256sum(&path)))
            }
            None => (100, None),
        };
        db.execute(
            "SELECT backup_mgmt.record_backup_complete($1, $2, $3)",
            &[&id, &size, &sum],
        )
        .unwrap();
        id
    };
    // Recorded without a checksum by a script that then deleted the file.
    let gone = record(&mut db, "gone.dump", None);
    let good: Vec<i64> = (0..3)
        .map(|i| {
            record(
                &mut db,
                &format!("good{i}.dump"),
                Some(&vec![i as u8; 100_000]),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_secs(45));
    let count = |db: &mut postgres::Client, id: i64| -> i64 {
        db.query_one(
            "SELECT count(*) FROM backup_management.backup_verifications
              WHERE backup_id = $1 AND verification_type = 'checksum'",
            &[&id],
        )
        .unwrap()
        .get(0)
    };
    for id in &good {
        let n = count(&mut db, *id);
        assert!(
            n >= 2,
            "backup {id} verified {n} time(s) in 45 s with verify_interval = 4 s\n{}",
            cluster.log()
        );
    }
    // Back-off 4 s, 8, 16, 32...: at most 4 attempts in 45 s, each recorded once.
    let attempts = count(&mut db, gone);
    assert!((1..=4).contains(&attempts), "{attempts} attempts");
    let (failures, error): (i32, Option<String>) = db
        .query_one(
            "SELECT consecutive_failures, last_error FROM backup_mgmt.upkeep_queue WHERE backup_id = $1",
            &[&gone],
        )
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(i64::from(failures), attempts);
    assert!(error.is_some_and(|e| e.contains("missing")));
}
