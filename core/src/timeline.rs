//! Timelines: PostgreSQL's history files and the path a recovery follows through them.
//!
//! Each promotion (a failover, or the end of a point-in-time recovery) starts a new timeline
//! and archives its history file, `0000000N.history`: one line per ancestor, oldest first, each
//! naming a timeline and the WAL location where it was left (`1<TAB>0/5000000<TAB>reason`).
//! A recovery that starts from a backup on timeline 1 and should end on timeline 3 reads
//! timeline 1's WAL up to where timeline 2 branched off, then timeline 2's, then 3's.  Which
//! archived segment recovery reads is therefore a question of the path, not of the backup's
//! timeline alone: this module answers it, for the restore program's choice of a base backup
//! and its check that every segment is there, and for `plan_recovery`'s, from the local archive.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use crate::wal::{Lsn, SegmentSize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimelineError {
    #[error("the history file of timeline {timeline}, line {line}: {why}")]
    Malformed {
        timeline: u32,
        line: usize,
        why: String,
    },
}

/// Why a history file's bytes (as archived) are not a history.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// The zstd stream is damaged (the message of the decoder's error).
    #[error("it cannot be decompressed: {0}")]
    Decompress(String),
    #[error("it decompresses to more than {0} bytes")]
    TooLarge(u64),
    #[error("it is not text")]
    NotText,
    #[error(transparent)]
    Malformed(#[from] TimelineError),
}

/// Why a history file an archive lists could not be used, naming the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryUnusable {
    /// It was read as archived, and its bytes are not a history.
    #[error("{file}: {why}")]
    NotAHistory { file: String, why: HistoryError },
    /// It could not be read as the archive lists it (missing, another sha256, too large): the
    /// reader's error, in its words (which name the file).
    #[error("{0}")]
    NotServed(String),
}

/// Why recovery from a backup cannot follow the timelines to the one asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("timeline {target} does not descend from timeline {base}")]
    NotDescendant { target: u32, base: u32 },
    #[error(
        "the path to timeline {target} leaves timeline {base} at {left}, before the backup \
         ended at {base_end}"
    )]
    LeftBeforeBackupEnd {
        target: u32,
        base: u32,
        left: Lsn,
        base_end: Lsn,
    },
    /// The history of the timeline asked for could not be read (`why`: the reader's words).
    #[error("the history file of timeline {timeline}: {why}")]
    Unreadable { timeline: u32, why: HistoryUnusable },
    #[error("the archive holds no history file of timeline {0}")]
    NoHistory(u32),
    /// `Latest`: a newer timeline whose history cannot be read may be the live one.
    #[error(
        "the history file of timeline {timeline} cannot be read ({why}), so it is not known \
         whether that timeline continues from this backup; name the timeline to end on (the \
         restore program's --target-timeline)"
    )]
    NewerUnreadable { timeline: u32, why: HistoryUnusable },
    /// `Latest`: WAL of a newer timeline without its history file.
    #[error(
        "the archive holds WAL of timeline {0} but not its history file, so it is not known \
         whether that timeline continues from this backup; name the timeline to end on (the \
         restore program's --target-timeline)"
    )]
    NewerWithoutHistory(u32),
}

/// One line of a history file: timeline `parent` was left at `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch {
    pub parent: u32,
    pub end: Lsn,
}

/// Parses the history file of `timeline` as PostgreSQL's `readTimeLineHistory` does: comments
/// and blank lines are skipped; every other line is a timeline and a location (separated by
/// white space, a reason may follow); timelines rise and are below `timeline`, so a file has at
/// most `timeline - 1` lines that count.  Locations need not rise: a recovery that stopped
/// before its target timeline began writes its parent with an earlier location than the line
/// before (and that timeline is then never read).
pub fn parse_history(timeline: u32, text: &str) -> Result<Vec<Switch>, TimelineError> {
    let mut out: Vec<Switch> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // Quoted in errors, cut short: the file comes from a target others may write.
        let quoted: String = raw.chars().take(60).collect();
        let bad = |why: String| TimelineError::Malformed {
            timeline,
            line: i + 1,
            why,
        };
        let mut fields = line.split_whitespace();
        let parent = fields
            .next()
            .and_then(|t| t.parse::<u32>().ok())
            .filter(|t| *t > 0)
            .ok_or_else(|| bad(format!("{quoted:?} does not start with a timeline")))?;
        let end = fields
            .next()
            .and_then(Lsn::parse)
            .ok_or_else(|| bad(format!("{quoted:?} names no WAL location")))?;
        if parent >= timeline {
            return Err(bad(format!(
                "timeline {parent} is not an ancestor of timeline {timeline}"
            )));
        }
        if let Some(prev) = out.last() {
            if parent <= prev.parent {
                return Err(bad(format!(
                    "timeline {parent} does not follow timeline {}",
                    prev.parent
                )));
            }
        }
        out.push(Switch { parent, end });
    }
    Ok(out)
}

