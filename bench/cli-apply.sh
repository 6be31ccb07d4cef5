#!/usr/bin/env bash
# Times `sundial apply` of 100,000 jobs from one YAML file against a fresh
# release server (docs/benchmarks.md, scenario 7):
#   1. create all of them, 2. apply the same file again (all unchanged),
#   3. one schedule changed in every job (all updated),
#   4. the same plus one invalid document at the end (refused, nothing written).
#
#   cargo build --release -p sundial-server -p sundial-cli
#   bench/cli-apply.sh [JOBS]            # default 100000
#
# Each step prints wall time and the CLI's own user+system CPU. The server runs
# on a free loopback port over a temporary data directory, stopped by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${1:-100000}
bin=./target/release
for b in sundial-server sundial; do
    [[ -x "$bin/$b" ]] || { echo "build $bin/$b first (cargo build --release -p sundial-server -p sundial-cli)" >&2; exit 2; }
done
dir=$(mktemp -d)
server_pid=""
cleanup() {
    [[ -n "$server_pid" ]] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT

gen() { # gen FILE HOUR [BAD]
    awk -v n="$jobs" -v hour="$2" -v bad="${3:-}" 'BEGIN {
        for (i = 0; i < n; i++) {
            # 1,440 distinct schedules: minute i % 60 of hour (i / 60) % 24 (shifted per step).
            printf "---\nid: job-%06d\nschedule: \"0 %d %d * * *\"\ntimezone: Europe/Berlin\n", i, i % 60, (int(i / 60) + hour) % 24
            printf "executor: {type: exec, argv: [/usr/local/bin/report, --shard, \"%d\"]}\n", i
            printf "labels: {team: team-%d, bench: cli}\nretries: {max: 2}\n", i % 10
            printf "description: bench job %d\n", i
        }
        if (bad != "") printf "---\nid: broken\nschedule: \"61 * * * *\"\nexecutor: {type: exec, argv: [x]}\n"
    }' >"$1"
}
gen "$dir/jobs.yaml" 3
gen "$dir/jobs-updated.yaml" 4
gen "$dir/jobs-bad.yaml" 5 bad
echo "jobs: $jobs, file: $(du -h "$dir/jobs.yaml" | cut -f1), machine: $(nproc) cores, load: $(cut -d' ' -f1-3 /proc/loadavg)"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export SUNDIAL_TIMING=1 SUNDIAL_URL="http://127.0.0.1:$port" SUNDIAL_KEY="bench-admin-key-0123456789" SUNDIAL_CLI_CONFIG="$dir/cli.toml"
SUNDIAL_ADMIN_KEY="$SUNDIAL_KEY" "$bin/sundial-server" serve --listen "127.0.0.1:$port" \
    --data-dir "$dir/data" 2>"$dir/server.log" &
server_pid=$!
for _ in $(seq 1 200); do
    curl -fsS "$SUNDIAL_URL/readyz" >/dev/null 2>&1 && break
    sleep 0.05
done

step() { # step NAME EXPECTED_EXIT FILE
    local start end rc
    start=$(date +%s.%N)
    set +e
    /usr/bin/env time -f "%U %S" -o "$dir/cpu" "$bin/sundial" apply -f "$3" >"$dir/out" 2>"$dir/err"
    rc=$?
    set -e
    end=$(date +%s.%N)
    read -r user sys < <(tail -n1 "$dir/cpu")
    printf '%-10s exit %d  wall %6.2f s  cli cpu %5.2f s  %s\n' "$1" "$rc" \
        "$(echo "$end - $start" | bc)" "$(echo "$user + $sys" | bc)" \
        "$( (grep '^error:' "$dir/err" || tail -n1 "$dir/out") | head -n1 | cut -c1-110)"
    echo "           phases: $(grep '^timing:' "$dir/err" | sed 's/^timing: //' | tr '\n' ' ')"
    [[ $rc -eq $2 ]] || { echo "unexpected exit $rc (wanted $2)" >&2; cat "$dir/err" >&2; exit 1; }
}
step create 0 "$dir/jobs.yaml"
step unchanged 0 "$dir/jobs.yaml"
step update 0 "$dir/jobs-updated.yaml"
step invalid 1 "$dir/jobs-bad.yaml"
stored=$(SUNDIAL_TIMING='' "$bin/sundial" jobs ls -l bench=cli -o json | grep -c '"id"')
changed=$(SUNDIAL_TIMING='' "$bin/sundial" diff -f "$dir/jobs-updated.yaml" | tail -n1)
echo "stored jobs after the refused apply: $stored; diff against the step-3 file: $changed"
