# Shared shell helpers for scripts/ and bench/ (sourced after scripts/setup.sh, not run).

# cargo from rustup, when this shell's PATH lacks it.
if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

export PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
BIN=$("$PG_CONFIG" --bindir)

# Runs a command as the postgres OS user with a clean environment (PostgreSQL refuses to run as
# root, and a caller's PGHOST or PGDATABASE must not leak into a throwaway cluster).
as_pg() { runuser -u postgres -- env -i PATH=/usr/bin:/bin LC_ALL=C "$@"; }

# start_throwaway_cluster DIR PORT [postgresql.conf lines...]
# initdb DIR/data as postgres (trust auth, socket in DIR, no TCP), append the settings, start it
# with its log in DIR/server.log.  DIR must exist and be owned by postgres.  INITDB_OPTS (in the
# environment) adds initdb options, e.g. --data-checksums.
start_throwaway_cluster() {
    local dir=$1 port=$2
    shift 2
    # shellcheck disable=SC2086 # INITDB_OPTS is a list of options
    as_pg "$BIN/initdb" -D "$dir/data" --auth=trust -U postgres -E UTF8 --locale=C ${INITDB_OPTS:-} >/dev/null
    {
        echo "listen_addresses = ''"
        echo "port = $port"
        echo "unix_socket_directories = '$dir'"
        printf '%s\n' "$@"
    } >>"$dir/data/postgresql.conf"
    as_pg "$BIN/pg_ctl" -w -D "$dir/data" -l "$dir/server.log" start >/dev/null
}

# bench_dir: a fresh temp directory owned by postgres in $DIR, with the throwaway cluster inside
# it stopped and everything removed when the script exits.
bench_dir() {
    DIR=$(mktemp -d /tmp/bm-bench-XXXXXX)
    chown postgres:postgres "$DIR"
    trap 'as_pg "$BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
}

# catalog_bench_cluster PORT: for a benchmark of catalog queries: the release build and every
# frozen version's script installed, a throwaway cluster on PORT in a fresh bench directory;
# sets PSQL (an array: psql as postgres there, stopping at the first error).
catalog_bench_cluster() {
    install_release
    install -m 0644 sql/backup_mgmt--0.*.0.sql "$("$PG_CONFIG" --sharedir)/extension/"
    bench_dir
    start_throwaway_cluster "$DIR" "$1"
    PSQL=("$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$1" -U postgres -d postgres)
}

# start_s3rver PORT [BUCKET...]: s3rver (the end-to-end tests' S3-compatible server, installed by
# scripts/setup.sh) on 127.0.0.1:PORT storing into $DIR/s3 (after bench_dir), with the buckets
# named (a bucket is a directory to s3rver; backup_mgmt leaves creating buckets to the
# provider's tools), stopped with the throwaway cluster when the script exits.
start_s3rver() {
    mkdir -p "$DIR/s3"
    for bucket in "${@:2}"; do mkdir -p "$DIR/s3/$bucket"; done
    chown -R postgres:postgres "$DIR/s3"
    "$(pwd)/target/test-tools/node_modules/.bin/s3rver" -a 127.0.0.1 -p "$1" --silent -d "$DIR/s3" &
    S3PID=$!
    trap 'kill $S3PID 2>/dev/null || true; as_pg "$BIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$DIR"' EXIT
}

# comparison_tool NAME: installs the Debian package NAME (whose program has the same name) that
# a benchmark compares against, when it is missing.
comparison_tool() {
    if ! command -v "$1" >/dev/null; then
        echo "==> installing $1 (Debian) for the comparison"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$1" >/dev/null
    fi
}

# build_bench_upload NAME TREE [cargo flags...]: builds bench/upload (this tree's harness)
# against TREE's core crate into $DIR/upload-NAME/upload, so that two core crates run the same
# harness in one benchmark run.
build_bench_upload() {
    local name=$1 tree=$2
    shift 2
    mkdir -p "$DIR/upload-$name"
    cp -r bench/upload/src bench/upload/Cargo.toml "$DIR/upload-$name/"
    cp "$tree/Cargo.lock" "$DIR/upload-$name/"
    sed -i "s#path = \"../../core\"#path = \"$tree/core\"#" "$DIR/upload-$name/Cargo.toml"
    CARGO_TARGET_DIR="$(pwd)/target/bench-upload" cargo build -q --release "$@" \
        --manifest-path "$DIR/upload-$name/Cargo.toml"
    cp target/bench-upload/release/backup_mgmt_bench_upload "$DIR/upload-$name/upload"
}

# pg_major: the major version of the PostgreSQL that PG_CONFIG names.
pg_major() { "$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/'; }

# install_release: builds backup_mgmt in release mode and installs it into the PostgreSQL that
# PG_CONFIG names (its pgrx feature chosen by its major version; 15 is the default feature).
install_release() {
    echo "==> building and installing backup_mgmt (release, PostgreSQL $(pg_major))"
    local features=()
    if [ "$(pg_major)" != 15 ]; then
        features=(--no-default-features --features "pg$(pg_major)")
    fi
    cargo pgrx install --release "${features[@]}" --pg-config "$PG_CONFIG" >/dev/null
}

# wait_sql SQL: waits (up to 15 minutes) until SQL, run with "${PSQL[@]}" (set by the
# benchmark), returns t.
wait_sql() {
    local i
    for i in $(seq 1 1800); do
        [ "$("${PSQL[@]}" -c "$1")" = t ] && return 0
        sleep 0.5
    done
    echo "timed out waiting for: $1" >&2
    exit 1
}
