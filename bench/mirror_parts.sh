#!/usr/bin/env bash
# Benchmark: the off-site mirror with every WAL file in one document (format 1, before 0.14.0)
# against its WAL listed in parts (format 2), as a target holds them for N archived files.
#
# What it measures, side by side on the same N files, rounds alternating:
# - what a change puts on the target: format 1 rewrites the whole document; format 2 the main
#   document and the part that changed (one full part of 256 files);
# - `backup-mgmt wal-fetch` of one segment (the newest: what recovery asks for last), as
#   restore_command without a spool runs it for every segment: 10 calls per round, each a new
#   process reading the mirror from the filesystem target (page cache warm) and fetching a
#   16 MB segment checked against its sha256.
# The targets are written here in the documented formats (docs/offsite.md): N segments of
# timeline 1, each with a key, size, sha256 and archive time; one real segment object.
#
# Usage (root, Debian 12): bash bench/mirror_parts.sh [rounds] [N ...]   default: 3 10000 100000
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
shift || true
SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(10000 100000)

export PATH=$HOME/.cargo/bin:$PATH
cargo build --release -q -p backup_mgmt_cli
PROGRAM=$PWD/target/release/backup-mgmt
WORK=$(mktemp -d /tmp/mirror-parts.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

for N in "${SIZES[@]}"; do
    python3 - "$WORK/$N" "$N" <<'PY'
import hashlib, json, os, sys
root, n = sys.argv[1], int(sys.argv[2])
sysid = 7312345678901234567
seg = os.urandom(16 << 20)
files = []
for i in range(n):
    name = "00000001%08X%08X" % (1 + i // 256, i % 256)
    key = "%d/.wal/%s" % (sysid, name)
    sha = hashlib.sha256(name.encode()).hexdigest()
    size = 4 << 20
    if i == n - 1:
        sha, size = hashlib.sha256(seg).hexdigest(), len(seg)
    files.append({"name": name, "key": key, "size": size, "sha256": sha,
                  "archived_at": "2026-12-06T10:00:00+00:00"})
last = files[-1]
doc = {"written_at": "2026-12-06T10:00:00+00:00", "system_identifier": sysid,
       "pg_version": 150000, "wal_segment_size": 16 << 20, "target": "disk",
       "backups": [], "wal_gaps": []}
def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
for fmt in ("f1", "f2"):
    write(os.path.join(root, fmt, last["key"]), seg)
one = dict(doc, format="backup_mgmt offsite catalog 1", wal_files=files)
write(os.path.join(root, "f1", "%d/.catalog/catalog_mirror.json" % sysid), json.dumps(one).encode())
parts, refs = {}, []
for f in files:
    parts.setdefault(f["name"][:16], []).append(f)
part_bytes = []
for part, fs in sorted(parts.items()):
    text = json.dumps({"format": "backup_mgmt offsite wal part 1", "system_identifier": sysid,
                       "part": part, "wal_files": fs}).encode()
    sha = hashlib.sha256(text).hexdigest()
    key = "%d/.catalog/wal/1/%s.%s.json" % (sysid, part, sha[:16])
    write(os.path.join(root, "f2", key), text)
    part_bytes.append(len(text))
    refs.append({"part": part, "key": key, "sha256": sha, "files": len(fs), "first": fs[0]["name"],
                 "last": fs[-1]["name"], "last_archived_at": fs[-1]["archived_at"]})
two = dict(doc, format="backup_mgmt offsite catalog 2", wal_parts=refs)
main = json.dumps(two).encode()
write(os.path.join(root, "f2", "%d/.catalog/catalog_mirror.json" % sysid), main)
print("N=%d: format 1 document %.1f kB; format 2 main document %.1f kB + a full part %.1f kB "
      "(%d parts)" % (n, len(json.dumps(one)) / 1024, len(main) / 1024, max(part_bytes) / 1024,
                      len(refs)))
print("      a change uploads: format 1 %.1f kB, format 2 %.1f kB"
      % (len(json.dumps(one)) / 1024, (len(main) + max(part_bytes)) / 1024))
with open(os.path.join(root, "last"), "w") as f:
    f.write(last["name"])
PY
done

ms_per_fetch() { # dir name
    local start end
    start=$(date +%s%N)
    for _ in $(seq 1 10); do
        "$PROGRAM" --dir "$1" wal-fetch "$2" "$WORK/out" >/dev/null
    done
    end=$(date +%s%N)
    awk -v ns=$((end - start)) 'BEGIN { printf "%.1f", ns / 1e7 }'
}

echo
echo "wal-fetch of one segment, ms per call (mean of 10 calls)"
printf '%-8s %-6s %12s %12s\n' N round "format 1" "format 2"
for N in "${SIZES[@]}"; do
    last=$(cat "$WORK/$N/last")
    for f in f1 f2; do "$PROGRAM" --dir "$WORK/$N/$f" wal-fetch "$last" "$WORK/out"; done
    cmp -s "$WORK/out" "$WORK/$N/f2/7312345678901234567/.wal/$last" || { echo "fetched bytes differ" >&2; exit 1; }
    for r in $(seq 1 "$ROUNDS"); do
        if [ $((r % 2)) = 1 ]; then
            a=$(ms_per_fetch "$WORK/$N/f1" "$last"); b=$(ms_per_fetch "$WORK/$N/f2" "$last")
        else
            b=$(ms_per_fetch "$WORK/$N/f2" "$last"); a=$(ms_per_fetch "$WORK/$N/f1" "$last")
        fi
        printf '%-8s %-6s %12s %12s\n' "$N" "$r" "$a" "$b"
    done
done
