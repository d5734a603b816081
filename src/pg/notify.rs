//! What backup_mgmt tells listeners: `NOTIFY backup_mgmt` with a small JSON payload, the event
//! and the ids it concerns, nothing else.  Any role may `LISTEN`, so a payload never carries what
//! the catalog hides from those who may not read it (paths, checksums, error texts): a listener
//! that is a `backup_admin` member reads the details from the catalog by id.
//!
//! Every backup the worker completes, every recorded failure, every failed verification and every
//! archived WAL file found lost, every off-site target whose WAL lag passes the alarm (and its
//! catching up) is sent as its transaction commits; nothing is sent for a transaction that rolls back.

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

#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A backup taken by the worker finished and was recorded.
    BackupCompleted { backup_id: i64 },
    /// A backup was recorded as failed.
    BackupFailed { backup_id: i64 },
    /// A verification (checksum, restore test) found a backup missing, changed or unusable.
    VerificationFailed {
        backup_id: i64,
        verification_id: i64,
    },
    /// The worker found an archived WAL file gone or changed (`wal_archive.lost_at`).
    WalLost {
        system_identifier: i64,
        file_name: String,
    },
    /// An off-site target's WAL lag passed `backup_mgmt.offsite_wal_lag_alarm`.
    OffsiteWalLagging {
        config_id: i32,
        lag_seconds: i64,
        pending_segments: i64,
    },
    /// The target is back under the alarm's lag.
    OffsiteWalCaughtUp { config_id: i32 },
    /// A target whose lag alarm was raised was disabled (`is_active = false`): its alarm is
    /// cleared, since nothing is copied to it any more.
    OffsiteWalTargetDisabled { config_id: i32 },
}

/// The JSON payload for `event`.
pub fn payload(event: &Event) -> String {
    // Serialising integers and a tag cannot fail.
    serde_json::to_string(event).unwrap_or_default()
}

/// Queues `NOTIFY backup_mgmt, '<payload>'`, sent when the transaction commits.
pub fn notify(event: &Event) {
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
    fn payloads_carry_only_the_event_and_ids() {
        let p = payload(&Event::BackupFailed { backup_id: 7 });
        assert_eq!(p, r#"{"event":"backup_failed","backup_id":7}"#);
        let p = payload(&Event::VerificationFailed {
            backup_id: 7,
            verification_id: 9,
        });
        let v: serde_json::Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["event"], "verification_failed");
        assert_eq!(v.as_object().unwrap().len(), 3);
    }
}
