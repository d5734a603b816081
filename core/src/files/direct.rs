//! Writing a restored file past the page cache (`O_DIRECT`).
//!
//! A restore writes hundreds of megabytes that nothing reads before they are made durable.
//! Through the page cache each byte is copied once into the cache and then written back by the
//! kernel's flusher threads, and on this project's machines (a virtual disk, two cores) that
//! kernel work, not the disk, is the limit: 800 MB took 1.4–1.7 s with `dd bs=1M` plus `sync`
//! (0.8–0.9 s of it system CPU) and 0.4–0.8 s with `oflag=direct`.  So a large restored file on
//! a local filesystem known to do direct I/O well (ext4, XFS, btrfs) is written in aligned
//! blocks straight to the device, and only its last partial block through the cache.  A small
//! file, a file on any other filesystem (on NFS every direct write waits for the server's
//! commit; tmpfs gains nothing), or one whose direct write the kernel refuses part-way goes
//! through the page cache, its writeback started every few megabytes (`WriteBehind`).
//!
//! A direct write returns only once the device has the block, so on one thread that wait and the
//! caller's work (decompressing, copying) add up: a 640 MB relation file was a restore's critical
//! path.  A file of `BEHIND_FROM` or more therefore has its blocks written by a helper thread
//! while the caller fills the next one.  A restore can also have such a file hash its own blocks
//! on a second helper before they are written (`RestoredFile::create_hashing`) and fill the
//! block in place (`stream::FillInPlace`): the decompressed bytes are then copied nowhere, where
//! they were copied twice (into the block, and into a piece for a hashing thread), which on two
//! cores was CPU the hashing thread, the long pole, went without.
//!
//! Which way pays off depends on the device, not only on the kernel, so a restore measures
//! both on its first large file and follows the faster (`files::pace`).
//!
//! Direct I/O is not durability: the device may still hold the blocks in its volatile cache and
//! the file's size and extents are metadata.  The `syncfs` (or fsync) that ends a restore is
//! still what makes the files durable, as it is for buffered ones.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::checksum::hex;
use crate::files::durable::{
    create_new, start_writeback, wait_writeback, WriteBehind, WRITE_BEHIND,
};
use crate::files::error::{Context, IoError};
pub use crate::files::pace::{Measured, Pace};
use crate::files::pace::{Probe, PROBE_FROM, PROBE_STEP, PROBE_STEPS};
use crate::stream::FillInPlace;
use crate::threads::with_signals_blocked;

/// The alignment of buffer, offset and length that `O_DIRECT` asks for: 4096 covers devices
/// with 4 kB logical sectors as well as 512-byte ones.
const ALIGN: usize = 4096;

/// The most written in one call: large enough that the device streams, small enough per thread.
const BLOCK: usize = 1 << 20;

/// Files smaller than this are written through the page cache: a synchronous device write per
/// small file would cost more than the copy it saves.
pub const DIRECT_FROM: u64 = 256 << 10;

/// Files at least this large have their blocks written by a helper thread (a thread per file is
/// nothing beside eight device writes).
pub const BEHIND_FROM: u64 = 8 << 20;

/// Blocks of such a file in memory at once: one being filled, the others queued or being
/// written.
const BLOCKS_IN_FLIGHT: usize = 3;
/// Extra blocks a file that hashes its own blocks may have (queued for or being hashed), so
/// that the hashing thread, a restore's long pole, always has the next block waiting.
const HASHED_IN_FLIGHT: usize = 2;

/// How a restore writes its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// Large files past the page cache where the filesystem does direct I/O well: a restore
    /// that ends with everything made durable (the restore program, host-loss drills).
    Direct,
    /// Everything through the page cache: a scratch copy that is read back at once (a restore
    /// test runs pg_verifybackup on it), or an operator's `--no-direct-io`.
    Buffered,
}

/// `statfs` magic numbers of the filesystems direct writes are used on (ext4's is shared with
/// ext2 and ext3, which do direct I/O too).
const EXT4: u32 = 0xEF53;
const XFS: u32 = 0x5846_5342;
const BTRFS: u32 = 0x9123_683E;

