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

/// SQL for the members of the chain of backup `r` (a `backup_records` alias) as `up(id, depth)`:
/// from `$first` (a `SELECT id, depth` of the first member: `r` itself at depth 0, or its parent
/// at depth 1), then each one's parent, nearest first.  Bounded, against a cycle.
macro_rules! chain_walk {
    ($first:literal) => {
        concat!(
            "(WITH RECURSIVE up(id, depth) AS ( ",
            $first,
            " UNION ALL \
                SELECT p.parent_backup_id, up.depth + 1 \
                  FROM backup_management.backup_records p JOIN up ON p.backup_id = up.id \
                 WHERE p.parent_backup_id IS NOT NULL AND up.depth < 10000) \
             SELECT id, depth FROM up) up"
        )
    };
}

/// SQL for what makes the chain of backup `r` (a `backup_records` alias) unusable, or NULL when
/// nothing does: the nearest ancestor (through `parent_backup_id`) that is gone from the catalog,
/// not completed, expired, or whose newest verification failed.  A restore needs every file of
/// the chain, so a damaged full rules out every incremental built on it.
macro_rules! chain_problem {
    () => {
        concat!(
            "(SELECT CASE WHEN a.backup_id IS NULL THEN pg_catalog.format('its ancestor %s is gone from the catalog', up.id) \
                          WHEN a.status <> 'completed' OR a.expired_at IS NOT NULL \
                          THEN pg_catalog.format('its ancestor %s is %s', up.id, a.status) \
                          ELSE pg_catalog.format('its ancestor %s failed its newest verification', up.id) END \
                FROM ",
            $crate::catalog::queries::chain_walk!(
                "SELECT r.parent_backup_id, 1 WHERE r.parent_backup_id IS NOT NULL"
            ),
            " LEFT JOIN backup_management.backup_records a ON a.backup_id = up.id \
                LEFT JOIN backup_management.verification_state s ON s.backup_id = up.id \
               WHERE a.backup_id IS NULL OR a.status <> 'completed' OR a.expired_at IS NOT NULL \
                  OR s.last_status = 'failed' \
               ORDER BY up.depth LIMIT 1)"
        )
    };
}
pub(crate) use chain_problem;

/// SQL for the first member of the chain of backup `r` (itself, then its ancestors nearest
/// first) whose newest verification did not pass (never verified, or failed), as text, or NULL
/// when the whole chain passed: what makes a usable chain "verified as a whole".
macro_rules! chain_unverified {
    () => {
        concat!(
            "(SELECT pg_catalog.format('backup %s has no passed verification', up.id) FROM ",
            $crate::catalog::queries::chain_walk!("SELECT r.backup_id, 0"),
            " LEFT JOIN backup_management.verification_state s ON s.backup_id = up.id \
               WHERE s.last_status IS DISTINCT FROM 'passed' \
               ORDER BY up.depth LIMIT 1)"
        )
    };
}
pub(crate) use chain_unverified;
pub(crate) use chain_walk;

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
