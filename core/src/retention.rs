//! Retention: which backups a policy keeps, and why; which it lets expire.
//!
//! The selection is plain Rust over a list of backups (fast `#[test]`s, no server).  A policy
//! keeps backups by grandfather-father-son calendar rules, by count, and by a recovery window;
//! then safety rules that no policy can override keep more:
//!
//! - the newest verified backup of each database;
//! - every base backup needed to restore any point inside the recovery window (the newest one
//!   that ended at or before the window's start, and every newer one);
//! - pinned backups (`pin_backup`, a legal hold), until their `keep_until` when they have one;
//! - every ancestor (incremental chain) of a kept backup.
//!
//! Calendar rules count calendar periods back from now, in the policy's time zone: `daily = 30`
//! keeps the newest backup of each of the last 30 days (today included) that has one, `weekly`
//! ISO weeks, `monthly` calendar months, `yearly` calendar years.  A backup is placed in the
//! period of its end time in that zone, so a backup at 00:30 on a DST-change day belongs to that
//! day, and one at 23:59 on 31 December to the old year.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use chrono_tz::Tz;

/// A retention policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub name: String,
    /// Keep the newest N backups.
    pub keep_last: Option<u32>,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    pub keep_yearly: u32,
    /// Keep what is needed to restore any point this far back.
    pub recovery_window: Option<Duration>,
    pub time_zone: Tz,
}

/// What the selection needs to know of one completed backup.
#[derive(Debug, Clone, PartialEq)]
pub struct Backup {
    pub id: i64,
    pub database: String,
    pub end_time: DateTime<Utc>,
    /// Restores a whole cluster to a point with archived WAL (pg_basebackup, native full/incr).
    pub is_base: bool,
    /// It and every ancestor passed verification (their verdicts in the catalog).  [`select`]
    /// looks at it only to find each database's newest verified backup (in
    /// [`newest_first_by_database`] order), so a caller may leave it `false` for the backups
    /// behind that one instead of looking up every backup's verification.
    pub verified: bool,
    pub pinned: bool,
    pub pin_reason: Option<String>,
    pub keep_until: Option<DateTime<Utc>>,
    pub parent: Option<i64>,
    /// Governed by the policy being applied (e.g. the job's own backups).  Others are only
    /// looked at by the safety rules, and never expired here.
    pub in_scope: bool,
}

/// The verdict on one backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub id: i64,
    pub keep: bool,
    /// Every rule that keeps it, or why it expires.
    pub reasons: Vec<String>,
}

/// A calendar period's key: days, ISO weeks, months or years, increasing with time.
type PeriodKey = fn(NaiveDate) -> i64;

/// Period keys for the calendar rules.
fn day(d: NaiveDate) -> i64 {
    i64::from(d.num_days_from_ce())
}
fn iso_week(d: NaiveDate) -> i64 {
    let w = d.iso_week();
    i64::from(w.year()) * 100 + i64::from(w.week())
}
fn month(d: NaiveDate) -> i64 {
    i64::from(d.year()) * 12 + i64::from(d.month0())
}
fn year(d: NaiveDate) -> i64 {
    i64::from(d.year())
}

/// The first period key still inside a window of `n` periods ending with `now`'s.
fn window_start(kind: &str, today: NaiveDate, n: u32) -> i64 {
    let n = i64::from(n);
    match kind {
        "daily" => day(today) - n + 1,
        "weekly" => {
            let monday = today - Duration::days(i64::from(today.weekday().num_days_from_monday()));
            iso_week(monday - Duration::weeks(n - 1))
        }
        "monthly" => month(today) - n + 1,
        _ => year(today) - n + 1,
    }
}

fn label(kind: &str, d: NaiveDate) -> String {
    match kind {
        "daily" => format!("daily {}", d.format("%Y-%m-%d")),
        "weekly" => {
            let w = d.iso_week();
            format!("weekly {}-W{:02}", w.year(), w.week())
        }
        "monthly" => format!("monthly {}", d.format("%Y-%m")),
        _ => format!("yearly {}", d.year()),
    }
}

