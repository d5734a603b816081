//! The tar stream `pg_basebackup --format=tar --pgdata=-` writes, read for one member: the
//! `backup_manifest` it appends at the end, which the next `pg_basebackup --incremental` of a
//! chain needs.  A write-side stage (`Capture`), so that the stored backup's bytes are read once,
//! checked against their sha256 and searched in the same pass.  Every other member is skipped by
//! its header's size; nothing is extracted.

use std::io::{self, Write};

/// A tar block.
const BLOCK: usize = 512;

/// Largest member kept: a manifest is about 150 bytes per file, so this allows millions of
/// files; a larger "manifest" is not one we wrote.
pub const MAX_CAPTURE: u64 = 1 << 30;

/// Where the parser is in the stream.
#[derive(Debug)]
enum State {
    /// Collecting a header block.
    Header,
    /// Inside a member's data: bytes left, and whether they are kept.
    Body { left: u64, keep: bool },
    /// The end-of-archive marker (a zero block) was seen: the rest is ignored.
    Ended,
}

/// A `Write` stage that parses a tar stream and keeps the data of the regular member named
/// `name` (the last one, if several: tar's own rule on extraction).
pub struct Capture {
    name: String,
    state: State,
    header: Vec<u8>,
    padding: u64,
    current: Vec<u8>,
    found: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("not a tar stream: a header's size field is {0:?}")]
    BadSize(String),
    #[error("the tar member \"{name}\" is {size} bytes, more than a backup manifest can be")]
    TooLarge { name: String, size: u64 },
    #[error("the tar stream ended inside a member")]
    Truncated,
}

impl Capture {
    pub fn new(name: &str) -> Capture {
        Capture {
            name: name.to_owned(),
            state: State::Header,
            header: Vec::with_capacity(BLOCK),
            padding: 0,
            current: Vec::new(),
            found: None,
        }
    }

    /// The member's data, once the whole stream has been written; `Ok(None)` when the stream
    /// had no such member.
    pub fn finish(self) -> Result<Option<Vec<u8>>, TarError> {
        match self.state {
            State::Body { left, .. } if left > 0 => Err(TarError::Truncated),
            _ if !self.header.is_empty() || self.padding > 0 => Err(TarError::Truncated),
            _ => Ok(self.found),
        }
    }

    /// Parses one complete header block and moves to its body.
    fn header_done(&mut self) -> io::Result<()> {
        let h = std::mem::take(&mut self.header);
        if h.iter().all(|b| *b == 0) {
            self.state = State::Ended;
            return Ok(());
        }
        let size = parse_size(&h[124..136])
            .ok_or_else(|| invalid(TarError::BadSize(field(&h[124..136]))))?;
        let name = member_name(&h);
        // Regular files only ('0', or NUL in old archives); a link or directory of that name is
        // not a manifest.
        let keep = matches!(h[156], b'0' | 0) && name == self.name;
        if keep && size > MAX_CAPTURE {
            return Err(invalid(TarError::TooLarge { name, size }));
        }
        self.current.clear();
        self.padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        self.state = State::Body { left: size, keep };
        if size == 0 {
            self.body_done(keep);
        }
        Ok(())
    }

    fn body_done(&mut self, keep: bool) {
        if keep {
            self.found = Some(std::mem::take(&mut self.current));
        }
        self.state = State::Header;
    }
}