/// Whether `file` lies on ext4, XFS or btrfs.
fn on_direct_filesystem(file: &File) -> bool {
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: the descriptor is open and owned by `file`; `fs` is a buffer of the size fstatfs
    // writes.
    if unsafe { libc::fstatfs(file.as_raw_fd(), fs.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstatfs returned 0, so it filled the (zeroed) buffer.
    let fs = unsafe { fs.assume_init() };
    // Every magic number fits in 32 bits; f_type is a signed long on 64-bit glibc and a signed
    // int on 32-bit targets, where btrfs's would be negative: compare the low 32 bits.
    let kind = fs.f_type as u32;
    [EXT4, XFS, BTRFS].contains(&kind)
}

/// A new file being restored: past the page cache when it is large and the filesystem allows
/// it, else buffered.  `finish` must be called once everything is written.
pub enum RestoredFile {
    Direct(Box<Direct<File>>),
    Buffered(WriteBehind),
}

impl RestoredFile {
    /// Creates `path` (new, mode 0600, never through a symlink) for about `expected` bytes.
    /// With `pace`, the restore's files measure and follow which way is faster (`Pace`).
    pub fn create(
        path: &Path,
        expected: u64,
        writes: Writes,
        pace: Option<&Arc<Pace>>,
    ) -> Result<RestoredFile, IoError> {
        RestoredFile::created(path, expected, writes, pace, false)
    }

    /// `create`, and a file whose blocks a helper writes hashes them on a second helper first
    /// (`in_place`, `finish_hashed`).
    pub fn create_hashing(
        path: &Path,
        expected: u64,
        writes: Writes,
        pace: Option<&Arc<Pace>>,
    ) -> Result<RestoredFile, IoError> {
        RestoredFile::created(path, expected, writes, pace, true)
    }

    fn created(
        path: &Path,
        expected: u64,
        writes: Writes,
        pace: Option<&Arc<Pace>>,
        hash: bool,
    ) -> Result<RestoredFile, IoError> {
        let file = create_new(path)?;
        if writes == Writes::Buffered
            || pace.is_some_and(|p| p.through_cache())
            || expected < DIRECT_FROM
            || !on_direct_filesystem(&file)
        {
            return Ok(RestoredFile::Buffered(WriteBehind::new(file)));
        }
        let behind = expected >= BEHIND_FROM;
        match Direct::new(file, expected, behind, hash && behind, pace.cloned()) {
            Ok(d) => Ok(RestoredFile::Direct(Box::new(d))),
            Err(file) => Ok(RestoredFile::Buffered(WriteBehind::new(file))),
        }
    }

    /// The file, when it hashes its own blocks: fill it in place (`stream::pump_in_place`) and
    /// take the sha256 from `finish_hashed`.
    pub fn in_place(&mut self) -> Option<&mut Direct<File>> {
        match self {
            RestoredFile::Direct(d) if d.hashes() => Some(d),
            _ => None,
        }
    }

    /// Writes what is still held and returns the file's length on disk (which the caller
    /// compares with what it wrote: a block lost here would otherwise pass the hash).
    pub fn finish(self, path: &Path) -> Result<u64, IoError> {
        Ok(self.finished(path)?.0)
    }

    /// `finish`, and the sha256 of every byte written when the file hashed its own blocks.
    pub fn finish_hashed(self, path: &Path) -> Result<(u64, Option<String>), IoError> {
        let (length, _, sha256) = self.finished(path)?;
        Ok((length, sha256))
    }

    /// `finish`, whether the file went past the page cache to its last aligned block, and its
    /// sha256 when it hashed its blocks.
    fn finished(self, path: &Path) -> Result<(u64, bool, Option<String>), IoError> {
        let length = |f: &File| Ok(f.metadata().at("could not stat", path)?.len());
        match self {
            RestoredFile::Direct(d) => {
                let (file, direct, sha256) = d.finish_all().at("could not write", path)?;
                Ok((length(&file)?, direct, sha256))
            }
            // Dropping it starts the writeback of what is left.
            RestoredFile::Buffered(w) => Ok((length(w.file())?, false, None)),
        }
    }
}

impl Write for RestoredFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            RestoredFile::Direct(d) => d.write(buf),
            RestoredFile::Buffered(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        // Nothing to flush early: a partial block cannot be written directly, and `finish`
        // writes the rest.
        Ok(())
    }
}

/// What a direct file is written to: a `File`, or in tests one that checks alignment and
/// refuses on cue.  `Send`, since a large file's blocks are written on a helper thread.
pub trait Device: Send + 'static {
    fn write_at_end(&mut self, buf: &[u8]) -> io::Result<usize>;
    fn set_direct(&mut self, on: bool) -> io::Result<()>;
    fn start_writeback(&self, offset: u64, len: u64);
    /// Writes back a range written through the cache and waits until the device has it.
    fn wait_writeback(&self, offset: u64, len: u64) -> io::Result<()>;
}

