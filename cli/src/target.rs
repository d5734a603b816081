//! The off-site target named on the command line, and the same target written back as the
//! arguments of the `wal-fetch` command PostgreSQL runs as `restore_command`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backup_mgmt_core::restore::fetch::sh_quote;
use backup_mgmt_core::storage::filesystem::FilesystemTarget;
use backup_mgmt_core::storage::Storage;
use backup_mgmt_core::storage::{azure, object, s3};
use clap::Args;

use crate::CliError;

#[derive(Args)]
pub struct TargetArgs {
    /// A filesystem target: the directory the extension copies to (its remote_path).
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        conflicts_with_all = ["s3_endpoint", "azure_endpoint"]
    )]
    dir: Option<PathBuf>,
    /// An S3-compatible target: its endpoint (remote_endpoint), `https://host[:port]`.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        requires = "s3_path",
        conflicts_with = "azure_endpoint"
    )]
    s3_endpoint: Option<String>,
    /// The bucket and key prefix (remote_path).
    #[arg(long, global = true, value_name = "BUCKET[/PREFIX]")]
    s3_path: Option<String>,
    /// The bucket's region (options.region).
    #[arg(
        long,
        global = true,
        value_name = "REGION",
        default_value = "us-east-1"
    )]
    s3_region: String,
    /// Where the access key is, never the key itself: `file:/path` (mode 0600, owned by you,
    /// holding ACCESS_KEY_ID:SECRET_ACCESS_KEY) or `env:NAME`.
    #[arg(long, global = true, value_name = "REFERENCE")]
    s3_credentials: Option<String>,
    /// A PEM file of the CA certificates to trust (options.ca_file).
    #[arg(long, global = true, value_name = "FILE")]
    s3_ca_file: Option<PathBuf>,
    /// An Azure Blob target: the account's blob endpoint (remote_endpoint),
    /// `https://ACCOUNT.blob.core.windows.net`.
    #[arg(long, global = true, value_name = "URL", requires = "azure_path")]
    azure_endpoint: Option<String>,
    /// The container and key prefix (remote_path).
    #[arg(long, global = true, value_name = "CONTAINER[/PREFIX]")]
    azure_path: Option<String>,
    /// Where the account key is, never the key itself: `file:/path` (mode 0600, owned by you,
    /// holding ACCOUNT:KEY) or `env:NAME`.
    #[arg(long, global = true, value_name = "REFERENCE")]
    azure_credentials: Option<String>,
    /// A PEM file of CA certificates to trust besides the system's (options.ca_file).
    #[arg(long, global = true, value_name = "FILE")]
    azure_ca_file: Option<PathBuf>,
    /// How long a download from an object store may receive nothing before it is asked again
    /// from the byte it reached, and a listing wait for a page (options.io_timeout_s; 1 to
    /// 1800).  A connection that a firewall dropped silently costs this long, not the 30-minute
    /// request timeout.
    #[arg(long, global = true, value_name = "SECONDS", default_value_t = 60.0, value_parser = io_timeout_seconds)]
    io_timeout: f64,
}

/// `--io-timeout`: seconds within the range a target's `io_timeout_s` allows.
fn io_timeout_seconds(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .ok()
        .filter(|s| object::io_timeout(*s).is_some())
        .ok_or_else(|| format!("{text:?} is not a number of seconds from 1 to 1800"))
}

