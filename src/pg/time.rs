//! PostgreSQL's time types and chrono's.

use chrono::{DateTime, Utc};
use pgrx::datum::{Interval, TimestampWithTimeZone};

/// Microseconds from 1970-01-01 (Unix) to 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// A chrono instant as a PostgreSQL timestamptz.
pub fn to_timestamptz(t: DateTime<Utc>) -> Option<TimestampWithTimeZone> {
    TimestampWithTimeZone::try_from(t.timestamp_micros() - PG_EPOCH_OFFSET_MICROS).ok()
}

/// A PostgreSQL timestamptz as a chrono instant (infinities clamp to chrono's range).
pub fn from_timestamptz(t: TimestampWithTimeZone) -> DateTime<Utc> {
    let micros: i64 = t.into_inner();
    DateTime::from_timestamp_micros(micros.saturating_add(PG_EPOCH_OFFSET_MICROS)).unwrap_or(
        if micros < 0 {
            DateTime::<Utc>::MIN_UTC
        } else {
            DateTime::<Utc>::MAX_UTC
        },
    )
}

/// A duration as an interval.
pub fn interval(d: std::time::Duration) -> Interval {
    Interval::from_micros(d.as_micros().min(i64::MAX as u128) as i64)
}
