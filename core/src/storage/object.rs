//! Object storage as an off-site target, through the `object_store` crate (Apache Arrow's
//! maintained client for S3, Azure Blob and Google Cloud Storage: request signing, multipart
//! uploads, retries with backoff).  Only the choice of parts, the checks of what landed and the
//! bridge from our threads to its asynchronous API are written here.
//!
//! Integrity: a payload's sha256 is signed with it (S3), and after the upload a HEAD compares
//! the landed object's size and ETag, which the server computes from what it stored, with the
//! MD5 computed here while reading: the MD5 of a single PUT, or for a multipart upload
//! `md5(part MD5s)-N` (AWS, MinIO) or the whole object's MD5 (s3rver).  A target
//! whose ETags are not MD5s (Azure Blob) is checked by reading the object back and hashing it.
//! An object already under a key is never replaced (`put_opened`): identical content counts as
//! the copy, different content is refused.  Only `replace` (the catalog mirror) replaces.
//!
//! The library is asynchronous; backup_mgmt's copies run on plain threads (the worker's
//! helpers, a restore's jobs).  One runtime per process serves them all: each thread waits on
//! its own request with `block_on`, and the runtime's two threads drive the sockets.  They are
//! started with every signal blocked, so PostgreSQL's handlers only run on its own thread.

use std::io::Read;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use object_store::list::PaginatedListStore;
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, GetOptions, ObjectStore, PutMultipartOptions, PutOptions, PutPayload,
};

use super::download::Download;
use super::etag::{self, Fingerprint, Form, Md5s};
use super::listing::{self, ListError, Listing, MAX_LISTED};
use super::{described, Ahead, Copied, Storage, StorageError};
use crate::stream;
use crate::threads;

/// What the check after an upload found.
enum Landed {
    /// `etag`: the ETag it was checked by ("" where the content was read back).
    Same { etag: String },
    /// The object differs (`why`); `etag` is the one it has now, `same_size` whether only the
    /// ETag (or the content read back) told it apart.
    Differs {
        etag: String,
        same_size: bool,
        why: StorageError,
    },
}

/// What an upload sent, as `put_from` read it.
struct Sent {
    copied: Copied,
    /// The ETags the object may have (`|`-separated; see `check_landed`).
    etags: String,
    /// The ETag the server gave it.
    given: String,
    /// How the file was cut: the part size, and whether it went in parts.
    part_size: usize,
    multipart: bool,
    /// Whether `etags` holds every form the object's ETag may take.
    complete: bool,
}

/// An object found under a key before a copy.
struct Existing {
    size: u64,
    etag: String,
    sha256: Option<String>,
}

/// A download's I/O timeout unless the target sets one: pgBackRest's `io-timeout` default.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(60);
/// The I/O timeouts a target may set, in seconds: at least a second, at most the whole-request
/// timeout (beyond it, that one would end the request first).
pub const IO_TIMEOUT_RANGE: std::ops::RangeInclusive<f64> =
    1.0..=super::transport::REQUEST_TIMEOUT.as_secs() as f64;

/// `seconds` as an I/O timeout, if it is within `IO_TIMEOUT_RANGE`.
pub fn io_timeout(seconds: f64) -> Option<Duration> {
    IO_TIMEOUT_RANGE
        .contains(&seconds)
        .then(|| Duration::from_secs_f64(seconds))
}
/// Part size of multipart uploads (S3 allows 5 MiB to 5 GiB; 10,000 parts at most, so larger
/// backups get larger parts).
pub const DEFAULT_PART_SIZE: usize = 8 << 20;
/// Parts uploaded at the same time (each holds a part-sized buffer).
const UPLOADS_IN_FLIGHT: usize = 4;
/// S3's limit on parts per upload.
const MAX_PARTS: u64 = 10_000;

/// How a target's ETags relate to what was sent, which decides how a copy is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// ETags are MD5s of what was stored (S3 and compatible servers).
    Md5Etag,
    /// ETags are opaque (Azure Blob): the object is read back and its sha256 compared.
    ReadBack,
}

