#!/usr/bin/env bash
# Single-node Sundial with no config to write: builds the server, starts it on
# 127.0.0.1:8080 with its SQLite database under ./sundial-data, registers a
# sample job and prints where to look. Ctrl-C stops it cleanly.
#
#   scripts/quickstart.sh
#
# Environment: SUNDIAL_LISTEN (default 127.0.0.1:8080), SUNDIAL_DATA_DIR (default ./sundial-data).
set -euo pipefail
cd "$(dirname "$0")/.."

listen=${SUNDIAL_LISTEN:-127.0.0.1:8080}
data=${SUNDIAL_DATA_DIR:-./sundial-data}
base="http://$listen"

echo "==> building sundial-server (release)"
cargo build --release --quiet -p sundial-server

mkdir -p "$data"
chmod 700 "$data"
keyfile="$data/admin.key"
if [[ ! -s "$keyfile" ]]; then
    # A random admin key, kept beside (not inside) the database; only its hash is stored.
    (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$keyfile")
fi
key=$(cat "$keyfile")

./target/release/sundial-server serve --listen "$listen" --data-dir "$data" --admin-key-file "$keyfile" &
server=$!
stop() {
    trap - EXIT INT TERM
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
}
trap stop EXIT INT TERM

for _ in $(seq 1 100); do
    if curl -fsS "$base/readyz" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$server" 2>/dev/null; then echo "server exited; see the log above" >&2; exit 1; fi
    sleep 0.1
done
curl -fsS "$base/readyz" >/dev/null

curl -fsS -X PUT "$base/v1/jobs/hello" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
    -d '{"schedule": "@every 10s", "executor": {"type": "shell", "script": "echo hello from sundial"},
         "description": "quickstart sample job"}' >/dev/null

cat <<INFO

Sundial is running at $base (database: $data/sundial.db)
Admin key: $data/admin.key

  export SUNDIAL_KEY=\$(cat $data/admin.key)
  curl -s $base/v1/jobs -H "Authorization: Bearer \$SUNDIAL_KEY"            # jobs
  curl -s '$base/v1/runs?job=hello' -H "Authorization: Bearer \$SUNDIAL_KEY" # runs of the sample job
  curl -s $base/metrics                                                    # Prometheus metrics

Press Ctrl-C to stop.
INFO
wait "$server"
