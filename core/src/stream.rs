//! Composable stages for bytes on their way somewhere, like pgBackRest's IO filters: each stage
//! is a `Write` that does one thing to what passes through it and hands it on.
//!
//! - `Hash`: sha256 of the bytes;
//! - `Count`: how many, also added to a shared progress counter;
//! - `Observe`: shows each piece to a closure (row counting, page checks);
//! - `compress` / `decompress`: zstd;
//! - `ThreadedHash`: sha256 on a helper thread while the caller goes on writing.
//!
//! `pump` is the one read loop: it moves a reader's bytes into a chain of stages, polling a
//! cancel flag between pieces.  Every stage hands each piece on whole (`write_all`) before it
//! looks at it, so each stage sees exactly the pieces `pump` read (whole pages, for page checks),
//! whatever the stages inside it do.  Where a stage sits decides what it sees: a `Hash` outside a
//! compressor hashes the plain bytes, one inside it the compressed bytes that reach the disk.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use crate::checksum::hex;
use crate::threads::with_signals_blocked;

/// sha256 of what is written through it.
pub struct Hash<W> {
    inner: W,
    hasher: Sha256,
}

impl<W> Hash<W> {
    pub fn new(inner: W) -> Hash<W> {
        Hash {
            inner,
            hasher: Sha256::new(),
        }
    }
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
    /// The inner stage and the hex digest of everything that passed.
    pub fn finish(self) -> (W, String) {
        (self.inner, hex(&self.hasher.finalize()))
    }
}

impl<W: Write> Write for Hash<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write_all(buf)?;
        self.hasher.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Read through it, it hashes what is read (a stream from a target, checked as it is consumed).
impl<R: io::Read> io::Read for Hash<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Counts what is written through it, and adds it to `progress` as it goes.
pub struct Count<'a, W> {
    inner: W,
    bytes: u64,
    progress: Option<&'a AtomicU64>,
}

impl<'a, W> Count<'a, W> {
    pub fn new(inner: W, progress: Option<&'a AtomicU64>) -> Count<'a, W> {
        Count {
            inner,
            bytes: 0,
            progress,
        }
    }
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
    pub fn finish(self) -> (W, u64) {
        (self.inner, self.bytes)
    }
}

impl<W: Write> Write for Count<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write_all(buf)?;
        self.bytes += buf.len() as u64;
        if let Some(p) = self.progress {
            p.fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `Count` for a reader: adds what is read through it to `progress` (a download, for a
/// progress bar).  A type of its own: `Count`'s `bytes()` would clash with `Read::bytes`.
pub struct CountRead<'a, R> {
    inner: R,
    progress: &'a AtomicU64,
}

impl<'a, R> CountRead<'a, R> {
    pub fn new(inner: R, progress: &'a AtomicU64) -> CountRead<'a, R> {
        CountRead { inner, progress }
    }
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: io::Read> io::Read for CountRead<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Shows every piece written through it to `f` (after the inner stage took all of it).
pub struct Observe<W, F> {
    inner: W,
    f: F,
}

impl<W, F: FnMut(&[u8])> Observe<W, F> {
    pub fn new(inner: W, f: F) -> Observe<W, F> {
        Observe { inner, f }
    }
    pub fn finish(self) -> (W, F) {
        (self.inner, self.f)
    }
}

impl<W: Write, F: FnMut(&[u8])> Write for Observe<W, F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write_all(buf)?;
        (self.f)(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Passes at most `limit` bytes on to `inner`; a write past it fails (`InvalidData`) and
/// passes nothing.  For bytes judged only once they are all read (stored bytes others may have
/// replaced, checked against a sha256 at the end) whose size has a bound: a few kB of zstd can
/// claim a terabyte, and it would be written before the check refuses it.
pub struct AtMost<W> {
    inner: W,
    left: u64,
    limit: u64,
}

impl<W> AtMost<W> {
    pub fn new(inner: W, limit: u64) -> AtMost<W> {
        AtMost {
            inner,
            left: limit,
            limit,
        }
    }
}

impl<W: Write> Write for AtMost<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than {} bytes", self.limit),
            ));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A zstd compressor in front of `inner`; `finish()` returns `inner` with the frame complete.
pub fn compress<W: Write>(inner: W, level: i32) -> io::Result<zstd::Encoder<'static, W>> {
    zstd::Encoder::new(inner, level)
}

/// A zstd decompressor reading from `inner`.
pub fn decompress<R: Read>(inner: R) -> io::Result<zstd::Decoder<'static, io::BufReader<R>>> {
    zstd::Decoder::new(inner)
}

/// A zstd decompressor in front of `inner` (a write-side stage: what is written to it is
/// decompressed into `inner`); `flush()` it at the end, then take `inner` back with
/// `into_inner()`.
pub fn decompress_into<W: Write>(inner: W) -> io::Result<zstd::stream::write::Decoder<'static, W>> {
    zstd::stream::write::Decoder::new(inner)
}

