#!/usr/bin/env bash
# Benchmark of restoring from an off-site target (issue 17), side by side in one run on one
# cluster: `backup-mgmt restore` against `pgbackrest restore --process-max=2`, and
# `backup-mgmt wal-fetch` against `pgbackrest archive-get`.
#
#   Cluster: pgbench scale SCALE (default 50), WAL archived through backup_mgmt's module (zstd),
#   every archived file and the native full copied by the worker to a filesystem target on the
#   same disk ("from local disk").  pgBackRest 2.45 (Debian) has its own repository on the same
#   disk: a full backup of the same cluster at zst level 3, the same segments archive-pushed.
#   Restore: ROUNDS rounds, in rotating order, each into a new directory (backup-mgmt with
#   --jobs 2 like pgBackRest's --process-max=2, and with --jobs 4); time is
#   the wall clock of the program, which for both includes decompressing and checking every
#   file (sha256 for backup-mgmt, sha1 for pgBackRest) and making the files durable
#   (backup-mgmt: one syncfs; pgBackRest: fsync per file).  The page cache is dropped before
#   each contender when /proc/sys/vm/drop_caches is writable (said in the output).
#   Fetch alone: SEGMENTS segments fetched one by one into a file (one process per segment,
#   nothing replayed in between, no read-ahead): wal-fetch vs archive-get, per-call latency.
#   Fetch during recovery: each contender restores, then PostgreSQL replays every archived
#   segment to the end of the archive through its restore_command, wrapped to time each call;
#   per-segment latency of the calls that returned a file, and the time to promotion.  Four
#   contenders: wal-fetch with its spool (8 ahead, as `restore` writes it); wal-fetch alone;
#   pgBackRest's archive-get as shipped (synchronous); and with --archive-async (its spool,
#   2 processes).
#
#   Delta: pgbench runs DELTA_SECONDS (default 60) after both backups, the cluster stops, and
#   each round brings a copy of its data directory back to the backup: `restore --delta` vs
#   `pgbackrest restore --delta`, beside both full restores into an empty directory.
#
# Usage (root, Debian 12): bash bench/restore.sh [rounds] [scale] [segments] [delta seconds]
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
SCALE=${2:-50}
SEGMENTS=${3:-100}
DELTA_SECONDS=${4:-60}

bash scripts/setup.sh
source scripts/lib.sh
comparison_tool pgbackrest
install_release
echo "==> building backup-mgmt (release)"
cargo build --release --quiet -p backup_mgmt_cli

bench_dir
mkdir -p "$DIR/backups" "$DIR/offsite" "$DIR/repo" "$DIR/fetch"
install -m 0755 target/release/backup-mgmt "$DIR/backup-mgmt"
BMG="$DIR/backup-mgmt"
PORT=55437
cat >"$DIR/pgbackrest.conf" <<CONF
[global]
repo1-path=$DIR/repo
repo1-retention-full=99
compress-type=zst
compress-level=3
archive-check=n
log-path=$DIR/repo
lock-path=$DIR/repo
log-level-console=warn
log-level-file=off
start-fast=y
[bench]
pg1-path=$DIR/data
pg1-socket-path=$DIR
pg1-port=$PORT
CONF
chown -R postgres:postgres "$DIR"
BR="/usr/bin/pgbackrest --config=$DIR/pgbackrest.conf --stanza=bench"

start_throwaway_cluster "$DIR" "$PORT" \
    "shared_preload_libraries = 'backup_mgmt'" \
    "backup_mgmt.database_name = 'postgres'" \
    "backup_mgmt.backup_roots = '$DIR/backups,$DIR/offsite'" \
    "shared_buffers = 256MB" \
    "max_wal_size = 4GB" \
    "checkpoint_timeout = 30min" \
    "archive_mode = on" \
    "archive_library = 'backup_mgmt'" \
    "backup_mgmt.archive_compression = zstd"

