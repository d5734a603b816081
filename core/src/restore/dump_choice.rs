//! Which logical backup `restore-logical` restores: the one named, or the newest dump of a
//! database that ended before the goal and is not known damaged; with a caution when that dump
//! was never verified, or failed verification only because the source host's copy is gone, and
//! the newest verified dump of the same database to fall back on.
//!
//! Unlike a physical restore, a dump has no WAL to replay past it: an older verified dump loses
//! everything after it, so the newest usable one is chosen and the operator is told what it
//! would cost to prefer a verified one (`--backup-id`), rather than the program choosing that
//! loss for them.

use std::collections::BTreeSet;

use crate::restore::offsite::{parse_time, Mirror, MirrorBackup, OffsiteRestoreError};

/// The chosen dump and what the operator should know before trusting it.
#[derive(Debug, Clone)]
pub struct DumpChoice<'m> {
    pub backup: &'m MirrorBackup,
    /// Why this dump is not known good, and which one is (`None` when it passed verification).
    pub caution: Option<String>,
}

/// The logical backup to restore: `backup_id`, or the newest logical backup of `database`
/// (of the only database with any, when not named) that ended before `before`, not known
/// damaged.
pub fn choose_dump<'m>(
    mirror: &'m Mirror,
    backup_id: Option<i64>,
    database: Option<&str>,
    before: Option<&str>,
) -> Result<DumpChoice<'m>, OffsiteRestoreError> {
    let no = |why: String| OffsiteRestoreError::NoBase(why);
    let before = match before {
        Some(t) => Some(parse_time(t).ok_or_else(|| {
            OffsiteRestoreError::Goal(format!(
                "{t:?} is not a time; write it as 2026-12-04 10:00:00+00"
            ))
        })?),
        None => None,
    };
    let ends_in_time = |b: &MirrorBackup| {
        let end = b.end_time.as_deref().and_then(parse_time)?;
        before.is_none_or(|t| end <= t).then_some(end)
    };
    if let Some(id) = backup_id {
        let b = mirror
            .backup(id)
            .ok_or_else(|| no(format!("backup {id} is not on the target")))?;
        if !b.is_dump() {
            return Err(OffsiteRestoreError::Goal(format!(
                "backup {id} is a {} backup; restore it with `restore`",
                b.backup_method
            )));
        }
        return Ok(DumpChoice {
            backup: b,
            caution: caution(mirror, b, &ends_in_time),
        });
    }
    let candidates: Vec<&MirrorBackup> = mirror
        .backups
        .iter()
        .filter(|b| b.is_dump())
        .filter(|b| !b.known_bad())
        .collect();
    let databases: BTreeSet<&str> = candidates
        .iter()
        .map(|b| b.database_name.as_str())
        .collect();
    let database = match database {
        Some(d) => d,
        None if databases.len() == 1 => databases.iter().next().copied().unwrap_or_default(),
        None if databases.is_empty() => {
            return Err(no("the target holds no logical backup of this cluster".into()))
        }
        None => {
            return Err(OffsiteRestoreError::Goal(format!(
                "the target holds logical backups of several databases ({}); name one with --source-database",
                databases.into_iter().collect::<Vec<_>>().join(", ")
            )))
        }
    };
    let b = newest(
        candidates
            .into_iter()
            .filter(|b| b.database_name == database),
        &ends_in_time,
    )
    .ok_or_else(|| {
        no(format!(
            "no logical backup of database \"{database}\" on the target ended before the goal"
        ))
    })?;
    Ok(DumpChoice {
        backup: b,
        caution: caution(mirror, b, &ends_in_time),
    })
}

/// The newest of `backups` that ended in time (by end, then id).
fn newest<'m>(
    backups: impl Iterator<Item = &'m MirrorBackup>,
    ends_in_time: &impl Fn(&MirrorBackup) -> Option<chrono::DateTime<chrono::Utc>>,
) -> Option<&'m MirrorBackup> {
    backups
        .filter_map(|b| Some((ends_in_time(b)?, b)))
        .max_by_key(|(end, b)| (*end, b.backup_id))
        .map(|(_, b)| b)
}

