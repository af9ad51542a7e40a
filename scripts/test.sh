#!/usr/bin/env bash
# Runs every test: installs what is missing, builds, then
#   1. the C++ suites (ctest),
#   2. the end-to-end suite (pytest against a throwaway PostgreSQL, or PGWIRE_PROXY_TEST_DSN),
#   3. PostgreSQL's regression suite directly and through the proxy with --protocol=full (scripts/regress.sh):
#      fails unless both pass the same tests (217/217 each on PostgreSQL 15); then again through
#      --reuse-upstream, where only tests/regress/reuse_differences.txt may differ,
#   4. the C++ suites and the e2e suite again against an ASan+UBSan build (scripts/sanitize.sh address),
#   5. the C++ suites and the concurrency e2e tests against a TSan build (scripts/sanitize.sh thread),
#   6. the libFuzzer targets for a bounded time (scripts/fuzz.sh),
#   7. the benchmark's quick mode, only to prove it runs (bench/run.py --quick; no timing asserted), and one
#      short round of bench/inprocess_cost.py (the in-process proxy beside the binary) with this build.
# PGWIRE_PROXY_QUICK=1 stops after step 2. Extra arguments go to the step-2 pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
# Warnings are errors here (and in CI): the plain build leaves them off (CMake option PGWIRE_PROXY_WERROR).
export PGWIRE_PROXY_WERROR=${PGWIRE_PROXY_WERROR:-ON}
build=${PGWIRE_PROXY_BUILD_DIR:-build}
# A build writes only to its build directory: nothing new, tracked or ignored, in the source tree
# (a git checkout; checked as a before/after difference, so uncommitted work does not matter).
tree_state() { git status --porcelain --ignored=matching 2>/dev/null | grep -v -x -F "!! ${build%/}/" || true; }
before=$(tree_state)
scripts/build.sh
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  after=$(tree_state)
  if [[ $after != "$before" ]]; then
    echo "test.sh: the build wrote to the source tree:" >&2
    diff <(echo "$before") <(echo "$after") >&2 || true
    exit 1
  fi
fi

echo "== C++ tests (ctest)"
(cd "$build" && ctest --output-on-failure)

echo "== end-to-end tests (pytest)"
# Debian's python3 has psycopg, pytest and pexpect; a pyenv python3 earlier on PATH may not.
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
status=0
/usr/bin/python3 -m pytest tests/e2e -p no:cacheprovider -q "$@" || status=$?
if ((status == 5)); then
  echo "test.sh: pytest collected no tests; that is a failure here" >&2
fi
((status == 0)) || exit "$status"
[[ ${PGWIRE_PROXY_QUICK:-0} == 1 ]] && exit 0

echo "== PostgreSQL's regression suite, direct and through the proxy (scripts/regress.sh)"
# Fails unless the proxy passes exactly the tests PostgreSQL passes directly (no known-failures list).
PGWIRE_PROXY_BINARY="$(realpath "$build")/pgwire-proxy" scripts/regress.sh
echo "== PostgreSQL's regression suite through --reuse-upstream (reset backends)"
# Every test but the listed ones (what DISCARD ALL keeps, each with its reason) passes as directly,
# and connections were reused.
PGWIRE_PROXY_BINARY="$(realpath "$build")/pgwire-proxy" scripts/regress.sh --reuse-upstream \
  --may-differ tests/regress/reuse_differences.txt

echo "== sanitizers (ASan + UBSan)"
# The fault matrix already ran at full size above; under ASan a shorter churn and load suffice.
PGWIRE_PROXY_CHURN=2000 PGWIRE_PROXY_LOAD_SECONDS=15 scripts/sanitize.sh address

echo "== sanitizers (TSan)"
scripts/sanitize.sh thread

echo "== fuzzing"
scripts/fuzz.sh "${PGWIRE_PROXY_FUZZ_SECONDS:-60}"

echo "== benchmark, quick mode (proves it runs; times are not asserted)"
# two samples of the stream and COPY a round, so the paired-sample path runs too
/usr/bin/python3 bench/run.py --quick --samples 2 --binary "$build/pgwire-proxy"

echo "== the in-process cost benchmark, one short round (proves it runs; figures are not asserted)"
/usr/bin/python3 bench/inprocess_cost.py --no-build --build-dir "$build" --rounds 1 --duration 1 --big-queries 20
