//! Restoring: recipes (bash scripts that need no backup_mgmt), materialising a native chain into
//! a data directory, and the temporary server a restore test starts on a restored directory.

pub mod materialize;
pub mod recipe;
pub mod scratch_server;
