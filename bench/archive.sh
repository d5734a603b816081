#!/usr/bin/env bash
# Benchmark of the archiving issue, side by side in one run on one cluster:
#
#   1. Per-segment archive latency: with archiving paused, SEGMENTS full WAL segments of
#      incompressible-ish rows (md5 text) pile up; then one archiver is turned on and drains them.
#      The latency per segment is the spacing of the archived copies' modification times,
#      (last - first) / (SEGMENTS - 1): each interval is one full archive call (read, checksum,
#      write, fsync, rename, plus for pgBackRest its process start), nothing is polled while it
#      runs.  Contenders, in alternating order for ROUNDS rounds:
#        backup_mgmt   archive_library = 'backup_mgmt' (sha256, fsync, link, directory fsync)
#        pgbackrest    archive_command = 'pgbackrest archive-push %p' (synchronous, its defaults:
#                      gz compression)
#        pgbackrest-none  the same with --compress-type=none (no compression, like backup_mgmt)
#        backup_mgmt-zstd backup_mgmt with backup_mgmt.archive_compression = zstd (level 3)
#        pgbackrest-zst   pgBackRest with --compress-type=zst --compress-level=3
#      CONTENDERS (environment) picks which, default the first three.
#   2. Load: LOAD_SECONDS of pgbench (2 clients) with archive_timeout = 2s, archived by each of
#      backup_mgmt and pgBackRest in turn: the archive backlog (.ready files) sampled every
#      second, its maximum, and pg_stat_archiver's failed_count over the run.  LOAD_SECONDS = 0
#      skips it.
#
# Usage (root, Debian 12): bash bench/archive.sh [rounds] [segments] [load_seconds]
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
SEGMENTS=${2:-30}
LOAD_SECONDS=${3:-300}
CONTENDERS=${CONTENDERS:-backup_mgmt pgbackrest pgbackrest-none}

bash scripts/setup.sh
source scripts/lib.sh
comparison_tool pgbackrest

install_release

bench_dir
mkdir -p "$DIR/backups" "$DIR/pgbackrest"
chown -R postgres:postgres "$DIR"
PORT=55435

# Archiving starts paused: archive_mode on, no library, empty archive_command.
start_throwaway_cluster "$DIR" "$PORT" \
    "shared_preload_libraries = 'backup_mgmt'" \
    "backup_mgmt.database_name = 'postgres'" \
    "backup_mgmt.backup_roots = '$DIR/backups'" \
    "shared_buffers = 256MB" \
    "max_wal_size = 8GB" \
    "checkpoint_timeout = 30min" \
    "archive_mode = on" \
    "archive_command = ''"

cat >"$DIR/pgbackrest.conf" <<CONF
[global]
repo1-path=$DIR/pgbackrest
log-path=$DIR/pgbackrest
lock-path=$DIR/pgbackrest
log-level-console=warn
log-level-file=off
[bench]
pg1-path=$DIR/data
pg1-socket-path=$DIR
pg1-port=$PORT
CONF
chown postgres:postgres "$DIR/pgbackrest.conf"
BR="/usr/bin/pgbackrest --config=$DIR/pgbackrest.conf --stanza=bench"
as_pg $BR stanza-create

PSQL=(as_pg "$BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres -d postgres)
"${PSQL[@]}" -c "CREATE EXTENSION backup_mgmt" -c "CREATE TABLE filler (v text)"
SYSID=$("${PSQL[@]}" -c "SELECT system_identifier FROM pg_control_system()")
ARCHIVE="$DIR/backups/wal/$SYSID"

archiver() {
    case $1 in
    paused) "${PSQL[@]}" -c "ALTER SYSTEM SET archive_library = ''" -c "ALTER SYSTEM SET archive_command = ''" ;;
    backup_mgmt) "${PSQL[@]}" -c "ALTER SYSTEM SET archive_command = ''" -c "ALTER SYSTEM SET backup_mgmt.archive_compression = 'none'" \
        -c "ALTER SYSTEM SET archive_library = 'backup_mgmt'" ;;
    backup_mgmt-zstd) "${PSQL[@]}" -c "ALTER SYSTEM SET archive_command = ''" -c "ALTER SYSTEM SET backup_mgmt.archive_compression = 'zstd'" \
        -c "ALTER SYSTEM SET backup_mgmt.archive_compression_level = 3" -c "ALTER SYSTEM SET archive_library = 'backup_mgmt'" ;;
    pgbackrest-zst) "${PSQL[@]}" -c "ALTER SYSTEM SET archive_library = ''" -c "ALTER SYSTEM SET archive_command = '$BR --compress-type=zst --compress-level=3 archive-push %p'" ;;
    pgbackrest) "${PSQL[@]}" -c "ALTER SYSTEM SET archive_library = ''" -c "ALTER SYSTEM SET archive_command = '$BR archive-push %p'" ;;
    pgbackrest-none) "${PSQL[@]}" -c "ALTER SYSTEM SET archive_library = ''" -c "ALTER SYSTEM SET archive_command = '$BR --compress-type=none archive-push %p'" ;;
    esac
    "${PSQL[@]}" -c "SELECT pg_reload_conf()" >/dev/null
}
ready() { "${PSQL[@]}" -c "SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"; }
wait_drained() {
    local limit=$((SECONDS + 600))
    while [ "$(ready)" != 0 ]; do
        [ $SECONDS -lt $limit ] || { echo "archiving did not drain" >&2; exit 1; }
        sleep 0.2
    done
}
# The archived copy of segment $2 written by contender $1.
archived_copy() {
    case $1 in
    backup_mgmt) echo "$ARCHIVE/$2" ;;
    backup_mgmt-zstd) echo "$ARCHIVE/$2.zst" ;;
    *) find "$DIR/pgbackrest/archive" -name "$2-*" | head -1 ;;
    esac
}

