//! Cron schedules: pg_cron's syntax, evaluated in a job's IANA time zone with defined DST rules.
//!
//! Accepted: 5 fields (minute hour day-of-month month day-of-week, as pg_cron), 6 fields (a
//! leading seconds field), and `@hourly`, `@daily`/`@midnight`, `@weekly`, `@monthly`,
//! `@yearly`/`@annually`.  Day of week 0 and 7 are Sunday.  As in cron, when both day of month and
//! day of week are restricted, a day matching either fires.
//!
//! Schedules are wall-clock times in the job's zone.  Each wall-clock slot fires exactly once:
//! - a slot that does not exist (spring forward: 02:30 on the day clocks jump from 02:00 to
//!   03:00) fires at the first instant after the gap (03:00);
//! - a slot that happens twice (fall back: 01:30 on the day clocks return from 02:00 to 01:00)
//!   fires at its first occurrence only.
//!
//! The `cron` crate parses and matches fields; it numbers days of week 1-7 from Sunday and ANDs
//! day of month with day of week, so both are translated here.

use std::str::FromStr;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

const FIELD_NAMES: [&str; 6] = [
    "second",
    "minute",
    "hour",
    "day of month",
    "month",
    "day of week",
];
const DAY_NAMES: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("cron schedule \"{0}\" has {1} fields; expected 5 (minute hour day month weekday) or 6 (with seconds first)")]
    FieldCount(String, usize),
    #[error("cron schedule \"{expr}\": invalid {field} field \"{value}\"")]
    Field {
        expr: String,
        field: &'static str,
        value: String,
    },
    #[error("unknown cron shorthand \"{0}\"")]
    Shorthand(String),
    #[error("unknown time zone \"{0}\"")]
    TimeZone(String),
}

/// A parsed schedule.  Two crate schedules when both day fields are restricted (their union is
/// cron's "either day matches"), one otherwise.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    parts: Vec<cron::Schedule>,
}

/// Expands one day-of-week list item written with cron's numbers (0-7, Sunday 0 and 7) into day
/// names, which the `cron` crate reads unambiguously.
fn day_of_week_item(item: &str) -> Option<Vec<&'static str>> {
    let (range, step) = match item.split_once('/') {
        Some((r, s)) => (r, s.parse::<usize>().ok().filter(|s| *s > 0)?),
        None => (item, 1),
    };
    let day = |s: &str| -> Option<usize> {
        if let Ok(n) = s.parse::<usize>() {
            (n <= 7).then_some(n)
        } else {
            DAY_NAMES
                .iter()
                .position(|d| d.eq_ignore_ascii_case(&s[..s.len().min(3)]))
        }
    };
    let (first, last) = match range {
        "*" => (0, 6),
        _ => match range.split_once('-') {
            Some((a, b)) => (day(a)?, day(b)?),
            None => {
                let d = day(range)?;
                (d, if step > 1 { 6 } else { d })
            }
        },
    };
    if first > last {
        return None;
    }
    Some(
        (first..=last)
            .step_by(step)
            .map(|d| DAY_NAMES[d % 7])
            .collect(),
    )
}

fn day_of_week_field(field: &str) -> Option<String> {
    if field == "*" || field == "?" {
        return Some("*".into());
    }
    let mut days: Vec<&str> = Vec::new();
    for item in field.split(',') {
        for d in day_of_week_item(item)? {
            if !days.contains(&d) {
                days.push(d);
            }
        }
    }
    Some(days.join(","))
}

impl FromStr for CronSchedule {
    type Err = ScheduleError;

