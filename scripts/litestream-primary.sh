#!/usr/bin/env bash
# Runs Litestream only while this node is the LiteFS primary (a sidecar
# container, or a unit beside LiteFS). LiteFS's contract: <litefs-dir>/.primary
# exists only on a replica (it names the primary). So:
#   - no .primary and the database exists  → primary: run Litestream
#   - .primary present                     → replica: stop Litestream (SIGTERM,
#                                             it syncs what it has and exits)
# A Litestream that dies while this node is primary is restarted after a pause.
# SIGTERM/SIGINT stop Litestream and then this script.
#
#   scripts/litestream-primary.sh [--litefs-dir /litefs] [--db /litefs/sundial.db]
#       [--interval 1] [--config /etc/sundial/litestream.yml] [--litestream BIN]
set -euo pipefail

litefs_dir="/litefs"
db=""
interval=1
config="/etc/sundial/litestream.yml"
litestream="litestream"

die() {
    printf 'litestream-primary: %s\n' "$1" >&2
    exit 2
}
while [[ $# -gt 0 ]]; do
    case "$1" in
    --litefs-dir) [[ $# -ge 2 ]] || die "$1 needs a value"; litefs_dir="$2"; shift 2 ;;
    --db) [[ $# -ge 2 ]] || die "$1 needs a value"; db="$2"; shift 2 ;;
    --interval) [[ $# -ge 2 ]] || die "$1 needs a value"; interval="$2"; shift 2 ;;
    --config) [[ $# -ge 2 ]] || die "$1 needs a value"; config="$2"; shift 2 ;;
    --litestream) [[ $# -ge 2 ]] || die "$1 needs a value"; litestream="$2"; shift 2 ;;
    -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1" ;;
    esac
done
[[ -n "$db" ]] || db="$litefs_dir/sundial.db"
[[ "$interval" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--interval must be seconds (got '$interval')"
[[ -f "$config" ]] || die "--config $config: no such file"
command -v "$litestream" >/dev/null 2>&1 || die "Litestream not found ('$litestream')"

log() { printf 'litestream-primary: %s\n' "$*" >&2; }

child=""
stop_child() {
    if [[ -n "$child" ]] && kill -0 "$child" 2>/dev/null; then
        log "stopping Litestream (pid $child)"
        kill -TERM "$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    child=""
}
trap 'stop_child; exit 0' TERM INT

is_primary() { [[ ! -e "$litefs_dir/.primary" && -f "$db" ]]; }

while true; do
    if is_primary; then
        if [[ -z "$child" ]] || ! kill -0 "$child" 2>/dev/null; then
            if [[ -n "$child" ]]; then
                wait "$child" 2>/dev/null && rc=0 || rc=$?
                log "Litestream exited ($rc) while primary; restarting"
                sleep 2 &
                wait $! || true
            fi
            # Litestream's S3 client fails when AWS_CA_BUNDLE is set.
            env -u AWS_CA_BUNDLE "$litestream" replicate -config "$config" &
            child=$!
            log "primary: started Litestream (pid $child)"
        fi
    elif [[ -n "$child" ]]; then
        log "replica (or no database yet): Litestream must not run here"
        stop_child
    fi
    # `sleep & wait` so a signal interrupts the pause at once.
    sleep "$interval" &
    wait $! || true
done
