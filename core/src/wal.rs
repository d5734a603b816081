//! WAL positions and file names, with the segment size as a parameter.
//!
//! PostgreSQL names a segment `TTTTTTTTXXXXXXXXYYYYYYYY`: the timeline, then the segment number
//! split into a "log" (the high 32 bits of the LSN) and the segment within it.  How many
//! segments a log holds depends on the cluster's `wal_segment_size` (`initdb --wal-segsize`, 1 MB
//! to 1 GB): 256 of 16 MB, 64 of 64 MB.  Every name and number in backup_mgmt goes through this
//! module, so that a 64 MB cluster's archive, gaps and recovery plans agree.

use std::fmt;
use std::ops::RangeInclusive;

/// Bytes per WAL log (`XLogSegmentsPerXLogId` counts segments in this much).
const LOG_BYTES: u64 = 0x1_0000_0000;
/// PostgreSQL's default (and the only size before PostgreSQL 11).
pub const DEFAULT_SEGMENT_SIZE: u64 = 16 << 20;

/// A WAL segment size: a power of two from 1 MB to 1 GB, as initdb allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentSize(u64);

impl SegmentSize {
    /// 16 MB.
    pub const DEFAULT: SegmentSize = SegmentSize(DEFAULT_SEGMENT_SIZE);

    /// `bytes` when it is a size PostgreSQL can have, else None.
    pub const fn new(bytes: u64) -> Option<SegmentSize> {
        if bytes.is_power_of_two() && bytes >= (1 << 20) && bytes <= (1 << 30) {
            Some(SegmentSize(bytes))
        } else {
            None
        }
    }

    pub fn bytes(self) -> u64 {
        self.0
    }

    /// Segments per log: 256 for 16 MB segments.
    pub fn per_log(self) -> u64 {
        LOG_BYTES / self.0
    }

    /// The number of the segment holding `lsn`.
    pub fn segment_of(self, lsn: u64) -> u64 {
        lsn / self.0
    }

    /// The first LSN of segment `number`.
    pub fn start_of(self, number: u64) -> u64 {
        number * self.0
    }
}

impl Default for SegmentSize {
    fn default() -> Self {
        SegmentSize::DEFAULT
    }
}

/// A segment: its timeline and number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub timeline: u32,
    pub number: u64,
}