PSQL=(as_pg "$BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres -d postgres)
as_pg $BR stanza-create
"${PSQL[@]}" -c "CREATE EXTENSION backup_mgmt" \
    -c "INSERT INTO backup_management.remote_backup_configs (config_name, database_name, remote_type, remote_endpoint, remote_path)
        VALUES ('disk', 'postgres', 'filesystem', '$DIR/offsite', 't')" \
    -c "SELECT backup_mgmt.schedule_backup('full', '@yearly', 'postgres', 'full', 'native_physical', '{\"fast_checkpoint\": true}')" >/dev/null
SYSID=$("${PSQL[@]}" -c "SELECT system_identifier FROM pg_control_system()")
echo "==> pgbench -i -s $SCALE"
as_pg "$BIN/pgbench" -q -i -s "$SCALE" -h "$DIR" -p "$PORT" -U postgres postgres >/dev/null 2>&1
echo "data directory: $(du -sm "$DIR/data" | cut -f1) MB"

now() { date +%s.%N; }
seconds() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

echo "==> full backups: backup_mgmt native (copied to the target), pgBackRest zst-3"
"${PSQL[@]}" -c "CHECKPOINT" -c "SELECT backup_mgmt.run_job_now('full')" >/dev/null
wait_sql "SELECT EXISTS (SELECT FROM backup_management.backup_records WHERE label = 'full' AND status = 'completed')"
FULL_ID=$("${PSQL[@]}" -c "SELECT backup_id FROM backup_management.backup_records WHERE label = 'full' AND status = 'completed'")
"${PSQL[@]}" -c "SELECT backup_mgmt.sync_remote_now('disk')" >/dev/null
wait_sql "SELECT EXISTS (SELECT FROM backup_management.remote_backup_records WHERE sync_status = 'completed')"
as_pg $BR backup --type=full --process-max=2

echo "==> WAL: inserts and pgbench until $SEGMENTS segments are archived and on the target"
"${PSQL[@]}" -c "CREATE TABLE walfill (i int, t text)"
while [ "$("${PSQL[@]}" -c "SELECT count(*) >= $SEGMENTS + 2 FROM backup_management.wal_archive WHERE segment_number IS NOT NULL AND expired_at IS NULL")" != t ]; do
    "${PSQL[@]}" -c "INSERT INTO walfill SELECT g, md5(g::text) FROM generate_series(1, 300000) g"
    as_pg "$BIN/pgbench" -n -c 2 -T 3 -h "$DIR" -p "$PORT" -U postgres postgres >/dev/null 2>&1
done
"${PSQL[@]}" -c "SELECT pg_switch_wal()" >/dev/null
wait_sql "SELECT coalesce(sum(pending_segments), 1) = 0 FROM backup_mgmt.offsite_wal_status"
MIRROR="$DIR/offsite/t/$SYSID/.catalog/catalog_mirror.json"
mapfile -t NAMES < <("${PSQL[@]}" -c "SELECT file_name FROM backup_management.wal_archive
    WHERE segment_number IS NOT NULL AND expired_at IS NULL ORDER BY file_name LIMIT $SEGMENTS")
mapfile -t PATHS < <("${PSQL[@]}" -c "SELECT file_path FROM backup_management.wal_archive
    WHERE segment_number IS NOT NULL AND expired_at IS NULL ORDER BY file_name LIMIT $SEGMENTS")
for i in $(seq 1 120); do
    python3 - "$MIRROR" "${NAMES[-1]}" <<'PY' && break
import json, os, sys
m = json.load(open(sys.argv[1]))
# Format 2 lists the WAL in parts, each under its key on the target.
root = os.path.dirname(os.path.dirname(os.path.dirname(sys.argv[1])))
if "wal_parts" in m:
    m["wal_files"] = [w for p in m["wal_parts"] for w in json.load(open(os.path.join(root, p["key"])))["wal_files"]]
sys.exit(0 if any(w["name"] == sys.argv[2] for w in m["wal_files"]) and m["backups"] else 1)
PY
    sleep 1
done
# The same segments into pgBackRest's archive (decompressed from backup_mgmt's, as PostgreSQL
# would hand them to archive-push).
mkdir -p "$DIR/push"
for i in "${!NAMES[@]}"; do
    n=${NAMES[$i]} f=${PATHS[$i]}
    case $f in
    *.zst) zstd -dqf "$f" -o "$DIR/push/$n" ;;
    *) cp "$f" "$DIR/push/$n" ;;
    esac
done
chown -R postgres:postgres "$DIR/push"
for n in "${NAMES[@]}"; do as_pg $BR archive-push "$DIR/push/$n"; done
rm -rf "$DIR/push"

drop_caches() {
    sync
    if echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then CACHE=cold; else CACHE=warm; fi
}

restore_bm() { # restore_bm JOBS
    as_pg "$BMG" --dir "$DIR/offsite/t" --cluster "$SYSID" restore --jobs "$1" "$DIR/r-bm" >/dev/null 2>&1
}
restore_br() {
    as_pg $BR restore --process-max=2 --pg1-path="$DIR/r-br" --type=immediate
}

# The floor: what writing as many bytes and making them durable costs on this disk alone
# (dd of zeros in 1 MiB blocks, then sync -f), no reading, decompressing or hashing: as many
# bytes as backup-mgmt's last restore wrote (it always comes before the floor in round 1).
restore_floor() {
    install -d -o postgres -g postgres -m 0700 "$DIR/r-floor"
    as_pg dd if=/dev/zero of="$DIR/r-floor/zeros" bs=1M count=$((FLOOR / 1048576)) status=none
    sync -f "$DIR/r-floor/zeros"
}
RESULTS=$(mktemp)
ORDER=(backup-mgmt pgbackrest backup-mgmt-j4 floor)
FLOOR=0
for round in $(seq 1 "$ROUNDS"); do
    for c in "${ORDER[@]}"; do
        if [ -d "$DIR/r-bm" ]; then FLOOR=$(du -sb "$DIR/r-bm" | cut -f1); fi
        rm -rf "$DIR/r-bm" "$DIR/r-bm.tablespaces" "$DIR/r-br" "$DIR/r-floor"
        if [ "$c" = pgbackrest ]; then install -d -o postgres -g postgres -m 0700 "$DIR/r-br"; fi
        drop_caches
        t0=$(now)
        case $c in
        backup-mgmt) restore_bm 2 && d="$DIR/r-bm" ;;
        backup-mgmt-j4) restore_bm 4 && d="$DIR/r-bm" ;;
        pgbackrest) restore_br && d="$DIR/r-br" ;;
        floor) restore_floor && d="$DIR/r-floor" ;;
        esac
        t1=$(now)
        echo "restore $round $c $(seconds "$t0" "$t1") $(du -sb "$d" | cut -f1) $CACHE" | tee -a "$RESULTS"
    done
    ORDER=("${ORDER[@]:1}" "${ORDER[0]}")
