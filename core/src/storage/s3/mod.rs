//! S3-compatible object storage as an off-site target, in plain Rust: AWS Signature Version 4
//! over HTTP(S) (path-style URLs, so any S3-compatible server works), single PUTs for small
//! backups and multipart uploads for large ones, streamed part by part from the file.
//!
//! Integrity: every request's payload is signed with its sha256 (`x-amz-content-sha256`), and
//! every part's (and single object's) ETag, which the server computes from what it stored, is
//! compared with the MD5 computed here; after the upload lands, a HEAD checks the object's size
//! and its whole-object ETag (for multipart: the MD5 of the parts' MD5s, `-N`).  The backup's
//! sha256 is stored as `x-amz-meta-sha256`.
//!
//! Credentials are read by reference (`env:NAME` or a `file:` readable only by the server's OS
//! user) as `ACCESS_KEY_ID:SECRET_ACCESS_KEY`; the secret lives in a type without `Debug` or
//! `Display`, and is only ever used as an HMAC key.

mod credentials;
mod sigv4;

use std::path::Path;
use std::time::Duration;

use md5::Md5;
use sha2::{Digest, Sha256};

pub use credentials::{resolve_credentials, Secret};
pub use sigv4::{sign, Signed};

use super::{open_local, Copied, Storage, StorageError};
use crate::checksum::hex;
use crate::stream;

/// Part size of multipart uploads (S3 allows 5 MiB to 5 GiB; 10,000 parts at most, so larger
/// backups get larger parts).
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
/// Parts uploaded at the same time (each holds a part-sized buffer).
const UPLOADS_IN_FLIGHT: usize = 4;
/// S3's limit on parts per upload.
const MAX_PARTS: u64 = 10_000;
/// Idle connections kept per endpoint for reuse: as many as requests usually in flight at once
/// (a restore's `--jobs`, parallel part uploads), so none is closed only to be opened again.
const IDLE_CONNECTIONS: usize = 64;

/// An S3 bucket (and key prefix) behind an endpoint.
pub struct S3Target {
    /// `http://host:port` or `https://host`, no path.
    pub endpoint: String,
    pub bucket: String,
    /// Prefix inside the bucket (no leading or trailing slash; may be empty).
    pub prefix: String,
    pub region: String,
    pub access_key: String,
    pub secret: Secret,
    pub part_size: usize,
    /// Create the bucket if it is missing (`options.create_bucket`).
    pub create_bucket: bool,
    /// The target's bandwidth limit (`options.max_rate_mb`), shared by its uploads in flight.
    pub rate: Option<std::sync::Arc<stream::RateLimit>>,
    agent: ureq::Agent,
}

/// The text between `<tag>` and `</tag>` in an S3 XML response.
fn xml_value<'a>(body: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{tag}>"))? + start;
    Some(&body[start..end])
}

/// Every text between `<tag>` and `</tag>`, in order.
fn xml_values<'a>(body: &'a str, tag: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    let close = format!("</{tag}>");
    let mut rest = body;
    std::iter::from_fn(move || {
        let v = xml_value(rest, tag)?;
        let end = rest.find(&close).map_or(rest.len(), |i| i + close.len());
        rest = &rest[end..];
        Some(v)
    })
}

fn etag_of(r: &ureq::Response) -> String {
    r.header("etag")
        .unwrap_or_default()
        .trim_matches('"')
        .to_owned()
}

