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

# External tools the e2e tests use (HAProxy, Litestream, moto, validators).
log "test tools"
bash scripts/install-test-tools.sh
export PATH="$PWD/.venv/bin:$PATH"

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

log "building binaries for the e2e tests"
cargo build --workspace --bins

log "cargo test (unit and integration)"
cargo test --workspace --exclude sundial-e2e -- "${filter[@]}"

# The chaos soak injects every fault kind, kill -9 of Litestream included
# (its servers run with --wal-autocheckpoint 0, as deployed: docs/dr.md).
# Set SUNDIAL_SOAK_FAULTS to run only some kinds (the soak's doc comment
# lists them).

# The multi-process tests print what they measure (failover times, RPO,
# restore times): show it.
log "cargo test -p sundial-e2e (real binaries, HAProxy, Litestream, moto)"
cargo test -p sundial-e2e -- --nocapture "${filter[@]}"
