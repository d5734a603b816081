//! What the attack tests share: mallory, a member of `backup_admin` who is not a superuser and
//! has only what an application owner usually has (CREATE in a database, a writable `public`
//! schema as PostgreSQL 14 and older and pg_upgrade'd clusters give everyone), and the checks of
//! the safe end state.

use std::time::Duration;

use crate::cluster::Cluster;

/// Creates mallory (LOGIN, IN ROLE backup_admin, not superuser) with CREATE on `appdb` and on
/// schema `public` of `postgres` and `appdb`, and returns a session of hers in `postgres`.
pub fn mallory(cluster: &Cluster, db: &mut postgres::Client) -> postgres::Client {
    db.batch_execute(
        "CREATE ROLE mallory LOGIN NOSUPERUSER IN ROLE backup_admin;
         GRANT CREATE ON DATABASE appdb TO mallory;
         GRANT CREATE ON SCHEMA public TO mallory;",
    )
    .unwrap();
    cluster
        .connect("appdb")
        .batch_execute("GRANT CREATE ON SCHEMA public TO mallory")
        .unwrap();
    cluster.connect_as("postgres", "mallory").unwrap()
}

/// Whether `role` is a superuser now.
pub fn is_superuser(db: &mut postgres::Client, role: &str) -> bool {
    db.query_one(
        "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) $1",
        &[&role],
    )
    .unwrap()
    .get(0)
}

/// The SQLSTATE of a refused statement.
pub fn refused(result: Result<impl std::fmt::Debug, postgres::Error>) -> (String, String) {
    let e = result.expect_err("the attack was not refused");
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("no server error: {e}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

/// Waits until `sql` (one boolean) is true.
pub fn wait_true(cluster: &Cluster, db: &mut postgres::Client, sql: &str, secs: u64) {
    let ok = Cluster::wait_for(Duration::from_secs(secs), || {
        db.query_one(sql, &[])
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false)
    });
    assert!(ok, "timed out waiting for: {sql}\n{}", cluster.log());
}
