//! The catalog: its SQL (tables, views, privileges, comments) and what guards its rows.
//!
//! The tables live in `sql/schema.sql`, loaded before any function; privileges and comments in
//! `sql/finalize.sql`, loaded after every function exists.  The vocabulary its rows use is
//! `backup_mgmt_core::vocabulary` (a unit test there keeps it in step with the SQL domains).
//!
//! - `guard`: the trigger checking every `backup_records` row;
//! - `records`: the record functions (`record_backup_start`, `_complete`, `_failure`);
//! - `queries`: catalog look-ups shared by several modules (one query per question);
//! - `mirror`: the catalog mirror file in the first backup root.

use pgrx::prelude::*;

pub mod guard;
pub mod mirror;
pub mod queries;
pub mod records;
pub mod registration;

extension_sql_file!("../../sql/schema.sql", name = "catalog_schema", bootstrap);
extension_sql_file!(
    "../../sql/finalize.sql",
    name = "catalog_finalize",
    finalize
);

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[allow(unused_imports)]
    use crate::testing::*;

    #[pg_test]
    fn ordinary_role_is_refused_and_backup_admin_succeeds() {
        Spi::run("CREATE ROLE bm_test_plain").unwrap();
        Spi::run("CREATE ROLE bm_test_operator IN ROLE backup_admin").unwrap();

        Spi::run("SET LOCAL ROLE bm_test_plain").unwrap();
        for sql in [
            "SELECT backup_mgmt.record_backup_start('appdb', 'full', 'pg_dump', '/b/x')",
            "SELECT backup_mgmt.record_backup_complete(1, 1)",
            "SELECT backup_mgmt.record_backup_failure(1, 'x')",
            "SELECT backup_mgmt.check_backup_path('/b/x')",
            "SELECT count(*) FROM backup_management.backup_records",
            "INSERT INTO backup_management.backup_records (database_name, backup_type, backup_method, backup_file_path)
             VALUES ('d', 'full', 'pg_dump', '/b/x')",
        ] {
            let (s, m, _) = outcome(sql);
            assert_eq!(s, "42501", "{sql}: {m}");
            assert!(m.contains("permission denied"), "{m}");
        }

        Spi::run("SET LOCAL ROLE bm_test_operator").unwrap();
        let id = start();
        Spi::run_with_args(
            "SELECT backup_mgmt.record_backup_complete($1, 5)",
            &[id.into()],
        )
        .unwrap();
        assert_eq!(status_of(id), ("completed".into(), 5));
        let who = Spi::get_one_with_args::<String>(
            "SELECT recorded_by FROM backup_management.backup_records WHERE backup_id = $1",
            &[id.into()],
        )
        .unwrap();
        assert!(who.is_some());
        // Operators write through the functions, not around them.
        let (s, _, _) = outcome(
            "UPDATE backup_management.backup_records SET status = 'completed' WHERE backup_id = 1",
        );
        assert_eq!(s, "42501");
        Spi::run("RESET ROLE").unwrap();
    }

    #[pg_test]
    fn public_cannot_execute_any_function() {
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_proc p
               JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
               JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'backup_mgmt'
              WHERE has_function_privilege('public', p.oid, 'EXECUTE')
                AND p.pronamespace <> 'tests'::regnamespace",
        )
        .unwrap();
        assert_eq!(n, Some(0));
    }

    #[pg_test]
    fn security_definer_functions_pin_search_path() {
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_proc p
               JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
               JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'backup_mgmt'
              WHERE p.prosecdef AND NOT EXISTS (SELECT FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')",
        )
        .unwrap();
        assert_eq!(n, Some(0));
    }

    #[pg_test]
    fn every_object_and_column_has_a_comment() {
        let missing = Spi::get_one::<String>(
            "SELECT string_agg(pg_describe_object(d.classid, d.objid, 0), ', ')
               FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'backup_mgmt'
              WHERE d.deptype = 'e' AND obj_description(d.objid, d.classid::regclass::text) IS NULL
                -- the pg_test harness's own schema and functions
                AND NOT (d.classid = 'pg_namespace'::regclass AND d.objid = 'tests'::regnamespace)
                AND NOT (d.classid = 'pg_proc'::regclass
                         AND (SELECT pronamespace FROM pg_proc WHERE oid = d.objid) = 'tests'::regnamespace)
                -- a table's or view's row type and array types, which PostgreSQL 17+ records as
                -- members too: described by the object they belong to
                AND NOT (d.classid = 'pg_type'::regclass
                         AND (SELECT t.typrelid <> 0 OR t.typcategory = 'A' FROM pg_type t WHERE t.oid = d.objid))",
        )
        .unwrap();
        assert_eq!(missing, None, "objects without COMMENT");
        let columns = Spi::get_one::<String>(
            "SELECT string_agg(format('%s.%s', c.oid::regclass, a.attname), ', ')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
              WHERE n.nspname IN ('backup_management', 'disaster_recovery', 'enterprise_backup')
                AND c.relkind = 'r' AND col_description(c.oid, a.attnum) IS NULL",
        )
        .unwrap();
        assert_eq!(columns, None, "columns without COMMENT");
    }

    #[pg_test]
    fn catalog_tables_are_dumped_with_the_database() {
        // Every catalog table, whatever their number: the design's eight, wal_archive,
        // retention_policies and remote_wal_records; not wal_ranges, verification_state nor
        // remote_wal_queue, derived state that restoring the rows they derive from rebuilds
        // through their triggers, nor remote_wal_state, the worker's running state (a restored
        // alarm would never fire again).
        let missing = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind = 'r'
                AND c.oid NOT IN ('backup_management.wal_ranges'::regclass,
                                  'backup_management.verification_state'::regclass,
                                  'backup_management.remote_wal_state'::regclass,
                                  'backup_management.remote_wal_queue'::regclass)
                AND n.nspname IN ('backup_management', 'disaster_recovery', 'enterprise_backup')
                AND c.oid <> ALL (SELECT unnest(extconfig) FROM pg_extension WHERE extname = 'backup_mgmt')",
        )
        .unwrap();
        assert_eq!(missing, Some(0));
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_extension e, unnest(e.extconfig) c(oid)
              WHERE e.extname = 'backup_mgmt' AND (SELECT relkind FROM pg_class WHERE oid = c.oid) = 'r'",
        )
        .unwrap();
        assert_eq!(n, Some(11));
    }

    #[pg_test]
    fn remote_configs_refuse_secrets() {
        assert_refused(
            "INSERT INTO backup_management.remote_backup_configs
                 (config_name, database_name, remote_type, remote_endpoint, remote_path, credentials_ref)
             VALUES ('s3', 'appdb', 's3', 'http://127.0.0.1:9000', 'bucket/x', 'AKIAEXAMPLEKEY')",
            "23514",
            "credentials_ref",
        );
        assert_refused(
            "INSERT INTO backup_management.remote_backup_configs
                 (config_name, database_name, remote_type, remote_endpoint, remote_path, options)
             VALUES ('s3', 'appdb', 's3', 'http://127.0.0.1:9000', 'bucket/x', '{\"secret_access_key\": \"x\"}')",
            "23514",
            "no_secret",
        );
        let (s, m, _) = outcome(
            "INSERT INTO backup_management.remote_backup_configs
                 (config_name, database_name, remote_type, remote_endpoint, remote_path, credentials_ref)
             VALUES ('s3', 'appdb', 's3', 'http://127.0.0.1:9000', 'bucket/x', 'env:BACKUP_S3_SECRET')",
        );
        assert_eq!(s, "ok", "{m}");
    }

    #[pg_test]
    fn progress_view_and_new_objects_are_commented_and_not_public() {
        let uncommented = Spi::get_one::<i64>(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'backup_mgmt' AND c.relkind = 'v' AND obj_description(c.oid, 'pg_class') IS NULL",
        )
        .unwrap();
        assert_eq!(uncommented, Some(0));
        let public = Spi::get_one::<bool>(
            "SELECT has_table_privilege('public', 'backup_mgmt.backup_progress', 'SELECT')",
        )
        .unwrap();
        assert_eq!(public, Some(false));
        let admin = Spi::get_one::<bool>(
            "SELECT has_table_privilege('backup_admin', 'backup_mgmt.backup_progress', 'SELECT')",
        )
        .unwrap();
        assert_eq!(admin, Some(true));
    }
}
