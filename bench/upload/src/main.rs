//! `upload ENDPOINT BUCKET/PREFIX CREDENTIALS_REF FILE KEY`: uploads FILE as KEY through the
//! core crate's S3 target (multipart, parts in flight, every landed object checked) and prints
//! the seconds it took.  Exits non-zero on any failure.
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
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
