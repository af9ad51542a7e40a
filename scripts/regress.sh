#!/usr/bin/env bash
# PostgreSQL's own regression suite (pg_regress, the parallel schedule, installcheck style) against a
# throwaway PostgreSQL directly, then through pgwire-proxy (--protocol=full when the binary has it, else
# --extended-protocol=relay; no limits); prints both pass lists and their difference.
#   scripts/regress.sh                     exit 1 unless direct passes everything and the pass lists are equal
#   scripts/regress.sh --known-failures tests/regress/known_failures.txt
#                                          exit 1 unless direct passes everything and the tests failing only
#                                          through the proxy are exactly the listed ones (what test.sh runs)
#   scripts/regress.sh --only direct       the direct pass alone
# The suite of the installed server's exact version is fetched once into build-regress/ (tests/regress/fetch.py:
# apt-get source, adding a deb-src entry when apt has none). PGWIRE_PROXY_BINARY skips the build.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z ${PGWIRE_PROXY_BINARY:-} ]]; then
  scripts/install-deps.sh
  scripts/build.sh pgwire-proxy
fi
PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}" exec /usr/bin/python3 tests/regress/run.py "$@"
