//! What an off-site target configured by a role that is not a superuser may use: endpoints from
//! a list a superuser set, https unless a superuser allowed http, credentials only from
//! environment variables with a given prefix or files in a given directory, a CA bundle only
//! from that directory.  Checked when such a role writes the configuration and again whenever
//! the worker uses it (the limits may have been tightened since).

use std::path::{Component, Path, PathBuf};

/// The limits a superuser set (`backup_mgmt.offsite_endpoints`, `offsite_allow_http`,
/// `credentials_env_prefix`, `credentials_directory`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub endpoints: Vec<String>,
    pub allow_http: bool,
    pub env_prefix: String,
    pub credentials_directory: Option<PathBuf>,
}

/// A target's configuration, as far as the limits are concerned.
#[derive(Debug, Clone, Copy)]
pub struct TargetConfig<'a> {
    pub remote_type: &'a str,
    pub endpoint: &'a str,
    pub credentials_ref: Option<&'a str>,
    pub encryption_key_ref: Option<&'a str>,
    pub ca_file: Option<&'a str>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LimitError {
    #[error("endpoint \"{0}\" is not in backup_mgmt.offsite_endpoints")]
    Endpoint(String),
    #[error("endpoint \"{0}\" is not an http(s) URL with a host")]
    BadEndpoint(String),
    #[error("endpoint \"{0}\" uses plain http, and backup_mgmt.offsite_allow_http is off")]
    Http(String),
    #[error("credentials reference \"{0}\" names a variable without the prefix in backup_mgmt.credentials_env_prefix")]
    EnvPrefix(String),
    #[error("\"{0}\" is not inside backup_mgmt.credentials_directory")]
    OutsideCredentialsDirectory(String),
    #[error("credentials reference \"{0}\" must be env:NAME or file:/path")]
    BadReference(String),
}

/// Scheme, host (lower case) and port of an http(s) URL that names no path beyond `/`.
fn origin(url: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if !(path.is_empty() || path == "/") || authority.contains('@') {
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse::<u16>().ok()?),
        _ => (authority, default_port),
    };
    if host.is_empty() {
        return None;
    }
    Some((scheme, host.to_ascii_lowercase(), port))
}

/// Whether `path` is lexically inside `dir` (absolute, no `..`).
fn inside(path: &str, dir: &Path) -> bool {
    let p = Path::new(path);
    p.is_absolute()
        && p.components().all(|c| !matches!(c, Component::ParentDir))
        && p.starts_with(dir)
        && p != dir
}

impl Limits {
    /// Refuses what a target configured by a role that is not a superuser may not use.
    pub fn check(&self, t: &TargetConfig<'_>) -> Result<(), LimitError> {
        if t.remote_type != "filesystem" {
            let (scheme, host, port) =
                origin(t.endpoint).ok_or_else(|| LimitError::BadEndpoint(t.endpoint.to_owned()))?;
            if scheme == "http" && !self.allow_http {
                return Err(LimitError::Http(t.endpoint.to_owned()));
            }
            let allowed = self
                .endpoints
                .iter()
                .filter_map(|e| origin(e))
                .any(|o| o == (scheme.clone(), host.clone(), port));
            if !allowed {
                return Err(LimitError::Endpoint(t.endpoint.to_owned()));
            }
        }
        for r in [t.credentials_ref, t.encryption_key_ref]
            .into_iter()
            .flatten()
        {
            if let Some(name) = r.strip_prefix("env:") {
                if self.env_prefix.is_empty() || !name.starts_with(&self.env_prefix) {
                    return Err(LimitError::EnvPrefix(r.to_owned()));
                }
            } else if let Some(path) = r.strip_prefix("file:") {
                self.check_file(path)?;
            } else {
                return Err(LimitError::BadReference(r.to_owned()));
            }
        }
        if let Some(ca) = t.ca_file {
            self.check_file(ca)?;
        }
        Ok(())
    }

    fn check_file(&self, path: &str) -> Result<(), LimitError> {
        match &self.credentials_directory {
            Some(dir) if inside(path, dir) => Ok(()),
            _ => Err(LimitError::OutsideCredentialsDirectory(path.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            endpoints: vec![
                "https://s3.eu-west-1.amazonaws.com/".into(),
                "https://minio.internal:9000".into(),
            ],
            allow_http: false,
            env_prefix: "BACKUP_MGMT_".into(),
            credentials_directory: Some("/etc/backup_mgmt".into()),
        }
    }

    fn s3<'a>(endpoint: &'a str, credentials: Option<&'a str>) -> TargetConfig<'a> {
        TargetConfig {
            remote_type: "s3",
            endpoint,
            credentials_ref: credentials,
            encryption_key_ref: None,
            ca_file: None,
        }
    }

    #[test]
    fn endpoints_must_be_listed_and_https() {
        let l = limits();
        assert!(l
            .check(&s3("https://s3.eu-west-1.amazonaws.com", None))
            .is_ok());
        assert!(l.check(&s3("https://MINIO.internal:9000/", None)).is_ok());
        assert_eq!(
            l.check(&s3("https://minio.internal:9001", None)),
            Err(LimitError::Endpoint("https://minio.internal:9001".into()))
        );
        // The cloud metadata address, and a look-alike host.
        assert!(l.check(&s3("http://169.254.169.254", None)).is_err());
        assert!(l
            .check(&s3("https://s3.eu-west-1.amazonaws.com.evil.example", None))
            .is_err());
        assert!(l
            .check(&s3("https://user@s3.eu-west-1.amazonaws.com", None))
            .is_err());
        assert!(l
            .check(&s3("https://s3.eu-west-1.amazonaws.com/other-path", None))
            .is_err());
        let http = Limits {
            endpoints: vec!["http://minio.internal:9000".into()],
            ..limits()
        };
        assert!(matches!(
            http.check(&s3("http://minio.internal:9000", None)),
            Err(LimitError::Http(_))
        ));
        let allowed = Limits {
            allow_http: true,
            ..http
        };
        assert!(allowed
            .check(&s3("http://minio.internal:9000", None))
            .is_ok());
    }

    #[test]
    fn credentials_only_by_the_allowed_references() {
        let l = limits();
        let ok = "https://minio.internal:9000";
        assert!(l.check(&s3(ok, Some("env:BACKUP_MGMT_S3"))).is_ok());
        assert!(matches!(
            l.check(&s3(ok, Some("env:PGPASSWORD"))),
            Err(LimitError::EnvPrefix(_))
        ));
        assert!(l
            .check(&s3(ok, Some("file:/etc/backup_mgmt/s3.key")))
            .is_ok());
        for bad in [
            "file:/var/lib/postgresql/.pgpass",
            "file:/etc/backup_mgmt/../shadow",
            "file:/etc/backup_mgmt",
        ] {
            assert!(
                matches!(
                    l.check(&s3(ok, Some(bad))),
                    Err(LimitError::OutsideCredentialsDirectory(_))
                ),
                "{bad}"
            );
        }
        let ca = TargetConfig {
            ca_file: Some("/etc/ssl/private/server.key"),
            ..s3(ok, None)
        };
        assert!(l.check(&ca).is_err());
        let none = Limits {
            credentials_directory: None,
            ..limits()
        };
        assert!(none
            .check(&s3(ok, Some("file:/etc/backup_mgmt/s3.key")))
            .is_err());
    }
}
