#!/usr/bin/env bash
# The Debian package, tried as a DBA without a Rust toolchain would use it: build
# postgresql-15-backup-mgmt (scripts/package.sh), remove the source-built files from PostgreSQL
# 15, `dpkg -i` it and the restore program's package (backup-mgmt), then in a throwaway cluster:
# CREATE EXTENSION, an upgrade from the oldest release, a scheduled job that the worker runs
# (its dump checked with sha256sum) and copies to a filesystem target, listed there by
# /usr/bin/backup-mgmt.  The packages are removed again at the end.  Run as root on Debian 12 (scripts/test.sh runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

out=$(bash scripts/package.sh 15)
mapfile -t debs <<<"$out"
program=${debs[0]} deb=${debs[-1]}
[[ $program == */backup-mgmt_* && $deb == */postgresql-15-backup-mgmt_* ]] ||
    { echo "scripts/package.sh printed no program and extension packages: ${debs[*]}" >&2; exit 1; }
echo "==> $deb: $(dpkg-deb --field "$deb" Package Version Depends | tr '\n' ' ')"
echo "==> $program: $(dpkg-deb --field "$program" Package Version Depends | tr '\n' ' ')"
lib=/usr/lib/postgresql/15/lib
ext=/usr/share/postgresql/15/extension
rm -f "$lib/backup_mgmt.so" "$ext"/backup_mgmt.control "$ext"/backup_mgmt--*.sql
dpkg -i "$deb" "$program" >/dev/null
trap 'dpkg -r postgresql-15-backup-mgmt backup-mgmt >/dev/null 2>&1 || true' EXIT
dpkg -L postgresql-15-backup-mgmt | grep -qx "$lib/backup_mgmt.so"
dpkg -L backup-mgmt | grep -qx /usr/bin/backup-mgmt

bench_dir
trap 'as_pg "$BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$DIR"; dpkg -r postgresql-15-backup-mgmt backup-mgmt >/dev/null 2>&1 || true' EXIT
mkdir -p "$DIR/backups" "$DIR/offsite"
chown -R postgres:postgres "$DIR"
PORT=55437
start_throwaway_cluster "$DIR" "$PORT" \
    "shared_preload_libraries = 'backup_mgmt'" \
    "backup_mgmt.database_name = 'postgres'" \
    "backup_mgmt.backup_roots = '$DIR/backups,$DIR/offsite'"
psql_() { as_pg "$BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres "$@"; }

psql_ -d postgres -c "CREATE EXTENSION backup_mgmt"
psql_ -d postgres -c "CREATE DATABASE shop" -c "CREATE DATABASE old"
psql_ -d shop -c "CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 1000) g"
# Every release's install script and upgrade path is in the package.
psql_ -d old -c "CREATE EXTENSION backup_mgmt VERSION '0.1.0'" -c "ALTER EXTENSION backup_mgmt UPDATE"
[ "$(psql_ -d old -c "SELECT extversion FROM pg_extension WHERE extname = 'backup_mgmt'")" = \
  "$(psql_ -d postgres -c "SELECT extversion FROM pg_extension WHERE extname = 'backup_mgmt'")" ]

psql_ -d postgres -c "SELECT backup_mgmt.schedule_backup('pkg', '*/2 * * * * *', 'shop', 'full', 'pg_dump')" >/dev/null
for _ in $(seq 1 60); do
    row=$(psql_ -d postgres -F ' ' -c "SELECT backup_file_path, checksum FROM backup_management.backup_records WHERE label = 'pkg' AND status = 'completed' ORDER BY backup_id LIMIT 1")
    [ -n "$row" ] && break
    sleep 1
done
if [ -z "$row" ]; then
    echo "the packaged extension's worker took no backup in 60 s" >&2
    cat "$DIR/server.log" >&2
    exit 1
fi
read -r path sum <<<"$row"
[ "$(sha256sum "$path" | cut -d' ' -f1)" = "$sum" ] || { echo "$path does not match its checksum" >&2; exit 1; }
# The packaged restore program reads what the worker copied off-site.
psql_ -d postgres -c "INSERT INTO backup_management.remote_backup_configs (config_name, database_name, remote_type, remote_endpoint, remote_path)
        VALUES ('disk', 'shop', 'filesystem', '$DIR/offsite', 't')" -c "SELECT backup_mgmt.sync_remote_now('disk')" >/dev/null
sysid=$(psql_ -d postgres -c "SELECT system_identifier FROM pg_control_system()")
listed=0
for _ in $(seq 1 60); do
    listed=$(as_pg /usr/bin/backup-mgmt --dir "$DIR/offsite/t" --cluster "$sysid" --output json list 2>/dev/null |
        python3 -c "import json,sys; print(sum(len(c['backups']) for c in json.load(sys.stdin)['clusters']))" 2>/dev/null || echo 0)
    [ "$listed" -gt 0 ] && break
    sleep 1
done
[ "$listed" -gt 0 ] || { echo "/usr/bin/backup-mgmt listed no backup on the target" >&2; exit 1; }
echo "==> from the package: CREATE EXTENSION, 0.1.0 -> $(psql_ -d old -c "SELECT extversion FROM pg_extension WHERE extname = 'backup_mgmt'"), a scheduled pg_dump ($path, sha256 checked), /usr/bin/backup-mgmt lists $listed on the target"
# In the summary format of the other test runners (scripts/test.sh totals these lines).
echo "test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out (Debian package)"
