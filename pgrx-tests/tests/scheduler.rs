//! End-to-end: the job API in a real cluster, from client connections.

use backup_mgmt_e2e::cluster::Cluster;

#[test]
fn jobs_are_scheduled_only_in_the_catalog_database() {
    let cluster = Cluster::start(&["shared_preload_libraries = 'backup_mgmt'"]);
    let mut db = cluster.connect("postgres");
    // Separate statements: CREATE DATABASE cannot run in batch_execute's implicit transaction.
    for sql in [
        "CREATE EXTENSION backup_mgmt",
        "CREATE DATABASE appdb",
        "CREATE ROLE ops LOGIN IN ROLE backup_admin",
    ] {
        db.batch_execute(sql).unwrap();
    }

    // An operator schedules a nightly backup of another database from the catalog database.
    let mut ops = cluster.connect_as("postgres", "ops").unwrap();
    let id: i64 = ops
        .query_one(
            "SELECT backup_mgmt.schedule_backup('appdb-nightly', '30 2 * * *', 'appdb', 'full', 'pg_dump')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(id >= 1);
    let runs: i64 = ops
        .query_one(
            "SELECT count(*) FROM backup_mgmt.next_runs('appdb-nightly', 3)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(runs, 3);

    // The same extension in another database: scheduling there would never run, so it is refused.
    let mut app = cluster.connect("appdb");
    app.batch_execute("CREATE EXTENSION backup_mgmt").unwrap();
    let e = app
        .execute(
            "SELECT backup_mgmt.schedule_backup('x', '@daily', 'appdb')",
            &[],
        )
        .expect_err("scheduled outside the catalog database");
    let dbe = e.as_db_error().unwrap();
    assert_eq!(dbe.code().code(), "55000", "{}", dbe.message());
    assert!(dbe.message().contains("\"postgres\""), "{}", dbe.message());
}