/// One bucket or container (and key prefix) of an object store.
pub struct ObjectTarget {
    store: Arc<dyn ObjectStore>,
    /// The same client, for listings a page at a time (`listing`).
    lister: Arc<dyn PaginatedListStore>,
    /// `bucket` or `container`, for messages.
    pub place: String,
    /// The endpoint and bucket: what this process learns of the store's ETags is kept under it
    /// (`etag::learned`), so two servers with buckets of the same name never share it.
    pub store_id: String,
    /// Prefix inside the bucket (no leading or trailing slash; may be empty).
    pub prefix: String,
    pub part_size: usize,
    pub checked: Checked,
    /// The target's bandwidth limit (`options.max_rate_mb`), shared by its transfers in flight.
    pub rate: Option<Arc<stream::RateLimit>>,
    /// How long a download waits for a byte, or a listing for a page, before it asks again
    /// (`options.io_timeout_s`, `--io-timeout`).
    pub io_timeout: Duration,
}

/// The process's runtime for the library's requests (two threads, signals blocked).
pub fn runtime() -> Result<&'static tokio::runtime::Runtime, StorageError> {
    static RUNTIME: OnceLock<std::io::Result<tokio::runtime::Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            threads::with_signals_blocked(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("backup_mgmt-io")
                    .on_thread_start(threads::block_all_signals)
                    .enable_all()
                    .build()
            })
        })
        .as_ref()
        .map_err(|e| StorageError::Http(format!("could not start the I/O threads: {e}")))
}

/// `"etag"` → `etag`.
fn unquoted(etag: Option<&str>) -> String {
    etag.unwrap_or_default().trim_matches('"').to_owned()
}

/// `remote_path` as the bucket (or container: `what`) and the key prefix inside it.
pub(crate) fn place_and_prefix<'a>(
    remote_path: &'a str,
    what: &str,
) -> Result<(&'a str, &'a str), StorageError> {
    let trimmed = remote_path.trim_matches('/');
    let (place, prefix) = trimmed.split_once('/').unwrap_or((trimmed, ""));
    // Names as S3 and Azure allow them (letters, digits, `.`, `-`, `_` for S3's older buckets):
    // nothing that would change the request's path or query once put into the URL.
    let valid = !place.is_empty()
        && place.len() <= 255
        && place != "."
        && place != ".."
        && place
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !valid {
        return Err(StorageError::Config(format!(
            "remote_path must start with the {what} name (letters, digits, '.', '-', '_'), not {place:?}"
        )));
    }
    Ok((place, prefix))
}

impl ObjectTarget {
    pub fn new<S: ObjectStore + PaginatedListStore>(
        store: Arc<S>,
        endpoint: &str,
        place: &str,
        prefix: &str,
        part_size: Option<usize>,
        checked: Checked,
    ) -> ObjectTarget {
        ObjectTarget {
            store: Arc::clone(&store) as Arc<dyn ObjectStore>,
            lister: store,
            place: place.to_owned(),
            store_id: format!("{} {place}", endpoint.trim_end_matches('/')),
            prefix: prefix.trim_matches('/').to_owned(),
            part_size: part_size.unwrap_or(DEFAULT_PART_SIZE).max(5 << 20),
            checked,
            rate: None,
            io_timeout: DEFAULT_IO_TIMEOUT,
        }
    }

