#!/usr/bin/env bash
# The one test command: installs what the tests need, then runs every test.
#
#   scripts/test.sh            # everything: fmt, clippy, unit, integration and e2e tests
#   scripts/test.sh -- NAME    # only tests whose name contains NAME (passed to cargo test)
#
# Under CI=true a test whose external tool is missing fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

filter=()
if [[ "${1:-}" == "--" ]]; then
    shift
    filter=("$@")
fi

log "toolchain: $(cargo --version)"

# External tools the e2e tests use. Missing ones are installed when we can
# (root, Debian); otherwise their tests skip with a reason (or fail under CI=true).
apt_missing=()
command -v haproxy >/dev/null 2>&1 || apt_missing+=(haproxy)
if ((${#apt_missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing ${apt_missing[*]} (apt)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
    else
        log "missing ${apt_missing[*]}: the tests that need them will skip (install: apt-get install ${apt_missing[*]})"
    fi
fi
log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

log "building binaries for the e2e tests"
cargo build --workspace --bins

log "cargo test"
cargo test --workspace -- "${filter[@]}"
