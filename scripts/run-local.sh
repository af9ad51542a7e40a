#!/usr/bin/env bash
# Run pgwire-proxy on port 5433 (or $PORT) in front of a throwaway PostgreSQL; Ctrl+C stops both.
# Extra pgwire-proxy flags go after --, e.g. ./scripts/run-local.sh -- --max-connections=5
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PGWIRE_PROXY_BINARY:-}" ]]; then
    [[ -x scripts/install-deps.sh ]] && scripts/install-deps.sh
    scripts/build.sh
fi

args=()
[[ "${1:-}" == "--" ]] && shift
[[ $# -gt 0 ]] && args=(-- "$@")
PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}" exec /usr/bin/python3 -m pgwire_proxy.local "${args[@]}"
