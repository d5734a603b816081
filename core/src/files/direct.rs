//! Writing a restored file past the page cache (`O_DIRECT`).
//!
//! A restore writes hundreds of megabytes that nothing reads before they are made durable.
//! Through the page cache each byte is copied once into the cache and then written back by the
//! kernel's flusher threads, and on this project's machines (a virtual disk, two cores) that
//! kernel work, not the disk, is the limit: `dd` of 800 MB measured 1.4–1.7 s buffered plus
//! `sync` (0.8–1.1 s of it system CPU) and 0.4–0.8 s with `oflag=direct`.  So a large restored
//! file is written in aligned blocks straight to the device; a small one, or one on a
//! filesystem that refuses direct I/O (`fcntl` says `EINVAL`: tmpfs before Linux 6.6, some
//! FUSE and network filesystems), goes through the page cache as before, with its writeback
//! started as it is written (`WriteBehind`).
//!
//! Direct I/O is not durability: the device may still hold the blocks in its volatile cache and
//! the file's size and extents are metadata.  The `syncfs` (or fsync) that ends a restore is
//! still what makes the files durable, as it is for buffered ones.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::files::durable::{create_new, WriteBehind};
use crate::files::error::IoError;

/// The alignment of buffer, offset and length that `O_DIRECT` asks for: 4096 covers devices
/// with 4 kB logical sectors as well as 512-byte ones.
const ALIGN: usize = 4096;

/// The most written in one call: large enough that the device streams, small enough per thread.
const BLOCK: usize = 1 << 20;

/// Files smaller than this are written through the page cache: a synchronous device write per
/// small file would cost more than the copy it saves.
pub const DIRECT_FROM: u64 = 256 << 10;

/// A new file being restored: past the page cache when it is large and the filesystem allows
/// it, else buffered.  `finish` must be called once everything is written.
pub enum RestoredFile {
    Direct(Direct),
    Buffered(WriteBehind),
}

impl RestoredFile {
    /// Creates `path` (new, mode 0600, never through a symlink) for about `expected` bytes.
    pub fn create(path: &Path, expected: u64) -> Result<RestoredFile, IoError> {
        let file = create_new(path)?;
        if expected < DIRECT_FROM {
            return Ok(RestoredFile::Buffered(WriteBehind::new(file)));
        }
        match Direct::new(file, expected) {
            Ok(d) => Ok(RestoredFile::Direct(d)),
            Err(file) => Ok(RestoredFile::Buffered(WriteBehind::new(file))),
        }
    }

    /// Writes what is still held and gives the file its exact length.
    pub fn finish(self) -> io::Result<()> {
        match self {
            RestoredFile::Direct(d) => d.finish(),
            RestoredFile::Buffered(w) => {
                drop(w);
                Ok(())
            }
        }
    }

    /// Whether the file is written past the page cache.
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

/// A file opened with `O_DIRECT` and an aligned block being filled.
pub struct Direct {
    file: File,
    /// Backing store; the aligned block is `store[start..start + cap]`.
    store: Vec<u8>,
    start: usize,
    cap: usize,
    filled: usize,
    written: u64,
    /// False once the kernel refused a direct write (the rest goes through the page cache).
    direct: bool,
}

/// Sets or clears `O_DIRECT` on an open descriptor.
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is open and owned by `file` for both calls; F_GETFL/F_SETFL only read and
    // change the descriptor's status flags and touch no memory of ours.
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

impl Direct {
    /// `file` (just created, empty) switched to `O_DIRECT`, or given back where that is refused.
    fn new(file: File, expected: u64) -> Result<Direct, File> {
        // One block for a large file; for a smaller one just its size, rounded up.
        let cap = usize::try_from(expected)
            .unwrap_or(BLOCK)
            .min(BLOCK)
            .next_multiple_of(ALIGN);
        let store = vec![0u8; cap + ALIGN];
        let start = store.as_ptr().align_offset(ALIGN);
        if start >= ALIGN || set_direct(&file, true).is_err() {
            return Err(file);
        }
        Ok(Direct {
            file,
            store,
            start,
            cap,
            filled: 0,
            written: 0,
            direct: true,
        })
    }

