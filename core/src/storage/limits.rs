//! What an off-site target configured by a role that is not a superuser may use: endpoints from
//! a list a superuser set, https unless a superuser allowed http, credentials only from
//! environment variables with a given prefix or files in a given directory, a CA bundle only
//! from that directory.  Checked when such a role writes the configuration and again whenever
//! the worker uses it (the limits may have been tightened since).
//!
//! An endpoint may name the credentials that go with it (`https://host = env:BACKUP_MGMT_A`): a
//! reference named at any endpoint is then bound to the endpoints that name it, and such an
//! endpoint takes no other.  Without that, an operator could pair any allowed key with any
//! allowed endpoint; Azure's SharedKey signatures do not cover the host, so requests signed for
//! an endpoint the operator can watch could be replayed against the account the key is for.

use std::path::{Component, Path, PathBuf};

/// The limits a superuser set (`backup_mgmt.offsite_endpoints`, `offsite_allow_http`,
/// `credentials_env_prefix`, `credentials_directory`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub endpoints: Vec<Endpoint>,
    pub allow_http: bool,
    pub env_prefix: String,
    pub credentials_directory: Option<PathBuf>,
}

/// One entry of `backup_mgmt.offsite_endpoints`: a URL, and the credential references that
/// go with it (empty: any reference that is not bound to other endpoints).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    pub credentials: Vec<String>,
}

/// `backup_mgmt.offsite_endpoints` parsed: comma-separated entries, each a URL, optionally
/// followed by `=` and the credential references (separated by spaces) that go with it.
pub fn parse_endpoints(text: &str) -> Vec<Endpoint> {
    text.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let (url, credentials) = entry.split_once('=').unwrap_or((entry, ""));
            Endpoint {
                url: url.trim().to_owned(),
                credentials: credentials.split_whitespace().map(str::to_owned).collect(),
            }
        })
        .collect()
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
    #[error("\"{0}\" is not a plain absolute path (no \"//\", \".\", \"..\" or trailing \"/\")")]
    NotPlain(String),
    #[error("credentials reference \"{reference}\" is not one backup_mgmt.offsite_endpoints names for endpoint \"{endpoint}\"")]
    NotPaired { reference: String, endpoint: String },
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
            let here = (scheme, host, port);
            let entries: Vec<&Endpoint> = self
                .endpoints
                .iter()
                .filter(|e| origin(&e.url).as_ref() == Some(&here))
                .collect();
            if entries.is_empty() {
                return Err(LimitError::Endpoint(t.endpoint.to_owned()));
            }
            if let Some(reference) = t.credentials_ref {
                // Named with this endpoint: fine.  Otherwise refused if this endpoint names
                // its credentials, or if the reference is bound to endpoints elsewhere.
                let named_here = entries
                    .iter()
                    .any(|e| e.credentials.iter().any(|c| c == reference));
                let endpoint_binds = entries.iter().any(|e| !e.credentials.is_empty());
                let bound_elsewhere = self
                    .endpoints
                    .iter()
                    .any(|e| e.credentials.iter().any(|c| c == reference));
                if !named_here && (endpoint_binds || bound_elsewhere) {
                    return Err(LimitError::NotPaired {
                        reference: reference.to_owned(),
                        endpoint: t.endpoint.to_owned(),
                    });
                }
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
        // One spelling per file: `/d/./k`, `/d//k` or `//d/k` would name a file bound to an
        // endpoint without matching the reference the binding names.
        let plain: std::path::PathBuf = Path::new(path).components().collect();
        if plain.as_os_str() != path
            || Path::new(path)
                .components()
                .any(|c| !matches!(c, Component::RootDir | Component::Normal(_)))
        {
            return Err(LimitError::NotPlain(path.to_owned()));
        }
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
            endpoints: parse_endpoints(
                "https://s3.eu-west-1.amazonaws.com/, https://minio.internal:9000",
            ),
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
            endpoints: parse_endpoints("http://minio.internal:9000"),
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
                    Err(LimitError::OutsideCredentialsDirectory(_) | LimitError::NotPlain(_))
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

    #[test]
    fn credentials_named_with_an_endpoint_go_only_there() {
        let l = Limits {
            endpoints: parse_endpoints(
                "https://acme.blob.core.windows.net = env:BACKUP_MGMT_AZURE file:/etc/backup_mgmt/azure.key, \
                 https://minio.internal:9000=env:BACKUP_MGMT_MINIO, https://s3.eu-west-1.amazonaws.com",
            ),
            ..limits()
        };
        assert_eq!(l.endpoints.len(), 3);
        assert_eq!(
            l.endpoints[0].credentials,
            ["env:BACKUP_MGMT_AZURE", "file:/etc/backup_mgmt/azure.key"]
        );
        let azure = |endpoint, credentials| TargetConfig {
            remote_type: "azure",
            ..s3(endpoint, Some(credentials))
        };
        // Each key with its endpoint.
        for (endpoint, key) in [
            (
                "https://acme.blob.core.windows.net",
                "env:BACKUP_MGMT_AZURE",
            ),
            (
                "https://ACME.blob.core.windows.net/",
                "file:/etc/backup_mgmt/azure.key",
            ),
            ("https://minio.internal:9000", "env:BACKUP_MGMT_MINIO"),
            // An endpoint that names none takes any key that is not bound elsewhere.
            ("https://s3.eu-west-1.amazonaws.com", "env:BACKUP_MGMT_S3"),
        ] {
            assert_eq!(l.check(&azure(endpoint, key)), Ok(()), "{endpoint} {key}");
        }
        // A bound key at another endpoint, even one that names none; another key at an
        // endpoint that names its own.
        for (endpoint, key) in [
            ("https://minio.internal:9000", "env:BACKUP_MGMT_AZURE"),
            (
                "https://s3.eu-west-1.amazonaws.com",
                "file:/etc/backup_mgmt/azure.key",
            ),
            ("https://acme.blob.core.windows.net", "env:BACKUP_MGMT_S3"),
            (
                "https://acme.blob.core.windows.net",
                "env:BACKUP_MGMT_MINIO",
            ),
        ] {
            assert_eq!(
                l.check(&azure(endpoint, key)),
                Err(LimitError::NotPaired {
                    reference: key.into(),
                    endpoint: endpoint.into()
                }),
                "{endpoint} {key}"
            );
        }
        // Another spelling of a bound file is refused, not taken for an unbound reference.
        for spelling in [
            "file:/etc/backup_mgmt/./azure.key",
            "file:/etc/backup_mgmt//azure.key",
            "file://etc/backup_mgmt/azure.key",
            "file:/etc/backup_mgmt/azure.key/",
        ] {
            assert!(
                matches!(
                    l.check(&azure("https://s3.eu-west-1.amazonaws.com", spelling)),
                    Err(LimitError::NotPlain(_))
                ),
                "{spelling}"
            );
        }
        // Naming a reference does not lift the prefix and directory rules.
        let named = Limits {
            endpoints: parse_endpoints("https://minio.internal:9000 = env:PGPASSWORD"),
            ..limits()
        };
        assert!(matches!(
            named.check(&s3("https://minio.internal:9000", Some("env:PGPASSWORD"))),
            Err(LimitError::EnvPrefix(_))
        ));
    }
}
