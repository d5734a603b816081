//! Scheduled backup jobs without a server: the options a job may carry, with their defaults in
//! one place, and the decisions the worker takes when a job is due (run now, skip this slot,
//! wait), as pure functions.
//!
//! Catch-up rule: when the worker starts (or a long backup ends) after one or more of a job's
//! slots have passed, the job runs once, as soon as possible, for the oldest missed slot; the
//! missed slots in between are not run separately, and the next run is the schedule's next slot
//! after now.  A backup is a snapshot: ten missed hourly runs are served by one backup now.  A
//! job never runs twice at once: a slot that comes while the previous run is still going is
//! recorded as skipped; a manual request waits.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::backup::layout::Compression;
use crate::vocabulary::BackupMethod;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionError {
    #[error("job option \"{key}\" {problem}")]
    Bad { key: String, problem: String },
    #[error("job options must be a JSON object")]
    NotObject,
}

/// What every option means, for hints.
pub const OPTIONS_HELP: &str =
    "Options: compression ('zstd' or 'none'), compression_level (1-22), \
     parallel_jobs (1-64, pg_dump_directory and native_physical), timeout_seconds (1-604800), \
     include_globals (pg_dump methods), fast_checkpoint (pg_basebackup, native_physical).";

/// A job's options, as stored in `backup_jobs.options` (defaults filled in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOptions {
    /// "zstd" or "none".
    pub compression: String,
    pub compression_level: i32,
    pub parallel_jobs: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    /// Whether a logical dump gets its globals file (pg_dump methods only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_globals: Option<bool>,
    /// Whether the backup asks for an immediate checkpoint (physical methods only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast_checkpoint: Option<bool>,
}

fn dump_method(method: BackupMethod) -> bool {
    matches!(method, BackupMethod::PgDump | BackupMethod::PgDumpDirectory)
}

fn physical_method(method: BackupMethod) -> bool {
    matches!(
        method,
        BackupMethod::PgBasebackup | BackupMethod::NativePhysical
    )
}

impl JobOptions {
    /// The defaults for a job of `method`.
    pub fn defaults(method: BackupMethod) -> JobOptions {
        // The native physical method copies on every core unless told otherwise.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get().min(64)) as u32;
        JobOptions {
            compression: "zstd".into(),
            compression_level: 3,
            parallel_jobs: if method == BackupMethod::NativePhysical {
                cores
            } else {
                1
            },
            timeout_seconds: None,
            // Roles and tablespaces are not in a database's dump; a logical backup without them
            // cannot be restored on a new cluster.
            include_globals: dump_method(method).then_some(true),
            // pg_backup_start runs in the worker's own session and waits there for its
            // checkpoint: a spread one would hold the worker's loop (and a server shutdown) for
            // minutes.  pg_basebackup runs beside the loop and spreads it by default.
            fast_checkpoint: physical_method(method)
                .then_some(method == BackupMethod::NativePhysical),
        }
    }

    /// Validates options given by an operator (or read from the catalog) and returns them with
    /// the defaults filled in.
    pub fn normalize(given: &Value, method: BackupMethod) -> Result<JobOptions, OptionError> {
        let Value::Object(given) = given else {
            return Err(OptionError::NotObject);
        };
        let bad = |key: &str, problem: &str| OptionError::Bad {
            key: key.to_owned(),
            problem: problem.to_owned(),
        };
        let int_in = |key: &str, v: &Value, lo: i64, hi: i64| -> Result<i64, OptionError> {
            v.as_i64()
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| bad(key, &format!("must be an integer from {lo} to {hi}")))
        };
        let mut out = JobOptions::defaults(method);
        for (key, v) in given {
            match key.as_str() {
                "compression" => match v.as_str() {
                    Some(c @ ("zstd" | "none")) => out.compression = c.to_owned(),
                    _ => return Err(bad(key, "must be \"zstd\" or \"none\"")),
                },
                "compression_level" => out.compression_level = int_in(key, v, 1, 22)? as i32,
                "parallel_jobs" => {
                    let n = int_in(key, v, 1, 64)?;
                    if n > 1
                        && !matches!(
                            method,
                            BackupMethod::PgDumpDirectory | BackupMethod::NativePhysical
                        )
                    {
                        return Err(bad(
                            key,
                            "above 1 needs backup method pg_dump_directory or native_physical",
                        ));
                    }
                    out.parallel_jobs = n as u32;
                }
                "timeout_seconds" => out.timeout_seconds = Some(int_in(key, v, 1, 604_800)? as u64),
                "include_globals" | "fast_checkpoint" => {
                    let Some(b) = v.as_bool() else {
                        return Err(bad(key, "must be true or false"));
                    };
                    let (applies, slot) = if key == "include_globals" {
                        (dump_method(method), &mut out.include_globals)
                    } else {
                        (physical_method(method), &mut out.fast_checkpoint)
                    };
                    if !applies {
                        return Err(bad(
                            key,
                            &format!("does not apply to backup method {method}"),
                        ));
                    }
                    *slot = Some(b);
                }
                _ => return Err(bad(key, "is not a known option")),
            }
        }
        Ok(out)
    }

    /// As stored.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| Value::Object(Map::new()))
    }

    pub fn compression(&self) -> Compression {
        match self.compression.as_str() {
            "none" => Compression::None,
            _ => Compression::Zstd(self.compression_level),
        }
    }

    pub fn with_globals(&self) -> bool {
        self.include_globals.unwrap_or(false)
    }

    pub fn fast_checkpoint(&self) -> bool {
        self.fast_checkpoint.unwrap_or(false)
    }
}

