#!/usr/bin/python3
"""Where does the middle process spend its time? Per-transaction costs, a perf profile and syscall counts.

    /usr/bin/python3 bench/profile.py [--target proxy|pgbouncer] [--workload select|write|stream]
                                      [--clients 16] [--mode simple|extended|prepared] [--duration 5] [--binary PATH] [--call-graph dwarf]

Starts a throwaway PostgreSQL and the target (the proxy: a release build in build-bench/ unless --binary
is given; or PgBouncer in session mode, for comparison), then runs the workload through it three times:

  1. plain: the target's CPU time (user/sys) and context switches (all threads) per transaction;
  2. under `perf record` (-p PID, sampling the target only): the top symbols by self time;
  3. under `strace -c -f` (slows the target down a lot; only the counts matter): syscalls per transaction.

Everything goes to --out (default: a new temp dir, printed at the end); the summary to stdout.
perf and strace are optional: missing ones are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (bench/run.py: the cluster, PgBouncer, pgbench and stream helpers)


def thread_switches(pid: int) -> Dict[str, int]:
    """Voluntary and involuntary context switches summed over the process's current threads."""
    total = {"voluntary": 0, "involuntary": 0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total["voluntary"] += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    total["involuntary"] += int(line.split()[1])
    return total


class Workload:
    def __init__(self, args: argparse.Namespace, bindir: Path, host: str, port: int):
        self.args, self.bindir, self.host, self.port = args, bindir, host, port

    def run(self) -> Dict[str, float]:
        """Runs once; returns {"units": transactions (or MB for the stream), "seconds": ...}."""
        a = self.args
        if a.workload == "stream":
            client = bench.WireClient(self.host, self.port)
            try:
                nbytes, seconds = client.stream(bench.STREAM_SQL.format(rows=a.stream_rows), f"SELECT {a.stream_rows}")
            finally:
                client.close()
            return {"units": nbytes / 1e6, "seconds": seconds, "unit": "MB"}
        result = bench.pgbench_run(self.bindir, self.host, self.port, clients=a.clients, duration=a.duration,
                                   scale=a.scale, script=None if a.workload == "select" else bench.WRITE_SCRIPT,
                                   mode=a.mode)
        # Round trips per transaction: select-only 1, bench/write.sql 4 (BEGIN, UPDATE, INSERT, END).
        return {"units": result["transactions"], "seconds": result["seconds"], "unit": "txn"}


def measure_plain(workload: Workload, pid: int) -> Dict[str, float]:
    cpu0, sw0 = bench.cpu_times(pid), thread_switches(pid)
    result = workload.run()
    cpu1, sw1 = bench.cpu_times(pid), thread_switches(pid)
    units = result["units"]
    per = f"per_{result['unit']}"
    return {"units": units, "unit": result["unit"], "seconds": result["seconds"],
            "rate": units / result["seconds"],
            f"user_us_{per}": (cpu1["user"] - cpu0["user"]) * 1e6 / units,
            f"sys_us_{per}": (cpu1["sys"] - cpu0["sys"]) * 1e6 / units,
            f"voluntary_switches_{per}": (sw1["voluntary"] - sw0["voluntary"]) / units,
            f"involuntary_switches_{per}": (sw1["involuntary"] - sw0["involuntary"]) / units}


def under(tool_argv: List[str], workload: Workload) -> Dict[str, float]:
    """Runs the workload while `tool_argv` (attached to the target) runs; stops the tool with SIGINT."""
    tool = subprocess.Popen(tool_argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, text=True)
    try:
        time.sleep(1.0)  # attached
        if tool.poll() is not None:
            raise RuntimeError(f"{tool_argv[0]} exited early:\n{tool.stderr.read() if tool.stderr else ''}")
        return workload.run()
    finally:
        if tool.poll() is None:
            tool.send_signal(signal.SIGINT)
        try:
            tool.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            tool.kill()
            tool.communicate()


def parse_strace(text: str) -> List[Dict[str, object]]:
    """strace -c's table: [{syscall, calls, errors, seconds}]."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and re.match(r"^[0-9.]+$", parts[0]) and parts[-1] not in ("total",):
            try:
                calls = int(parts[3])
            except ValueError:
                continue
            errors = int(parts[4]) if len(parts) == 6 else 0
            rows.append({"syscall": parts[-1], "calls": calls, "errors": errors, "seconds": float(parts[1])})
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", choices=("proxy", "pgbouncer"), default="proxy")
    p.add_argument("--workload", choices=("select", "write", "stream"), default="select")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--mode", choices=("simple", "extended", "prepared"), default="simple",
                   help="pgbench -M (the proxy runs --extended-protocol=relay)")
    p.add_argument("--duration", type=int, default=5, help="seconds per pgbench run (default 5)")
    p.add_argument("--scale", type=int, default=1)
    p.add_argument("--stream-rows", type=int, default=2_000_000)
    p.add_argument("--binary", type=Path)
    p.add_argument("--build-dir", type=Path, default=bench.REPO / "build-bench")
    p.add_argument("--call-graph", choices=("none", "fp", "dwarf"), default="none",
                   help="perf call graphs: fp gives whole kernel stacks (which syscall a sample belongs to; "
                        "user stacks stop early in a release build), dwarf also user stacks (heavier)")
    p.add_argument("--no-perf", action="store_true")
    p.add_argument("--no-strace", action="store_true")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, bench._raise_interrupt)
    out = args.out or Path(tempfile.mkdtemp(prefix="pgwire-proxy-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    bindir = bench.find_pg_bindir()
    stack = contextlib.ExitStack()
    try:
        binary = None
        if args.target == "proxy":
            binary = args.binary.resolve() if args.binary else bench.build_proxy(args.build_dir.resolve())
        pg = bench.ThrowawayPostgres(max_connections=args.clients + 30, settings={
            "shared_buffers": "128MB", "work_mem": "64MB", "max_wal_size": "4GB", "autovacuum": "off"})
        stack.callback(pg.stop)
        pg.start()
        init = subprocess.run([str(bindir / "pgbench"), "-i", "-q", "-s", str(args.scale), "-h", pg.host, "-p",
                               str(pg.port), "-U", "postgres", "postgres"], capture_output=True, text=True,
                              env=bench.client_env(), start_new_session=True)
        if init.returncode != 0:
            raise RuntimeError(f"pgbench -i failed:\n{init.stdout}{init.stderr}")
        if args.target == "proxy":
            proxy = bench.ProxyProcess(pg.dsn, binary=binary, max_connections=max(100, args.clients + 10),
                                       max_rows=100 * args.stream_rows, max_bytes="1TB", log_level="warning",
                                       extended_protocol="relay")
            stack.callback(proxy.stop)
            proxy.start()
            host, port, pid = proxy.host, proxy.port, proxy.process.pid  # type: ignore[union-attr]
        else:
            bouncer = bench.PgBouncer(pg.host, pg.port, max_client_conn=1000, pool_size=args.clients + 10)
            stack.callback(bouncer.cleanup)
            bouncer.start()
            host, port, pid = bouncer.host, bouncer.port, bouncer.pid
        workload = Workload(args, bindir, host, port)
        bench.log(f"{args.target} pid {pid} on {host}:{port}; warm-up ...")
        workload.run()

        report: Dict[str, object] = {"target": args.target, "workload": args.workload, "clients": args.clients,
                                     "binary": str(binary) if binary else None}
        plain = measure_plain(workload, pid)
        report["plain"] = plain
        who = "1 client" if args.workload == "stream" else f"{args.clients} clients"
        print(f"\n== {args.target}, {args.workload}, {who}: plain run")
        for key, value in plain.items():
            print(f"  {key:34} {value:,.3f}" if isinstance(value, float) else f"  {key:34} {value}")

        if not args.no_perf and shutil.which("perf"):
            data = out / "perf.data"
            record = ["perf", "record", "-q", "-F", "2999", "-o", str(data), "-p", str(pid)]
            if args.call_graph != "none":
                record += ["--call-graph", args.call_graph]
            under(record, workload)
            rep = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort",
                                  "dso,sym", "--percent-limit", "0.5"], capture_output=True, text=True)
            (out / "perf-report.txt").write_text(rep.stdout + rep.stderr)
            dsos = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso"],
                                  capture_output=True, text=True)
            (out / "perf-dso.txt").write_text(dsos.stdout)
            top = [line for line in rep.stdout.splitlines() if line.strip() and not line.startswith("#")]
            print(f"\n== perf: self time by shared object ({out / 'perf-dso.txt'})")
            for line in [x for x in dsos.stdout.splitlines() if x.strip() and not x.startswith("#")][:8]:
                print("  " + line.strip())
            print(f"\n== perf: top symbols by self time ({out / 'perf-report.txt'})")
            for line in top[:40]:
                print("  " + line.rstrip())
            report["perf_top"] = top[:60]

        if not args.no_strace and shutil.which("strace"):
            trace = out / "strace.txt"
            result = under(["strace", "-c", "-f", "-o", str(trace), "-p", str(pid)], workload)
            time.sleep(0.5)
            rows = parse_strace(trace.read_text(errors="replace")) if trace.exists() else []
            units = result["units"]
            print(f"\n== strace -c -f: syscalls per {result['unit']} ({units:,.0f} {result['unit']} under strace)")
            for row in sorted(rows, key=lambda r: -int(r["calls"]))[:12]:
                print(f"  {row['syscall']:20} {int(row['calls']) / units:8.2f}  (errors {int(row['errors']) / units:.2f})")
            total = sum(int(r["calls"]) for r in rows)
            print(f"  {'total':20} {total / units:8.2f}")
            report["syscalls_per_unit"] = {str(r["syscall"]): int(r["calls"]) / units for r in rows}

        (out / "profile.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nfiles in {out}")
        return 0
    except KeyboardInterrupt:
        bench.log("interrupted; stopping everything")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.close()


if __name__ == "__main__":
    sys.exit(main())