/// Why `pump` stopped early.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    #[error("read failed after {after} bytes: {source}")]
    Read { after: u64, source: io::Error },
    #[error("write failed after {after} bytes: {source}")]
    Write { after: u64, source: io::Error },
    #[error("cancelled")]
    Cancelled,
}

/// A byte rate that every reader drawing from it shares (one per off-site target, so that its
/// uploads in flight together stay under it).  Paced, not bursty: each grant moves a virtual
/// clock forward by `bytes / rate`, and a reader sleeps until the clock's previous position.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_second: f64,
    next_free: std::sync::Mutex<Option<std::time::Instant>>,
}

impl RateLimit {
    /// A limit of `bytes_per_second` (at least 1).
    pub fn new(bytes_per_second: f64) -> RateLimit {
        RateLimit {
            bytes_per_second: bytes_per_second.max(1.0),
            next_free: std::sync::Mutex::new(None),
        }
    }

    pub fn bytes_per_second(&self) -> f64 {
        self.bytes_per_second
    }

    /// Blocks until `n` more bytes fit under the rate.
    pub fn take(&self, n: usize) {
        let now = std::time::Instant::now();
        let start = {
            let mut next = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
            let start = next.map_or(now, |t| t.max(now));
            *next =
                Some(start + std::time::Duration::from_secs_f64(n as f64 / self.bytes_per_second));
            start
        };
        if start > now {
            std::thread::sleep(start - now);
        }
    }
}

/// A reading stage that holds what passes through it to a shared `RateLimit` (none: no limit).
pub struct Limited<R> {
    inner: R,
    limit: Option<std::sync::Arc<RateLimit>>,
}

impl<R: Read> Limited<R> {
    pub fn new(inner: R, limit: Option<std::sync::Arc<RateLimit>>) -> Limited<R> {
        Limited { inner, limit }
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(limit) = &self.limit {
            limit.take(n);
        }
        Ok(n)
    }
}

/// Reads until `buf` is full or the input ends (retrying interrupted reads).
pub fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Moves everything `input` gives into `output`, a buffer at a time; returns the byte count.
/// The input ends at its first short read: end of file, or for a file that is still growing,
/// its size when it was reached (what a backup copies of a file being written).  `cancel` is
/// polled between pieces.
pub fn pump(
    input: &mut impl Read,
    output: &mut impl Write,
    buf: &mut [u8],
    cancel: Option<&AtomicBool>,
) -> Result<u64, PumpError> {
    let mut total = 0u64;
    loop {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(PumpError::Cancelled);
        }
        let n = read_full(input, buf).map_err(|source| PumpError::Read {
            after: total,
            source,
        })?;
        if n > 0 {
            output
                .write_all(&buf[..n])
                .map_err(|source| PumpError::Write {
                    after: total,
                    source,
                })?;
            total += n as u64;
        }
        if n < buf.len() {
            return Ok(total);
        }
    }
}

/// A sink that lends its own buffer to be filled in place (a restored file's aligned block), so
/// that `pump_in_place` copies the bytes nowhere: reads go into `spare`, `advance` says how many.
pub trait FillInPlace {
    /// The free part of the sink's buffer (not empty while every `advance` succeeded).
    fn spare(&mut self) -> &mut [u8];
    /// `n` more bytes of `spare` were filled.
    fn advance(&mut self, n: usize) -> io::Result<()>;
}

