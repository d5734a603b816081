#!/usr/bin/env bash
# Benchmark: what the worker's off-site WAL check costs per target and second, and what keeping
# the queue costs the writers, 0.12.0 (every check compares the whole archive with the target's
# copies) against 0.13.0 (remote_wal_queue, kept by triggers), side by side in one cluster: one
# database with each version's catalog, filled alike.
#
# Catalog for N archived files: one active filesystem target; N live segments of this cluster,
# all copied there but the newest 10; N/10 older expired segments whose copies were removed.
# Each round times, in each database: what the worker asks every second per target (the files to
# copy, offsite_wal_status for the lag alarm, the expired copies to remove); and the writers:
# 100 files ingested one statement each (the worker records each archived file on its own), 128
# copies recorded one statement each (as the worker records a batch), 1000 files expired in one
# statement; and 0.13.0's repair, which the worker runs once a minute (a whole comparison of the
# queue with its definition).  Milliseconds: reads the mean of 20 calls after one warm-up,
# writes the whole of them (rolled back).  No worker runs (the library is not preloaded).
#
# Usage (root, Debian 12): bash bench/offsite_queue.sh [rounds] [N ...]   default: 3 10000 100000
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
shift || true
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(10000 100000)

bash scripts/setup.sh
source scripts/lib.sh

catalog_bench_cluster 55441
"${PSQL[@]}" -c "CREATE DATABASE v12" -c "CREATE DATABASE v13" >/dev/null

# build DB VERSION N
build() {
    "${PSQL[@]}" -d "$1" >/dev/null <<SQL
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS backup_mgmt CASCADE;
CREATE EXTENSION backup_mgmt VERSION '$2';
INSERT INTO backup_management.remote_backup_configs (config_name, database_name, remote_type,
                                                     remote_endpoint, remote_path, is_active)
VALUES ('disk', 'postgres', 'filesystem', '/nowhere', 'pg', true);
INSERT INTO backup_management.wal_archive (system_identifier, file_name, timeline_id, segment_number,
                                           file_path, file_size, checksum, archived_at, expired_at)
SELECT (SELECT system_identifier FROM pg_control_system()), w.name, 1, n, '/nowhere/' || w.name, 16777216,
       repeat('a', 64),
       now() - make_interval(secs => ($3 * 1.1 - n) * 30),
       CASE WHEN n <= $3 / 10 THEN now() END
  FROM generate_series(1, $3 + $3 / 10) n,
       LATERAL (SELECT '00000001' || lpad(to_hex(n / 256), 8, '0') || lpad(to_hex(n % 256), 8, '0') AS name) w;
INSERT INTO backup_management.remote_wal_records (config_id, system_identifier, file_name, remote_key,
                                                  file_size, remote_checksum, archived_at)
SELECT 1, system_identifier, file_name, system_identifier || '/.wal/' || file_name, file_size, checksum, archived_at
  FROM backup_management.wal_archive
 WHERE expired_at IS NULL AND segment_number <= $3 + $3 / 10 - 10;
ANALYZE;
SQL
}

# checked CMD...: runs CMD (psql, reading stdin) and prints the number its NOTICE reports; on
# anything else (an error in the timed SQL) prints what it said and stops the benchmark.
checked() {
    local out ms
    out=$("$@" 2>&1) || { echo "$out" >&2; exit 1; }
    ms=$(sed -n 's/.*NOTICE:  //p' <<<"$out")
    [[ $ms =~ ^[0-9.]+$ ]] || { echo "$out" >&2; exit 1; }
    echo "$ms"
}

# read DB SQL -> milliseconds per call (mean of 20)
read_ms() {
    checked "${PSQL[@]}" -d "$1" -At <<SQL
DO \$\$ DECLARE t0 timestamptz; x text; BEGIN
  SET LOCAL search_path = pg_catalog, pg_temp;
  EXECUTE \$q\$ $2 \$q\$ INTO x;
  t0 := clock_timestamp();
  FOR i IN 1..20 LOOP
    EXECUTE \$q\$ $2 \$q\$ INTO x;
  END LOOP;
  RAISE NOTICE '%', round(extract(epoch FROM clock_timestamp() - t0) * 1e3 / 20, 1);
END \$\$;
SQL
}

# write DB SQL -> milliseconds for the whole of SQL (plpgsql statements), rolled back
write_ms() {
    checked "${PSQL[@]}" -d "$1" -At <<SQL
BEGIN;
DO \$\$ DECLARE t0 timestamptz; f record; BEGIN
  SET LOCAL search_path = pg_catalog, pg_temp;
  t0 := clock_timestamp();
  $2
  RAISE NOTICE '%', round(extract(epoch FROM clock_timestamp() - t0) * 1e3, 1);
END \$\$;
ROLLBACK;
SQL
}

ME="(SELECT system_identifier FROM pg_catalog.pg_control_system())"
# What the worker runs (src/offsite/wal_queue.rs): 0.12.0's comparisons and 0.13.0's queue reads.
PENDING_12="SELECT count(*) FROM (SELECT a.file_name FROM backup_management.wal_archive a
  WHERE a.expired_at IS NULL AND a.lost_at IS NULL AND a.system_identifier = $ME
    AND NOT EXISTS (SELECT FROM backup_management.remote_wal_records r WHERE r.config_id = 1
                     AND r.system_identifier = a.system_identifier AND r.file_name = a.file_name)
  ORDER BY a.archived_at, a.file_name LIMIT 128) x"