done
rm -rf "$DIR/r-bm" "$DIR/r-br" "$DIR/r-floor"

# One process per segment, as restore_command runs; timed inside one shell run as postgres.
fetch_loop() { # fetch_loop NAME COMMAND...: prints per-segment seconds
    local who=$1
    shift
    as_pg bash -c '
        out=$1; shift; n=$1; shift
        names=("${@:1:$n}"); shift "$n"
        for name in "${names[@]}"; do
            t0=$(date +%s%N)
            "$@" "$name" "$out" >/dev/null || { echo "fetch of $name failed" >&2; exit 1; }
            t1=$(date +%s%N)
            echo $(( (t1 - t0) / 1000 ))
            rm -f "$out"
        done' _ "$DIR/fetch/RECOVERYXLOG" "${#NAMES[@]}" "${NAMES[@]}" "$@" |
        awk -v who="$who" '{ print "fetch", who, $1 / 1e6 }'
}
# Fetch alone: one process after another, nothing replayed in between (the latency of one
# request when nothing was read ahead).
ORDER=(backup-mgmt pgbackrest)
for round in $(seq 1 "$ROUNDS"); do
    for c in "${ORDER[@]}"; do
        drop_caches
        case $c in
        backup-mgmt) fetch_loop "$c" "$BMG" --dir "$DIR/offsite/t" --cluster "$SYSID" wal-fetch ;;
        # shellcheck disable=SC2086 # BR is a command line
        pgbackrest) fetch_loop "$c" $BR archive-get ;;
        esac | awk -v r="$round" '{ print $1, r, $2, $3 }' >>"$RESULTS"
        awk -v r="$round" -v c="$c" '$1 == "fetch" && $2 == r && $3 == c { s += $4; n++ }
            END { printf "wal-fetch round %d %-18s %d segments, mean %.1f ms\n", r, c, n, 1000 * s / n }' "$RESULTS"
    done
    ORDER=("${ORDER[1]}" "${ORDER[0]}")