impl Device for File {
    fn write_at_end(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write(buf)
    }

    fn set_direct(&mut self, on: bool) -> io::Result<()> {
        let fd = self.as_raw_fd();
        // SAFETY: `fd` is open and owned by `self` for both calls; F_GETFL/F_SETFL only read
        // and change the descriptor's status flags and touch no memory of ours.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let flags = if on {
            flags | libc::O_DIRECT
        } else {
            flags & !libc::O_DIRECT
        };
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn start_writeback(&self, offset: u64, len: u64) {
        start_writeback(self, offset, len);
    }

    fn wait_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        wait_writeback(self, offset, len)
    }
}

/// A buffer whose bytes `store[start..start + cap]` are aligned for direct I/O.
struct Block {
    store: Vec<u8>,
    start: usize,
}

impl Block {
    fn new(cap: usize) -> Option<Block> {
        let store = vec![0u8; cap + ALIGN];
        let start = store.as_ptr().align_offset(ALIGN);
        (start < ALIGN).then_some(Block { store, start })
    }

    fn bytes(&self, len: usize) -> &[u8] {
        &self.store[self.start..self.start + len]
    }

    fn bytes_mut(&mut self, from: usize, to: usize) -> &mut [u8] {
        &mut self.store[self.start + from..self.start + to]
    }
}

/// The device and where its file stands: what was written, what was handed to writeback once
/// the file goes through the cache, and whether it still goes past it.
struct Sink<D> {
    device: D,
    /// Bytes written to the device (the file's offset).
    written: u64,
    /// Up to where writeback was started, once the file goes through the cache.
    handed: u64,
    /// False once the kernel refused a direct write, or the restore's `Pace` found the page
    /// cache faster (the rest goes through the page cache).
    direct: bool,
    /// The restore's measurement, which this file follows.
    pace: Option<Arc<Pace>>,
    /// While this file measures.
    probe: Option<Probe>,
}