/// Applies `policy` to `backups` at `now`.  Returns one verdict per backup in scope, newest
/// first.  Backups out of scope are never expired, but they count for the safety rules.
/// The newest-first order of [`select`]: latest end time first, then the higher id.
fn newest_first(backups: &[Backup]) -> Vec<&Backup> {
    let mut sorted: Vec<&Backup> = backups.iter().collect();
    sorted.sort_by(|a, b| b.end_time.cmp(&a.end_time).then(b.id.cmp(&a.id)));
    sorted
}

/// Each database's backups (ids), newest first: the order in which [`select`] looks for the
/// newest verified backup of each database, so a caller can look up verifications in that order
/// and stop at the first that passed.
pub fn newest_first_by_database(backups: &[Backup]) -> BTreeMap<&str, Vec<i64>> {
    let mut out: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for b in newest_first(backups) {
        out.entry(b.database.as_str()).or_default().push(b.id);
    }
    out
}

pub fn select(policy: &Policy, backups: &[Backup], now: DateTime<Utc>) -> Vec<Verdict> {
    let sorted = newest_first(backups);
    let mut reasons: HashMap<i64, Vec<String>> = HashMap::new();
    fn keep_in(reasons: &mut HashMap<i64, Vec<String>>, id: i64, why: String) {
        reasons.entry(id).or_default().push(why);
    }
    let mut keep = |id: i64, why: String| keep_in(&mut reasons, id, why);

    let in_scope: Vec<&Backup> = sorted.iter().copied().filter(|b| b.in_scope).collect();

    // Count rule.
    if let Some(n) = policy.keep_last {
        for (i, b) in in_scope.iter().take(n as usize).enumerate() {
            keep(b.id, format!("last {} (#{})", n, i + 1));
        }
    }

    // Calendar rules: the newest backup of each period inside the window.
    let today = now.with_timezone(&policy.time_zone).date_naive();
    let rules: [(&str, u32, PeriodKey); 4] = [
        ("daily", policy.keep_daily, day),
        ("weekly", policy.keep_weekly, iso_week),
        ("monthly", policy.keep_monthly, month),
        ("yearly", policy.keep_yearly, year),
    ];
    for (kind, n, key) in rules {
        if n == 0 {
            continue;
        }
        let first = window_start(kind, today, n);
        let mut seen: HashSet<i64> = HashSet::new();
        for b in &in_scope {
            let local = b.end_time.with_timezone(&policy.time_zone).date_naive();
            let k = key(local);
            if k >= first && b.end_time <= now && seen.insert(k) {
                keep(b.id, label(kind, local));
            }
        }
    }

    // Recovery window, as a policy rule for every kind of backup: everything that ended inside
    // it, and the newest one before it (so that the window's start is covered).
    if let Some(w) = policy.recovery_window {
        let start = now - w;
        for b in &in_scope {
            if b.end_time >= start {
                keep(b.id, "recovery window".into());
            }
        }
        let mut covered: HashSet<&str> = HashSet::new();
        for b in &in_scope {
            if b.end_time < start && covered.insert(b.database.as_str()) {
                keep(b.id, "recovery window (start)".into());
            }
        }
    }

    // Safety rules over every backup, in scope or not.
    let mut newest_verified: BTreeMap<&str, i64> = BTreeMap::new();
    for b in &sorted {
        if b.verified {
            newest_verified.entry(b.database.as_str()).or_insert(b.id);
        }
    }
    for id in newest_verified.values() {
        keep(*id, "safety: newest verified backup of its database".into());
    }
    if let Some(w) = policy.recovery_window {
        let start = now - w;
        let mut anchored = false;
        for b in sorted.iter().filter(|b| b.is_base) {
            if b.end_time >= start {
                keep(
                    b.id,
                    "safety: base backup inside the recovery window".into(),
                );
            } else if !anchored {
                anchored = true;
                keep(
                    b.id,
                    "safety: base backup that recovery to the window's start needs".into(),
                );
            }
        }
    }
    for b in &sorted {
        let reason = b.pin_reason.as_deref().unwrap_or("no reason given");
        match (b.pinned, b.keep_until) {
            (true, None) => keep(b.id, format!("pinned: {reason}")),
            (_, Some(until)) if until > now => keep(
                b.id,
                format!(
                    "pinned until {}: {reason}",
                    until.format("%Y-%m-%d %H:%M UTC")
                ),
            ),
            // A pin with a keep_until in the past has lapsed.
            _ => {}
        }
    }
    // Chains: a kept backup keeps its ancestors.
    let parent_of: HashMap<i64, Option<i64>> = sorted.iter().map(|b| (b.id, b.parent)).collect();
    let kept: Vec<i64> = reasons.keys().copied().collect();
    for child in kept {
        let mut cur = parent_of.get(&child).copied().flatten();
        let mut guard = 0;
        while let Some(p) = cur {
            keep_in(
                &mut reasons,
                p,
                format!("safety: parent of retained backup {child}"),
            );
            cur = parent_of.get(&p).copied().flatten();
            guard += 1;
            if guard > 10_000 {
                break;
            }
        }
    }

    in_scope
        .iter()
        .map(|b| match reasons.remove(&b.id) {
            Some(mut why) => {
                why.dedup();
                Verdict {
                    id: b.id,
                    keep: true,
                    reasons: why,
                }
            }
            None => Verdict {
                id: b.id,
                keep: false,
                reasons: vec![format!("not kept by policy \"{}\"", policy.name)],
            },
        })
        .collect()
}

