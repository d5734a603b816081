//! An object's download, read from a plain thread (a restore's job, a verification): a task on
//! the I/O runtime reads the response ahead into a small queue while the thread decompresses
//! and hashes what came before, so the network is never idle waiting for it.  A response that
//! fails or times out part way continues with a ranged GET from the first byte not yet
//! received, of the same object version (`If-Match` its ETag), so a large object on a slow link
//! is never read again from the start.  A response that stalls (no byte for the target's I/O
//! timeout, pgBackRest's `io-timeout`) is one that failed: a connection a middlebox dropped
//! without a reset would otherwise hold the restore for the whole-request timeout.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures::future::Either;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore};
use tokio::sync::{mpsc, Semaphore};

use super::transport::{answer_asking_again, answer_within, ASKED_AGAIN};
use super::{described, StorageError};

/// Chunks (as the HTTP client hands them over, 8 kB to a few hundred) read ahead of the reader.
const READ_AHEAD_CHUNKS: usize = 64;
/// Bytes read ahead of the reader, whatever the chunks' size: a restore keeps several downloads
/// waiting for a thread (see `restore::remote_files`), each holding at most this much.
const READ_AHEAD_BYTES: usize = 2 << 20;

/// A download in progress: `Read` takes what the task has received.
pub struct Download {
    received: mpsc::Receiver<std::io::Result<Bytes>>,
    chunk: Bytes,
    done: bool,
    /// Bytes the task may still read ahead (given back as the reader takes chunks).
    budget: Arc<Semaphore>,
}

impl Drop for Download {
    /// A task waiting for room to read ahead stops.
    fn drop(&mut self) {
        self.budget.close();
    }
}

/// A download whose GET has been sent: `wait` returns it once the server has answered.  Dropped
/// unread, it stops the request.
pub struct Pending {
    answer: tokio::sync::oneshot::Receiver<Result<Download, StorageError>>,
    shown: String,
}

impl Pending {
    /// Waits for the answer (called from a plain thread, never from the runtime's own).
    pub fn wait(self) -> Result<Download, StorageError> {
        let shown = self.shown;
        self.answer.blocking_recv().unwrap_or_else(|_| {
            Err(StorageError::Http(format!(
                "GET {shown}: the download stopped before the server answered"
            )))
        })
    }
}

/// Bytes of `chunk` counted against the read-ahead budget (a chunk larger than the whole budget
/// takes all of it).
fn weight(chunk: &Bytes) -> u32 {
    chunk.len().min(READ_AHEAD_BYTES) as u32
}

impl Download {
    /// Starts the GET and waits for its status.
    pub fn start(
        rt: &tokio::runtime::Runtime,
        store: Arc<dyn ObjectStore>,
        path: ObjectPath,
        shown: String,
        io_timeout: Duration,
    ) -> Result<Download, StorageError> {
        Download::begin(rt, store, path, shown, io_timeout).wait()
    }

    /// Sends the GET and returns at once; a task on the runtime reads the response into the
    /// queue from then on.  If the `Pending` is dropped unread, the task stops, answered or not.
    /// A server that sends nothing for `io_timeout` (no answer, or no byte of the body while
    /// the queue has room) is asked again from where the download stands, up to
    /// `ASKED_AGAIN` times in a row.
    pub fn begin(
        rt: &tokio::runtime::Runtime,
        store: Arc<dyn ObjectStore>,
        path: ObjectPath,
        shown: String,
        io_timeout: Duration,
    ) -> Pending {
        let (mut answered, answer) = tokio::sync::oneshot::channel();
        let pending = Pending {
            answer,
            shown: shown.clone(),
        };
        rt.spawn(async move {
            let asked = {
                // A pooled connection a firewall dropped leaves the GET unanswered: sent again.
                let get = std::pin::pin!(answer_asking_again(io_timeout, || store.get(&path)));
                let gone = std::pin::pin!(answered.closed());
                match futures::future::select(get, gone).await {
                    Either::Left((asked, _)) => asked,
                    // Nobody waits for the answer any more (a restore that failed part-way).
                    Either::Right(_) => return,
                }
            };
            let got = match asked {
                Ok(got) => got,
                Err(why) => {
                    let why = StorageError::Http(format!("GET {shown}: {why}"));
                    let _ = answered.send(Err(why));
                    return;
                }
            };
            let (tx, received) = mpsc::channel(READ_AHEAD_CHUNKS);
            let body = Body {
                size: got.meta.size,
                etag: got.meta.e_tag.clone(),
                stream: got.into_stream(),
                store,
                path,
                shown,
                position: 0,
                failures: 0,
                io_timeout,
            };
            let budget = Arc::new(Semaphore::new(READ_AHEAD_BYTES));
            let download = Download {
                received,
                chunk: Bytes::new(),
                done: false,
                budget: Arc::clone(&budget),
            };
            if answered.send(Ok(download)).is_ok() {
                body.pump(tx, budget).await;
            }
        });
        pending
    }
}

