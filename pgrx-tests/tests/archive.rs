//! End-to-end: backup_mgmt as the cluster's WAL archive module (`archive_library`).

use std::time::Duration;

use backup_mgmt_e2e::cluster::{sha256sum, Cluster};

fn archiver(db: &mut postgres::Client) -> (i64, i64, Option<String>) {
    let r = db
        .query_one(
            "SELECT archived_count, failed_count, last_archived_wal FROM pg_stat_archiver",
            &[],
        )
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

#[test]
fn segments_are_archived_durably_and_never_overwritten() {
    let cluster =
        Cluster::start_with_backups(&["archive_mode = on", "archive_library = 'backup_mgmt'"]);
    let mut db = cluster.connect("postgres");
    db.batch_execute("CREATE EXTENSION backup_mgmt").unwrap();
    for _ in 0..3 {
        db.batch_execute(
            "CREATE TABLE IF NOT EXISTS t (g int); INSERT INTO t SELECT generate_series(1, 10000); SELECT pg_switch_wal();",
        )
        .unwrap();
    }
    assert!(
        Cluster::wait_for(Duration::from_secs(30), || archiver(&mut db).0 >= 3),
        "nothing archived\n{}",
        cluster.log()
    );
    let sysid: i64 = db
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .unwrap()
        .get(0);
    let dir = cluster.backup_root().join("wal").join(sysid.to_string());
    let (_, failed, last) = archiver(&mut db);
    assert_eq!(failed, 0);
    let last = last.unwrap();
    let archived = dir.join(&last);
    assert!(archived.is_file(), "{archived:?}");
    assert_eq!(
        std::fs::metadata(&archived).unwrap().len(),
        16 * 1024 * 1024
    );
    let manifest = std::fs::read_to_string(dir.join("archive_manifest.jsonl")).unwrap();
    assert!(
        manifest.contains(&format!("\"name\":\"{last}\""))
            && manifest.contains(&sha256sum(&archived)),
        "{manifest}"
    );

    // The worker records every archived segment in the catalog, with the checksum taken while
    // it was written; a segment missing from the archive shows in wal_gaps.
    assert!(
        Cluster::wait_for(Duration::from_secs(30), || {
            db.query_one(
                "SELECT count(*) FROM backup_management.wal_archive WHERE segment_number IS NOT NULL",
                &[],
            )
            .map(|r| r.get::<_, i64>(0) >= 3)
            .unwrap_or(false)
        }),
        "not ingested\n{}",
        cluster.log()
    );
    let recorded: String = db
        .query_one(
            "SELECT checksum FROM backup_management.wal_archive WHERE file_name = $1",
            &[&last],
        )
        .unwrap()
        .get(0);
    assert_eq!(recorded, sha256sum(&archived));
    assert!(
        Cluster::wait_for(Duration::from_secs(10), || {
            std::fs::read_to_string(cluster.backup_root().join("catalog_mirror.json"))
                .is_ok_and(|m| m.contains(&last))
        }),
        "the catalog mirror does not list the archived WAL"
    );
    let gaps: i64 = db
        .query_one("SELECT count(*) FROM backup_mgmt.wal_gaps", &[])
        .unwrap()
        .get(0);
    assert_eq!(gaps, 0);
    let middle: String = db
        .query_one(
            "DELETE FROM backup_management.wal_archive WHERE file_name = (
                 SELECT file_name FROM backup_management.wal_archive WHERE segment_number IS NOT NULL
                  ORDER BY segment_number OFFSET 1 LIMIT 1) RETURNING file_name",
            &[],
        )
        .unwrap()
        .get(0);
    let missing: Vec<String> = db
        .query("SELECT missing_file_name FROM backup_mgmt.wal_gaps", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(missing, vec![middle]);

    // A different file already under the next segment's name: refused and logged, the archiver
    // keeps running, and the file is left as it was.
    let next: String = db
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
        .unwrap()
        .get(0);
    let planted = dir.join(&next);
    std::fs::write(&planted, b"not this cluster's WAL").unwrap();
    db.batch_execute("INSERT INTO t VALUES (0); SELECT pg_switch_wal();")
        .unwrap();
    assert!(
        Cluster::wait_for(Duration::from_secs(30), || archiver(&mut db).1 >= 1),
        "no failure recorded\n{}",
        cluster.log()
    );
    assert!(
        cluster.log().contains("refusing to overwrite"),
        "{}",
        cluster.log()
    );
    assert_eq!(std::fs::read(&planted).unwrap(), b"not this cluster's WAL");
    let alive: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'archiver'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(alive, 1, "the archiver died");
}
