//! End-to-end: the extension installed into the system PostgreSQL, in freshly initdb'd clusters,
//! driven over a client connection the way psql or an application would.

use std::time::Duration;

use backup_mgmt_e2e::cluster::Cluster;
use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;

const PRELOAD: &str = "shared_preload_libraries = 'backup_mgmt'";
const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

const TABLES: [&str; 8] = [
    "backup_management.backup_records",
    "backup_management.backup_verifications",
    "backup_management.remote_backup_configs",
    "backup_management.remote_backup_records",
    "disaster_recovery.recovery_plans",
    "disaster_recovery.recovery_drills",
    "enterprise_backup.backup_jobs",
    "enterprise_backup.backup_job_executions",
];

/// The design's indexes, which must all exist after CREATE EXTENSION.  The design's
/// idx_backup_records_status (status, start_time DESC) is replaced by idx_backup_records_start
/// (start_time DESC) so that completing a backup is a HOT update (see sql/schema.sql).
const DESIGN_INDEXES: [&str; 10] = [
    "idx_backup_records_database",
    "idx_backup_records_start",
    "idx_backup_records_type",
    "idx_backup_verifications_backup",
    "idx_backup_verifications_status",
    "idx_recovery_drills_plan",
    "idx_remote_backup_records_backup",
    "idx_remote_backup_records_config",
    "idx_backup_job_executions_job",
    "idx_backup_job_executions_status",
];

fn with_extension() -> (Cluster, postgres::Client) {
    let cluster = Cluster::start_with_backups(&[PRELOAD]);
    let mut db = cluster.connect("postgres");
    db.batch_execute("CREATE EXTENSION backup_mgmt")
        .expect("CREATE EXTENSION");
    (cluster, db)
}

/// `name` under the cluster's backup root, where a script writes the backups it registers.
fn at(cluster: &Cluster, name: &str) -> String {
    cluster.backup_root().join(name).display().to_string()
}

/// Records the start of a full pg_dump backup of `database`, as an external script would.
fn start_backup(db: &mut postgres::Client, database: &str, path: &str) -> i64 {
    db.query_one(
        "SELECT backup_mgmt.record_backup_start($1, 'full', 'pg_dump', $2)",
        &[&database, &path],
    )
    .unwrap_or_else(|e| panic!("record_backup_start({database}, {path}): {e}"))
    .get(0)
}

fn sqlstate(e: &postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

#[test]
fn create_extension_builds_the_catalog_and_drop_removes_it() {
    let (cluster, mut db) = with_extension();
    for t in TABLES {
        let exists: bool = db
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&t])
            .unwrap()
            .get(0);
        assert!(exists, "{t} missing");
    }
    for i in DESIGN_INDEXES {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_indexes WHERE indexname = $1",
                &[&i],
            )
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "index {i} missing");
    }
    let role: bool = db
        .query_one("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = 'backup_admin' AND NOT rolcanlogin)", &[])
        .unwrap()
        .get(0);
    assert!(role, "backup_admin NOLOGIN role");

    db.batch_execute("DROP EXTENSION backup_mgmt").unwrap();
    for t in TABLES {
        let exists: bool = db
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&t])
            .unwrap()
            .get(0);
        assert!(!exists, "{t} survived DROP EXTENSION");
    }
    let schemas: i64 = db
        .query_one(
            "SELECT count(*) FROM pg_namespace
              WHERE nspname IN ('backup_management', 'disaster_recovery', 'enterprise_backup')",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(schemas, 0, "catalog schemas survived DROP EXTENSION");
    // And it can be created again in the same session (kept plans must not point at the old tables).
    db.batch_execute("CREATE EXTENSION backup_mgmt").unwrap();
    let id: i64 = start_backup(&mut db, "postgres", &at(&cluster, "x.dump"));
    assert!(id >= 1);
}

