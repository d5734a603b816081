#!/usr/bin/env bash
# Benchmark: the catalog's read paths with years of history and many clusters.
#
# For each size (WAL segments : backups : clusters) a catalog is filled the way busy clusters
# fill it: one WAL segment every 30 s and one base backup per hour per cluster, each backup
# verified when it was taken, retention applied (the newest 48 backups, the newest of each day for
# 30 days and of each month kept; the rest expired, kept for audit), one backup in 200 failed, a few
# segments missing, one active recovery plan per cluster.  (Where a size has more backups than one
# per 120 segments they come closer together: 3M/1M/10 has one every 90 s.)  Then each read path is timed (median of 5 runs,
# after one warm-up run), the worker's CPU is measured while idle (60 s), and the WAL ingest rate
# (6,000 manifest lines written at once, until all are in the catalog).
#
# The catalog's WAL rows name files that do not exist, so the worker's check of the archive against
# the disk (backup_mgmt.wal_check_interval) is off here: it would find every segment lost.
#
# Usage (root, Debian 12): bash bench/catalog.sh [SEGMENTS:BACKUPS:CLUSTERS ...]
#   default: 100000:10000:1 1000000:100000:1 3000000:1000000:10
#   BENCH_KEEP=1: leave the cluster (with the last size's catalog) running for more rounds by hand;
#   the script prints how to connect and how to stop it.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(100000:10000:1 1000000:100000:1 3000000:1000000:10)

bash scripts/setup.sh
source scripts/lib.sh

install_release

bench_dir
mkdir -p "$DIR/backups"
chown -R postgres:postgres "$DIR"
PORT=55436
start_throwaway_cluster "$DIR" "$PORT" \
    "shared_preload_libraries = 'backup_mgmt'" \
    "backup_mgmt.database_name = 'postgres'" \
    "backup_mgmt.backup_roots = '$DIR/backups'" \
    "shared_buffers = 256MB" \
    "max_wal_size = 8GB" \
    "checkpoint_timeout = 30min" \
    "synchronous_commit = off" \
    "backup_mgmt.wal_check_interval = 0"

