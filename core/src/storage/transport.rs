//! The HTTP client of every object-store target (`Transport`: its settings; `Connector`: the
//! client itself, built here rather than by the library), the bound on what it reads of a
//! server's replies (`Bounded`), and on how long a request waits for its answer
//! (`answer_within`: a target's I/O timeout).

use std::path::Path;
use std::time::Duration;

use http_body_util::BodyExt;
use object_store::client::{
    HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse,
    HttpResponseBody, HttpService,
};
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

use super::{described, StorageError};

/// How long one request may take, whole (a download's stall or a listing's silent page is cut
/// off sooner, by the target's I/O timeout: see `download`, `listing`; a HEAD or an upload has
/// only this).  Generous,
/// because it bounds a whole part upload: 8 MB parts (larger for backups past 80 GB: 10,000
/// parts at most), four in flight, must each go through within it.  A GET of a large object that
/// needs longer continues with a ranged GET from where it stopped (see `download`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1800);
/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle connections kept per endpoint for reuse: more than requests usually in flight at once (a
/// restore's twice `--jobs`, parallel part uploads), so none is closed only to be opened again.
const IDLE_CONNECTIONS: usize = 64;

/// The HTTP client settings every object-store target shares: timeouts, kept connections,
/// retries (a few, with backoff: the worker tries a failed copy again at its next run), and the
/// client itself (`Connector`).
pub(crate) struct Transport {
    pub options: ClientOptions,
    pub retry: RetryConfig,
    /// Pass it to the builder's `with_http_connector`.
    pub connector: Connector,
}

pub(crate) fn transport(endpoint: &str, ca_file: Option<&Path>) -> Result<Transport, StorageError> {
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(StorageError::Config(format!(
            "remote_endpoint \"{endpoint}\" must be an http:// or https:// URL"
        )));
    }
    // The client's own settings (timeouts, kept connections, roots) are `Connector`'s: it
    // builds the client and ignores these options, which the library still consults for
    // whether plain http is allowed.
    let options = ClientOptions::new().with_allow_http(endpoint.starts_with("http://"));
    let pinned = match ca_file {
        Some(ca) => Some(super::credentials::ca_certificates(ca)?),
        None => None,
    };
    let retry = RetryConfig {
        backoff: BackoffConfig::default(),
        max_retries: 4,
        retry_timeout: Duration::from_secs(120),
    };
    Ok(Transport {
        options,
        retry,
        connector: Connector {
            pinned,
            https_only: endpoint.starts_with("https://"),
        },
    })
}

/// The HTTP client of every object-store target, built here rather than by the library so that
/// it follows **no redirects**: an endpoint a superuser allowed could otherwise send the worker
/// on to any other host (an instance-metadata address, an internal service), whose answer would
/// land in a catalog row.  With a `ca_file` it trusts only those certificates (not the system's
/// roots as well): a target behind a private CA stays pinned to it, so a certificate some other
/// trusted CA issued for the host (a TLS-inspecting proxy's, say) is refused.  Otherwise as the
/// library's own: HTTP/1.1, the same timeouts and kept connections.
#[derive(Debug)]
pub(crate) struct Connector {
    pinned: Option<Vec<reqwest::Certificate>>,
    https_only: bool,
}

impl HttpConnector for Connector {
    fn connect(&self, _: &ClientOptions) -> object_store::Result<HttpClient> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .http1_only()
            .https_only(self.https_only)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(IDLE_CONNECTIONS);
        if let Some(certificates) = &self.pinned {
            builder = builder.tls_built_in_root_certs(false);
            for c in certificates {
                builder = builder.add_root_certificate(c.clone());
            }
        }
        let client = builder.build().map_err(|e| object_store::Error::Generic {
            store: "HTTP client",
            source: Box::new(e),
        })?;
        Ok(HttpClient::new(Bounded(client)))
    }
}

/// Most of an error reply read (its status and code are at the start; the rest is never needed).
const ERROR_REPLY_LIMIT: usize = 64 << 10;
/// Most of any other reply read whole by the library (a listing page, an upload's start or end:
/// a few hundred kB at most from an honest server).  An object's content is streamed, never
/// bounded.
const REPLY_LIMIT: usize = 32 << 20;

/// The library reads an error reply, a listing or an upload's answer whole into memory before
/// it looks at it, reserving what the reply announces: a hostile or broken server could crash
/// the worker by announcing a huge one, or fill its memory with one that never ends.  Of an
/// error reply this keeps the first `ERROR_REPLY_LIMIT` bytes (so its status and code still
/// reach the error); any other reply that is not an object's content is cut off with an error
/// past `REPLY_LIMIT`.
#[derive(Debug)]
struct Bounded(reqwest::Client);

