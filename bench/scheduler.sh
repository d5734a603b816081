#!/usr/bin/env bash
# Benchmark of the scheduler issue, side by side in one run on one pgbench scale-50 cluster:
#
#   1. bare `pg_dump -Fc`                  vs  a scheduled pg_dump job (zstd 3 + sha256, same pass)
#   2. bare `pg_basebackup --compress=client-zstd:3`
#                                          vs  a scheduled pg_basebackup job (zstd 3 + sha256)
#                                          vs  pgBackRest full backup, --compress-type=zst
#   3. 10,000 scheduled jobs: worker CPU while idle (60 s), and the delay between a job's slot
#      and its start over 100+ starts (p50/p99/max).
#
# Rounds alternate the contenders; the median of ROUNDS is reported.  A scheduled backup's time
# is its catalog duration (claimed -> recorded, which includes starting the program, fsync,
# rename and recording); the wall time from run_job_now() until the record shows completed
# (polled every 50 ms) is printed too.
#
# Usage (root, Debian 12): bash bench/scheduler.sh [rounds] [scale]
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
SCALE=${2:-50}

bash scripts/setup.sh
source scripts/lib.sh
comparison_tool pgbackrest

install_release

bench_dir
mkdir -p "$DIR/backups" "$DIR/bare" "$DIR/pgbackrest"
chown -R postgres:postgres "$DIR"
PORT=55434

start_throwaway_cluster "$DIR" "$PORT" \
    "shared_preload_libraries = 'backup_mgmt'" \
    "backup_mgmt.database_name = 'postgres'" \
    "backup_mgmt.backup_roots = '$DIR/backups'" \
    "shared_buffers = 256MB" \
    "max_wal_size = 4GB" \
    "archive_mode = on" \
    "archive_command = '/usr/bin/pgbackrest --config=$DIR/pgbackrest.conf --stanza=bench archive-push %p'"

cat >"$DIR/pgbackrest.conf" <<CONF
[global]
repo1-path=$DIR/pgbackrest
log-path=$DIR/pgbackrest
lock-path=$DIR/pgbackrest
log-level-console=warn
log-level-file=off
start-fast=y
[bench]
pg1-path=$DIR/data
pg1-socket-path=$DIR
pg1-port=$PORT
CONF
chown postgres:postgres "$DIR/pgbackrest.conf"
BR=(as_pg /usr/bin/pgbackrest "--config=$DIR/pgbackrest.conf" --stanza=bench)

