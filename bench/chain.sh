#!/usr/bin/env bash
# Benchmark: what walking backup chains through 0.11.0's SQL functions (backup_chain,
# chain_problem, chain_unverified) costs against 0.10.0's walk, which the extension inlined into
# its queries as a correlated recursive subquery (the chain_walk! macro), same cluster, same run.
#
# The query is plan_recovery's candidate list, the heaviest user: every completed physical
# backup of the cluster, each with what makes its chain unusable and the first member of its
# chain that is not verified.  Catalog: 200 native chains of a full and 9 incrementals (2,000
# backups), every one with a passed checksum verification, one full in 20 with a failed
# restore test.  Rounds alternate old/new; each times the query 20 times.
#
# Usage (root, Debian 12): bash bench/chain.sh [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}

bash scripts/setup.sh
source scripts/lib.sh

catalog_bench_cluster 55438

"${PSQL[@]}" <<'SQL'
CREATE EXTENSION backup_mgmt;
INSERT INTO backup_management.backup_records (database_name, backup_type, backup_method, backup_file_path,
                                              status, start_time, end_time, duration, checksum, origin)
SELECT 'postgres', CASE WHEN n % 10 = 1 THEN 'full' ELSE 'incremental' END, 'native_physical',
       '/nowhere/' || n, 'completed', now(), now(), '0', repeat('e', 64), 'worker'
  FROM generate_series(1, 2000) n;
UPDATE backup_management.backup_records SET parent_backup_id = backup_id - 1 WHERE backup_type = 'incremental';
INSERT INTO backup_management.backup_verifications (backup_id, verification_type, verification_status)
SELECT backup_id, 'checksum', 'passed' FROM backup_management.backup_records;
INSERT INTO backup_management.backup_verifications (backup_id, verification_type, verification_status,
                                                    verification_result)
SELECT backup_id, 'restore_test', 'failed', '{"stage": "data_verification"}'
  FROM backup_management.backup_records WHERE backup_id % 200 = 1;
ANALYZE;
SQL

# 0.10.0's spelling (src/catalog/queries.rs at 0.10.0: chain_walk!, chain_problem!,
# chain_unverified!), expanded.
OLD_WALK="(WITH RECURSIVE up(id, depth) AS ( %s UNION ALL
    SELECT p.parent_backup_id, up.depth + 1 FROM backup_management.backup_records p JOIN up ON p.backup_id = up.id
     WHERE p.parent_backup_id IS NOT NULL AND up.depth < 10000) SELECT id, depth FROM up) up"
# shellcheck disable=SC2059
OLD_PROBLEM="(SELECT CASE WHEN a.backup_id IS NULL THEN format('its ancestor %%s is gone from the catalog', up.id)
       WHEN a.status <> 'completed' OR a.expired_at IS NOT NULL THEN format('its ancestor %%s is %%s', up.id, a.status)
       ELSE format('its ancestor %%s failed verification', up.id) END
  FROM $(printf "$OLD_WALK" "SELECT r.parent_backup_id, 1 WHERE r.parent_backup_id IS NOT NULL")
  LEFT JOIN backup_management.backup_records a ON a.backup_id = up.id
  LEFT JOIN backup_management.verification_state s ON s.backup_id = up.id
 WHERE a.backup_id IS NULL OR a.status <> 'completed' OR a.expired_at IS NOT NULL OR s.last_status = 'failed'
 ORDER BY up.depth LIMIT 1)"
# shellcheck disable=SC2059
OLD_UNVERIFIED="(SELECT format('backup %%s has no passed verification', up.id)
  FROM $(printf "$OLD_WALK" "SELECT r.backup_id, 0")
  LEFT JOIN backup_management.verification_state s ON s.backup_id = up.id
 WHERE s.last_status IS DISTINCT FROM 'passed' ORDER BY up.depth LIMIT 1)"
OLD_PROBLEM=${OLD_PROBLEM//%%/%}
OLD_UNVERIFIED=${OLD_UNVERIFIED//%%/%}

# query PROBLEM UNVERIFIED: plan_recovery's candidates with these two expressions.
query() {
    echo "SELECT sum(hashtext(coalesce(($1), '') || coalesce(($2), '')))
            FROM backup_management.backup_records r
           WHERE r.expired_at IS NULL AND r.status = 'completed' AND r.backup_method = 'native_physical'"
}

# round PROBLEM UNVERIFIED -> milliseconds per query
round() {
    "${PSQL[@]}" -At <<SQL 2>&1 | sed -n 's/.*NOTICE:  //p'
DO \$\$ DECLARE t0 timestamptz; x bigint; BEGIN
  EXECUTE \$q\$ $(query "$1" "$2") \$q\$ INTO x;
  t0 := clock_timestamp();
  FOR i IN 1..20 LOOP
    EXECUTE \$q\$ $(query "$1" "$2") \$q\$ INTO x;
  END LOOP;
  RAISE NOTICE '%', round(extract(epoch FROM clock_timestamp() - t0) * 1e3 / 20, 1);
END \$\$;
SQL
}

# Both spellings must find the same problems before their times mean anything.
same=$("${PSQL[@]}" -At -c "SELECT count(*) FROM backup_management.backup_records r
    WHERE $OLD_PROBLEM IS DISTINCT FROM backup_mgmt.chain_problem(r.backup_id)
       OR $OLD_UNVERIFIED IS DISTINCT FROM backup_mgmt.chain_unverified(r.backup_id)")
[ "$same" = 0 ] || { echo "0.10.0's walk and 0.11.0's functions disagree on $same backups" >&2; exit 1; }

echo "PostgreSQL $(pg_major); milliseconds per candidate query (2,000 backups), $ROUNDS rounds alternating"
old=() new=()
for _ in $(seq 1 "$ROUNDS"); do
    old+=("$(round "$OLD_PROBLEM" "$OLD_UNVERIFIED")")
    new+=("$(round "backup_mgmt.chain_problem(r.backup_id)" "backup_mgmt.chain_unverified(r.backup_id)")")
done
echo "0.10.0 (inline walk) ${old[*]} | 0.11.0 (functions) ${new[*]}"