/// PostgreSQL's name of the history file of `timeline` (`0000000A.history`).
pub fn history_file_name(timeline: u32) -> String {
    format!("{timeline:08X}.history")
}

/// The largest history file read (one line per ancestor timeline: a few kB even after
/// thousands of promotions), as stored and once decompressed.
pub const HISTORY_LIMIT: u64 = 1 << 20;
/// The most history-file bytes one restore reads, however many a target lists.
pub const HISTORIES_LIMIT: u64 = 64 << 20;

/// A history file's bytes as archived (`stored`, zstd-compressed when `compressed`), at most
/// `limit` bytes once decompressed: the file comes from an archive others may write, and a few
/// bytes of zstd can claim gigabytes.
pub fn decompressed_history(
    stored: Vec<u8>,
    compressed: bool,
    limit: u64,
) -> Result<Vec<u8>, HistoryError> {
    if !compressed {
        return Ok(stored);
    }
    let mut out = Vec::new();
    crate::stream::decompress(&stored[..])
        .and_then(|d| d.take(limit + 1).read_to_end(&mut out))
        .map_err(|e| HistoryError::Decompress(e.to_string()))?;
    if out.len() as u64 > limit {
        return Err(HistoryError::TooLarge(limit));
    }
    Ok(out)
}

/// The history of `timeline` that a history file's (decompressed) bytes hold.
pub fn history_of(timeline: u32, bytes: Vec<u8>) -> Result<Vec<Switch>, HistoryError> {
    let text = String::from_utf8(bytes).map_err(|_| HistoryError::NotText)?;
    Ok(parse_history(timeline, &text)?)
}

/// One timeline of a recovery's path, and where its WAL takes over from the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leg {
    pub timeline: u32,
    /// None for the first: the base backup's own timeline.
    pub begins: Option<Lsn>,
}

/// The timelines a recovery reads, from the base backup's to the one it ends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelinePath(Vec<Leg>);

impl TimelinePath {
    /// Recovery that stays on the base backup's timeline.
    pub fn stay(timeline: u32) -> TimelinePath {
        TimelinePath(vec![Leg {
            timeline,
            begins: None,
        }])
    }

    /// The path from `base` (a backup on that timeline that needs its WAL up to `base_end`) to
    /// `target`, whose history is `history`.  Err: why `target` does not continue from there.
    pub fn to(
        base: u32,
        base_end: Lsn,
        target: u32,
        history: &[Switch],
    ) -> Result<TimelinePath, RouteError> {
        if target == base {
            return Ok(TimelinePath::stay(base));
        }
        let Some(at) = history.iter().position(|s| s.parent == base) else {
            return Err(RouteError::NotDescendant { target, base });
        };
        // Where recovery along this path stops reading the backup's timeline: the earliest
        // switch from here on (a later line may name an earlier location, see `parse_history`).
        let left = history[at..]
            .iter()
            .map(|s| s.end)
            .min()
            .unwrap_or(base_end);
        if left < base_end {
            return Err(RouteError::LeftBeforeBackupEnd {
                target,
                base,
                left,
                base_end,
            });
        }
        let mut legs = vec![Leg {
            timeline: base,
            begins: None,
        }];
        // Each later ancestor takes over where the one before it was left, the target last.
        let later = history[at + 1..].iter().map(|s| s.parent).chain([target]);
        for (timeline, begins) in later.zip(history[at..].iter().map(|s| s.end)) {
            legs.push(Leg {
                timeline,
                begins: Some(begins),
            });
        }
        Ok(TimelinePath(legs))
    }

    /// The timeline recovery ends on.
    pub fn target(&self) -> u32 {
        self.0.last().map_or(1, |l| l.timeline)
    }

    pub fn legs(&self) -> &[Leg] {
        &self.0
    }

