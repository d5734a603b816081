//! The off-site WAL lag alarm: per target, how long the oldest file not yet copied has waited
//! (`backup_mgmt.offsite_wal_status`), against `backup_mgmt.offsite_wal_lag_alarm`; raised and
//! cleared with a log line and a NOTIFY, and cleared for a target that was disabled.  Checked by
//! the WAL shipping (`wal`) every second for every active target.

use backup_mgmt_core::alarm;
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiError};

use super::target_hold::Hold;
use crate::pg::guc;
use crate::pg::log::escape_for_log;
use crate::pg::notify::{self, Event};

/// A target disabled while its lag alarm stood: the alarm is cleared and said so (a LOG line,
/// a NOTIFY), rather than left standing where the view no longer shows it, and keeping a
/// re-enabled target from raising it again.
pub(super) fn clear_disabled_alarms(c: &mut SpiClient<'_>) -> Result<(), SpiError> {
    let cleared = c.update(
        "UPDATE backup_management.remote_wal_state s SET alarm_since = NULL \
           FROM backup_management.remote_backup_configs t \
          WHERE t.config_id = s.config_id AND NOT t.is_active AND s.alarm_since IS NOT NULL \
            AND s.config_id IN (SELECT w.config_id FROM backup_management.remote_wal_state w \
                                 WHERE w.alarm_since IS NOT NULL AND w.config_id IN \
                                       (SELECT config_id FROM backup_management.remote_backup_configs \
                                         WHERE NOT is_active) \
                                 FOR NO KEY UPDATE SKIP LOCKED) \
         RETURNING t.config_id, t.config_name",
        None,
        &[],
    )?;
    for r in cleared {
        let config_id = r.get::<i32>(1)?.unwrap_or_default();
        let name = escape_for_log(&r.get::<String>(2)?.unwrap_or_default());
        log!("backup_mgmt: off-site target \"{name}\" was disabled; its WAL lag alarm is cleared");
        notify::notify(&Event::OffsiteWalTargetDisabled { config_id });
    }
    Ok(())
}

/// Raises or clears a target's lag alarm (a WARNING or LOG line and a NOTIFY, sent at commit):
/// raised past `backup_mgmt.offsite_wal_lag_alarm`, cleared at half of it (`core::alarm`).  A
/// change is written only when no open transaction holds the target (`hold`).
pub(super) fn check_alarm(
    c: &mut SpiClient<'_>,
    hold: &mut Hold,
    config_id: i32,
    name: &str,
) -> Result<(), SpiError> {
    let t = c.select(
        "SELECT lag_seconds, pending_segments, alarm_since IS NOT NULL \
           FROM backup_mgmt.offsite_wal_status WHERE config_id = $1",
        None,
        &[config_id.into()],
    )?;
    let Some(r) = t.into_iter().next() else {
        return Ok(());
    };
    let lag = r.get::<f64>(1)?.unwrap_or_default();
    let pending = r.get::<i64>(2)?.unwrap_or_default();
    let raised = r.get::<bool>(3)?.unwrap_or(false);
    let limit = guc::offsite_wal_lag_alarm().map(|l| l.as_secs_f64());
    let change = alarm::change(raised, lag, limit);
    if change != alarm::Change::Keep && !hold.get(c)? {
        return Ok(());
    }
    let name = escape_for_log(name);
    if change == alarm::Change::Raise {
        c.update(
            "INSERT INTO backup_management.remote_wal_state (config_id, alarm_since) \
             VALUES ($1, now()) ON CONFLICT (config_id) DO UPDATE SET alarm_since = now()",
            None,
            &[config_id.into()],
        )?;
        warning!(
            "backup_mgmt: off-site target \"{name}\" is {lag:.0} s behind the WAL archive ({pending} files not copied yet)",
        );
        notify::notify(&Event::OffsiteWalLagging {
            config_id,
            lag_seconds: lag as i64,
            pending_segments: pending,
        });
    } else if change == alarm::Change::Clear {
        c.update(
            "UPDATE backup_management.remote_wal_state SET alarm_since = NULL WHERE config_id = $1",
            None,
            &[config_id.into()],
        )?;
        log!("backup_mgmt: off-site target \"{name}\" caught up with the WAL archive ({pending} files pending, {lag:.0} s behind)");
        notify::notify(&Event::OffsiteWalCaughtUp { config_id });
    }
    Ok(())
}