done

# Fetch during recovery: each contender's restore, then PostgreSQL replays every archived
# segment through its restore_command (wrapped to time each call that succeeded), to the end
# of the archive.  Read-ahead works here as it would in a real recovery.
cat >"$DIR/timed.sh" <<'SH'
#!/bin/bash
# timed.sh LOG COMMAND...: runs COMMAND, appends "<microseconds> <exit code>" to LOG.
log=$1
shift
t0=$(date +%s%N)
"$@"
rc=$?
t1=$(date +%s%N)
echo "$(( (t1 - t0) / 1000 )) $rc" >>"$log"
exit $rc
SH
chmod 0755 "$DIR/timed.sh"
RPORT=$((PORT + 1))
recover() { # recover NAME: restore into $DIR/rec-NAME, recover to the end, time each fetch
    local c=$1 d="$DIR/rec-$1" cmd
    rm -rf "$d" "$d.tablespaces" "$d.wal-spool" "$DIR/br-spool"
    case $c in
    backup-mgmt*) as_pg "$BMG" --dir "$DIR/offsite/t" --cluster "$SYSID" restore --latest "$d" >/dev/null 2>&1 ;;
    pgbackrest*)
        install -d -o postgres -g postgres -m 0700 "$d"
        as_pg $BR restore --process-max=2 --pg1-path="$d" >/dev/null
        ;;
    esac
    case $c in
    backup-mgmt) cmd="$BMG --dir $DIR/offsite/t --cluster $SYSID wal-fetch %f %p" ;;
    backup-mgmt-spool) cmd="$BMG --dir $DIR/offsite/t --cluster $SYSID wal-fetch --spool $d.wal-spool %f %p" ;;
    # pgBackRest checks that the server's directory is its pg1-path.
    pgbackrest) cmd="$BR --pg1-path=$d archive-get %f %p" ;;
    pgbackrest-async)
        install -d -o postgres -g postgres -m 0700 "$DIR/br-spool"
        cmd="$BR --pg1-path=$d --archive-async --spool-path=$DIR/br-spool --process-max=2 archive-get %f %p"
        ;;
    esac
    rm -f "$DIR/timed-$c.log"
    cat >>"$d/postgresql.auto.conf" <<CONF
restore_command = '$DIR/timed.sh $DIR/timed-$c.log $cmd'
port = $RPORT
unix_socket_directories = '$DIR'
listen_addresses = ''
archive_mode = off
shared_preload_libraries = ''
CONF
    drop_caches
    local t0 t1
    t0=$(now)
    as_pg "$BIN/pg_ctl" -w -t 600 -D "$d" -l "$DIR/rec-$c.log" start >/dev/null ||
        { tail -30 "$DIR/rec-$c.log" >&2; exit 1; }
    until [ "$(as_pg "$BIN/psql" -X -At -h "$DIR" -p "$RPORT" -d postgres -c 'SELECT NOT pg_is_in_recovery()' 2>/dev/null)" = t ]; do
        sleep 0.1
    done
    t1=$(now)
    as_pg "$BIN/pg_ctl" -D "$d" -m immediate stop >/dev/null
    pkill -u postgres -f wal-prefetch 2>/dev/null || true
    awk '$2 == 0 { print $1 }' "$DIR/timed-$c.log" | sort -n |
        awk -v c="$c" -v r="$round" -v total="$(seconds "$t0" "$t1")" '{ s += $1; v[++n] = $1 }
            END { printf "recover %s %s %d %.2f %.1f %.1f %.1f\n", r, c, n, total,
                  s / n / 1000, v[int((n + 1) / 2)] / 1000, v[int(n * 0.95)] / 1000 }'
    rm -rf "$d" "$d.tablespaces" "$d.wal-spool"
}
FETCHERS=(backup-mgmt-spool backup-mgmt pgbackrest pgbackrest-async)
ORDER=("${FETCHERS[@]}")
for round in $(seq 1 "$ROUNDS"); do
    for c in "${ORDER[@]}"; do
        recover "$c" | tee -a "$RESULTS"
    done
    ORDER=("${ORDER[@]:1}" "${ORDER[0]}")