# A pgbackrest repository keeps one copy per segment name; each contender archives its own
# segments, so nothing collides.
latency_round() {
    local who=$1
    archiver paused
    sleep 1
    local first last
    first=$("${PSQL[@]}" -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
    for _ in $(seq "$SEGMENTS"); do
        "${PSQL[@]}" -c "INSERT INTO filler SELECT md5(random()::text) || md5(random()::text) FROM generate_series(1, 120000)" \
            -c "SELECT pg_switch_wal()" >/dev/null
    done
    "${PSQL[@]}" -c "TRUNCATE filler" >/dev/null
    last=$("${PSQL[@]}" -c "SELECT pg_walfile_name(pg_current_wal_lsn() - 1)")
    local names
    names=$("${PSQL[@]}" -c "SELECT name FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready' ORDER BY 1" | sed 's/\.ready$//')
    local n
    n=$(echo "$names" | wc -l)
    local t0
    t0=$(date +%s.%N)
    archiver "$who"
    wait_drained
    local t1
    t1=$(date +%s.%N)
    local times
    times=$(for s in $names; do stat -c %.9Y "$(archived_copy "$who" "$s")"; done | sort -n)
    local lo hi
    lo=$(echo "$times" | head -1)
    hi=$(echo "$times" | tail -1)
    awk -v who="$who" -v n="$n" -v lo="$lo" -v hi="$hi" -v t0="$t0" -v t1="$t1" -v a="$first" -v b="$last" 'BEGIN {
        printf "%-16s %3d segments (%s..%s): %7.1f ms per segment; drained in %.2f s\n",
               who, n, a, b, (hi - lo) * 1000 / (n - 1), t1 - t0 }' | tee -a "$DIR/latency"
}

echo "==> per-segment latency: $ROUNDS rounds of $SEGMENTS segments"
for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then order=$CONTENDERS; else order=$(echo $CONTENDERS | tr ' ' '\n' | tac | tr '\n' ' '); fi
    for who in $order; do latency_round "$who"; done
done
echo "==> medians (ms per segment)"
for who in $CONTENDERS; do
    grep "^$who " "$DIR/latency" | sed 's/.*: *\([0-9.]*\) ms per segment.*/\1/' | sort -n |
        awk -v who="$who" '{ v[NR] = $1 } END { printf "%-16s median %.1f ms (n=%d)\n", who, v[int((NR + 1) / 2)], NR }'
done

load_run() {
    local who=$1
    archiver "$who"
    "${PSQL[@]}" -c "ALTER SYSTEM SET archive_timeout = '2s'" -c "SELECT pg_reload_conf()" >/dev/null
    wait_drained
    local before_ok before_failed
    read -r before_ok before_failed < <("${PSQL[@]}" -F ' ' -c "SELECT archived_count, failed_count FROM pg_stat_archiver")
    as_pg "$BIN/pgbench" -n -c 2 -j 2 -T "$LOAD_SECONDS" -h "$DIR" -p "$PORT" -U postgres bench >"$DIR/pgbench.$who" 2>&1 &
    local pid=$! max=0 samples=0 sum=0 b
    while kill -0 $pid 2>/dev/null; do
        b=$(ready)
        samples=$((samples + 1))
        sum=$((sum + b))
        [ "$b" -gt "$max" ] && max=$b
        sleep 1
    done
    wait $pid
    local after_ok after_failed
    read -r after_ok after_failed < <("${PSQL[@]}" -F ' ' -c "SELECT archived_count, failed_count FROM pg_stat_archiver")
    printf '%-12s %ds pgbench (%s): %d segments archived, failed_count +%d, backlog max %d, mean %.2f (%d samples)\n' \
        "$who" "$LOAD_SECONDS" "$(grep -o 'tps = [0-9.]*' "$DIR/pgbench.$who" | head -1)" \
        $((after_ok - before_ok)) $((after_failed - before_failed)) "$max" \
        "$(awk -v s="$sum" -v n="$samples" 'BEGIN { print s / n }')" "$samples"
}

[ "$LOAD_SECONDS" -gt 0 ] || exit 0
echo "==> load: pgbench, archive_timeout = 2s, $LOAD_SECONDS s per archiver"
"${PSQL[@]}" -c "CREATE DATABASE bench" >/dev/null
as_pg "$BIN/pgbench" -i -q -s 10 -h "$DIR" -p "$PORT" -U postgres bench 2>&1 | tail -1
load_run backup_mgmt
load_run pgbackrest
