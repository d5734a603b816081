use super::*;
use crate::checksum::hex;
use sha2::{Digest, Sha256};

/// A download that breaks off part-way is reported as the read error it is, not as a
/// backup whose sha256 differs (which would be an integrity failure, exit code 3).
#[test]
fn a_broken_download_is_not_called_damage() {
    struct Breaks(std::io::Cursor<Vec<u8>>);
    impl std::io::Read for Breaks {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.read(buf)? {
                0 => Err(std::io::Error::other("connection reset by the target")),
                n => Ok(n),
            }
        }
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    fs::create_dir(&dir).unwrap();
    // Half of a tar's worth of zeros, then the connection goes.
    let input = Box::new(Breaks(std::io::Cursor::new(vec![0u8; 10240])));
    let e = extract_stream(input, false, "0".repeat(64), &dir, &Progress::default()).unwrap_err();
    assert!(
        matches!(&e, ScratchError::Source(m) if m.contains("connection reset")),
        "{e}"
    );
}

/// A chain member is extracted only as the bytes recorded: a damaged one (here a flipped
/// byte inside its zstd frame, which also breaks decompression) is reported as damaged, by
/// its sha256, not as whatever tar or zstd made of it.
#[test]
fn a_member_is_extracted_only_as_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let data: Vec<u8> = (0..400_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(src.join("f"), &data).unwrap();
    let tar = tmp.path().join("m.tar");
    assert!(std::process::Command::new("/bin/tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&src)
        .arg("f")
        .status()
        .unwrap()
        .success());
    let z = zstd::encode_all(&fs::read(&tar).unwrap()[..], 3).unwrap();
    let stored = tmp.path().join("m.tar.zst");
    fs::write(&stored, &z).unwrap();
    let sha = hex(&Sha256::digest(&z));
    let progress = Progress::default();

    let out = tmp.path().join("ok");
    fs::create_dir(&out).unwrap();
    let file = File::open(&stored).unwrap();
    extract(file, true, Some(sha.clone()), &out, &progress).unwrap();
    assert_eq!(fs::read(out.join("f")).unwrap(), data);

    let mut bad = z.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x20;
    fs::write(&stored, &bad).unwrap();
    let out = tmp.path().join("bad");
    fs::create_dir(&out).unwrap();
    let file = File::open(&stored).unwrap();
    let err = extract(file, true, Some(sha), &out, &progress).unwrap_err();
    assert!(
        matches!(&err, ScratchError::Damaged(m) if m.contains(&hex(&Sha256::digest(&bad)))),
        "{err}"
    );
}
