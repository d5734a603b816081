//! Backup methods' server-side halves.  The logical methods (pg_dump, pg_basebackup,
//! pg_dumpall) need nothing of the server beyond a plan (`backup_mgmt_core::backup::logical`);
//! the native physical method runs `pg_backup_start`/`pg_backup_stop` in the worker's own
//! session (`native`).

pub mod native;