fn invalid(e: TarError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

fn field(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim_end_matches('\0').to_owned()
}

/// A header's size: octal digits (NUL- or space-terminated), or GNU's base-256 form (high bit of
/// the first byte set) for members of 8 GB and more.
fn parse_size(b: &[u8]) -> Option<u64> {
    if b[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(b[0] & 0x7f);
        for &x in &b[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(x))?;
        }
        return Some(v);
    }
    let digits: &[u8] = {
        let s = b
            .iter()
            .position(|c| *c != b' ')
            .map(|i| &b[i..])
            .unwrap_or(&[]);
        let end = s
            .iter()
            .position(|c| *c == 0 || *c == b' ')
            .unwrap_or(s.len());
        &s[..end]
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(v)
}

/// The member's path: ustar's prefix (when the magic says ustar and it is set) and name.
fn member_name(h: &[u8]) -> String {
    let name = field(&h[0..100]);
    if &h[257..262] == b"ustar" {
        let prefix = field(&h[345..500]);
        if !prefix.is_empty() {
            return format!("{prefix}/{name}");
        }
    }
    name
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            if self.padding > 0 && matches!(self.state, State::Header) {
                let n = (self.padding as usize).min(rest.len());
                self.padding -= n as u64;
                rest = &rest[n..];
                continue;
            }
            match self.state {
                State::Ended => break,
                State::Header => {
                    let n = (BLOCK - self.header.len()).min(rest.len());
                    self.header.extend_from_slice(&rest[..n]);
                    rest = &rest[n..];
                    if self.header.len() == BLOCK {
                        self.header_done()?;
                    }
                }
                State::Body { left, keep } => {
                    let n = (left.min(rest.len() as u64)) as usize;
                    if keep {
                        self.current.extend_from_slice(&rest[..n]);
                    }
                    rest = &rest[n..];
                    let left = left - n as u64;
                    self.state = State::Body { left, keep };
                    if left == 0 {
                        self.body_done(keep);
                    }
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ustar header for a regular member (what PostgreSQL's `tarCreateHeader` writes).
    fn header(name: &str, size: usize, kind: u8) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let s = format!("{size:011o}\0");
        h[124..136].copy_from_slice(s.as_bytes());
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h
    }

    fn member(out: &mut Vec<u8>, name: &str, data: &[u8], kind: u8) {
        out.extend(header(name, data.len(), kind));
        out.extend(data);
        out.resize(out.len().div_ceil(BLOCK) * BLOCK, 0);
    }

    fn archive() -> Vec<u8> {
        let mut a = Vec::new();
        member(&mut a, "PG_VERSION", b"18\n", b'0');
        member(&mut a, "base/1/1259", &vec![7u8; 8192 * 3 + 5], b'0');
        member(&mut a, "pg_wal", b"", b'5');
        // A directory of the name is not the manifest.
        member(&mut a, "backup_manifest", b"", b'5');
        member(&mut a, "empty", b"", b'0');
        member(
            &mut a,
            "backup_manifest",
            b"{\"PostgreSQL-Backup-Manifest-Version\": 2}\n",
            b'0',
        );
        a.extend(vec![0u8; BLOCK * 2]);
        // Whatever follows the end marker is ignored.
        a.extend(b"trailing garbage");
        a
    }

    #[test]
    fn finds_the_member_whatever_the_write_sizes() {
        let a = archive();
        for chunk in [1, 7, 511, 512, 513, 4096, a.len()] {
            let mut c = Capture::new("backup_manifest");
            for piece in a.chunks(chunk) {
                c.write_all(piece).unwrap();
            }
            assert_eq!(
                c.finish().unwrap().as_deref(),
                Some(&b"{\"PostgreSQL-Backup-Manifest-Version\": 2}\n"[..]),
                "chunk {chunk}"
            );
        }
        let mut c = Capture::new("global/pg_control");
        c.write_all(&a).unwrap();
        assert_eq!(c.finish().unwrap(), None);
    }

    #[test]
    fn a_cut_or_corrupt_stream_is_an_error_not_a_manifest() {
        let a = archive();
        let mut c = Capture::new("backup_manifest");
        c.write_all(&a[..BLOCK + 100]).unwrap();
        assert!(matches!(c.finish(), Err(TarError::Truncated)));
        let mut c = Capture::new("backup_manifest");
        c.write_all(&a[..BLOCK * 5]).unwrap();
        assert!(matches!(c.finish(), Err(TarError::Truncated)));
        let mut bad = a.clone();
        bad[124..136].copy_from_slice(b"99999999999\0");
        let mut c = Capture::new("backup_manifest");
        assert!(c.write_all(&bad).is_err());
    }

    #[test]
    fn sizes_in_octal_and_base_256() {
        assert_eq!(parse_size(b"00000001750\0"), Some(1000));
        assert_eq!(parse_size(b" 1750 \0\0\0\0\0\0"), Some(1000));
        let mut big = [0u8; 12];
        big[0] = 0x80;
        big[7] = 0x02; // 2 << 32
        assert_eq!(parse_size(&big), Some(2u64 << 32));
        assert_eq!(parse_size(b"\0\0\0\0\0\0\0\0\0\0\0\0"), None);
    }

    #[test]
    fn an_oversized_manifest_is_refused() {
        let mut h = header("backup_manifest", 0, b'0');
        let s = format!("{:011o}\0", MAX_CAPTURE + 1);
        h[124..136].copy_from_slice(s.as_bytes());
        let mut c = Capture::new("backup_manifest");
        assert!(c.write_all(&h).is_err());
    }
}
