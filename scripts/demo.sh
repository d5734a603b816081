#!/usr/bin/env bash
# The demo: installs everything, builds and installs backup_mgmt into the system PostgreSQL 15,
# starts a throwaway cluster with it preloaded, takes a real pg_dump backup of a sample database
# and records it (size and sha256), records a failing one, and shows the catalog.
#
# Run as root on Debian 12.  KEEP=1 leaves the demo cluster running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
source scripts/lib.sh

echo "==> building and installing backup_mgmt (release) into $("$PG_CONFIG" --pkglibdir)"
cargo pgrx install --release --pg-config "$PG_CONFIG"

DEMO=/tmp/backup_mgmt_demo
PORT=55432
if [ -f "$DEMO/data/postmaster.pid" ]; then
    as_pg "$BIN/pg_ctl" -D "$DEMO/data" -m fast stop >/dev/null 2>&1 || true
fi
rm -rf "$DEMO"
mkdir -p "$DEMO/backups"
chown -R postgres:postgres "$DEMO"

echo "==> starting a throwaway cluster in $DEMO (socket $DEMO, port $PORT)"
start_throwaway_cluster "$DEMO" "$PORT" \
    "shared_preload_libraries = 'backup_mgmt'" \
    "backup_mgmt.database_name = 'postgres'" \
    "backup_mgmt.backup_roots = '$DEMO/backups'"
stop_demo() {
    if [ "${KEEP:-0}" = 1 ]; then
        echo "==> the demo cluster keeps running: $BIN/psql -h $DEMO -p $PORT -U postgres"
        echo "    stop it with: runuser -u postgres -- $BIN/pg_ctl -D $DEMO/data stop"
    else
        as_pg "$BIN/pg_ctl" -D "$DEMO/data" -m fast stop >/dev/null
        echo "==> demo cluster stopped (KEEP=1 keeps it running)"
    fi
}
trap stop_demo EXIT

psql_demo() { as_pg "$BIN/psql" -X -v ON_ERROR_STOP=1 -h "$DEMO" -p "$PORT" -U postgres "$@"; }

echo "==> CREATE EXTENSION backup_mgmt; a sample database 'shop' (pgbench tables)"
psql_demo -q -d postgres -c "CREATE EXTENSION backup_mgmt" -c "CREATE DATABASE shop"
as_pg "$BIN/pgbench" -i -q -s 2 -h "$DEMO" -p "$PORT" -U postgres shop 2>/dev/null

DUMP="$DEMO/backups/shop-$(date +%Y%m%d%H%M%S).dump"
echo "==> backing up 'shop' with pg_dump -Fc, recording it in the catalog"
ID=$(psql_demo -At -d postgres -c "SELECT backup_mgmt.record_backup_start('shop', 'full', 'pg_dump', '$DUMP')")
as_pg "$BIN/pg_dump" -Fc -h "$DEMO" -p "$PORT" -U postgres -f "$DUMP" shop
SIZE=$(stat -c %s "$DUMP")
SUM=$(sha256sum "$DUMP" | cut -d' ' -f1)
psql_demo -q -At -d postgres -c "SELECT backup_mgmt.record_backup_complete($ID, $SIZE, '$SUM')" >/dev/null

echo "==> a backup that fails is recorded as failed, with the program's error"
ID2=$(psql_demo -At -d postgres -c "SELECT backup_mgmt.record_backup_start('nosuchdb', 'full', 'pg_dump', '$DEMO/backups/nosuchdb.dump')")
if ERR=$(as_pg "$BIN/pg_dump" -Fc -h "$DEMO" -p "$PORT" -U postgres -f "$DEMO/backups/nosuchdb.dump" nosuchdb 2>&1); then
    echo "unexpected: pg_dump of a missing database succeeded" >&2; exit 1
fi
# psql quotes the error text itself (:'err'), whatever characters pg_dump printed.
psql_demo -q -At -d postgres -v id="$ID2" -v err="$ERR" >/dev/null <<'SQL'
SELECT backup_mgmt.record_backup_failure(:id, :'err');
SQL

echo "==> the catalog"
psql_demo -d postgres -c "SELECT backup_id, database_name, backup_method, status, pg_size_pretty(backup_size::bigint) AS size,
                                 left(checksum, 16) || '…' AS sha256, duration, left(error_message, 60) AS error
                            FROM backup_management.backup_records ORDER BY backup_id"
echo "==> independent check of the recorded checksum: sha256sum $DUMP"
sha256sum "$DUMP"
echo "==> file access is confined to backup_mgmt.backup_roots"
psql_demo -d postgres -c "SELECT backup_mgmt.check_backup_path('$DUMP')"
psql_demo -d postgres -c "SELECT backup_mgmt.check_backup_path('/etc/passwd')" 2>&1 || true
echo "==> bad input gets a clear error with a hint"
psql_demo -d postgres -c "SELECT backup_mgmt.record_backup_complete($ID, 1, 'not-a-checksum')" 2>&1 || true