    /// The object's path in the bucket.  `Path::parse` keeps the key as it is (no second
    /// encoding of our percent-encoded components), so the keys are the ones earlier versions
    /// wrote.
    fn path(&self, key: &str) -> Result<ObjectPath, StorageError> {
        let full = if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        };
        ObjectPath::parse(&full)
            .map_err(|e| StorageError::Config(format!("key {key:?} is not a plain key: {e}")))
    }

    fn failed(&self, what: &str, key: &str, why: String) -> StorageError {
        StorageError::Http(format!("{what} {}/{key}: {why}", self.place))
    }

    /// One PUT of a whole object (its sha256 as metadata); returns the ETag the server gave it
    /// (compared with the MD5s by `check_landed`).
    fn put_whole(
        &self,
        rt: &tokio::runtime::Runtime,
        path: &ObjectPath,
        key: &str,
        bytes: Bytes,
        sha: &str,
    ) -> Result<String, StorageError> {
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::Metadata("sha256".into()), sha.to_owned().into());
        let options = PutOptions {
            attributes,
            ..Default::default()
        };
        let put = self.store.put_opts(path, PutPayload::from(bytes), options);
        let landed = rt
            .block_on(put)
            .map_err(|e| self.failed("PUT", key, described(&e)))?;
        Ok(unquoted(landed.e_tag.as_deref()))
    }

    /// Uploads the opened `file` (read from its current offset, its start for every caller)
    /// as `key`: what was sent, and how.
    fn put_from(
        &self,
        file: &std::fs::File,
        local: &Path,
        key: &str,
    ) -> Result<Sent, StorageError> {
        let rt = runtime()?;
        let size = file
            .metadata()
            .map_err(|e| StorageError::Http(format!("stat {}: {e}", local.display())))?
            .len();
        let mut file = stream::Limited::new(file, self.rate.clone());
        let read = |file: &mut stream::Limited<&std::fs::File>, buf: &mut [u8]| {
            stream::read_full(file, buf)
                .map_err(|e| StorageError::Http(format!("read {}: {e}", local.display())))
        };
        let path = self.path(key)?;
        let part_size = self.part_size_for(size);
        if size as usize <= part_size {
            // A single PUT's ETag is its MD5, whatever the server.
            let mut print = Fingerprint::new(self.md5s(Md5s::Only(Form::WholeMd5)));
            let mut buf = vec![0u8; size as usize];
            let n = read(&mut file, &mut buf)?;
            buf.truncate(n);
            print.part(&buf);
            let (copied, etags) = print.finish(false);
            let given = self.put_whole(rt, &path, key, Bytes::from(buf), &copied.sha256)?;
            return Ok(Sent {
                copied,
                etags,
                given,
                part_size,
                multipart: false,
                complete: true,
            });
        }
        let learned = etag::learned(&self.store_id).map_or(Md5s::Every, Md5s::Only);
        let mut print = Fingerprint::new(self.md5s(learned));
        let complete = print.complete();
        // Multipart: the whole object's sha256 is only known at the end, so it goes into the
        // catalog; each part's payload is signed with its own sha256.
        let mut upload = rt
            .block_on(
                self.store
                    .put_multipart_opts(&path, PutMultipartOptions::default()),
            )
            .map_err(|e| self.failed("starting the upload of", key, described(&e)))?;
        let mut in_flight: std::collections::VecDeque<
            tokio::task::JoinHandle<object_store::Result<()>>,
        > = std::collections::VecDeque::new();
        let result = (|| {
            loop {
                // The next part is read and hashed here while up to UPLOADS_IN_FLIGHT earlier
                // ones travel on the runtime's threads.
                let mut buf = vec![0u8; part_size];
                let n = read(&mut file, &mut buf)?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                print.part(&buf);
                if in_flight.len() >= UPLOADS_IN_FLIGHT {
                    if let Some(oldest) = in_flight.pop_front() {
                        rt.block_on(oldest)
                            .map_err(|e| self.failed("PUT part of", key, described(&e)))?
                            .map_err(|e| self.failed("PUT part of", key, described(&e)))?;
                    }
                }
                in_flight.push_back(rt.spawn(upload.put_part(PutPayload::from(Bytes::from(buf)))));
            }
            while let Some(part) = in_flight.pop_front() {
                rt.block_on(part)
                    .map_err(|e| self.failed("PUT part of", key, described(&e)))?
                    .map_err(|e| self.failed("PUT part of", key, described(&e)))?;
            }
            let landed = rt
                .block_on(upload.complete())
                .map_err(|e| self.failed("completing the upload of", key, described(&e)))?;
            let (copied, etags) =
                std::mem::replace(&mut print, Fingerprint::new(Md5s::Skipped)).finish(true);
            Ok(Sent {
                copied,
                etags,
                given: unquoted(landed.e_tag.as_deref()),
                part_size,
                multipart: true,
                complete,
            })
        })();
        if result.is_err() {
            // Leave no half upload behind (it would be billed and never completed).
            // Parts still travelling are stopped and waited for first, or one could land
            // after the abort and stay behind (billed, never part of an object).
            for part in in_flight {
                part.abort();
                let _ = rt.block_on(part);
            }
            let _ = rt.block_on(upload.abort());
        }
        result
    }

    /// Checks the landed object: its size, and its ETag (one of the `|`-separated `etags`) or,
    /// where ETags are not MD5s, its sha256 read back.  Err: it could not be checked.
    fn check_landed(
        &self,
        key: &str,
        copied: &Copied,
        etags: &str,
    ) -> Result<Landed, StorageError> {
        let rt = runtime()?;
        let path = self.path(key)?;
        let meta = rt
            .block_on(self.store.head(&path))
            .map_err(|e| self.failed("HEAD", key, described(&e)))?;
        let found = unquoted(meta.e_tag.as_deref());
        // An object without an ETag is read back rather than judged by it.
        let read_back = self.checked == Checked::ReadBack || found.is_empty();
        let etag_ok = read_back || etag::matches(etags, &found);
        let same_size = meta.size == copied.size;
        if !same_size || !etag_ok {
            let why = self.failed(
                "HEAD",
                key,
                format!(
                    "the server stored something else (size {}, ETag {found}; expected {}, {etags})",
                    meta.size, copied.size
                ),
            );
            return Ok(Landed::Differs {
                etag: found,
                same_size,
                why,
            });
        }
        if read_back {
            let read = self.read_back(key)?;
            if read != copied.sha256 {
                let why = StorageError::Mismatch {
                    expected: copied.sha256.clone(),
                    found: read,
                };
                return Ok(Landed::Differs {
                    etag: found,
                    same_size,
                    why,
                });
            }
        }
        Ok(Landed::Same { etag: found })
    }

    /// The MD5s to compute where `wanted` would be: none on a target whose ETags are not MD5s
    /// (Azure), which are never compared.
    fn md5s(&self, wanted: Md5s) -> Md5s {
        match self.checked {
            Checked::Md5Etag => wanted,
            Checked::ReadBack => Md5s::Skipped,
        }
    }

    /// An upload whose ETag matched none of the forms computed (the bucket formed it otherwise
    /// than its last one): the file's bytes as they were sent, every form, and the same check
    /// again.  Where the file cannot tell any more (it changed since, or cannot be read), the
    /// object read back decides: never a verdict on a guess.
    fn recheck(
        &self,
        key: &str,
        file: &std::fs::File,
        shown: &Path,
        sent: &Sent,
    ) -> Result<Landed, StorageError> {
        etag::count_recheck(&self.store_id);
        let c = &sent.copied;
        let cut = (sent.part_size, sent.multipart);
        match etag::of_file(file, shown, c.size, cut, Md5s::Every) {
            Ok((read, every)) if read == *c => self.check_landed(key, c, &every),
            _ => {
                let found = self.read_back(key)?;
                if found == c.sha256 {
                    return Ok(Landed::Same {
                        etag: String::new(),
                    });
                }
                // The ETag it has now, after the read back: another writer's object that
                // replaced ours in the meantime must not pass for ours.
                let now = runtime()?
                    .block_on(self.store.head(&self.path(key)?))
                    .map(|m| unquoted(m.e_tag.as_deref()))
                    .unwrap_or_default();
                Ok(Landed::Differs {
                    etag: now,
                    same_size: true,
                    why: StorageError::Mismatch {
                        expected: c.sha256.clone(),
                        found,
                    },
                })
            }
        }
    }

    /// The sha256 of the object under `key`, read back whole.
    fn read_back(&self, key: &str) -> Result<String, StorageError> {
        let mut hash = stream::Hash::new(std::io::sink());
        std::io::copy(&mut self.get(key)?, &mut hash)
            .map_err(|e| self.failed("reading back", key, described(&e)))?;
        Ok(hash.finish().1)
    }

    /// Part size for an object of `size` bytes: larger parts for very large backups, since S3
    /// takes at most 10,000.
    fn part_size_for(&self, size: u64) -> usize {
        self.part_size.max(size.div_ceil(MAX_PARTS) as usize)
    }

    /// The object already under `key`, if any: its size, ETag and the sha256 a single PUT of
    /// ours stored with it (a multipart upload cannot: the sha256 is known only at its end).
    fn existing(&self, key: &str) -> Result<Option<Existing>, StorageError> {
        let rt = runtime()?;
        let path = self.path(key)?;
        let options = GetOptions {
            head: true,
            ..Default::default()
        };
        match rt.block_on(self.store.get_opts(&path, options)) {
            Ok(found) => Ok(Some(Existing {
                size: found.meta.size,
                etag: unquoted(found.meta.e_tag.as_deref()),
                sha256: found
                    .attributes
                    .get(&Attribute::Metadata("sha256".into()))
                    .map(|v| v.to_string()),
            })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.failed("HEAD", key, described(&e))),
        }
    }

    /// Whether the object `there` holds the content `ours` (with the ETags an upload of it may
    /// get): same size, the same stored sha256 where there is one, and the same ETag or the
    /// same sha256 read back.
    fn holds(
        &self,
        key: &str,
        there: &Existing,
        ours: &Copied,
        etags: &str,
    ) -> Result<bool, StorageError> {
        if there.size != ours.size || there.sha256.as_ref().is_some_and(|s| *s != ours.sha256) {
            return Ok(false);
        }
        // An ETag that matches settles it; one that does not may still be the same bytes
        // (uploaded in parts of another size, or by a server whose ETags are not MD5s): read
        // back before calling it different.
        if self.checked == Checked::Md5Etag && etag::matches(etags, &there.etag) {
            return Ok(true);
        }
        Ok(self.read_back(key)? == ours.sha256)
    }

    /// Every key below `dir` ("" or ending in `/`), relative to the target's prefix.
    fn list_below(&self, dir: &str) -> Result<Vec<String>, StorageError> {
        let base = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let listed = self
            .listed(dir, false, None)?
            .map_err(|e| self.failed("listing", dir, e.to_string()))?;
        let mut out = Vec::with_capacity(listed.objects.len());
        for meta in listed.objects {
            if let Some(relative) = meta.location.as_ref().strip_prefix(base.as_str()) {
                out.push(relative.to_owned());
            }
        }
        Ok(out)
    }

    /// The keys below `dir` ("" = the target's prefix), or with `delimited` its level only,
    /// page by page within the bounds `listing` sets; `first_page_of` stops after one page.
    /// The outer error: `dir` or the runtime; the inner: the listing.
    fn listed(
        &self,
        dir: &str,
        delimited: bool,
        first_page_of: Option<usize>,
    ) -> Result<Result<object_store::ListResult, ListError>, StorageError> {
        let at = self.path_or_root(dir)?.map(|p| format!("{}/", p.as_ref()));
        let listing = Listing {
            prefix: at.as_deref(),
            delimited,
            first_page_of,
            io_timeout: self.io_timeout,
            max: MAX_LISTED,
        };
        Ok(runtime()?.block_on(listing::list(&*self.lister, &listing)))
    }

    /// The path of the level `dir` names ("" = the target's prefix), None for a bucket's root.
    fn path_or_root(&self, dir: &str) -> Result<Option<ObjectPath>, StorageError> {
        let dir = dir.trim_end_matches('/');
        if dir.is_empty() && self.prefix.is_empty() {
            return Ok(None);
        }
        if dir.is_empty() {
            return ObjectPath::parse(&self.prefix)
                .map(Some)
                .map_err(|e| StorageError::Config(format!("prefix {:?}: {e}", self.prefix)));
        }
        self.path(dir).map(Some)
    }
}

