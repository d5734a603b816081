#!/usr/bin/env bash
# Benchmark: what a backup's verification state costs to compute, 0.10.0's standing verdict
# (verification_verdict, inlined into verification_state_of) against 0.9.0's newest-verification
# rule, same cluster, same run.  The triggers call it once per statement that records a backup
# or a verification, so this is the cost the verdict adds to every recorded backup.
#
# 0.9.0's verification_state_of is read from the frozen sql/backup_mgmt--0.9.0.sql and created
# under another name beside the current one.  Each call is timed as verification_state_refresh
# plans it (plan_cache_mode = force_generic_plan, enable_seqscan = off), one backup per call,
# 2,000 calls a round, rounds alternating old/new: backups with no verification yet (what a
# newly recorded backup costs) and backups with five verifications each, a third failing.
#
# Usage (root, Debian 12): bash bench/verdict.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}

bash scripts/setup.sh
source scripts/lib.sh

catalog_bench_cluster 55437

# 0.9.0's function, renamed.
awk '/^CREATE FUNCTION backup_mgmt.verification_state_of\(ids bigint\[\]\)/ { on = 1 }
     on { print } on && /^\$bm\$;/ { exit }' sql/backup_mgmt--0.9.0.sql |
    sed 's/backup_mgmt.verification_state_of(/public.state_of_0_9_0(/' >"$DIR/old.sql"
grep -q state_of_0_9_0 "$DIR/old.sql" || { echo "0.9.0's verification_state_of not found" >&2; exit 1; }
chown postgres "$DIR/old.sql"

"${PSQL[@]}" <<SQL
CREATE EXTENSION backup_mgmt;
\i $DIR/old.sql
INSERT INTO backup_management.backup_records (database_name, backup_type, backup_method, backup_file_path,
                                              status, end_time, duration, checksum, origin)
SELECT CASE WHEN n <= 2000 THEN 'verified' ELSE 'new' END, 'full', 'pg_dump', '/nowhere/' || n,
       'completed', now(), '0', repeat('e', 64), 'worker'
  FROM generate_series(1, 4000) n;
INSERT INTO backup_management.backup_verifications (backup_id, verification_type, verification_status)
SELECT r.backup_id, 'checksum', CASE WHEN r.backup_id % 3 = 0 THEN 'failed' ELSE 'passed' END
  FROM backup_management.backup_records r, generate_series(1, 5)
 WHERE r.database_name = 'verified';
ANALYZE;
SQL

# round FUNCTION DATABASE_NAME -> microseconds per call
round() {
    "${PSQL[@]}" -At <<SQL 2>&1 | sed -n 's/.*NOTICE:  //p'
SET plan_cache_mode = force_generic_plan;
SET enable_seqscan = off;
DO \$\$ DECLARE t0 timestamptz; x bigint; id bigint; BEGIN
  -- One untimed pass plans the statement.
  FOR id IN SELECT backup_id FROM backup_management.backup_records WHERE database_name = '$2' LIMIT 10 LOOP
    SELECT sum(hashtext(t::text)) INTO x FROM $1(ARRAY[id]) t;
  END LOOP;
  t0 := clock_timestamp();
  FOR id IN SELECT backup_id FROM backup_management.backup_records WHERE database_name = '$2' LOOP
    -- The whole row, so that the planner cannot drop a join whose columns go unread.
    SELECT sum(hashtext(t::text)) INTO x FROM $1(ARRAY[id]) t;
  END LOOP;
  RAISE NOTICE '%', round(extract(epoch FROM clock_timestamp() - t0) * 1e6 / 2000, 1);
END \$\$;
SQL
}

echo "PostgreSQL $(pg_major); microseconds per call (one backup), $ROUNDS rounds alternating"
for kind in new verified; do
    old=() new=()
    for _ in $(seq 1 "$ROUNDS"); do
        old+=("$(round public.state_of_0_9_0 "$kind")")
        new+=("$(round backup_mgmt.verification_state_of "$kind")")
    done
    echo "$kind backups: 0.9.0 ${old[*]} | 0.10.0 ${new[*]}"
done
