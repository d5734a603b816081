//! A host-loss drill (`run_recovery_drill(plan, 'host_loss')`): the cluster brought back from an
//! off-site target alone, as `backup-mgmt restore` would after losing the host.  The target's
//! own catalog mirror is read back (not this catalog), the base backup chosen from it, fetched
//! and checked file by file (`core::restore::fetch`, the program's code; a `pg_basebackup` tar,
//! or a chain of them combined by this server's `pg_combinebackup`, by `fetch_tar`), then
//! started as a
//! restore test starts one (`pg_verifybackup`, a temporary postmaster with every command and
//! library setting neutralised, a query in every database).  The recovery time is measured from
//! the first byte fetched to the restored server accepting connections.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use backup_mgmt_core::files::beneath::ScratchDir;
use backup_mgmt_core::files::direct::{Pace, Writes};
use backup_mgmt_core::files::error::Context;
use backup_mgmt_core::restore::fetch::{self, Destination, Into};
use backup_mgmt_core::restore::fetch_tar;
use backup_mgmt_core::restore::materialize;
use backup_mgmt_core::restore::offsite::{self, Goal, OffsiteRestoreError, TarChains};
use backup_mgmt_core::restore::scratch_server::{self, ScratchError};
use backup_mgmt_core::threads;
use pgrx::prelude::*;
use pgrx::spi::SpiError;

use crate::offsite::TargetSpec;
use crate::pg::wait::in_background;
use crate::pg::{roots, server};

/// Why a host-loss drill could not restore from the target: its words become one of the drill's
/// issues.
#[derive(Debug, thiserror::Error)]
enum HostLossError {
    #[error(transparent)]
    Mirror(#[from] OffsiteRestoreError),
    #[error(
        "backup {0} on the target is not one this catalog recorded with that sha256: not restored"
    )]
    NotRecorded(i64),
    #[error("could not create a scratch directory: {0}")]
    Scratch(std::io::Error),
}

/// What a host-loss drill found.
pub(super) struct HostLoss {
    /// The target restored from.
    pub target: Option<String>,
    pub backup_id: Option<i64>,
    pub recovery_time: Option<Duration>,
    /// How old the restored data is (the backup's end), now.
    pub data_loss: Option<Duration>,
    pub restored: bool,
    pub issues: Vec<String>,
}

/// The target a host-loss drill restores from: an active one, the plan's database's first.
fn target_for(database: &str) -> Result<Option<(String, TargetSpec)>, SpiError> {
    Spi::connect(|c| {
        let t = c.select(
            &format!(
                "SELECT {} FROM backup_management.remote_backup_configs WHERE is_active \
                  ORDER BY database_name = $1 DESC, config_id LIMIT 1",
                TargetSpec::COLUMNS
            ),
            None,
            &[database.into()],
        )?;
        t.into_iter()
            .next()
            .map(|r| TargetSpec::from_row(&r))
            .transpose()
    })
}

