//! Azure Blob storage as an off-site target: the configuration (the account's blob endpoint,
//! container and prefix, `ACCOUNT:KEY` by reference, a private CA) turned into an
//! `object_store` client.  Uploads, downloads and listings are `ObjectTarget`'s, shared with S3.
//!
//! Azure's ETags are not MD5s of what was stored, so every copy is checked by reading it back
//! and comparing its sha256, as the filesystem target does.

use std::path::Path;
use std::sync::Arc;

use object_store::azure::MicrosoftAzureBuilder;

use super::credentials::resolve_credentials;
use super::object::{place_and_prefix, Checked, ObjectTarget};
use super::transport::transport;
use super::StorageError;

/// The target `remote_endpoint` (the account's blob endpoint,
/// `https://ACCOUNT.blob.core.windows.net`, or a path-style one such as Azurite's
/// `http://127.0.0.1:10000/ACCOUNT`) and `remote_path` (`container[/prefix]`) name; the
/// account and its key resolved from their reference.
pub fn open(
    endpoint: &str,
    container_and_prefix: &str,
    credentials_ref: &str,
    part_size: Option<usize>,
    ca_file: Option<&Path>,
) -> Result<ObjectTarget, StorageError> {
    let (container, prefix) = place_and_prefix(container_and_prefix, "container")?;
    let transport = transport(endpoint, ca_file)?;
    let (account, key) = resolve_credentials(credentials_ref)?;
    let builder = MicrosoftAzureBuilder::new()
        .with_account(account)
        .with_access_key(key.expose())
        .with_container_name(container)
        .with_endpoint(endpoint.trim_end_matches('/').to_owned())
        .with_client_options(transport.options)
        .with_retry(transport.retry)
        .with_http_connector(transport.connector);
    let store = builder
        .build()
        // Not the builder's message: for a key that is not base64 it quotes a character of
        // the key.
        .map_err(|_| {
            StorageError::Config(format!(
                "Azure target {endpoint}: the account name, key (base64) or endpoint is not valid"
            ))
        })?;
    Ok(ObjectTarget::new(
        Arc::new(store),
        endpoint,
        &format!("container {container}"),
        prefix,
        part_size,
        Checked::ReadBack,
    ))
}
