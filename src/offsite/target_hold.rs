//! Whether an open transaction holds an off-site target (an operator changing or deleting its
//! row): the worker then passes that target over rather than waiting for the transaction,
//! which would hold up every other target and job.  The lock is a share lock, taken with SKIP
//! LOCKED only when something is to be written for the target (a lock writes WAL: an idle
//! cluster must stay idle).

use pgrx::spi::{SpiClient, SpiError};

/// A target's share lock, taken (SKIP LOCKED) the first time something is to be written for
/// it in this transaction: whether no open transaction is changing or deleting it.
pub(super) struct Hold {
    config_id: i32,
    held: Option<bool>,
}

impl Hold {
    pub(super) fn new(config_id: i32) -> Hold {
        Hold {
            config_id,
            held: None,
        }
    }

    pub(super) fn get(&mut self, c: &mut SpiClient<'_>) -> Result<bool, SpiError> {
        if let Some(h) = self.held {
            return Ok(h);
        }
        let h = target_held(c, self.config_id)?;
        self.held = Some(h);
        Ok(h)
    }
}

/// Whether target `config_id` still exists and no open transaction is changing or deleting it;
/// if so it stays so until the caller's transaction ends (a share lock), so that what the
/// caller writes for it never waits on an operator's transaction.
pub(super) fn target_held(c: &mut SpiClient<'_>, config_id: i32) -> Result<bool, SpiError> {
    Ok(!c
        .update(
            "SELECT FROM backup_management.remote_backup_configs WHERE config_id = $1 \
                FOR SHARE SKIP LOCKED",
            None,
            &[config_id.into()],
        )?
        .is_empty())
}