/// What the worker read of a due job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// Active with `next_run_at` at or before now.
    pub scheduled: bool,
    /// `run_job_now` asked for a run.
    pub requested: bool,
    /// Its `next_run_at`: the slot being claimed.
    pub slot: Option<DateTime<Utc>>,
}

/// What to do with a due job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Run it now for `scheduled_for` (None: a manual run); the job's `next_run_at` becomes
    /// `next_run_at`, and a manual request is cleared when `clear_request`.
    Run {
        scheduled_for: Option<DateTime<Utc>>,
        next_run_at: Option<DateTime<Utc>>,
        clear_request: bool,
    },
    /// The previous run is still going: record this slot as skipped and move on to the next.
    Skip {
        scheduled_for: Option<DateTime<Utc>>,
        next_run_at: Option<DateTime<Utc>>,
    },
    /// Leave it due (a manual request while a run is going, or no place to run it yet).
    Wait,
}

/// The decision for a due job.  `next_after_now` is the schedule's first slot after now (the
/// catch-up rule), `busy` whether the job is running, `no_place` whether its method cannot start
/// another backup now (a session has one native backup).
pub fn decide(
    due: Due,
    next_after_now: Option<DateTime<Utc>>,
    busy: bool,
    no_place: bool,
) -> Decision {
    let next_run_at = if due.scheduled {
        next_after_now
    } else {
        due.slot
    };
    let scheduled_for = if due.scheduled { due.slot } else { None };
    if busy {
        return if due.scheduled {
            Decision::Skip {
                scheduled_for,
                next_run_at,
            }
        } else {
            Decision::Wait
        };
    }
    if no_place {
        return Decision::Wait;
    }
    Decision::Run {
        scheduled_for,
        next_run_at,
        clear_request: due.requested,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The options as stored, as the job API returned them before JobOptions existed.
    fn normalize_options(v: &Value, m: BackupMethod) -> Result<Value, OptionError> {
        JobOptions::normalize(v, m).map(|o| o.to_json())
    }

    #[test]
    fn options_get_defaults_and_are_validated() {
        let o = normalize_options(&json!({}), BackupMethod::PgDump).unwrap();
        assert_eq!(
            o,
            json!({"compression": "zstd", "compression_level": 3, "parallel_jobs": 1, "include_globals": true})
        );
        let o = normalize_options(
            &json!({"fast_checkpoint": true}),
            BackupMethod::PgBasebackup,
        )
        .unwrap();
        assert_eq!(o["fast_checkpoint"], true);
        assert!(o.get("include_globals").is_none());
        let o = normalize_options(
            &json!({"compression": "none", "timeout_seconds": 3600, "parallel_jobs": 4}),
            BackupMethod::PgDumpDirectory,
        )
        .unwrap();
        assert_eq!(o["compression"], "none");
        assert_eq!(o["timeout_seconds"], 3600);
        assert_eq!(o["parallel_jobs"], 4);

        let problem = |v: Value, m: BackupMethod| normalize_options(&v, m).unwrap_err().to_string();
        assert!(problem(json!({"compresion": "zstd"}), BackupMethod::PgDump)
            .contains("\"compresion\" is not a known option"));
        assert!(
            problem(json!({"compression": "gzip"}), BackupMethod::PgDump)
                .contains("\"compression\"")
        );
        assert!(
            problem(json!({"compression_level": 23}), BackupMethod::PgDump).contains("1 to 22")
        );
        assert!(
            problem(json!({"compression_level": "3"}), BackupMethod::PgDump).contains("integer")
        );
        assert!(
            problem(json!({"include_globals": true}), BackupMethod::PgBasebackup)
                .contains("does not apply to backup method pg_basebackup")
        );
        assert!(
            problem(json!({"fast_checkpoint": 1}), BackupMethod::PgBasebackup)
                .contains("true or false")
        );
        assert!(problem(json!({"parallel_jobs": 4}), BackupMethod::PgDump)
            .contains("pg_dump_directory"));
        assert!(problem(json!({"timeout_seconds": 0}), BackupMethod::PgDump)
            .contains("timeout_seconds"));
        assert!(matches!(
            normalize_options(&json!([1]), BackupMethod::PgDump),
            Err(OptionError::NotObject)
        ));
    }

    #[test]
    fn options_round_trip_with_their_defaults() {
        let o = JobOptions::normalize(&json!({}), BackupMethod::PgDump).unwrap();
        assert_eq!(
            o.to_json(),
            json!({"compression": "zstd", "compression_level": 3, "parallel_jobs": 1, "include_globals": true})
        );
        let native = JobOptions::normalize(&json!({}), BackupMethod::NativePhysical).unwrap();
        assert_eq!(native.fast_checkpoint, Some(true));
        assert!(native.parallel_jobs >= 1);
        let base = JobOptions::normalize(&json!({}), BackupMethod::PgBasebackup).unwrap();
        assert_eq!(base.fast_checkpoint, Some(false));
        assert_eq!(base.include_globals, None);
        let o = JobOptions::normalize(
            &json!({"compression": "none", "parallel_jobs": 4, "timeout_seconds": 60}),
            BackupMethod::PgDumpDirectory,
        )
        .unwrap();
        assert_eq!(o.compression(), Compression::None);
        assert_eq!((o.parallel_jobs, o.timeout_seconds), (4, Some(60)));
        let err = |v: Value, m| JobOptions::normalize(&v, m).unwrap_err().to_string();
        assert!(
            err(json!({"parallel_jobs": 4}), BackupMethod::PgDump).contains("pg_dump_directory")
        );
        assert!(err(json!({"compression_level": 30}), BackupMethod::PgDump).contains("1 to 22"));
        assert!(err(json!({"colour": 1}), BackupMethod::PgDump).contains("not a known option"));
        assert!(
            err(json!({"include_globals": true}), BackupMethod::PgBasebackup)
                .contains("does not apply")
        );
        assert!(err(
            json!({"fast_checkpoint": "yes"}),
            BackupMethod::PgBasebackup
        )
        .contains("true or false"));
        assert_eq!(
            JobOptions::normalize(&json!([1]), BackupMethod::PgDump),
            Err(OptionError::NotObject)
        );
        // What is stored reads back as the same options.
        let stored = o.to_json();
        assert_eq!(
            JobOptions::normalize(&stored, BackupMethod::PgDumpDirectory).unwrap(),
            o
        );
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn missed_slots_run_once_and_the_next_is_after_now() {
        let due = Due {
            scheduled: true,
            requested: false,
            slot: Some(t("2026-12-01T01:00:00Z")),
        };
        let next = Some(t("2026-12-03T11:00:00Z"));
        assert_eq!(
            decide(due, next, false, false),
            Decision::Run {
                scheduled_for: Some(t("2026-12-01T01:00:00Z")),
                next_run_at: next,
                clear_request: false
            }
        );
    }

    #[test]
    fn a_busy_job_skips_its_slot_and_a_manual_request_waits() {
        let slot = Some(t("2026-12-03T10:00:00Z"));
        let next = Some(t("2026-12-03T11:00:00Z"));
        let scheduled = Due {
            scheduled: true,
            requested: false,
            slot,
        };
        assert_eq!(
            decide(scheduled, next, true, false),
            Decision::Skip {
                scheduled_for: slot,
                next_run_at: next
            }
        );
        let manual = Due {
            scheduled: false,
            requested: true,
            slot,
        };
        assert_eq!(decide(manual, next, true, false), Decision::Wait);
        // Not busy: a manual run keeps the schedule as it is and clears the request.
        assert_eq!(
            decide(manual, next, false, false),
            Decision::Run {
                scheduled_for: None,
                next_run_at: slot,
                clear_request: true
            }
        );
        // No place for its method: it stays due.
        assert_eq!(decide(scheduled, next, false, true), Decision::Wait);
    }
}
