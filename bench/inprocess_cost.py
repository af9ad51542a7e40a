#!/usr/bin/python3
"""What the in-process proxy (the pytest harness's) costs beside the binary: CPU and memory of its capture.

    /usr/bin/python3 bench/inprocess_cost.py [--rounds 8] [--duration 5] [--clients 16]
                                             [--big-queries 300] [--big-size 1000000] [--json out.json]

Builds the binary and the Python module in one release build (build-inproc/, or --build-dir), so both
are compiled alike, starts a throwaway PostgreSQL (pgbench -i) and measures:

  1. CPU per transaction, `pgbench -n -S -M simple` at --clients clients, in interleaved rounds (the
     starting target rotating each round) against: the binary (`pgwire-proxy`, a process of its own),
     the in-process `Proxy` with its default capture (the newest 10,000 queries are kept for
     `proxy.queries()`), and the in-process `Proxy` with `capture_size=0` (nothing kept). All run the
     same options (protocol full, guardrails on with limits far above what pgbench sends). The CPU is
     utime+stime of the process that runs the proxy (/proc/PID/stat): the binary's, or this Python
     process's, whose main thread only waits for pgbench meanwhile;
  2. memory: --big-queries queries of --big-size bytes of text each (`select length('xxx...')`) through
     one psycopg connection to an in-process proxy with the default capture, and again with
     `capture_bytes=0` (bounded by count only, as the capture was before it had a byte bound): this
     process's RSS growth (VmRSS after against before) and how many records were kept.

Prints medians with their spread (min-max over rounds) and the in-process/binary ratios; writes the
raw figures with --json. A measurement, not a test: nothing fails on slow numbers. The 2-vCPU
development machine's idle wake-ups dominate 1-client figures, so this runs 16 clients and compares CPU
per transaction. Runs from an older checkout too (without `capture_bytes` the memory part measures the
default capture only).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration", type=int, default=5, help="seconds per pgbench run (default 5)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--big-queries", type=int, default=300)
    parser.add_argument("--big-size", type=int, default=1_000_000, help="bytes of text per big query")
    parser.add_argument("--build-dir", type=Path, default=REPO / "build-inproc")
    parser.add_argument("--no-build", action="store_true", help="use --build-dir as it is")
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


def build(build_dir: Path) -> None:
    env = dict(os.environ, BUILD_TYPE="Release", PGWIRE_PROXY_BUILD_DIR=str(build_dir))
    print(f"building the binary and the module (release) into {build_dir} ...", file=sys.stderr)
    subprocess.run([str(REPO / "scripts" / "build.sh"), "pgwire-proxy", "_core"], check=True, env=env, cwd=REPO,
                   stdout=subprocess.DEVNULL)


def spread(values: List[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> int:
    args = parse_args()
    build_dir = args.build_dir.resolve()
    if not args.no_build:
        build(build_dir)
    # Before the package is imported: it finds _core in $PGWIRE_PROXY_BUILD_DIR/python/pgwire_proxy.
    os.environ["PGWIRE_PROXY_BUILD_DIR"] = str(build_dir)
    sys.path.insert(0, str(REPO / "python"))
    sys.path.insert(0, str(REPO / "bench"))
    import psycopg
    from pgwire_proxy import Proxy
    from pgwire_proxy.cluster import ThrowawayPostgres, find_pg_bindir
    from pgwire_proxy.process import ProxyProcess
    from run import client_env, cpu_seconds, memory_kb, pgbench_run

    has_capture_bytes = "capture_bytes" in inspect.signature(Proxy).parameters
    options: Dict[str, object] = dict(max_connections=300, max_rows=1_000_000, max_bytes="1TB",
                                      log_level="warning", protocol="full")
    bindir = find_pg_bindir()
    results: dict = {"settings": vars(args) | {"build_dir": str(build_dir), "json": str(args.json)},
                     "cpu": {}, "memory": {}}
    with contextlib.ExitStack() as stack:
        pg = ThrowawayPostgres(max_connections=3 * args.clients + 50,
                               settings={"shared_buffers": "128MB", "autovacuum": "off"})
        stack.callback(pg.stop)
        pg.start()
        subprocess.run([str(bindir / "pgbench"), "-i", "-q", "-s", "1", "-h", pg.host, "-p", str(pg.port),
                        "-U", "postgres", "postgres"], check=True, capture_output=True, env=client_env(),
                       start_new_session=True)

        binary = ProxyProcess(pg.dsn, binary=build_dir / "pgwire-proxy", **options)
        stack.callback(binary.stop)
        binary.start()
        captured = Proxy(pg.dsn, **options).start()
        stack.callback(captured.stop)
        uncaptured = Proxy(pg.dsn, capture_size=0, **options).start()
        stack.callback(uncaptured.stop)
        targets = {"binary": (binary.port, binary.process.pid),  # type: ignore[union-attr]
                   "in-process, capture 10000": (captured.port, os.getpid()),
                   "in-process, capture_size=0": (uncaptured.port, os.getpid())}
        names = list(targets)
        per_round: Dict[str, List[dict]] = {name: [] for name in names}
        for name in names:  # warm-up: connections, caches, the capture ring filled once
            pgbench_run(bindir, "127.0.0.1", targets[name][0], clients=args.clients, duration=2, scale=1,
                        script=None)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                port, pid = targets[name]
                cpu0 = cpu_seconds(pid)
                run = pgbench_run(bindir, "127.0.0.1", port, clients=args.clients, duration=args.duration,
                                  scale=1, script=None)
                run["us_per_txn"] = (cpu_seconds(pid) - cpu0) * 1e6 / max(1, run["transactions"])
                per_round[name].append(run)
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(
                f"{n} {per_round[n][-1]['tps']:.0f} tps {per_round[n][-1]['us_per_txn']:.1f} us"
                for n in names), file=sys.stderr)
        for name in names:
            results["cpu"][name] = {"tps": spread([x["tps"] for x in per_round[name]]),
                                    "us_per_txn": spread([x["us_per_txn"] for x in per_round[name]]),
                                    "runs": per_round[name]}
        for name in names[1:]:
            results["cpu"][name]["us_ratio_to_binary"] = spread(
                [a["us_per_txn"] / b["us_per_txn"] for a, b in zip(per_round[name], per_round["binary"])])
            results["cpu"][name]["tps_ratio_to_binary"] = spread(
                [a["tps"] / b["tps"] for a, b in zip(per_round[name], per_round["binary"])])
        captured.stop()
        uncaptured.stop()

        variants = {"default capture": {}}
        if has_capture_bytes:
            variants["capture_bytes=0 (count only)"] = {"capture_bytes": 0}
        text = "x" * args.big_size
        for name, extra in variants.items():
            proxy = Proxy(pg.dsn, **options, **extra).start()
            try:
                before = memory_kb(os.getpid())["VmRSS"]
                with psycopg.connect(proxy.dsn, autocommit=True) as conn:
                    for _ in range(args.big_queries):
                        conn.execute(f"select length('{text}')")
                after = memory_kb(os.getpid())["VmRSS"]
                kept = proxy.queries()
                results["memory"][name] = {"rss_growth_mb": (after - before) / 1024, "records_kept": len(kept),
                                           "text_kept_mb": sum(len(q.sql) for q in kept) / 2**20}
                del kept
            finally:
                proxy.stop()
            print(f"memory, {name}: done", file=sys.stderr)

    print(f"pgbench -n -S -M simple -c {args.clients}, {args.rounds} rounds of {args.duration} s, interleaved "
          "(median [min-max]):")
    for name in names:
        c = results["cpu"][name]
        row = (f"  {name:<28} {c['tps']['median']:8.0f} tps [{c['tps']['min']:.0f}-{c['tps']['max']:.0f}]  "
               f"{c['us_per_txn']['median']:6.2f} us/txn [{c['us_per_txn']['min']:.2f}-{c['us_per_txn']['max']:.2f}]")
        if "us_ratio_to_binary" in c:
            u, t = c["us_ratio_to_binary"], c["tps_ratio_to_binary"]
            row += (f"  CPU {u['median']:.3f}x binary [{u['min']:.3f}-{u['max']:.3f}], "
                    f"TPS {t['median']:.3f}x [{t['min']:.3f}-{t['max']:.3f}]")
        print(row)
    print(f"{args.big_queries} queries of {args.big_size} bytes through one connection, in-process:")
    for name, m in results["memory"].items():
        print(f"  {name:<28} RSS +{m['rss_growth_mb']:.0f} MB, {m['records_kept']} records kept "
              f"({m['text_kept_mb']:.0f} MB of text)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