PSQL=(as_pg "$BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres -d postgres)
"${PSQL[@]}" -c "CREATE EXTENSION backup_mgmt"
SYSID=$("${PSQL[@]}" -c "SELECT system_identifier FROM pg_control_system()")
HZ=$(getconf CLK_TCK)

fill() { # segments backups clusters
    local segs=$(( $1 / $3 )) backs=$(( $2 / $3 )) clusters=$3
    "${PSQL[@]}" >/dev/null <<SQL
SET client_min_messages = warning;
TRUNCATE backup_management.backup_records, backup_management.wal_archive,
         disaster_recovery.recovery_plans CASCADE;
-- Base backups: backup j of cluster k starts at segment 256 + j * step and ends 10 minutes later.
INSERT INTO backup_management.backup_records
    (database_name, backup_type, backup_method, backup_file_path, backup_size, start_time, end_time,
     duration, status, error_message, checksum, system_identifier, pg_version, timeline_id,
     start_lsn, stop_lsn, label, origin)
SELECT 'db' || k, 'full', 'pg_basebackup', '/bench/' || k || '/' || j || '.tar.zst', 1048576,
       t, t + interval '10 minutes', interval '10 minutes',
       CASE WHEN j % 200 = 199 THEN 'failed' ELSE 'completed' END,
       CASE WHEN j % 200 = 199 THEN 'pg_basebackup: error: connection lost' END,
       CASE WHEN j % 200 = 199 THEN NULL ELSE repeat('b', 64) END,
       $SYSID + k, 150000, 1,
       '0/0'::pg_lsn + ((256 + j * ($segs / $backs))::bigint * 16777216)::numeric,
       '0/0'::pg_lsn + ((256 + j * ($segs / $backs) + 20)::bigint * 16777216 + 256)::numeric,
       'hourly', 'worker'
  FROM generate_series(0, $clusters - 1) k, generate_series(0::bigint, $backs - 1) j,
       LATERAL (SELECT now() - ($segs - j * ($segs / $backs)) * interval '30 seconds' AS t) s;
INSERT INTO backup_management.backup_verifications (backup_id, verification_type, verification_status, verification_result, verified_at)
SELECT backup_id, 'checksum', 'passed', '{}', end_time + interval '5 minutes'
  FROM backup_management.backup_records WHERE status = 'completed';
-- Retention as a policy would leave it: the newest 48, the newest of each day of the last 30
-- days, the newest of each month.  (Before 2026-12-03 this kept every backup of the first hour
-- of those days and of the first day of each month: at 3M/1M/10, a backup every 90 s, that was
-- 40 a day and 13,620 live backups instead of about 1,000.)
WITH ranked AS (
    SELECT backup_id, start_time,
           row_number() OVER (PARTITION BY system_identifier ORDER BY start_time DESC) AS age,
           row_number() OVER (PARTITION BY system_identifier, date_trunc('day', start_time)
                              ORDER BY start_time DESC) AS in_day,
           row_number() OVER (PARTITION BY system_identifier, date_trunc('month', start_time)
                              ORDER BY start_time DESC) AS in_month
      FROM backup_management.backup_records WHERE status = 'completed')
UPDATE backup_management.backup_records r SET status = 'expired'
  FROM ranked x
 WHERE r.backup_id = x.backup_id AND x.age > 48
   AND NOT (x.start_time > now() - interval '30 days' AND x.in_day = 1)
   AND NOT x.in_month = 1;
-- What is kept was verified again lately (the worker's re-verification).
INSERT INTO backup_management.backup_verifications (backup_id, verification_type, verification_status, verification_result, verified_at)
SELECT backup_id, 'checksum', 'passed', '{}', now() - interval '1 hour'
  FROM backup_management.backup_records WHERE status = 'completed';
-- WAL: one segment every 30 s, a few missing.
INSERT INTO backup_management.wal_archive
    (system_identifier, file_name, timeline_id, segment_number, file_path, file_size, checksum,
     archived_at, xact_scanned, segment_size)
SELECT $SYSID + k, f.name, 1, n, '/bench/wal/' || ($SYSID + k) || '/' || f.name, 16777216, repeat('a', 64),
       now() - ($segs + 256 - n) * interval '30 seconds', true, 16777216
  FROM generate_series(0, $clusters - 1) k, generate_series(256::bigint, $segs + 255) n,
       LATERAL (SELECT upper('00000001' || lpad(to_hex(n / 256), 8, '0') || lpad(to_hex(n % 256), 8, '0')) AS name) f
 WHERE n % 100003 <> 77;
INSERT INTO disaster_recovery.recovery_plans
    (plan_name, database_name, rpo_minutes, rto_minutes, backup_strategy, recovery_procedure)
SELECT 'plan-' || k, 'db' || k, 60, 30, 'hourly base backups, WAL archiving', 'restore the newest base backup'
  FROM generate_series(0, $clusters - 1) k;
SQL
    "${PSQL[@]}" -c "VACUUM ANALYZE" >/dev/null
}

# time_ms SQL -> the median of 5 runs in ms (one warm-up run first)
time_ms() {
    local sql=$1 out
    out=$("${PSQL[@]}" <<SQL
SELECT count(s) FROM ($sql) s \g /dev/null
\timing on
SELECT count(s) FROM ($sql) s \g /dev/null
SELECT count(s) FROM ($sql) s \g /dev/null
SELECT count(s) FROM ($sql) s \g /dev/null
SELECT count(s) FROM ($sql) s \g /dev/null
SELECT count(s) FROM ($sql) s \g /dev/null
SQL
)
    sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' <<<"$out" | sort -n | sed -n 3p
}

worker_idle() { # -> percent of one core over 60 s
    local wpid c0 c1
    wpid=$("${PSQL[@]}" -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'backup_mgmt scheduler'")
    sleep 5
    c0=$(awk '{ print $14 + $15 }' "/proc/$wpid/stat")
    sleep 60
    c1=$(awk '{ print $14 + $15 }' "/proc/$wpid/stat")
    awk -v c="$((c1 - c0))" -v hz="$HZ" 'BEGIN { printf "%.3f%% (%d ticks)", 100 * c / hz / 60, c }'
}

ingest_rate() { # 6,000 new segments in an archive manifest -> segments per second
    # A cluster of its own for each run: the worker remembers how far it read each manifest.
    local sysid=$((SYSID + 1000 + RUN)) dir first before after t0 t1
    dir="$DIR/backups/wal/$sysid"
    first=256
    before=$("${PSQL[@]}" -c "SELECT count(*) FROM backup_management.wal_archive")
    mkdir -p "$dir"
    awk -v first="$first" 'BEGIN { for (n = first; n < first + 6000; n++) {
        name = sprintf("00000001%08X%08X", int(n / 256), n % 256)
        printf "{\"name\":\"%s\",\"file\":\"%s\",\"size\":16777216,\"sha256\":\"%064d\",\"archived_at\":\"2026-12-03T00:00:00Z\",\"segment_size\":16777216}\n", name, name, 0 } }' \
        >"$dir/archive_manifest.jsonl.tmp"
    chown -R postgres:postgres "$DIR/backups/wal"
    t0=$(date +%s.%N)
    mv "$dir/archive_manifest.jsonl.tmp" "$dir/archive_manifest.jsonl"
    while :; do
        after=$("${PSQL[@]}" -c "SELECT count(*) FROM backup_management.wal_archive")
        [ "$((after - before))" -ge 6000 ] && break
        sleep 0.2
    done
    t1=$(date +%s.%N)
    rm -f "$dir/archive_manifest.jsonl"
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f segments/s (6000 in %.1f s, including up to 5 s until the worker looks)", 6000 / (b - a), b - a }'
}

results=()
RUN=0
for size in "${SIZES[@]}"; do
    IFS=: read -r segs backs clusters <<<"$size"
    echo "==> filling: $segs WAL segments, $backs backups, $clusters cluster(s)"
    t0=$(date +%s)
    fill "$segs" "$backs" "$clusters"
    echo "    filled in $(( $(date +%s) - t0 )) s: $("${PSQL[@]}" -c "SELECT pg_size_pretty(pg_database_size('postgres'))")"
    gaps=$(time_ms "SELECT * FROM backup_mgmt.wal_gaps")
    status=$(time_ms "SELECT * FROM backup_mgmt.recovery_status")
    metrics=$(time_ms "SELECT backup_mgmt.metrics()")
    plan=$(time_ms "SELECT * FROM backup_mgmt.plan_recovery(now() - interval '1 day')")
    preview=$(time_ms "SELECT * FROM backup_mgmt.retention_preview(NULL, 'default')")
    idle=$(worker_idle)
    rate=$(ingest_rate)
    RUN=$((RUN + 1))
    results+=("| $segs / $backs / $clusters | $gaps | $status | $metrics | $plan | $preview | $idle | $rate |")
    printf '%s\n' "${results[-1]}"
done

echo
echo "catalog read paths, ms (median of 5), PostgreSQL $("${PSQL[@]}" -c 'SHOW server_version'), $(nproc) cores"
echo "| segments / backups / clusters | wal_gaps | recovery_status | metrics() | plan_recovery(-1 day) | retention_preview | worker idle CPU | WAL ingest |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${results[@]}"

if [ -n "${BENCH_KEEP:-}" ]; then
    trap - EXIT
    echo
    echo "cluster kept: psql -h $DIR -p $PORT -U postgres postgres"
    echo "stop it:      su postgres -c '$BIN/pg_ctl -D $DIR/data stop' && rm -rf $DIR"
fi
