//! What an S3-compatible server's ETag says about an object, and the fingerprint an upload
//! computes while it reads its file: the size and sha256, and the MD5s the ETag may be.  A
//! single PUT's ETag is the content's MD5; a multipart upload's is `md5(part MD5s)-N` on AWS,
//! MinIO and most servers, or the whole object's MD5 on some (s3rver).
//!
//! Each MD5 is a pass over every byte (about 640 MB/s on this project's machines: a second of
//! CPU per 650 MB, beside the server's own work), so the form a store (endpoint and bucket) gave
//! its earlier multipart uploads in this process is remembered and only that one is computed.
//! It is a hint, never a verdict: an object of the right size whose ETag matches no form
//! computed has the bytes its upload sent fingerprinted again, every form, and where the file
//! can no longer tell (changed since, unreadable) the object read back decides.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, OnceLock, PoisonError};

use md5::Md5;
use sha2::{Digest, Sha256};

use super::{Copied, StorageError};
use crate::checksum::hex;

/// The form of a multipart upload's ETag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `md5(part MD5s)-N` (AWS, MinIO, Ceph, most servers).
    PartMd5s,
    /// The whole object's MD5 (s3rver).
    WholeMd5,
}

/// What this process knows of a bucket's ETags.
#[derive(Default, Clone, Copy)]
struct Bucket {
    form: Option<Form>,
    /// Uploads whose ETag had to be checked again in every form.
    rechecks: u64,
}

fn buckets() -> std::sync::MutexGuard<'static, HashMap<String, Bucket>> {
    static BUCKETS: OnceLock<Mutex<HashMap<String, Bucket>>> = OnceLock::new();
    BUCKETS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// The form the store `store` (`ObjectTarget::store_id`: its endpoint and bucket) gave the last
/// multipart upload checked in this process.
pub fn learned(store: &str) -> Option<Form> {
    buckets().get(store).and_then(|b| b.form)
}

/// How many uploads to `store` in this process had an ETag of another form than the one
/// computed, and were checked again in every form (a diagnostic: each costs a second read of
/// the file).
pub fn rechecks(store: &str) -> u64 {
    buckets().get(store).map_or(0, |b| b.rechecks)
}

pub(crate) fn count_recheck(store: &str) {
    buckets().entry(store.to_owned()).or_default().rechecks += 1;
}

/// Whether `found`, an object's ETag, is one of `etags` (`|`-separated); an object without an
/// ETag matches none.
pub(crate) fn matches(etags: &str, found: &str) -> bool {
    !found.is_empty() && etags.split('|').any(|e| e == found)
}

/// Which MD5s an upload computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Md5s {
    /// None: the target's ETags are not MD5s (Azure), never compared.
    Skipped,
    /// Every form the ETag may take.
    Every,
    /// Only this form (the bucket's last one; a single PUT's is always `WholeMd5`).
    Only(Form),
}

