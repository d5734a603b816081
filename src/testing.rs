//! What the `#[pg_test]`s beside each module share: running a statement to see how it fails,
//! and recording a backup of a file under the pg_test cluster's backup root.  Each test runs in
//! a transaction that is rolled back afterwards.

use pgrx::prelude::*;

/// The backup root of the pg_test cluster (see `pg_test::postgresql_conf_options`).
pub const TEST_ROOT: &str = "/tmp/backup_mgmt_pgtest_root";

pub const SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Runs `sql` and returns (SQLSTATE, message, hint); SQLSTATE is "ok" when it succeeded.
/// The statement runs in a PL/pgSQL exception block, i.e. a subtransaction, so a failing
/// call is rolled back cleanly and the test can go on to check that nothing was written.
pub fn outcome(sql: &str) -> (String, String, String) {
    // Created once per session (by whichever role runs first; EXECUTE is PUBLIC's for it).
    Spi::run(
        "DO $do$ BEGIN
         IF to_regprocedure('pg_temp.outcome(text)') IS NULL THEN
             CREATE FUNCTION pg_temp.outcome(stmt text, OUT state text, OUT message text, OUT hint text)
             LANGUAGE plpgsql AS $$
             BEGIN
                 EXECUTE stmt;
                 state := 'ok'; message := ''; hint := '';
             EXCEPTION WHEN OTHERS THEN
                 GET STACKED DIAGNOSTICS state = RETURNED_SQLSTATE, message = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
             END $$;
         END IF;
         END $do$",
    )
    .unwrap();
    let (s, m, h) = Spi::get_three_with_args::<String, String, String>(
        "SELECT state, message, hint FROM pg_temp.outcome($1)",
        &[sql.into()],
    )
    .unwrap();
    (s.unwrap(), m.unwrap_or_default(), h.unwrap_or_default())
}

/// Asserts that `sql` fails with `state` and a message naming `value`; returns the hint.
pub fn assert_refused(sql: &str, state: &str, value: &str) -> String {
    let (s, m, h) = outcome(sql);
    assert_eq!(s, state, "{sql}: {m}");
    assert!(m.contains(value), "message {m:?} should name {value:?}");
    h
}

/// As `assert_refused`, and the error carries a hint: backup_mgmt's own errors always do.
pub fn assert_fails(sql: &str, state: &str, value: &str) {
    let h = assert_refused(sql, state, value);
    assert!(!h.is_empty(), "{sql}: no hint");
}

/// A new path under the test root for a registered backup (each call a new name: two records
/// may not share a file).
pub fn fresh_path(suffix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(TEST_ROOT).unwrap();
    format!(
        "{TEST_ROOT}/appdb-{}-{}{suffix}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running backup record of a new file under the test root.
pub fn start() -> i64 {
    Spi::get_one_with_args::<i64>(
        "SELECT backup_mgmt.record_backup_start('appdb', 'full', 'pg_dump', $1)",
        &[fresh_path(".dump").into()],
    )
    .unwrap()
    .unwrap()
}

pub fn status_of(id: i64) -> (String, i64) {
    let (s, z) = Spi::get_two_with_args::<String, i64>(
        "SELECT status, backup_size FROM backup_management.backup_records WHERE backup_id = $1",
        &[id.into()],
    )
    .unwrap();
    (s.unwrap(), z.unwrap())
}

/// A completed backup record for `data` written at `name` under the test root.
pub fn recorded_file(name: &str, data: &[u8]) -> (i64, std::path::PathBuf) {
    use sha2::Digest;
    let root = std::path::Path::new(crate::testing::TEST_ROOT);
    std::fs::create_dir_all(root).unwrap();
    let path = root.join(name);
    std::fs::write(&path, data).unwrap();
    let sum = backup_mgmt_core::checksum::hex(&sha2::Sha256::digest(data));
    let id = Spi::get_one_with_args::<i64>(
        "SELECT backup_mgmt.record_backup_start('pgrx_tests', 'full', 'pg_dump', $1)",
        &[path.to_str().unwrap().into()],
    )
    .unwrap()
    .unwrap();
    Spi::run_with_args(
        "SELECT backup_mgmt.record_backup_complete($1, $2, $3)",
        &[id.into(), (data.len() as i64).into(), sum.as_str().into()],
    )
    .unwrap();
    (id, path)
}

/// Records a verification of backup `id` as a catalog row, as if it had run (no file is read):
/// of `kind` (checksum, restore_test, pg_verifybackup), with `status`, its `result` (JSON: the
/// reason, the stage a restore test reached), finished `ago` before now (an interval, '0' for
/// now: rows of one transaction then keep the order they were added in).
pub fn add_verification(id: i64, kind: &str, status: &str, result: &str, ago: &str) {
    Spi::run_with_args(
        "INSERT INTO backup_management.backup_verifications
             (backup_id, verification_type, verification_status, verification_result, verified_at)
         VALUES ($1, $2, $3, $4::text::jsonb, now() - $5::text::interval)",
        &[
            id.into(),
            kind.into(),
            status.into(),
            result.into(),
            ago.into(),
        ],
    )
    .unwrap();
}

/// Records a completed native backup by the worker (`kind` full or incremental) whose WAL
/// runs from `{lsn}28` to `{lsn}FF`; returns its id.
pub fn native(kind: &str, name: &str, lsn: &str, parent: Option<i64>) -> i64 {
    Spi::run(&format!(
        "INSERT INTO backup_management.backup_records
             (database_name, backup_type, backup_method, backup_file_path, status, start_time, end_time,
              duration, checksum, origin, system_identifier, timeline_id, start_lsn, stop_lsn, parent_backup_id)
         VALUES ('postgres', '{kind}', 'native_physical', '{TEST_ROOT}/{name}', 'completed',
                 now(), now(), '0', repeat('d', 64), 'worker',
                 (SELECT system_identifier FROM pg_control_system()), 1, '{lsn}28', '{lsn}FF', {})",
        parent.map_or("NULL".to_owned(), |p| p.to_string())
    ))
    .unwrap();
    Spi::get_one::<i64>("SELECT max(backup_id) FROM backup_management.backup_records")
        .unwrap()
        .unwrap()
}
