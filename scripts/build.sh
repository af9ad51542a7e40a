#!/usr/bin/env bash
# Configures and builds pgwire-proxy into build/ (the binary is build/pgwire-proxy).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" >/dev/null
cmake --build build -j"${JOBS:-2}" -- --no-print-directory >/dev/null
