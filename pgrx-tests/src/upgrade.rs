//! What the upgrade tests share: the catalog's rows and its shape as text, a cluster with an
//! "upgraded" and a "fresh" database, the update to the current version, and the check that an
//! upgraded catalog is a fresh install's.

use crate::cluster::Cluster;

/// Rows of every catalog table, as text, in a stable order (what must survive the upgrade).
pub const CONTENT: &str = "
SELECT string_agg(t, E'\\n' ORDER BY t) FROM (
  SELECT 'backup_records ' || (r.backup_id, r.database_name, r.backup_type, r.backup_method,
         r.backup_file_path, r.backup_size, r.start_time, r.end_time, r.status, r.error_message,
         r.checksum, r.compression, r.system_identifier, r.pg_version, r.timeline_id, r.start_lsn,
         r.stop_lsn, r.label, r.annotations, r.parent_backup_id, r.pinned, r.pin_reason,
         r.keep_until, r.recorded_by)::text AS t FROM backup_management.backup_records r
  UNION ALL SELECT 'verifications ' || v::text FROM backup_management.backup_verifications v
  UNION ALL SELECT 'remote_configs ' || (c.config_id, c.config_name, c.database_name, c.remote_type,
         c.remote_endpoint, c.remote_path, c.credentials_ref, c.encryption_key_ref, c.options,
         c.is_active, c.sync_schedule, c.last_sync_at, c.sync_status, c.created_at,
         c.updated_at)::text FROM backup_management.remote_backup_configs c
  UNION ALL SELECT 'remote_records ' || x::text FROM backup_management.remote_backup_records x
  UNION ALL SELECT 'plans ' || p::text FROM disaster_recovery.recovery_plans p
  UNION ALL SELECT 'drills ' || (d.drill_id, d.plan_id, d.backup_id, d.drill_date, d.drill_type,
         d.recovery_time_minutes, d.data_loss_minutes, d.recovery_time, d.data_loss_window, d.status,
         d.issues, d.lessons_learned, d.conducted_by, d.created_at)::text
         FROM disaster_recovery.recovery_drills d
  UNION ALL SELECT 'jobs ' || j::text FROM enterprise_backup.backup_jobs j
  UNION ALL SELECT 'executions ' || e::text FROM enterprise_backup.backup_job_executions e
  UNION ALL SELECT 'policies ' || p::text FROM backup_management.retention_policies p
  UNION ALL SELECT 'wal ' || (w.system_identifier, w.file_name, w.timeline_id, w.file_path,
         w.file_size, w.checksum, w.archived_at, w.expired_at, w.first_xact_at, w.last_xact_at,
         w.xact_scanned)::text FROM backup_management.wal_archive w
) rows";

/// The extension's objects as a fresh install and an upgrade must both have them.
pub const SHAPE: &str = "
WITH ours AS (SELECT oid FROM pg_namespace
               WHERE nspname IN ('backup_mgmt', 'backup_management', 'disaster_recovery', 'enterprise_backup'))
