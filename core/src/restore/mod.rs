//! Restoring: recipes (bash scripts that need no backup_mgmt), materialising a native chain into
//! a data directory, the temporary server a restore test starts on a restored directory, and the
//! unprivileged role a logical restore test runs backup content as; and restoring from an
//! off-site target alone (`backed_up_config`: what a restored directory's own configuration
//! would make its server do, checked and reset before it can start; `offsite`: its mirror and the choice of a base backup; `fetch`: the
//! files, the recovery settings, `wal-fetch`; `fetch_history`: the target's timeline history files; `fetch_tar`: a pg_basebackup tar or chain; `remote_files`: a chain's objects, each requested
//! ahead of the thread that writes it; `dump_choice`: which dump `restore-logical` restores; `logical`: a dump into a new
//! database, globals first).  `base_choice` is the one rule for which base backup a recovery starts from, for
//! `plan_recovery` and the program alike.

pub mod backed_up_config;
pub mod base_choice;
pub mod dump_choice;
pub mod fetch;
pub mod fetch_history;
pub mod fetch_tar;
pub mod logical;
pub mod materialize;
pub mod mirror_parts;
pub mod offsite;
pub mod recipe;
pub mod recovery_conf;
mod remote_files;
pub mod scratch_server;
pub mod unprivileged;
pub mod wal_spool;
