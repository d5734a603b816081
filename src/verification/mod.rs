//! Is a backup good?  `integrity` streams it through sha256 against the catalog
//! (`verify_backup_integrity`, with `pg_verifybackup` for a base backup); `restore_test`
//! restores it for real: `logical_test` into a scratch database with row counts and globals
//! checked, `physical_test` into a scratch data directory a temporary server must start on;
//! `restore_outcome` records what a restore test found; `drill` measures recovery time against
//! a plan (`host_loss`: restoring from an off-site target alone); `upkeep` is the worker's re-verification and checksum backfill; `scratch` is where all
//! of them work on disk.

pub mod drill;
mod host_loss;
pub mod integrity;
pub mod logical_test;
pub mod physical_test;
pub mod restore_outcome;
pub mod restore_test;
pub mod scratch;
pub mod upkeep;
