#!/usr/bin/env bash
# Restores the Sundial database from its Litestream replica into a new file,
# checks it (integrity, schema version) and prints what it holds. The runbook
# around it is docs/dr.md.
#
#   scripts/restore.sh --output /var/lib/sundial/sundial.db
#   scripts/restore.sh --output ./restored/sundial.db --timestamp 2026-11-24T10:15:00Z
#   scripts/restore.sh --output ./restored/sundial.db --replica-url file:///backups/sundial
#
# Run with --help for every option. Exit status: 0 restored and checked;
# 1 restore or check failed (nothing replaced); 2 bad usage or refused.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/restore.sh --output FILE [options]

Restores the Sundial database from Litestream into FILE (written to a
temporary file beside it first, then checked, then moved into place).

Where to restore from (one of):
  --config FILE       Litestream config naming the database and its replica
                      [default: $LITESTREAM_CONFIG, else /etc/sundial/litestream.yml,
                      else ./litestream.yml]
  --db PATH           the database path as named in that config
                      [default: $SUNDIAL_DB]
  --replica-url URL   restore straight from a replica URL instead
                      (s3://BUCKET/PATH, file:///DIR, gs://…, abs://…)

What to restore:
  --output FILE       where the restored database goes (required). For a server
                      with --data-dir DIR this is DIR/sundial.db
  --timestamp T       point in time, RFC 3339 (e.g. 2026-11-24T10:15:00Z):
                      the last state replicated at or before T [default: latest]
  --force             replace FILE if it exists (the old file and its -wal/-shm
                      are kept beside it as FILE.replaced-<time>). Refused while
                      a process has FILE open: stop the server first

Tools:
  --litestream BIN    Litestream 0.5.x binary [default: litestream on PATH]
  --server BIN        sundial-server binary, for the check [default: $SUNDIAL_SERVER_BIN,
                      else sundial-server on PATH]
  -h, --help          this text
EOF
}

die() {
    printf 'restore: %s\n' "$1" >&2
    exit "${2:-1}"
}
usage_error() {
    printf 'restore: %s\n(see scripts/restore.sh --help)\n' "$1" >&2
    exit 2
}

config="${LITESTREAM_CONFIG:-}"
db="${SUNDIAL_DB:-}"
replica_url=""
output=""
timestamp=""
force=0
config_given=0
litestream="litestream"
server="${SUNDIAL_SERVER_BIN:-sundial-server}"

need_value() {
    [[ $# -ge 2 && -n "$2" ]] || usage_error "$1 needs a value"
}
while [[ $# -gt 0 ]]; do
    case "$1" in
    --config) need_value "$@"; config="$2"; config_given=1; shift 2 ;;
    --db) need_value "$@"; db="$2"; shift 2 ;;
    --replica-url) need_value "$@"; replica_url="$2"; shift 2 ;;
    --output | -o) need_value "$@"; output="$2"; shift 2 ;;
    --timestamp) need_value "$@"; timestamp="$2"; shift 2 ;;
    --force) force=1; shift ;;
    --litestream) need_value "$@"; litestream="$2"; shift 2 ;;
    --server) need_value "$@"; server="$2"; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage_error "unknown argument: $1" ;;
    esac
done

# ---- arguments ---------------------------------------------------------------
[[ -n "$output" ]] || usage_error "--output FILE is required"
if [[ -n "$timestamp" ]]; then
    # Litestream takes RFC 3339 (Go's time.RFC3339): date, T, time, zone.
    re='^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$'
    [[ "$timestamp" =~ $re ]] ||
        usage_error "--timestamp must be RFC 3339, e.g. 2026-11-24T10:15:00Z (got '$timestamp')"