    /// Whether recovery leaves the base backup's timeline.
    pub fn changes_timeline(&self) -> bool {
        self.0.len() > 1
    }

    /// What `recovery_target_timeline` names: the timeline recovery ends on when it changes
    /// timeline, else None (`'current'`, which needs no history file of the backup's own
    /// timeline; a number other than 1 would).
    pub fn recovery_target(&self) -> Option<u32> {
        self.changes_timeline().then(|| self.target())
    }

    /// Which timeline's file of segment `number` recovery reads: the newest leg that has begun
    /// by that segment.  The segment where a timeline branched off is read from the new
    /// timeline's file, which holds the old one's WAL up to the switch (as PostgreSQL's
    /// `XLogFileReadAnyTLI` does).
    pub fn timeline_of(&self, number: u64, size: SegmentSize) -> u32 {
        self.0
            .iter()
            .rev()
            .find(|l| l.begins.is_none_or(|b| size.segment_of(b.0) <= number))
            .map_or(1, |l| l.timeline)
    }

    /// The first segment of the timeline recovery ends on, when that is not the backup's:
    /// recovery reaches that timeline only if this segment is there.
    pub fn first_segment_of_target(&self, size: SegmentSize) -> Option<u64> {
        self.0
            .last()
            .and_then(|l| l.begins)
            .map(|b| size.segment_of(b.0))
    }

    /// The path cut where recovery to `lsn` stops: the legs that begin in a later segment are
    /// never read.  One that begins in `lsn`'s own segment is kept even when it begins after
    /// `lsn`: that segment of the old timeline may exist only as `.partial` (which recovery
    /// never reads), and the new timeline's copy holds the old WAL up to the switch.
    pub fn up_to(&self, lsn: Lsn, size: SegmentSize) -> TimelinePath {
        let last = size.segment_of(lsn.0);
        TimelinePath(
            self.0
                .iter()
                .filter(|l| l.begins.is_none_or(|b| size.segment_of(b.0) <= last))
                .copied()
                .collect(),
        )
    }

    /// `1 -> 2 (from 0/5000000) -> 3 (from 0/9000000)`, for the reasons the program gives.
    pub fn describe(&self) -> String {
        self.0
            .iter()
            .map(|l| match l.begins {
                None => l.timeline.to_string(),
                Some(b) => format!("{} (from {})", l.timeline, b),
            })
            .collect::<Vec<_>>()
            .join(" -> ")
    }
}

/// Which timeline a recovery should end on, as `recovery_target_timeline` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetTimeline {
    /// The newest timeline that continues from the base backup (PostgreSQL's default).
    #[default]
    Latest,
    /// The base backup's own timeline.
    Current,
    Id(u32),
}

impl TargetTimeline {
    /// `latest`, `current` or a timeline number, as `recovery_target_timeline` takes them.
    pub fn parse(text: &str) -> Option<TargetTimeline> {
        match text {
            "latest" => Some(TargetTimeline::Latest),
            "current" => Some(TargetTimeline::Current),
            n => n
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .map(TargetTimeline::Id),
        }
    }
}

/// The history files a target holds, read: each timeline's, or why it could not be used.
pub type Histories = BTreeMap<u32, Result<Vec<Switch>, HistoryUnusable>>;

/// The timelines above `timeline` the target knows of: those it holds a history file of, and
/// those it holds WAL of.  Above a backup's timeline, what `Latest` looks through; above the
/// timeline `Latest` chose, the newer ones it passed over (each branched off before the backup
/// ended, or from another timeline: `path_for` refuses any whose history it cannot read).
pub fn timelines_above(
    timeline: u32,
    histories: &Histories,
    with_wal: &BTreeSet<u32>,
) -> BTreeSet<u32> {
    histories
        .keys()
        .chain(with_wal)
        .copied()
        .filter(|t| *t > timeline)
        .collect()
}

