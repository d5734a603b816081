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

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest, Sha256};

use crate::archive::read_full;
use crate::executor::hex;
use crate::remote::{Copied, RemoteError};

type HmacSha256 = Hmac<Sha256>;

/// Part size of multipart uploads (S3 allows 5 MiB to 5 GiB; 10,000 parts at most, so larger
/// backups get larger parts).
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
/// Parts uploaded at the same time (each holds a part-sized buffer).
const UPLOADS_IN_FLIGHT: usize = 4;
/// S3's limit on parts per upload.
const MAX_PARTS: u64 = 10_000;

/// A secret access key.  No `Debug`, no `Display`: it cannot reach a log line by accident.
pub struct Secret(String);

/// `ACCESS_KEY_ID:SECRET_ACCESS_KEY`, resolved from `env:NAME` (a variable of the server's
/// environment) or `file:/path` (owned by this OS user, no group or other permissions).
/// Errors name the reference, never a value.
pub fn resolve_credentials(reference: &str) -> Result<(String, Secret), RemoteError> {
    let fail = |why: &str| RemoteError::Credential(format!("credentials {reference}: {why}"));
    let text = if let Some(name) = reference.strip_prefix("env:") {
        std::env::var(name).map_err(|_| fail("the server's environment has no such variable"))?
    } else if let Some(path) = reference.strip_prefix("file:") {
        let f = crate::verify::open_regular(Path::new(path)).map_err(|(_, why)| fail(&why))?;
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
    let (id, secret) = text
        .trim()
        .split_once(':')
        .ok_or_else(|| fail("must hold ACCESS_KEY_ID:SECRET_ACCESS_KEY"))?;
    Ok((id.to_owned(), Secret(secret.to_owned())))
}

/// TLS that trusts only the certificates in `ca_file` (PEM): for an object store behind a
/// private CA, or with a self-signed certificate.
fn tls_with_ca(ca_file: &Path) -> Result<rustls::ClientConfig, RemoteError> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let fail = |why: String| RemoteError::Config(format!("ca_file {}: {why}", ca_file.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| fail(e.to_string()))? {
        let cert = cert.map_err(|e| fail(e.to_string()))?;
        roots.add(cert).map_err(|e| fail(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail("no certificate in it".into()));
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

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
    agent: ureq::Agent,
}

/// Percent-encoding as SigV4 wants it: everything but `A-Za-z0-9-_.~` (and `/` when asked).
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        let plain = b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/');
        if plain {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length; new_from_slice cannot fail for it.
    let mut m =
        HmacSha256::new_from_slice(key).unwrap_or_else(|_| HmacSha256::new(&Default::default()));
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

/// The pieces of one signed request.
pub struct Signed {
    pub url: String,
    pub headers: Vec<(String, String)>,
}

/// Signs a request (AWS Signature Version 4, service `s3`).  `query` is unencoded pairs;
/// `extra` are additional headers to sign (lower-case names).
#[allow(clippy::too_many_arguments)]
pub fn sign(
    method: &str,
    endpoint: &str,
    path: &str,
    query: &[(&str, &str)],
    extra: &[(&str, &str)],
    payload_sha256: &str,
    region: &str,
    access_key: &str,
    secret: &Secret,
    now: chrono::DateTime<chrono::Utc>,
) -> Signed {
    let host = endpoint
        .split_once("://")
        .map(|(_, h)| h)
        .unwrap_or(endpoint)
        .trim_end_matches('/');
    let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
    let date = now.format("%Y%m%d").to_string();
    let canonical_uri = uri_encode(path, true);
    let mut q: Vec<(String, String)> = query
        .iter()
        .map(|(k, v)| (uri_encode(k, false), uri_encode(v, false)))
        .collect();
    q.sort();
    let canonical_query = q
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), host.to_owned()),
        ("x-amz-content-sha256".into(), payload_sha256.to_owned()),
        ("x-amz-date".into(), amz_date.clone()),
    ];
    headers.extend(
        extra
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_owned())),
    );
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{method}\n{canonical_uri}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_sha256}"
    );
    let scope = format!("{date}/{region}/s3/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let k_date = hmac(format!("AWS4{}", secret.0).as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, b"s3");
    let k_signing = hmac(&k_service, b"aws4_request");
    let signature = hex(&hmac(&k_signing, string_to_sign.as_bytes()));
    headers.push((
        "authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
        ),
    ));
    // The host header is the agent's to send.
    headers.retain(|(k, _)| k != "host");
    let url = if canonical_query.is_empty() {
        format!("{}{canonical_uri}", endpoint.trim_end_matches('/'))
    } else {
        format!(
            "{}{canonical_uri}?{canonical_query}",
            endpoint.trim_end_matches('/')
        )
    };
    Signed { url, headers }
}