#[cfg(test)]
mod unit {
    use super::*;
    use chrono::TimeZone;

    impl Policy {
        /// The design's default: daily 30 days, weekly 12 weeks, monthly 12 months, yearly 7 years.
        fn default_gfs() -> Policy {
            Policy {
                name: "default".into(),
                keep_last: None,
                keep_daily: 30,
                keep_weekly: 12,
                keep_monthly: 12,
                keep_yearly: 7,
                recovery_window: None,
                time_zone: Tz::UTC,
            }
        }
    }

    /// A UTC time from a local wall-clock time in `tz` (earliest, for tests and previews).
    fn local(tz: Tz, y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        tz.with_ymd_and_hms(y, m, d, h, min, 0)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(Utc::now)
    }

    fn backup(id: i64, end: DateTime<Utc>) -> Backup {
        Backup {
            id,
            database: "shop".into(),
            end_time: end,
            is_base: false,
            verified: false,
            pinned: false,
            pin_reason: None,
            keep_until: None,
            parent: None,
            in_scope: true,
        }
    }

    fn kept(v: &[Verdict]) -> Vec<i64> {
        let mut k: Vec<i64> = v.iter().filter(|v| v.keep).map(|v| v.id).collect();
        k.sort();
        k
    }

    /// Every reason that keeps a kept backup, newest backup first.
    fn kept_reasons(v: &[Verdict]) -> Vec<String> {
        v.iter()
            .filter(|v| v.keep)
            .flat_map(|v| v.reasons.clone())
            .collect()
    }

    fn only(policy: &Policy) -> Policy {
        Policy {
            keep_daily: 0,
            keep_weekly: 0,
            keep_monthly: 0,
            keep_yearly: 0,
            ..policy.clone()
        }
    }

