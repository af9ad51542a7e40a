#!/usr/bin/env bash
# Run pgwire-proxy on port 5433 (or $PORT) in front of a throwaway PostgreSQL; Ctrl+C stops both.
# Extra pgwire-proxy flags go after --, e.g. ./scripts/run-local.sh -- --max-connections=5
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${PGWIRE_PROXY_BINARY:-}" ]]; then
    echo "run-local: checking the Debian packages (scripts/install-deps.sh)" >&2
    [[ -x scripts/install-deps.sh ]] && scripts/install-deps.sh
    # Only the binary: the C++ test suites and the Python module are for scripts/test.sh.
    scripts/build.sh pgwire-proxy
fi

args=()
[[ "${1:-}" == "--" ]] && shift
[[ $# -gt 0 ]] && args=(-- "$@")
PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}" exec /usr/bin/python3 -m pgwire_proxy.local "${args[@]}"
