//! backup_mgmt without PostgreSQL: everything that does not talk to a server, shared by the
//! extension and its command-line programs, and tested with plain `cargo test`.
//!
//! Layers, bottom up (a module imports only from the layers below it):
//! 1. foundations: `checksum`, `paths`, `printable` (text escaped for a terminal or a log),
//!    `files` (I/O errors with paths, durable writes, opening planted files), `stream`
//!    (hash/compress/count stages), `threads`, `progress`, `process`, `conninfo`;
//! 2. PostgreSQL's vocabulary and formats: `vocabulary` (the catalog's words and row rule),
//!    `wal` (WAL names and segment arithmetic), `cron`, `pgformat` (data directory, page
//!    checksums, pg_dump archives), `manifest` (what backup_mgmt writes beside its backups);
//! 3. work: `backup` (taking backups, the WAL archive's copy), `verify`, `restore` (recipes,
//!    materialising chains, scratch servers), `storage` (off-site targets), `retention`,
//!    `job` (job options and due-job decisions), `metrics`, `alarm` (the lag alarm's hysteresis).

// A failed verification is a `verify::Report` (reason, digests, sizes, the failing file),
// returned by value once per failure; boxing it would only move the allocation.
#![allow(clippy::result_large_err)]

pub mod checksum;
pub mod conninfo;
pub mod files;
pub mod paths;
pub mod printable;
pub mod process;
pub mod progress;
pub mod stream;
pub mod threads;

pub mod cron;
pub mod manifest;
pub mod pgformat;
pub mod timeline;
pub mod vocabulary;
pub mod wal;

pub mod alarm;
pub mod backup;
pub mod job;
pub mod metrics;
pub mod restore;
pub mod retention;
pub mod storage;
pub mod verify;
