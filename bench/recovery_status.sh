#!/usr/bin/env bash
# Benchmark: what `recovery_status` (and so every `metrics()` scrape) costs when a recent full
# failed verification under a long chain of incrementals that all passed on their own, the worst
# case of 0.11.0's "verified as a whole": every candidate passes the view's cheap prefilter, so
# chain_unverified walks each one's chain down to the failed full (quadratic in the chain's
# length), per plan, locally and for each off-site target.
#
# Catalog: one plan; an older whole chain (a full and 9 incrementals, all passed); then a full
# with a failed restore test and N incrementals on it, all passed their checksum pass; every
# backup with a completed verified copy on one target.  N = 10, 100, 1000.  Rounds alternate
# the view and metrics(); each times 20 calls.
#
# Usage (root, Debian 12): bash bench/recovery_status.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}

bash scripts/setup.sh
source scripts/lib.sh

catalog_bench_cluster 55439

# build N: the catalog above with N incrementals on the failed full.
build() {
    "${PSQL[@]}" <<SQL
DROP EXTENSION IF EXISTS backup_mgmt CASCADE;
CREATE EXTENSION backup_mgmt;
INSERT INTO disaster_recovery.recovery_plans (plan_name, database_name, rto_minutes, rpo_minutes,
                                              backup_strategy, recovery_procedure)
VALUES ('bench', 'postgres', 60, 60, 'native chains', 'restore');
INSERT INTO backup_management.remote_backup_configs (config_name, database_name, remote_type,
                                                     remote_endpoint, remote_path, is_active)
VALUES ('disk', 'postgres', 'filesystem', '/nowhere', 'pg', true);
INSERT INTO backup_management.backup_records (database_name, backup_type, backup_method, backup_file_path,
                                              status, start_time, end_time, duration, checksum, origin)
SELECT 'postgres', CASE WHEN n IN (1, 11) THEN 'full' ELSE 'incremental' END, 'native_physical',
       '/nowhere/' || n, 'completed', now() - interval '1 day' + n * interval '1 second',
       now() - interval '1 day' + n * interval '1 second', '0', repeat('e', 64), 'worker'
  FROM generate_series(1, 10 + 1 + $1) n;
UPDATE backup_management.backup_records SET parent_backup_id = backup_id - 1 WHERE backup_type = 'incremental';
INSERT INTO backup_management.backup_verifications (backup_id, verification_type, verification_status)
SELECT backup_id, 'checksum', 'passed' FROM backup_management.backup_records;
INSERT INTO backup_management.backup_verifications (backup_id, verification_type, verification_status,
                                                    verification_result)
SELECT backup_id, 'restore_test', 'failed', '{"stage": "data_verification"}'
  FROM backup_management.backup_records WHERE backup_id = (SELECT min(backup_id) + 10 FROM backup_management.backup_records);
INSERT INTO backup_management.remote_backup_records (backup_id, config_id, remote_file_path, sync_end_time,
                                                     sync_status, remote_checksum)
SELECT backup_id, (SELECT config_id FROM backup_management.remote_backup_configs), 'k/' || backup_id, now(),
       'completed', repeat('e', 64) FROM backup_management.backup_records;
ANALYZE;
SQL
}

# time SQL -> milliseconds per call
time_it() {
    "${PSQL[@]}" -At <<SQL 2>&1 | sed -n 's/.*NOTICE:  //p'
DO \$\$ DECLARE t0 timestamptz; x text; BEGIN
  EXECUTE \$q\$ $1 \$q\$ INTO x;
  t0 := clock_timestamp();
  FOR i IN 1..20 LOOP
    EXECUTE \$q\$ $1 \$q\$ INTO x;
  END LOOP;
  RAISE NOTICE '%', round(extract(epoch FROM clock_timestamp() - t0) * 1e3 / 20, 1);
END \$\$;
SQL
}

VIEW="SELECT last_verified_backup_at::text || offsite_verified_backup_at::text FROM backup_mgmt.recovery_status"
METRICS="SELECT backup_mgmt.metrics()"
echo "PostgreSQL $(pg_major); milliseconds per call, $ROUNDS rounds alternating"
for n in 10 100 1000; do
    build "$n"
    # The figures must be the older whole chain's, both locally and off site.
    got=$("${PSQL[@]}" -At -c "SELECT last_verified_backup_at = offsite_verified_backup_at
        AND last_verified_backup_at = (SELECT end_time FROM backup_management.backup_records WHERE backup_id =
                                        (SELECT min(backup_id) + 9 FROM backup_management.backup_records))
        FROM backup_mgmt.recovery_status")
    [ "$got" = t ] || { echo "N=$n: recovery_status does not name the older whole chain" >&2; exit 1; }
    view=() metrics=()
    for _ in $(seq 1 "$ROUNDS"); do
        view+=("$(time_it "$VIEW")")
        metrics+=("$(time_it "$METRICS")")
    done
    echo "N=$n incrementals on the failed full: recovery_status ${view[*]} | metrics() ${metrics[*]}"
done