/// The path from a backup on `base` that ends at `base_end` to the timeline `target` asks for,
/// given the `histories` there are and the timelines the target holds WAL of (`with_wal`).
/// `Latest` takes the newest timeline that continues from the backup, passing over those that
/// branched off before the backup ended or elsewhere; a newer timeline whose history file is
/// damaged or missing is a refusal, not a reason to stop short of it (it may be the live one).
pub fn path_for(
    base: u32,
    base_end: Lsn,
    target: TargetTimeline,
    histories: &Histories,
    with_wal: &BTreeSet<u32>,
) -> Result<TimelinePath, RouteError> {
    let to = |t: u32| match histories.get(&t) {
        _ if t == base => Ok(TimelinePath::stay(base)),
        Some(Ok(h)) => TimelinePath::to(base, base_end, t, h),
        Some(Err(why)) => Err(RouteError::Unreadable {
            timeline: t,
            why: why.clone(),
        }),
        None => Err(RouteError::NoHistory(t)),
    };
    match target {
        TargetTimeline::Current => Ok(TimelinePath::stay(base)),
        TargetTimeline::Id(t) => to(t),
        TargetTimeline::Latest => {
            for t in timelines_above(base, histories, with_wal).into_iter().rev() {
                match histories.get(&t) {
                    Some(Ok(h)) => match TimelinePath::to(base, base_end, t, h) {
                        Ok(path) => return Ok(path),
                        // Another branch: not this backup's future.
                        Err(_) => continue,
                    },
                    Some(Err(why)) => {
                        return Err(RouteError::NewerUnreadable {
                            timeline: t,
                            why: why.clone(),
                        })
                    }
                    None => return Err(RouteError::NewerWithoutHistory(t)),
                }
            }
            Ok(TimelinePath::stay(base))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB16: SegmentSize = SegmentSize::DEFAULT;

    fn lsn(s: &str) -> Lsn {
        Lsn::parse(s).unwrap()
    }

    /// Timeline 3's history as PostgreSQL writes it: 1 left at 0/5000000, 2 at 0/9000000.
    const THREE: &str = "1\t0/5000000\tno recovery target specified\n\n\
                         # a comment\n2\t0/90000A0\tbefore 2026-12-05 10:00:00+00\n";

    #[test]
    fn history_files_are_read_as_postgres_reads_them() {
        let h = parse_history(3, THREE).unwrap();
        assert_eq!(
            h,
            [
                Switch {
                    parent: 1,
                    end: lsn("0/5000000")
                },
                Switch {
                    parent: 2,
                    end: lsn("0/90000A0")
                }
            ]
        );
        assert_eq!(parse_history(1, ""), Ok(vec![]));
        for bad in [
            "x\t0/1\n",
            "1\tnowhere\n",
            "3\t0/1\n",
            "2\t0/9\n1\t0/5\n",
            "2\t0/9\n2\t0/5\n",
        ] {
            let e = parse_history(3, bad).unwrap_err();
            assert!(e.to_string().contains("timeline 3, line"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_path_follows_every_ancestor_from_the_backups_timeline() {
        let h = parse_history(3, THREE).unwrap();
        let p = TimelinePath::to(1, lsn("0/3000100"), 3, &h).unwrap();
        assert_eq!(p.target(), 3);
        assert_eq!(
            p.describe(),
            "1 -> 2 (from 0/5000000) -> 3 (from 0/90000A0)"
        );
        // Segment 4 is timeline 1's; 5, where 2 branched off, is read from 2's file; 9 from 3's.
        let tl: Vec<u32> = (3..=10).map(|n| p.timeline_of(n, MB16)).collect();
        assert_eq!(tl, [1, 1, 2, 2, 2, 2, 3, 3]);
        // From a backup on timeline 2.
        let p = TimelinePath::to(2, lsn("0/6000000"), 3, &h).unwrap();
        assert_eq!(p.describe(), "2 -> 3 (from 0/90000A0)");
        assert_eq!(p.timeline_of(5, MB16), 2);
        // A backup that ended after its timeline was left is not on timeline 3's path.
        let e = TimelinePath::to(1, lsn("0/6000000"), 3, &h).unwrap_err();
        assert!(
            e.to_string().contains("leaves timeline 1 at 0/5000000"),
            "{e}"
        );
        // Nor is a timeline that is no ancestor.
        let e = TimelinePath::to(4, lsn("0/1"), 3, &h).unwrap_err();
        assert_eq!(e, RouteError::NotDescendant { target: 3, base: 4 });
        assert!(
            e.to_string().contains("does not descend from timeline 4"),
            "{e}"
        );
        assert_eq!(TimelinePath::stay(2).timeline_of(99, MB16), 2);
    }

    #[test]
    fn latest_is_the_newest_timeline_that_continues_from_the_backup() {
        let mut hs: Histories = BTreeMap::new();
        let read = |tli: u32, text: &str| {
            parse_history(tli, text).map_err(|e| HistoryUnusable::NotAHistory {
                file: history_file_name(tli),
                why: e.into(),
            })
        };
        hs.insert(2, read(2, "1\t0/5000000\tx\n"));
        hs.insert(3, read(3, THREE));
        // 4 branched off 1 early (a second failover of an old primary).
        hs.insert(4, read(4, "1\t0/2000000\tx\n"));
        let none = BTreeSet::new();
        let base_end = lsn("0/3000100");
        let path = |target, hs: &Histories, wal: &BTreeSet<u32>| {
            path_for(1, base_end, target, hs, wal).map(|p| p.target())
        };
        assert_eq!(path(TargetTimeline::Latest, &hs, &none), Ok(3));
        assert_eq!(path(TargetTimeline::Current, &hs, &none), Ok(1));
        assert_eq!(path(TargetTimeline::Id(2), &hs, &none), Ok(2));
        let e = path(TargetTimeline::Id(4), &hs, &none).unwrap_err();
        assert!(
            e.to_string().contains("leaves timeline 1 at 0/2000000"),
            "{e}"
        );
        let e = path(TargetTimeline::Id(7), &hs, &none).unwrap_err();
        assert!(
            e.to_string().contains("no history file of timeline 7"),
            "{e}"
        );
        // WAL of a timeline with no history file: latest cannot know where it leads.
        let e = path(TargetTimeline::Latest, &hs, &BTreeSet::from([1, 5])).unwrap_err();
        assert!(
            e.to_string()
                .contains("WAL of timeline 5 but not its history file"),
            "{e}"
        );
        // A history that cannot be read may be the live timeline's: a refusal for latest,
        // and named when asked for; a timeline below it can still be named.
        hs.insert(
            3,
            Err(HistoryUnusable::NotServed("its sha256 differs".into())),
        );
        let e = path(TargetTimeline::Latest, &hs, &none).unwrap_err();
        assert!(
            e.to_string()
                .contains("timeline 3 cannot be read (its sha256 differs)"),
            "{e}"
        );
        let e = path(TargetTimeline::Id(3), &hs, &none).unwrap_err();
        assert!(e.to_string().contains("sha256 differs"), "{e}");
        assert_eq!(path(TargetTimeline::Id(2), &hs, &none), Ok(2));
        // Nothing newer: the backup's own timeline.
        assert_eq!(
            path_for(5, base_end, TargetTimeline::Latest, &hs, &none).map(|p| p.target()),
            Ok(5)
        );
        // A history whose last location comes before the one above it (a recovery that
        // stopped before its target timeline began): that timeline is never read.
        let odd = read(3, "1\t0/5000000\tx\n2\t0/4000000\tx\n").unwrap();
        let p = TimelinePath::to(1, lsn("0/3000000"), 3, &odd).unwrap();
        assert_eq!(p.timeline_of(4, MB16), 3);
        assert_eq!(p.timeline_of(6, MB16), 3);
        let e = TimelinePath::to(1, lsn("0/4800000"), 3, &odd).unwrap_err();
        assert!(
            e.to_string().contains("leaves timeline 1 at 0/4000000"),
            "{e}"
        );
        // A path cut at a location before a later timeline began.
        let three = TimelinePath::to(1, base_end, 3, &read(3, THREE).unwrap()).unwrap();
        assert_eq!(three.up_to(lsn("0/6000000"), MB16).target(), 2);
        assert_eq!(three.up_to(lsn("0/4FFFFFF"), MB16).target(), 1);
        // Before timeline 2's switch, but in its segment: the new timeline's copy is read.
        assert_eq!(three.up_to(lsn("0/5000000"), MB16).target(), 2);
        assert_eq!(three.up_to(lsn("0/9000010"), MB16).target(), 3);
        assert_eq!(three.first_segment_of_target(MB16), Some(9));
        assert_eq!(TimelinePath::stay(1).first_segment_of_target(MB16), None);
        assert_eq!(
            TargetTimeline::parse("latest"),
            Some(TargetTimeline::Latest)
        );
        assert_eq!(TargetTimeline::parse("3"), Some(TargetTimeline::Id(3)));
        assert_eq!(TargetTimeline::parse("0"), None);
        assert_eq!(TargetTimeline::parse("-1"), None);
    }
}