/// Runs a host-loss drill for `database`'s plan.
pub(super) fn host_loss_drill(database: &str) -> Result<HostLoss, SpiError> {
    let mut out = HostLoss {
        target: None,
        backup_id: None,
        recovery_time: None,
        data_loss: None,
        restored: false,
        issues: Vec::new(),
    };
    let Some((name, spec)) = target_for(database)? else {
        out.issues
            .push("no active off-site target to restore from".into());
        return Ok(out);
    };
    out.target = Some(name.clone());
    let root = match roots::first_root() {
        Ok(r) => r,
        Err(e) => {
            out.issues
                .push(format!("no backup root to restore into: {e}"));
            return Ok(out);
        }
    };
    let sysid = server::system_identifier() as i64;
    let user = Spi::get_one::<String>("SELECT current_user::text")?.unwrap_or_default();
    let programs = super::physical_test::scratch_programs(user);
    // What this catalog recorded of its physical backups: a backup on the target is started
    // only when it is one of them, byte for byte (its sha256; a native backup's is its chain
    // manifest's, which holds every file's).  A target others can write could otherwise hand
    // the drill any cluster, whose catalog would then run as the superuser that checks it.
    let recorded: HashMap<i64, String> = Spi::connect(|c| {
        c.select(
            "SELECT backup_id, checksum FROM backup_management.backup_records \
              WHERE status = 'completed' AND checksum IS NOT NULL \
                AND backup_method IN ('native_physical', 'pg_basebackup') \
                AND coalesce(system_identifier, $1) = $1",
            None,
            &[sysid.into()],
        )?
        .map(|r| {
            Ok((
                r.get::<i64>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
            ))
        })
        .collect::<Result<_, SpiError>>()
    })?;
    let storage = match spec.open() {
        Ok(s) => s,
        Err(e) => {
            out.issues
                .push(format!("off-site target \"{name}\" cannot be used: {e}"));
            return Ok(out);
        }
    };
    // Everything from here runs on a helper thread (no catalog access): the target is read as a
    // new host would read it.
    let ran = in_background(move |progress| -> Result<_, HostLossError> {
        let mirror = offsite::load_mirror(storage.as_ref(), sysid)?;
        // This server's pg_combinebackup (17+) combines a chain of block-level incrementals.
        let chains = if programs.version_num >= 170000
            && programs.bindir.join("pg_combinebackup").is_file()
        {
            TarChains::Combine
        } else {
            TarChains::PassOver
        };
        // To the end of the backup, which reads only its own timeline.
        let timelines = offsite::Timelines::current();
        let choice = offsite::choose(&mirror, &Goal::EndOfBackup, None, chains, &timelines)?;
        let id = choice.backup.backup_id;
        // A native backup's sha256 is its chain manifest's, which names every file of the
        // chain with its own; a pg_basebackup chain is one tar per member, each checked.
        for member in &choice.chain {
            let same = matches!(
                (recorded.get(&member.backup_id), member.sha256.as_deref()),
                (Some(ours), Some(theirs)) if ours.as_str() == theirs
            );
            if !same {
                return Err(HostLossError::NotRecorded(member.backup_id));
            }
        }
        let ended = choice
            .backup
            .end_time
            .as_deref()
            .and_then(offsite::parse_time);
        let scratch = ScratchDir::create(&root, &scratch_server::scratch_dir(id))
            .map_err(HostLossError::Scratch)?;
        let prepare = |scratch: &ScratchDir,
                       progress: &backup_mgmt_core::progress::Progress|
         -> Result<PathBuf, ScratchError> {
            scratch.verify().at("could not use", scratch.path())?;
            let data = scratch.path().join("data");
            let fetched = if choice.backup.backup_method == "pg_basebackup" {
                fetch_tar::restore_tar(
                    storage.as_ref(),
                    &choice,
                    &data,
                    Some(&programs.bindir),
                    progress,
                )
            } else {
                fetch::chain_manifest(storage.as_ref(), &choice).and_then(|manifest| {
                    fetch::restore_native(
                        storage.as_ref(),
                        &choice,
                        &manifest,
                        &Destination {
                            data: &data,
                            tablespaces: &scratch.path().join("tablespaces"),
                            into: Into::New,
                            // Written as the restore program writes it, so that the drill
                            // measures the same restore.
                            writes: Writes::Direct,
                            pace: Some(&Pace::new()),
                        },
                        threads::cores(),
                        &progress.counters(),
                    )
                })
            };
            fetched
                .map_err(|e| ScratchError::Damaged(format!("restoring from the target: {e}")))?;
            // The scratch server's settings are the restore test's own, written as it starts.
            materialize::install_control(&data)?;
            Ok(data)
        };
        let outcome = scratch_server::restore_test_with(prepare, &scratch, &programs, &progress);
        Ok((id, ended, outcome))
    });
    match ran {
        Err(e) => out.issues.push(format!(
            "restoring from off-site target \"{name}\" failed: {e}"
        )),
        Ok((id, ended, outcome)) => {
            out.backup_id = Some(id);
            out.data_loss =
                ended.map(|e| (chrono::Utc::now() - e).to_std().unwrap_or(Duration::ZERO));
            out.restored = outcome.restored;
            if outcome.restored {
                out.recovery_time = Some(outcome.restore_time);
            } else {
                out.issues.push(format!(
                    "backup {id} from off-site target \"{name}\" did not come back: {}",
                    outcome.error.unwrap_or_else(|| "no reason given".into())
                ));
            }
        }
    }
    Ok(out)
}