/// Remembers the form of `etag`, the ETag of a multipart upload to `store` that was checked.
/// Public so that a test can stand for a store whose form changed (a server upgraded, another
/// behind the same endpoint): the next upload must still be checked right.
pub fn learn(store: &str, etag: &str) {
    let form = match etag.rsplit_once('-') {
        Some((_, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => Form::PartMd5s,
        _ => Form::WholeMd5,
    };
    // One entry per bucket an operator configured: a handful.
    buckets().entry(store.to_owned()).or_default().form = Some(form);
}

/// Computed part by part as an upload reads its file.
pub(crate) struct Fingerprint {
    sha256: Sha256,
    /// The whole content's MD5 (a single PUT's ETag; s3rver's multipart ETag).
    whole: Option<Md5>,
    /// Every part's MD5, one after the other (AWS's multipart ETag).
    part_md5s: Option<Vec<u8>>,
    parts: usize,
    size: u64,
}

impl Fingerprint {
    pub(crate) fn new(md5s: Md5s) -> Fingerprint {
        let whole = matches!(md5s, Md5s::Every | Md5s::Only(Form::WholeMd5));
        let parts = matches!(md5s, Md5s::Every | Md5s::Only(Form::PartMd5s));
        Fingerprint {
            sha256: Sha256::new(),
            whole: whole.then(Md5::new),
            part_md5s: parts.then(Vec::new),
            parts: 0,
            size: 0,
        }
    }

    pub(crate) fn part(&mut self, bytes: &[u8]) {
        self.sha256.update(bytes);
        if let Some(md5) = self.whole.as_mut() {
            md5.update(bytes);
        }
        if let Some(md5s) = self.part_md5s.as_mut() {
            md5s.extend_from_slice(&Md5::digest(bytes));
        }
        self.parts += 1;
        self.size += bytes.len() as u64;
    }

    /// Whether every form the object's ETag may take was computed (or none is needed).
    pub(crate) fn complete(&self) -> bool {
        self.whole.is_some() == self.part_md5s.is_some()
    }

    /// The size and sha256, and the ETags (`|`-separated) the object may have.
    pub(crate) fn finish(self, multipart: bool) -> (Copied, String) {
        let mut etags = Vec::new();
        match (&self.part_md5s, multipart) {
            (Some(md5s), true) => {
                etags.push(format!("{}-{}", hex(&Md5::digest(md5s)), self.parts));
            }
            // One part: its MD5 is the whole content's.
            (Some(md5s), false) if self.whole.is_none() && self.parts <= 1 => {
                let md5 = if md5s.is_empty() {
                    Md5::digest(b"").to_vec()
                } else {
                    md5s.clone()
                };
                etags.push(hex(&md5));
            }
            _ => {}
        }
        if let Some(md5) = self.whole {
            etags.push(hex(&md5.finalize()));
        }
        (
            Copied {
                size: self.size,
                sha256: hex(&self.sha256.finalize()),
            },
            etags.join("|"),
        )
    }
}

/// The fingerprint (the `md5s` asked) of the first `size` bytes of `file` (fewer if it is
/// shorter), cut as an upload of them was: `(part size, whether in parts)`; `shown` names it in
/// errors.  The file's offset is left alone.
pub(crate) fn of_file(
    file: &File,
    shown: &Path,
    size: u64,
    (part_size, multipart): (usize, bool),
    md5s: Md5s,
) -> Result<(Copied, String), StorageError> {
    let unreadable =
        |e: std::io::Error| StorageError::Http(format!("read {}: {e}", shown.display()));
    let mut print = Fingerprint::new(md5s);
    let mut buf = vec![0u8; part_size.min(size as usize).max(1)];
    let mut at = 0u64;
    while at < size {
        let want = buf.len().min((size - at) as usize);
        let mut filled = 0;
        while filled < want {
            match file.read_at(&mut buf[filled..want], at + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(unreadable(e)),
            }
        }
        if filled == 0 {
            break;
        }
        print.part(&buf[..filled]);
        at += filled as u64;
        if filled < want {
            break;
        }
    }
    Ok(print.finish(multipart))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md5(bytes: &[u8]) -> String {
        hex(&Md5::digest(bytes))
    }

    #[test]
    fn every_form_an_etag_may_take_is_computed_as_asked() {
        let data: Vec<u8> = (0..25u32).map(|i| i as u8).collect();
        let parts: Vec<&[u8]> = data.chunks(10).collect();
        let mut md5s = Vec::new();
        for p in &parts {
            md5s.extend_from_slice(&Md5::digest(p));
        }
        let aws = format!("{}-3", hex(&Md5::digest(&md5s)));
        let whole = md5(&data);
        for (asked, expected) in [
            (Md5s::Every, format!("{aws}|{whole}")),
            (Md5s::Only(Form::PartMd5s), aws.clone()),
            (Md5s::Only(Form::WholeMd5), whole.clone()),
            (Md5s::Skipped, String::new()),
        ] {
            let mut print = Fingerprint::new(asked);
            for p in &parts {
                print.part(p);
            }
            let complete = matches!(asked, Md5s::Every | Md5s::Skipped);
            assert_eq!(print.complete(), complete, "{asked:?}");
            let (copied, etags) = print.finish(true);
            assert_eq!(etags, expected, "{asked:?}");
            assert_eq!(copied.size, 25);
            assert_eq!(copied.sha256, hex(&Sha256::digest(&data)));
            // An object without an ETag matches no list, an empty one included.
            assert!(!matches(&etags, ""), "{asked:?}");
            assert_eq!(matches(&etags, &whole), expected.contains(&whole));
        }
        // A single PUT's ETag is the content's MD5 whichever form was asked, empty content too.
        for content in [&data[..10], &[][..]] {
            for asked in [
                Md5s::Every,
                Md5s::Only(Form::PartMd5s),
                Md5s::Only(Form::WholeMd5),
            ] {
                let mut print = Fingerprint::new(asked);
                if !content.is_empty() {
                    print.part(content);
                }
                let (_, etags) = print.finish(false);
                assert!(
                    etags.split('|').all(|e| e == md5(content)),
                    "{asked:?}: {etags}"
                );
            }
        }
    }

    #[test]
    fn the_form_is_learned_per_bucket_from_a_checked_etag() {
        learn("bucket etag-test-a", "0123456789abcdef0123456789abcdef-12");
        learn("bucket etag-test-b", "0123456789abcdef0123456789abcdef");
        assert_eq!(learned("bucket etag-test-a"), Some(Form::PartMd5s));
        assert_eq!(learned("bucket etag-test-b"), Some(Form::WholeMd5));
        assert_eq!(learned("bucket etag-test-c"), None);
        count_recheck("bucket etag-test-c");
        assert_eq!(rechecks("bucket etag-test-c"), 1);
        assert_eq!(learned("bucket etag-test-c"), None);
    }

    #[test]
    fn a_file_is_fingerprinted_as_its_upload_cut_it() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("f");
        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let (copied, etags) = of_file(&file, &path, 70_000, (30_000, true), Md5s::Every).unwrap();
        let mut print = Fingerprint::new(Md5s::Every);
        for p in data.chunks(30_000) {
            print.part(p);
        }
        assert_eq!((copied, etags), print.finish(true));
        let (_, single) = of_file(&file, &path, 70_000, (100_000, false), Md5s::Every).unwrap();
        assert_eq!(single, md5(&data));
        // Only the bytes the upload sent: of a file that grew since, those; one that shrank
        // comes out shorter (and so different).
        let (first, _) = of_file(&file, &path, 50_000, (30_000, true), Md5s::Every).unwrap();
        assert_eq!(first.size, 50_000);
        assert_eq!(first.sha256, hex(&Sha256::digest(&data[..50_000])));
        let (longer, _) = of_file(&file, &path, 90_000, (30_000, true), Md5s::Every).unwrap();
        assert_eq!(longer.size, 70_000);
    }
}