    /// Two backups a day (03:00 and 15:00 UTC) for 800 days before `now`.
    fn history(now: DateTime<Utc>) -> Vec<Backup> {
        let mut v = Vec::new();
        let mut id = 0;
        for d in 0..800 {
            for h in [3, 15] {
                id += 1;
                let t = (now - Duration::days(d))
                    .date_naive()
                    .and_hms_opt(h, 0, 0)
                    .unwrap();
                let t = Utc.from_utc_datetime(&t);
                if t <= now {
                    v.push(backup(id, t));
                }
            }
        }
        v
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day() {
        let now = Utc.with_ymd_and_hms(2026, 3, 2, 12, 0, 0).unwrap();
        let p = Policy {
            keep_daily: 3,
            ..only(&Policy::default_gfs())
        };
        let v = select(&p, &history(now), now);
        let days = kept_reasons(&v);
        // 2 March (only the 03:00 backup exists yet), 1 March, 28 February (not a leap year).
        assert_eq!(
            days,
            vec!["daily 2026-03-02", "daily 2026-03-01", "daily 2026-02-28"]
        );
        assert_eq!(v.iter().filter(|v| v.keep).count(), 3);
        // Each is the day's newest.
        let all = history(now);
        for v in v.iter().filter(|v| v.keep) {
            let b = all.iter().find(|b| b.id == v.id).unwrap();
            let day = b.end_time.date_naive();
            assert!(all
                .iter()
                .filter(|o| o.end_time.date_naive() == day)
                .all(|o| o.end_time <= b.end_time));
        }
    }

    #[test]
    fn monthly_and_yearly_cross_boundaries() {
        // Just after new year: the yearly rule keeps the newest of 2026 (today) and of 2025
        // (31 December, 15:00), the monthly rule January 2026 and December 2025.
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 4, 0, 0).unwrap();
        let all = history(now);
        let p = Policy {
            keep_monthly: 2,
            keep_yearly: 2,
            ..only(&Policy::default_gfs())
        };
        let v = select(&p, &all, now);
        let reasons = kept_reasons(&v);
        assert!(
            reasons.contains(&"monthly 2026-01".to_owned()),
            "{reasons:?}"
        );
        assert!(reasons.contains(&"monthly 2025-12".to_owned()));
        assert!(reasons.contains(&"yearly 2026".to_owned()));
        assert!(reasons.contains(&"yearly 2025".to_owned()));
        let dec31 = Utc.with_ymd_and_hms(2025, 12, 31, 15, 0, 0).unwrap();
        let id = all.iter().find(|b| b.end_time == dec31).unwrap().id;
        let verdict = v.iter().find(|v| v.id == id).unwrap();
        assert_eq!(verdict.reasons, vec!["monthly 2025-12", "yearly 2025"]);
        assert_eq!(kept(&v).len(), 2);
    }

