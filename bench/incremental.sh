#!/usr/bin/env bash
# Benchmark of native incremental backups (issue 7), side by side in one run on one cluster:
# backup_mgmt's native_physical method against pgBackRest's `backup --type=incr` of the same
# cluster, after the same pgbench load.
#
#   Cluster: pgbench scale SCALE (default 50), data checksums on (both tools check pages), WAL
#   archived by pgBackRest (its backups need it; backup_mgmt copies a backup's WAL itself).
#   Contenders, each with its own full backup first:
#     backup_mgmt      native_physical, its defaults: zstd level 3, one copy thread per core
#     pgbackrest       repo1, pgBackRest 2.45 as shipped: gz level 6, process-max 1
#     pgbackrest-zst2  repo2, configured like backup_mgmt: zst level 3, process-max = cores
#   All start with a fast checkpoint.  ROUNDS rounds of: LOAD seconds of pgbench (2 clients),
#   then one incremental backup by each contender, in rotating order, each after an explicit
#   CHECKPOINT so that none pays for flushing the load's dirty buffers.
#   Time: wall clock from the request to the backup being complete (for backup_mgmt from
#   run_job_now() to the catalog saying completed, the worker's pick-up included).  Size: the
#   backup's directory on disk (`du -sb`: data files, manifests, and for backup_mgmt the WAL it
#   needs; pgBackRest's WAL is in its archive and not counted), and, for reference, what each tool
#   reports (backup_mgmt's backup_size, pgBackRest's `info` repository delta, data files only).
#
# Usage (root, Debian 12): bash bench/incremental.sh [rounds] [scale] [load_seconds]
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
SCALE=${2:-50}
LOAD=${3:-60}

bash scripts/setup.sh
source scripts/lib.sh
comparison_tool pgbackrest
install_release

bench_dir
mkdir -p "$DIR/backups" "$DIR/repo1" "$DIR/repo2"
CORES=$(nproc)
cat >"$DIR/pgbackrest.conf" <<CONF
[global]
repo1-path=$DIR/repo1
repo1-retention-full=99
repo2-path=$DIR/repo2
repo2-retention-full=99
log-path=$DIR/repo1
lock-path=$DIR/repo1
log-level-console=warn
log-level-file=off
start-fast=y
[bench]
pg1-path=$DIR/data
pg1-socket-path=$DIR
pg1-port=55436
CONF
chown -R postgres:postgres "$DIR"
PORT=55436
BR="/usr/bin/pgbackrest --config=$DIR/pgbackrest.conf --stanza=bench"

INITDB_OPTS="--data-checksums" start_throwaway_cluster "$DIR" "$PORT" \
    "shared_preload_libraries = 'backup_mgmt'" \
    "backup_mgmt.database_name = 'postgres'" \
    "backup_mgmt.backup_roots = '$DIR/backups'" \
    "shared_buffers = 256MB" \
    "max_wal_size = 4GB" \
    "checkpoint_timeout = 30min" \
    "archive_mode = on" \
    "archive_command = '$BR archive-push %p'"

