//! Timeline history files fetched from an off-site target: read (checked against the
//! mirror's sha256, within size limits) to know the path of timelines a restore follows
//! (`timeline::path_for`), and checked to be servable where recovery will ask `wal-fetch` for
//! them when it ends.

use super::fetch::{read_checked, FetchError};
use super::offsite::{Mirror, MirrorWal};
use crate::checksum::is_sha256_hex;
use crate::storage::{Storage, StorageError};
use crate::timeline::{
    decompressed_history, history_file_name, history_of, Histories, HistoryUnusable,
    HISTORIES_LIMIT, HISTORY_LIMIT,
};

/// The timeline history files the mirror lists (only `timeline`'s, when given), newest first,
/// read from the target, checked against the mirror's sha256 and parsed; one that is not what
/// the mirror says, too large or malformed is kept as the reason, so that a damaged history of
/// an unrelated timeline stands in no restore's way.  Names are taken only as PostgreSQL asks
/// for them (`0000000A.history`), each from the mirror's entry that `wal-fetch` would serve.
/// Err: the target could not be read.
pub fn read_histories(
    storage: &dyn Storage,
    mirror: &Mirror,
    timeline: Option<u32>,
) -> Result<Histories, FetchError> {
    let listed: std::collections::BTreeSet<u32> = mirror
        .wal_files
        .iter()
        .filter_map(|w| {
            let tli = u32::from_str_radix(w.name.strip_suffix(".history")?, 16).ok()?;
            (tli > 0 && w.name == history_file_name(tli)).then_some(tli)
        })
        .filter(|t| timeline.is_none_or(|only| *t == only))
        .collect();
    let mut out = Histories::new();
    // Counted in bytes as stored and as decompressed: a hostile target cannot make this hold
    // more than the budget, however it lists and compresses.
    let mut budget = HISTORIES_LIMIT;
    for tli in listed.into_iter().rev() {
        let Some(w) = mirror.wal_file(&history_file_name(tli)) else {
            continue;
        };
        let history = match read_history(storage, w, &mut budget) {
            Ok(bytes) => history_of(tli, bytes).map_err(|why| HistoryUnusable::NotAHistory {
                file: w.key.clone(),
                why,
            }),
            // The target unreachable (or the mirror hostile), not the file damaged: the restore
            // fails as such.
            Err(e) if not_the_files_failure(&e) => return Err(e),
            Err(e) => Err(HistoryUnusable::NotServed(e.to_string())),
        };
        out.insert(tli, history);
    }
    Ok(out)
}

/// Whether reading a history file failed for the target's sake (down, refusing the
/// credentials, an I/O error) or for the mirror's (a key leaving the target), not for the
/// file's: what the target holds as something else than the mirror says (no regular file,
/// other bytes) is that file's damage.
fn not_the_files_failure(e: &FetchError) -> bool {
    matches!(
        e,
        FetchError::Io(_)
            | FetchError::Storage(
                StorageError::Io(_)
                    | StorageError::Http(_)
                    | StorageError::Credential { .. }
                    | StorageError::Config(_)
            )
    )
}

/// One history file's bytes as `wal-fetch` would serve them, within `budget` (which it
/// reduces).
fn read_history(
    storage: &dyn Storage,
    w: &MirrorWal,
    budget: &mut u64,
) -> Result<Vec<u8>, FetchError> {
    let bad = |why: String| FetchError::Bad(format!("{}: {why}", w.key));
    if !is_sha256_hex(&w.sha256) {
        return Err(bad("the mirror's sha256 of it is malformed".into()));
    }
    let size = u64::try_from(w.size).unwrap_or(u64::MAX);
    if size > HISTORY_LIMIT {
        return Err(bad(format!(
            "{size} bytes, more than a history file ({HISTORY_LIMIT})"
        )));
    }
    if size > *budget {
        return Err(bad(format!(
            "not read: the history files listed exceed {HISTORIES_LIMIT} bytes"
        )));
    }
    // Never more than the limits, whatever size the mirror gives (the sha256 is the check).
    let stored = read_checked(storage, &w.key, &w.sha256, HISTORY_LIMIT.min(*budget) + 1)?;
    *budget = budget.saturating_sub(stored.len() as u64);
    let compressed = w.key.ends_with(".zst");
    let bytes = decompressed_history(stored, compressed, HISTORY_LIMIT.min(*budget))
        .map_err(|why| bad(why.to_string()))?;
    if compressed {
        *budget = budget.saturating_sub(bytes.len() as u64);
    }
    Ok(bytes)
}

