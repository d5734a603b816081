use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::storage::filesystem::FilesystemTarget;
use crate::storage::{Copied, StorageError};
use std::io::Read;

/// A directory target whose `get_ahead` opens the object at once (as an object store sends the
/// request) and counts what was started, and when.
struct Counting {
    dir: FilesystemTarget,
    started: Mutex<Vec<String>>,
    plain_gets: AtomicUsize,
}

impl Storage for Counting {
    fn put_opened(
        &self,
        file: std::fs::File,
        shown: &Path,
        key: &str,
    ) -> Result<Copied, StorageError> {
        self.dir.put_opened(file, shown, key)
    }
    fn replace(&self, bytes: &[u8], key: &str) -> Result<(), StorageError> {
        self.dir.replace(bytes, key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.dir.list(prefix)
    }
    fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.dir.delete(key)
    }
    fn delete_one(&self, key: &str) -> Result<(), StorageError> {
        self.dir.delete_one(key)
    }
    fn get(&self, key: &str) -> Result<Box<dyn Read + Send>, StorageError> {
        self.plain_gets.fetch_add(1, Ordering::Relaxed);
        self.dir.get(key)
    }
    fn get_ahead(&self, key: &str) -> Option<Ahead> {
        self.started.lock().unwrap().push(key.to_owned());
        let opened = self.dir.get(key);
        Some(Box::new(move || opened))
    }
}

/// What an opened object holds, or why it could not be opened (as a report would say it).
fn read(r: Option<Opened>) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    r.expect("a known holder")
        .map_err(|e| e.to_string())?
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

#[test]
fn objects_are_requested_a_bounded_window_ahead_and_each_comes_out_as_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = Counting {
        dir: FilesystemTarget {
            dir: tmp.path().to_path_buf(),
            rate: None,
        },
        started: Mutex::new(Vec::new()),
        plain_gets: AtomicUsize::new(0),
    };
    let names: Vec<String> = (0..20).map(|i| format!("base/5/{i}.zst")).collect();
    for (i, n) in names.iter().enumerate() {
        let path = tmp.path().join("7/postgres/b1.native").join(n);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("object {i}")).unwrap();
    }
    let holders = RemoteHolders::new(
        &storage,
        HashMap::from([(1, "7/postgres/b1.native".into())]),
    );
    // Before the order is known, every object is fetched when asked.
    assert_eq!(read(holders.open(1, &names[0])).unwrap(), b"object 0");
    assert_eq!(storage.plain_gets.load(Ordering::Relaxed), 1);

    let mut order: Vec<(i64, &str)> = names.iter().map(|n| (1, n.as_str())).collect();
    order.push((1, "missing.zst"));
    holders.will_open(&order, 3);
    // Opened in order (as the restore's threads take them): when object i is opened, the
    // requests of objects up to i + 3 have been started, none further.
    for (i, n) in names.iter().enumerate() {
        assert_eq!(
            read(holders.open(1, n)).unwrap(),
            format!("object {i}").as_bytes()
        );
        let started = storage.started.lock().unwrap().clone();
        assert_eq!(started.len(), (i + 4).min(order.len()), "after object {i}");
        let expected: Vec<String> = order[..started.len()]
            .iter()
            .map(|(_, s)| format!("7/postgres/b1.native/{s}"))
            .collect();
        assert_eq!(started, expected);
    }
    assert_eq!(storage.plain_gets.load(Ordering::Relaxed), 1);
    // An object whose early request failed is asked for once more when it is opened; not
    // there, it fails, naming it.
    let e = read(holders.open(1, "missing.zst")).unwrap_err();
    assert!(e.contains("missing.zst"), "{e}");
    assert_eq!(storage.plain_gets.load(Ordering::Relaxed), 2);
    // Opening one a second time, or one outside the order, fetches it again.
    assert_eq!(read(holders.open(1, &names[4])).unwrap(), b"object 4");
    assert_eq!(storage.plain_gets.load(Ordering::Relaxed), 3);
    // A holder outside the chain is not available.
    assert!(holders.open(2, &names[0]).is_none());
}
