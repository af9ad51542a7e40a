#!/usr/bin/env bash
# Configures and builds pgwire-proxy into build/ (the binary is build/pgwire-proxy).
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian's python3 (the one with the test modules) decides the extension's ABI, not a pyenv one on PATH.
cmake -S . -B build -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" -DPython_EXECUTABLE=/usr/bin/python3 >/dev/null
cmake --build build -j"${JOBS:-2}" -- --no-print-directory >/dev/null
