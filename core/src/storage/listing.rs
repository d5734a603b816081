//! Listings of an object store, one page (one request) at a time, each bounded: pages of at most
//! `PAGE_KEYS` entries (a few hundred kB on every service), each waited for at most the
//! target's I/O timeout and asked for again if the server stays silent, as a download is; a
//! listing ends with an error past `MAX_LISTED` entries, and a server that pages without end
//! (the same page token again, or page after empty page) ends it too.  The library's own
//! whole-listing calls collect every page with none of these bounds.

use std::borrow::Cow;
use std::time::Duration;

use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::ListResult;

use super::transport::{answer_asking_again, Unanswered};

/// Most entries (keys, and levels below a delimited level) one listing returns: a million
/// archived WAL files is 16 TB of WAL; each native backup adds about a thousand files.
pub const MAX_LISTED: usize = 10_000_000;
/// Empty pages in a row a listing accepts (S3 may send a few, never this many).
const EMPTY_PAGES: usize = 1000;
/// Entries asked for a page: S3's own page size (Azure's would be 5,000).
const PAGE_KEYS: usize = 1000;
/// Characters of a page token an error quotes (the server chose them; they may be many).
const TOKEN_SHOWN: usize = 64;

/// Why a listing stopped.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The server's answer (or its silence) to one page's request.
    #[error("{0}")]
    Page(String),
    /// Whether the server said the bucket or container is not there.
    #[error("{0}")]
    NotFound(String),
    /// More entries than the listing allows.
    #[error("more than {MAX_LISTED} entries: refused")]
    TooMany,
    /// The same page token twice in a row (its first characters).
    #[error("the server sent the same page token (starting {0:?}) twice in a row (a listing without end): refused")]
    Loop(String),
    /// Too many empty pages in a row.
    #[error("the server sent {EMPTY_PAGES} empty pages in a row (a listing without end): refused")]
    Empty,
}

/// What one listing asks for.
pub(crate) struct Listing<'a> {
    /// The level or subtree listed: a key prefix ending in `/`, or None for the whole bucket.
    pub prefix: Option<&'a str>,
    /// One level (keys directly in it and the levels below it) rather than every key below.
    pub delimited: bool,
    /// Stop after the first page of at most this many entries (a bucket's existence check).
    pub first_page_of: Option<usize>,
    pub io_timeout: Duration,
    pub max: usize,
}