PSQL=(as_pg "$BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres)
"${PSQL[@]}" -d postgres -c "CREATE EXTENSION backup_mgmt" -c "CREATE DATABASE bench"
echo "==> pgbench -i -s $SCALE"
as_pg "$BIN/pgbench" -i -q -s "$SCALE" -h "$DIR" -p "$PORT" -U postgres bench 2>&1 | tail -1
"${PSQL[@]}" -d postgres -c "VACUUM ANALYZE" -c "CHECKPOINT"
"${BR[@]}" stanza-create
echo "database size: $("${PSQL[@]}" -d postgres -c "SELECT pg_size_pretty(pg_database_size('bench'))"), cluster: $(du -sh "$DIR/data" | cut -f1)"

"${PSQL[@]}" -d postgres <<'SQL'
SELECT backup_mgmt.schedule_backup('dump', '@yearly', 'bench', 'full', 'pg_dump',
                                   '{"compression": "zstd", "compression_level": 3, "include_globals": false}');
SELECT backup_mgmt.schedule_backup('base', '@yearly', 'bench', 'full', 'pg_basebackup',
                                   '{"compression": "zstd", "compression_level": 3, "fast_checkpoint": true}');
SQL

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# run_job JOB -> "catalog_seconds wall_seconds size"
run_job() {
    local job=$1 before t0 t1 id
    before=$("${PSQL[@]}" -d postgres -c "SELECT coalesce(max(backup_id), 0) FROM backup_management.backup_records")
    t0=$(now)
    "${PSQL[@]}" -d postgres -c "SELECT backup_mgmt.run_job_now('$job')" >/dev/null
    while :; do
        id=$("${PSQL[@]}" -d postgres -c "SELECT backup_id FROM backup_management.backup_records
                                            WHERE label = '$job' AND backup_id > $before AND status <> 'running'")
        [ -n "$id" ] && break
        sleep 0.05
    done
    t1=$(now)
    "${PSQL[@]}" -d postgres -F' ' -c "SELECT extract(epoch FROM duration)::numeric(10,2), '$(elapsed "$t0" "$t1")', backup_size, status
                                         FROM backup_management.backup_records WHERE backup_id = $id"
}

timed() { # command... -> seconds
    local t0 t1
    t0=$(now)
    "$@" >/dev/null 2>&1
    t1=$(now)
    elapsed "$t0" "$t1"
}

: >"$DIR/results"
bare_dump() {
    rm -f "$DIR/bare/bench.dump"
    t=$(timed as_pg "$BIN/pg_dump" -Fc -h "$DIR" -p "$PORT" -U postgres -f "$DIR/bare/bench.dump" bench)
    echo "bare_dump $t $(stat -c %s "$DIR/bare/bench.dump")" | tee -a "$DIR/results"
    t=$(timed sha256sum "$DIR/bare/bench.dump")
    echo "bare_dump_sha256sum $t" | tee -a "$DIR/results"
}
job_dump() {
    read -r cat wall size status < <(run_job dump)
    echo "job_dump $cat $size $status wall=$wall" | tee -a "$DIR/results"
}
bare_base() {
    rm -rf "$DIR/bare/base"
    t=$(timed as_pg "$BIN/pg_basebackup" -h "$DIR" -p "$PORT" -U postgres -D "$DIR/bare/base" -Ft \
            --compress=client-zstd:3 --checkpoint=fast)
    echo "bare_basebackup $t $(du -sb "$DIR/bare/base" | cut -f1)" | tee -a "$DIR/results"
}
job_base() {
    read -r cat wall size status < <(run_job base)
    echo "job_basebackup $cat $size $status wall=$wall" | tee -a "$DIR/results"
}
pgbackrest_full() {
    t=$(timed "${BR[@]}" --type=full --compress-type=zst --compress-level=3 backup)
    echo "pgbackrest_full $t $(du -sb "$DIR/pgbackrest/backup" | cut -f1)" | tee -a "$DIR/results"
    "${BR[@]}" --repo1-retention-full=1 expire >/dev/null 2>&1 || true
}

# Odd rounds run the bare program first, even rounds the scheduled job first, so that neither
# always inherits the other's checkpoint, page cache or CPU temperature.
for round in $(seq 1 "$ROUNDS"); do
    echo "==> round $round/$ROUNDS"
    sync; "${PSQL[@]}" -d postgres -c "CHECKPOINT"
    if [ $((round % 2)) = 1 ]; then
        bare_dump; job_dump; bare_base; job_base
    else
        job_dump; bare_dump; job_base; bare_base
    fi
    pgbackrest_full
    # Keep the disk flat: the scheduled backups of earlier rounds are not needed.
    find "$DIR/backups" -type f -name '*.zst' -mmin +1 -delete 2>/dev/null || true
done

echo
echo "==> medians over $ROUNDS rounds (seconds)"
for k in bare_dump bare_dump_sha256sum job_dump bare_basebackup job_basebackup pgbackrest_full; do
    printf '%-22s %s\n' "$k" "$(awk -v k="$k" '$1 == k { print $2 }' "$DIR/results" | median)"
done
echo "==> ratio per round (scheduled / bare)"
awk '$1 == "bare_dump" { bd[++nbd] = $2 } $1 == "job_dump" { jd[++njd] = $2 }
     $1 == "bare_basebackup" { bb[++nbb] = $2 } $1 == "job_basebackup" { jb[++njb] = $2 }
     $1 == "pgbackrest_full" { pr[++npr] = $2 }
     END { for (i = 1; i <= nbd; i++)
             printf "round %d: pg_dump %.2f  pg_basebackup %.2f  pgbackrest/scheduled %.2f\n", i, jd[i] / bd[i], jb[i] / bb[i], pr[i] / jb[i] }' "$DIR/results"
awk '$1 == "bare_dump" || $1 == "job_dump" || $1 == "bare_basebackup" || $1 == "job_basebackup" || $1 == "pgbackrest_full" { s[$1] = $3 }
     END { for (k in s) printf "size %-18s %d MB\n", k, s[k] / 1048576 }' "$DIR/results"

echo
echo "==> 10,000 scheduled jobs: worker CPU while idle"
"${PSQL[@]}" -d postgres -c "DO \$\$ BEGIN FOR i IN 1..10000 LOOP
      PERFORM backup_mgmt.schedule_backup('idle-' || i, (i % 60) || ' ' || (i % 24) || ' 1 1 *', 'bench');
    END LOOP; END \$\$"
WPID=$("${PSQL[@]}" -d postgres -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'backup_mgmt scheduler'")
ticks() { awk '{ print $14 + $15 }' "/proc/$WPID/stat"; }
HZ=$(getconf CLK_TCK)
sleep 2
c0=$(ticks); t0=$(now)
sleep 60
c1=$(ticks); t1=$(now)
awk -v c="$((c1 - c0))" -v hz="$HZ" -v s="$(elapsed "$t0" "$t1")" \
    'BEGIN { printf "worker CPU while idle with 10,000 jobs: %.3f%% of one core (%d ticks in %.1f s)\n", 100 * c / hz / s, c, s }'

echo
echo "==> start delay: 4 jobs, one due every second (pg_dumpall --globals-only), 10,000 idle jobs beside them"
"${PSQL[@]}" -d postgres <<'SQL'
SELECT backup_mgmt.schedule_backup('tick-' || k, k || '/4 * * * * *', 'bench', 'full', 'pg_dumpall_globals',
                                   '{"compression": "none"}')
  FROM generate_series(0, 3) k;
SQL
sleep 110
"${PSQL[@]}" -d postgres -c "UPDATE enterprise_backup.backup_jobs SET is_active = false, next_run_at = NULL WHERE job_name LIKE 'tick-%'"
sleep 2
"${PSQL[@]}" -d postgres -F' ' <<'SQL'
SELECT 'starts=' || count(*),
       'skipped=' || (SELECT count(*) FROM enterprise_backup.backup_job_executions e2 JOIN enterprise_backup.backup_jobs j2 USING (job_id)
                       WHERE j2.job_name LIKE 'tick-%' AND e2.execution_status = 'skipped'),
       'p50_ms=' || round(1000 * percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM execution_start_time - scheduled_for)))::text,
       'p99_ms=' || round(1000 * percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM execution_start_time - scheduled_for)))::text,
       'max_ms=' || round(1000 * max(extract(epoch FROM execution_start_time - scheduled_for)))::text,
       'failed=' || count(*) FILTER (WHERE execution_status = 'failed')
  FROM enterprise_backup.backup_job_executions e JOIN enterprise_backup.backup_jobs j USING (job_id)
 WHERE j.job_name LIKE 'tick-%' AND e.execution_status <> 'skipped';
SQL
