//! When jobs fire: `schedule_preview()`, and the zone and next run of a job's schedule (the cron
//! engine itself is `backup_mgmt_core::cron`).

use backup_mgmt_core::cron::{parse_time_zone, CronSchedule, ScheduleError};
use chrono::Utc;
use chrono_tz::Tz;
use pgrx::prelude::*;
use pgrx::{pg_sys::panic::ErrorReport, PgSqlErrorCode};

use crate::pg::guc;
use crate::pg::sql_error::report;
use crate::pg::time::to_timestamptz;

/// The server's TimeZone as configured (not as SET in this session): what the worker uses.
pub fn server_time_zone() -> String {
    guc::configured(c"TimeZone").unwrap_or_else(|| "UTC".into())
}

/// The zone a job's schedule is evaluated in: its own, or the server's configured TimeZone.
pub fn job_zone(time_zone: Option<&str>) -> Result<Tz, ScheduleError> {
    match time_zone {
        Some(z) => parse_time_zone(z),
        None => parse_time_zone(&server_time_zone()),
    }
}

/// When a job with this schedule fires next, from now (None if it never fires).
pub fn next_run(cron: &CronSchedule, zone: Tz) -> Option<TimestampWithTimeZone> {
    cron.next_after(zone, Utc::now(), 1)
        .into_iter()
        .next()
        .and_then(to_timestamptz)
}

/// Previews a schedule: the next `count` times it fires after now, in `time_zone` (default: the
/// session's TimeZone).  Refuses an invalid expression or zone, naming the bad part.
#[pg_extern(stable, parallel_safe)]
pub fn schedule_preview(
    schedule: &str,
    time_zone: default!(Option<&str>, "NULL"),
    count: default!(i32, 5),
) -> Result<SetOfIterator<'static, TimestampWithTimeZone>, ErrorReport> {
    let parsed: CronSchedule = schedule.parse().map_err(report)?;
    let zone_name = match time_zone {
        Some(z) => z.to_owned(),
        None => guc::current(c"TimeZone").unwrap_or_else(|| "UTC".into()),
    };
    let zone = parse_time_zone(&zone_name).map_err(report)?;
    if !(1..=1000).contains(&count) {
        return Err(ErrorReport::new(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("count {count} is out of range"),
            "backup_mgmt",
        )
        .set_hint("Ask for 1 to 1000 fire times."));
    }
    let times = parsed.next_after(zone, Utc::now(), count as usize);
    Ok(SetOfIterator::new(
        times.into_iter().filter_map(to_timestamptz),
    ))
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[allow(unused_imports)]
    use crate::testing::*;

    #[pg_test]
    fn schedule_preview_lists_fire_times_in_the_zone() {
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM backup_mgmt.schedule_preview('*/5 * * * *', 'UTC', 3) t
              WHERE extract(minute FROM t AT TIME ZONE 'UTC')::int % 5 = 0 AND t > now()",
        )
        .unwrap();
        assert_eq!(n, Some(3));
        // Without a zone, the session's TimeZone.
        Spi::run("SET LOCAL TimeZone = 'America/New_York'").unwrap();
        let hour = Spi::get_one::<i32>(
            "SELECT extract(hour FROM t AT TIME ZONE 'America/New_York')::int
               FROM backup_mgmt.schedule_preview('0 3 * * *', NULL, 1) t",
        )
        .unwrap();
        assert_eq!(hour, Some(3));
    }

    #[pg_test]
    fn schedule_preview_refuses_bad_input_naming_it() {
        assert_fails(
            "SELECT backup_mgmt.schedule_preview('61 * * * *')",
            "22023",
            "minute",
        );
        assert_fails(
            "SELECT backup_mgmt.schedule_preview('* * * *')",
            "22023",
            "4 fields",
        );
        assert_fails(
            "SELECT backup_mgmt.schedule_preview('@fortnightly')",
            "22023",
            "@fortnightly",
        );
        assert_fails(
            "SELECT backup_mgmt.schedule_preview('@daily', 'Mars/Base')",
            "22023",
            "Mars/Base",
        );
        assert_fails(
            "SELECT backup_mgmt.schedule_preview('@daily', 'UTC', 0)",
            "22023",
            "count 0",
        );
    }
}
