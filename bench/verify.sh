#!/usr/bin/env bash
# Benchmark of native verification, side by side in one run:
#
#   1. an 800 MB single-file backup: verify_backup_integrity() vs `openssl dgst -sha256` vs
#      coreutils `sha256sum` on the same (cached) file;
#   2. an 800 MB directory backup of 16 files: verify_backup_integrity() (threads over files) vs
#      the single-file rate of (1): how much of the second core it uses;
#   3. the backend's peak RSS (VmHWM) before and after verifying the 800 MB file.
#
# Files are read once before timing, so every contender reads from the page cache: this measures
# the hashing, not the disk.  Rounds alternate the contenders; medians are reported.
#
# Usage (root, Debian 12): bash bench/verify.sh [rounds] [megabytes]
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-5}
MB=${2:-800}

bash scripts/setup.sh
source scripts/lib.sh
install_release

bench_dir
PORT=55435
mkdir -p "$DIR/backups/dir"
chown -R postgres:postgres "$DIR"
start_throwaway_cluster "$DIR" "$PORT" \
    "shared_preload_libraries = 'backup_mgmt'" \
    "backup_mgmt.backup_roots = '$DIR/backups'"
PSQL=(as_pg "$BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres -d postgres)
"${PSQL[@]}" -c "CREATE EXTENSION backup_mgmt"

echo "==> writing a ${MB} MB file and a ${MB} MB directory of 16 files (random data)"
FILE="$DIR/backups/big.dump"
head -c "${MB}M" /dev/urandom >"$FILE"
for i in $(seq -w 1 16); do head -c "$((MB / 16))M" /dev/urandom >"$DIR/backups/dir/$i.dat"; done
(cd "$DIR/backups/dir" && sha256sum -- *.dat >backup_manifest.sha256)
chown -R postgres:postgres "$DIR/backups"
SUM=$(sha256sum "$FILE" | cut -d' ' -f1)
MSUM=$(sha256sum "$DIR/backups/dir/backup_manifest.sha256" | cut -d' ' -f1)
DIRSIZE=$(cat "$DIR"/backups/dir/* | wc -c)
ID=$("${PSQL[@]}" -c "SELECT backup_mgmt.record_backup_start('postgres', 'full', 'pg_dump', '$FILE')")
"${PSQL[@]}" -c "SELECT backup_mgmt.record_backup_complete($ID, $(stat -c %s "$FILE"), '$SUM')" >/dev/null
DID=$("${PSQL[@]}" -c "SELECT backup_mgmt.record_backup_start('postgres', 'full', 'pg_dump_directory', '$DIR/backups/dir')")
"${PSQL[@]}" -c "SELECT backup_mgmt.record_backup_complete($DID, $DIRSIZE, '$MSUM')" >/dev/null
cat "$FILE" "$DIR"/backups/dir/* >/dev/null

now() { date +%s.%N; }
timed() { local t0; t0=$(now); "$@" >/dev/null; awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
verify() { [ "$("${PSQL[@]}" -c "SELECT backup_mgmt.verify_backup_integrity($1)")" = t ] || { echo "verification of $1 failed" >&2; exit 1; }; }

: >"$DIR/results"
for r in $(seq 1 "$ROUNDS"); do
    echo "openssl $(timed openssl dgst -sha256 "$FILE")" >>"$DIR/results"
    echo "native_file $(timed verify "$ID")" >>"$DIR/results"
    echo "sha256sum $(timed sha256sum "$FILE")" >>"$DIR/results"
    echo "native_dir $(timed verify "$DID")" >>"$DIR/results"
    echo "round $r: $(tail -4 "$DIR/results" | tr '\n' ' ')"
done

echo
echo "==> medians over $ROUNDS rounds (${MB} MB, from the page cache)"
for k in openssl native_file sha256sum native_dir; do
    m=$(awk -v k="$k" '$1 == k { print $2 }' "$DIR/results" | median)
    awk -v k="$k" -v m="$m" -v mb="$MB" 'BEGIN { printf "%-12s %6.3f s  %6.0f MB/s\n", k, m, mb / m }'
done
o=$(awk '$1 == "openssl" { print $2 }' "$DIR/results" | median)
f=$(awk '$1 == "native_file" { print $2 }' "$DIR/results" | median)
d=$(awk '$1 == "native_dir" { print $2 }' "$DIR/results" | median)
awk -v o="$o" -v f="$f" -v d="$d" 'BEGIN {
    printf "native single file vs openssl: %.2fx openssl speed (target >= 0.9)\n", o / f
    printf "native directory vs native single file: %.2fx the single-thread rate (target >= 1.6)\n", f / d }'

echo
echo "==> backend peak RSS around one verification of the ${MB} MB file"
hwm="SELECT substring(pg_read_file('/proc/self/status') FROM 'VmHWM:\\s+(\\d+ kB)')"
"${PSQL[@]}" <<SQL
SELECT 'before: ' || ($hwm);
SELECT backup_mgmt.verify_backup_integrity($ID);
SELECT 'after the file: ' || ($hwm);
SELECT backup_mgmt.verify_backup_integrity($DID);
SELECT 'after the directory (threads): ' || ($hwm);
SQL