/// `pump` into a sink's own buffer: the same end at the first short read, the same errors and
/// cancel; the bytes moved are added to `progress`.
pub fn pump_in_place(
    input: &mut impl Read,
    output: &mut dyn FillInPlace,
    cancel: Option<&AtomicBool>,
    progress: Option<&AtomicU64>,
) -> Result<u64, PumpError> {
    let mut total = 0u64;
    loop {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(PumpError::Cancelled);
        }
        let spare = output.spare();
        let room = spare.len();
        let n = read_full(input, spare).map_err(|source| PumpError::Read {
            after: total,
            source,
        })?;
        if n > 0 {
            output.advance(n).map_err(|source| PumpError::Write {
                after: total,
                source,
            })?;
            total += n as u64;
            if let Some(p) = progress {
                p.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        if n < room {
            return Ok(total);
        }
    }
}

/// sha256 and length of everything `input` gives, read into `buf`.
pub fn hash_all(
    input: &mut impl Read,
    buf: &mut [u8],
    cancel: Option<&AtomicBool>,
    progress: Option<&AtomicU64>,
) -> Result<(u64, String), PumpError> {
    let mut sink = Hash::new(Count::new(io::sink(), progress));
    let n = pump(input, &mut sink, buf, cancel)?;
    Ok((n, sink.finish().1))
}

/// Pieces in flight to the hashing thread (one being hashed, the others queued).
const THREADED_IN_FLIGHT: usize = 3;

/// sha256 on a helper thread: `write` hands the inner stage the bytes, then a copy of them to
/// the thread, so that hashing (a third of an archiver's work on a 16 MB segment) overlaps the
/// next read and write.  The thread starts with every signal blocked, so PostgreSQL's handlers
/// stay on the calling thread.  Where no thread can be started it hashes inline.
pub struct ThreadedHash<W> {
    inner: W,
    to_thread: Option<mpsc::SyncSender<Vec<u8>>>,
    returned: Option<mpsc::Receiver<Vec<u8>>>,
    thread: Option<JoinHandle<String>>,
    inline: Option<Sha256>,
    spare: Vec<Vec<u8>>,
}

impl<W: Write> ThreadedHash<W> {
    pub fn new(inner: W) -> ThreadedHash<W> {
        let (to_thread, pieces) = mpsc::sync_channel::<Vec<u8>>(THREADED_IN_FLIGHT);
        let (back, returned) = mpsc::channel::<Vec<u8>>();
        let spawned = with_signals_blocked(|| {
            std::thread::Builder::new()
                .name("backup_mgmt hash".into())
                .spawn(move || {
                    let mut h = Sha256::new();
                    for piece in pieces {
                        h.update(&piece);
                        let _ = back.send(piece);
                    }
                    hex(&h.finalize())
                })
        });
        match spawned {
            Ok(thread) => ThreadedHash {
                inner,
                to_thread: Some(to_thread),
                returned: Some(returned),
                thread: Some(thread),
                inline: None,
                spare: Vec::new(),
            },
            Err(_) => ThreadedHash::inline(inner),
        }
    }

    /// The same stage hashing on the calling thread.
    pub fn inline(inner: W) -> ThreadedHash<W> {
        ThreadedHash {
            inner,
            to_thread: None,
            returned: None,
            thread: None,
            inline: Some(Sha256::new()),
            spare: Vec::new(),
        }
    }

    /// The inner stage and the digest; waits for the thread to finish hashing.
    pub fn finish(mut self) -> io::Result<(W, String)> {
        let digest = match self.inline.take() {
            Some(h) => hex(&h.finalize()),
            None => {
                drop(self.to_thread.take());
                self.thread
                    .take()
                    .map(|t| t.join())
                    .and_then(Result::ok)
                    .ok_or_else(|| io::Error::other("the hashing thread failed"))?
            }
        };
        Ok((self.inner, digest))
    }
}

impl<W: Write> Write for ThreadedHash<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write_all(buf)?;
        let n = buf.len();
        if let Some(h) = self.inline.as_mut() {
            h.update(buf);
            return Ok(n);
        }
        if let Some(r) = &self.returned {
            self.spare.extend(r.try_iter());
        }
        let mut piece = self.spare.pop().unwrap_or_default();
        piece.clear();
        piece.extend_from_slice(&buf[..n]);
        let sent = self.to_thread.as_ref().map(|t| t.send(piece));
        if !matches!(sent, Some(Ok(()))) {
            return Err(io::Error::other("the hashing thread stopped"));
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_rate_limit_paces_every_reader_that_shares_it() {
        // Two readers of 1 MB each through one 4 MB/s limit: together at least ~0.5 s (a floor,
        // which only a limiter that lets bytes through too early can miss).
        let limit = std::sync::Arc::new(super::RateLimit::new(4.0 * 1048576.0));
        let started = std::time::Instant::now();
        std::thread::scope(|s| {
            for _ in 0..2 {
                let limit = std::sync::Arc::clone(&limit);
                s.spawn(move || {
                    let data = vec![7u8; 1 << 20];
                    let mut r = super::Limited::new(&data[..], Some(limit));
                    let mut out = Vec::new();
                    std::io::copy(&mut r, &mut out).unwrap();
                    assert_eq!(out, data);
                });
            }
        });
        assert!(
            started.elapsed() >= std::time::Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        // No limit: the stage passes bytes through unchanged.
        let mut r = super::Limited::new(&b"abc"[..], None);
        let mut out = Vec::new();
        std::io::copy(&mut r, &mut out).unwrap();
        assert_eq!(out, b"abc");
    }

    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn stages_compose_in_the_order_written() {
        let input = data(3 * 65536 + 17);
        let progress = AtomicU64::new(0);
        let mut seen = 0usize;
        // Hash the plain bytes, compress, then hash and count what reaches the sink.
        let sink = Count::new(Hash::new(Vec::new()), Some(&progress));
        let enc = compress(sink, 3).unwrap();
        let mut chain = Hash::new(Observe::new(enc, |p: &[u8]| seen += p.len()));
        let mut buf = vec![0u8; 65536];
        let n = pump(&mut &input[..], &mut chain, &mut buf, None).unwrap();
        assert_eq!(n, input.len() as u64);
        let (observe, plain_sha) = chain.finish();
        let (enc, _) = observe.finish();
        let (hashed, written) = enc.finish().unwrap().finish();
        let (bytes, stored_sha) = hashed.finish();
        assert_eq!(seen, input.len());
        assert_eq!(plain_sha, hex(&Sha256::digest(&input)));
        assert_eq!(stored_sha, hex(&Sha256::digest(&bytes)));
        assert_eq!(written, bytes.len() as u64);
        assert_eq!(progress.load(Ordering::Relaxed), written);
        let mut back = Vec::new();
        decompress(&bytes[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, input);
    }

    #[test]
    fn threaded_and_inline_hashes_agree() {
        let input = data(5 * (1 << 20) / 2);
        let expected = hex(&Sha256::digest(&input));
        for threaded in [true, false] {
            let mut stage = if threaded {
                ThreadedHash::new(Vec::new())
            } else {
                ThreadedHash::inline(Vec::new())
            };
            let mut buf = vec![0u8; 1 << 20];
            pump(&mut &input[..], &mut stage, &mut buf, None).unwrap();
            let (copy, digest) = stage.finish().unwrap();
            assert_eq!(digest, expected);
            assert_eq!(copy, input);
        }
    }

    #[test]
    fn pump_stops_when_cancelled_and_names_failures() {
        let cancel = AtomicBool::new(true);
        let mut buf = [0u8; 16];
        let e = pump(&mut &b"abc"[..], &mut io::sink(), &mut buf, Some(&cancel)).unwrap_err();
        assert!(matches!(e, PumpError::Cancelled));
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let e = pump(&mut &b"abc"[..], &mut Full, &mut buf, None).unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
        let (n, sha) = hash_all(&mut &b"abc"[..], &mut buf, None, None).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