#[test]
fn record_functions_work_from_a_client() {
    let (cluster, mut db) = with_extension();
    let id: i64 = db
        .query_one(
            "SELECT backup_mgmt.record_backup_start($1, $2, $3, $4)",
            &[
                &"postgres",
                &"full",
                &"pg_dump",
                &at(&cluster, "postgres.dump").as_str(),
            ],
        )
        .unwrap()
        .get(0);
    db.execute(
        "SELECT backup_mgmt.record_backup_complete($1, $2, $3)",
        &[&id, &4096i64, &SHA],
    )
    .unwrap();
    let row = db
        .query_one(
            "SELECT status, backup_size, checksum, end_time IS NOT NULL, duration IS NOT NULL
               FROM backup_management.backup_records WHERE backup_id = $1",
            &[&id],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "completed");
    assert_eq!(row.get::<_, i64>(1), 4096);
    assert_eq!(row.get::<_, String>(2), SHA);
    assert!(row.get::<_, bool>(3) && row.get::<_, bool>(4));

    // Named-argument calls work as documented.
    let id2: i64 = db
        .query_one(
            "SELECT backup_mgmt.record_backup_start(database_name => 'postgres', backup_type => 'full',
                    backup_method => 'pg_basebackup', backup_file_path => $1)",
            &[&at(&cluster, "base.tar")],
        )
        .unwrap()
        .get(0);
    db.execute(
        "SELECT backup_mgmt.record_backup_failure($1, 'pg_basebackup: could not connect')",
        &[&id2],
    )
    .unwrap();
    let status: String = db
        .query_one(
            "SELECT status FROM backup_management.backup_records WHERE backup_id = $1",
            &[&id2],
        )
        .unwrap()
        .get(0);
    assert_eq!(status, "failed");
}

#[test]
fn bad_inputs_return_their_sqlstate_message_and_hint() {
    let (cluster, mut db) = with_extension();
    let id: i64 = start_backup(&mut db, "appdb", &at(&cluster, "a.dump"));
    let done: i64 = start_backup(&mut db, "appdb", &at(&cluster, "b.dump"));
    db.execute("SELECT backup_mgmt.record_backup_complete($1, 1)", &[&done])
        .unwrap();

    let cases: Vec<(String, SqlState, String)> = vec![
        (
            format!("SELECT backup_mgmt.record_backup_complete({}, 1)", 99_999),
            SqlState::UNDEFINED_OBJECT,
            "99999".into(),
        ),
        (
            format!("SELECT backup_mgmt.record_backup_complete({done}, 1)"),
            SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
            "completed".into(),
        ),
        (
            format!("SELECT backup_mgmt.record_backup_failure({done}, 'x')"),
            SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
            "not running".into(),
        ),
        (
            format!("SELECT backup_mgmt.record_backup_complete({id}, -1)"),
            SqlState::INVALID_PARAMETER_VALUE,
            "-1".into(),
        ),
        (
            format!("SELECT backup_mgmt.record_backup_complete({id}, 1, 'deadbeef')"),
            SqlState::INVALID_PARAMETER_VALUE,
            "deadbeef".into(),
        ),
        (
            "SELECT backup_mgmt.record_backup_start('appdb', 'hourly', 'pg_dump', '/b/x')".into(),
            SqlState::INVALID_PARAMETER_VALUE,
            "hourly".into(),
        ),
        (
            "SELECT backup_mgmt.record_backup_start('appdb', 'full', 'tar', '/b/x')".into(),
            SqlState::INVALID_PARAMETER_VALUE,
            "tar".into(),
        ),
        (
            "SELECT backup_mgmt.record_backup_start('appdb', 'full', 'pg_dump', 'x.dump')".into(),
            SqlState::INVALID_PARAMETER_VALUE,
            "x.dump".into(),
        ),
        (
            "SELECT backup_mgmt.record_backup_start('', 'full', 'pg_dump', '/b/x')".into(),
            SqlState::INVALID_PARAMETER_VALUE,
            "empty".into(),
        ),
    ];
    for (sql, state, value) in cases {
        let e = db.execute(sql.as_str(), &[]).expect_err(&sql);
        let dbe = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
        assert_eq!(dbe.code(), &state, "{sql}: {}", dbe.message());
        assert!(
            dbe.message().contains(&value),
            "{sql}: message {:?} should name {value:?}",
            dbe.message()
        );
        assert!(dbe.hint().is_some_and(|h| !h.is_empty()), "{sql}: no hint");
    }
    // Nothing half-written: the running record is untouched by the refused completions.
    let row = db
        .query_one("SELECT status, backup_size, checksum FROM backup_management.backup_records WHERE backup_id = $1", &[&id])
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "running");
    assert_eq!(row.get::<_, i64>(1), 0);
    assert_eq!(row.get::<_, Option<String>>(2), None);
}

