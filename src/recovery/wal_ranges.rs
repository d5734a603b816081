//! The archive's unexpired, intact segments as contiguous ranges
//! (`backup_management.wal_ranges`), kept up to date by statement-level triggers on `wal_archive`
//! (`sql/schema.sql`): every ingest, expiry, un-expiry, loss found on disk, renumbering, deletion
//! or truncation changes the ranges it touches, grouped
//! into runs of consecutive numbers, so `wal_gap_ranges`, `wal_gaps`, `recovery_status`,
//! `metrics()` and the catalog mirror read a handful of ranges instead of every segment.  The
//! state is derived, so this module holds its proof: the maintained ranges equal what a full
//! scan computes, across every kind of change.

/// The ranges a full scan of `wal_archive` computes (what `wal_ranges` must always hold; the
/// upgrade script builds the first ranges with the same query).
#[cfg(any(test, feature = "pg_test"))]
pub const FULL_SCAN: &str = "SELECT system_identifier, timeline_id, min(segment_number) AS first_segment,
            max(segment_number) AS last_segment
       FROM (SELECT system_identifier, timeline_id, segment_number,
                    segment_number - dense_rank() OVER (PARTITION BY system_identifier, timeline_id ORDER BY segment_number) AS run
               FROM backup_management.wal_archive
              WHERE segment_number IS NOT NULL AND timeline_id IS NOT NULL AND expired_at IS NULL
                AND lost_at IS NULL) s
      GROUP BY system_identifier, timeline_id, run";

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[allow(unused_imports)]
    use crate::testing::*;

    /// The ranges as text, maintained and scanned, for comparison.
    fn ranges() -> (String, String) {
        let maintained = Spi::get_one::<String>(
            "SELECT coalesce(string_agg(format('%s/%s:%s-%s', system_identifier, timeline_id, first_segment, last_segment), ' '
                             ORDER BY system_identifier, timeline_id, first_segment), '')
               FROM backup_management.wal_ranges",
        )
        .unwrap()
        .unwrap_or_default();
        let scanned = Spi::get_one::<String>(&format!(
            "SELECT coalesce(string_agg(format('%s/%s:%s-%s', system_identifier, timeline_id, first_segment, last_segment), ' '
                             ORDER BY system_identifier, timeline_id, first_segment), '')
               FROM ({}) r",
            super::FULL_SCAN
        ))
        .unwrap()
        .unwrap_or_default();
        (maintained, scanned)
    }

    fn assert_in_step(step: &str) {
        let (maintained, scanned) = ranges();
        assert_eq!(maintained, scanned, "after {step}");
    }

    /// Segments `numbers` (a SQL set expression of bigints) of cluster `sysid`, timeline `tl`.
    fn archive(sysid: i64, tl: i32, numbers: &str) {
        Spi::run(&format!(
            "INSERT INTO backup_management.wal_archive
                 (system_identifier, file_name, timeline_id, segment_number, file_path, file_size,
                  checksum, archived_at, segment_size)
             SELECT {sysid}, upper(lpad(to_hex({tl}), 8, '0') || lpad(to_hex(n / 256), 8, '0') || lpad(to_hex(n % 256), 8, '0')),
                    {tl}, n, '/x/' || n, 16777216, repeat('a', 64), now(), 16777216
               FROM ({numbers}) s(n)"
        ))
        .unwrap();
    }

    /// What the view said before the ranges: every number between the bounds, each looked up.
    const WAL_GAPS_BY_SCAN: &str = "
        WITH archived AS (
            SELECT system_identifier, timeline_id, min(segment_number) AS first_segment, max(segment_number) AS last_segment
              FROM backup_management.wal_archive WHERE segment_number IS NOT NULL AND expired_at IS NULL
             GROUP BY 1, 2
        ), base AS (
            SELECT system_identifier, timeline_id, min(start_lsn) AS start_lsn FROM backup_management.backup_records
             WHERE status = 'completed' AND backup_method IN ('pg_basebackup', 'native_physical') AND start_lsn IS NOT NULL
             GROUP BY 1, 2
        ), bounds AS (
            SELECT a.system_identifier, a.timeline_id,
                   coalesce(floor((b.start_lsn - '0/0'::pg_lsn) / 16777216)::bigint, a.first_segment) AS first_segment, a.last_segment
              FROM archived a LEFT JOIN base b USING (system_identifier, timeline_id)
        )
        SELECT coalesce(string_agg(format('%s/%s:%s', b.system_identifier, b.timeline_id, g), ' '
                                   ORDER BY b.system_identifier, b.timeline_id, g), '')
          FROM bounds b CROSS JOIN LATERAL generate_series(b.first_segment, b.last_segment) g
         WHERE NOT EXISTS (SELECT FROM backup_management.wal_archive w
                            WHERE w.system_identifier = b.system_identifier AND w.timeline_id = b.timeline_id
                              AND w.segment_number = g AND w.expired_at IS NULL AND w.lost_at IS NULL)";

    fn assert_gaps_in_step(step: &str) {
        let by_view = Spi::get_one::<String>(
            "SELECT coalesce(string_agg(format('%s/%s:%s', system_identifier, timeline_id, segment_number), ' '
                             ORDER BY system_identifier, timeline_id, segment_number), '')
               FROM backup_mgmt.wal_gaps",
        )
        .unwrap()
        .unwrap_or_default();
        let by_scan = Spi::get_one::<String>(WAL_GAPS_BY_SCAN)
            .unwrap()
            .unwrap_or_default();
        assert_eq!(by_view, by_scan, "wal_gaps after {step}");
    }

    #[pg_test]
    fn maintained_ranges_equal_a_full_scan_through_every_change() {
        let (a, b) = (7001_i64, 7002_i64);
        archive(a, 1, "SELECT generate_series(1, 10)");
        assert_in_step("a first batch");
        // One at a time, out of order: a gap opens, and a late segment closes it.
        archive(a, 1, "VALUES (12::bigint)");
        assert_in_step("a segment after a gap");
        assert_gaps_in_step("a segment after a gap");
        archive(a, 1, "VALUES (11::bigint)");
        assert_in_step("the late segment");
        archive(a, 1, "SELECT generate_series(20, 25)");
        assert_gaps_in_step("a second run");
        // Another timeline and another cluster with the same numbers.
        archive(a, 2, "SELECT generate_series(15, 18)");
        archive(
            b,
            1,
            "SELECT generate_series(1, 30) WHERE true EXCEPT SELECT 17",
        );
        assert_in_step("another timeline and cluster");
        assert_gaps_in_step("another timeline and cluster");
        // Expiry of a prefix, and of one segment inside a range; the latter undone.
        Spi::run(&format!(
            "UPDATE backup_management.wal_archive SET expired_at = now()
              WHERE system_identifier = {a} AND timeline_id = 1 AND segment_number <= 5"
        ))
        .unwrap();
        assert_in_step("expiring a prefix");
        Spi::run(&format!(
            "UPDATE backup_management.wal_archive SET expired_at = now()
              WHERE system_identifier = {a} AND timeline_id = 1 AND segment_number = 8"
        ))
        .unwrap();
        assert_in_step("expiring inside a range");
        assert_gaps_in_step("expiring inside a range");
        Spi::run(&format!(
            "UPDATE backup_management.wal_archive SET expired_at = NULL
              WHERE system_identifier = {a} AND segment_number = 8"
        ))
        .unwrap();
        assert_in_step("un-expiring");
        // The worker finds segments lost on disk (one inside a range, the last one), then one
        // back: lost ones are missing, by name and with the reason.
        Spi::run(&format!(
            "UPDATE backup_management.wal_archive SET lost_at = now(), lost_reason = 'missing from the archive directory'
              WHERE system_identifier = {a} AND timeline_id = 1 AND segment_number IN (9, 25)"
        ))
        .unwrap();
        assert_in_step("segments lost on disk");
        assert_gaps_in_step("segments lost on disk");
        let reason = Spi::get_one::<String>(&format!(
            "SELECT reason FROM backup_mgmt.wal_gaps WHERE system_identifier = {a} AND segment_number = 9"
        ))
        .unwrap();
        assert_eq!(
            reason.as_deref(),
            Some("missing from the archive directory")
        );
        Spi::run(&format!(
            "UPDATE backup_management.wal_archive SET lost_at = NULL, lost_reason = NULL
              WHERE system_identifier = {a} AND segment_number = 25"
        ))
        .unwrap();
        assert_in_step("a lost segment back");
        assert_gaps_in_step("a lost segment back");
        // A row renumbered, one deleted, other columns changed (the WAL scan's updates).
        Spi::run(&format!(
            "UPDATE backup_management.wal_archive SET segment_number = 40
              WHERE system_identifier = {a} AND timeline_id = 1 AND segment_number = 25"
        ))
        .unwrap();
        Spi::run(&format!(
            "DELETE FROM backup_management.wal_archive
              WHERE system_identifier = {b} AND segment_number = 3"
        ))
        .unwrap();
        Spi::run("UPDATE backup_management.wal_archive SET xact_scanned = true").unwrap();
        assert_in_step("renumbering, deleting, scanning");
        // A base backup moves where gaps are counted from.
        Spi::run(&format!(
            "INSERT INTO backup_management.backup_records
                 (database_name, backup_type, backup_method, backup_file_path, status, end_time,
                  duration, system_identifier, timeline_id, start_lsn)
             VALUES ('x', 'full', 'pg_basebackup', '/b/base.tar', 'completed', now(), '0', {b}, 1,
                     '0/0')"
        ))
        .unwrap();
        assert_gaps_in_step("a base backup starting before the archive");
        // Thousands in one statement, with random holes; then another thousand expired at once.
        archive(
            b,
            3,
            "SELECT n FROM generate_series(1000, 9000) n WHERE random() > 0.02",
        );
        Spi::run(&format!(
            "UPDATE backup_management.wal_archive SET expired_at = now()
              WHERE system_identifier = {b} AND timeline_id = 3 AND segment_number < 4000"
        ))
        .unwrap();
        assert_in_step("bulk ingest and expiry");
        assert_gaps_in_step("bulk ingest and expiry");
        // recovery_status counts what wal_gaps lists (for this cluster, which has none here).
        let listed = Spi::get_one::<i64>(
            "SELECT count(*) FROM backup_mgmt.wal_gaps
              WHERE system_identifier = (SELECT system_identifier FROM pg_control_system())",
        )
        .unwrap()
        .unwrap_or_default();
        let counted = Spi::get_one::<i64>(
            "SELECT coalesce(sum(missing_segments), 0)::bigint FROM backup_mgmt.wal_gap_ranges
              WHERE system_identifier = (SELECT system_identifier FROM pg_control_system())",
        )
        .unwrap()
        .unwrap_or_default();
        assert_eq!(listed, counted);
        Spi::run("TRUNCATE backup_management.wal_archive").unwrap();
        assert_in_step("truncate");
        assert_eq!(ranges().0, "");
    }
}
