//! Who may point off-site copies where.  `backup_admin` members may write
//! `remote_backup_configs`, and the worker then sends backups (and credentials) wherever a row
//! says: so a row written by a role that is not a superuser is held to the limits a superuser
//! set (`backup_mgmt_core::storage::limits`), when it is written (the trigger
//! `remote_backup_configs_check`) and again whenever the worker uses it (the limits may have been
//! tightened since).  The trigger also records who wrote the row; nobody can claim to be a
//! superuser by writing that column, as the trigger overwrites it.

use std::path::PathBuf;

use backup_mgmt_core::backup::layout;
use backup_mgmt_core::paths::{self, PathError};
use backup_mgmt_core::storage::limits::{LimitError, TargetConfig};
use pgrx::prelude::*;
use pgrx::{pg_sys::panic::ErrorReport, PgLogLevel, PgSqlErrorCode};

use crate::pg::guc;

/// Why a target may not be used as configured.
#[derive(Debug, thiserror::Error)]
pub enum TargetRefused {
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(transparent)]
    Path(#[from] PathError),
}

/// A value of the row that could not be read or written (a bug: the columns are the table's).
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(transparent)]
    Datum(#[from] pgrx::datum::TryFromDatumError),
}

/// A target row, as far as its limits go.
pub struct TargetRow<'a> {
    pub remote_type: &'a str,
    pub endpoint: &'a str,
    pub path: &'a str,
    pub credentials_ref: Option<&'a str>,
    pub encryption_key_ref: Option<&'a str>,
    pub options: &'a serde_json::Value,
}

impl TargetRow<'_> {
    /// A filesystem target's directory: `remote_endpoint` joined with `remote_path`.
    pub fn directory(&self) -> PathBuf {
        PathBuf::from(self.endpoint).join(self.path.trim_start_matches('/'))
    }
}

/// Checks a target configured by a role that is not a superuser.  A filesystem target must lie
/// inside a backup root (a whole root, such as a second disk listed in `backup_roots`, is fine:
/// keys start with the system identifier), outside what backup_mgmt keeps there (checked
/// lexically here: the directory may not exist yet; the worker resolves it when it copies).
pub fn check_unprivileged(row: &TargetRow<'_>) -> Result<(), TargetRefused> {
    if row.remote_type == "filesystem" {
        let dir = row.directory();
        let text = dir.to_string_lossy();
        paths::validate_absolute(&text)?;
        let roots = guc::backup_roots()?;
        let Some(root) = roots.iter().find(|r| dir.starts_with(r)) else {
            return Err(PathError::OutsideRoots {
                path: text.into_owned(),
                resolved: None,
            }
            .into());
        };
        if let Some(first) = dir
            .strip_prefix(root)
            .ok()
            .and_then(|r| r.components().next())
        {
            if let Some(what) = layout::reserved(first.as_os_str()) {
                return Err(PathError::Reserved {
                    path: text.into_owned(),
                    what,
                }
                .into());
            }
        }
    }
    let limits = guc::offsite_limits();
    limits.check(&TargetConfig {
        remote_type: row.remote_type,
        endpoint: row.endpoint,
        credentials_ref: row.credentials_ref,
        encryption_key_ref: row.encryption_key_ref,
        ca_file: row.options.get("ca_file").and_then(|v| v.as_str()),
    })?;
    Ok(())
}

