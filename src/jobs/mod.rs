//! Scheduled jobs, pg_cron style: the SQL API that creates and changes them (`api`), their fire
//! times (`preview`), and their executions' history (`executions`).  The worker runs them.

pub mod api;
pub mod executions;
pub mod preview;
