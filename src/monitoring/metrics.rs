//! `metrics()`: the backups' state, the recovery plans' exposure and the archive's health in
//! Prometheus text format (rendered by `backup_mgmt_core::metrics`).

use backup_mgmt_core::metrics::{render, Family, Sample};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiError;

use crate::catalog::queries::chain_unverified;

/// Why the metrics could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("catalog access failed: {0}")]
    Spi(#[from] SpiError),
}

/// Per-database and per-plan metrics for a Prometheus scrape (postgres_exporter custom query, or
/// `psql -Atc 'SELECT backup_mgmt.metrics()'` behind a text-file collector).
#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn metrics() -> Result<String, ErrorReport> {
    let families = Spi::connect(|c| -> Result<Vec<Family>, SpiError> {
        let mut last_success = Vec::new();
        let mut size = Vec::new();
        let mut duration = Vec::new();
        let mut failures = Vec::new();
        let mut verified = Vec::new();
        let rows = c.select(
            // Each part is an index probe per database, whatever the history (plus one chain
            // walk for the verdict): the databases by a
            // skip scan of idx_backup_records_live, the newest live backup from it, failed live
            // records from idx_backup_records_live_failed, the verdict of the most recently
            // verified backup from verification_state, with its chain's (an incremental that
            // passed on a full that failed restores nothing).
            concat!("WITH RECURSIVE d(database_name) AS ( \
                 (SELECT database_name FROM backup_management.backup_records \
                   WHERE expired_at IS NULL ORDER BY database_name LIMIT 1) \
                 UNION ALL \
                 SELECT (SELECT r.database_name FROM backup_management.backup_records r \
                          WHERE r.expired_at IS NULL AND r.database_name > d.database_name \
                          ORDER BY r.database_name LIMIT 1) \
                   FROM d WHERE d.database_name IS NOT NULL) \
             SELECT d.database_name, \
                    extract(epoch FROM n.end_time)::float8, n.backup_size::float8, \
                    extract(epoch FROM n.duration)::float8, \
                    (SELECT count(*)::float8 FROM backup_management.backup_records r \
                      WHERE r.database_name = d.database_name AND r.expired_at IS NULL AND r.status = 'failed'), \
                    (SELECT CASE WHEN r.last_status = 'passed' AND ", chain_unverified!(), " IS NULL \
                                 THEN 1 ELSE 0 END::float8 \
                       FROM backup_management.verification_state r \
                      WHERE r.database_name = d.database_name AND r.last_verified_at IS NOT NULL \
                      ORDER BY r.last_verified_at DESC NULLS LAST LIMIT 1) \
               FROM d \
               LEFT JOIN LATERAL (SELECT r.end_time, r.backup_size, r.duration FROM backup_management.backup_records r \
                                   WHERE r.database_name = d.database_name AND r.expired_at IS NULL AND r.status = 'completed' \
                                   ORDER BY r.start_time DESC LIMIT 1) n ON true \
              WHERE d.database_name IS NOT NULL \
                AND EXISTS (SELECT FROM backup_management.backup_records r \
                             WHERE r.database_name = d.database_name AND r.expired_at IS NULL AND r.backup_type <> 'wal') \
              ORDER BY 1"),
            None,
            &[],
        )?;
        for r in rows {
            let db = r.get::<String>(1)?.unwrap_or_default();
            let label = || vec![("database", db.clone())];
            let push = |into: &mut Vec<Sample>, v: Option<f64>| {
                if let Some(value) = v {
                    into.push(Sample {
                        labels: label(),
                        value,
                    });
                }
            };
            push(&mut last_success, r.get::<f64>(2)?);
            push(&mut size, r.get::<f64>(3)?);
            push(&mut duration, r.get::<f64>(4)?);
            push(&mut failures, r.get::<f64>(5)?);
            push(&mut verified, r.get::<f64>(6)?);
        }
        let mut exposure = Vec::new();
        let mut rpo_breached = Vec::new();
        let mut rto = Vec::new();
        let mut offsite_exposure = Vec::new();
        let plans = c.select(
            "SELECT plan_name, database_name, extract(epoch FROM rpo_exposure)::float8, \
                    (rpo_status = 'breached')::int::float8, extract(epoch FROM last_measured_rto)::float8, \
                    extract(epoch FROM offsite_rpo_exposure)::float8 \
               FROM backup_mgmt.recovery_status ORDER BY 1",
            None,
            &[],
        )?;
        for r in plans {
            let labels = vec![
                ("plan", r.get::<String>(1)?.unwrap_or_default()),
                ("database", r.get::<String>(2)?.unwrap_or_default()),
            ];
            if let Some(v) = r.get::<f64>(3)? {
                exposure.push(Sample {
                    labels: labels.clone(),
                    value: v,
                });
            }
            if let Some(v) = r.get::<f64>(4)? {
                rpo_breached.push(Sample {
                    labels: labels.clone(),
                    value: v,
                });
            }
            if let Some(v) = r.get::<f64>(6)? {
                offsite_exposure.push(Sample {
                    labels: labels.clone(),
                    value: v,
                });
            }
            if let Some(v) = r.get::<f64>(5)? {
                rto.push(Sample { labels, value: v });
            }
        }
        // The archive per cluster: segments missing (never archived, or lost: gone or changed on
        // disk, as the worker's checks found) and lost, from wal_gap_ranges and idx_wal_archive_lost.
        let mut missing = Vec::new();
        let mut lost = Vec::new();
        let wal = c.select(
            "SELECT k.system_identifier::text, \
                    (SELECT coalesce(sum(g.missing_segments), 0)::float8 FROM backup_mgmt.wal_gap_ranges g \
                      WHERE g.system_identifier = k.system_identifier), \
                    (SELECT count(*)::float8 FROM backup_management.wal_archive w \
                      WHERE w.system_identifier = k.system_identifier AND w.lost_at IS NOT NULL AND w.expired_at IS NULL) \
               FROM (SELECT DISTINCT system_identifier FROM backup_management.wal_ranges \
                     UNION SELECT DISTINCT system_identifier FROM backup_management.wal_archive \
                            WHERE lost_at IS NOT NULL AND expired_at IS NULL) k \
              ORDER BY 1",
            None,
            &[],
        )?;
        for r in wal {
            let labels = vec![("system_identifier", r.get::<String>(1)?.unwrap_or_default())];
            if let Some(v) = r.get::<f64>(2)? {
                missing.push(Sample { labels: labels.clone(), value: v });
            }
            if let Some(v) = r.get::<f64>(3)? {
                lost.push(Sample { labels, value: v });
            }
        }
        // Archived WAL not yet on each active off-site target: what losing the host now would
        // cost beyond the local archive.
        let mut wal_lag = Vec::new();
        let mut wal_pending = Vec::new();
        let mut wal_failures = Vec::new();
        let targets = c.select(
            "SELECT config_name, lag_seconds, pending_segments::float8, failures::float8 \
               FROM backup_mgmt.offsite_wal_status ORDER BY 1",
            None,
            &[],
        )?;
        for r in targets {
            let labels = vec![("target", r.get::<String>(1)?.unwrap_or_default())];
            for (into, col) in [(&mut wal_lag, 2), (&mut wal_pending, 3), (&mut wal_failures, 4)] {
                if let Some(v) = r.get::<f64>(col)? {
                    into.push(Sample { labels: labels.clone(), value: v });
                }
            }
        }
        Ok(vec![
            Family { name: "backup_mgmt_last_success_timestamp_seconds", help: "Unix time the newest completed backup of the database ended.", kind: "gauge", samples: last_success },
            Family { name: "backup_mgmt_last_backup_size_bytes", help: "Size of the newest completed backup as stored.", kind: "gauge", samples: size },
            Family { name: "backup_mgmt_last_backup_duration_seconds", help: "How long the newest completed backup took.", kind: "gauge", samples: duration },
            Family { name: "backup_mgmt_backups_failed", help: "Failed backups recorded in the catalog.", kind: "gauge", samples: failures },
            Family { name: "backup_mgmt_last_verification_passed", help: "1 if the database's most recently verified backup stands verified with every backup it builds on, 0 if a failed verification of it or of an ancestor stands (no later one as thorough passed), or an ancestor was never verified, has expired or is gone.", kind: "gauge", samples: verified },
            Family { name: "backup_mgmt_rpo_exposure_seconds", help: "Age of the newest verified backup (or archived WAL), per recovery plan.", kind: "gauge", samples: exposure },
            Family { name: "backup_mgmt_offsite_rpo_exposure_seconds", help: "What losing the host now would cost: age of the newest verified backup with a verified off-site copy (or of the newest WAL copied off site after it), per recovery plan.", kind: "gauge", samples: offsite_exposure },
            Family { name: "backup_mgmt_rpo_breached", help: "1 if the RPO exposure exceeds the plan's RPO.", kind: "gauge", samples: rpo_breached },
            Family { name: "backup_mgmt_last_drill_recovery_seconds", help: "Recovery time measured by the newest drill, per recovery plan.", kind: "gauge", samples: rto },
            Family { name: "backup_mgmt_wal_missing_segments", help: "WAL segments a recovery from the oldest retained base backup would need that the archive lacks (never archived or lost), per cluster.", kind: "gauge", samples: missing },
            Family { name: "backup_mgmt_wal_lost_segments", help: "Archived WAL segments the worker found gone or changed on disk, per cluster.", kind: "gauge", samples: lost },
            Family { name: "backup_mgmt_offsite_wal_lag_seconds", help: "How long the oldest archived WAL file not yet on the off-site target has waited (0: caught up).", kind: "gauge", samples: wal_lag },
            Family { name: "backup_mgmt_offsite_wal_pending_segments", help: "Archived WAL files not yet copied to the off-site target.", kind: "gauge", samples: wal_pending },
            Family { name: "backup_mgmt_offsite_wal_failures", help: "Failed attempts in a row to copy WAL to the off-site target.", kind: "gauge", samples: wal_failures },
        ])
    })
    .map_err(MetricsError::from)?;
    Ok(render(&families))
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[allow(unused_imports)]
    use crate::testing::*;

    /// The database's last verification verdict as `metrics()` reports it.
    fn last_verdict() -> Option<String> {
        let text = Spi::get_one::<String>("SELECT backup_mgmt.metrics()")
            .unwrap()
            .unwrap_or_default();
        text.lines()
            .find_map(|l| {
                l.strip_prefix("backup_mgmt_last_verification_passed{database=\"postgres\"} ")
            })
            .map(str::to_owned)
    }

    /// The newest verdict is the chain's: an incremental that passed on a full whose failed
    /// verification stands restores nothing, so the gauge says 0 until the full passes again.
    #[pg_test]
    fn the_last_verification_gauge_judges_the_whole_chain() {
        let full = native("full", "m-full", "0/60000", None);
        let incr = native("incremental", "m-incr", "0/90000", Some(full));
        add_verification(full, "checksum", "failed", "{}", "3 hours");
        add_verification(incr, "checksum", "passed", "{}", "2 hours");
        assert_eq!(last_verdict().as_deref(), Some("0"));
        // The full passes (a checksum pass overturns a failed checksum pass), before the
        // incremental's pass: the incremental is still the most recently verified, and its
        // chain now stands.
        add_verification(full, "checksum", "passed", "{}", "150 minutes");
        assert_eq!(last_verdict().as_deref(), Some("1"));
        add_verification(incr, "checksum", "passed", "{}", "1 hour");
        assert_eq!(last_verdict().as_deref(), Some("1"));
        // An incremental on a full never verified is not a verified chain either.
        let other = native("full", "m-other", "0/A0000", None);
        let next = native("incremental", "m-next", "0/B0000", Some(other));
        add_verification(next, "checksum", "passed", "{}", "0");
        assert_eq!(last_verdict().as_deref(), Some("0"));
    }
}
