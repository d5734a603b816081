#!/usr/bin/env bash
# Benchmark of restoring from an object store (issue 17), side by side in one run: a native full
# of pgbench scale SCALE (default 50) copied by the worker to a local S3-compatible server
# (s3rver, the end-to-end tests' server, on loopback), then, ROUNDS rounds in alternating order:
#
#   backup-mgmt   `restore --backup-id N --jobs 4`: every object fetched, decompressed, its
#                 sha256 checked against the chain manifest while it is written, one syncfs at
#                 the end, recovery settings written
#   baseline      the same restore by the backup-mgmt of BASELINE (a commit, default e328adc: the
#                 hand-written S3 client before object_store), built in a git worktree
#   rclone        Debian's rclone `copy --fast-list --transfers 4` of the same objects (the backup's prefix)
#                 into a directory, then `sync -f` on it: download only, nothing decompressed or
#                 checked beyond rclone's own MD5/size comparison
#
# Both are timed by the wall clock; throughput is the stored bytes (what crosses the network)
# over that time.  The page cache is dropped before each contender when possible (said below).
# Also shown: the CPU time the S3 server (one Node.js process) spent serving each contender; on
# two cores the server and the restore share the machine.
#
# Usage (root, Debian 12): bash bench/restore_s3.sh [rounds] [scale] [baseline commit]
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
SCALE=${2:-50}
BASELINE=${3:-e328adc}

bash scripts/setup.sh
source scripts/lib.sh
comparison_tool rclone
install_release
echo "==> building backup-mgmt (release)"
cargo build --release --quiet -p backup_mgmt_cli

bench_dir
mkdir -p "$DIR/backups"
install -m 0755 target/release/backup-mgmt "$DIR/backup-mgmt"
BMG="$DIR/backup-mgmt"
echo "==> building the backup-mgmt of $BASELINE (release)"
git worktree add -f --detach "$DIR/baseline-tree" "$BASELINE" >/dev/null 2>&1
CARGO_TARGET_DIR="$(pwd)/target/bench-baseline" cargo build --release --quiet \
    --manifest-path "$DIR/baseline-tree/Cargo.toml" -p backup_mgmt_cli
install -m 0755 target/bench-baseline/release/backup-mgmt "$DIR/backup-mgmt-baseline"
git worktree remove -f "$DIR/baseline-tree"
chown -R postgres:postgres "$DIR"
PORT=55438
S3PORT=55439
start_s3rver "$S3PORT" bench
start_throwaway_cluster "$DIR" "$PORT" \
    "shared_preload_libraries = 'backup_mgmt'" \
    "backup_mgmt.database_name = 'postgres'" \
    "backup_mgmt.backup_roots = '$DIR/backups'" \
    "shared_buffers = 256MB" \
    "max_wal_size = 4GB" \
    "archive_mode = on" \
    "archive_library = 'backup_mgmt'" \
    "backup_mgmt.archive_compression = zstd"