impl<D: Device> Sink<D> {
    /// Writes `bytes` (whose start and length are multiples of `ALIGN` while direct).
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.direct
            && self.probe.is_none()
            && self.pace.as_ref().is_some_and(|p| p.through_cache())
        {
            // Only faster that way: a descriptor that keeps its flag goes on past the cache.
            let _ = self.buffered();
        }
        let started = self.probe.as_ref().map(|_| Instant::now());
        self.write_all(bytes)?;
        if let Some(started) = started {
            self.probed(started.elapsed())?;
        }
        Ok(())
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut at = 0;
        while at < bytes.len() {
            match self.device.write_at_end(&bytes[at..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    at += n;
                    self.written += n as u64;
                    // A short direct write that ends off the alignment cannot go on directly.
                    if self.direct && at < bytes.len() && at % ALIGN != 0 {
                        self.buffered()?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The filesystem took the flag but not the write (it left the offset where it
                // was): the rest goes through the cache.
                Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                    self.buffered()?;
                }
                Err(e) => return Err(e),
            }
        }
        if !self.direct && self.written - self.handed >= WRITE_BEHIND {
            self.hand_over();
        }
        Ok(())
    }

    fn buffered(&mut self) -> io::Result<()> {
        self.device.set_direct(false)?;
        self.direct = false;
        self.handed = self.written;
        Ok(())
    }

    /// Past the cache again (a step of the measurement, or its verdict), where the file stands
    /// aligned and the kernel takes the flag; else it stays in the cache.
    fn past_cache(&mut self) {
        if self.written.is_multiple_of(ALIGN as u64) && self.device.set_direct(true).is_ok() {
            self.direct = true;
        }
    }

    /// Adds `spent` to the measurement and moves it on at the end of a step.
    fn probed(&mut self, spent: Duration) -> io::Result<()> {
        let Some(mut p) = self.probe.take() else {
            return Ok(());
        };
        let through_cache = p.step % 2 == 1;
        if !through_cache && !self.direct {
            // The kernel refused a direct write: nothing to compare; the files that follow go
            // past the cache as before the measurement existed.
            return Ok(());
        }
        p.spent += spent;
        if self.written - p.from < PROBE_STEP {
            self.probe = Some(p);
            return Ok(());
        }
        if through_cache {
            let started = Instant::now();
            self.device.wait_writeback(p.from, self.written - p.from)?;
            p.spent += started.elapsed();
            self.handed = self.written;
        }
        p.took[usize::from(through_cache)] += std::mem::take(&mut p.spent);
        p.step += 1;
        p.from = self.written;
        if p.step < PROBE_STEPS {
            if p.step % 2 == 1 {
                // A descriptor that keeps its flag ends the measurement, past the cache.
                if self.buffered().is_err() {
                    return Ok(());
                }
            } else {
                self.past_cache();
                if !self.direct {
                    return Ok(());
                }
            }
            self.probe = Some(p);
            return Ok(());
        }
        let bytes = PROBE_STEP * u64::from(PROBE_STEPS / 2);
        if !p.pace.decide(bytes, p.took[0], p.took[1]) {
            self.past_cache();
        }
        Ok(())
    }

    fn hand_over(&mut self) {
        self.device
            .start_writeback(self.handed, self.written - self.handed);
        self.handed = self.written;
    }

    /// Writes the file's last bytes: their aligned part directly, the last partial page through
    /// the page cache (no padding, no truncation).
    fn finish(mut self, last: &[u8]) -> io::Result<(D, bool)> {
        let aligned = last.len() - last.len() % ALIGN;
        let mut from = 0;
        if self.direct && aligned > 0 {
            // Even if it ends up going through the cache part-way, these bytes are written.
            self.write(&last[..aligned])?;
            from = aligned;
        }
        // Whether everything up to the last partial page went past the cache.
        let direct = self.direct;
        if last.len() > from {
            if self.direct {
                self.buffered()?;
            }
            self.write(&last[from..])?;
        }
        if !self.direct {
            self.hand_over();
        }
        Ok((self.device, direct))
    }
}

/// A helper thread writing full blocks as they come, and handing them back to be filled again;
/// with `hasher`, the blocks go through a second helper hashing them first.
struct Behind<D> {
    /// Where full blocks go: to the hashing helper when there is one, else to the writer.
    to_thread: Option<mpsc::SyncSender<(Block, usize)>>,
    returned: mpsc::Receiver<Block>,
    thread: Option<JoinHandle<io::Result<Sink<D>>>>,
    hasher: Option<JoinHandle<Sha256>>,
    /// The hashing helper's sha256 of the blocks it saw, once it finished.
    hashed: Option<Sha256>,
    /// Blocks made so far (at most `limit`).
    made: usize,
    limit: usize,
}

impl<D: Device> Behind<D> {
    /// Starts the thread(s) with every signal blocked (PostgreSQL's handlers stay on the calling
    /// thread, as in a host-loss drill); gives the sink back where no thread can start.
    fn start(sink: Sink<D>, hash: bool) -> Result<Behind<D>, Sink<D>> {
        let (to_writer, blocks) = mpsc::sync_channel::<(Block, usize)>(BLOCKS_IN_FLIGHT);
        let (back, returned) = mpsc::channel::<Block>();
        let (tx, given) = mpsc::sync_channel::<Sink<D>>(1);
        let spawned = with_signals_blocked(|| {
            std::thread::Builder::new()
                .name("backup_mgmt write".into())
                .spawn(move || {
                    let Ok(mut sink) = given.recv() else {
                        return Err(io::Error::other("no file to write"));
                    };
                    for (block, len) in blocks {
                        sink.write(block.bytes(len))?;
                        // The writer may be gone (it failed); the block is then dropped.
                        let _ = back.send(block);
                    }
                    Ok(sink)
                })
        });
        let Ok(thread) = spawned else {
            return Err(sink);
        };
        // The hashing helper sits between the caller and the writer: it sees every full block
        // in order, before the writer hands it back to be filled again.
        let (to_thread, hasher, limit) = if hash {
            let (to_hasher, for_hash) = mpsc::sync_channel::<(Block, usize)>(HASHED_IN_FLIGHT);
            let spawned = with_signals_blocked(|| {
                std::thread::Builder::new()
                    .name("backup_mgmt hash".into())
                    .spawn(move || {
                        let mut h = Sha256::new();
                        for (block, len) in for_hash {
                            h.update(block.bytes(len));
                            // The writer stopped (it failed): the caller learns why from it.
                            if to_writer.send((block, len)).is_err() {
                                break;
                            }
                        }
                        h
                    })
            });
            match spawned {
                Ok(h) => (to_hasher, Some(h), BLOCKS_IN_FLIGHT + HASHED_IN_FLIGHT),
                // The writer thread, never handed the sink (`tx` goes with this return), ends
                // at once; the caller writes inline.
                Err(_) => return Err(sink),
            }
        } else {
            (to_writer, None, BLOCKS_IN_FLIGHT)
        };
        // Handed over once the threads exist, so that a failed start gives it back.
        if let Err(mpsc::SendError(sink)) = tx.send(sink) {
            return Err(sink);
        }
        Ok(Behind {
            to_thread: Some(to_thread),
            returned,
            thread: Some(thread),
            hasher,
            hashed: None,
            made: 1,
            limit,
        })
    }