#[test]
fn ordinary_roles_are_refused_and_backup_admin_members_succeed() {
    let (cluster, mut db) = with_extension();
    db.batch_execute(
        "CREATE ROLE alice LOGIN;
         CREATE ROLE bob LOGIN IN ROLE backup_admin;",
    )
    .unwrap();

    let mut alice = cluster.connect_as("postgres", "alice").unwrap();
    for sql in [
        "SELECT backup_mgmt.record_backup_start('postgres', 'full', 'pg_dump', '/b/x')",
        "SELECT backup_mgmt.record_backup_complete(1, 1)",
        "SELECT backup_mgmt.record_backup_failure(1, 'x')",
        "SELECT * FROM backup_management.backup_records",
        "SELECT * FROM enterprise_backup.backup_jobs",
        "INSERT INTO backup_management.backup_records (database_name, backup_type, backup_method, backup_file_path)
         VALUES ('d', 'full', 'pg_dump', '/b/x')",
    ] {
        let e = alice.execute(sql, &[]).expect_err(sql);
        assert_eq!(sqlstate(&e), "42501", "{sql}: {e}");
        assert!(e.as_db_error().unwrap().message().contains("permission denied"), "{sql}");
    }

    let mut bob = cluster.connect_as("postgres", "bob").unwrap();
    let id: i64 = start_backup(&mut bob, "postgres", &at(&cluster, "x"));
    bob.execute(
        "SELECT backup_mgmt.record_backup_complete($1, 10, $2)",
        &[&id, &SHA],
    )
    .unwrap();
    let who: String = bob
        .query_one(
            "SELECT recorded_by FROM backup_management.backup_records WHERE backup_id = $1",
            &[&id],
        )
        .unwrap()
        .get(0);
    assert_eq!(who, "bob", "the session user is recorded, not the definer");
    // An operator writes through the functions only.
    let e = bob
        .execute("DELETE FROM backup_management.backup_records", &[])
        .expect_err("direct delete");
    assert_eq!(sqlstate(&e), "42501");
    // A hostile search_path cannot redirect the SECURITY DEFINER functions.
    bob.batch_execute("SET search_path = public, pg_catalog")
        .unwrap();
    start_backup(&mut bob, "postgres", &at(&cluster, "y"));
}

#[test]
fn failures_are_notified_and_logged() {
    let (cluster, mut db) = with_extension();
    let mut listener = cluster.connect("postgres");
    listener.batch_execute("LISTEN backup_mgmt").unwrap();

    let id: i64 = start_backup(&mut db, "postgres", &at(&cluster, "x"));
    db.execute(
        "SELECT backup_mgmt.record_backup_failure($1, 'disk full: no space left on device')",
        &[&id],
    )
    .unwrap();

    let mut notes = listener.notifications();
    let n = notes
        .timeout_iter(Duration::from_secs(10))
        .next()
        .expect("notifications readable")
        .expect("a notification");
    assert_eq!(n.channel(), "backup_mgmt");
    assert!(
        n.payload().contains("\"event\":\"backup_failed\""),
        "{}",
        n.payload()
    );
    assert!(
        n.payload().contains(&format!("\"backup_id\":{id}")),
        "{}",
        n.payload()
    );
    // Ids and the event only: any role may LISTEN, and the error text is the catalog's to show.
    assert!(!n.payload().contains("disk full"), "{}", n.payload());

    // The failure is also in the server log, where a DBA looks first.
    assert!(
        Cluster::wait_for(Duration::from_secs(5), || cluster
            .log()
            .contains("disk full: no space left on device")),
        "server log: {}",
        cluster.log()
    );
}

