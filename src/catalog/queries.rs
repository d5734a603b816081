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

/// SQL for what makes the chain of backup `r` (a `backup_records` alias) unusable, or NULL when
/// nothing does: the nearest ancestor that is gone from the catalog, not completed, expired, or
/// whose verdict is failed (`backup_mgmt.chain_problem`, walking `backup_mgmt.backup_chain`).
macro_rules! chain_problem {
    () => {
        "backup_mgmt.chain_problem(r.backup_id)"
    };
}
pub(crate) use chain_problem;

/// SQL for the first member of the chain of backup `r` (itself, then its ancestors nearest
/// first) whose verdict is not 'passed', as text, or NULL when the whole chain passed: what
/// makes a usable chain "verified as a whole" (`backup_mgmt.chain_unverified`, also read by
/// the `recovery_status` view).
macro_rules! chain_unverified {
    () => {
        "backup_mgmt.chain_unverified(r.backup_id)"
    };
}
pub(crate) use chain_unverified;

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
        "SELECT DISTINCT r.backup_id, r.backup_file_path, r.checksum, r.compression \
           FROM backup_mgmt.backup_chain($1) up \
           JOIN backup_management.backup_records r ON r.backup_id = up.backup_id \
          ORDER BY r.backup_id",
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