/// The text between `<tag>` and `</tag>` in an S3 XML response.
fn xml_value<'a>(body: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = body.find(&open)? + open.len();
    let end = body[start..].find(&format!("</{tag}>"))? + start;
    Some(&body[start..end])
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
    ) -> Result<S3Target, RemoteError> {
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(RemoteError::Config(format!(
                "remote_endpoint \"{endpoint}\" must be an http:// or https:// URL"
            )));
        }
        let trimmed = bucket_and_prefix.trim_matches('/');
        let (bucket, prefix) = trimmed.split_once('/').unwrap_or((trimmed, ""));
        if bucket.is_empty() {
            return Err(RemoteError::Config(
                "remote_path must start with the bucket name".into(),
            ));
        }
        let (access_key, secret) = resolve_credentials(credentials_ref)?;
        let mut builder = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(30))
            .timeout_read(Duration::from_secs(300))
            .timeout_write(Duration::from_secs(300));
        if let Some(ca) = ca_file {
            builder = builder.tls_config(std::sync::Arc::new(tls_with_ca(ca)?));
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
    ) -> Result<ureq::Response, RemoteError> {
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
                Err(RemoteError::Http(format!(
                    "{method} {path}: HTTP {code} {what} {message}"
                )))
            }
            Err(e) => Err(RemoteError::Http(format!("{method} {path}: {e}"))),
        }
    }

    /// Creates the bucket if it does not exist (tests and first use).
    pub fn ensure_bucket(&self) -> Result<(), RemoteError> {
        let path = format!("/{}", self.bucket);
        if self.call("HEAD", &path, &[], &[], b"").is_ok() {
            return Ok(());
        }
        self.call("PUT", &path, &[], &[], b"").map(|_| ())
    }

    /// Uploads `local` as `key`, streamed part by part; returns the size and sha256, and the
    /// ETags the object may have (see `verify`).
    pub fn put(&self, local: &Path, key: &str) -> Result<(Copied, String), RemoteError> {
        let mut file = crate::remote::open_backup(local)?;
        let size = file
            .metadata()
            .map_err(|e| RemoteError::Http(format!("stat {}: {e}", local.display())))?
            .len();
        let path = self.object_path(key);
        let mut whole = Sha256::new();
        // Larger parts for very large backups: S3 takes at most 10,000.
        let part_size = self.part_size.max(size.div_ceil(MAX_PARTS) as usize);
        if size as usize <= part_size {
            let mut buf = vec![0u8; size.max(1) as usize];
            let n = read_full(&mut file, &mut buf)
                .map_err(|e| RemoteError::Http(format!("read {}: {e}", local.display())))?;
            whole.update(&buf[..n]);
            let sha = hex(&whole.finalize());
            let md5 = hex(&Md5::digest(&buf[..n]));
            let r = self.call("PUT", &path, &[], &[("x-amz-meta-sha256", &sha)], &buf[..n])?;
            let etag = etag_of(&r);
            if etag != md5 {
                return Err(RemoteError::Http(format!(
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
            .map_err(|e| RemoteError::Http(format!("POST {path}?uploads: {e}")))?;
        let upload_id = xml_value(&text, "UploadId")
            .ok_or_else(|| RemoteError::Http(format!("POST {path}?uploads: no UploadId")))?
            .to_owned();
        let result = (|| {
            // AWS and MinIO give a multipart object the ETag `md5(part md5s)-N`; other servers
            // (s3rver) the whole object's MD5.  Both are computed, either is accepted.
            let mut whole_md5 = Md5::new();
            let mut md5s: Vec<u8> = Vec::new();
            let mut total = 0u64;
            let parts = self.upload_parts(&path, &upload_id, part_size, |buf| {
                let n = read_full(&mut file, buf)
                    .map_err(|e| RemoteError::Http(format!("read {}: {e}", local.display())))?;
                whole.update(&buf[..n]);
                whole_md5.update(&buf[..n]);
                let md5 = Md5::digest(&buf[..n]);
                md5s.extend_from_slice(&md5);
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
                return Err(RemoteError::Http(format!(
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
        mut next: impl FnMut(&mut [u8]) -> Result<(usize, String), RemoteError>,
    ) -> Result<Vec<String>, RemoteError> {
        use std::sync::mpsc;
        use std::sync::{Arc, Mutex};
        type Job = (usize, Vec<u8>, usize, String);
        let (to_uploaders, jobs) = mpsc::sync_channel::<Job>(0);
        let jobs = Arc::new(Mutex::new(jobs));
        let (done_tx, done) = mpsc::channel::<(usize, Vec<u8>, Result<String, RemoteError>)>();
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
                                Err(RemoteError::Http(format!(
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
            let mut failure: Option<RemoteError> = None;
            let collect = |r: (usize, Vec<u8>, Result<String, RemoteError>),
                           etags: &mut Vec<Option<String>>,
                           spare: &mut Vec<Vec<u8>>,
                           failure: &mut Option<RemoteError>| {
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
                    failure = Some(RemoteError::Http(format!(
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
                        RemoteError::Http(format!("{path}: part {} was not uploaded", i + 1))
                    })
                })
                .collect()
        })
    }

    /// Checks the landed object: its size and the ETag the server computed from what it stored
    /// (`etag` may list the accepted forms, separated by `|`).
    pub fn verify(&self, key: &str, size: u64, etag: &str) -> Result<(), RemoteError> {
        let path = self.object_path(key);
        let r = self.call("HEAD", &path, &[], &[], b"")?;
        let length: u64 = r
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX);
        let found = etag_of(&r);
        if length != size || !etag.split('|').any(|e| e == found) {
            return Err(RemoteError::Http(format!(
                "HEAD {path}: the object differs (size {length}, ETag {found}; expected {size}, {etag})"
            )));
        }
        Ok(())
    }

    /// The keys (relative to the target's prefix) that start with `prefix`.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>, RemoteError> {
        let base = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let full = format!("{base}{prefix}");
        let path = format!("/{}", self.bucket);
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query: Vec<(&str, &str)> = vec![("list-type", "2"), ("prefix", &full)];
            if let Some(t) = &token {
                query.push(("continuation-token", t));
            }
            let r = self.call("GET", &path, &query, &[], b"")?;
            let text = r
                .into_string()
                .map_err(|e| RemoteError::Http(format!("GET {path}?list-type=2: {e}")))?;
            let mut rest = text.as_str();
            while let Some(k) = xml_value(rest, "Key") {
                if let Some(relative) = k.strip_prefix(&base) {
                    keys.push(relative.to_owned());
                }
                let end = rest.find("</Key>").map(|i| i + 6).unwrap_or(rest.len());
                rest = &rest[end..];
            }
            token = match xml_value(&text, "IsTruncated") {
                Some("true") => xml_value(&text, "NextContinuationToken").map(str::to_owned),
                _ => None,
            };
            if token.is_none() {
                return Ok(keys);
            }
        }
    }

    /// Removes an object (retention); one already gone is fine.
    pub fn delete(&self, key: &str) -> Result<(), RemoteError> {
        let path = self.object_path(key);
        match self.call("DELETE", &path, &[], &[], b"") {
            Ok(_) => Ok(()),
            Err(RemoteError::Http(m)) if m.contains("HTTP 404") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    /// The worked example of AWS's Signature Version 4 documentation for S3 ("GET Object",
    /// examplebucket, test.txt with a Range header), reproduced here.
    #[test]
    fn signature_matches_the_aws_example() {
        let secret = Secret("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into());
        let now = chrono::DateTime::parse_from_rfc3339("2013-05-24T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let empty = hex(&Sha256::digest(b""));
        let s = sign(
            "GET",
            "https://examplebucket.s3.amazonaws.com",
            "/test.txt",
            &[],
            &[("range", "bytes=0-9")],
            &empty,
            "us-east-1",
            "AKIAIOSFODNN7EXAMPLE",
            &secret,
            now,
        );
        let auth = &s
            .headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .unwrap()
            .1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert!(!auth.contains("wJalr"));
    }

    #[test]
    fn keys_are_encoded_and_xml_read() {
        assert_eq!(uri_encode("a b/c+d", true), "a%20b/c%2Bd");
        assert_eq!(uri_encode("a/b", false), "a%2Fb");
        assert_eq!(
            xml_value("<x><UploadId>abc</UploadId></x>", "UploadId"),
            Some("abc")
        );
    }

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
