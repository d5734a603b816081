//! Recovery: the WAL archive module and the WAL catalog it feeds, the check of the archive against
//! the disk, the scan of archived WAL for transaction times, and point-in-time recovery planning with restore recipes.

pub mod archive_module;
pub mod pitr;
#[cfg(any(test, feature = "pg_test"))]
mod pitr_tests;
pub mod timelines;
pub mod wal_catalog;
pub mod wal_check;
pub mod wal_ranges;
pub mod walscan;