PSQL=(as_pg "$BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres -d postgres)
install -o postgres -g postgres -m 600 /dev/null "$DIR/s3.key"
echo "S3RVER:S3RVER" >"$DIR/s3.key"


"${PSQL[@]}" -c "CREATE EXTENSION backup_mgmt" \
    -c "INSERT INTO backup_management.remote_backup_configs
            (config_name, database_name, remote_type, remote_endpoint, remote_path, credentials_ref, options)
        VALUES ('bucket', 'postgres', 's3', 'http://127.0.0.1:$S3PORT', 'bench/fleet', 'file:$DIR/s3.key',
                '{}')" \
    -c "SELECT backup_mgmt.schedule_backup('full', '@yearly', 'postgres', 'full', 'native_physical', '{\"fast_checkpoint\": true}')" >/dev/null
SYSID=$("${PSQL[@]}" -c "SELECT system_identifier FROM pg_control_system()")
echo "==> pgbench -i -s $SCALE"
as_pg "$BIN/pgbench" -q -i -s "$SCALE" -h "$DIR" -p "$PORT" -U postgres postgres >/dev/null 2>&1
echo "data directory: $(du -sm "$DIR/data" | cut -f1) MB"
echo "==> a native full, copied to the bucket with the WAL it needs"
"${PSQL[@]}" -c "CHECKPOINT" -c "SELECT backup_mgmt.run_job_now('full')" >/dev/null
wait_sql "SELECT EXISTS (SELECT FROM backup_management.backup_records WHERE label = 'full' AND status = 'completed')"
ID=$("${PSQL[@]}" -c "SELECT backup_id FROM backup_management.backup_records WHERE label = 'full' AND status = 'completed'")
"${PSQL[@]}" -c "SELECT pg_switch_wal()" -c "SELECT backup_mgmt.sync_remote_now('bucket')" >/dev/null
wait_sql "SELECT EXISTS (SELECT FROM backup_management.remote_backup_records WHERE sync_status = 'completed')"
wait_sql "SELECT coalesce(sum(pending_segments), 1) = 0 FROM backup_mgmt.offsite_wal_status"
TARGET=(--s3-endpoint "http://127.0.0.1:$S3PORT" --s3-path bench/fleet --s3-credentials "file:$DIR/s3.key" --cluster "$SYSID")
KEY=
for i in $(seq 1 120); do
    KEY=$(as_pg "$BMG" "${TARGET[@]}" --output json list 2>/dev/null |
        python3 -c "import json,sys; d=json.load(sys.stdin); print(next((b['key'] for b in d['clusters'][0]['backups'] if b['backup_id'] == $ID), ''))" || true)
    [ -n "$KEY" ] && break
    sleep 1
done
[ -n "$KEY" ] || { echo "the mirror never listed backup $ID" >&2; exit 1; }

RCLONE=(env -i PATH=/usr/bin:/bin HOME="$DIR" RCLONE_CONFIG_S3BENCH_TYPE=s3 RCLONE_CONFIG_S3BENCH_PROVIDER=Other
        RCLONE_CONFIG_S3BENCH_ENDPOINT="http://127.0.0.1:$S3PORT" RCLONE_CONFIG_S3BENCH_REGION=us-east-1
        RCLONE_CONFIG_S3BENCH_ACCESS_KEY_ID=S3RVER RCLONE_CONFIG_S3BENCH_SECRET_ACCESS_KEY=S3RVER rclone --config /dev/null)
read -r BYTES OBJECTS < <("${RCLONE[@]}" size --json "s3bench:bench/fleet/$KEY" | python3 -c "import json,sys; d=json.load(sys.stdin); print(d['bytes'], d['count'])")
echo "backup $ID: $KEY, $((BYTES / 1048576)) MB stored in $OBJECTS objects"

if [ -w /proc/sys/vm/drop_caches ]; then
    drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
    echo "page cache dropped before each contender"
else
    drop() { sync; }
    echo "page cache NOT dropped (/proc/sys/vm/drop_caches not writable)"
fi
now() { date +%s.%N; }
server_cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$S3PID/stat"; }
report() { # report WHO T0 T1 CPU0 CPU1
    awk -v who="$1" -v a="$2" -v b="$3" -v c0="$4" -v c1="$5" -v bytes="$BYTES" 'BEGIN { t = b - a;
        printf "%-12s %7.2f s  %6.1f MB/s  server CPU %.2f s\n", who, t, bytes / 1048576 / t, c1 - c0 }' | tee -a "$DIR/results"
}
restore_with() { # restore_with WHO PROGRAM
    local dest="$DIR/r-$1" t0 t1 c0
    rm -rf "$dest" "$dest.tablespaces" "$dest.wal-spool"
    drop
    c0=$(server_cpu)
    t0=$(now)
    as_pg "$2" "${TARGET[@]}" restore --backup-id "$ID" --jobs 4 "$dest" >/dev/null 2>&1
    t1=$(now)
    report "$1" "$t0" "$t1" "$c0" "$(server_cpu)"
    rm -rf "$dest" "$dest.tablespaces" "$dest.wal-spool"
}
ours() { restore_with backup-mgmt "$BMG"; }
baseline() { restore_with baseline "$DIR/backup-mgmt-baseline"; }
theirs() {
    local dest="$DIR/r-rclone" t0 t1 c0
    rm -rf "$dest"
    mkdir -p "$dest"
    drop
    c0=$(server_cpu)
    t0=$(now)
    "${RCLONE[@]}" copy --fast-list --transfers 4 "s3bench:bench/fleet/$KEY" "$dest"
    sync -f "$dest"
    t1=$(now)
    # Without --fast-list, rclone walks s3rver's listing a directory at a time and silently
    # copied 71 of 1,078 objects (the numbers published before 2026-12-04 are that mistake).
    local got
    got=$(find "$dest" -type f | wc -l)
    [ "$got" = "$OBJECTS" ] || { echo "rclone copied $got of $OBJECTS objects" >&2; exit 1; }
    report rclone "$t0" "$t1" "$c0" "$(server_cpu)"
}

echo "==> $ROUNDS rounds"
CONTENDERS=(ours baseline theirs)
for r in $(seq "$ROUNDS"); do
    echo "-- round $r"
    for i in 0 1 2; do "${CONTENDERS[$(((i + r - 1) % 3))]}"; done
done
echo "==> medians"
for who in backup-mgmt baseline rclone; do
    grep "^$who " "$DIR/results" | awk '{ print $2 }' | sort -n |
        awk -v who="$who" -v bytes="$BYTES" '{ v[NR] = $1 } END { m = v[int((NR + 1) / 2)]; printf "%-12s median %.2f s, %.1f MB/s (n=%d)\n", who, m, bytes / 1048576 / m, NR }'
done
