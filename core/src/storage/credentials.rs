//! Object-store credentials, by reference only: `env:NAME` (a variable of the server's
//! environment) or `file:/path` (owned by the server's OS user, mode 0600), holding `ID:SECRET`
//! (S3: `ACCESS_KEY_ID:SECRET_ACCESS_KEY`; Azure Blob: `ACCOUNT_NAME:ACCOUNT_KEY`).  The secret
//! lives in a type without `Debug` or `Display` and only ever reaches the signing client.  Also
//! the certificates of a target with its own CA.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::files::open::open_regular;
use crate::storage::StorageError;

/// A secret access key.  No `Debug`, no `Display`: it cannot reach a log line by accident.
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Secret {
        Secret(s)
    }
    /// The secret itself, for the signing client only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

/// `ID:SECRET`, resolved from `env:NAME` (a variable of the server's
/// environment) or `file:/path` (owned by this OS user, no group or other permissions).
/// Errors name the reference, never a value.
pub fn resolve_credentials(reference: &str) -> Result<(String, Secret), StorageError> {
    let fail = |why: &str| StorageError::Credential {
        reference: reference.to_owned(),
        why: why.to_owned(),
    };
    let text = if let Some(name) = reference.strip_prefix("env:") {
        std::env::var(name).map_err(|_| fail("the server's environment has no such variable"))?
    } else if let Some(path) = reference.strip_prefix("file:") {
        let f = open_regular(Path::new(path)).map_err(|e| fail(&e.to_string()))?;
        let m = f
            .metadata()
            .map_err(|e| fail(&format!("could not stat: {e}")))?;
        // SAFETY: geteuid has no preconditions.
        if m.uid() != unsafe { libc::geteuid() } {
            return Err(fail("not owned by the server's operating-system user"));
        }
        if m.permissions().mode() & 0o077 != 0 {
            return Err(fail(&format!(
                "mode {:o} lets others read it; chmod 600 it",
                m.permissions().mode() & 0o777
            )));
        }
        let mut s = String::new();
        (&f).read_to_string(&mut s)
            .map_err(|e| fail(&format!("could not read: {e}")))?;
        s
    } else {
        return Err(fail("must be env:NAME or file:/path"));
    };
    let (id, secret) = text.trim().split_once(':').ok_or_else(|| {
        fail("must hold ID:SECRET (S3: ACCESS_KEY_ID:SECRET_ACCESS_KEY, Azure: ACCOUNT:KEY)")
    })?;
    Ok((id.to_owned(), Secret(secret.to_owned())))
}

/// The certificates in `ca_file` (PEM), the only ones a target with its own CA trusts: for an
/// object store behind a private CA, or with a self-signed certificate.
pub(crate) fn ca_certificates(ca_file: &Path) -> Result<Vec<reqwest::Certificate>, StorageError> {
    let fail = |why: String| StorageError::Config(format!("ca_file {}: {why}", ca_file.display()));
    let mut pem = Vec::new();
    open_regular(ca_file)
        .map_err(|e| fail(e.to_string()))?
        .read_to_end(&mut pem)
        .map_err(|e| fail(e.to_string()))?;
    let certificates =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| fail(e.to_string()))?;
    if certificates.is_empty() {
        return Err(fail("no certificate in it".into()));
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_resolve_by_reference_only() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("s3.key");
        std::fs::write(&f, "AKIDEXAMPLE:wJalrXUtnFEMI\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let r = format!("file:{}", f.display());
        let e = resolve_credentials(&r).err().unwrap().to_string();
        assert!(e.contains("chmod 600") && !e.contains("wJalr"), "{e}");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (id, secret) = resolve_credentials(&r).unwrap();
        assert_eq!(
            (id.as_str(), secret.0.as_str()),
            ("AKIDEXAMPLE", "wJalrXUtnFEMI")
        );
        let e = resolve_credentials("env:BACKUP_MGMT_SURELY_UNSET")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("env:BACKUP_MGMT_SURELY_UNSET"), "{e}");
        assert!(resolve_credentials("AKIDEXAMPLE:secret").is_err());
    }
}
