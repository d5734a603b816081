#!/usr/bin/env bash
# Off-site WAL lag under load: a cluster archiving through backup_mgmt's archive module
# (archive_timeout = 2s) runs `pgbench -c 2 -T <seconds>` while the worker copies every archived
# WAL file to two targets at once, a filesystem target (a second directory standing for a second
# disk) and an S3-compatible server on loopback (s3rver), each copy verified where it landed.
#
# Reported per target, for the files archived during the run:
#   lag      copied_at - archived_at of each file (archive module made it durable -> its copy
#            verified on the target and recorded): p50, p95, p99, max
#   backlog  offsite_wal_status.pending_segments sampled every 5 s: the mean of the first and of
#            the last third of the run (a growing backlog shows as a larger last third), the max
# and pg_stat_archiver's failed_count before and after (the archiver must never wait on the
# network, so it must not change).
#
# Usage (root, Debian 12): bash bench/offsite_wal_lag.sh [seconds] [pgbench scale]
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_RUN=${1:-300}
SCALE=${2:-10}

bash scripts/setup.sh
source scripts/lib.sh

install_release

bench_dir
mkdir -p "$DIR/backups" "$DIR/disk2"
chown -R postgres:postgres "$DIR"
PORT=55438
S3PORT=55439
start_s3rver "$S3PORT" bench
start_throwaway_cluster "$DIR" "$PORT" \
    "shared_preload_libraries = 'backup_mgmt'" \
    "backup_mgmt.database_name = 'postgres'" \
    "backup_mgmt.backup_roots = '$DIR/backups,$DIR/disk2'" \
    "archive_mode = on" \
    "archive_library = 'backup_mgmt'" \
    "archive_timeout = 2s"
PSQL=(as_pg "$BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres -d postgres)

install -o postgres -g postgres -m 600 /dev/null "$DIR/s3.key"
echo "S3RVER:S3RVER" >"$DIR/s3.key"
"${PSQL[@]}" -c "CREATE EXTENSION backup_mgmt" >/dev/null
"${PSQL[@]}" -c "INSERT INTO backup_management.remote_backup_configs
    (config_name, database_name, remote_type, remote_endpoint, remote_path, credentials_ref, options)
    VALUES ('disk', 'postgres', 'filesystem', '$DIR/disk2', 'pg', NULL, '{}'),
           ('s3rver', 'postgres', 's3', 'http://127.0.0.1:$S3PORT', 'bench/wal', 'file:$DIR/s3.key',
            '{}')" >/dev/null

echo "==> pgbench -i -s $SCALE"
as_pg "$BIN/pgbench" -i -q -s "$SCALE" -h "$DIR" -p "$PORT" -U postgres postgres >/dev/null 2>&1
# What was archived while loading is copied before the run starts.
for _ in $(seq 1 120); do
    busy=$("${PSQL[@]}" -c "SELECT coalesce(sum(pending_segments), 0) FROM backup_mgmt.offsite_wal_status")
    [ "$busy" = 0 ] && break
    sleep 1
done
FAILED_BEFORE=$("${PSQL[@]}" -c "SELECT failed_count FROM pg_stat_archiver")
START=$("${PSQL[@]}" -c "SELECT now()")

echo "==> pgbench -c 2 -T $SECONDS_RUN, sampling the backlog every 5 s"
as_pg "$BIN/pgbench" -c 2 -j 2 -T "$SECONDS_RUN" -h "$DIR" -p "$PORT" -U postgres postgres >"$DIR/pgbench.out" 2>&1 &
BENCH=$!
: >"$DIR/samples"
while kill -0 "$BENCH" 2>/dev/null; do
    "${PSQL[@]}" -c "SELECT extract(epoch FROM now() - '$START'::timestamptz)::int, config_name, pending_segments,
                            round(lag_seconds::numeric, 1)
                       FROM backup_mgmt.offsite_wal_status ORDER BY config_name" >>"$DIR/samples"
    sleep 5
done
wait "$BENCH" || true
grep -E "^(tps|number of transactions actually processed)" "$DIR/pgbench.out" || cat "$DIR/pgbench.out"
END=$("${PSQL[@]}" -c "SELECT now()")
# Let the last files archived during the run arrive.
for _ in $(seq 1 60); do
    busy=$("${PSQL[@]}" -c "SELECT count(*) FROM backup_management.wal_archive a
                              WHERE a.archived_at BETWEEN '$START' AND '$END'
                                AND EXISTS (SELECT FROM backup_management.remote_backup_configs c
                                             WHERE NOT EXISTS (SELECT FROM backup_management.remote_wal_records r
                                                                WHERE r.config_id = c.config_id
                                                                  AND r.file_name = a.file_name))")
    [ "$busy" = 0 ] && break
    sleep 1
done
FAILED_AFTER=$("${PSQL[@]}" -c "SELECT failed_count FROM pg_stat_archiver")

echo
echo "== lag per file archived during the run (copied_at - archived_at, seconds)"
"${PSQL[@]}" -P format=aligned -P footer=off -P tuples_only=off -c "
    SELECT c.config_name AS target, count(*) AS files,
           round(percentile_cont(0.50) WITHIN GROUP (ORDER BY extract(epoch FROM r.copied_at - r.archived_at))::numeric, 2) AS p50,
           round(percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM r.copied_at - r.archived_at))::numeric, 2) AS p95,
           round(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM r.copied_at - r.archived_at))::numeric, 2) AS p99,
           round(max(extract(epoch FROM r.copied_at - r.archived_at))::numeric, 2) AS max
      FROM backup_management.remote_wal_records r
      JOIN backup_management.remote_backup_configs c USING (config_id)
     WHERE r.archived_at BETWEEN '$START' AND '$END'
     GROUP BY 1 ORDER BY 1"
echo "files archived during the run: $("${PSQL[@]}" -c "SELECT count(*) FROM backup_management.wal_archive WHERE archived_at BETWEEN '$START' AND '$END'")"
echo
echo "== backlog (pending files, sampled every 5 s)"
awk -F'|' -v run="$SECONDS_RUN" '
    { t = $1; n[$2]++; if ($3 > max[$2]) max[$2] = $3
      if (t < run / 3) { first[$2] += $3; nf[$2]++ } else if (t >= 2 * run / 3) { last[$2] += $3; nl[$2]++ } }
    END { printf "%-8s %8s %14s %13s %5s\n", "target", "samples", "first third", "last third", "max"
          for (k in n) printf "%-8s %8d %14.1f %13.1f %5d\n", k, n[k], nf[k] ? first[k] / nf[k] : 0, nl[k] ? last[k] / nl[k] : 0, max[k] }' "$DIR/samples"
echo
echo "pg_stat_archiver.failed_count: $FAILED_BEFORE before, $FAILED_AFTER after"