fi
if [[ -n "$replica_url" ]]; then
    [[ $config_given == 0 ]] || usage_error "give --config or --replica-url, not both"
    [[ "$replica_url" == *://* ]] || usage_error "--replica-url must be a URL like s3://bucket/path or file:///dir"
else
    if [[ -z "$config" ]]; then
        for c in /etc/sundial/litestream.yml ./litestream.yml; do
            if [[ -f "$c" ]]; then
                config="$c"
                break
            fi
        done
    fi
    [[ -n "$config" ]] || usage_error "no Litestream config: give --config FILE or --replica-url URL"
    [[ -f "$config" ]] || usage_error "--config $config: no such file"
    [[ -n "$db" ]] || usage_error "--db PATH (or SUNDIAL_DB) is required with a config: the database path it names"
fi

command -v "$litestream" >/dev/null 2>&1 || die "Litestream not found ('$litestream'); install Litestream 0.5.x or pass --litestream BIN" 2
command -v "$server" >/dev/null 2>&1 || die "sundial-server not found ('$server'); pass --server BIN or set SUNDIAL_SERVER_BIN" 2

out_dir=$(dirname -- "$output")
[[ -d "$out_dir" ]] || mkdir -p -- "$out_dir" || die "cannot create $out_dir"
out_abs="$(cd -- "$out_dir" && pwd -P)/$(basename -- "$output")"

# Is any process holding FILE (or its WAL) open? Reads /proc, so it sees only
# what this user may see; run as root or as the server's user.
holders() {
    local f pid fd target
    for pid in /proc/[0-9]*; do
        for fd in "$pid"/fd/*; do
            target=$(readlink -- "$fd" 2>/dev/null) || continue
            for f in "$out_abs" "$out_abs-wal" "$out_abs-shm"; do
                if [[ "$target" == "$f" ]]; then
                    printf '%s ' "${pid#/proc/}"
                    break 2
                fi
            done
        done
    done
}

if [[ -d "$output" ]]; then
    die "$output is a directory; --output names the database file (for a server's data directory: $output/sundial.db)" 2
fi
if [[ -e "$output" ]]; then
    if [[ $force != 1 ]]; then
        die "$output exists; refusing to overwrite it. Restore to a new path, or pass --force to replace it (the old file is kept beside it)" 2
    fi
    busy=$(holders)
    if [[ -n "$busy" ]]; then
        die "$output is open by process(es) $busy; stop the server (and Litestream) before replacing its database" 2
    fi
fi

# ---- restore into a temporary file beside the output -------------------------
tmp=$(mktemp "$out_dir/.sundial-restore.XXXXXX")
rm -f -- "$tmp" # Litestream refuses to write over an existing file.
cleanup() { rm -f -- "$tmp" "$tmp-wal" "$tmp-shm" "$tmp.tmp"; }
trap cleanup EXIT

args=(restore -o "$tmp")
[[ -n "$timestamp" ]] && args+=(-timestamp "$timestamp")
if [[ -n "$replica_url" ]]; then
    args+=("$replica_url")
    source_desc="$replica_url"
else
    args+=(-config "$config" "$db")
    source_desc="$db (config $config)"
fi

printf 'restore: from %s%s\n' "$source_desc" "${timestamp:+ at $timestamp}"
start_ns=$(date +%s%N)
# Litestream's S3 client fails when AWS_CA_BUNDLE is set; it needs none.
if ! ls_out=$(env -u AWS_CA_BUNDLE "$litestream" "${args[@]}" 2>&1); then
    printf '%s\n' "$ls_out" >&2
    if grep -qi 'no matching backup\|no backups\|timestamp does not exist\|no snapshots' <<<"$ls_out"; then
        die "Litestream found no backup${timestamp:+ covering $timestamp} at $source_desc (nothing was replaced)"
    fi
    die "Litestream restore failed (nothing was replaced)"
fi
end_ns=$(date +%s%N)
[[ -s "$tmp" ]] || die "Litestream reported success but wrote no database (nothing was replaced)"

# ---- check it before it goes anywhere ----------------------------------------
if ! report=$("$server" check --db "$tmp" 2>&1); then
    printf '%s\n' "$report" >&2
    die "the restored database failed its check (nothing was replaced)"
fi

# ---- move into place ----------------------------------------------------------
if [[ -e "$output" ]]; then
    aside="$output.replaced-$(date -u +%Y%m%dT%H%M%SZ)"
    for suffix in "" -wal -shm; do
        if [[ -e "$output$suffix" ]]; then
            mv -- "$output$suffix" "$aside$suffix"
        fi
    done
    printf 'restore: the old database is kept as %s\n' "$aside"
fi
rm -f -- "$output-wal" "$output-shm"
mv -- "$tmp" "$output"
trap - EXIT
rm -f -- "$tmp-wal" "$tmp-shm"

ms=$(((end_ns - start_ns) / 1000000))
bytes=$(stat -c %s -- "$output")
printf 'restore: restored %s bytes in %d.%03d s into %s\n' "$bytes" $((ms / 1000)) $((ms % 1000)) "$output"
printf '%s\n' "${report//$tmp/$output}"
printf 'restore: done. Start the server with --data-dir %s (the file must be named sundial.db there)\n' "$out_dir"