#[test]
fn pg_dump_of_the_database_keeps_the_catalog_rows() {
    let (cluster, mut db) = with_extension();
    let id: i64 = start_backup(&mut db, "postgres", &at(&cluster, "keep.dump"));
    db.execute(
        "SELECT backup_mgmt.record_backup_complete($1, 123, $2)",
        &[&id, &SHA],
    )
    .unwrap();
    // Archived WAL with a gap: the ranges are derived state, not dumped, and come back with
    // the segments.
    db.batch_execute(
        "INSERT INTO backup_management.wal_archive
             (system_identifier, file_name, timeline_id, segment_number, file_path, file_size, checksum, archived_at, segment_size)
         SELECT 42, upper('00000001' || lpad(to_hex(n / 256), 8, '0') || lpad(to_hex(n % 256), 8, '0')), 1, n,
                '/w/' || n, 16777216, repeat('a', 64), now(), 16777216
           FROM generate_series(1, 20) n WHERE n <> 7",
    )
    .unwrap();

    let dump = cluster.dir().join("postgres.dump");
    cluster.run_client(
        "pg_dump",
        &["-Fc", "-f", dump.to_str().unwrap(), "postgres"],
    );
    db.batch_execute("CREATE DATABASE restored").unwrap();
    cluster.run_client(
        "pg_restore",
        &["--exit-on-error", "-d", "restored", dump.to_str().unwrap()],
    );

    let mut restored = cluster.connect("restored");
    let row = restored
        .query_one("SELECT backup_size, checksum FROM backup_management.backup_records WHERE backup_id = $1", &[&id])
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 123);
    assert_eq!(row.get::<_, String>(1), SHA);
    let ranges: String = restored
        .query_one(
            "SELECT coalesce(string_agg(first_segment || '-' || last_segment, ' ' ORDER BY first_segment), '')
               FROM backup_management.wal_ranges",
            &[],
        )
        .unwrap()
        .get(0);
    // The worker's archive check may find a made-up '/w/n' file missing and mark it lost
    // before the dump (lost rows are dumped as lost and leave the ranges): the ranges must be
    // the runs of the restored rows that still count, and every row must be back.
    let (rows, expected): (i64, String) = {
        let r = restored
            .query_one(
                "WITH counted AS (
                     SELECT segment_number AS n, segment_number - row_number() OVER (ORDER BY segment_number) AS run
                       FROM backup_management.wal_archive
                      WHERE system_identifier = 42 AND lost_at IS NULL AND expired_at IS NULL)
                 SELECT (SELECT count(*) FROM backup_management.wal_archive WHERE system_identifier = 42),
                        coalesce((SELECT string_agg(lo || '-' || hi, ' ' ORDER BY lo)
                                    FROM (SELECT min(n) lo, max(n) hi FROM counted GROUP BY run) runs), '')",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(rows, 19);
    assert_eq!(ranges, expected);
    if ranges != "1-6 8-20" {
        // Only the archive check's findings may differ from what was inserted.
        let lost: i64 = restored
            .query_one(
                "SELECT count(*) FROM backup_management.wal_archive WHERE lost_at IS NOT NULL",
                &[],
            )
            .unwrap()
            .get(0);
        assert!(lost > 0, "ranges {ranges} with no lost segment");
    }
    // The sequence came along too: the next id does not collide.
    let next: i64 = start_backup(&mut restored, "postgres", &at(&cluster, "next.dump"));
    assert!(next > id);
}

#[test]
fn create_extension_works_without_preloading() {
    let root = tempfile::tempdir_in("/tmp").unwrap();
    // The server's OS user must be able to resolve paths inside it.
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let roots = format!("backup_mgmt.backup_roots = '{}'", root.path().display());
    let cluster = Cluster::start(&[&roots]);
    let mut db = cluster.connect("postgres");
    db.batch_execute("CREATE EXTENSION backup_mgmt").unwrap();
    let id: i64 = start_backup(&mut db, "postgres", &format!("{}/x", root.path().display()));
    assert!(id >= 1);
}