    #[test]
    fn weekly_uses_iso_weeks_across_the_year_end() {
        // Thursday 1 January 2026 is in ISO week 2026-W01, which began Monday 29 December.
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 16, 0, 0).unwrap();
        let p = Policy {
            keep_weekly: 2,
            ..only(&Policy::default_gfs())
        };
        let v = select(&p, &history(now), now);
        let reasons = kept_reasons(&v);
        assert_eq!(reasons, vec!["weekly 2026-W01", "weekly 2025-W52"]);
    }

    #[test]
    fn days_are_local_days_across_dst() {
        // Europe/Berlin goes from CET to CEST at 02:00 on 29 March 2026.  Backups at 00:30 and
        // 23:30 local time each day: the 23:30 one is the day's newest, whatever the offset.
        let tz: Tz = "Europe/Berlin".parse().unwrap();
        let mut all = Vec::new();
        let mut id = 0;
        for d in 26..=31 {
            for (h, m) in [(0, 30), (23, 30)] {
                id += 1;
                all.push(backup(id, local(tz, 2026, 3, d, h, m)));
            }
        }
        let now = local(tz, 2026, 3, 31, 23, 45);
        let p = Policy {
            keep_daily: 4,
            time_zone: tz,
            ..only(&Policy::default_gfs())
        };
        let v = select(&p, &all, now);
        let reasons = kept_reasons(&v);
        assert_eq!(
            reasons,
            vec![
                "daily 2026-03-31",
                "daily 2026-03-30",
                "daily 2026-03-29",
                "daily 2026-03-28"
            ]
        );
        // The 23:30 backups (even ids) are the ones kept; in UTC, 29 March 23:30 CEST is
        // 21:30Z, 28 March 23:30 CET is 22:30Z: bucketing in UTC would give the same days here,
        // but the 00:30 CEST backup of 30 March is 22:30Z on 29 March in UTC.
        assert_eq!(kept(&v), vec![6, 8, 10, 12]);
        let utc = Policy {
            time_zone: Tz::UTC,
            ..p.clone()
        };
        assert_ne!(kept(&select(&utc, &all, now)), kept(&v));
    }

    #[test]
    fn keep_last_and_recovery_window() {
        let now = Utc.with_ymd_and_hms(2026, 6, 15, 12, 0, 0).unwrap();
        let all = history(now);
        let p = Policy {
            keep_last: Some(5),
            ..only(&Policy::default_gfs())
        };
        assert_eq!(kept(&select(&p, &all, now)).len(), 5);
        let p = Policy {
            recovery_window: Some(Duration::days(2)),
            ..only(&Policy::default_gfs())
        };
        let v = select(&p, &all, now);
        // Inside the window: 15 June 03:00, 14 June 03:00 and 15:00, 13 June 15:00; plus the
        // newest before the window's start (13 June 03:00).
        assert_eq!(kept(&v).len(), 5);
    }

    #[test]
    fn safety_newest_verified_survives_any_policy() {
        let now = Utc.with_ymd_and_hms(2026, 6, 15, 12, 0, 0).unwrap();
        let mut all = history(now);
        // Only an old backup is verified; the policy keeps nothing at all.
        let old = all.len() - 10;
        all[old].verified = true;
        let p = only(&Policy::default_gfs());
        let v = select(&p, &all, now);
        assert_eq!(kept(&v), vec![all[old].id]);
        assert_eq!(
            v.iter().find(|v| v.keep).unwrap().reasons,
            vec!["safety: newest verified backup of its database"]
        );
        // Another database's verified backup is its own newest verified.
        all[3].database = "other".into();
        all[3].verified = true;
        assert_eq!(kept(&select(&p, &all, now)).len(), 2);
    }

    #[test]
    fn safety_base_backups_for_the_recovery_window() {
        let now = Utc.with_ymd_and_hms(2026, 6, 15, 12, 0, 0).unwrap();
        let mut all = history(now);
        for b in all.iter_mut() {
            b.is_base = b.id % 10 == 0;
        }
        // A policy that keeps only the last backup, with a 3-day recovery window: the base
        // backups inside the window and the newest one before it survive.
        let p = Policy {
            keep_last: Some(1),
            recovery_window: Some(Duration::days(3)),
            ..only(&Policy::default_gfs())
        };
        let v = select(&p, &all, now);
        let start = now - Duration::days(3);
        let before = all
            .iter()
            .filter(|b| b.is_base && b.end_time < start)
            .max_by_key(|b| b.end_time)
            .unwrap()
            .id;
        assert!(v.iter().any(|v| v.id == before
            && v.keep
            && v.reasons.iter().any(|r| r.contains("window's start"))));
        for b in all.iter().filter(|b| b.is_base && b.end_time >= start) {
            assert!(v.iter().any(|v| v.id == b.id && v.keep));
        }
        // Older base backups go.
        assert!(all
            .iter()
            .filter(|b| b.is_base && b.end_time < start && b.id != before)
            .all(|b| v.iter().any(|v| v.id == b.id && !v.keep)));
    }

    #[test]
    fn safety_pins_holds_and_chains() {
        let now = Utc.with_ymd_and_hms(2026, 6, 15, 12, 0, 0).unwrap();
        let mut all = history(now);
        let n = all.len();
        all[n - 1].pinned = true;
        all[n - 1].pin_reason = Some("legal hold #42".into());
        all[n - 2].keep_until = Some(now + Duration::days(1));
        all[n - 3].keep_until = Some(now - Duration::days(1));
        all[n - 3].pinned = true; // a lapsed pin
                                  // An incremental chain: 1 <- 2 <- 3, and 3 is pinned.
        all[2].parent = Some(all[1].id);
        all[1].parent = Some(all[0].id);
        all[2].pinned = true;
        let p = only(&Policy::default_gfs());
        let v = select(&p, &all, now);
        let mut expected = vec![
            all[0].id,
            all[1].id,
            all[2].id,
            all[n - 1].id,
            all[n - 2].id,
        ];
        expected.sort();
        assert_eq!(kept(&v), expected);
        let pinned = v.iter().find(|v| v.id == all[n - 1].id).unwrap();
        assert_eq!(pinned.reasons, vec!["pinned: legal hold #42"]);
        let root = v.iter().find(|v| v.id == all[0].id).unwrap();
        assert!(root
            .reasons
            .iter()
            .any(|r| r.starts_with("safety: parent of retained backup")));
        // Out-of-scope backups are never in the verdicts, but still protect their parents.
        let (child, root) = (all[2].id, all[0].id);
        for b in all.iter_mut() {
            b.in_scope = b.id != child;
        }
        let v = select(&p, &all, now);
        assert!(v.iter().all(|v| v.id != child));
        assert!(v.iter().any(|v| v.id == root && v.keep));
    }
}