/// Every page of `listing`, merged: its keys and (delimited) the levels below it.
pub(crate) async fn list(
    store: &dyn PaginatedListStore,
    listing: &Listing<'_>,
) -> Result<ListResult, ListError> {
    let mut all = ListResult {
        common_prefixes: Vec::new(),
        objects: Vec::new(),
    };
    let mut token: Option<String> = None;
    let mut empty = 0;
    loop {
        let page = answer_asking_again(listing.io_timeout, || {
            let options = PaginatedListOptions {
                delimiter: listing.delimited.then_some(Cow::Borrowed("/")),
                max_keys: Some(listing.first_page_of.unwrap_or(PAGE_KEYS)),
                page_token: token.clone(),
                ..Default::default()
            };
            store.list_paginated(listing.prefix, options)
        })
        .await
        .map_err(|e| match e {
            Unanswered::Failed(object_store::Error::NotFound { .. }) => {
                ListError::NotFound(e.to_string())
            }
            // The library reports a missing bucket or container as a plain HTTP 404.
            e if e.to_string().starts_with("HTTP 404") => ListError::NotFound(e.to_string()),
            e => ListError::Page(e.to_string()),
        })?;
        let got = page.result.common_prefixes.len() + page.result.objects.len();
        if all.common_prefixes.len() + all.objects.len() + got > listing.max {
            return Err(ListError::TooMany);
        }
        empty = if got == 0 { empty + 1 } else { 0 };
        if empty > EMPTY_PAGES {
            return Err(ListError::Empty);
        }
        all.common_prefixes.extend(page.result.common_prefixes);
        all.objects.extend(page.result.objects);
        // An empty token ends a listing, as in the library (some S3-compatible servers send
        // an empty NextContinuationToken on the last page).
        token = match page.page_token.filter(|t| !t.is_empty()) {
            Some(next) if listing.first_page_of.is_none() => {
                if token.as_ref() == Some(&next) {
                    return Err(ListError::Loop(next.chars().take(TOKEN_SHOWN).collect()));
                }
                Some(next)
            }
            _ => return Ok(all),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::list::PaginatedListResult;
    use object_store::path::Path;
    use object_store::ObjectMeta;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A server's paging as scripted: `keys_a_page` keys a page, then `next(n)` as the token of
    /// page n (None: the last page); the first `silent` requests are never answered.
    struct Pages {
        keys_a_page: usize,
        next: fn(usize) -> Option<String>,
        silent: usize,
        asked: AtomicUsize,
    }

    fn pages(keys_a_page: usize, next: fn(usize) -> Option<String>) -> Pages {
        Pages {
            keys_a_page,
            next,
            silent: 0,
            asked: AtomicUsize::new(0),
        }
    }

    #[async_trait::async_trait]
    impl PaginatedListStore for Pages {
        async fn list_paginated(
            &self,
            prefix: Option<&str>,
            opts: PaginatedListOptions,
        ) -> object_store::Result<PaginatedListResult> {
            assert_eq!(prefix, Some("7/wal/"));
            assert_eq!(opts.delimiter.as_deref(), Some("/"));
            assert!(
                matches!(opts.max_keys, Some(1 | 1000)),
                "{:?}",
                opts.max_keys
            );
            if self.asked.fetch_add(1, Ordering::SeqCst) < self.silent {
                std::future::pending::<()>().await;
            }
            let n = opts
                .page_token
                .as_deref()
                .map_or(0, |t| t.trim_start_matches('p').parse::<usize>().unwrap());
            let objects = (0..self.keys_a_page.min(opts.max_keys.unwrap_or(usize::MAX)))
                .map(|i| ObjectMeta {
                    location: Path::from(format!("7/wal/{n}-{i}")),
                    last_modified: chrono::Utc::now(),
                    size: 1,
                    e_tag: None,
                    version: None,
                })
                .collect();
            Ok(PaginatedListResult {
                result: ListResult {
                    common_prefixes: Vec::new(),
                    objects,
                },
                page_token: (self.next)(n),
            })
        }
    }

    fn listing(max: usize, first_page_of: Option<usize>) -> Listing<'static> {
        Listing {
            prefix: Some("7/wal/"),
            delimited: true,
            first_page_of,
            io_timeout: Duration::from_millis(200),
            max,
        }
    }

    fn run(pages: &Pages, l: &Listing<'_>) -> Result<ListResult, ListError> {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
            .block_on(list(pages, l))
    }

    #[test]
    fn every_page_is_read_and_no_more_than_the_limit() {
        let three = pages(4, |n| (n < 2).then(|| format!("p{}", n + 1)));
        assert_eq!(run(&three, &listing(100, None)).unwrap().objects.len(), 12);
        assert!(matches!(
            run(&three, &listing(11, None)),
            Err(ListError::TooMany)
        ));
        // A bucket's existence check reads one page of one key.
        assert_eq!(
            run(&three, &listing(100, Some(1))).unwrap().objects.len(),
            1
        );
    }

    #[test]
    fn a_server_that_pages_without_end_is_refused() {
        // The same token again and again.
        let stuck = pages(0, |_| Some("p1".into()));
        assert!(matches!(
            run(&stuck, &listing(100, None)),
            Err(ListError::Loop(t)) if t == "p1"
        ));
        // New tokens without end: empty pages run into their own limit, pages with keys into
        // the limit on entries.
        let empty = pages(0, |n| Some(format!("p{}", n + 1)));
        assert!(matches!(
            run(&empty, &listing(100, None)),
            Err(ListError::Empty)
        ));
        let endless = pages(1000, |n| Some(format!("p{}", n + 1)));
        assert!(matches!(
            run(&endless, &listing(50_000, None)),
            Err(ListError::TooMany)
        ));
    }

    #[test]
    fn an_empty_page_token_ends_the_listing() {
        let last = pages(3, |n| {
            Some(if n == 0 { "p1".into() } else { String::new() })
        });
        assert_eq!(run(&last, &listing(100, None)).unwrap().objects.len(), 6);
    }

    /// A page left unanswered is asked for again (three times), then the listing fails saying
    /// so.
    #[test]
    fn a_silent_page_is_asked_for_again() {
        let mut twice = pages(2, |n| (n == 0).then(|| "p1".into()));
        twice.silent = 2;
        assert_eq!(run(&twice, &listing(100, None)).unwrap().objects.len(), 4);
        assert_eq!(twice.asked.load(Ordering::SeqCst), 4);
        let mut gone = pages(2, |_| None);
        gone.silent = usize::MAX;
        let e = run(&gone, &listing(100, None)).err().unwrap().to_string();
        assert!(
            e.contains("no answer") && e.contains("4 times in a row"),
            "{e}"
        );
        assert_eq!(gone.asked.load(Ordering::SeqCst), 4);
    }
}
