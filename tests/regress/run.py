"""PostgreSQL's regression suite (pg_regress, parallel schedule, installcheck style) run directly
against a throwaway server and then through pgwire-proxy in front of it; the pass lists compared.

    /usr/bin/python3 tests/regress/run.py [--known-failures FILE] [--binary PATH] [--only direct]
                                          [--reuse-upstream [--may-differ FILE]]

1. fetch.py provides the suite of the installed server's exact version (cached in build-regress/).
2. A ThrowawayPostgres (UTF8, C locale, as pg_regress expects of an installcheck server) is started.
3. pg_regress runs the parallel schedule directly: it drops and creates database `regression` itself.
4. The database is made afresh the same way (pg_regress with no tests), and pgwire-proxy starts in front
   of the server with the whole protocol (--protocol=full when the binary has it, else
   --extended-protocol=relay) and no limits. Its DSN names dbname=regression (a dbname the DSN names
   is used for every session, logged as route_names_fixed); pg_regress, which names the same database,
   runs the schedule through it with --use-existing.
5. Both pass lists and their difference are printed. Exit status:
   - without --known-failures: 0 when the direct run passed everything and the proxied pass list is
     the same, else 1;
   - with --known-failures FILE: 0 when the direct run passed everything and the tests that pass
     directly but fail through the proxy are exactly the ones the file lists (a listed test that
     passes fails the step too, so the list can only shrink), else 1.
   2 when the suite could not be run at all.
   With --reuse-upstream the proxied pass runs on reset backends (--reuse-upstream): pg_regress's
   clients, up to twenty at once, get whichever backend is parked, so the tests that see what a reused
   backend keeps may pass or fail from run to run. --may-differ FILE lists them (and why): they may
   fail, every other test must pass as directly, and the proxy's reused-connection counter must be
   above zero (else the pass proved nothing about reuse).

Outputs stay in build-regress/runs/{direct,proxied}/ (regression.diffs, results/, the proxy's log).
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(HERE))

import fetch  # noqa: E402
from pgwire_proxy.cluster import ThrowawayPostgres, free_port  # noqa: E402
from pgwire_proxy.process import ProxyProcess, find_binary  # noqa: E402

DATABASE = "regression"
# Per pg_regress run; a pass takes well under a minute here.
TIMEOUT = float(os.environ.get("PGWIRE_PROXY_REGRESS_TIMEOUT") or 600)
_RESULT = re.compile(r"^(?:test |\s+)(\S+)\s+\.\.\. (ok|FAILED|failed \(ignored\))")

# A test's outcome: ok, FAILED, ignored (an `ignore:` test that failed: random), or missing (not run).
Results = Dict[str, str]


def log(msg: str) -> None:
    fetch.log(msg)


def schedule_tests(schedule: Path) -> List[str]:
    names: List[str] = []
    for line in schedule.read_text().splitlines():
        if line.startswith("test:"):
            names.extend(line.split()[1:])
    return names


class Runner:
    """Runs pg_regress as the cluster's owner (the server writes into the output directory: COPY TO
    files under results/), with only the environment pg_regress sets itself."""

    def __init__(self, suite: fetch.Suite, runs: Path):
        self.suite = suite
        self.runs = runs
        self.owner: Optional[pwd.struct_passwd] = pwd.getpwnam("postgres") if os.geteuid() == 0 else None

    def _outdir(self, name: str) -> Path:
        out = self.runs / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        if self.owner is not None:
            os.chown(out, self.owner.pw_uid, self.owner.pw_gid)
        return out

    def run(self, name: str, host: str, port: int, *, use_existing: bool, tests: bool = True
            ) -> Tuple[int, Results, float, Path]:
        out = self._outdir(name)
        argv = [str(self.suite.pg_regress), f"--inputdir={self.suite.srcdir}", f"--outputdir={out}",
                f"--bindir={self.suite.bindir}", f"--dlpath={self.suite.dlpath}",
                f"--host={host}", f"--port={port}", "--user=postgres", f"--dbname={DATABASE}"]
        if use_existing:
            argv.append("--use-existing")
        if tests:
            # As `make installcheck-parallel` runs it.
            argv += [f"--schedule={self.suite.srcdir / 'parallel_schedule'}", "--max-concurrent-tests=20"]
        if self.owner is not None:
            argv = ["runuser", "-u", self.owner.pw_name, "--", *argv]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        started = time.monotonic()
        with open(out / "pg_regress.out", "w") as stdout:
            # Its own process group: a hang (a test stuck in the proxy) ends with pg_regress and its psqls.
            proc = subprocess.Popen(argv, stdout=stdout, stderr=subprocess.STDOUT, cwd=str(out), env=env,
                                    start_new_session=True)
            try:
                returncode = proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                returncode = 2
                print(f"\nregress: {name}: pg_regress still running after {TIMEOUT:.0f} s "
                      f"(PGWIRE_PROXY_REGRESS_TIMEOUT); killed, the tests it had not finished count as not run",
                      file=stdout, flush=True)
        elapsed = time.monotonic() - started
        text = (out / "pg_regress.out").read_text(errors="replace")
        results: Results = {}
        for line in text.splitlines():
            m = _RESULT.match(line)
            if m:
                results[m.group(1)] = {"ok": "ok", "FAILED": "FAILED"}.get(m.group(2), "ignored")
        if not tests and returncode != 0:
            raise RuntimeError(f"pg_regress could not create database {DATABASE}:\n{text}")
        return returncode, results, elapsed, out


def proxy_options(binary: Path) -> Dict[str, object]:
    """The whole protocol and no limits: --protocol=full once the binary has it, else the relay."""
    help_text = subprocess.run([str(binary), "--help"], capture_output=True, text=True).stdout
    options: Dict[str, object] = {}
    if re.search(r"^--protocol=", help_text, re.M):
        options["protocol"] = "full"
    else:
        options["extended_protocol"] = "relay"
    options.update(max_rows=0, max_bytes=0, query_timeout=0, max_connections=100, log_level="warning")
    return options


def reused_total(port: int) -> int:
    """pgwire_proxy_upstream_reused_total from the proxy's metrics endpoint."""
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    match = re.search(r"^pgwire_proxy_upstream_reused_total (\d+)", text, re.M)
    if not match:
        raise RuntimeError("no pgwire_proxy_upstream_reused_total in the proxy's metrics")
    return int(match.group(1))


