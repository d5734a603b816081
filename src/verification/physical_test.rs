//! Restore tests of physical backups: a pg_basebackup tar is extracted (an incremental's chain
//! extracted member by member, each against its sha256, and combined), a native backup's chain
//! materialised (every file checked against its chain manifest), then `pg_verifybackup` runs and
//! a temporary postmaster must recover and answer in every database
//! (`backup_mgmt_core::restore::scratch_server`).  Recorded as a `pg_verifybackup` verification
//! (when it got that far) and a `restore_test` one.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use backup_mgmt_core::files::beneath::ScratchDir;
use backup_mgmt_core::files::direct::Writes;
use backup_mgmt_core::files::error::Context;
use backup_mgmt_core::progress::Progress;
use backup_mgmt_core::restore::materialize::{materialize, Writers};
use backup_mgmt_core::restore::scratch_server::{
    self, PhysicalOutcome, ScratchError, ScratchServer, TarMember,
};
use backup_mgmt_core::threads;
use backup_mgmt_core::verify::native::load_manifest;
use backup_mgmt_core::verify::Report;
use pgrx::prelude::*;
use pgrx::spi::SpiError;
use serde_json::json;

use super::integrity::{self as verification, record_verifybackup};
use super::restore_outcome::{
    integrity_first, open_backup, record_restore_test, RestoreError, RestoreResult,
};
use super::scratch::verification_scratch;
use crate::catalog::queries::{chain_members, ChainMember};
use crate::pg::server;
use crate::pg::wait::in_background;

/// The restore test of a pg_basebackup backup (`physical.rs`), recorded as a `pg_verifybackup`
/// verification (when it got that far) and a `restore_test` one.
pub(super) fn physical_restore_test(
    target: verification::Target,
) -> Result<RestoreResult, RestoreError> {
    let id = target.backup_id;
    let resolved = verification::confine(&target)?;
    let path = resolved.main.clone();
    let scratch = verification_scratch(id).map_err(verification::VerificationError::from)?;
    let (compression, user, members) = Spi::connect(|c| -> Result<_, SpiError> {
        let t = c.select(
            "SELECT compression, current_user::text FROM backup_management.backup_records WHERE backup_id = $1",
            None,
            &[id.into()],
        )?;
        let row = t.first();
        Ok((
            row.get::<String>(1)?.unwrap_or_default(),
            row.get::<String>(2)?.unwrap_or_default(),
            chain_members(c, id)?,
        ))
    })?;
    // A block-level incremental: the backups it builds on, each confined to the roots again.
    let earlier: Vec<(ChainMember, Option<PathBuf>)> = members
        .into_iter()
        .filter(|m| m.id != id)
        .map(|m| {
            let at = target.chain.get(&m.id).cloned();
            (m, at)
        })
        .collect();
    // A member of the chain this host no longer holds is a local failure (the incremental's
    // own bytes, checked first, may be fine), not a restore that failed.
    let absent = earlier
        .iter()
        .find(|(_, at)| at.is_none())
        .map(|(m, _)| verification::absent_member(id, m.id, &m.path));
    let programs = scratch_programs(user);
    let started = Instant::now();
    let zstd = compression == "zstd";
    let moved = target.clone();
    let (integrity, outcome) = in_background(move |progress| {
        let integrity = match integrity_first(&moved, &resolved, &progress) {
            Ok(r) => r,
            Err(failed) => return (failed, None),
        };
        if let Some(absent) = absent {
            return (absent, None);
        }
        let file = match open_backup(path.as_deref(), &moved.path) {
            Ok(f) => f,
            Err(failed) => return (failed, None),
        };
        if earlier.is_empty() {
            let o = scratch_server::restore_test(file, zstd, &scratch, &programs, &progress);
            return (integrity, Some(o));
        }
        let mut members = Vec::new();
        for (m, at) in earlier {
            let opened = open_backup(at.as_deref(), &m.path).map_err(|r| {
                ScratchError::Prepare(format!(
                    "backup {} of the chain: {}",
                    m.id,
                    r.detail.unwrap_or_default()
                ))
            });
            members.push(opened.map(|file| TarMember {
                id: m.id,
                file,
                zstd: m.compression == "zstd",
                sha256: m.checksum.unwrap_or_default(),
            }));
        }
        members.push(Ok(TarMember {
            id,
            file,
            zstd,
            sha256: moved.checksum.clone().unwrap_or_default(),
        }));
        let bindir = programs.bindir.clone();
        let prepare = move |scratch: &ScratchDir, progress: &Progress| {
            let members = members.into_iter().collect::<Result<Vec<_>, _>>()?;
            scratch_server::unpack_chain(members, scratch, &bindir, progress)
        };
        let o = scratch_server::restore_test_with(prepare, &scratch, &programs, &progress);
        (integrity, Some(o))
    });
    finish_physical_test(
        id,
        &target.database_name,
        integrity,
        outcome,
        started.elapsed(),
    )
}

