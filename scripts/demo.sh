#!/usr/bin/env bash
# The demo: installs everything, builds and installs backup_mgmt into the system PostgreSQL 15,
# starts a throwaway cluster with it preloaded, schedules a backup job of a sample database, waits
# for the background worker to take it (zstd, sha256 in the same pass), shows a failing job
# recorded with pg_dump's error, and shows the catalog.
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

echo "==> scheduling a backup job: pg_dump of 'shop' every 10 seconds (6-field cron), zstd, with globals"
psql_demo -d postgres -c "SELECT backup_mgmt.schedule_backup('shop-demo', '*/10 * * * * *', 'shop', 'full', 'pg_dump',
                                                               '{\"compression\": \"zstd\", \"compression_level\": 3}') AS job_id"
psql_demo -d postgres -c "SELECT * FROM backup_mgmt.next_runs('shop-demo', 3)"

echo "==> waiting for the background worker to take it"
for _ in $(seq 1 60); do
    N=$(psql_demo -At -d postgres -c "SELECT count(*) FROM backup_management.backup_records WHERE label = 'shop-demo' AND status = 'completed'")
    [ "$N" -ge 1 ] && break
    sleep 1
done
if [ "$N" -lt 1 ]; then
    echo "the worker took no backup within 60 s; server log:" >&2
    tail -20 "$DEMO/server.log" >&2
    exit 1
fi
psql_demo -q -d postgres -c "SELECT backup_mgmt.alter_job('shop-demo', active => false)" >/dev/null

echo "==> a job whose database is gone fails, and is recorded with pg_dump's own error"
psql_demo -q -d postgres -c "CREATE DATABASE scratch" \
    -c "SELECT backup_mgmt.schedule_backup('scratch-demo', '@daily', 'scratch')" \
    -c "DROP DATABASE scratch" -c "SELECT backup_mgmt.run_job_now('scratch-demo')" >/dev/null
for _ in $(seq 1 30); do
    F=$(psql_demo -At -d postgres -c "SELECT count(*) FROM backup_management.backup_records WHERE label = 'scratch-demo' AND status <> 'running'")
    [ "$F" -ge 1 ] && break
    sleep 1
done

echo "==> the catalog"
psql_demo -d postgres -c "SELECT backup_id, database_name, backup_method, status, compression,
                                 pg_size_pretty(backup_size::bigint) AS size,
                                 left(checksum, 16) || '…' AS sha256, duration, left(error_message, 60) AS error
                            FROM backup_management.backup_records ORDER BY backup_id"
psql_demo -d postgres -c "SELECT j.job_name, e.scheduled_for, e.execution_status, e.backup_id
                            FROM enterprise_backup.backup_job_executions e JOIN enterprise_backup.backup_jobs j USING (job_id)
                           ORDER BY e.execution_id"
DUMP=$(psql_demo -At -d postgres -c "SELECT backup_file_path FROM backup_management.backup_records WHERE label = 'shop-demo' AND status = 'completed' ORDER BY backup_id LIMIT 1")
SUM=$(psql_demo -At -d postgres -c "SELECT checksum FROM backup_management.backup_records WHERE backup_file_path = '$DUMP'")
echo "==> independent check of the recorded checksum ($SUM): sha256sum $DUMP"
sha256sum "$DUMP"
echo "==> the dump restores: zstd -dc $DUMP | pg_restore --list (first lines)"
# Decompressed to a file first: pg_restore --list stops reading after the table of contents,
# which would end a pipe with SIGPIPE (and the demo, under pipefail).
zstd -q -dc "$DUMP" >"$DEMO/shop.dump"
chown postgres "$DEMO/shop.dump"
as_pg "$BIN/pg_restore" --list "$DEMO/shop.dump" >"$DEMO/toc.txt"
head -12 "$DEMO/toc.txt"
ID=$(psql_demo -At -d postgres -c "SELECT backup_id FROM backup_management.backup_records WHERE backup_file_path = '$DUMP'")
echo "==> native verification and a real restore test of backup $ID"
psql_demo -d postgres -c "SELECT backup_mgmt.verify_backup_integrity($ID)" \
    -c "SELECT * FROM backup_mgmt.test_backup_restore($ID)" \
    -c "SELECT verification_type, verification_status, verification_result->>'stage' AS stage,
               verification_result->>'tables_checked' AS tables_checked
          FROM backup_management.backup_verifications WHERE backup_id = $ID ORDER BY verification_id"
echo "==> file access is confined to backup_mgmt.backup_roots"
psql_demo -d postgres -c "SELECT backup_mgmt.check_backup_path('$DUMP')"
psql_demo -d postgres -c "SELECT backup_mgmt.check_backup_path('/etc/passwd')" 2>&1 || true
echo "==> bad input gets a clear error with a hint"
psql_demo -d postgres -c "SELECT backup_mgmt.record_backup_complete($ID, 1, 'not-a-checksum')" 2>&1 || true