impl S3Target {
    pub fn new(
        endpoint: &str,
        bucket_and_prefix: &str,
        region: &str,
        credentials_ref: &str,
        part_size: Option<usize>,
        ca_file: Option<&Path>,
    ) -> Result<S3Target, StorageError> {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(StorageError::Config(format!(
                "remote_endpoint \"{endpoint}\" must be an http:// or https:// URL"
            )));
        }
        let trimmed = bucket_and_prefix.trim_matches('/');
        let (bucket, prefix) = trimmed.split_once('/').unwrap_or((trimmed, ""));
        if bucket.is_empty() {
            return Err(StorageError::Config(
                "remote_path must start with the bucket name".into(),
            ));
        }
        let (access_key, secret) = resolve_credentials(credentials_ref)?;
        let mut builder = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(30))
            .timeout_read(Duration::from_secs(300))
            .timeout_write(Duration::from_secs(300))
            // ureq keeps one idle connection per host by default: with several transfers in
            // flight (a restore's jobs, parallel uploads) every other request paid for a new
            // connection.  Keep one per thread that may use this target.
            .max_idle_connections_per_host(IDLE_CONNECTIONS);
        if let Some(ca) = ca_file {
            builder = builder.tls_config(std::sync::Arc::new(credentials::tls_with_ca(ca)?));
        }
        let agent = builder.build();
        Ok(S3Target {
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            region: region.to_owned(),
            access_key,
            secret,
            part_size: part_size.unwrap_or(DEFAULT_PART_SIZE).max(5 << 20),
            create_bucket: false,
            rate: None,
            agent,
        })
    }

    fn object_path(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            format!("/{}/{key}", self.bucket)
        } else {
            format!("/{}/{}/{key}", self.bucket, self.prefix)
        }
    }

    /// One signed request; an HTTP error becomes an error with the server's S3 error code.
    fn call(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        extra: &[(&str, &str)],
        body: &[u8],
    ) -> Result<ureq::Response, StorageError> {
        let payload = hex(&Sha256::digest(body));
        let signed = sign(
            method,
            &self.endpoint,
            path,
            query,
            extra,
            &payload,
            &self.region,
            &self.access_key,
            &self.secret,
            chrono::Utc::now(),
        );
        let mut req = self.agent.request(method, &signed.url);
        for (k, v) in &signed.headers {
            req = req.set(k, v);
        }
        let result = if body.is_empty() && method != "PUT" && method != "POST" {
            req.call()
        } else {
            req.send_bytes(body)
        };
        match result {
            Ok(r) => Ok(r),
            Err(ureq::Error::Status(code, r)) => {
                let text = r.into_string().unwrap_or_default();
                let what = xml_value(&text, "Code").unwrap_or("no S3 error code");
                let message = xml_value(&text, "Message").unwrap_or("");
                Err(StorageError::Http(format!(
                    "{method} {path}: HTTP {code} {what} {message}"
                )))
            }
            Err(e) => Err(StorageError::Http(format!("{method} {path}: {e}"))),
        }
    }

    /// Creates the bucket if it does not exist (tests and first use).
    pub fn ensure_bucket(&self) -> Result<(), StorageError> {
        let path = format!("/{}", self.bucket);
        if self.call("HEAD", &path, &[], &[], b"").is_ok() {
            return Ok(());
        }
        self.call("PUT", &path, &[], &[], b"").map(|_| ())
    }

    /// Uploads `local` as `key`, streamed part by part; returns the size and sha256, and the
    /// ETags the object may have (see `verify`).
    pub fn put(&self, local: &Path, key: &str) -> Result<(Copied, String), StorageError> {
        self.put_from(open_local(local)?, local, key)
    }

    /// `put` of an opened file (`local` names it in errors).
    fn put_from(
        &self,
        file: std::fs::File,
        local: &Path,
        key: &str,
    ) -> Result<(Copied, String), StorageError> {
        let size = file
            .metadata()
            .map_err(|e| StorageError::Http(format!("stat {}: {e}", local.display())))?
            .len();
        let mut file = stream::Limited::new(file, self.rate.clone());
        let path = self.object_path(key);
        let mut whole = Sha256::new();
        // Larger parts for very large backups: S3 takes at most 10,000.
        let part_size = self.part_size.max(size.div_ceil(MAX_PARTS) as usize);
        if size as usize <= part_size {
            let mut buf = vec![0u8; size.max(1) as usize];
            let n = stream::read_full(&mut file, &mut buf)
                .map_err(|e| StorageError::Http(format!("read {}: {e}", local.display())))?;
            whole.update(&buf[..n]);
            let sha = hex(&whole.finalize());
            let md5 = hex(&Md5::digest(&buf[..n]));
            let r = self.call("PUT", &path, &[], &[("x-amz-meta-sha256", &sha)], &buf[..n])?;
            let etag = etag_of(&r);
            if etag != md5 {
                return Err(StorageError::Http(format!(
                    "PUT {path}: the server stored something else (ETag {etag}, MD5 sent {md5})"
                )));
            }
            return Ok((
                Copied {
                    size: n as u64,
                    sha256: sha,
                },
                md5,
            ));
        }
        // Multipart: the whole object's sha256 is only known at the end, so it goes into the
        // catalog; the object carries the parts' checksums.
        let r = self.call("POST", &path, &[("uploads", "")], &[], b"")?;
        let text = r
            .into_string()
            .map_err(|e| StorageError::Http(format!("POST {path}?uploads: {e}")))?;
        let upload_id = xml_value(&text, "UploadId")
            .ok_or_else(|| StorageError::Http(format!("POST {path}?uploads: no UploadId")))?
            .to_owned();
        let result = (|| {
            // AWS and MinIO give a multipart object the ETag `md5(part md5s)-N`; other servers
            // (s3rver) the whole object's MD5.  Both are computed, either is accepted.
            let mut whole_md5 = Md5::new();
            let mut md5s: Vec<u8> = Vec::new();
            let mut total = 0u64;
            let parts = self.upload_parts(&path, &upload_id, part_size, |buf| {
                let n = stream::read_full(&mut file, buf)
                    .map_err(|e| StorageError::Http(format!("read {}: {e}", local.display())))?;
                whole.update(&buf[..n]);
                whole_md5.update(&buf[..n]);
                let md5 = Md5::digest(&buf[..n]);
                // The read that finds the end (n = 0) is not a part: its MD5 must not count
                // toward `md5(part md5s)` (it did, so every multipart ETag of AWS-style servers
                // was taken for a different object; caught by the s3s-fs test).
                if n > 0 {
                    md5s.extend_from_slice(&md5);
                }
                total += n as u64;
                Ok((n, hex(&md5)))
            })?;
            let mut xml = String::from("<CompleteMultipartUpload>");
            for (i, etag) in parts.iter().enumerate() {
                xml.push_str(&format!(
                    "<Part><PartNumber>{}</PartNumber><ETag>\"{etag}\"</ETag></Part>",
                    i + 1
                ));
            }
            xml.push_str("</CompleteMultipartUpload>");
            let r = self.call(
                "POST",
                &path,
                &[("uploadId", &upload_id)],
                &[],
                xml.as_bytes(),
            )?;
            let text = r.into_string().unwrap_or_default();
            if text.contains("<Error>") {
                return Err(StorageError::Http(format!(
                    "completing {path}: {}",
                    xml_value(&text, "Code").unwrap_or("error")
                )));
            }
            let etag = format!(
                "{}-{}|{}",
                hex(&Md5::digest(&md5s)),
                parts.len(),
                hex(&whole_md5.finalize())
            );
            Ok((
                Copied {
                    size: total,
                    sha256: hex(&whole.clone().finalize()),
                },
                etag,
            ))
        })();
        if result.is_err() {
            // Leave no half upload behind (it would be billed and never completed).
            let _ = self.call("DELETE", &path, &[("uploadId", &upload_id)], &[], b"");
        }
        result
    }

    /// Uploads the parts `next` fills in (returning how many bytes, 0 at the end, and the part's
    /// MD5), `UPLOADS_IN_FLIGHT` at a time, each on its own thread while this one reads and
    /// hashes the next.  Returns the parts' ETags in order, each checked against its MD5.
    fn upload_parts(
        &self,
        path: &str,
        upload_id: &str,
        part_size: usize,
        mut next: impl FnMut(&mut [u8]) -> Result<(usize, String), StorageError>,
    ) -> Result<Vec<String>, StorageError> {
        use std::sync::mpsc;
        use std::sync::{Arc, Mutex};
        type Job = (usize, Vec<u8>, usize, String);
        let (to_uploaders, jobs) = mpsc::sync_channel::<Job>(0);
        let jobs = Arc::new(Mutex::new(jobs));
        let (done_tx, done) = mpsc::channel::<(usize, Vec<u8>, Result<String, StorageError>)>();
        std::thread::scope(|scope| {
            for _ in 0..UPLOADS_IN_FLIGHT {
                let jobs = Arc::clone(&jobs);
                let done_tx = done_tx.clone();
                scope.spawn(move || loop {
                    let job = jobs.lock().map(|j| j.recv());
                    let Ok(Ok((number, buf, n, md5))) = job else {
                        return;
                    };
                    let num = number.to_string();
                    let r = self
                        .call(
                            "PUT",
                            path,
                            &[("partNumber", &num), ("uploadId", upload_id)],
                            &[],
                            &buf[..n],
                        )
                        .and_then(|r| {
                            let etag = etag_of(&r);
                            if etag == md5 {
                                Ok(etag)
                            } else {
                                Err(StorageError::Http(format!(
                                    "part {number} of {path}: the server stored something else (ETag {etag}, MD5 sent {md5})"
                                )))
                            }
                        });
                    if done_tx.send((number, buf, r)).is_err() {
                        return;
                    }
                });
            }
            drop(done_tx);
            let mut etags: Vec<Option<String>> = Vec::new();
            let mut spare: Vec<Vec<u8>> = Vec::new();
            let mut allocated = 0;
            let mut in_flight = 0;
            let mut failure: Option<StorageError> = None;
            let collect = |r: (usize, Vec<u8>, Result<String, StorageError>),
                           etags: &mut Vec<Option<String>>,
                           spare: &mut Vec<Vec<u8>>,
                           failure: &mut Option<StorageError>| {
                let (number, buf, result) = r;
                spare.push(buf);
                match result {
                    Ok(etag) => etags[number - 1] = Some(etag),
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
            };
            loop {
                if failure.is_some() {
                    break;
                }
                let mut buf = match spare.pop() {
                    Some(b) => b,
                    None if allocated <= UPLOADS_IN_FLIGHT => {
                        allocated += 1;
                        vec![0u8; part_size]
                    }
                    None => match done.recv() {
                        Ok(r) => {
                            in_flight -= 1;
                            collect(r, &mut etags, &mut spare, &mut failure);
                            continue;
                        }
                        Err(_) => break,
                    },
                };
                let (n, md5) = match next(&mut buf) {
                    Ok(x) => x,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                };
                if n == 0 {
                    break;
                }
                etags.push(None);
                let number = etags.len();
                if to_uploaders.send((number, buf, n, md5)).is_err() {
                    failure = Some(StorageError::Http(format!(
                        "{path}: the upload threads stopped"
                    )));
                    break;
                }
                in_flight += 1;
            }
            drop(to_uploaders);
            while in_flight > 0 {
                let Ok(r) = done.recv() else { break };
                in_flight -= 1;
                collect(r, &mut etags, &mut spare, &mut failure);
            }
            if let Some(e) = failure {
                return Err(e);
            }
            etags
                .into_iter()
                .enumerate()
                .map(|(i, e)| {
                    e.ok_or_else(|| {
                        StorageError::Http(format!("{path}: part {} was not uploaded", i + 1))
                    })
                })
                .collect()
        })
    }

    /// Checks the landed object: its size and the ETag the server computed from what it stored
    /// (`etag` may list the accepted forms, separated by `|`).
    pub fn verify(&self, key: &str, size: u64, etag: &str) -> Result<(), StorageError> {
        let path = self.object_path(key);
        let r = self.call("HEAD", &path, &[], &[], b"")?;
        let length: u64 = r
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX);
        let found = etag_of(&r);
        if length != size || !etag.split('|').any(|e| e == found) {
            return Err(StorageError::Http(format!(
                "HEAD {path}: the object differs (size {length}, ETag {found}; expected {size}, {etag})"
            )));
        }
        Ok(())
    }

    /// Every page of a listing of the keys under `prefix` (with `delimiter`: one level only),
    /// each response's text handed to `page` with the full prefix listed.
    fn list_pages(
        &self,
        prefix: &str,
        delimiter: bool,
        mut page: impl FnMut(&str, &str),
    ) -> Result<(), StorageError> {
        let base = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let full = format!("{base}{prefix}");
        let path = format!("/{}", self.bucket);
        let mut token: Option<String> = None;
        loop {
            let mut query: Vec<(&str, &str)> = vec![("list-type", "2"), ("prefix", &full)];
            if delimiter {
                query.push(("delimiter", "/"));
            }
            if let Some(t) = &token {
                query.push(("continuation-token", t));
            }
            let r = self.call("GET", &path, &query, &[], b"")?;
            let text = r
                .into_string()
                .map_err(|e| StorageError::Http(format!("GET {path}?list-type=2: {e}")))?;
            page(&text, &full);
            token = match xml_value(&text, "IsTruncated") {
                Some("true") => xml_value(&text, "NextContinuationToken").map(str::to_owned),
                _ => None,
            };
            if token.is_none() {
                return Ok(());
            }
        }
    }

    /// The keys (relative to the target's prefix) that start with `prefix`.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let base = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut keys = Vec::new();
        self.list_pages(prefix, false, |text, _| {
            for k in xml_values(text, "Key") {
                if let Some(relative) = k.strip_prefix(base.as_str()) {
                    keys.push(relative.to_owned());
                }
            }
        })?;
        Ok(keys)
    }

    /// The names one level below `prefix`: a listing with a delimiter, so a bucket holding
    /// millions of WAL files answers in one page.
    pub fn children(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut names = Vec::new();
        self.list_pages(prefix, true, |text, full| {
            for v in xml_values(text, "Key").chain(xml_values(text, "Prefix")) {
                if let Some(name) = v.strip_prefix(full).map(|n| n.trim_end_matches('/')) {
                    if !name.is_empty() && !name.contains('/') {
                        names.push(name.to_owned());
                    }
                }
            }
        })?;
        names.sort();
        names.dedup();
        Ok(names)
    }

    /// Removes an object (retention); one already gone is fine.
    pub fn delete_object(&self, key: &str) -> Result<(), StorageError> {
        let path = self.object_path(key);
        match self.call("DELETE", &path, &[], &[], b"") {
            Ok(_) => Ok(()),
            Err(StorageError::Http(m)) if m.contains("HTTP 404") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Storage for S3Target {
    fn put_opened(
        &self,
        file: std::fs::File,
        shown: &Path,
        key: &str,
    ) -> Result<Copied, StorageError> {
        let (copied, etag) = self.put_from(file, shown, key)?;
        self.verify(key, copied.size, &etag)?;
        Ok(copied)
    }

    /// One PUT (an object is replaced atomically by S3's semantics), its MD5 compared with the
    /// ETag the server returns and then with what a HEAD finds.
    fn replace(&self, bytes: &[u8], key: &str) -> Result<(), StorageError> {
        let path = self.object_path(key);
        let sha = hex(&Sha256::digest(bytes));
        let md5 = hex(&Md5::digest(bytes));
        let r = self.call("PUT", &path, &[], &[("x-amz-meta-sha256", &sha)], bytes)?;
        let etag = etag_of(&r);
        if etag != md5 {
            return Err(StorageError::Http(format!(
                "PUT {path}: the server stored something else (ETag {etag}, MD5 sent {md5})"
            )));
        }
        self.verify(key, bytes.len() as u64, &md5)
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        S3Target::list(self, prefix)
    }

    fn children(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        S3Target::children(self, prefix)
    }

    fn delete(&self, key: &str) -> Result<(), StorageError> {
        for object in S3Target::list(self, &format!("{key}/"))? {
            self.delete_object(&object)?;
        }
        self.delete_object(key)
    }

    /// One GET, streamed; the caller hashes what it reads.
    fn get(&self, key: &str) -> Result<Box<dyn std::io::Read + Send>, StorageError> {
        let key = super::plain_key(key)?;
        let path = self.object_path(key);
        let r = self.call("GET", &path, &[], &[], b"")?;
        Ok(Box::new(stream::Limited::new(
            r.into_reader(),
            self.rate.clone(),
        )))
    }

    fn prepare(&self) -> Result<(), StorageError> {
        if self.create_bucket {
            self.ensure_bucket()
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn keys_are_encoded_and_xml_read() {
        assert_eq!(super::sigv4::uri_encode("a b/c+d", true), "a%20b/c%2Bd");
        assert_eq!(super::sigv4::uri_encode("a/b", false), "a%2Fb");
        assert_eq!(
            xml_value("<x><UploadId>abc</UploadId></x>", "UploadId"),
            Some("abc")
        );
    }
}
