#!/usr/bin/env bash
# Runs every test: installs what is missing, builds, runs the C++ suites (ctest), then the end-to-end
# suite (pytest against a throwaway PostgreSQL, or PGWIRE_PROXY_TEST_DSN). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
scripts/build.sh

echo "== C++ tests (ctest)"
(cd build && ctest --output-on-failure)

echo "== end-to-end tests (pytest)"
# Debian's python3 has psycopg, pytest and pexpect; a pyenv python3 earlier on PATH may not.
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
status=0
/usr/bin/python3 -m pytest tests/e2e -p no:cacheprovider -q "$@" || status=$?
if ((status == 5)); then
  echo "test.sh: pytest collected no tests; that is a failure here" >&2
fi
exit "$status"
