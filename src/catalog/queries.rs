//! Catalog look-ups that several modules ask, written once.

use backup_mgmt_core::vocabulary::BackupMethod;
use pgrx::spi::{SpiClient, SpiError};

/// SQL for the standing verdict of the backup `r` (a live completed `backup_records` alias in
/// the surrounding query): 'failed' while one of its failed verifications stands (no later one
/// at least as thorough passed: `backup_mgmt.verification_verdict`), 'passed', or NULL when it
/// was never verified.  Read from `verification_state`, which the triggers keep.
macro_rules! standing_verdict {
    () => {
        "(SELECT s.last_status FROM backup_management.verification_state s \
           WHERE s.backup_id = r.backup_id)"
    };
}
pub(crate) use standing_verdict;

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
/// not completed, expired, or whose verification failed (`standing_verdict`).  A restore needs every file of
/// the chain, so a damaged full rules out every incremental built on it.
macro_rules! chain_problem {
    () => {
        concat!(
            "(SELECT CASE WHEN a.backup_id IS NULL THEN pg_catalog.format('its ancestor %s is gone from the catalog', up.id) \
                          WHEN a.status <> 'completed' OR a.expired_at IS NOT NULL \
                          THEN pg_catalog.format('its ancestor %s is %s', up.id, a.status) \
                          ELSE pg_catalog.format('its ancestor %s failed verification', up.id) END \
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
/// first) whose verdict is not 'passed' (never verified, or failed), as text, or NULL
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

/// One backup of a chain as recorded.
#[derive(Debug, Clone)]
pub struct ChainMember {
    pub id: i64,
    pub path: String,
    pub checksum: Option<String>,
    pub compression: String,
}

/// Backup `id` and every ancestor it builds on (`parent_backup_id`), with their recorded
/// paths, sha256 and compression, oldest (lowest id: a parent is recorded before its child)
/// first: the directories a native backup's files may be held in, the tars a pg_basebackup
/// incremental is combined with.
pub fn chain_members(c: &SpiClient<'_>, id: i64) -> Result<Vec<ChainMember>, SpiError> {
    let t = c.select(
        "WITH RECURSIVE chain(backup_id, parent_backup_id, depth) AS ( \
             SELECT backup_id, parent_backup_id, 0 FROM backup_management.backup_records \
              WHERE backup_id = $1 \
             UNION \
             SELECT r.backup_id, r.parent_backup_id, chain.depth + 1 \
               FROM backup_management.backup_records r JOIN chain ON r.backup_id = chain.parent_backup_id \
              WHERE chain.depth < 10000) \
         SELECT r.backup_id, r.backup_file_path, r.checksum, r.compression \
           FROM chain JOIN backup_management.backup_records r USING (backup_id) ORDER BY r.backup_id",
        None,
        &[id.into()],
    )?;
    let mut out = Vec::new();
    for row in t {
        if let (Some(member), Some(path)) = (row.get::<i64>(1)?, row.get::<String>(2)?) {
            out.push(ChainMember {
                id: member,
                path,
                checksum: row.get::<String>(3)?,
                compression: row.get::<String>(4)?.unwrap_or_default(),
            });
        }
    }
    Ok(out)
}

/// Where the parent of an incremental or differential backup is.
#[derive(Debug, Clone)]
pub(crate) struct Parent {
    pub id: i64,
    pub path: String,
    pub checksum: Option<String>,
    pub compression: String,
    /// When it began (epoch seconds): for a native backup, files changed in that second or
    /// later are copied again.
    pub started: i64,
}

/// The newest completed backup by `method` of this cluster that a `kind` backup builds on
/// (incremental: any type; differential: full), made by the worker on this major version,
/// unless its verification failed (`standing_verdict`) or its chain is broken.  Its start is rounded down
/// to the second: a native backup refers to a file only when its mtime (whole seconds) is
/// before it, and rounding up would let a write in the parent's first fraction of a second
/// pass as older.
pub(crate) fn choose_parent(
    c: &SpiClient<'_>,
    method: BackupMethod,
    kind: &str,
) -> Result<Option<Parent>, SpiError> {
    let t = c.select(
        concat!(
            "SELECT r.backup_id, r.backup_file_path, r.checksum, r.compression, \
                    floor(extract(epoch FROM r.start_time))::bigint \
               FROM backup_management.backup_records r \
              WHERE r.expired_at IS NULL AND r.backup_method = $2 AND r.status = 'completed' \
                AND r.origin = 'worker' \
                AND r.system_identifier = (SELECT system_identifier FROM pg_catalog.pg_control_system()) \
                AND r.pg_version / 10000 = pg_catalog.current_setting('server_version_num')::int / 10000 \
                AND ($1 = 'incremental' OR r.backup_type = 'full') \
                AND coalesce(",
            standing_verdict!(),
            ", 'passed') <> 'failed' \
                AND ",
            chain_problem!(),
            " IS NULL \
              ORDER BY r.end_time DESC, r.backup_id DESC LIMIT 1"
        ),
        None,
        &[kind.into(), method.as_str().into()],
    )?;
    if t.is_empty() {
        return Ok(None);
    }
    let row = t.first();
    Ok(Some(Parent {
        id: row.get::<i64>(1)?.unwrap_or_default(),
        path: row.get::<String>(2)?.unwrap_or_default(),
        checksum: row.get::<String>(3)?,
        compression: row.get::<String>(4)?.unwrap_or_default(),
        started: row.get::<i64>(5)?.unwrap_or_default(),
    }))
}
