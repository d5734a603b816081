//! backup_mgmt: backup management inside PostgreSQL.
//!
//! The extension's layers (ARCHITECTURE.md has the picture); imports point down only:
//! - `worker`: the background worker's loop, claims and results (nothing imports it);
//! - `jobs`, `verification`, `recovery`, `retention`, `offsite`, `monitoring`, `methods`: what
//!   the SQL functions and the worker do, each concept in its own folder;
//! - `catalog`: the schema, its row guard, the record functions, shared catalog look-ups;
//! - `pg`: configuration, transactions, server facts, NOTIFY, waiting, the backup roots;
//! - `sqlstate`: the one map from errors to SQLSTATEs at the SQL boundary;
//! - below all of them, the `backup_mgmt_core` crate: everything that needs no server.

// SQL functions return `Result<T, ErrorReport>`: pgrx raises an `Err` with its own SQLSTATE only
// when the error type is exactly `ErrorReport` (it downcasts to it), so it cannot be boxed.
#![allow(clippy::result_large_err)]

use pgrx::prelude::*;

::pgrx::pg_module_magic!(name, version);

mod catalog;
mod jobs;
mod methods;
mod monitoring;
mod offsite;
mod pg;
mod recovery;
mod retention;
mod sqlstate;
mod verification;
mod worker;

#[cfg(any(test, feature = "pg_test"))]
mod testing;

#[cfg(test)]
mod architecture;

#[allow(non_snake_case)]
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    pg::guc::init();
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
