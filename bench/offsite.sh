#!/usr/bin/env bash
# Benchmark of off-site copies, side by side in one run: uploading one 500 MB backup to a local
# S3-compatible server (s3rver, the end-to-end tests' server) with
#
#   backup_mgmt   the worker's S3 target (object_store: multipart, 8 MB parts, 4 in flight,
#                 payloads signed with their sha256, the object's ETag checked against the MD5s
#                 computed while reading, a HEAD of the landed object)
#   lib-new       the same target through bench/upload, built against this tree's core crate
#   lib-old       bench/upload built against BASELINE's core crate (default e328adc: the
#                 hand-written S3 client this tree replaced), the same harness
#   rclone        Debian's rclone `copyto --ignore-times` (else it skips the unchanged file) to
#                 the same server (its defaults: multipart, 4 parts
#                 in flight, MD5 checked after the upload)
#
# backup_mgmt's time is the recorded attempt (`sync_end_time - sync_start_time`: open, read,
# hash, upload, verify); lib-*'s is the upload's own (`put_file`, verification included);
# rclone's is the wall time of the command.  Each round runs the contenders in a rotated order.
#
# Usage (root, Debian 12): bash bench/offsite.sh [rounds] [megabytes] [baseline commit]
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
MB=${2:-500}
BASELINE=${3:-e328adc}

bash scripts/setup.sh
source scripts/lib.sh
comparison_tool rclone

install_release

bench_dir
# bench/upload against two core crates: this tree's and the baseline commit's.
echo "==> building bench/upload against this tree and against $BASELINE"
git worktree add -f --detach "$DIR/baseline" "$BASELINE" >/dev/null 2>&1
trap 'git worktree remove -f "$DIR/baseline" >/dev/null 2>&1; rm -rf "$DIR"' EXIT
build_bench_upload new "$(pwd)"
build_bench_upload old "$DIR/baseline" --features old
mkdir -p "$DIR/backups"
chown -R postgres:postgres "$DIR"
PORT=55436
S3PORT=55437
start_s3rver "$S3PORT" bench
trap 'kill $S3PID 2>/dev/null || true; as_pg "$BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true; git worktree remove -f "$DIR/baseline" >/dev/null 2>&1; rm -rf "$DIR"' EXIT
start_throwaway_cluster "$DIR" "$PORT" \
    "shared_preload_libraries = 'backup_mgmt'" \
    "backup_mgmt.database_name = 'postgres'" \
    "backup_mgmt.backup_roots = '$DIR/backups'"
