//! Catalog look-ups that several modules ask, written once.

use pgrx::spi::{SpiClient, SpiError};

/// The order in which verifications count as "newest": the latest `verified_at`, then the
/// latest row (two verifications in one transaction share a time).
macro_rules! newest_verification_first {
    () => {
        "ORDER BY v.verified_at DESC, v.verification_id DESC"
    };
}
pub(crate) use newest_verification_first;

/// SQL for the status of the newest verification of the backup `r` (a `backup_records` alias in
/// the surrounding query): 'passed', 'failed', or NULL when it was never verified.
macro_rules! newest_verification_status {
    () => {
        concat!(
            "(SELECT v.verification_status FROM backup_management.backup_verifications v \
               WHERE v.backup_id = r.backup_id ",
            $crate::catalog::queries::newest_verification_first!(),
            " LIMIT 1)"
        )
    };
}
pub(crate) use newest_verification_status;

/// Backup `id` and every ancestor it builds on (`parent_backup_id`), with their recorded
/// paths, by id: the directories a native backup's files may be held in.
pub fn chain_members(c: &SpiClient<'_>, id: i64) -> Result<Vec<(i64, String)>, SpiError> {
    let t = c.select(
        "WITH RECURSIVE chain(backup_id, parent_backup_id, backup_file_path) AS ( \
             SELECT backup_id, parent_backup_id, backup_file_path FROM backup_management.backup_records \
              WHERE backup_id = $1 \
             UNION \
             SELECT r.backup_id, r.parent_backup_id, r.backup_file_path \
               FROM backup_management.backup_records r JOIN chain ON r.backup_id = chain.parent_backup_id) \
         SELECT backup_id, backup_file_path FROM chain ORDER BY backup_id",
        None,
        &[id.into()],
    )?;
    let mut out = Vec::new();
    for row in t {
        if let (Some(member), Some(path)) = (row.get::<i64>(1)?, row.get::<String>(2)?) {
            out.push((member, path));
        }
    }
    Ok(out)
}
