//! A job's executions: ending one, and keeping the history bounded.

use pgrx::spi::{SpiClient, SpiError};

use crate::pg::guc;

/// Ends an execution: its status, final size (completed) or error (failed).
pub fn end_execution(
    c: &mut SpiClient<'_>,
    execution_id: i64,
    status: &str,
    bytes: Option<i64>,
    error: Option<&str>,
) -> Result<(), SpiError> {
    c.update(
        "UPDATE enterprise_backup.backup_job_executions \
            SET execution_status = $2, execution_end_time = now(), phase = NULL, \
                bytes_written = coalesce($3, bytes_written), error_message = $4, progress_updated_at = now() \
          WHERE execution_id = $1",
        None,
        &[execution_id.into(), status.into(), bytes.into(), error.into()],
    )
    .map(|_| ())
}

/// Deletes a job's oldest finished executions beyond `backup_mgmt.max_history_per_job`.
pub fn prune_history(c: &mut SpiClient<'_>, job_id: i64) -> Result<(), SpiError> {
    c.update(
        "DELETE FROM enterprise_backup.backup_job_executions \
          WHERE job_id = $1 AND execution_status <> 'running' \
            AND execution_id < (SELECT execution_id FROM enterprise_backup.backup_job_executions \
                                 WHERE job_id = $1 ORDER BY execution_id DESC OFFSET $2 - 1 LIMIT 1)",
        None,
        &[job_id.into(), guc::max_history_per_job().into()],
    )
    .map(|_| ())
}