/// A file or directory a backup record names (its backup file or its globals file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPath {
    pub backup_id: i64,
    pub path: String,
}

/// Retention deletes by reference: for each path of an expiring backup (`doomed`), the kept
/// backup (in `kept`) that still needs it — one naming the same path, a directory above it, or
/// something below it — if any: (expiring backup, path, kept backup).  Sorted lookups, so the
/// cost follows the number of paths, not their product.
pub fn kept_by_reference(doomed: &[NamedPath], kept: &[NamedPath]) -> Vec<(i64, String, i64)> {
    let mut sorted: Vec<(&str, i64)> = kept
        .iter()
        .map(|k| (k.path.as_str(), k.backup_id))
        .collect();
    sorted.sort_unstable();
    let exact = |p: &str| -> Option<i64> {
        let i = sorted.partition_point(|(k, _)| *k < p);
        sorted.get(i).filter(|(k, _)| *k == p).map(|(_, id)| *id)
    };
    let mut out = Vec::new();
    for d in doomed {
        let p = d.path.trim_end_matches('/');
        // The path itself and every directory above it.
        let mut holder = exact(p);
        let mut rest = p;
        while holder.is_none() {
            match rest.rfind('/') {
                Some(i) if i > 0 => {
                    rest = &rest[..i];
                    holder = exact(rest);
                }
                _ => break,
            }
        }
        // Anything below it.
        if holder.is_none() {
            let below = format!("{p}/");
            let i = sorted.partition_point(|(k, _)| *k < below.as_str());
            holder = sorted
                .get(i)
                .filter(|(k, _)| k.starts_with(&below))
                .map(|(_, id)| *id);
        }
        if let Some(other) = holder {
            out.push((d.backup_id, d.path.clone(), other));
        }
    }
    out
}

#[cfg(test)]
mod by_reference {
    use super::*;

    fn n(id: i64, path: &str) -> NamedPath {
        NamedPath {
            backup_id: id,
            path: path.into(),
        }
    }

    #[test]
    fn a_path_still_needed_by_a_kept_backup_is_reported() {
        let kept = vec![
            n(10, "/b/app/latest.dump"),
            n(11, "/b/dir"),
            n(12, "/b/native/20261203/inner"),
            n(13, "/b/app/latest.dump.globals.sql"),
        ];
        let doomed = vec![
            n(1, "/b/app/latest.dump"), // the same file
            n(2, "/b/dir/x.dump"),      // inside a kept directory
            n(3, "/b/native/20261203"), // holds a kept path
            n(4, "/b/app/other.dump"),  // nobody's
            n(5, "/b/app/latest.dum"),  // a prefix, not a directory above
            n(6, "/b/native/2026120"),  // likewise
        ];
        assert_eq!(
            kept_by_reference(&doomed, &kept),
            vec![
                (1, "/b/app/latest.dump".into(), 10),
                (2, "/b/dir/x.dump".into(), 11),
                (3, "/b/native/20261203".into(), 12),
            ]
        );
        assert!(kept_by_reference(&doomed, &[]).is_empty());
    }
}
