//! backup_mgmt: backup management inside PostgreSQL.
//!
//! One module per concept; `_PG_init` only asks each module to register itself.

// SQL functions return `Result<T, ErrorReport>`: pgrx raises an `Err` with its own SQLSTATE only
// when the error type is exactly `ErrorReport` (it downcasts to it), so it cannot be boxed.
#![allow(clippy::result_large_err)]

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

mod archive;
mod catalog;
mod checksum;
mod datadir;
mod drill;
mod dumpfacts;
mod events;
mod executor;
mod expiry;
mod guc;
mod mirror;
mod native;
mod native_session;
mod offsite;
mod pagecheck;
mod physical;
mod pitr;
mod record;
mod remote;
mod restore;
mod retention;
mod s3;
mod schedule;
mod scheduler;
mod security;
mod upkeep;
mod verification;
mod verify;
mod walscan;
mod worker;

#[cfg(any(test, feature = "pg_test"))]
mod tests;

#[allow(non_snake_case)]
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
    worker::init();
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        // The test database is the catalog database, as in production.
        vec![
            "shared_preload_libraries = 'backup_mgmt'",
            "backup_mgmt.database_name = 'pgrx_tests'",
            "backup_mgmt.backup_roots = '/tmp/backup_mgmt_pgtest_root'",
        ]
    }
}
