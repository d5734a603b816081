//! A download from an object store whose connection goes silent (a firewall that drops it
//! without a reset) is asked again, from the byte it reached, after the target's I/O timeout:
//! not after the 30-minute request timeout.  A server that answers nothing at all ends in an
//! error that names the object and the timeout; so does a listing whose page never comes.
//! Against s3rver, behind a relay that stalls.

use std::io::Read;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use backup_mgmt_core::storage::{self, s3, Storage};
use backup_mgmt_e2e::s3server::S3Server;
use backup_mgmt_e2e::stall::StallingRelay;

const MB: usize = 1 << 20;

/// `work`'s result, run on a thread; `None` if it took longer than `limit` (a stalled request
/// that nothing cut off).
fn within<T: Send + 'static>(
    limit: Duration,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(work());
    });
    rx.recv_timeout(limit).ok()
}

/// Reads `key` whole, within `limit`.
fn read_within(
    target: Arc<dyn Storage + Send + Sync>,
    key: &str,
    limit: Duration,
) -> Option<Result<Vec<u8>, String>> {
    let key = key.to_owned();
    within(limit, move || {
        target
            .get(&key)
            .map_err(|e| e.to_string())
            .and_then(|mut r| {
                let mut bytes = Vec::new();
                r.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
                Ok(bytes)
            })
    })
}

#[test]
fn a_stalled_download_is_asked_again_from_the_byte_it_reached() {
    let server = S3Server::start();
    server.create_bucket("stall");
    let relay = StallingRelay::start(server.port);
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::write(&creds, "S3RVER:S3RVER\n").unwrap();
    std::fs::set_permissions(&creds, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mut target = s3::open(
        &relay.endpoint(),
        "stall/pg",
        "us-east-1",
        &format!("file:{}", creds.display()),
        None,
        None,
    )
    .unwrap();
    target.io_timeout = Duration::from_secs(5);
    let target: Arc<dyn Storage + Send + Sync> = Arc::new(target);

    let data: Vec<u8> = (0..12 * MB)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2])
        .collect();
    let file = dir.path().join("big.dump");
    std::fs::write(&file, &data).unwrap();
    let key = storage::object_key(7, "shop", &file);
    target.put_file(&file, &key).unwrap();
    let limit = Duration::from_secs(60);
    // Listings go a page at a time through the same relay (s3rver lists no levels with a
    // delimiter: a whole prefix).
    assert!(target.list("7/").unwrap().contains(&key));

    // The reply goes silent after 3 MB: the download asks again from there and completes.
    relay.stall_after(3 * MB as i64);
    let got = read_within(target.clone(), &key, limit)
        .expect("the stalled download was never cut off")
        .expect("the download completes after the stall");
    assert_eq!(relay.stalls(), 1, "the relay never stalled the reply");
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the bytes differ after the resumed download");

    // A reader slower than the timeout is no stall: nothing is asked again.
    let mut reader = target.get(&key).unwrap();
    let mut slow = vec![0u8; MB];
    reader.read_exact(&mut slow).unwrap();
    let connections = relay.connections();
    std::thread::sleep(Duration::from_secs(6));
    reader.read_to_end(&mut slow).unwrap();
    assert!(slow == data, "the bytes differ after a slow read");
    assert_eq!(
        relay.connections(),
        connections,
        "a slow reader was taken for a stall"
    );

    // Silent again after 3 MB, and every request asked again too: the download gives up after
    // three attempts from where it stood, naming the byte and the timeout.
    relay.stall_for_good_after(3 * MB as i64);
    let failed = read_within(target.clone(), &key, limit)
        .expect("the silent server held the download")
        .expect_err("a download that never gets further");
    assert!(
        failed.contains("bucket stall/")
            && failed.contains("asked again from byte")
            && failed.contains("io_timeout"),
        "{failed}"
    );

    // A server that answers nothing: an error naming the object and the timeout, in seconds
    // rather than half an hour.
    relay.stall_always();
    let failed = read_within(target.clone(), &key, limit)
        .expect("the silent server held the download")
        .expect_err("a server that answers nothing");
    assert!(
        failed.contains("bucket stall/")
            && failed.contains("no answer in 5 s")
            && failed.contains("times in a row"),
        "{failed}"
    );

    // A listing whose page never comes, and the check that the bucket is there: the same
    // timeout, per page.
    for check in [
        (|t: &dyn Storage| t.children("").map(|_| ())) as fn(&dyn Storage) -> _,
        |t| t.prepare(),
    ] {
        let t = target.clone();
        let failed = within(limit, move || check(&*t).map_err(|e| e.to_string()))
            .expect("the silent server held the listing")
            .expect_err("a listing the server never answers");
        assert!(failed.contains("no answer in 5 s"), "{failed}");
    }
}
