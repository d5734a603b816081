//! `upload ENDPOINT BUCKET/PREFIX CREDENTIALS_REF FILE KEY`: uploads FILE as KEY through the
//! core crate's S3 target (multipart, parts in flight, every landed object checked) and prints
//! the seconds it took.  `upload --dir TARGET_DIR BACKUP KEY`: copies a backup (a file or a
//! directory: a native backup, a directory-format dump) to a filesystem target with
//! `storage::put_backup`, as the worker does, and prints the seconds.  Exits non-zero on any
//! failure.
use std::path::Path;
use std::time::Instant;

use backup_mgmt_core::storage::Storage;

/// The core crate's S3 target: `s3::open` now, `S3Target::new` before object_store (the
/// baseline the benchmark builds with `--features old`).
#[cfg(not(feature = "old"))]
use backup_mgmt_core::storage::s3::open;
#[cfg(feature = "old")]
use backup_mgmt_core::storage::s3::S3Target;
#[cfg(feature = "old")]
fn open(
    endpoint: &str,
    path: &str,
    region: &str,
    credentials: &str,
    part_size: Option<usize>,
    ca: Option<&Path>,
) -> Result<S3Target, backup_mgmt_core::storage::StorageError> {
    S3Target::new(endpoint, path, region, credentials, part_size, ca)
}

/// `--dir TARGET_DIR BACKUP KEY` (bench/offsite_native.sh).
fn to_directory(target_dir: &str, backup: &str, key: &str) {
    let target = backup_mgmt_core::storage::filesystem::FilesystemTarget {
        dir: target_dir.into(),
        rate: None,
    };
    let start = Instant::now();
    match backup_mgmt_core::storage::put_backup(&target, Path::new(backup), key) {
        Ok(_) => println!("{:.3}", start.elapsed().as_secs_f64()),
        Err(e) => {
            eprintln!("upload: {e}");
            std::process::exit(1);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, target_dir, backup, key] = args.as_slice() {
        if flag == "--dir" {
            return to_directory(target_dir, backup, key);
        }
    }
    let [_, endpoint, path, credentials, file, key] = args.as_slice() else {
        eprintln!("usage: upload ENDPOINT BUCKET/PREFIX CREDENTIALS_REF FILE KEY");
        std::process::exit(2);
    };
    let target = match open(endpoint, path, "us-east-1", credentials, None, None) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("upload: {e}");
            std::process::exit(1);
        }
    };
    let start = Instant::now();
    match target.put_file(Path::new(file), key) {
        Ok(_) => println!("{:.3}", start.elapsed().as_secs_f64()),
        Err(e) => {
            eprintln!("upload: {e}");
            std::process::exit(1);
        }
    }
}
