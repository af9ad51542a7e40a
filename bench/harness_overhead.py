#!/usr/bin/python3
"""What the pytest harness costs a test suite: Proxy.stop(), and the per-test cost of the fixtures.

    PYTHONPATH=python /usr/bin/python3 bench/harness_overhead.py [--stops 40] [--tests 60] [--json out.json]

Uses the in-process module (pgwire_proxy._core from scripts/build.sh, or an installed package) and a
throwaway PostgreSQL (or PGWIRE_PROXY_TEST_DSN). Measures, printing median, p90, min and max in ms:

  1. Proxy.start() and Proxy.stop() with no clients: each stop comes 0-300 ms after the start (at a
     random point), so whatever the acceptor is doing when stop() arrives is sampled;
  2. Proxy.stop() with one idle psycopg client connected (it gets FATAL 57P01);
  3. the per-test cost of the fixtures, from a generated suite run by pytest in a subprocess: setup
     plus teardown time of each test (pytest's own report durations), for tests that use
     `pgwire_proxy` (the shared, reset proxy), tests that make a fresh proxy each with
     `pgwire_proxy_factory()` (what `pgwire_proxy` was before it was shared), and tests with no
     proxy (the floor: pytest's own per-test cost). The three kinds are interleaved; left out are
     the first test of the run (it starts PostgreSQL), the first of each kind (it starts the shared
     proxy / the first factory) and the last (its teardown stops the session's fixtures).

The harness's targets (issue 19): stop() <= 50 ms with no clients; pgwire_proxy <= 30 ms per test
after the first. This is a measurement, not a test: nothing fails on slow numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

from pgwire_proxy import Proxy  # noqa: E402
from pgwire_proxy.cluster import from_environment  # noqa: E402


def summary(samples: List[float]) -> Dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    return {"n": len(ms), "median": statistics.median(ms), "p90": p90, "min": ms[0], "max": ms[-1]}


def line(name: str, s: Dict[str, float]) -> str:
    return (f"{name:<44} median {s['median']:8.2f}  p90 {s['p90']:8.2f}  min {s['min']:8.2f}  "
            f"max {s['max']:8.2f}  ms  (n={s['n']})")


def measure_stop(dsn: str, rounds: int, seed: int) -> Dict[str, List[float]]:
    rng = random.Random(seed)
    starts: List[float] = []
    stops: List[float] = []
    for _ in range(rounds):
        proxy = Proxy(dsn, log_level="off")
        t0 = time.perf_counter()
        proxy.start()
        starts.append(time.perf_counter() - t0)
        time.sleep(rng.uniform(0, 0.3))
        t0 = time.perf_counter()
        proxy.stop()
        stops.append(time.perf_counter() - t0)
    return {"start": starts, "stop": stops}


def measure_stop_with_client(dsn: str, rounds: int) -> List[float]:
    import psycopg
    stops: List[float] = []
    for _ in range(rounds):
        proxy = Proxy(dsn, log_level="off").start()
        conn = psycopg.connect(proxy.dsn, autocommit=True, cursor_factory=psycopg.ClientCursor)
        conn.execute("select 1")
        t0 = time.perf_counter()
        proxy.stop()
        stops.append(time.perf_counter() - t0)
        conn.close()
    return stops


SUITE = '''
import psycopg
import pytest

def run(proxy):
    with psycopg.connect(proxy.dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        conn.execute("select 1")

@pytest.mark.parametrize("i", range({tests}))
@pytest.mark.parametrize("kind", ["shared", "fresh", "none"])
def test_cost(kind, i, request):
    if kind == "shared":
        run(request.getfixturevalue("pgwire_proxy"))
    elif kind == "fresh":
        run(request.getfixturevalue("pgwire_proxy_factory")())
'''

COLLECTOR = '''
import json, os

_durations = {}

def pytest_runtest_logreport(report):
    if report.when in ("setup", "teardown"):
        _durations.setdefault(report.nodeid, 0.0)
        _durations[report.nodeid] += report.duration

def pytest_sessionfinish(session):
    with open(os.environ["HARNESS_OVERHEAD_OUT"], "w") as out:
        json.dump(_durations, out)
'''


def measure_fixtures(tests: int) -> Dict[str, List[float]]:
    with tempfile.TemporaryDirectory(prefix="pgwp-harness-") as tmp:
        root = Path(tmp)
        # i outermost, so the three kinds alternate: test_cost[shared-0], [fresh-0], [none-0], [shared-1] ...
        (root / "test_generated.py").write_text(textwrap.dedent(SUITE.replace("{tests}", str(tests))))
        (root / "collector.py").write_text(COLLECTOR)
        out = root / "durations.json"
        env = dict(os.environ, HARNESS_OVERHEAD_OUT=str(out),
                   PYTHONPATH=os.pathsep.join([str(REPO / "python"), str(root), os.environ.get("PYTHONPATH", "")]))
        subprocess.run([sys.executable, "-m", "pytest", str(root / "test_generated.py"), "-q", "-p", "no:cacheprovider",
                        "-p", "pgwire_proxy.pytest_plugin", "-p", "collector", "--rootdir", str(root)],
                       check=True, env=env, cwd=root, stdout=subprocess.DEVNULL)
        durations: Dict[str, float] = json.loads(out.read_text())
    ordered = list(durations.items())  # in run order
    by_kind: Dict[str, List[float]] = {"shared": [], "fresh": [], "none": []}
    seen_first = {"shared": False, "fresh": False}
    # The first test starts PostgreSQL; the last one's teardown includes the session fixtures' (the
    # shared proxy's stop, PostgreSQL's shutdown).
    for node, seconds in ordered[1:-1]:
        kind = node.split("[", 1)[1].split("-", 1)[0]
        if kind in seen_first and not seen_first[kind]:
            seen_first[kind] = True  # its first use starts the shared proxy / the first factory
            continue
        by_kind[kind].append(seconds)
    return by_kind


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stops", type=int, default=40, help="stop() rounds (default 40)")
    parser.add_argument("--tests", type=int, default=60, help="generated tests of each kind (default 60)")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--json", type=Path, help="write the raw samples here")
    args = parser.parse_args()

    results: Dict[str, List[float]] = {}
    server = from_environment()
    server.start()
    try:
        print("measuring Proxy.start()/stop() ...", file=sys.stderr)
        results.update(measure_stop(server.dsn, args.stops, args.seed))
        results["stop with an idle client"] = measure_stop_with_client(server.dsn, max(5, args.stops // 2))
    finally:
        server.stop()
    print("measuring the fixtures' per-test cost (a generated pytest suite) ...", file=sys.stderr)
    fixtures = measure_fixtures(args.tests)
    results["per test: pgwire_proxy (shared, reset)"] = fixtures["shared"]
    results["per test: pgwire_proxy_factory() (fresh)"] = fixtures["fresh"]
    results["per test: no proxy fixture (floor)"] = fixtures["none"]

    sys.stderr.flush()
    print(line("Proxy.start()", summary(results["start"])))
    print(line("Proxy.stop(), no clients", summary(results["stop"])))
    for name in ("stop with an idle client", "per test: pgwire_proxy (shared, reset)",
                 "per test: pgwire_proxy_factory() (fresh)", "per test: no proxy fixture (floor)"):
        print(line(name if not name.startswith("stop") else "Proxy.stop(), one idle client", summary(results[name])))
    print("(per test = pytest's setup + teardown durations of the test; targets: stop() <= 50 ms, "
          "pgwire_proxy <= 30 ms per test)")
    if args.json:
        args.json.write_text(json.dumps({k: summary(v) | {"samples_ms": [x * 1000 for x in v]}
                                         for k, v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