    /// Writes the block's first `len` bytes (a multiple of `ALIGN` while direct).
    fn write_block(&mut self, len: usize) -> io::Result<()> {
        let mut at = 0;
        while at < len {
            let piece = &self.store[self.start + at..self.start + len];
            match (&self.file).write(piece) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    at += n;
                    // A short direct write that ends off the alignment cannot go on directly.
                    if self.direct && at < len && at % ALIGN != 0 {
                        self.buffered()?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The filesystem took the flag but not the write: go on through the cache.
                Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                    self.buffered()?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn buffered(&mut self) -> io::Result<()> {
        set_direct(&self.file, false)?;
        self.direct = false;
        Ok(())
    }

    fn finish(mut self) -> io::Result<()> {
        if self.filled == 0 {
            return Ok(());
        }
        let tail = self.filled;
        let padded = if self.direct {
            // The last block is written whole (zeros after the data) and the file cut back to
            // its length.
            let padded = tail.next_multiple_of(ALIGN);
            self.store[self.start + tail..self.start + padded].fill(0);
            padded
        } else {
            tail
        };
        self.write_block(padded)?;
        self.written += tail as u64;
        if padded != tail {
            self.file.set_len(self.written)?;
        }
        Ok(())
    }
}

impl Write for Direct {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.cap - self.filled);
        let at = self.start + self.filled;
        self.store[at..at + n].copy_from_slice(&buf[..n]);
        self.filled += n;
        if self.filled == self.cap {
            self.write_block(self.cap)?;
            self.written += self.cap as u64;
            self.filled = 0;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    fn on_ext4(path: &Path) -> bool {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        let mut fs = std::mem::MaybeUninit::<libc::statfs>::zeroed();
        // SAFETY: a NUL-terminated path and a buffer of the size statfs writes.
        let rc = unsafe { libc::statfs(c.as_ptr(), fs.as_mut_ptr()) };
        // SAFETY: statfs filled the buffer when it returned 0 (and it was zeroed before).
        rc == 0 && unsafe { fs.assume_init() }.f_type == 0xEF53
    }

    #[test]
    fn files_of_every_awkward_length_come_out_exact() {
        let tmp = tempfile::tempdir().unwrap();
        for len in [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            DIRECT_FROM as usize - 1,
            DIRECT_FROM as usize,
            DIRECT_FROM as usize + 1,
            BLOCK,
            BLOCK + 1,
            3 * BLOCK + 8192,
            3 * BLOCK + 4095,
        ] {
            let data = pattern(len);
            let path = tmp.path().join(format!("f{len}"));
            let mut out = RestoredFile::create(&path, len as u64).unwrap();
            // Pieces that never line up with the blocks.
            for piece in data.chunks(65_531) {
                out.write_all(piece).unwrap();
            }
            out.finish().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), data, "length {len}");
        }
    }

    #[test]
    fn large_files_go_past_the_cache_where_the_filesystem_allows_it() {
        let tmp = tempfile::tempdir().unwrap();
        let big = RestoredFile::create(&tmp.path().join("big"), BLOCK as u64).unwrap();
        let small = RestoredFile::create(&tmp.path().join("small"), 8192).unwrap();
        assert!(!small.is_direct());
        // ext4 (this project's machines) takes O_DIRECT; elsewhere the file is still created
        // and written buffered, which the test above checks.
        if on_ext4(tmp.path()) {
            assert!(big.is_direct());
        }
        big.finish().unwrap();
        small.finish().unwrap();
    }

    #[test]
    fn a_file_that_exists_is_never_overwritten() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("there");
        std::fs::write(&path, b"keep").unwrap();
        assert!(RestoredFile::create(&path, 1 << 20).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"keep");
    }
}