#[async_trait::async_trait]
impl HttpService for Bounded {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let query = req.uri().query().unwrap_or_default().to_owned();
        let content = req.method() == http::Method::GET
            && !query.contains("list-type=")
            && !query.contains("comp=list");
        let reply = self.0.call(req).await?;
        if !reply.status().is_success() {
            let (mut parts, mut body) = reply.into_parts();
            let mut kept: Vec<u8> = Vec::new();
            while kept.len() < ERROR_REPLY_LIMIT {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            kept.extend_from_slice(&data);
                        }
                    }
                    // What came is enough to report (the status is in `parts`).
                    Some(Err(_)) | None => break,
                }
            }
            kept.truncate(ERROR_REPLY_LIMIT);
            let text = match std::str::from_utf8(&kept) {
                Ok(_) => kept.len(),
                Err(e) => e.valid_up_to(),
            };
            kept.truncate(text);
            parts.headers.remove(http::header::CONTENT_LENGTH);
            let body =
                http_body_util::Full::new(bytes::Bytes::from(kept)).map_err(|never| match never {});
            return Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)));
        }
        if content {
            return Ok(reply);
        }
        let (parts, body) = reply.into_parts();
        let body = http_body_util::Limited::new(body, REPLY_LIMIT).map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                return HttpError::new(
                    HttpErrorKind::Decode,
                    std::io::Error::other(format!(
                        "the server's reply exceeds {REPLY_LIMIT} bytes: refused"
                    )),
                );
            }
            match e.downcast::<HttpError>() {
                Ok(inner) => *inner,
                Err(other) => HttpError::new(HttpErrorKind::Unknown, std::io::Error::other(other)),
            }
        });
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}

/// Why a request brought no reply.
pub(crate) enum Unanswered {
    /// The library's error (after its own retries of network errors and 5xx replies).
    Failed(object_store::Error),
    /// Nothing within the I/O timeout (`after`), `times` times in a row.
    Silent { after: Duration, times: u32 },
}

/// Times a request left unanswered is sent again (or a download that failed without a byte of
/// progress is asked again) before it is given up: a pooled connection a firewall dropped goes
/// silent once, a server that is gone stays so.
pub(crate) const ASKED_AGAIN: u32 = 3;

impl Unanswered {
    /// Whether asking again cannot help: the object is gone, or is another version now.
    pub(crate) fn is_final(&self) -> bool {
        matches!(
            self,
            Unanswered::Failed(
                object_store::Error::NotFound { .. } | object_store::Error::Precondition { .. }
            )
        )
    }
}

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unanswered::Failed(e) => f.write_str(&described(e)),
            Unanswered::Silent { after, times } => {
                write!(
                    f,
                    "no answer in {} s (the target's io_timeout)",
                    after.as_secs_f64()
                )?;
                if *times > 1 {
                    write!(f, ", {times} times in a row")?;
                }
                Ok(())
            }
        }
    }
}

/// `request`'s reply, or why there is none.  The request is dropped (its connection closed)
/// when the time is up.
pub(crate) async fn answer_within<T>(
    io_timeout: Duration,
    request: impl std::future::Future<Output = object_store::Result<T>>,
) -> Result<T, Unanswered> {
    match tokio::time::timeout(io_timeout, request).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(Unanswered::Failed(e)),
        Err(_) => Err(Unanswered::Silent {
            after: io_timeout,
            times: 1,
        }),
    }
}

/// The reply to a request `request` makes: one left unanswered for `io_timeout` is made again,
/// up to `ASKED_AGAIN` times; the library's own errors are final (it has retried those).  Only
/// for requests that may be repeated (a GET, a listing's page).
pub(crate) async fn answer_asking_again<
    T,
    F: std::future::Future<Output = object_store::Result<T>>,
>(
    io_timeout: Duration,
    mut request: impl FnMut() -> F,
) -> Result<T, Unanswered> {
    let mut times = 1;
    loop {
        match answer_within(io_timeout, request()).await {
            Err(Unanswered::Silent { .. }) if times <= ASKED_AGAIN => times += 1,
            Err(Unanswered::Silent { after, .. }) => {
                return Err(Unanswered::Silent { after, times })
            }
            answer => return answer,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use crate::storage::{s3, Storage};

    /// A server that answers every request with `status` and a body that never ends (up to
    /// 1 GiB, then it closes); returns its port and the bytes it managed to send.
    fn endless(status: &'static str) -> (u16, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let sent = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&sent);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n<Error><Code>",
                    1u64 << 40
                );
                if stream.write_all(head.as_bytes()).is_err() {
                    continue;
                }
                let chunk = vec![b'A'; 64 << 10];
                while counted.load(Ordering::Relaxed) < 1 << 30 {
                    if stream.write_all(&chunk).is_err() {
                        break;
                    }
                    counted.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            }
        });
        (port, sent)
    }

    #[test]
    fn an_endless_reply_is_cut_off_not_read_into_memory() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "AK:SECRET\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        // Error replies (not retried: 403, 404; what they say still counts) and a listing's
        // reply (200).
        for (status, says) in [
            ("403 Forbidden", "403"),
            ("404 Not Found", "does not exist"),
            ("200 OK", "exceeds"),
        ] {
            let (port, sent) = endless(status);
            let target = s3::open(
                &format!("http://127.0.0.1:{port}"),
                "bucket/p",
                "us-east-1",
                &format!("file:{}", key.display()),
                None,
                None,
            )
            .unwrap();
            let e = target.prepare().unwrap_err().to_string();
            let sent = sent.load(Ordering::Relaxed);
            // Without the bound the library reads the whole GiB (and would read a TiB).
            assert!(sent < 256 << 20, "{status}: {sent} bytes read; {e}");
            assert!(e.len() <= 1_000, "{status}: {e}");
            assert!(e.contains(says), "{status}: {e}");
        }
    }
}