PSQL=(as_pg "$BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres -d postgres)

# The credentials file, by reference: only the server's OS user can read it.
install -o postgres -g postgres -m 600 /dev/null "$DIR/s3.key"
echo "S3RVER:S3RVER" >"$DIR/s3.key"

echo "==> a $MB MB backup (random bytes: nothing to gain from compression)"
head -c "${MB}M" /dev/urandom >"$DIR/backups/bench.dump"
chown postgres:postgres "$DIR/backups/bench.dump"
SHA=$(sha256sum "$DIR/backups/bench.dump" | cut -d' ' -f1)
SIZE=$(stat -c %s "$DIR/backups/bench.dump")
"${PSQL[@]}" -c "CREATE EXTENSION backup_mgmt" >/dev/null
ID=$("${PSQL[@]}" -c "SELECT backup_mgmt.record_backup_start('postgres', 'full', 'pg_dump', '$DIR/backups/bench.dump')")
"${PSQL[@]}" -c "SELECT backup_mgmt.record_backup_complete($ID, $SIZE, '$SHA')" >/dev/null
"${PSQL[@]}" -c "INSERT INTO backup_management.remote_backup_configs
    (config_name, database_name, remote_type, remote_endpoint, remote_path, credentials_ref, options)
    VALUES ('bench', 'postgres', 's3', 'http://127.0.0.1:$S3PORT', 'bench/backup_mgmt', 'file:$DIR/s3.key',
            '{}')" >/dev/null

# rclone's remote, from its environment only (a clean one: a caller's AWS_CA_BUNDLE, for one,
# makes rclone 1.60 refuse a plain-HTTP endpoint).
RCLONE=(env -i PATH=/usr/bin:/bin HOME="$DIR" RCLONE_CONFIG_S3BENCH_TYPE=s3 RCLONE_CONFIG_S3BENCH_PROVIDER=Other
        RCLONE_CONFIG_S3BENCH_ENDPOINT="http://127.0.0.1:$S3PORT" RCLONE_CONFIG_S3BENCH_REGION=us-east-1
        RCLONE_CONFIG_S3BENCH_ACCESS_KEY_ID=S3RVER RCLONE_CONFIG_S3BENCH_SECRET_ACCESS_KEY=S3RVER rclone)

ours() {
    "${PSQL[@]}" -c "DELETE FROM backup_management.remote_backup_records" >/dev/null
    "${PSQL[@]}" -c "SELECT backup_mgmt.sync_remote_now('bench')" >/dev/null
    local limit=$((SECONDS + 900)) s
    while :; do
        s=$("${PSQL[@]}" -c "SELECT sync_status FROM backup_management.remote_backup_configs WHERE config_name = 'bench'")
        [ "$s" = completed ] && break
        [ "$s" = failed ] && { "${PSQL[@]}" -c "SELECT error_message FROM backup_management.remote_backup_records"; exit 1; }
        [ $SECONDS -lt $limit ] || { echo "no upload" >&2; exit 1; }
        sleep 0.2
    done
    "${PSQL[@]}" -c "SELECT extract(epoch FROM sync_end_time - sync_start_time) FROM backup_management.remote_backup_records WHERE sync_status = 'completed'"
}
theirs() {
    local t0 t1
    t0=$(date +%s.%N)
    "${RCLONE[@]}" copyto --ignore-times --config /dev/null "$DIR/backups/bench.dump" "s3bench:bench/rclone/bench.dump"
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f\n", b - a }'
}
# The upload helper, as root with its own copy of the key (credentials must belong to the user).
install -m 600 "$DIR/s3.key" "$DIR/s3-root.key"
lib() {
    "$DIR/upload-$1/upload" "http://127.0.0.1:$S3PORT" "bench/lib-$1" "file:$DIR/s3-root.key" \
        "$DIR/backups/bench.dump" bench.dump
}
report() { awk -v who="$1" -v t="$2" -v mb="$MB" 'BEGIN { printf "%-12s %7.2f s  %6.1f MB/s\n", who, t, mb / t }' | tee -a "$DIR/results"; }

# Warm-up: fill the page cache, check every contender works.
ours >/dev/null
theirs >/dev/null
lib new >/dev/null
lib old >/dev/null
# ...and uploads: its object is there after it, with the file's size.
for who in backup_mgmt lib-new lib-old rclone; do
    "${RCLONE[@]}" lsl --config /dev/null "s3bench:bench/$who" | grep -q "^ *$(stat -c %s "$DIR/backups/bench.dump") " \
        || { echo "$who left no object of the file's size" >&2; exit 1; }
done
CONTENDERS=(backup_mgmt lib-new lib-old rclone)
# Every contender uploads into an empty bucket: an upload never replaces an object, and since
# 5c345be our clients (rightly) skip one whose identical copy is already there, which would
# time a HEAD and a hash instead of an upload.
clear() {
    "${RCLONE[@]}" delete --config /dev/null s3bench:bench >/dev/null
    [ -z "$("${RCLONE[@]}" lsf -R --config /dev/null s3bench:bench)" ] || { echo "bucket not empty" >&2; exit 1; }
}
run() {
    clear
    case "$1" in
    backup_mgmt) report backup_mgmt "$(ours)" ;;
    lib-new) report lib-new "$(lib new)" ;;
    lib-old) report lib-old "$(lib old)" ;;
    rclone) report rclone "$(theirs)" ;;
    esac
}
echo "==> $ROUNDS rounds"
for r in $(seq "$ROUNDS"); do
    echo "-- round $r"
    n=${#CONTENDERS[@]}
    for i in $(seq 0 $((n - 1))); do
        run "${CONTENDERS[$(((i + r - 1) % n))]}"
    done
done
echo "==> medians"
for who in "${CONTENDERS[@]}"; do
    grep "^$who " "$DIR/results" | awk '{ print $2 }' | sort -n |
        awk -v who="$who" -v mb="$MB" '{ v[NR] = $1 } END { m = v[int((NR + 1) / 2)]; printf "%-12s median %.2f s, %.1f MB/s (n=%d)\n", who, m, mb / m, NR }'
done