impl Storage for ObjectTarget {
    fn put_opened(
        &self,
        file: std::fs::File,
        shown: &Path,
        key: &str,
    ) -> Result<Copied, StorageError> {
        if let Some(there) = self.existing(key)? {
            // Never replaced: an identical object counts as this copy (a copy interrupted
            // after it landed, a backup's files sent again), a different one is refused.
            let size = file
                .metadata()
                .map_err(|e| StorageError::Http(format!("stat {}: {e}", shown.display())))?
                .len();
            let part_size = self.part_size_for(size);
            let cut = (part_size, size > part_size as u64);
            let (ours, etags) = etag::of_file(&file, shown, size, cut, self.md5s(Md5s::Every))?;
            return if self.holds(key, &there, &ours, &etags)? {
                Ok(ours)
            } else {
                Err(StorageError::Occupied {
                    key: format!("{}/{key}", self.place),
                    found: match &there.sha256 {
                        Some(sha) => format!("{} bytes, sha256 {sha}", there.size),
                        None => format!("{} bytes, ETag {}", there.size, there.etag),
                    },
                    ours: ours.sha256,
                })
            };
        }
        let sent = self.put_from(&file, shown, key)?;
        let mut landed = self.check_landed(key, &sent.copied, &sent.etags)?;
        if matches!(
            landed,
            Landed::Differs {
                same_size: true,
                ..
            }
        ) && !sent.complete
        {
            landed = self.recheck(key, &file, shown, &sent)?;
        }
        match landed {
            Landed::Same { etag } => {
                if sent.multipart && self.checked == Checked::Md5Etag && !etag.is_empty() {
                    etag::learn(&self.store_id, &etag);
                }
                Ok(sent.copied)
            }
            Landed::Differs { etag, why, .. } => {
                // What our PUT stored is not this copy: removed, so that the next try can put
                // it again (a copy is never replaced, so a bad one left there would block it
                // for good).  Only if it is still what our PUT stored: another writer's object
                // that replaced it in the meantime is not ours to remove.
                if !sent.given.is_empty() && etag == sent.given {
                    let _ = self.delete_one(key);
                }
                Err(why)
            }
        }
    }

