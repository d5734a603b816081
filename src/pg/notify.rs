//! What backup_mgmt tells listeners: `NOTIFY backup_mgmt` with a JSON payload.
//!
//! `LISTEN backup_mgmt;` in psql (or any client) sees every recorded failure, and every backup
//! the worker completes, as it commits;
//! nothing is sent for a transaction that rolls back.

use std::ffi::CString;

use pgrx::pg_sys::ffi::pg_guard_ffi_boundary;
use serde::Serialize;

// `Async_Notify` (commands/async.h) is not in pgrx's bindings; calls go through
// `pg_guard_ffi_boundary` so that a PostgreSQL ERROR raised inside unwinds safely through Rust.
unsafe extern "C-unwind" {
    fn Async_Notify(channel: *const std::ffi::c_char, payload: *const std::ffi::c_char);
}

/// The channel name.
pub const CHANNEL: &std::ffi::CStr = c"backup_mgmt";

/// PostgreSQL refuses payloads of 8000 bytes or more; stay well below.
const MAX_PAYLOAD_BYTES: usize = 7900;

#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<'a> {
    /// A backup taken by the worker finished and was recorded.
    BackupCompleted {
        backup_id: i64,
        job_name: &'a str,
        database_name: &'a str,
        backup_file_path: &'a str,
        backup_size: i64,
        checksum: &'a str,
    },
    BackupFailed {
        backup_id: i64,
        database_name: &'a str,
        error: &'a str,
    },
    /// A verification found a backup missing, changed or unreadable.
    VerificationFailed {
        backup_id: i64,
        database_name: &'a str,
        reason: String,
        detail: &'a str,
    },
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The JSON payload for `event`, shortened (the error text only) to fit a NOTIFY.
pub fn payload(event: &Event<'_>) -> String {
    let mut limit = 2000;
    loop {
        let shortened = match event {
            // Nothing free-form to cut: paths and names are bounded.
            Event::BackupCompleted { .. } => {
                return serde_json::to_string(event).unwrap_or_default();
            }
            Event::VerificationFailed {
                backup_id,
                database_name,
                reason,
                detail,
            } => Event::VerificationFailed {
                backup_id: *backup_id,
                database_name,
                reason: reason.clone(),
                detail: truncate(detail, limit),
            },
            Event::BackupFailed {
                backup_id,
                database_name,
                error,
            } => Event::BackupFailed {
                backup_id: *backup_id,
                database_name,
                error: truncate(error, limit),
            },
        };
        // Serialising plain strings and integers cannot fail.
        let json = serde_json::to_string(&shortened).unwrap_or_default();
        if json.len() <= MAX_PAYLOAD_BYTES || limit == 0 {
            return json;
        }
        // Escaping (control characters become \u00XX) can grow the text: shrink and retry.
        limit /= 2;
    }
}

/// Queues `NOTIFY backup_mgmt, '<payload>'`, sent when the transaction commits.
pub fn notify(event: &Event<'_>) {
    // JSON never contains a raw NUL byte, so this cannot fail; if it somehow did, skipping the
    // notification is better than failing the caller's record.
    if let Ok(payload) = CString::new(payload(event)) {
        // SAFETY: two NUL-terminated strings that live across the call; Async_Notify copies
        // them, and pg_guard_ffi_boundary turns an ERROR into a Rust unwind.
        unsafe { pg_guard_ffi_boundary(|| Async_Notify(CHANNEL.as_ptr(), payload.as_ptr())) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_tagged_json() {
        let p = payload(&Event::BackupFailed {
            backup_id: 7,
            database_name: "db",
            error: "boom",
        });
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["event"], "backup_failed");
        assert_eq!(v["backup_id"], 7);
        assert_eq!(v["error"], "boom");
    }

    #[test]
    fn long_errors_are_cut_to_fit() {
        let huge = "\u{1}".repeat(100_000);
        let p = payload(&Event::BackupFailed {
            backup_id: 1,
            database_name: "db",
            error: &huge,
        });
        assert!(p.len() <= MAX_PAYLOAD_BYTES, "{}", p.len());
        assert!(serde_json::from_str::<serde_json::Value>(&p).is_ok());
        let multibyte = "é".repeat(5000);
        let p = payload(&Event::BackupFailed {
            backup_id: 1,
            database_name: "db",
            error: &multibyte,
        });
        assert!(p.len() <= MAX_PAYLOAD_BYTES);
    }
}