/// Checks that the history files PostgreSQL will ask `wal-fetch` for when recovery on
/// `timeline` ends (`timeline + 1`, `+ 2`, … while the mirror lists them, to find a free
/// timeline for the promotion) can be served: one that cannot would stop the server after the
/// whole replay, since `wal-fetch` fails fatally on a file that is not what the mirror says.
pub fn check_histories_above(
    storage: &dyn Storage,
    mirror: &Mirror,
    timeline: u32,
) -> Result<(), FetchError> {
    let mut budget = HISTORIES_LIMIT;
    let mut next = timeline.saturating_add(1);
    while let Some(w) = mirror.wal_file(&history_file_name(next)) {
        match read_history(storage, w, &mut budget) {
            Ok(_) => {}
            // The target unreachable (or the mirror hostile), not the file damaged: the restore
            // fails as such (the program's exit 1, or 3 for a key leaving the target).
            Err(e) if not_the_files_failure(&e) => return Err(e),
            Err(e) => {
                return Err(FetchError::Bad(format!(
                    "recovery ends by asking for the history file of timeline {next}, which \
                     cannot be served: {e}"
                )))
            }
        }
        next = match next.checked_add(1) {
            Some(n) => n,
            None => break,
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::hex;
    use crate::restore::fetch::tests::mirror_with;
    use crate::storage::filesystem::FilesystemTarget;
    use crate::storage::StorageError;
    use crate::timeline::Switch;
    use crate::wal;
    use sha2::{Digest, Sha256};

    /// History files are read from the target as the mirror lists them (zstd or not), each
    /// checked; one that is damaged, not text, malformed or outside the target is kept as its
    /// reason, and stands in no other timeline's way.
    #[test]
    fn history_files_are_read_checked_and_failures_kept_apart() {
        let tmp = tempfile::tempdir().unwrap();
        let target = FilesystemTarget {
            dir: tmp.path().join("t"),
            rate: None,
        };
        std::fs::create_dir_all(tmp.path().join("t/7/.wal")).unwrap();
        std::fs::write(tmp.path().join("secret.history"), b"1\t0/5000000\tx\n").unwrap();
        let mut m = mirror_with("000000010000000000000003", "7/.wal/x", "a".repeat(64));
        let add = |m: &mut Mirror, tli: u32, key: &str, stored: &[u8], sha: Option<String>| {
            std::fs::write(tmp.path().join("t").join(key), stored).unwrap_or(());
            m.wal_files.push(MirrorWal {
                name: format!("{tli:08X}.history"),
                key: key.into(),
                size: stored.len() as i64,
                sha256: sha.unwrap_or_else(|| hex(&Sha256::digest(stored))),
                archived_at: "2026-12-04T10:00:00+00:00".into(),
            });
        };
        let two =
            zstd::encode_all(&b"1\t0/5000000\tno recovery target specified\n"[..], 3).unwrap();
        add(&mut m, 2, "7/.wal/00000002.history.zst", &two, None);
        add(
            &mut m,
            3,
            "7/.wal/00000003.history",
            b"1\t0/5000000\tx\n2\t0/7000000\tx\n",
            None,
        );
        add(
            &mut m,
            4,
            "7/.wal/00000004.history",
            b"3\t0/9000000\tx\n",
            Some("0".repeat(64)),
        );
        add(
            &mut m,
            5,
            "7/.wal/00000005.history",
            b"9\t0/9000000\tx\n",
            None,
        );
        add(&mut m, 6, "7/.wal/00000006.history", &[0xff, 0xfe], None);
        assert_eq!(read_histories(&target, &m, Some(3)).unwrap().len(), 1);
        let hs = read_histories(&target, &m, None).unwrap();
        assert_eq!(hs.len(), 5, "{hs:?}");
        assert_eq!(
            hs[&2],
            Ok(vec![Switch {
                parent: 1,
                end: wal::Lsn(0x500_0000)
            }])
        );
        assert_eq!(hs[&3].as_ref().map(Vec::len), Ok(2));
        let why = |t: u32| hs[&t].as_ref().unwrap_err().to_string();
        assert!(
            matches!(&hs[&4], Err(HistoryUnusable::NotServed(_))) && why(4).contains("sha256"),
            "{hs:?}"
        );
        assert!(
            matches!(
                &hs[&5],
                Err(HistoryUnusable::NotAHistory {
                    why: crate::timeline::HistoryError::Malformed(_),
                    ..
                })
            ) && why(5).contains("not an ancestor"),
            "{hs:?}"
        );
        assert!(why(6).contains("not text"), "{hs:?}");
        // What recovery asks for when it ends (the next timelines' histories, to find a free
        // one) must be servable, or the server stops after the whole replay; whether they
        // parse does not matter there.
        let e = check_histories_above(&target, &m, 2)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("history file of timeline 4") && e.contains("sha256"),
            "{e}"
        );
        check_histories_above(&target, &m, 4).unwrap();
        check_histories_above(&target, &m, 9).unwrap();
        // A key leaving the target is no damage to pass over: the mirror is hostile.
        add(
            &mut m,
            0x10,
            "../secret.history",
            b"1\t0/5000000\tx\n",
            None,
        );
        assert!(matches!(
            read_histories(&target, &m, None),
            Err(FetchError::Storage(StorageError::Config(_)))
        ));
        // A target that cannot be read is no damaged history: the failure is the target's
        // (the program's exit 1), not "cannot be served" (its exit 3).
        let gone = FilesystemTarget {
            dir: tmp.path().join("unmounted"),
            rate: None,
        };
        let e = check_histories_above(&gone, &m, 2).unwrap_err();
        assert!(
            matches!(e, FetchError::Storage(StorageError::Io(_))),
            "{e:?}"
        );
    }
}