    fn from_str(expr: &str) -> Result<Self, ScheduleError> {
        let trimmed = expr.trim();
        let six: Vec<String> = if let Some(name) = trimmed.strip_prefix('@') {
            let fields = match name.to_ascii_lowercase().as_str() {
                "hourly" => "0 0 * * * *",
                "daily" | "midnight" => "0 0 0 * * *",
                "weekly" => "0 0 0 * * 0",
                "monthly" => "0 0 0 1 * *",
                "yearly" | "annually" => "0 0 0 1 1 *",
                _ => return Err(ScheduleError::Shorthand(trimmed.to_owned())),
            };
            fields.split(' ').map(str::to_owned).collect()
        } else {
            let fields: Vec<&str> = trimmed.split_whitespace().collect();
            match fields.len() {
                5 => std::iter::once("0")
                    .chain(fields)
                    .map(str::to_owned)
                    .collect(),
                6 => fields.into_iter().map(str::to_owned).collect(),
                n => return Err(ScheduleError::FieldCount(expr.to_owned(), n)),
            }
        };
        let bad = |i: usize| ScheduleError::Field {
            expr: expr.to_owned(),
            field: FIELD_NAMES[i],
            value: six[i].clone(),
        };
        let dow = day_of_week_field(&six[5]).ok_or_else(|| bad(5))?;
        // Each field alone (others '*'), so that an error names the field that is wrong.
        for i in 0..5 {
            let mut probe = ["*"; 6];
            probe[i] = &six[i];
            cron::Schedule::from_str(&probe.join(" ")).map_err(|_| bad(i))?;
        }
        let build = |dom: &str, dow: &str| {
            let text = format!(
                "{} {} {} {} {} {}",
                six[0], six[1], six[2], dom, six[4], dow
            );
            cron::Schedule::from_str(&text).map_err(|_| bad(3))
        };
        let parts = if six[3] != "*" && six[3] != "?" && dow != "*" {
            vec![build(&six[3], "*")?, build("*", &dow)?]
        } else {
            vec![build(&six[3], &dow)?]
        };
        Ok(CronSchedule { parts })
    }
}

/// Parses an IANA zone name (the one parser of time zones: schedules and retention calendars).
pub fn parse_time_zone(name: &str) -> Result<Tz, ScheduleError> {
    Tz::from_str(name).map_err(|_| ScheduleError::TimeZone(name.to_owned()))
}

/// The instant a wall-clock slot fires at, by the rules in the module documentation.
fn slot_instant(zone: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match zone.from_local_datetime(&local) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
        LocalResult::None => {
            // In a gap: fire at its end, the first wall-clock minute that exists again.  Gaps
            // are whole minutes and at most a day long.
            let mut probe = local.with_second(0)?.with_nanosecond(0)?;
            for _ in 0..(24 * 60) {
                probe += Duration::minutes(1);
                if let LocalResult::Single(t) | LocalResult::Ambiguous(t, _) =
                    zone.from_local_datetime(&probe)
                {
                    return Some(t.with_timezone(&Utc));
                }
            }
            None
        }
    }
}

/// Upper bound on slots visited per call, so that a schedule that never matches (e.g. February
/// 30th) returns fewer results instead of looping.
const MAX_SLOTS_VISITED: usize = 100_000;

