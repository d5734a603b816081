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
//! Direct I/O is not durability: the device may still hold the blocks in its volatile cache and
//! the file's size and extents are metadata.  The `syncfs` (or fsync) that ends a restore is
//! still what makes the files durable, as it is for buffered ones.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::files::durable::{create_new, start_writeback, WriteBehind, WRITE_BEHIND};
use crate::files::error::{Context, IoError};

/// The alignment of buffer, offset and length that `O_DIRECT` asks for: 4096 covers devices
/// with 4 kB logical sectors as well as 512-byte ones.
const ALIGN: usize = 4096;

/// The most written in one call: large enough that the device streams, small enough per thread.
const BLOCK: usize = 1 << 20;

/// Files smaller than this are written through the page cache: a synchronous device write per
/// small file would cost more than the copy it saves.
pub const DIRECT_FROM: u64 = 256 << 10;

/// How a restore writes its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Writes {
    /// Large files past the page cache where the filesystem does direct I/O well: a restore
    /// that ends with everything made durable (the restore program, host-loss drills).
    #[default]
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
    Direct(Direct<File>),
    Buffered(WriteBehind),
}

impl RestoredFile {
    /// Creates `path` (new, mode 0600, never through a symlink) for about `expected` bytes.
    pub fn create(path: &Path, expected: u64, writes: Writes) -> Result<RestoredFile, IoError> {
        let file = create_new(path)?;
        if writes == Writes::Buffered || expected < DIRECT_FROM || !on_direct_filesystem(&file) {
            return Ok(RestoredFile::Buffered(WriteBehind::new(file)));
        }
        match Direct::new(file, expected) {
            Ok(d) => Ok(RestoredFile::Direct(d)),
            Err(file) => Ok(RestoredFile::Buffered(WriteBehind::new(file))),
        }
    }

    /// Writes what is still held and returns the file's length on disk (which the caller
    /// compares with what it wrote: a block lost here would otherwise pass the hash).
    pub fn finish(self, path: &Path) -> Result<u64, IoError> {
        let length = |f: &File| Ok(f.metadata().at("could not stat", path)?.len());
        match self {
            RestoredFile::Direct(d) => length(&d.finish().at("could not write", path)?),
            // Dropping it starts the writeback of what is left.
            RestoredFile::Buffered(w) => length(w.file()),
        }
    }

    /// Whether the file is being written past the page cache.
    pub fn is_direct(&self) -> bool {
        matches!(self, RestoredFile::Direct(d) if d.direct)
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
/// refuses on cue.
pub trait Device {
    fn write_at_end(&mut self, buf: &[u8]) -> io::Result<usize>;
    fn set_direct(&mut self, on: bool) -> io::Result<()>;
    fn start_writeback(&self, offset: u64, len: u64);
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
}

/// A file opened with `O_DIRECT` and an aligned block being filled.
pub struct Direct<D: Device> {
    device: D,
    /// Backing store; the aligned block is `store[start..start + cap]`.
    store: Vec<u8>,
    start: usize,
    cap: usize,
    filled: usize,
    /// Bytes written to the device (the file's offset).
    written: u64,
    /// Up to where writeback was started, once the file goes through the cache.
    handed: u64,
    /// False once the kernel refused a direct write (the rest goes through the page cache).
    direct: bool,
}

impl<D: Device> Direct<D> {
    /// `device` (just created, empty) switched to `O_DIRECT`, or given back where that is
    /// refused.
    pub fn new(mut device: D, expected: u64) -> Result<Direct<D>, D> {
        // One block for a large file; for a smaller one just its size, rounded up.
        let cap = usize::try_from(expected)
            .unwrap_or(BLOCK)
            .clamp(1, BLOCK)
            .next_multiple_of(ALIGN);
        let store = vec![0u8; cap + ALIGN];
        let start = store.as_ptr().align_offset(ALIGN);
        if start >= ALIGN || device.set_direct(true).is_err() {
            return Err(device);
        }
        Ok(Direct {
            device,
            store,
            start,
            cap,
            filled: 0,
            written: 0,
            handed: 0,
            direct: true,
        })
    }

    /// Writes the block's bytes `from..to` (multiples of `ALIGN` while direct).
    fn write_block(&mut self, from: usize, to: usize) -> io::Result<()> {
        let (mut at, len) = (from, to);
        while at < len {
            let piece = &self.store[self.start + at..self.start + len];
            match self.device.write_at_end(piece) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    at += n;
                    self.written += n as u64;
                    // A short direct write that ends off the alignment cannot go on directly.
                    if self.direct && at < len && at % ALIGN != 0 {
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

    fn hand_over(&mut self) {
        self.device
            .start_writeback(self.handed, self.written - self.handed);
        self.handed = self.written;
    }

    /// Writes what is held: its aligned part directly, the last partial page through the page
    /// cache (no padding, no truncation); gives the device back.
    pub fn finish(mut self) -> io::Result<D> {
        let aligned = self.filled - self.filled % ALIGN;
        let mut from = 0;
        if self.direct && aligned > 0 {
            // Even if it ends up going through the cache part-way, these bytes are written.
            self.write_block(0, aligned)?;
            from = aligned;
        }
        if self.filled > from {
            if self.direct {
                self.buffered()?;
            }
            self.write_block(from, self.filled)?;
        }
        self.filled = 0;
        if !self.direct {
            self.hand_over();
        }
        Ok(self.device)
    }
}

impl<D: Device> Write for Direct<D> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.cap - self.filled);
        let at = self.start + self.filled;
        self.store[at..at + n].copy_from_slice(&buf[..n]);
        self.filled += n;
        if self.filled == self.cap {
            self.write_block(0, self.cap)?;
            self.filled = 0;
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
