//! Opening a file that something else may have planted: never through a final symlink, never
//! blocking on a FIFO, and nothing but a regular file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("file is missing: {0}")]
    Missing(io::Error),
    #[error("not a regular file (directory, FIFO, device or socket)")]
    NotRegular,
    #[error("cannot open: {0}")]
    Unreadable(io::Error),
}

/// Opens a regular file for reading without following a final symlink and without blocking on
/// a FIFO; anything but a regular file is refused.
pub fn open_regular(path: &Path) -> Result<File, OpenError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => OpenError::Missing(e),
            _ => OpenError::Unreadable(e),
        })?;
    let meta = file.metadata().map_err(OpenError::Unreadable)?;
    if !meta.is_file() {
        return Err(OpenError::NotRegular);
    }
    // SAFETY: advice on our own open descriptor; failure is harmless.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    }
    Ok(file)
}