PSQL=(as_pg "$BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres -d postgres)
as_pg $BR stanza-create
echo "==> pgbench -i -s $SCALE"
as_pg "$BIN/pgbench" -q -i -s "$SCALE" -h "$DIR" -p "$PORT" -U postgres postgres >/dev/null 2>&1
"${PSQL[@]}" -c "CREATE EXTENSION backup_mgmt" \
    -c "SELECT backup_mgmt.schedule_backup('bfull', '@yearly', 'postgres', 'full', 'native_physical', '{\"fast_checkpoint\": true}')" \
    -c "SELECT backup_mgmt.schedule_backup('bincr', '@yearly', 'postgres', 'incremental', 'native_physical', '{\"fast_checkpoint\": true}')" >/dev/null
echo "data directory: $(du -sm "$DIR/data" | cut -f1) MB"

now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# backup_mgmt JOB: runs the job, waits for its backup; prints "seconds bytes copied referenced".
backup_mgmt() {
    local job=$1 before t0 st
    before=$("${PSQL[@]}" -c "SELECT coalesce(max(backup_id), 0) FROM backup_management.backup_records")
    t0=$(now)
    "${PSQL[@]}" -c "SELECT backup_mgmt.run_job_now('$job')" >/dev/null
    while :; do
        st=$("${PSQL[@]}" -c "SELECT status FROM backup_management.backup_records WHERE label = '$job' AND backup_id > $before")
        [ "$st" = completed ] && break
        if [ "$st" = failed ]; then
            "${PSQL[@]}" -c "SELECT error_message FROM backup_management.backup_records WHERE label = '$job' AND backup_id > $before" >&2
            exit 1
        fi
        sleep 0.05
    done
    local t1 path
    t1=$(now)
    path=$("${PSQL[@]}" -c "SELECT backup_file_path FROM backup_management.backup_records WHERE label = '$job' AND backup_id > $before")
    echo "$(seconds "$t0" "$t1") $(du -sb "$path" | cut -f1) $("${PSQL[@]}" -F ' ' -c "SELECT backup_size, annotations->>'files_copied', annotations->>'files_referenced'
        FROM backup_management.backup_records WHERE label = '$job' AND backup_id > $before")"
}

# pgbackrest REPO TYPE [options]: prints "seconds bytes_on_disk delta".
pgbackrest_backup() {
    local repo=$1 type=$2 t0 t1 label delta
    shift 2
    t0=$(now)
    as_pg $BR --repo="$repo" "$@" backup --type="$type"
    t1=$(now)
    read -r label delta < <(as_pg $BR --repo="$repo" info --output=json |
        python3 -c 'import json, sys; b = json.load(sys.stdin)[0]["backup"][-1]; print(b["label"], b["info"]["repository"]["delta"])')
    echo "$(seconds "$t0" "$t1") $(du -sb "$DIR/repo$repo/backup/bench/$label" | cut -f1) $delta"
}

run() {
    case $1 in
    backup_mgmt) backup_mgmt "$2" ;;
    pgbackrest) pgbackrest_backup 1 "$2" ;;
    pgbackrest-zst2) pgbackrest_backup 2 "$2" --compress-type=zst --compress-level=3 --process-max="$CORES" ;;
    esac
}

RESULTS=$(mktemp)
echo "==> full backups"
for c in backup_mgmt pgbackrest pgbackrest-zst2; do
    "${PSQL[@]}" -c "CHECKPOINT"
    if [ "$c" = backup_mgmt ]; then r=$(backup_mgmt bfull); else r=$(run "$c" full); fi
    echo "full $c $r" | tee -a "$RESULTS"
done

ORDER=(backup_mgmt pgbackrest pgbackrest-zst2)
for round in $(seq 1 "$ROUNDS"); do
    echo "==> round $round: ${LOAD}s of pgbench, then incrementals"
    as_pg "$BIN/pgbench" -n -c 2 -T "$LOAD" -h "$DIR" -p "$PORT" -U postgres postgres 2>/dev/null | grep -E "^tps" || true
    for c in "${ORDER[@]}"; do
        "${PSQL[@]}" -c "CHECKPOINT"
        if [ "$c" = backup_mgmt ]; then r=$(backup_mgmt bincr); else r=$(run "$c" incr); fi
        echo "incr $c $r" | tee -a "$RESULTS"
    done
    ORDER=("${ORDER[@]:1}" "${ORDER[0]}")
done

echo
echo "==> medians of the incremental backups ($ROUNDS rounds)"
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for c in backup_mgmt pgbackrest pgbackrest-zst2; do
    t=$(awk -v c="$c" '$1 == "incr" && $2 == c { print $3 }' "$RESULTS" | median)
    s=$(awk -v c="$c" '$1 == "incr" && $2 == c { print $4 }' "$RESULTS" | median)
    awk -v c="$c" -v t="$t" -v s="$s" 'BEGIN { printf "%-16s time %6.2f s   on disk %8.2f MB\n", c, t, s / 1048576 }'
done
rm -f "$RESULTS"
