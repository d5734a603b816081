//! Where verification restores and extracts backups: a hidden directory in the first backup root,
//! created exclusively beneath it (never through a planted symlink) and removed beneath it again
//! when dropped.

use backup_mgmt_core::files::beneath::ScratchDir;
use backup_mgmt_core::paths::PathError;
use backup_mgmt_core::restore::scratch_server;

use crate::pg::roots;

/// A new scratch directory for restore-testing backup `id`, inside the first backup root.
pub fn verification_scratch(id: i64) -> Result<ScratchDir, PathError> {
    let root = roots::first_root()?;
    let rel = scratch_server::scratch_dir(id);
    ScratchDir::create(&root, &rel).map_err(|source| PathError::Create {
        path: root.join(&rel).to_string_lossy().into_owned(),
        source,
    })
}