/// The programs and role a physical restore test uses: this server's.
pub(super) fn scratch_programs(user: String) -> ScratchServer {
    ScratchServer {
        bindir: server::bindir(),
        user,
        version_num: server::version_num(),
    }
}

/// Records a physical restore test (its pg_verifybackup verdict and its restore_test row).
fn finish_physical_test(
    id: i64,
    database: &str,
    integrity: Report,
    outcome: Option<PhysicalOutcome>,
    elapsed: Duration,
) -> Result<RestoreResult, RestoreError> {
    let Some(o) = outcome else {
        let result =
            json!({"stage": "integrity", "reason": integrity.reason, "detail": integrity.detail});
        record_restore_test(id, database, "failed", &result, elapsed)?;
        return Ok(RestoreResult {
            passed: false,
            restore_time: None,
            data_verified: false,
        });
    };
    if let Some((passed, output)) = &o.verifybackup {
        record_verifybackup(id, *passed, output, elapsed)?;
    }
    let verified = o.restored && o.verifybackup.as_ref().is_some_and(|v| v.0);
    let status = if verified { "passed" } else { "failed" };
    let mut result = o.details.clone();
    if let Some(obj) = result.as_object_mut() {
        obj.insert(
            "stage".into(),
            json!(if o.restored {
                "data_verification"
            } else {
                "restore"
            }),
        );
        obj.insert(
            "restore_seconds".into(),
            json!(o.restore_time.as_secs_f64()),
        );
        obj.insert("error".into(), json!(o.error));
    }
    record_restore_test(id, database, status, &result, elapsed)?;
    Ok(RestoreResult {
        passed: verified,
        restore_time: o.restored.then_some(o.restore_time),
        data_verified: verified,
    })
}