impl CronSchedule {
    /// The next `count` instants strictly after `after` at which the schedule fires in `zone`.
    pub fn next_after(&self, zone: Tz, after: DateTime<Utc>, count: usize) -> Vec<DateTime<Utc>> {
        let mut out = Vec::with_capacity(count);
        // Walk wall-clock slots as naive local times (the crate evaluates them in "UTC", which
        // has no DST) from `after`'s wall-clock time.  An instant's wall-clock time is never in a
        // gap, so no slot moved forward out of a gap can be missed.
        let mut cursor = after.with_timezone(&zone).naive_local().and_utc();
        let mut last = after;
        for _ in 0..MAX_SLOTS_VISITED {
            if out.len() == count {
                break;
            }
            let Some(next) = self
                .parts
                .iter()
                .filter_map(|s| s.after(&cursor).next())
                .min()
            else {
                break;
            };
            cursor = next;
            // Instants only go forward: this drops the wall-clock slots of a repeated (fall-back)
            // hour that already fired at their first occurrence, and gap slots that land on the
            // same instant as the gap's end.
            if let Some(instant) = slot_instant(zone, next.naive_utc()).filter(|i| *i > last) {
                out.push(instant);
                last = instant;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn fires(expr: &str, zone: &str, after: &str, count: usize) -> Vec<String> {
        let schedule: CronSchedule = expr.parse().unwrap_or_else(|e| panic!("{expr}: {e}"));
        schedule
            .next_after(parse_time_zone(zone).unwrap(), utc(after), count)
            .into_iter()
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .collect()
    }

    #[test]
    fn five_and_six_fields() {
        assert_eq!(
            fires("*/15 * * * *", "UTC", "2026-01-01T00:07:00Z", 4),
            [
                "2026-01-01T00:15:00Z",
                "2026-01-01T00:30:00Z",
                "2026-01-01T00:45:00Z",
                "2026-01-01T01:00:00Z"
            ]
        );
        assert_eq!(
            fires("*/20 * * * * *", "UTC", "2026-01-01T00:00:05Z", 3),
            [
                "2026-01-01T00:00:20Z",
                "2026-01-01T00:00:40Z",
                "2026-01-01T00:01:00Z"
            ]
        );
        // Strictly after: a slot equal to `after` has already fired.
        assert_eq!(
            fires("0 3 * * *", "UTC", "2026-01-01T03:00:00Z", 1),
            ["2026-01-02T03:00:00Z"]
        );
    }

    #[test]
    fn shorthands() {
        let after = "2026-01-01T00:30:00Z"; // a Thursday
        assert_eq!(fires("@hourly", "UTC", after, 1), ["2026-01-01T01:00:00Z"]);
        assert_eq!(fires("@daily", "UTC", after, 1), ["2026-01-02T00:00:00Z"]);
        assert_eq!(
            fires("@midnight", "UTC", after, 1),
            ["2026-01-02T00:00:00Z"]
        );
        assert_eq!(fires("@weekly", "UTC", after, 1), ["2026-01-04T00:00:00Z"]);
        assert_eq!(fires("@monthly", "UTC", after, 1), ["2026-02-01T00:00:00Z"]);
        assert_eq!(fires("@yearly", "UTC", after, 1), ["2027-01-01T00:00:00Z"]);
        assert_eq!(
            fires("@annually", "UTC", after, 1),
            ["2027-01-01T00:00:00Z"]
        );
    }

    #[test]
    fn day_of_week_is_cron_numbering() {
        let after = "2026-01-01T12:00:00Z"; // Thursday
        for sunday in ["0 0 * * 0", "0 0 * * 7", "0 0 * * sun", "0 0 * * SUN"] {
            assert_eq!(
                fires(sunday, "UTC", after, 1),
                ["2026-01-04T00:00:00Z"],
                "{sunday}"
            );
        }
        assert_eq!(
            fires("0 0 * * 1-5", "UTC", "2026-01-02T12:00:00Z", 2),
            ["2026-01-05T00:00:00Z", "2026-01-06T00:00:00Z"],
            "weekdays, from a Friday afternoon"
        );
        assert_eq!(
            fires("0 0 * * 5-7", "UTC", after, 4),
            [
                "2026-01-02T00:00:00Z",
                "2026-01-03T00:00:00Z",
                "2026-01-04T00:00:00Z",
                "2026-01-09T00:00:00Z"
            ],
            "Friday to Sunday, 7 being Sunday"
        );
        assert_eq!(
            fires("0 0 * * 1,3", "UTC", after, 2),
            ["2026-01-05T00:00:00Z", "2026-01-07T00:00:00Z"]
        );
        assert_eq!(
            fires("0 0 * * */2", "UTC", after, 3),
            [
                "2026-01-03T00:00:00Z",
                "2026-01-04T00:00:00Z",
                "2026-01-06T00:00:00Z"
            ],
            "every other day of the week from Sunday: Sun, Tue, Thu, Sat"
        );
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // The 1st of the month OR any Monday, as in cron; February 1st 2026 is a Sunday.
        assert_eq!(
            fires("0 0 1 * 1", "UTC", "2026-01-01T00:00:00Z", 6),
            [
                "2026-01-05T00:00:00Z",
                "2026-01-12T00:00:00Z",
                "2026-01-19T00:00:00Z",
                "2026-01-26T00:00:00Z",
                "2026-02-01T00:00:00Z",
                "2026-02-02T00:00:00Z"
            ]
        );
    }

    #[test]
    fn spring_forward_runs_once_at_the_end_of_the_gap() {
        // New York, 2026-03-08: 02:00 EST becomes 03:00 EDT; 02:30 does not exist that day.
        assert_eq!(
            fires("30 2 * * *", "America/New_York", "2026-03-07T00:00:00Z", 3),
            [
                "2026-03-07T07:30:00Z",
                "2026-03-08T07:00:00Z",
                "2026-03-09T06:30:00Z"
            ]
        );
        // Hourly: the 02:00 slot and the 03:00 slot are the same instant, fired once.
        assert_eq!(
            fires("0 * * * *", "America/New_York", "2026-03-08T06:30:00Z", 3),
            [
                "2026-03-08T07:00:00Z",
                "2026-03-08T08:00:00Z",
                "2026-03-08T09:00:00Z"
            ]
        );
        // Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST.
        assert_eq!(
            fires("30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", 2),
            ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]
        );
    }

    #[test]
    fn fall_back_runs_once_at_the_first_occurrence() {
        // New York, 2026-11-01: 02:00 EDT becomes 01:00 EST; 01:30 happens twice that day.
        assert_eq!(
            fires("30 1 * * *", "America/New_York", "2026-10-31T00:00:00Z", 3),
            [
                "2026-10-31T05:30:00Z",
                "2026-11-01T05:30:00Z",
                "2026-11-02T06:30:00Z"
            ]
        );
        // Asked during the repeated hour, after the first 01:30: not again that day.
        assert_eq!(
            fires("30 1 * * *", "America/New_York", "2026-11-01T06:10:00Z", 1),
            ["2026-11-02T06:30:00Z"]
        );
        // Hourly: the repeated hour's wall-clock slots already fired at their first occurrence.
        assert_eq!(
            fires("0 * * * *", "America/New_York", "2026-11-01T04:30:00Z", 3),
            [
                "2026-11-01T05:00:00Z",
                "2026-11-01T07:00:00Z",
                "2026-11-01T08:00:00Z"
            ]
        );
    }

    #[test]
    fn invalid_expressions_name_the_field() {
        let field = |expr: &str| match expr.parse::<CronSchedule>() {
            Err(ScheduleError::Field { field, value, .. }) => (field, value),
            other => panic!("{expr}: {other:?}"),
        };
        assert_eq!(field("61 * * * *"), ("minute", "61".to_owned()));
        assert_eq!(field("* 25 * * *"), ("hour", "25".to_owned()));
        assert_eq!(field("* * 32 * *"), ("day of month", "32".to_owned()));
        assert_eq!(field("* * * 13 *"), ("month", "13".to_owned()));
        assert_eq!(field("* * * * 8"), ("day of week", "8".to_owned()));
        assert_eq!(field("* * * * 5-2"), ("day of week", "5-2".to_owned()));
        assert_eq!(field("70 * * * * *"), ("second", "70".to_owned()));
        assert!(matches!(
            "* * * *".parse::<CronSchedule>(),
            Err(ScheduleError::FieldCount(_, 4))
        ));
        assert!(matches!(
            "* * * * * * *".parse::<CronSchedule>(),
            Err(ScheduleError::FieldCount(_, 7))
        ));
        assert!(matches!(
            "@fortnightly".parse::<CronSchedule>(),
            Err(ScheduleError::Shorthand(_))
        ));
        assert!(matches!(
            parse_time_zone("Mars/Olympus_Mons"),
            Err(ScheduleError::TimeZone(_))
        ));
        let e = "* 25 * * *"
            .parse::<CronSchedule>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("hour") && e.contains("25"), "{e}");
    }

    #[test]
    fn a_schedule_that_never_fires_returns_nothing() {
        let schedule: CronSchedule = "0 0 30 2 *".parse().unwrap();
        assert!(schedule
            .next_after(Tz::UTC, utc("2026-01-01T00:00:00Z"), 3)
            .is_empty());
    }
}