    /// One PUT (an object is replaced atomically in an object store), checked as a copy is.
    fn replace(&self, bytes: &[u8], key: &str) -> Result<(), StorageError> {
        let rt = runtime()?;
        let path = self.path(key)?;
        let mut print = Fingerprint::new(self.md5s(Md5s::Only(Form::WholeMd5)));
        print.part(bytes);
        let (copied, md5) = print.finish(false);
        self.put_whole(
            rt,
            &path,
            key,
            Bytes::copy_from_slice(bytes),
            &copied.sha256,
        )?;
        match self.check_landed(key, &copied, &md5)? {
            Landed::Same { .. } => Ok(()),
            // Replaced again by the next mirror; nothing to remove.
            Landed::Differs { why, .. } => Err(why),
        }
    }

    /// The keys that start with `prefix`: the level it is in is listed and filtered (object
    /// stores list whole levels).
    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let dir = &prefix[..prefix.rfind('/').map_or(0, |i| i + 1)];
        let mut keys = self.list_below(dir)?;
        keys.retain(|k| k.starts_with(prefix));
        Ok(keys)
    }

    /// One level, with a delimiter (a page at a time): a level holding millions of WAL files
    /// answers with its name alone.
    fn children(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let level = self
            .listed(prefix, true, None)?
            .map_err(|e| self.failed("listing", prefix, e.to_string()))?;
        let mut names: Vec<String> = level
            .common_prefixes
            .iter()
            .chain(level.objects.iter().map(|o| &o.location))
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    fn delete_one(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path(key)?;
        match runtime()?.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("DELETE", key, described(&e))),
        }
    }

    fn delete(&self, key: &str) -> Result<(), StorageError> {
        let rt = runtime()?;
        let mut keys = self.list_below(&format!("{key}/"))?;
        keys.push(key.to_owned());
        for k in keys {
            let path = self.path(&k)?;
            match rt.block_on(self.store.delete(&path)) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.failed("DELETE", &k, described(&e))),
            }
        }
        Ok(())
    }

    /// One GET, streamed; the caller hashes what it reads.
    fn get(&self, key: &str) -> Result<Box<dyn Read + Send>, StorageError> {
        let key = super::plain_key(key)?;
        let path = self.path(key)?;
        let shown = format!("{}/{key}", self.place);
        let reader = Download::start(
            runtime()?,
            Arc::clone(&self.store),
            path,
            shown,
            self.io_timeout,
        )?;
        Ok(Box::new(stream::Limited::new(reader, self.rate.clone())))
    }

    fn get_ahead(&self, key: &str) -> Option<Ahead> {
        let started = (|| -> Result<_, StorageError> {
            let key = super::plain_key(key)?;
            let path = self.path(key)?;
            let shown = format!("{}/{key}", self.place);
            Ok(Download::begin(
                runtime()?,
                Arc::clone(&self.store),
                path,
                shown,
                self.io_timeout,
            ))
        })();
        let rate = self.rate.clone();
        Some(Box::new(move || {
            let reader = started?.wait()?;
            Ok(Box::new(stream::Limited::new(reader, rate)) as Box<dyn Read + Send>)
        }))
    }

    /// Before a run: the bucket must exist and answer (creating buckets is left to the
    /// provider's tools, as with pgBackRest).
    fn prepare(&self) -> Result<(), StorageError> {
        // One page of one level (a recursive listing of a whole prefix makes s3rver answer 500
        // once it holds backups).
        match self.listed("", true, Some(1))? {
            Ok(_) => Ok(()),
            Err(ListError::NotFound(why)) => Err(StorageError::Config(format!(
                "{} does not exist ({why}): create it with the provider's tools first",
                self.place
            ))),
            Err(e) => Err(self.failed("listing", "", e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_cannot_change_the_request() {
        assert_eq!(
            place_and_prefix("/backups.v2/pg/prod/", "bucket").unwrap(),
            ("backups.v2", "pg/prod")
        );
        for bad in ["", "/", "victim#", "a?delete", "..", ".", "a%2Fb", "a b/x"] {
            assert!(place_and_prefix(bad, "bucket").is_err(), "{bad:?}");
        }
    }
}