PENDING_13="SELECT count(*) FROM (SELECT a.file_name FROM backup_management.remote_wal_queue q
  JOIN backup_management.wal_archive a ON a.system_identifier = q.system_identifier AND a.file_name = q.file_name
  WHERE q.config_id = 1 AND q.action = 'copy' AND a.expired_at IS NULL AND a.lost_at IS NULL
    AND a.system_identifier = $ME
    AND NOT EXISTS (SELECT FROM backup_management.remote_wal_records r WHERE r.config_id = 1
                     AND r.system_identifier = a.system_identifier AND r.file_name = a.file_name)
  ORDER BY q.archived_at, q.file_name LIMIT 128) x"
EXPIRED_12="SELECT count(*) FROM (SELECT r.file_name FROM backup_management.remote_wal_records r
  WHERE r.config_id = 1 AND NOT EXISTS (SELECT FROM backup_management.wal_archive a
     WHERE a.system_identifier = r.system_identifier AND a.file_name = r.file_name AND a.expired_at IS NULL)
  ORDER BY r.archived_at, r.file_name LIMIT 128) x"
EXPIRED_13="SELECT count(*) FROM (SELECT r.file_name FROM backup_management.remote_wal_queue q
  JOIN backup_management.remote_wal_records r ON r.config_id = q.config_id
   AND r.system_identifier = q.system_identifier AND r.file_name = q.file_name
  WHERE q.config_id = 1 AND q.action = 'remove' AND NOT EXISTS (SELECT FROM backup_management.wal_archive a
     WHERE a.system_identifier = r.system_identifier AND a.file_name = r.file_name AND a.expired_at IS NULL)
  ORDER BY q.archived_at, q.file_name LIMIT 128) x"
STATUS="SELECT pending_segments::text || lag_seconds::text FROM backup_mgmt.offsite_wal_status WHERE config_id = 1"
INGEST="FOR i IN 1..100 LOOP
    INSERT INTO backup_management.wal_archive (system_identifier, file_name, timeline_id, segment_number,
        file_path, file_size, checksum, archived_at)
    VALUES ($ME, '00000002' || lpad(to_hex(i / 256), 8, '0') || lpad(to_hex(i % 256), 8, '0'), 2, i,
            '/nowhere/x' || i, 16777216, repeat('a', 64), now());
  END LOOP;"
RECORD="FOR f IN SELECT a.system_identifier, a.file_name, a.file_size, a.checksum, a.archived_at
    FROM backup_management.wal_archive a WHERE a.expired_at IS NULL
     AND NOT EXISTS (SELECT FROM backup_management.remote_wal_records r WHERE r.config_id = 1
                      AND r.system_identifier = a.system_identifier AND r.file_name = a.file_name)
   ORDER BY a.archived_at LIMIT 128 LOOP
    INSERT INTO backup_management.remote_wal_records (config_id, system_identifier, file_name, remote_key,
        file_size, remote_checksum, archived_at)
    VALUES (1, f.system_identifier, f.file_name, 'k/' || f.file_name, f.file_size, f.checksum, f.archived_at)
    ON CONFLICT DO NOTHING;
  END LOOP;"
EXPIRE="UPDATE backup_management.wal_archive SET expired_at = now()
   WHERE expired_at IS NULL AND segment_number IN (SELECT segment_number FROM backup_management.wal_archive
                                                    WHERE expired_at IS NULL ORDER BY segment_number LIMIT 1000);"

echo "PostgreSQL $(pg_major); milliseconds, $ROUNDS rounds alternating 0.12.0 and 0.13.0"
for n in "${SIZES[@]}"; do
    build v12 0.12.0 "$n"
    build v13 0.13.0 "$n"
    # Both must see the same work: 10 files to copy, none to remove, the same lag.
    for q in "$STATUS"; do
        a=$("${PSQL[@]}" -d v12 -At -c "$q"); b=$("${PSQL[@]}" -d v13 -At -c "$q")
        [ "$a" != "" ] && [ "${a:0:2}" = "${b:0:2}" ] || { echo "N=$n: the versions disagree: $a / $b" >&2; exit 1; }
    done
    declare -A r=()
    for round in $(seq 1 "$ROUNDS"); do
        for v in 12 13; do
            p=PENDING_$v e=EXPIRED_$v
            r[pending$v]+="$(read_ms "v$v" "${!p}") "
            r[status$v]+="$(read_ms "v$v" "$STATUS") "
            r[expired$v]+="$(read_ms "v$v" "${!e}") "
            r[ingest$v]+="$(write_ms "v$v" "$INGEST") "
            r[record$v]+="$(write_ms "v$v" "$RECORD") "
            r[expire$v]+="$(write_ms "v$v" "$EXPIRE") "
        done
        r[repair]+="$(read_ms v13 "SELECT backup_mgmt.remote_wal_queue_repair()") "
    done
    echo "N=$n archived files (10 waiting), per target and check:"
    for k in pending status expired; do
        echo "  $k: 0.12.0 ${r[${k}12]}| 0.13.0 ${r[${k}13]}"
    done
    echo "  the queue's repair (0.13.0, once a minute): ${r[repair]}"
    echo "  writers: 100 files ingested one by one: 0.12.0 ${r[ingest12]}| 0.13.0 ${r[ingest13]}"
    echo "           128 copies recorded one by one: 0.12.0 ${r[record12]}| 0.13.0 ${r[record13]}"
    echo "           1000 files expired: 0.12.0 ${r[expire12]}| 0.13.0 ${r[expire13]}"
    unset r
done
