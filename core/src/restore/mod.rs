//! Restoring: recipes (bash scripts that need no backup_mgmt), materialising a native chain into
//! a data directory, the temporary server a restore test starts on a restored directory, and the
//! unprivileged role a logical restore test runs backup content as.

pub mod materialize;
pub mod recipe;
pub mod scratch_server;
pub mod unprivileged;
