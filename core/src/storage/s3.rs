//! S3-compatible object storage as an off-site target: the configuration (endpoint, bucket and
//! prefix, region, credentials by reference, a private CA) turned into an `object_store` client,
//! path-style so that any S3-compatible server works.  Uploads, downloads and their checks are
//! `ObjectTarget`'s, shared with the other object stores.

use std::path::Path;
use std::sync::Arc;

use object_store::aws::AmazonS3Builder;

use super::credentials::resolve_credentials;
use super::object::{place_and_prefix, Checked, ObjectTarget};
use super::transport::transport;
use super::StorageError;

pub use super::object::DEFAULT_PART_SIZE;

/// The target `remote_endpoint` (`http://host:port` or `https://host`, no path) and
/// `remote_path` (`bucket[/prefix]`) name; credentials resolved from their reference.
pub fn open(
    endpoint: &str,
    bucket_and_prefix: &str,
    region: &str,
    credentials_ref: &str,
    part_size: Option<usize>,
    ca_file: Option<&Path>,
) -> Result<ObjectTarget, StorageError> {
    let (bucket, prefix) = place_and_prefix(bucket_and_prefix, "bucket")?;
    let transport = transport(endpoint, ca_file)?;
    let (access_key, secret) = resolve_credentials(credentials_ref)?;
    let builder = AmazonS3Builder::new()
        .with_endpoint(endpoint.trim_end_matches('/'))
        .with_virtual_hosted_style_request(false)
        .with_region(region)
        .with_bucket_name(bucket)
        .with_access_key_id(access_key)
        .with_secret_access_key(secret.expose())
        .with_client_options(transport.options)
        .with_retry(transport.retry)
        .with_http_connector(transport.connector);
    let store = builder
        .build()
        .map_err(|e| StorageError::Config(format!("S3 target {endpoint}: {e}")))?;
    Ok(ObjectTarget::new(
        Arc::new(store),
        endpoint,
        &format!("bucket {bucket}"),
        prefix,
        part_size,
        Checked::Md5Etag,
    ))
}
