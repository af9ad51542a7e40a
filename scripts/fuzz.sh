#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each for a bounded time.
#   scripts/fuzz.sh [seconds-per-target]      default 60
# A crash leaves its input in build-fuzzer/ (crash-*) and fails the run; turn it into a unit test.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
dir=build-fuzzer
CC=clang CXX=clang++ cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPGWIRE_PROXY_SANITIZE=fuzzer \
  -DPGWIRE_PROXY_TESTS=OFF -DPGWIRE_PROXY_PYTHON=OFF -DPGWIRE_PROXY_WERROR=OFF >/dev/null
cmake --build "$dir" -j"${JOBS:-2}" --target fuzz_frames fuzz_session fuzz_relay -- --no-print-directory >/dev/null
/usr/bin/python3 tests/fuzz/make_corpus.py "$dir/seeds" >/dev/null
export ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
for target in fuzz_frames fuzz_session fuzz_relay; do
  mkdir -p "$dir/corpus/$target"
  echo "== $target for ${seconds}s"
  (cd "$dir" && "./tests/fuzz/$target" -max_total_time="$seconds" -max_len=4096 -timeout=10 -print_final_stats=1 \
     "corpus/$target" seeds 2>&1 | grep -E "^(stat::number_of_executed_units|stat::new_units_added|#[0-9]+ +DONE|==[0-9]+==ERROR|SUMMARY)" )
done