impl TargetArgs {
    pub fn open(&self) -> Result<Box<dyn Storage>, CliError> {
        if let Some(dir) = &self.dir {
            // A mistyped or unmounted directory is not an empty target: "no clusters" with
            // exit 0 would read as "nothing was ever copied".
            match std::fs::metadata(dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(CliError::Unreachable(format!(
                        "the target {} is not a directory",
                        dir.display()
                    )))
                }
                Err(e) => {
                    return Err(CliError::Unreachable(format!(
                        "the target directory {} cannot be reached: {e}",
                        dir.display()
                    )))
                }
            }
            return Ok(Box::new(FilesystemTarget {
                dir: dir.clone(),
                rate: None,
            }));
        }
        if let (Some(endpoint), Some(path)) = (&self.azure_endpoint, &self.azure_path) {
            let credentials = self.azure_credentials.as_deref().ok_or_else(|| {
                CliError::Usage(
                    "an Azure target needs --azure-credentials file:/path or env:NAME".into(),
                )
            })?;
            let mut t = azure::open(
                endpoint,
                path,
                credentials,
                None,
                self.azure_ca_file.as_deref(),
            )
            .map_err(|e| CliError::Usage(e.to_string()))?;
            t.io_timeout = self.io_timeout();
            return Ok(Box::new(t));
        }
        let (Some(endpoint), Some(path)) = (&self.s3_endpoint, &self.s3_path) else {
            return Err(CliError::Usage(
                "name the target: --dir DIR, --s3-endpoint URL --s3-path BUCKET[/PREFIX] --s3-credentials REF, or --azure-endpoint URL --azure-path CONTAINER[/PREFIX] --azure-credentials REF".into(),
            ));
        };
        let credentials = self.s3_credentials.as_deref().ok_or_else(|| {
            CliError::Usage("an S3 target needs --s3-credentials file:/path or env:NAME".into())
        })?;
        let mut t = s3::open(
            endpoint,
            path,
            &self.s3_region,
            credentials,
            None,
            self.s3_ca_file.as_deref(),
        )
        .map_err(|e| CliError::Usage(e.to_string()))?;
        t.io_timeout = self.io_timeout();
        Ok(Box::new(t))
    }

    fn io_timeout(&self) -> Duration {
        object::io_timeout(self.io_timeout).unwrap_or(object::DEFAULT_IO_TIMEOUT)
    }

    /// This program and this target (absolute paths) and the cluster, as the argument vector
    /// of a command this program starts again (`wal-fetch` from `restore_command`, its
    /// read-ahead).
    pub fn words(&self, sysid: i64) -> Result<Vec<String>, CliError> {
        let exe = std::env::current_exe()
            .map_err(|e| CliError::Usage(format!("cannot tell where this program is: {e}")))?;
        let mut words = vec![exe.display().to_string()];
        if let Some(dir) = &self.dir {
            words.extend(["--dir".into(), absolute(dir)?]);
        }
        if let (Some(e), Some(p)) = (&self.s3_endpoint, &self.s3_path) {
            words.extend([
                "--s3-endpoint".into(),
                e.clone(),
                "--s3-path".into(),
                p.clone(),
                "--s3-region".into(),
                self.s3_region.clone(),
            ]);
            if let Some(c) = &self.s3_credentials {
                words.extend(["--s3-credentials".into(), c.clone()]);
            }
            if let Some(ca) = &self.s3_ca_file {
                words.extend(["--s3-ca-file".into(), absolute(ca)?]);
            }
        }
        if let (Some(e), Some(p)) = (&self.azure_endpoint, &self.azure_path) {
            words.extend([
                "--azure-endpoint".into(),
                e.clone(),
                "--azure-path".into(),
                p.clone(),
            ]);
            if let Some(c) = &self.azure_credentials {
                words.extend(["--azure-credentials".into(), c.clone()]);
            }
            if let Some(ca) = &self.azure_ca_file {
                words.extend(["--azure-ca-file".into(), absolute(ca)?]);
            }
        }
        if self.dir.is_none() {
            words.extend(["--io-timeout".into(), self.io_timeout.to_string()]);
        }
        words.extend(["--cluster".into(), sysid.to_string()]);
        Ok(words)
    }

    /// Whether the credentials are read from an environment variable, which the server that
    /// runs `restore_command` must then have too.
    pub fn credentials_from_env(&self) -> Option<&str> {
        self.s3_credentials
            .as_deref()
            .or(self.azure_credentials.as_deref())
            .filter(|c| c.starts_with("env:"))
    }

    /// `restore_command`: `wal-fetch` of this target with a read-ahead spool that stops at
    /// `timeline` (the one recovery ends on), `%f %p`; every
    /// word quoted for the shell PostgreSQL runs it with.
    pub fn wal_fetch_command(
        &self,
        sysid: i64,
        spool: &Path,
        timeline: u32,
    ) -> Result<String, CliError> {
        let mut words = self.words(sysid)?;
        words.extend([
            "wal-fetch".into(),
            "--spool".into(),
            absolute(&spool.to_path_buf())?,
            "--timeline".into(),
            timeline.to_string(),
        ]);
        if words.iter().any(|w| w.contains(['\n', '\r', '\0', '%'])) {
            return Err(CliError::Usage(
                "a path or name given contains a line break or %, which restore_command cannot carry".into(),
            ));
        }
        let mut line: Vec<String> = words.iter().map(|w| sh_quote(w)).collect();
        line.extend(["%f".into(), "%p".into()]);
        Ok(line.join(" "))
    }
}

fn absolute(p: &PathBuf) -> Result<String, CliError> {
    std::path::absolute(p)
        .map(|a| a.display().to_string())
        .map_err(|e| CliError::Usage(format!("{}: {e}", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Line {
        #[command(flatten)]
        target: TargetArgs,
    }

    /// `wal-fetch`, started again by PostgreSQL, reads the target as it was named, its I/O
    /// timeout included; out of range is refused.
    #[test]
    fn the_io_timeout_reaches_the_command_started_again() {
        let named = Line::parse_from([
            "backup-mgmt",
            "--s3-endpoint",
            "http://127.0.0.1:9000",
            "--s3-path",
            "b/pg",
            "--s3-credentials",
            "env:BACKUP_MGMT_S3",
            "--io-timeout",
            "2.5",
        ]);
        let words = named.target.words(7).unwrap();
        let at = words.iter().position(|w| w == "--io-timeout").unwrap();
        assert_eq!(words[at + 1], "2.5");
        let again = Line::parse_from(words.iter().filter(|w| *w != "--cluster" && *w != "7"));
        assert_eq!(again.target.io_timeout(), Duration::from_secs_f64(2.5));
        for bad in ["0", "0.5", "1801", "soon"] {
            assert!(
                Line::try_parse_from(["backup-mgmt", "--io-timeout", bad]).is_err(),
                "{bad}"
            );
        }
        let dir = Line::parse_from(["backup-mgmt", "--dir", "/mnt/offsite"]);
        assert!(!dir
            .target
            .words(7)
            .unwrap()
            .contains(&"--io-timeout".into()));
    }
}
