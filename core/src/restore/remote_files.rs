//! The stored files of a native chain on an off-site target, as a restore reads them: each
//! object's request started a little ahead of the thread that will write it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use super::materialize::{OpenStoredError, Opened, StoredFiles};
use crate::storage::{member_key, Ahead, Storage};

/// The stored files of a chain on a target: `<backup key>/<stored path>`.
pub(crate) struct RemoteHolders<'a> {
    storage: &'a dyn Storage,
    keys: HashMap<i64, String>,
    ahead: Mutex<Window>,
}

/// The objects a restore will fetch, in order, and those whose requests were started ahead of
/// the thread that writes them.  Each open starts the requests of the next `width` objects
/// after it, so up to twice as many requests as threads are in flight: a thread busy with a
/// large file leaves no gap in the stream of small ones, and the server always has the next
/// request.  Bounded: at most `width` objects beyond the furthest one opened.
#[derive(Default)]
struct Window {
    order: Vec<String>,
    position: HashMap<String, usize>,
    /// The first of `order` not started yet.
    next: usize,
    width: usize,
    started: HashMap<String, Ahead>,
}

impl Window {
    /// The object under `key` if it was started ahead, after starting those that follow it.
    fn take(&mut self, key: &str, storage: &dyn Storage) -> Option<Ahead> {
        if let Some(&at) = self.position.get(key) {
            let end = (at + 1 + self.width).min(self.order.len());
            while self.next < end {
                let k = &self.order[self.next];
                if let Some(a) = storage.get_ahead(k) {
                    self.started.insert(k.clone(), a);
                }
                self.next += 1;
            }
        }
        self.started.remove(key)
    }
}

impl<'a> RemoteHolders<'a> {
    /// The chain's backups on `storage`, by id, under their keys.
    pub(crate) fn new(storage: &'a dyn Storage, keys: HashMap<i64, String>) -> RemoteHolders<'a> {
        RemoteHolders {
            storage,
            keys,
            ahead: Mutex::default(),
        }
    }

    fn key(&self, holder: i64, stored: &str) -> Option<String> {
        Some(member_key(self.keys.get(&holder)?, Path::new(stored)))
    }
}

impl StoredFiles for RemoteHolders<'_> {
    fn open(&self, holder: i64, stored: &str) -> Option<Opened> {
        let key = self.key(holder, stored)?;
        let ahead = self
            .ahead
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(&key, self.storage);
        let opened = match ahead {
            // A request that failed early (the server busy then) is tried once more now.
            Some(started) => started().or_else(|_| self.storage.get(&key)),
            None => self.storage.get(&key),
        };
        Some(opened.map_err(OpenStoredError::from))
    }
    fn shown(&self, holder: i64, stored: &str) -> PathBuf {
        match self.key(holder, stored) {
            Some(k) => PathBuf::from(k),
            None => PathBuf::from(stored),
        }
    }
    fn will_open(&self, order: &[(i64, &str)], at_once: usize) {
        let order: Vec<String> = order
            .iter()
            .filter_map(|&(holder, stored)| self.key(holder, stored))
            .collect();
        let position = order
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect();
        *self.ahead.lock().unwrap_or_else(PoisonError::into_inner) = Window {
            order,
            position,
            next: 0,
            width: at_once.max(1),
            started: HashMap::new(),
        };
    }
}

#[cfg(test)]
#[path = "remote_files_tests.rs"]
mod tests;