/// The restore test of a native physical backup: its own files and its chain are checked, the
/// complete data directory is materialised from the chain (every file against the manifest's
/// sha256), then tested like a pg_basebackup one (pg_verifybackup with the backup's PostgreSQL
/// manifest, a temporary postmaster).
pub(super) fn native_restore_test(
    target: verification::Target,
) -> Result<RestoreResult, RestoreError> {
    let id = target.backup_id;
    let resolved = verification::confine(&target)?;
    let path = resolved.main.clone();
    let scratch = verification_scratch(id).map_err(verification::VerificationError::from)?;
    let user = Spi::get_one::<String>("SELECT current_user::text")?.unwrap_or_default();
    let programs = scratch_programs(user);
    let started = Instant::now();
    let moved = target.clone();
    let (integrity, outcome) = in_background(move |progress| {
        let integrity = match integrity_first(&moved, &resolved, &progress) {
            Ok(r) => r,
            Err(failed) => return (failed, None),
        };
        let Some(dir) = path else {
            return (integrity, None);
        };
        let prepare =
            |scratch: &ScratchDir, progress: &Progress| -> Result<PathBuf, ScratchError> {
                let manifest = load_manifest(&dir, moved.checksum.as_deref())
                    .map_err(|r| ScratchError::Prepare(r.detail.unwrap_or_default()))?;
                scratch.verify().at("could not use", scratch.path())?;
                let data = scratch.path().join("data");
                let spaces = scratch.path().join("tablespaces");
                materialize(
                    &manifest,
                    &moved.chain,
                    &data,
                    &spaces,
                    // Through the page cache: pg_verifybackup and the scratch server read the
                    // copy back at once, and nothing needs it durable.
                    Writers {
                        threads: threads::cores(),
                        writes: Writes::Buffered,
                        pace: None,
                    },
                    &progress.counters(),
                )
                .map_err(|r| {
                    ScratchError::Prepare(format!(
                        "materialising the chain: {} ({})",
                        r.detail.unwrap_or_default(),
                        r.failing_file.unwrap_or_default()
                    ))
                })?;
                Ok(data)
            };
        let o = scratch_server::restore_test_with(prepare, &scratch, &programs, &progress);
        (integrity, Some(o))
    });
    finish_physical_test(
        id,
        &target.database_name,
        integrity,
        outcome,
        started.elapsed(),
    )
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[allow(unused_imports)]
    use crate::testing::*;

    /// The newest restore test of backup `id`: its stage and reason, and the backup's verdict
    /// (status, only_local).
    fn restore_tested(id: i64) -> (String, String, String, bool) {
        let status = Spi::get_one_with_args::<String>(
            "SELECT test_status FROM backup_mgmt.test_backup_restore($1)",
            &[id.into()],
        )
        .unwrap()
        .unwrap();
        assert_eq!(status, "failed");
        let (stage, reason) = Spi::get_two_with_args::<String, String>(
            "SELECT verification_result->>'stage', verification_result->>'reason'
               FROM backup_management.backup_verifications
              WHERE backup_id = $1 AND verification_type = 'restore_test'
              ORDER BY verification_id DESC LIMIT 1",
            &[id.into()],
        )
        .unwrap();
        let (verdict, local) = Spi::get_two_with_args::<String, bool>(
            "SELECT status, only_local FROM backup_mgmt.verification_verdict($1)",
            &[id.into()],
        )
        .unwrap();
        (
            stage.unwrap_or_default(),
            reason.unwrap_or_default(),
            verdict.unwrap_or_default(),
            local.unwrap_or_default(),
        )
    }

    /// A block-level incremental whose full this host no longer holds (or holds outside the
    /// roots) fails its restore test as a local failure, as a native chain's does: nothing was
    /// wrong with its own bytes, and an off-site copy of the chain may be whole, so the
    /// off-site mirror must not call it damaged (`failed_locally`).
    #[pg_test]
    fn an_incremental_whose_full_is_gone_here_fails_only_locally() {
        let (own, path) = recorded_file("incremental-of-a-gone-full.tar", b"not restored");
        let full = Spi::get_one_with_args::<i64>(
            "INSERT INTO backup_management.backup_records
                 (database_name, backup_type, backup_method, backup_file_path, status, start_time,
                  end_time, duration, checksum, origin)
             VALUES ('pgrx_tests', 'full', 'pg_basebackup', $1, 'completed', now(), now(), '0',
                     repeat('a', 64), 'worker')
             RETURNING backup_id",
            &[format!("{TEST_ROOT}/gone-full.tar").into()],
        )
        .unwrap()
        .unwrap();
        Spi::run_with_args(
            "UPDATE backup_management.backup_records
                SET backup_method = 'pg_basebackup', backup_type = 'incremental', origin = 'worker',
                    parent_backup_id = $2
              WHERE backup_id = $1",
            &[own.into(), full.into()],
        )
        .unwrap();
        assert_eq!(
            restore_tested(own),
            ("integrity".into(), "missing".into(), "failed".into(), true)
        );
        Spi::run_with_args(
            "UPDATE backup_management.backup_records SET backup_file_path = '/etc/passwd'
              WHERE backup_id = $1",
            &[full.into()],
        )
        .unwrap();
        assert_eq!(
            restore_tested(own),
            (
                "integrity".into(),
                "refused_path".into(),
                "failed".into(),
                true
            )
        );
        // Its own bytes are checked first: changed, they are what the test reports, whatever is
        // missing besides, and a content failure is not one of this host's.
        std::fs::write(&path, b"not restoreD").unwrap();
        assert_eq!(
            restore_tested(own),
            (
                "integrity".into(),
                "checksum_mismatch".into(),
                "failed".into(),
                false
            )
        );
    }
}
