"""The driver matrix: each real driver runs the same workload (tests/e2e/drivers/) direct against
PostgreSQL and through the proxy in relay mode (extended_protocol="relay", no row or byte limit), and
must print the same transcript: values, types, row counts, checksums, SQLSTATEs and messages.

The workload, per driver in its own idiom: parameters of several types; a 20,000-row result (count and
checksum); a transaction rolled back; errors, in and out of a transaction block, with the session still
working; a 1 MiB text parameter (and a 1 MiB value back); a cursor or stream that fails mid-way and at
once, then another query on the same connection; statement/portal Close (deallocate, evicted cached
statements, cursors left early), then more queries. Every script runs under a timeout, so a hang
fails its case instead of stalling the suite.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

DRIVERS_DIR = Path(__file__).resolve().parent / "drivers"
NODE_MODULES = DRIVERS_DIR / "node_modules"
JDBC_JAR = Path("/usr/share/java/postgresql.jar")
PYTHON = "/usr/bin/python3"  # Debian's, with the python3-* driver packages
TIMEOUT = 30  # a run takes 0.1-5 s direct; a hang fails after this
STEPS = ["params", "rows", "transaction", "error", "big_param", "failed_cursor", "close"]


def python_module(name: str) -> bool:
    return subprocess.run([PYTHON, "-c", f"import {name}"], capture_output=True).returncode == 0


# name: (command before the connection arguments, why it cannot run here or None)
def _drivers():
    def needs(ok: bool, what: str):
        return None if ok else f"{what} is not installed (scripts/install-deps.sh installs it)"
    node = shutil.which("node") is not None
    return {
        "psycopg2": ([PYTHON, "psycopg2_driver.py"], needs(python_module("psycopg2"), "python3-psycopg2")),
        "psycopg": ([PYTHON, "psycopg_driver.py"], needs(python_module("psycopg"), "python3-psycopg")),
        "asyncpg": ([PYTHON, "asyncpg_driver.py"], needs(python_module("asyncpg"), "python3-asyncpg")),
        "sqlalchemy": ([PYTHON, "sqlalchemy_driver.py"],
                       needs(python_module("sqlalchemy") and python_module("psycopg2"), "python3-sqlalchemy")),
        "node-pg": (["node", "node_pg.js"], needs(node and (NODE_MODULES / "pg-query-stream").is_dir(),
                                                  "node or tests/e2e/drivers/node_modules")),
        "postgres.js": (["node", "postgres_js.js"], needs(node and (NODE_MODULES / "postgres").is_dir(),
                                                          "node or tests/e2e/drivers/node_modules")),
        "pgjdbc": (["java", "-cp", str(JDBC_JAR), "Pgjdbc.java"],
                   needs(shutil.which("java") is not None and JDBC_JAR.exists(),
                         "default-jdk-headless or libpostgresql-jdbc-java")),
        "ruby-pg": (["ruby", "ruby_pg.rb"], needs(shutil.which("ruby") is not None and subprocess.run(
            ["ruby", "-e", "require 'pg'"], capture_output=True).returncode == 0, "ruby-pg")),
        "dbd-pg": (["perl", "dbd_pg.pl"], needs(subprocess.run(
            ["perl", "-MDBD::Pg", "-e", "1"], capture_output=True).returncode == 0, "libdbd-pg-perl")),
        "pgcli": ([PYTHON, "pgcli_driver.py"], needs(shutil.which("pgcli") is not None and python_module("pexpect"),
                                                      "pgcli or python3-pexpect")),
    }


DRIVERS = _drivers()


def run_driver(name: str, host: str, port: int, user: str, dbname: str, password=None) -> str:
    command, _ = DRIVERS[name]
    env = dict(os.environ, PGPASSWORD=password) if password else None
    try:
        result = subprocess.run([*command, host, str(port), user, dbname], cwd=DRIVERS_DIR, capture_output=True,
                                text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        done = [line.split(" ", 1)[0] for line in out.splitlines()]
        pending = next((step for step in STEPS if step not in done), "the end")
        pytest.fail(f"{name} to {host}:{port} hung: no exit after {TIMEOUT}s, in step {pending!r} "
                    f"(steps done: {done})\n--- stdout ---\n{out[-4000:]}\n--- stderr ---\n{err[-4000:]}",
                    pytrace=False)
    if result.returncode != 0 or not result.stdout.endswith("done\n"):
        pytest.fail(f"{name} to {host}:{port} exited with {result.returncode}\n--- stdout ---\n"
                    f"{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}", pytrace=False)
    return result.stdout


@pytest.mark.parametrize("driver", list(DRIVERS))
def test_driver_sees_the_same_through_the_relay_as_direct(driver, pg_upstream, pgwire_proxy_factory):
    missing = DRIVERS[driver][1]
    if missing:
        pytest.skip(missing)
    password = getattr(pg_upstream, "password", None)
    direct = run_driver(driver, pg_upstream.host, pg_upstream.port, pg_upstream.user, pg_upstream.dbname, password)
    # The workload itself, checked on the direct run, so that an empty or broken script cannot pass.
    assert [line.split(" ", 1)[0] for line in direct.splitlines()] == STEPS + ["done"]
    for expected in ("1048576", "b561f87202d04959e37588ee05cf5b10", "division by zero",
                     "drivers_no_such_table" if driver != "pgcli" else "after the cursor"):
        assert expected in direct, f"{driver}'s direct transcript lacks {expected!r}"
    proxy = pgwire_proxy_factory(extended_protocol="relay", max_rows=0, max_bytes=0)
    proxied = run_driver(driver, proxy.host, proxy.port, proxy.user, proxy.dbname, password)
    assert proxied.splitlines() == direct.splitlines()


@pytest.mark.parametrize("driver", list(DRIVERS))
def test_driver_sees_the_same_on_a_reused_upstream_as_direct(driver, pg_upstream, pgwire_proxy_process_factory):
    """--reuse-upstream: the driver's second run gets the backends its first run left (reset with
    DISCARD ALL) and must print what it prints direct; the reuse counter proves they were reused."""
    import re
    import urllib.request

    from test_metrics_logs import metrics_port

    missing = DRIVERS[driver][1]
    if missing:
        pytest.skip(missing)
    password = getattr(pg_upstream, "password", None)
    direct = run_driver(driver, pg_upstream.host, pg_upstream.port, pg_upstream.user, pg_upstream.dbname, password)
    proxy = pgwire_proxy_process_factory(extended_protocol="relay", max_rows=0, max_bytes=0, reuse_upstream=True,
                                         metrics_address="127.0.0.1:0")
    port = metrics_port(proxy)

    def reused() -> int:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        return int(re.search(r"^pgwire_proxy_upstream_reused_total (\d+)", text, re.M).group(1))

    first = run_driver(driver, proxy.host, proxy.port, proxy.user, proxy.dbname, password)
    assert first.splitlines() == direct.splitlines()
    before = reused()
    second = run_driver(driver, proxy.host, proxy.port, proxy.user, proxy.dbname, password)
    assert second.splitlines() == direct.splitlines()
    assert reused() > before, f"{driver}'s second run got no reused backend"
