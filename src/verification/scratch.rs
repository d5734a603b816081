//! Where verification restores and extracts backups: a hidden directory in the first backup root.

use std::path::PathBuf;

use backup_mgmt_core::files::durable;
use backup_mgmt_core::restore::scratch_server;

use crate::pg::roots;
use backup_mgmt_core::paths::PathError;

/// A scratch directory for restore-testing backup `id`, inside the first backup root (its
/// parent is created).
pub fn verification_scratch(id: i64) -> Result<PathBuf, PathError> {
    let root = roots::first_root()?;
    let scratch = scratch_server::scratch_dir(&root, id);
    if let Some(parent) = scratch.parent() {
        let _ = durable::create_private_dir(parent, true);
    }
    Ok(scratch)
}