impl Read for Download {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            if self.done {
                return Ok(0);
            }
            // Called from a plain thread, never from the runtime's own.
            match self.received.blocking_recv() {
                Some(Ok(bytes)) => {
                    self.budget.add_permits(weight(&bytes) as usize);
                    self.chunk = bytes;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                None => self.done = true,
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}

/// The response being read, and what it takes to continue it.
struct Body {
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    store: Arc<dyn ObjectStore>,
    path: ObjectPath,
    shown: String,
    size: u64,
    etag: Option<String>,
    position: u64,
    failures: u32,
    /// How long the server may send nothing before the response counts as failed.
    io_timeout: Duration,
}

impl Body {
    /// Sends every chunk, then ends the queue; an error is sent as the last item.  Stops when
    /// the reader is gone.
    async fn pump(mut self, tx: mpsc::Sender<std::io::Result<Bytes>>, budget: Arc<Semaphore>) {
        while self.position < self.size {
            // A stalled body is cut off here; only the wait for the server counts, never the
            // wait for the reader's room below.
            let next = match tokio::time::timeout(self.io_timeout, self.stream.next()).await {
                Ok(next) => next.map(|n| n.map_err(|e| described(&e))),
                Err(_) => Some(Err(format!(
                    "no byte in {} s (the target's io_timeout) at byte {} of {}",
                    self.io_timeout.as_secs_f64(),
                    self.position,
                    self.size
                ))),
            };
            let item = match next {
                Some(Ok(bytes)) => {
                    if !bytes.is_empty() {
                        self.failures = 0;
                    }
                    // Room for it in the read-ahead, or the reader is gone.
                    match budget.acquire_many(weight(&bytes)).await {
                        Ok(room) => room.forget(),
                        Err(_) => return,
                    }
                    self.position += bytes.len() as u64;
                    Ok(bytes)
                }
                Some(Err(e)) => match self.resume(e, &tx).await {
                    Ok(()) => continue,
                    Err(e) => Err(e),
                },
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "GET {}: the response ended at byte {} of {}",
                        self.shown, self.position, self.size
                    ),
                )),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    }

    /// Continues the download at `position` after `cause`: a ranged GET of the same version,
    /// asked again (a stalled or failed one counts) until `ASKED_AGAIN` attempts
    /// in a row have brought nothing.  Stops at once when asking again cannot help (the object
    /// is gone or changed) or nobody reads any more.
    async fn resume(
        &mut self,
        cause: String,
        tx: &mpsc::Sender<std::io::Result<Bytes>>,
    ) -> std::io::Result<()> {
        let mut why = cause.clone();
        loop {
            self.failures += 1;
            if self.failures > ASKED_AGAIN || tx.is_closed() {
                return Err(std::io::Error::other(format!("GET {}: {why}", self.shown)));
            }
            let options = GetOptions {
                range: Some(GetRange::Offset(self.position)),
                if_match: self.etag.clone(),
                ..Default::default()
            };
            match answer_within(self.io_timeout, self.store.get_opts(&self.path, options)).await {
                Ok(got) => {
                    self.stream = got.into_stream();
                    return Ok(());
                }
                Err(e) => {
                    why = format!("{cause}; asked again from byte {}: {e}", self.position);
                    if e.is_final() {
                        return Err(std::io::Error::other(format!("GET {}: {why}", self.shown)));
                    }
                }
            }
        }
    }
}
