//! What the program prints: tables for people, JSON for scripts, a progress bar only on a
//! terminal.

/// `println!` for people: the line's control characters escaped (`printable`), since it may
/// carry text from the target (a mirror's names and times, a dump's object names).  JSON output
/// is escaped by serde and printed as it is.
macro_rules! say {
    ($($arg:tt)*) => {
        println!("{}", backup_mgmt_core::printable::one_line(&format!($($arg)*)))
    };
}

/// `eprintln!` for people, as `say!`.
macro_rules! tell {
    ($($arg:tt)*) => {
        eprintln!("{}", backup_mgmt_core::printable::one_line(&format!($($arg)*)))
    };
}

/// `println!` of a JSON document for scripts, with DEL and the C1 controls escaped too
/// (`\u009b`, which some terminals take as CSI): serde escapes only those below U+0020, and a
/// mirror's text may hold any.  They only occur inside strings, where `\uXXXX` is JSON.
pub fn print_json(text: &str) {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\u{7f}'..='\u{9f}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    println!("{out}");
}

use std::path::Path;
use std::time::Duration;

use backup_mgmt_core::restore::fetch::Restored;
use backup_mgmt_core::restore::offsite::{Choice, Mirror};
use backup_mgmt_core::storage::set_aside::SetAside;
use indicatif::{ProgressBar, ProgressStyle};

use crate::finish::Checked;

/// A failure, for `--output json`: one object on stdout (`{"error": {"exit_code", "message"}}`),
/// beside the text on stderr.
pub fn error(exit_code: u8, message: &str) {
    print_json(&format!(
        "{}",
        serde_json::json!({ "error": { "exit_code": exit_code, "message": message } })
    ));
}

/// `list`: every cluster, its backups and its WAL on the target.
pub fn list(mirrors: &[Mirror], json: bool) {
    if json {
        let clusters: Vec<serde_json::Value> = mirrors
            .iter()
            .map(|m| {
                serde_json::json!({
                    "system_identifier": m.system_identifier,
                    "pg_version": m.pg_version,
                    "mirror_written_at": m.written_at,
                    "backups": m.backups,
                    "wal": {
                        "files": m.wal_files.len(),
                        "first": m.wal_files.first().map(|w| &w.name),
                        "last": m.wal_files.last().map(|w| &w.name),
                        "last_archived_at": m.wal_files.iter().map(|w| &w.archived_at).max(),
                        "gaps": m.wal_gaps,
                    },
                })
            })
            .collect();
        print_json(
            &serde_json::to_string_pretty(&serde_json::json!({ "clusters": clusters }))
                .unwrap_or_default(),
        );
        return;
    }
    for m in mirrors {
        say!(
            "cluster {} (PostgreSQL {}), mirror written {}",
            m.system_identifier,
            m.pg_version.map_or("?".into(), |v| v.to_string()),
            m.written_at
        );
        say!(
            "  {:>6}  {:<16} {:<12} {:<16} {:<32} {:>12}  {:<7} verified",
            "id",
            "method",
            "type",
            "database",
            "ended",
            "bytes",
            "parent"
        );
        for b in &m.backups {
            say!(
                "  {:>6}  {:<16} {:<12} {:<16} {:<32} {:>12}  {:<7} {}",
                b.backup_id,
                b.backup_method,
                b.backup_type,
                b.database_name,
                b.end_time.as_deref().unwrap_or("-"),
                b.size.unwrap_or_default(),
                b.parent_backup_id.map_or("-".into(), |p| p.to_string()),
                match b.failed_only_locally() {
                    true => "failed (source copy)",
                    false => b.verification.as_deref().unwrap_or("never"),
                }
            );
        }
        match (m.wal_files.first(), m.wal_files.last()) {
            (Some(first), Some(last)) => say!(
                "  WAL: {} files, {} .. {}, last archived {}",
                m.wal_files.len(),
                first.name,
                last.name,
                m.wal_files
                    .iter()
                    .map(|w| w.archived_at.as_str())
                    .max()
                    .unwrap_or("-")
            ),
            _ => say!("  WAL: none"),
        }
        if !m.wal_gaps.is_empty() {
            say!("  WAL gaps: {}", m.wal_gaps.join(", "));
        }
    }
}

/// The progress bar of a restore of `total` bytes (data directory size); `{msg}` carries the
/// files done, where they are counted.
pub fn bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {msg} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Files done out of how many, for a bar that shows them.
pub struct FilesShown<'a> {
    pub done: &'a std::sync::atomic::AtomicU64,
    pub total: usize,
}

