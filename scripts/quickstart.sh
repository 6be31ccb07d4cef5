#!/usr/bin/env bash
# Single-node Sundial with no config to write: builds the server, the
# daemon and the `sundial` CLI, starts the server on 127.0.0.1:8080 (SQLite under ./sundial-data),
# joins one local daemon, applies the sample job examples/jobs/hello.yaml with
# `sundial apply` and prints CLI commands to look around.
# Ctrl-C stops both cleanly; running it again keeps the data and the key.
#
#   scripts/quickstart.sh
#
# Environment: SUNDIAL_LISTEN (default 127.0.0.1:8080), SUNDIAL_DATA_DIR (default
# ./sundial-data), SUNDIAL_PROFILE (release or debug; default release).
set -euo pipefail
cd "$(dirname "$0")/.."

listen=${SUNDIAL_LISTEN:-127.0.0.1:8080}
data=${SUNDIAL_DATA_DIR:-./sundial-data}
base="http://$listen"

profile=${SUNDIAL_PROFILE:-release}
case "$profile" in
    release) build=(--release) ;;
    debug) build=() ;;
    *) echo "SUNDIAL_PROFILE must be release or debug" >&2; exit 2 ;;
esac
echo "==> building sundial-server, sundial-daemon and sundial ($profile)"
cargo build "${build[@]}" --quiet -p sundial-server -p sundial-daemon -p sundial-cli
bin=./target/$profile

mkdir -p "$data"
chmod 700 "$data"
keyfile="$data/admin.key"
if [[ ! -s "$keyfile" ]]; then
    # A random admin key, kept beside (not inside) the database; only its hash is stored.
    (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$keyfile")
fi
# The CLI's connection for this script (a context is not needed).
export SUNDIAL_URL="$base" SUNDIAL_KEY_FILE="$keyfile"
sundial() { "$bin/sundial" "$@"; }

server_pid=""
daemon_pid=""
stop() {
    trap - EXIT INT TERM
    [[ -n "$daemon_pid" ]] && kill -TERM "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
    [[ -n "$server_pid" ]] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    return 0
}
trap stop EXIT INT TERM

# Whatever answers on $listen once the server starts must be this server.
if curl -fsS "$base/readyz" >/dev/null 2>&1; then
    echo "a server already answers at $base (another quickstart?): stop it, or set SUNDIAL_LISTEN" >&2
    exit 1
fi
"$bin/sundial-server" serve --listen "$listen" --data-dir "$data" --admin-key-file "$keyfile" \
    2>>"$data/server.log" &
server_pid=$!
server_exited() {
    echo "the server exited ($data/server.log):" >&2
    tail -n 3 "$data/server.log" >&2
    exit 1
}
for _ in $(seq 1 100); do
    if ! kill -0 "$server_pid" 2>/dev/null; then server_exited; fi
    if curl -fsS "$base/readyz" >/dev/null 2>&1; then break; fi
    sleep 0.1
done
curl -fsS "$base/readyz" >/dev/null

# One local daemon. It joins once with a single-use token and keeps its
# credential in $data/daemon (mode 0600); later starts reuse it.
if [[ ! -s "$data/daemon/credential.json" ]]; then
    token=$(sundial tokens create --name quickstart --ttl 10m --max-uses 1 -o json |
        sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
    join=(--join-token "$token")
else
    join=()
fi
"$bin/sundial-daemon" --server "$base" "${join[@]}" --state-dir "$data/daemon" \
    --node-id "$(hostname)" --labels role=local 2>>"$data/daemon.log" &
daemon_pid=$!

sundial apply -f examples/jobs/hello.yaml >/dev/null

cat <<INFO

Sundial is running at $base
  database:   $data/sundial.db
  admin key:  $data/admin.key
  logs:       $data/server.log, $data/daemon.log

The sample job "hello" (examples/jobs/hello.yaml) runs every 10 seconds on
the local daemon. Look around with the CLI ($bin/sundial):

  export SUNDIAL_URL=$base SUNDIAL_KEY_FILE=$keyfile
  $bin/sundial status
  $bin/sundial jobs ls
  $bin/sundial runs ls --job hello
  $bin/sundial jobs trigger hello --wait
  $bin/sundial apply -f examples/jobs/ --dry-run
  $bin/sundial preview "0 30 2 * * *" --tz Europe/Berlin -n 5

Press Ctrl-C to stop.
INFO
wait "$server_pid"
