//! A copy on an object store is never replaced by different content: against s3rver, an S3
//! server that checks signatures (s3s-fs) and Azurite, through the core crate's targets as the
//! worker and the restore program open them.  Copying the same file again (a copy interrupted
//! after it landed, a backup sent again) succeeds without changing the object; a different file
//! under the same key, small (one PUT, its sha256 stored with it) or large (a multipart upload,
//! no stored sha256), is refused with an error naming the key, and the object keeps its bytes.

use std::io::Read;
use std::path::Path;

use backup_mgmt_core::storage::{self, azure, etag, s3, Storage, StorageError};
use backup_mgmt_e2e::azurite::{self, Azurite};
use backup_mgmt_e2e::s3server::S3Server;

const MB: usize = 1 << 20;

fn content(target: &dyn Storage, key: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    target.get(key).unwrap().read_to_end(&mut bytes).unwrap();
    bytes
}

/// Bytes that differ from seed to seed everywhere (so that no two parts are alike).
fn bytes(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

/// A credentials file as the targets accept one: readable by its owner alone.
fn key_file(dir: &Path, text: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("credentials");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!("file:{}", path.display())
}

/// `target` and `other_parts` name the same place, uploading in parts of 5 and 6 MB.
fn never_replaced(target: &dyn Storage, other_parts: &dyn Storage, dir: &Path, what: &str) {
    let wal = storage::wal_key(7, "000000010000000000000003.zst");
    let big = storage::object_key(7, "shop", Path::new("/b/shop_full.dump"));
    for (key, len) in [(wal.as_str(), 40_000), (big.as_str(), 11 * MB + 3)] {
        let first = dir.join(format!("first-{len}"));
        std::fs::write(&first, bytes(len, 1)).unwrap();
        let copied = target.put_file(&first, key).unwrap();
        assert_eq!(copied.size, len as u64);
        // The same file again: success, the same copy.
        let again = target
            .put_file(&first, key)
            .unwrap_or_else(|e| panic!("{what}: the same file again under {key}: {e}"));
        assert_eq!(again, copied, "{what}");
        // The same bytes from a target that cuts other parts (another ETag for the large
        // object): read back, found the same, success.
        let elsewhere = other_parts
            .put_file(&first, key)
            .unwrap_or_else(|e| panic!("{what}: the same file in other parts under {key}: {e}"));
        assert_eq!(elsewhere, copied, "{what}");
        // Different bytes of the same length (one byte changed), and a shorter file.
        let mut changed = bytes(len, 1);
        changed[len / 2] ^= 0xff;
        let second = dir.join(format!("second-{len}"));
        for other in [changed, bytes(len / 2, 2)] {
            std::fs::write(&second, &other).unwrap();
            match target.put_file(&second, key) {
                Err(StorageError::Occupied {
                    key: shown, ours, ..
                }) => {
                    assert!(shown.ends_with(key), "{what}: {shown}");
                    assert_ne!(ours, copied.sha256, "{what}");
                }
                other => panic!("{what}: a different file under {key} was not refused: {other:?}"),
            }
            assert_eq!(
                content(target, key),
                bytes(len, 1),
                "{what}: the object under {key} changed"
            );
        }
    }
}

/// `never_replaced` against an S3 server, with `credentials` (`ACCESS:SECRET`).
fn s3_never_replaced(server: S3Server, credentials: &str, what: &str) {
    server.create_bucket("keep");
    let dir = tempfile::tempdir().unwrap();
    let creds = key_file(dir.path(), credentials);
    let open = |part| {
        s3::open(
            &server.endpoint(),
            "keep/pg",
            "us-east-1",
            &creds,
            Some(part),
            None,
        )
        .unwrap()
    };
    never_replaced(&open(5 * MB), &open(6 * MB), dir.path(), what);
}

#[test]
fn s3rver_copies_are_never_replaced() {
    s3_never_replaced(S3Server::start(), "S3RVER:S3RVER\n", "s3rver");
}

#[test]
fn signature_checking_s3_copies_are_never_replaced() {
    s3_never_replaced(
        S3Server::start_checking_signatures("bmtest", "s3s-secret-4b7e1d"),
        "bmtest:s3s-secret-4b7e1d\n",
        "s3s-fs",
    );
}

/// A multipart upload computes only the ETag form its store gave the last one (see
/// `storage::etag`): s3rver gives the whole object's MD5, s3s-fs `md5(part MD5s)-N`.  Two
/// servers with a bucket of the same name, uploaded to from one process, keep their forms apart;
/// a store whose form changed (stood for by remembering the other server's form) has its next
/// upload checked again in every form, and still checked right.
#[test]
fn an_etag_of_another_form_than_the_stores_last_is_still_checked() {
    let plain = S3Server::start();
    let checking = S3Server::start_checking_signatures("bmforms", "s3s-secret-9c1a");
    let dir = tempfile::tempdir().unwrap();
    let mut targets = Vec::new();
    for (server, credentials) in [
        (&plain, "S3RVER:S3RVER\n"),
        (&checking, "bmforms:s3s-secret-9c1a\n"),
    ] {
        server.create_bucket("forms");
        let sub = dir.path().join(format!("k{}", targets.len()));
        std::fs::create_dir(&sub).unwrap();
        let creds = key_file(&sub, credentials);
        let target = s3::open(
            &server.endpoint(),
            "forms/pg",
            "us-east-1",
            &creds,
            Some(5 * MB),
            None,
        )
        .unwrap();
        targets.push(target);
    }
    assert_ne!(targets[0].store_id, targets[1].store_id);
    let forms = [etag::Form::WholeMd5, etag::Form::PartMd5s];
    // An ETag of each form, to remember the wrong one.
    let of_form = [
        "0123456789abcdef0123456789abcdef",
        "0123456789abcdef0123456789abcdef-3",
    ];
    let upload = |i: usize, seed: u8| {
        let file = dir.path().join(format!("file-{seed}"));
        std::fs::write(&file, bytes(11 * MB + 7, seed)).unwrap();
        let key = storage::object_key(7, "shop", Path::new(&format!("/b/{seed}.dump")));
        let copied = targets[i]
            .put_file(&file, &key)
            .unwrap_or_else(|e| panic!("upload {seed} to server {i}: {e}"));
        assert_eq!(copied.size, (11 * MB + 7) as u64);
        assert_eq!(content(&targets[i], &key), bytes(11 * MB + 7, seed));
        assert_eq!(
            etag::learned(&targets[i].store_id),
            Some(forms[i]),
            "upload {seed}"
        );
    };
    // Each server's first upload computes every form and learns its own.
    upload(0, 1);
    upload(1, 2);
    for (i, target) in targets.iter().enumerate() {
        assert_eq!(etag::learned(&target.store_id), Some(forms[i]));
        assert_eq!(etag::rechecks(&target.store_id), 0, "server {i}");
    }
    // Uploads in turn: each server's form stays its own, none needs a second check.
    upload(0, 3);
    upload(1, 4);
    // A store whose form changed since: checked again in every form, then its form relearned.
    for (i, seed) in [(0, 5), (1, 6)] {
        etag::learn(&targets[i].store_id, of_form[1 - i]);
        assert_eq!(etag::learned(&targets[i].store_id), Some(forms[1 - i]));
        upload(i, seed);
        assert_eq!(etag::rechecks(&targets[i].store_id), 1, "server {i}");
    }
    // The same servers again: their forms are the ones remembered, computed alone.
    upload(0, 7);
    upload(1, 8);
    for (i, target) in targets.iter().enumerate() {
        assert_eq!(etag::rechecks(&target.store_id), 1, "server {i}");
    }
}

#[test]
fn azure_copies_are_never_replaced() {
    let server = Azurite::start();
    server.create_container("keep");
    let dir = tempfile::tempdir().unwrap();
    let creds = key_file(
        dir.path(),
        &format!("{}:{}\n", azurite::ACCOUNT, azurite::KEY),
    );
    let open = |part| azure::open(&server.endpoint(), "keep/pg", &creds, Some(part), None).unwrap();
    never_replaced(&open(5 * MB), &open(6 * MB), dir.path(), "Azurite");
}