SELECT string_agg(x, E'\\n' ORDER BY x) FROM (
  SELECT 'column ' || c.table_schema || '.' || c.table_name || '.' || c.column_name || ' ' ||
         c.data_type || ' ' || coalesce(c.domain_name::text, '') || ' ' || c.is_nullable::text || ' ' ||
         coalesce(c.column_default::text, '') || ' ' || c.ordinal_position::text AS x
    FROM information_schema.columns c
   WHERE c.table_schema IN ('backup_mgmt', 'backup_management', 'disaster_recovery', 'enterprise_backup')
  UNION ALL
  SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
    FROM pg_constraint WHERE connamespace IN (SELECT oid FROM ours)
  UNION ALL
  SELECT 'index ' || indexdef FROM pg_indexes
   WHERE schemaname IN ('backup_mgmt', 'backup_management', 'disaster_recovery', 'enterprise_backup')
  UNION ALL
  SELECT 'view ' || c.oid::regclass || ' ' || pg_get_viewdef(c.oid)
    FROM pg_class c WHERE c.relkind = 'v' AND c.relnamespace IN (SELECT oid FROM ours)
  UNION ALL
  SELECT 'function ' || p.oid::regprocedure || ' -> ' || pg_get_function_result(p.oid) || ' ' ||
         p.prosecdef::text || ' ' || p.provolatile::text || ' ' || p.proparallel::text || ' ' ||
         coalesce(array_to_string(p.proconfig, ','), '') || ' ' || coalesce(p.proacl::text, '') || ' ' ||
         coalesce(obj_description(p.oid, 'pg_proc'), '(no comment)') || ' body ' || md5(p.prosrc)
    FROM pg_proc p WHERE p.pronamespace IN (SELECT oid FROM ours)
  UNION ALL
  SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' ' || coalesce(obj_description(t.oid, 'pg_trigger'), '')
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
   WHERE NOT t.tgisinternal AND c.relnamespace IN (SELECT oid FROM ours)
  UNION ALL
  SELECT 'relation ' || c.oid::regclass || ' ' || c.relkind::text || ' ' || coalesce(c.relacl::text, '') || ' ' ||
         coalesce(array_to_string(c.reloptions, ','), '') || ' ' || coalesce(obj_description(c.oid, 'pg_class'), '(no comment)')
    FROM pg_class c WHERE c.relnamespace IN (SELECT oid FROM ours) AND c.relkind IN ('r', 'v', 'S')
  UNION ALL
  SELECT 'column comment ' || c.oid::regclass || '.' || a.attname || ' ' || coalesce(col_description(c.oid, a.attnum), '(none)')
    FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
   WHERE c.relnamespace IN (SELECT oid FROM ours) AND c.relkind IN ('r', 'v')
  UNION ALL
  SELECT 'schema ' || nspname || ' ' || coalesce(nspacl::text, '') || ' ' || coalesce(obj_description(oid, 'pg_namespace'), '')
    FROM pg_namespace WHERE oid IN (SELECT oid FROM ours)
  UNION ALL
  SELECT 'member ' || pg_describe_object(classid, objid, objsubid)
    FROM pg_depend WHERE deptype = 'e' AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'backup_mgmt')
  UNION ALL
  SELECT 'dumped ' || c.oid::regclass || ' ' || coalesce(x.cfg, '')
    FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS x(relid, cfg)
    JOIN pg_class c ON c.oid = x.relid
   WHERE e.extname = 'backup_mgmt'
) objects";

/// A cluster with two databases: "upgraded" and "fresh".
pub fn two_databases() -> Cluster {
    two_databases_with(&[])
}

/// `two_databases` with settings of its own (`conf` lines).
pub fn two_databases_with(conf: &[&str]) -> Cluster {
    let cluster = Cluster::start_with_backups(conf);
    let mut admin = cluster.connect("postgres");
    for db in ["upgraded", "fresh"] {
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .unwrap();
    }
    cluster
}

/// `ALTER EXTENSION backup_mgmt UPDATE`, which must reach the current version.
pub fn update_to_current(old: &mut postgres::Client) {
    old.batch_execute("ALTER EXTENSION backup_mgmt UPDATE")
        .unwrap();
    let version: String = old
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'backup_mgmt'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(version, "0.14.0");
}

/// Checks that an upgraded catalog has exactly a fresh install's objects.
pub fn assert_same_shape(old: &mut postgres::Client, fresh: &mut postgres::Client) {
    fresh.batch_execute("CREATE EXTENSION backup_mgmt").unwrap();
    let upgraded_shape: String = old.query_one(SHAPE, &[]).unwrap().get(0);
    let fresh_shape: String = fresh.query_one(SHAPE, &[]).unwrap().get(0);
    let upgraded_lines: Vec<&str> = upgraded_shape.lines().collect();
    let fresh_lines: Vec<&str> = fresh_shape.lines().collect();
    let only_upgraded: Vec<&&str> = upgraded_lines
        .iter()
        .filter(|l| !fresh_lines.contains(l))
        .collect();
    let only_fresh: Vec<&&str> = fresh_lines
        .iter()
        .filter(|l| !upgraded_lines.contains(l))
        .collect();
    assert!(
        only_upgraded.is_empty() && only_fresh.is_empty(),
        "the upgraded catalog differs from a fresh install\nonly after the upgrade:\n{}\nonly in a fresh install:\n{}",
        only_upgraded.iter().map(|l| l.to_string()).collect::<Vec<_>>().join("\n"),
        only_fresh.iter().map(|l| l.to_string()).collect::<Vec<_>>().join("\n"),
    );
    assert!(fresh_lines.len() > 200, "the shape query saw too little");
}