def read_known_failures(path: Path) -> Dict[str, str]:
    """`test-name  reason` lines; '#' starts a comment line."""
    known: Dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, *rest = line.split(None, 1)
        reason = rest[0] if rest else ""
        if name in known:
            raise SystemExit(f"{path}:{number}: {name} listed twice")
        known[name] = reason
    return known


def wrapped(names, indent: str = "    ") -> str:
    if not names:
        return indent + "(none)"
    return textwrap.fill(" ".join(names), width=110, initial_indent=indent, subsequent_indent=indent,
                         break_on_hyphens=False)


def summarize(label: str, all_tests: List[str], results: Results, rc: int, elapsed: float) -> Set[str]:
    passed = [t for t in all_tests if results.get(t) == "ok"]
    ignored = [t for t in all_tests if results.get(t) == "ignored"]
    failed = [t for t in all_tests if results.get(t) == "FAILED"]
    missing = [t for t in all_tests if t not in results]
    print(f"== {label}: {len(passed)}/{len(all_tests)} passed in {elapsed:.0f} s (pg_regress exit {rc})")
    print(wrapped(passed))
    if ignored:
        print(f"  failed but ignored by the schedule (`ignore:`): {' '.join(ignored)}")
    if failed:
        print(f"  FAILED ({len(failed)}):")
        print(wrapped(failed))
    if missing:
        print(f"  not run ({len(missing)}):")
        print(wrapped(missing))
    sys.stdout.flush()
    return set(failed) | set(missing)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--known-failures", type=Path, metavar="FILE",
                        help="tests allowed (and required) to fail through the proxy only")
    parser.add_argument("--binary", type=Path, help="the pgwire-proxy binary (default: find_binary())")
    parser.add_argument("--only", choices=["direct"], help="run only the direct pass")
    parser.add_argument("--reuse-upstream", action="store_true",
                        help="the proxied pass with --reuse-upstream: pg_regress's clients on reset backends")
    parser.add_argument("--may-differ", type=Path, metavar="FILE",
                        help="tests that may fail through the proxy (with --reuse-upstream: what a reused "
                             "backend keeps); they may pass too")
    args = parser.parse_args(argv)

    total_started = time.monotonic()
    try:
        suite = fetch.ensure_suite()
        binary = args.binary or find_binary()
    except (RuntimeError, FileNotFoundError) as exc:
        print(f"regress: cannot run the suite: {exc}", file=sys.stderr)
        return 2
    known = read_known_failures(args.known_failures) if args.known_failures else None
    may_differ = read_known_failures(args.may_differ) if args.may_differ else {}
    all_tests = schedule_tests(suite.srcdir / "parallel_schedule")
    runs = fetch.cache_dir() / "runs"
    runner = Runner(suite, runs)
    log(f"PostgreSQL {suite.version}, {len(all_tests)} tests in the parallel schedule; outputs in {runs}")

    # max_prepared_transactions as pg_regress's own temp instance has it, so prepared_xacts runs for real.
    with ThrowawayPostgres(settings={"max_prepared_transactions": "2"}) as pg:
        log(f"direct: pg_regress against PostgreSQL on port {pg.port}")
        rc_direct, direct, t_direct, out_direct = runner.run("direct", pg.host, pg.port, use_existing=False)
        direct_failed = summarize("direct", all_tests, direct, rc_direct, t_direct)
        if args.only == "direct":
            return 0 if not direct_failed and rc_direct == 0 else 1

        # A fresh database for the second pass, made exactly as pg_regress makes it.
        runner.run("recreate", pg.host, pg.port, use_existing=False, tests=False)
        options = proxy_options(binary)
        mode = "--protocol=full" if "protocol" in options else "--extended-protocol=relay"
        metrics_port = 0
        if args.reuse_upstream:
            metrics_port = free_port()
            options.update(reuse_upstream=True, metrics_address=f"127.0.0.1:{metrics_port}")
            mode += " --reuse-upstream"
        proxy = ProxyProcess(pg.dsn_with(dbname=DATABASE), binary=binary, **options)
        with proxy:
            log(f"proxied: pg_regress through {binary} {mode} on port {proxy.port}")
            rc_proxy, proxied, t_proxy, out_proxy = runner.run("proxied", proxy.host, proxy.port,
                                                               use_existing=True)
            proxy_log = proxy.stderr_text()
            reused = reused_total(metrics_port) if metrics_port else None
        code = proxy.returncode
        (out_proxy / "proxy.log").write_text(proxy_log)
        proxied_failed = summarize(f"through the proxy ({mode})", all_tests, proxied, rc_proxy, t_proxy)

    allowed = sorted((proxied_failed - direct_failed) & set(may_differ))
    only_proxy = sorted(proxied_failed - direct_failed - set(may_differ))
    only_direct = sorted(direct_failed - proxied_failed)
    print("== difference")
    print(f"  pass directly, fail through the proxy ({len(only_proxy)}):")
    print(wrapped(only_proxy))
    if only_direct:
        print(f"  fail directly, pass through the proxy ({len(only_direct)}): {' '.join(only_direct)}")
    if only_proxy:
        print(f"  diffs: {out_proxy / 'regression.diffs'}")
    if direct_failed:
        print(f"  diffs of the direct run: {out_direct / 'regression.diffs'}")
    if may_differ:
        print(f"  may differ ({args.may_differ}), failed this time ({len(allowed)}):")
        for name in allowed:
            print(f"    {name}: {may_differ[name]}")
    if reused is not None:
        print(f"  upstream connections reused: {reused}")
    if code not in (0, None):
        print(f"  the proxy exited with {code}; its log: {out_proxy / 'proxy.log'}")

    status = 0
    if reused == 0:
        print("regress: FAIL: --reuse-upstream reused no connection: the pass proved nothing about reuse")
        status = 1
    if direct_failed or rc_direct != 0:
        print(f"regress: FAIL: the direct run did not pass ({len(direct_failed)} failed); the suite or the "
              "server setup is wrong, not the proxy")
        status = 1
    if known is None:
        if only_proxy or only_direct:
            print("regress: FAIL: the pass lists differ")
            status = 1
    else:
        unexpected = [t for t in only_proxy if t not in known]
        fixed = sorted(t for t in known if t not in proxied_failed)
        print(f"== known failures ({args.known_failures}): {len(known)} listed, "
              f"{len(set(only_proxy) & set(known))} of them failed as listed")
        if unexpected:
            print(f"regress: FAIL: pass directly but fail through the proxy and are not in the list "
                  f"({len(unexpected)}): {' '.join(unexpected)}")
            status = 1
        strangers = [t for t in fixed if t not in all_tests]
        if strangers:
            print(f"regress: FAIL: not tests of the parallel schedule: {' '.join(strangers)}")
            fixed = [t for t in fixed if t in all_tests]
            status = 1
        if fixed:
            print(f"regress: FAIL: listed as known failures but did not fail through the proxy; remove them "
                  f"from {args.known_failures} ({len(fixed)}): {' '.join(fixed)}")
            status = 1
        if not status:
            print("regress: the proxied pass list is the direct one less exactly the known failures")
    print(f"regress: direct {len(all_tests) - len(direct_failed)}/{len(all_tests)}, through the proxy "
          f"{len(all_tests) - len(proxied_failed)}/{len(all_tests)}; "
          f"{time.monotonic() - total_started:.0f} s in all")
    return status


if __name__ == "__main__":
    sys.exit(main())
