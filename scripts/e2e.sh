#!/usr/bin/env bash
# Runs every end-to-end test file of pgrx-tests/ against the server PG_CONFIG names (default: the
# system PostgreSQL 15), two files at a time.  Run by scripts/test.sh once per PostgreSQL version.
#
# Why two at a time: the end-to-end tests spend most of their time waiting (initdb, a server
# starting, a worker's next tick, recovery), not computing, so two files side by side take little
# more than the longer of the two; run one after another they were most of CI's 90 minutes.  Each
# test owns its directories and sockets; the loopback ports of its S3 and Azure servers are
# picked free, and a server that finds its port taken by another test fails that test by name.
#
# Every file's output goes to its own log, printed whole when the file ends (not interleaved).
# A file still running after E2E_FILE_TIMEOUT seconds (default 1800) is stopped and fails.
# The exit status is non-zero when any file failed; the failed files are named at the end.
#
#   bash scripts/e2e.sh              # every file, two at a time
#   E2E_LANES=1 bash scripts/e2e.sh  # one after another
#   bash scripts/e2e.sh pitr worker  # only these files
set -euo pipefail
cd "$(dirname "$0")/.."

LANES=${E2E_LANES:-2}
FILE_TIMEOUT=${E2E_FILE_TIMEOUT:-1800}
case $LANES in
'' | *[!0-9]* | 0) echo "E2E_LANES must be a number of files at a time, 1 or more: '$LANES'" >&2; exit 2 ;;
esac
LOGS=$(mktemp -d /tmp/bm-e2e-logs-XXXXXX)
trap 'rm -rf "$LOGS"' EXIT

# Longest first (as measured in CI), so that the lanes end close together; a file not named here
# runs after these, and a name here without its file is skipped.
LONGEST_FIRST="native stalled_downloads offsite_wal s3 site_loss offsite_wal_set_aside
    basebackup_incremental offsite_local_loss azure offsite_open_transaction offsite
    site_loss_failover restore_quarantine pitr verification site_loss_incremental
    attacks_restore restore_settings worker archive_check faults segment_size attacks_worker
    object_copies restore attacks_catalog restore_logical_directory s3_signatures pitr_failover
    upgrade_recent foundation upgrade retention archive scheduler"

if [ $# -gt 0 ]; then
    files=("$@")
else
    files=()
    shopt -s nullglob
    for name in $LONGEST_FIRST; do
        [ -f "pgrx-tests/tests/$name.rs" ] && files+=("$name")
    done
    for path in pgrx-tests/tests/*.rs; do
        name=$(basename "$path" .rs)
        case " $(echo $LONGEST_FIRST) " in *" $name "*) ;; *) files+=("$name") ;; esac
    done
fi
if [ ${#files[@]} -eq 0 ]; then
    echo "no end-to-end test files in pgrx-tests/tests" >&2
    exit 1
fi

# Built once, before any file runs: two cargo processes building at once would only queue.
cargo test -p backup_mgmt_e2e --tests --no-run

# One file: its output to its own log, then printed whole; its name noted when it fails.
run_one() {
    local name=$1 logs=$2 limit=$3 started rc=0
    started=$(date +%s)
    # timeout signals the whole process group: cargo, the test binary and what it started.
    timeout --kill-after=60 "$limit" \
        cargo test -p backup_mgmt_e2e --test "$name" -- --test-threads=2 >"$logs/$name.log" 2>&1 || rc=$?
    [ "$rc" -ne 124 ] || echo "stopped: still running after ${limit}s" >>"$logs/$name.log"
    {
        printf '\n--- %s (%ss, exit %s)\n' "$name" "$(($(date +%s) - started))" "$rc"
        cat "$logs/$name.log"
    } | flock "$logs/print.lock" cat
    [ "$rc" -eq 0 ] || echo "$name" >>"$logs/failed"
    return 0
}
export -f run_one

started=$(date +%s)
printf '%s\n' "${files[@]}" |
    xargs -d '\n' -P "$LANES" -I{} bash -c 'run_one "$1" "$2" "$3"' _ {} "$LOGS" "$FILE_TIMEOUT"
echo "end-to-end: ${#files[@]} files in $(($(date +%s) - started))s, $LANES at a time"
if [ -s "$LOGS/failed" ]; then
    echo "end-to-end files that failed: $(tr '\n' ' ' <"$LOGS/failed")"
    exit 1
fi
