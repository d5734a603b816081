#!/usr/bin/env bash
# Benchmark of copying a native physical backup off-site, side by side in one run: what checking
# every stored file against the backup's chain manifest as it is copied (decompressed and
# hashed, then required to land as checked) costs against copying without that check.
#
#   checked     storage::put_backup of this tree's core crate (bench/upload --dir), to a
#               filesystem target on the same disk
#   unchecked   the same harness built against BASELINE's core crate (default b904aab: each
#               file hashed as written and read back, not checked against the manifest)
#   cp+sha256   `cp -r` of the directory, then coreutils `sha256sum` of every copied file (a
#               script's copy with a read-back)
#
# The backup: a native full (zstd) of pgbench scale SCALE taken by the extension.  Each round
# runs the contenders in a rotated order into fresh directories; the page cache is warm (the
# backup was just read) and is not dropped.  Times are wall clock seconds.
#
# Usage (root, Debian 12): bash bench/offsite_native.sh [rounds] [scale] [baseline commit]
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
SCALE=${2:-50}
BASELINE=${3:-b904aab}

bash scripts/setup.sh
source scripts/lib.sh
install_release

bench_dir
echo "==> building bench/upload against this tree and against $BASELINE"
git worktree add -f --detach "$DIR/baseline" "$BASELINE" >/dev/null 2>&1
trap 'git worktree remove -f "$DIR/baseline" >/dev/null 2>&1; rm -rf "$DIR"' EXIT
build_bench_upload checked "$(pwd)"
build_bench_upload unchecked "$DIR/baseline"
mkdir -p "$DIR/backups"
chown -R postgres:postgres "$DIR"
PORT=55438
trap 'as_pg "$BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true; git worktree remove -f "$DIR/baseline" >/dev/null 2>&1; rm -rf "$DIR"' EXIT
start_throwaway_cluster "$DIR" "$PORT" \
    "shared_preload_libraries = 'backup_mgmt'" \
    "backup_mgmt.database_name = 'postgres'" \
    "backup_mgmt.backup_roots = '$DIR/backups'" \
    "shared_buffers = 256MB" \
    "max_wal_size = 4GB"
PSQL=(as_pg "$BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres -d postgres)
"${PSQL[@]}" -c "CREATE EXTENSION backup_mgmt" \
    -c "SELECT backup_mgmt.schedule_backup('full', '@yearly', 'postgres', 'full', 'native_physical', '{\"fast_checkpoint\": true}')" >/dev/null
echo "==> pgbench -i -s $SCALE"
as_pg "$BIN/pgbench" -q -i -s "$SCALE" -h "$DIR" -p "$PORT" -U postgres postgres >/dev/null 2>&1
"${PSQL[@]}" -c "CHECKPOINT" -c "SELECT backup_mgmt.run_job_now('full')" >/dev/null
wait_sql "SELECT EXISTS (SELECT FROM backup_management.backup_records WHERE label = 'full' AND status = 'completed')"
BACKUP=$("${PSQL[@]}" -c "SELECT backup_file_path FROM backup_management.backup_records WHERE label = 'full' AND status = 'completed'")
as_pg "$BIN/pg_ctl" -D "$DIR/data" -m fast stop >/dev/null
echo "backup: $BACKUP, $(du -sm "$BACKUP" | cut -f1) MB stored, $(find "$BACKUP" -type f | wc -l) files"

run() { # run CONTENDER ROUND: prints seconds
    local out="$DIR/out-$1-$2"
    rm -rf "$out"
    case $1 in
    checked | unchecked) "$DIR/upload-$1/upload" --dir "$out" "$BACKUP" "k" ;;
    cp+sha256)
        local start end
        start=$(date +%s.%N)
        mkdir -p "$out"
        cp -r "$BACKUP" "$out/k"
        sync -f "$out/k"
        find "$out/k" -type f -print0 | xargs -0 sha256sum >/dev/null
        end=$(date +%s.%N)
        awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f\n", b - a }'
        ;;
    esac
    rm -rf "$out"
}

CONTENDERS=(checked unchecked cp+sha256)
declare -A TIMES
for r in $(seq 1 "$ROUNDS"); do
    for i in 0 1 2; do
        c=${CONTENDERS[$(((i + r) % 3))]}
        t=$(run "$c" "$r")
        TIMES[$c]+="$t "
        echo "round $r  $c  ${t}s"
    done
done
echo
for c in "${CONTENDERS[@]}"; do
    printf '%-10s %s\n' "$c" "${TIMES[$c]}"
done