    /// A block to fill next: a new one while fewer than `limit` exist, else the next one the
    /// writer has written.
    fn next_block(&mut self, cap: usize) -> io::Result<Block> {
        if let Ok(b) = self.returned.try_recv() {
            return Ok(b);
        }
        if self.made < self.limit {
            self.made += 1;
            return Block::new(cap).ok_or_else(|| io::Error::other("no aligned buffer"));
        }
        self.returned.recv().map_err(|_| self.failed())
    }

    fn send(&mut self, block: Block, len: usize) -> io::Result<()> {
        let sent = self.to_thread.as_ref().map(|t| t.send((block, len)));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(self.failed()),
        }
    }

    /// Waits for the thread(s) to hash and write everything sent and gives the sink back.
    fn join(&mut self) -> io::Result<Sink<D>> {
        drop(self.to_thread.take());
        // The hashing helper first: it ends once it has passed everything on (or the writer
        // stopped), which closes the writer's queue.
        if let Some(h) = self.hasher.take() {
            self.hashed = Some(
                h.join()
                    .map_err(|_| io::Error::other("the hashing thread failed"))?,
            );
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(panic)) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(io::Error::other(format!(
                    "the writing thread failed: {why}"
                )))
            }
            None => Err(io::Error::other("the writing thread had already stopped")),
        }
    }

    /// The writer's error (or the hashing helper's), once they stopped.
    fn failed(&mut self) -> io::Error {
        match self.join() {
            Ok(_) => io::Error::other("the writing thread stopped"),
            Err(e) => e,
        }
    }
}