/// BEFORE INSERT OR UPDATE OF (what says where copies go) trigger `remote_backup_configs_check`.
#[pg_trigger]
fn remote_backup_configs_guard<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, impl WhoAllocated>>, GuardError> {
    let Some(new) = trigger.new() else {
        return Ok(None);
    };
    let mut new = new.into_owned();
    // SAFETY: superuser() and GetUserId() read this backend's current user; no preconditions.
    let (is_superuser, user) = unsafe {
        let id = pg_sys::GetUserId();
        let name = pg_sys::GetUserNameFromId(id, true);
        let name = if name.is_null() {
            String::new()
        } else {
            std::ffi::CStr::from_ptr(name)
                .to_string_lossy()
                .into_owned()
        };
        (pg_sys::superuser(), name)
    };
    if !is_superuser {
        let remote_type: Option<String> = new.get_by_name("remote_type")?;
        let endpoint: Option<String> = new.get_by_name("remote_endpoint")?;
        let path: Option<String> = new.get_by_name("remote_path")?;
        let credentials: Option<String> = new.get_by_name("credentials_ref")?;
        let key: Option<String> = new.get_by_name("encryption_key_ref")?;
        let options: Option<pgrx::JsonB> = new.get_by_name("options")?;
        let options = options.map(|j| j.0).unwrap_or_default();
        let row = TargetRow {
            remote_type: remote_type.as_deref().unwrap_or_default(),
            endpoint: endpoint.as_deref().unwrap_or_default(),
            path: path.as_deref().unwrap_or_default(),
            credentials_ref: credentials.as_deref(),
            encryption_key_ref: key.as_deref(),
            options: &options,
        };
        if let Err(why) = check_unprivileged(&row) {
            ErrorReport::new(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("off-site target refused for role \"{user}\": {why}"),
                "backup_mgmt",
            )
            .set_hint(
                "Only superusers configure targets freely; other roles are held to backup_mgmt.offsite_endpoints, \
                 offsite_allow_http, credentials_env_prefix and credentials_directory, which a superuser sets in postgresql.conf.",
            )
            .report(PgLogLevel::ERROR);
        }
    }
    new.set_by_name("configured_by", user)?;
    new.set_by_name("configured_by_superuser", is_superuser)?;
    Ok(Some(new))
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[allow(unused_imports)]
    use crate::testing::*;

    fn insert(kind: &str, endpoint: &str, path: &str, credentials: &str) -> String {
        format!(
            "INSERT INTO backup_management.remote_backup_configs
                 (config_name, database_name, remote_type, remote_endpoint, remote_path, credentials_ref)
             VALUES ('t-' || pg_catalog.md5(pg_catalog.random()::text), 'appdb', '{kind}', '{endpoint}', '{path}', {credentials})"
        )
    }

    #[pg_test]
    fn operators_configure_targets_only_within_the_limits() {
        Spi::run("CREATE ROLE bm_test_target_op IN ROLE backup_admin").unwrap();
        Spi::run("SET LOCAL ROLE bm_test_target_op").unwrap();
        // The test cluster sets no limits: no object storage at all for operators, and no
        // credentials from the server's environment.
        for (sql, named) in [
            (
                insert("s3", "http://169.254.169.254", "b", "'env:BACKUP_MGMT_S3'"),
                "169.254.169.254",
            ),
            (
                insert("s3", "https://s3.example.com", "b", "'env:PGPASSWORD'"),
                "s3.example.com",
            ),
            (
                insert(
                    "azure",
                    "https://acme.blob.core.windows.net",
                    "c",
                    "'file:/etc/shadow'",
                ),
                "acme.blob.core.windows.net",
            ),
            (insert("filesystem", "/etc", "cron.d", "NULL"), "/etc"),
            (
                insert("filesystem", TEST_ROOT, "wal", "NULL"),
                "WAL archive",
            ),
        ] {
            assert_fails(&sql, "42501", named);
        }
        // Inside a root, elsewhere than what backup_mgmt keeps: allowed, and marked as the
        // operator's, whatever the operator writes into the provenance columns.
        Spi::run(&insert("filesystem", TEST_ROOT, "offsite", "NULL")).unwrap();
        Spi::run(
            "UPDATE backup_management.remote_backup_configs SET configured_by = 'postgres', configured_by_superuser = true",
        )
        .unwrap();
        let (who, superuser) = Spi::get_two::<String, bool>(
            "SELECT configured_by, configured_by_superuser FROM backup_management.remote_backup_configs",
        )
        .unwrap();
        assert_eq!(who.as_deref(), Some("bm_test_target_op"));
        assert_eq!(superuser, Some(false));
        // A superuser configures what it likes.
        Spi::run("RESET ROLE").unwrap();
        Spi::run(&insert(
            "s3",
            "http://127.0.0.1:9000",
            "b",
            "'env:ANY_NAME'",
        ))
        .unwrap();
        let vouched = Spi::get_one::<i64>(
            "SELECT count(*) FROM backup_management.remote_backup_configs WHERE configured_by_superuser",
        )
        .unwrap();
        assert_eq!(vouched, Some(1));
    }
}
