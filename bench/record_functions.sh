#!/usr/bin/env bash
# Benchmark: native record functions vs the seed's PL/pgSQL ones, same cluster, same run.
#
# pgbench, 4 clients, synchronous_commit=off, one
#   record_backup_complete(record_backup_start(...), size, checksum)
# pair per transaction.  Rounds alternate baseline/native so drift (autovacuum, page cache,
# thermal) hits both equally; both catalogs are truncated and checkpointed before every round.
# The median of the rounds is reported.
#
# Usage (root, Debian 12): bash bench/record_functions.sh [seconds-per-round] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${1:-20}
ROUNDS=${2:-3}
CLIENTS=4
SEED=${SEED:-../shared/seed/seed-plpgsql-baseline.sql}
[ -f "$SEED" ] || { echo "seed baseline not found at $SEED (set SEED=path)" >&2; exit 1; }
SEED=$(readlink -f "$SEED")

bash scripts/setup.sh
source scripts/lib.sh

install_release

bench_dir
PORT=55433
# Registered paths must lie inside a backup root, each a file of its own (0.2.0): every pair
# records a new name under it (the seed gets the same names, so both build the same strings).
ROOT="$DIR/backups"
mkdir -p "$ROOT"
chown postgres:postgres "$ROOT"

start_throwaway_cluster "$DIR" "$PORT" \
    "shared_preload_libraries = 'backup_mgmt'" \
    "backup_mgmt.database_name = 'bench_native'" \
    "backup_mgmt.backup_roots = '$ROOT'" \
    "synchronous_commit = off" \
    "shared_buffers = 256MB" \
    "max_wal_size = 4GB"

PSQL=("$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres)
"${PSQL[@]}" -d postgres -c "CREATE DATABASE bench_native" -c "CREATE DATABASE bench_seed"
"${PSQL[@]}" -d bench_native -c "CREATE EXTENSION backup_mgmt"
"${PSQL[@]}" -d bench_seed -f "$SEED" >/dev/null

CHECKSUM=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
cat >"$DIR/native.sql" <<SQL
SELECT backup_mgmt.record_backup_complete(backup_mgmt.record_backup_start('bench', 'full', 'pg_dump', '$ROOT/b' || txid_current() || '.dump'), 1048576, '$CHECKSUM');
SQL
cat >"$DIR/seed.sql" <<SQL
SELECT record_backup_complete(record_backup_start('bench', 'full', 'pg_dump', '$ROOT/b' || txid_current() || '.dump'), 1048576, '$CHECKSUM');
SQL

run_round() { # db script -> tps
    local db=$1 script=$2 out
    "${PSQL[@]}" -d "$db" -c "SET client_min_messages = warning" \
        -c "TRUNCATE backup_management.backup_records CASCADE" -c "CHECKPOINT" >/dev/null
    out=$("$BIN/pgbench" -n -M prepared -c "$CLIENTS" -j 2 -T "$DURATION" -h "$DIR" -p "$PORT" -U postgres \
          -f "$script" "$db" 2>&1) || { echo "pgbench failed on $db:" >&2; echo "$out" >&2; return 1; }
    sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out"
}

# The same pairs without client round trips or commits: N pairs in one statement, timed in the
# server.  This isolates the work of the functions and their tables from the fixed cost of a
# pgbench transaction.
PAIRS_IN_SERVER=${PAIRS_IN_SERVER:-50000}
in_server() { # db function-prefix -> milliseconds
    local db=$1 prefix=$2
    "${PSQL[@]}" -d "$db" -c "SET client_min_messages = warning" \
        -c "TRUNCATE backup_management.backup_records CASCADE" -c "CHECKPOINT" >/dev/null
    "${PSQL[@]}" -d "$db" -At <<SQL
SELECT clock_timestamp() AS t0 \gset
SELECT count(${prefix}record_backup_complete(${prefix}record_backup_start('bench', 'full', 'pg_dump', '$ROOT/b' || g || '.dump'), 1048576, '$CHECKSUM'))
  FROM generate_series(1, $PAIRS_IN_SERVER) g \g /dev/null
SELECT round(extract(epoch FROM clock_timestamp() - :'t0'::timestamptz) * 1000);
SQL
}

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

seed_tps=(); native_tps=()
for r in $(seq 1 "$ROUNDS"); do
    s=$(run_round bench_seed "$DIR/seed.sql"); seed_tps+=("$s")
    n=$(run_round bench_native "$DIR/native.sql"); native_tps+=("$n")
    echo "round $r: PL/pgSQL seed $s pairs/s, native $n pairs/s"
done
seed_ms=(); native_ms=()
for r in $(seq 1 "$ROUNDS"); do
    seed_ms+=("$(in_server bench_seed "")")
    native_ms+=("$(in_server bench_native "backup_mgmt.")")
    echo "in-server round $r: $PAIRS_IN_SERVER pairs, PL/pgSQL seed ${seed_ms[-1]} ms, native ${native_ms[-1]} ms"
done
seed_ms_med=$(printf '%s\n' "${seed_ms[@]}" | median)
native_ms_med=$(printf '%s\n' "${native_ms[@]}" | median)
ratio_in_server=$(awk -v n="$native_ms_med" -v s="$seed_ms_med" 'BEGIN { printf "%.2f", s / n }')

seed_med=$(printf '%s\n' "${seed_tps[@]}" | median)
native_med=$(printf '%s\n' "${native_tps[@]}" | median)
ratio=$(awk -v n="$native_med" -v s="$seed_med" 'BEGIN { printf "%.2f", n / s }')

mkdir -p bench/results
{
    echo "record functions: $CLIENTS clients, synchronous_commit=off, -M prepared, ${DURATION}s x $ROUNDS rounds, $(nproc) cores, $("$PG_CONFIG" --version)"
    echo
    echo "| implementation | pairs/s per round | median pairs/s |"
    echo "|---|---|---|"
    echo "| seed PL/pgSQL | ${seed_tps[*]} | $seed_med |"
    echo "| backup_mgmt native | ${native_tps[*]} | $native_med |"
    echo
    echo "ratio native / PL/pgSQL = $ratio (target >= 1.2)"
    echo
    echo "in-server: $PAIRS_IN_SERVER pairs in one statement (no client round trip, one commit), ms"
    echo
    echo "| implementation | ms per round | median ms | pairs/s |"
    echo "|---|---|---|---|"
    echo "| seed PL/pgSQL | ${seed_ms[*]} | $seed_ms_med | $(awk -v m="$seed_ms_med" -v n="$PAIRS_IN_SERVER" 'BEGIN { printf "%d", n / m * 1000 }') |"
    echo "| backup_mgmt native | ${native_ms[*]} | $native_ms_med | $(awk -v m="$native_ms_med" -v n="$PAIRS_IN_SERVER" 'BEGIN { printf "%d", n / m * 1000 }') |"
    echo
    echo "in-server ratio native / PL/pgSQL = $ratio_in_server"
} | tee bench/results/record_functions.md