/// What to say of `b` when it has no passed verification: why, and the newest dump of its
/// database that passed (ended in time), to restore instead with `--backup-id`.
fn caution(
    mirror: &Mirror,
    b: &MirrorBackup,
    ends_in_time: &impl Fn(&MirrorBackup) -> Option<chrono::DateTime<chrono::Utc>>,
) -> Option<String> {
    let id = b.backup_id;
    let state = match b.verification.as_deref() {
        Some("passed") => return None,
        None => format!("backup {id} has never been verified"),
        Some("failed") if b.failed_only_locally() => format!(
            "backup {id}'s verification failed only because the source host's own copy is \
             missing there: this copy has not been verified"
        ),
        Some("failed") => format!("backup {id} failed verification"),
        Some(other) => format!("backup {id} has no passed verification ({other})"),
    };
    let database = &b.database_name;
    let verified = newest(
        mirror
            .backups
            .iter()
            .filter(|v| v.is_dump())
            .filter(|v| v.database_name == *database && v.backup_id != id)
            .filter(|v| v.verification.as_deref() == Some("passed")),
        ends_in_time,
    );
    Some(match verified {
        Some(v) => format!(
            "{state}; the newest verified dump of database \"{database}\" is backup {} \
             (ended {}): restore that one with --backup-id {}",
            v.backup_id,
            v.end_time.as_deref().unwrap_or("?"),
            v.backup_id
        ),
        None => format!(
            "{state}, and no other dump of database \"{database}\" on the target that ended \
             in time passed verification"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::offsite::FORMAT;

    fn backup(id: i64, method: &str, db: &str, end: &str) -> MirrorBackup {
        serde_json::from_value(serde_json::json!({
            "backup_id": id, "database_name": db, "backup_type": "full",
            "backup_method": method, "key": format!("1/{db}/{id}.dump.zst"),
            "sha256": "00".repeat(32), "end_time": end,
        }))
        .unwrap()
    }

    fn mirror(backups: Vec<MirrorBackup>) -> Mirror {
        let mut m: Mirror = serde_json::from_value(serde_json::json!({
            "format": FORMAT, "written_at": "2026-12-04 10:00:00+00",
            "system_identifier": 1,
        }))
        .unwrap();
        m.backups = backups;
        m
    }

    fn id(c: Result<DumpChoice, OffsiteRestoreError>) -> i64 {
        c.unwrap().backup.backup_id
    }

    /// The chosen backup's id and its caution.
    fn chosen(c: Result<DumpChoice, OffsiteRestoreError>) -> (i64, Option<String>) {
        let c = c.unwrap();
        (c.backup.backup_id, c.caution)
    }

    #[test]
    fn the_newest_dump_before_the_goal_is_chosen() {
        let mut m = mirror(vec![
            backup(1, "pg_dump", "shop", "2026-12-04 08:00:00+00"),
            backup(2, "native_physical", "postgres", "2026-12-04 08:30:00+00"),
            backup(3, "pg_dump_directory", "shop", "2026-12-04 09:00:00+00"),
            backup(4, "pg_dump", "shop", "2026-12-04 09:30:00+00"),
        ]);
        m.backups[3].verification = Some("failed".into());
        assert_eq!(id(choose_dump(&m, None, None, None)), 3);
        let before = Some("2026-12-04 08:45:00+00");
        assert_eq!(id(choose_dump(&m, None, Some("shop"), before)), 1);
        assert!(choose_dump(&m, None, Some("crm"), None).is_err());
        assert!(
            choose_dump(&m, Some(2), None, None).is_err(),
            "a physical backup"
        );
        assert!(choose_dump(&m, None, None, Some("yesterday")).is_err());
        // Named, a failed dump is restored (its bytes are still checked as they stream), but
        // not without saying so.
        let (named, caution) = chosen(choose_dump(&m, Some(4), None, None));
        assert_eq!(named, 4);
        let caution = caution.unwrap();
        assert!(
            caution.contains("backup 4 failed verification"),
            "{caution}"
        );
        m.backups
            .push(backup(5, "pg_dump", "crm", "2026-12-04 09:40:00+00"));
        let several = choose_dump(&m, None, None, None).unwrap_err().to_string();
        assert!(several.contains("crm, shop"), "{several}");
    }

    #[test]
    fn an_unverified_dump_is_chosen_with_the_newest_verified_one_named() {
        let mut m = mirror(vec![
            backup(1, "pg_dump", "shop", "2026-12-04 07:00:00+00"),
            backup(2, "pg_dump", "shop", "2026-12-04 08:00:00+00"),
            backup(3, "pg_dump", "crm", "2026-12-04 08:30:00+00"),
            backup(4, "pg_dump", "shop", "2026-12-04 09:00:00+00"),
        ]);
        for i in 0..3 {
            m.backups[i].verification = Some("passed".into());
        }
        // Never verified: the newest is still the one restored (an older dump loses what
        // came after it), and the verified one of the same database is named.
        let (b, caution) = chosen(choose_dump(&m, None, Some("shop"), None));
        assert_eq!(b, 4);
        let caution = caution.unwrap();
        assert!(
            caution.contains("backup 4 has never been verified"),
            "{caution}"
        );
        assert!(caution.contains("--backup-id 2"), "{caution}");
        assert!(!caution.contains("backup 3"), "another database: {caution}");
        // Failed only because the source host's copy is gone: usable, said to be unverified.
        m.backups[3].verification = Some("failed".into());
        m.backups[3].failed_locally = Some(true);
        let (b, caution) = chosen(choose_dump(&m, None, Some("shop"), None));
        assert_eq!(b, 4);
        let caution = caution.unwrap();
        assert!(
            caution.contains("only because the source host's"),
            "{caution}"
        );
        assert!(caution.contains("--backup-id 2"), "{caution}");
        // The verified one named must itself end before the goal.
        let before = Some("2026-12-04 07:30:00+00");
        m.backups[0].verification = None;
        let (b, caution) = chosen(choose_dump(&m, None, Some("shop"), before));
        assert_eq!(b, 1);
        let caution = caution.unwrap();
        assert!(caution.contains("no other dump"), "{caution}");
        // A verified choice needs no caution.
        assert_eq!(chosen(choose_dump(&m, None, Some("crm"), None)), (3, None));
        assert_eq!(chosen(choose_dump(&m, Some(2), None, None)), (2, None));
    }
}