done

# Delta: the cluster runs pgbench for DELTA_SECONDS after both backups (and the WAL above),
# then stops; each round starts from a copy of that data directory (not timed) and brings it
# back to the backup: `restore --delta` (keeps a file whose size and sha256 match, fetches the
# rest, removes what the backup lacks) vs `pgbackrest restore --delta` (sha1 of every file), and
# both full restores into an empty directory for scale.
echo "==> delta: pgbench -c 2 -T $DELTA_SECONDS, then the cluster stops"
as_pg "$BIN/pgbench" -n -c 2 -T "$DELTA_SECONDS" -h "$DIR" -p "$PORT" -U postgres postgres >/dev/null 2>&1
as_pg "$BIN/pg_ctl" -D "$DIR/data" -m fast stop >/dev/null
as_pg cp -a "$DIR/data" "$DIR/after"
rm -f "$DIR/after/postmaster.opts"
restore_delta() { # restore_delta NAME: into $DIR/r-delta
    local c=$1 d="$DIR/r-delta"
    case $c in
    backup-mgmt-delta) as_pg "$BMG" --dir "$DIR/offsite/t" --cluster "$SYSID" --output json restore --delta --backup-id "$FULL_ID" --jobs 2 "$d" >"$DIR/delta.json" ;;
    backup-mgmt-full) as_pg "$BMG" --dir "$DIR/offsite/t" --cluster "$SYSID" restore --backup-id "$FULL_ID" --jobs 2 "$d" >/dev/null 2>&1 ;;
    pgbackrest-delta) as_pg $BR restore --delta --process-max=2 --pg1-path="$d" --type=immediate ;;
    pgbackrest-full)
        install -d -o postgres -g postgres -m 0700 "$d"
        as_pg $BR restore --process-max=2 --pg1-path="$d" --type=immediate
        ;;
    esac
}
ORDER=(backup-mgmt-delta pgbackrest-delta backup-mgmt-full pgbackrest-full)
for round in $(seq 1 "$ROUNDS"); do
    for c in "${ORDER[@]}"; do
        rm -rf "$DIR/r-delta" "$DIR/r-delta.tablespaces" "$DIR/r-delta.wal-spool"
        case $c in *-delta) as_pg cp -a "$DIR/after" "$DIR/r-delta" ;; esac
        drop_caches
        t0=$(now)
        restore_delta "$c"
        t1=$(now)
        kept=-
        if [ "$c" = backup-mgmt-delta ]; then
            kept=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1]))['delta']; print(f\"{d['kept']}/{d['fetched']}/{d['removed']}\")" "$DIR/delta.json")
        fi
        echo "delta $round $c $(seconds "$t0" "$t1") $kept" | tee -a "$RESULTS"
    done
    ORDER=("${ORDER[@]:1}" "${ORDER[0]}")
done
rm -rf "$DIR/r-delta" "$DIR/after"

echo
echo "==> every round (cache: $CACHE)"
awk '$1 == "restore" { printf "restore   round %s  %-12s %6.2f s  %8.1f MB\n", $2, $3, $4, $5 / 1048576 }' "$RESULTS"
for c in backup-mgmt pgbackrest; do
    awk -v c="$c" '$1 == "fetch" && $3 == c { print $4 }' "$RESULTS" | sort -n |
        awk -v c="$c" '{ v[NR] = $1; s += $1 } END {
            printf "fetch alone   %-18s %d fetches  mean %.1f ms  p50 %.1f ms  p95 %.1f ms  max %.1f ms\n",
                c, NR, 1000 * s / NR, 1000 * v[int(NR * 0.5)], 1000 * v[int(NR * 0.95)], 1000 * v[NR] }'
done
awk '$1 == "delta" { printf "delta     round %s  %-18s %6.2f s  kept/fetched/removed %s\n", $2, $3, $4, $5 }' "$RESULTS"
awk '$1 == "recover" { printf "recovery round %s  %-18s %3d segments fetched  %6.2f s to promotion  per fetch: mean %.1f ms  p50 %.1f ms  p95 %.1f ms\n", $2, $3, $4, $5, $6, $7, $8 }' "$RESULTS"
rm -f "$RESULTS"