impl Segment {
    /// The file name PostgreSQL gives this segment in a cluster of `size` segments.
    pub fn file_name(self, size: SegmentSize) -> String {
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.number / size.per_log(),
            self.number % size.per_log()
        )
    }

    /// The segment a 24-character segment file name denotes in a cluster of `size` segments
    /// (None for any other name, or a segment field that cannot occur at this size).
    pub fn parse(name: &str, size: SegmentSize) -> Option<Segment> {
        if !is_hex(name, 24) {
            return None;
        }
        let timeline = u32::from_str_radix(&name[0..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
        (seg < size.per_log()).then(|| Segment {
            timeline,
            number: log * size.per_log() + seg,
        })
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Names PostgreSQL archives: segments, partial segments, timeline history files and backup
/// history files.  Anything else (a path, a dot file) is not a WAL file name.
pub fn is_archivable_name(name: &str) -> bool {
    if let Some(tli) = name.strip_suffix(".history") {
        return is_hex(tli, 8);
    }
    if let Some(seg) = name.strip_suffix(".partial") {
        return is_hex(seg, 24);
    }
    if let Some(rest) = name.strip_suffix(".backup") {
        // `<segment>.<offset>.backup`; split by bytes only once they are known to be ASCII (a
        // name from a mirror may be anything, and a cut inside a character would panic).
        return rest.len() == 33
            && rest.is_ascii()
            && is_hex(&rest[..24], 24)
            && rest.as_bytes()[24] == b'.'
            && is_hex(&rest[25..], 8);
    }
    is_hex(name, 24)
}

/// Whether `name` is a plain segment file name (24 hex digits).
pub fn is_segment_name(name: &str) -> bool {
    is_hex(name, 24)
}

/// A WAL location.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// `X/Y` as PostgreSQL prints a WAL location.
    pub fn parse(text: &str) -> Option<Lsn> {
        let (hi, lo) = text.trim().split_once('/')?;
        let hi = u32::from_str_radix(hi, 16).ok()?;
        let lo = u32::from_str_radix(lo, 16).ok()?;
        Some(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The WAL a base backup needs to be consistent: from its start position to its stop position
/// on one timeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRange {
    pub start: Lsn,
    pub stop: Lsn,
    pub timeline: u32,
}

impl WalRange {
    /// Reads `pg_basebackup --verbose`'s "write-ahead log start point: 0/2000028 on timeline 1"
    /// and "write-ahead log end point: 0/2000100" lines.
    pub fn from_basebackup_log(log: &str) -> Option<WalRange> {
        let mut start = None;
        let mut stop = None;
        for line in log.lines() {
            if let Some(rest) = line.split("write-ahead log start point: ").nth(1) {
                let mut words = rest.split_whitespace();
                let lsn = words.next().and_then(Lsn::parse);
                let tli = words.nth(2).and_then(|t| t.parse::<u32>().ok());
                start = lsn.zip(tli);
            } else if let Some(rest) = line.split("write-ahead log end point: ").nth(1) {
                stop = rest.split_whitespace().next().and_then(Lsn::parse);
            }
        }
        let ((start, timeline), stop) = (start?, stop?);
        Some(WalRange {
            start,
            stop,
            timeline,
        })
    }

    /// The numbers of the segments the backup needs, first to last.  The stop position is just
    /// past the last record, so a stop exactly on a segment boundary needs only the one before.
    pub fn segment_numbers(&self, size: SegmentSize) -> RangeInclusive<u64> {
        let last = self.stop.0.saturating_sub(1).max(self.start.0);
        size.segment_of(self.start.0)..=size.segment_of(last)
    }

    /// The segments the backup needs, first to last.
    pub fn segments(&self, size: SegmentSize) -> impl Iterator<Item = Segment> + '_ {
        self.segment_numbers(size).map(|number| Segment {
            timeline: self.timeline,
            number,
        })
    }

    /// The file names of the first and the last segment the backup needs.
    pub fn first_and_last(&self, size: SegmentSize) -> (String, String) {
        let numbers = self.segment_numbers(size);
        let name = |number| {
            Segment {
                timeline: self.timeline,
                number,
            }
            .file_name(size)
        };
        (name(*numbers.start()), name(*numbers.end()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: SegmentSize = SegmentSize(16 << 20);
    const MB64: SegmentSize = SegmentSize(64 << 20);

    #[test]
    fn basebackup_wal_positions_are_read_from_its_log() {
        let log = "pg_basebackup: initiating base backup, waiting for checkpoint to complete\n\
                   pg_basebackup: checkpoint completed\n\
                   pg_basebackup: write-ahead log start point: 1/FE000028 on timeline 3\n\
                   pg_basebackup: write-ahead log end point: 1/FF000000\n\
                   pg_basebackup: base backup completed";
        let r = WalRange::from_basebackup_log(log).unwrap();
        assert_eq!(r.start, Lsn(0x1_FE00_0028));
        assert_eq!(r.stop, Lsn(0x1_FF00_0000));
        assert_eq!(r.timeline, 3);
        // The stop point sits on a file boundary: the last file needed is the one before it.
        assert_eq!(
            r.first_and_last(MB16),
            (
                "0000000300000001000000FE".to_owned(),
                "0000000300000001000000FE".to_owned()
            )
        );
        assert_eq!(
            Segment {
                timeline: 3,
                number: MB16.segment_of(0x2_0000_0001)
            }
            .file_name(MB16),
            "000000030000000200000000"
        );
        assert_eq!(r.start.to_string(), "1/FE000028");
        assert!(WalRange::from_basebackup_log("pg_basebackup: done").is_none());
    }

    #[test]
    fn segment_names_follow_the_segment_size() {
        let s = |timeline, number| Segment { timeline, number };
        assert_eq!(s(1, 3).file_name(MB16), "000000010000000000000003");
        assert_eq!(s(2, 256 + 10).file_name(MB16), "00000002000000010000000A");
        // 64 MB: 64 segments a log.
        assert_eq!(s(1, 64 + 1).file_name(MB64), "000000010000000100000001");
        for size in [MB16, MB64, SegmentSize::new(1 << 20).unwrap()] {
            for n in [0, 1, 63, 64, 255, 256, 4097, 1 << 20] {
                let name = s(7, n).file_name(size);
                assert_eq!(Segment::parse(&name, size), Some(s(7, n)), "{name}");
            }
        }
        // The same name is another number at another size.
        assert_eq!(
            Segment::parse("00000001000000020000000A", MB16)
                .unwrap()
                .number,
            2 * 256 + 10
        );
        assert_eq!(
            Segment::parse("00000001000000020000000A", MB64)
                .unwrap()
                .number,
            2 * 64 + 10
        );
        // A segment field a 64 MB cluster cannot have.
        assert_eq!(Segment::parse("000000010000000000000040", MB64), None);
        assert_eq!(Segment::parse("00000002.history", MB16), None);
    }

    #[test]
    fn sizes_are_what_initdb_allows() {
        assert!(SegmentSize::new(16 << 20).is_some());
        assert!(SegmentSize::new(1 << 30).is_some());
        assert!(SegmentSize::new(0).is_none());
        assert!(SegmentSize::new(3 << 20).is_none());
        assert!(SegmentSize::new(2 << 30).is_none());
        assert_eq!(MB64.per_log(), 64);
    }

    #[test]
    fn lsn_text() {
        assert_eq!(Lsn::parse("16/B374D848"), Some(Lsn(0x16_B374_D848)));
        assert_eq!(Lsn::parse("0/0"), Some(Lsn(0)));
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn::parse("x/1"), None);
        assert_eq!(Lsn::parse("1"), None);
        assert_eq!(Lsn::parse("100000000/0"), None);
    }

    #[test]
    fn only_wal_names_are_archivable() {
        assert!(is_archivable_name("000000010000000000000003"));
        assert!(is_archivable_name("00000002.history"));
        assert!(is_archivable_name("000000010000000000000003.partial"));
        assert!(is_archivable_name(
            "000000010000000000000003.00000028.backup"
        ));
        assert!(!is_archivable_name("../etc/passwd"));
        assert!(!is_archivable_name("00000001000000000000000G"));
        assert!(!is_archivable_name(""));
        // Non-ASCII where a byte count would cut a character: refused, not a panic.
        assert!(!is_archivable_name(&format!(
            "{}é{}.backup",
            "0".repeat(23),
            "0".repeat(8)
        )));
        assert!(!is_archivable_name(
            "000000010000000000000002.0000002Z.backup"
        ));
    }

    #[test]
    fn backup_ranges_in_64_mb_segments() {
        let r = WalRange {
            start: Lsn(0x2_0800_0028),
            stop: Lsn(0x2_0C00_0100),
            timeline: 1,
        };
        assert_eq!(r.segment_numbers(MB64), 2 * 64 + 2..=2 * 64 + 3);
        assert_eq!(
            r.first_and_last(MB64),
            (
                "000000010000000200000002".to_owned(),
                "000000010000000200000003".to_owned()
            )
        );
    }
}
