#!/usr/bin/env bash
# Configures and builds pgwire-proxy into build/ ($PGWIRE_PROXY_BUILD_DIR if set): the binary
# build/pgwire-proxy, the Python module build/python/pgwire_proxy/_core*.so (python/pgwire_proxy/__init__.py
# finds it there) and the C++ test suites. Nothing is written to the source tree.
#   scripts/build.sh                    everything (what scripts/test.sh needs)
#   scripts/build.sh pgwire-proxy       only these targets (scripts/run-local.sh builds just the binary)
# BUILD_TYPE (RelWithDebInfo), JOBS (2). PGWIRE_PROXY_WERROR=ON|OFF sets -Werror; CI=true turns it on;
# unset, the build directory keeps what it had (a new one: off).
set -euo pipefail
cd "$(dirname "$0")/.."

configure=(-DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}"
           # Debian's python3 (the one with the test modules) decides the extension's ABI, not a pyenv one on PATH.
           -DPython_EXECUTABLE=/usr/bin/python3)
werror=${PGWIRE_PROXY_WERROR:-}
[[ -z $werror && ${CI:-} == true ]] && werror=ON
[[ -n $werror ]] && configure+=(-DPGWIRE_PROXY_WERROR="$werror")

dir=${PGWIRE_PROXY_BUILD_DIR:-build}
targets=()
for target in "$@"; do targets+=(--target "$target"); done

echo "build.sh: configuring $dir/ (cmake, ${BUILD_TYPE:-RelWithDebInfo}${werror:+, PGWIRE_PROXY_WERROR=$werror})" >&2
cmake -S . -B "$dir" "${configure[@]}" >/dev/null
echo "build.sh: building ${*:-everything} with ${JOBS:-2} jobs" >&2
# cmake's progress lines show; the "Built target" line of every up-to-date target does not.
cmake --build "$dir" -j"${JOBS:-2}" "${targets[@]}" -- --no-print-directory | { grep --line-buffered -v -e '^\[ *[0-9]*%\] Built target ' -e '^Consolidate compiler generated dependencies' || true; }