impl<D> Drop for Behind<D> {
    /// A file given up part-way: the helpers hash and write what they were sent, then end,
    /// before the caller goes on.
    fn drop(&mut self) {
        drop(self.to_thread.take());
        if let Some(h) = self.hasher.take() {
            let _ = h.join();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where full blocks go: written by the caller's thread, or by a helper.
enum Writer<D> {
    Inline(Sink<D>),
    Behind(Behind<D>),
}

/// A file opened with `O_DIRECT` and an aligned block being filled.
pub struct Direct<D: Device> {
    block: Block,
    cap: usize,
    filled: usize,
    writer: Writer<D>,
}

impl<D: Device> Direct<D> {
    /// `device` (just created, empty) switched to `O_DIRECT`, or given back where that is
    /// refused.  With `behind`, full blocks are written by a helper thread, and with `hash`
    /// hashed by another before (`hashes` says whether they are).  With `pace`, it follows
    /// (or, the first file of `PROBE_FROM` bytes or more, makes) the restore's measurement.
    pub fn new(
        mut device: D,
        expected: u64,
        behind: bool,
        hash: bool,
        pace: Option<Arc<Pace>>,
    ) -> Result<Direct<D>, D> {
        // One block for a large file; for a smaller one just its size, rounded up.
        let cap = usize::try_from(expected)
            .unwrap_or(BLOCK)
            .clamp(1, BLOCK)
            .next_multiple_of(ALIGN);
        let Some(block) = Block::new(cap) else {
            return Err(device);
        };
        if device.set_direct(true).is_err() {
            return Err(device);
        }
        // The first file large enough measures for the restore (`Pace`).
        let probe = pace
            .as_ref()
            .filter(|p| expected >= PROBE_FROM && p.claim())
            .map(|p| Probe {
                pace: Arc::clone(p),
                step: 0,
                from: 0,
                spent: Duration::ZERO,
                took: [Duration::ZERO; 2],
            });
        let sink = Sink {
            device,
            written: 0,
            handed: 0,
            direct: true,
            pace,
            probe,
        };
        let writer = match behind {
            true => Behind::start(sink, hash).map_or_else(Writer::Inline, Writer::Behind),
            false => Writer::Inline(sink),
        };
        Ok(Direct {
            block,
            cap,
            filled: 0,
            writer,
        })
    }

    /// Writes the full block and starts the next.
    fn write_block(&mut self) -> io::Result<()> {
        match &mut self.writer {
            Writer::Inline(sink) => sink.write(self.block.bytes(self.cap))?,
            Writer::Behind(behind) => {
                let next = behind.next_block(self.cap)?;
                let full = std::mem::replace(&mut self.block, next);
                behind.send(full, self.cap)?;
            }
        }
        self.filled = 0;
        Ok(())
    }

    /// Whether a helper hashes the blocks (`finish_all` then gives the sha256).
    pub fn hashes(&self) -> bool {
        matches!(&self.writer, Writer::Behind(b) if b.hasher.is_some())
    }

    /// Writes what is held (its aligned part directly, the last partial page through the page
    /// cache) and gives the device back.
    pub fn finish(self) -> io::Result<D> {
        Ok(self.finish_all()?.0)
    }

    /// `finish`, whether everything up to the last partial page went past the cache, and when
    /// the blocks were hashed the sha256 of every byte written.
    fn finish_all(self) -> io::Result<(D, bool, Option<String>)> {
        let Direct {
            block,
            filled,
            writer,
            ..
        } = self;
        let (sink, hashed) = match writer {
            Writer::Inline(sink) => (sink, None),
            Writer::Behind(mut behind) => {
                let sink = behind.join()?;
                (sink, behind.hashed.take())
            }
        };
        let last = block.bytes(filled);
        let sha256 = hashed.map(|mut h| {
            h.update(last);
            hex(&h.finalize())
        });
        let (device, direct) = sink.finish(last)?;
        Ok((device, direct, sha256))
    }
}

/// The block being filled, lent to a reader (`stream::pump_in_place`).
impl<D: Device> FillInPlace for Direct<D> {
    /// Never empty while every `advance` succeeded: a full block is handed on at once.
    fn spare(&mut self) -> &mut [u8] {
        self.block.bytes_mut(self.filled, self.cap)
    }

    fn advance(&mut self, n: usize) -> io::Result<()> {
        if n > self.cap - self.filled {
            // A reader that says it read more than it was given: its count cannot be trusted.
            return Err(io::Error::other(format!(
                "{n} bytes said to be read into {} free",
                self.cap - self.filled
            )));
        }
        self.filled += n;
        if self.filled == self.cap {
            self.write_block()?;
        }
        Ok(())
    }
}

impl<D: Device> Write for Direct<D> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.cap - self.filled);
        self.block
            .bytes_mut(self.filled, self.filled + n)
            .copy_from_slice(&buf[..n]);
        self.filled += n;
        if self.filled == self.cap {
            self.write_block()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
#[path = "direct_tests.rs"]
mod tests;