/// Runs `work` with `bar` (when there is one) showing `bytes` (and `files`) five times a second,
/// and clears the bar when it is done.
pub fn while_showing<T: Send>(
    bar: Option<ProgressBar>,
    bytes: &std::sync::atomic::AtomicU64,
    files: Option<FilesShown<'_>>,
    work: impl FnOnce() -> T + Send,
) -> T {
    use std::sync::atomic::{AtomicBool, Ordering};
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let ticker = bar.clone().map(|bar| {
            let done = &done;
            let files = &files;
            s.spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    bar.set_position(bytes.load(Ordering::Relaxed));
                    if let Some(f) = files {
                        bar.set_message(format!(
                            "{}/{} files",
                            f.done.load(Ordering::Relaxed),
                            f.total
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        });
        let result = work();
        done.store(true, Ordering::Relaxed);
        if let Some(t) = ticker {
            let _ = t.join();
        }
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        result
    })
}

/// The progress of work of unknown size: bytes and rate.
pub fn spinner() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar
}

/// What a restore did.
pub fn restored(
    r: &Restored,
    choice: &Choice,
    dest: &Path,
    took: Duration,
    checked: &Checked,
    json: bool,
) {
    if let Checked::No(why) = checked {
        tell!(
            "backup-mgmt: caution: the backed-up configuration was not checked ({why}): review \
             postgresql.conf and postgresql.auto.conf (data_directory, and libraries named by \
             their path in shared_preload_libraries) before starting the server"
        );
    }
    if json {
        let configuration = match checked {
            Checked::Yes(resets) => serde_json::json!({
                "checked": true,
                "resets": resets.iter().map(|r| serde_json::json!({
                    "setting": r.setting, "was": r.was, "now": r.now, "why": r.why,
                })).collect::<Vec<_>>(),
            }),
            Checked::No(why) => serde_json::json!({ "checked": false, "why": why }),
        };
        print_json(&format!(
            "{}",
            serde_json::json!({
                "backup_id": r.backup_id,
                "chain": choice.chain.iter().map(|b| b.backup_id).collect::<Vec<_>>(),
                "data_directory": dest,
                "files": r.files,
                "bytes": r.bytes,
                "wal_segments_needed": r.wal_segments,
                "timeline": choice.path.target(),
                "timelines": choice.path.legs().iter().map(|l| l.timeline).collect::<Vec<_>>(),
                "delta": r.delta,
                "writes": r.writes.map(|m| serde_json::json!({
                    "through_page_cache": m.through_cache,
                    "direct_mb_per_s": m.direct_rate,
                    "page_cache_mb_per_s": m.buffered_rate,
                })),
                "seconds": took.as_secs_f64(),
                "why": choice.why,
                "configuration": configuration,
            })
        ));
        return;
    }
    say!(
        "restored backup {} into {}: {} files, {} bytes in {:.1} s; start PostgreSQL on it to \
         recover ({} archived WAL file(s) needed, fetched by wal-fetch)",
        r.backup_id,
        dest.display(),
        r.files,
        r.bytes,
        took.as_secs_f64(),
        r.wal_segments
    );
    if let Some(m) = r.writes {
        say!(
            "large files written {} the page cache: measured on the first, {} MB/s past it, {} MB/s through it",
            if m.through_cache { "through" } else { "past" },
            m.direct_rate,
            m.buffered_rate
        );
    }
    if choice.path.changes_timeline() {
        say!(
            "recovery ends on timeline {}, along timelines {}",
            choice.path.target(),
            choice.path.describe()
        );
    }
    if let Checked::Yes(resets) = checked {
        for reset in resets {
            say!(
                "reset {} to '{}' in postgresql.auto.conf: the backup set it to '{}', which {}",
                reset.setting,
                reset.now,
                reset.was,
                reset.why
            );
        }
    }
    say!(
        "postgresql.auto.conf sets archive_mode off, backup_mgmt.enabled off, listen_addresses \
         localhost, a log (when collected) in {}/log by default names, and resets \
         archive_command, session_preload_libraries, ssl_passphrase_command, \
         external_pid_file, dynamic_library_path and jit_provider (with PostgreSQL 18, \
         extension_control_path and oauth_validator_libraries): review the backed-up \
         configuration (and pg_hba.conf; the catalog's roles and their settings are the \
         backup's too), then ALTER SYSTEM RESET what this server needs back",
        dest.display()
    );
    if let Some(d) = r.delta {
        say!(
            "delta: {} files kept (size and sha256 matched), {} fetched, {} removed",
            d.kept,
            d.fetched,
            d.removed
        );
    }
}

/// `wal-set-aside`: what was moved where.
pub fn set_aside(moved: &SetAside, json: bool) {
    if json {
        print_json(
            &serde_json::to_string_pretty(&serde_json::json!({
                "key": moved.key,
                "set_aside_to": moved.to,
                "size": moved.size,
                "sha256": moved.sha256,
            }))
            .unwrap_or_default(),
        );
        return;
    }
    say!(
        "set aside {} ({} bytes, sha256 {}) to {}; the extension's next try copies its archived file to {}",
        moved.key, moved.size, moved.sha256, moved.to, moved.key
    );
}
