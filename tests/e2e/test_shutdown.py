"""Graceful shutdown of the binary: running queries finish, idle clients get 57P01, new connections are
refused, the process exits 0 within --shutdown-timeout, and nothing is left upstream."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import pexpect
import psycopg
import pytest
from psycopg import errors

from psql import psql_env
from support import connect, upstream_active as running, wait_until


def upstream_backends(pg_upstream, marker: str = "pgwire-proxy/%") -> list:
    return pg_upstream.execute(
        "select pid, state, query from pg_stat_activity where application_name like %s", [marker])


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            return False
    except ConnectionResetError:
        # A handshake the listener's shutdown caught half-way: not yet the clean refusal; try again.
        return False
    except ConnectionRefusedError:
        return True


def test_sigterm_drains_running_queries_and_ends_idle_sessions(pgwire_proxy_process_factory, pg_upstream):
    proxy = pgwire_proxy_process_factory(shutdown_timeout="20s")
    shell = pexpect.spawn("psql", ["-X", "-d", proxy.dsn], env=psql_env(), encoding="utf-8", timeout=20)
    busy = connect(proxy)
    result = {}

    def long_query():
        try:
            result["rows"] = busy.execute("select pg_sleep(2), 'drained' /* drain_probe */").fetchall()
        except Exception as exc:  # noqa: BLE001 - asserted below
            result["error"] = exc

    try:
        shell.expect(r"=# ")
        worker = threading.Thread(target=long_query)
        worker.start()
        wait_until(lambda: running(pg_upstream, "drain_probe"), "the query to run upstream")
        started = time.monotonic()
        os.kill(proxy.process.pid, signal.SIGTERM)
        # New connections are refused at once, while the running query is still running.
        wait_until(lambda: refused(proxy.port), "the listener to close")
        assert running(pg_upstream, "drain_probe"), "the running query was not allowed to finish"
        worker.join(30)
        assert result.get("rows") == [("", "drained")], result  # its result arrived in full
        # The idle psql was told why its session ended.
        shell.sendline("select 1;")
        shell.expect(["57P01", "shutting down"])
        assert proxy.process.wait(20) == 0
        assert time.monotonic() - started < 20
    finally:
        shell.close(force=True)
        busy.close()
    # No upstream backend of the proxy is left.
    wait_until(lambda: not upstream_backends(pg_upstream), "the upstream connections to close")


def test_shutdown_timeout_cancels_what_is_still_running(pgwire_proxy_process_factory, pg_upstream):
    proxy = pgwire_proxy_process_factory(shutdown_timeout="1s")
    with connect(proxy) as conn:
        outcome = {}

        def long_query():
            try:
                conn.execute("select pg_sleep(60) /* overdue_probe */")
            except Exception as exc:  # noqa: BLE001
                outcome["error"] = exc

        worker = threading.Thread(target=long_query)
        worker.start()
        wait_until(lambda: running(pg_upstream, "overdue_probe"), "the query to run upstream")
        os.kill(proxy.process.pid, signal.SIGTERM)
        assert proxy.process.wait(15) == 0  # well before the query's 60 seconds
        worker.join(10)
        assert isinstance(outcome.get("error"), psycopg.OperationalError), outcome
        assert "shutting down" in str(outcome["error"]) or "57P01" in str(getattr(outcome["error"], "sqlstate", ""))
    wait_until(lambda: not running(pg_upstream, "overdue_probe"), "the upstream query to be cancelled")
    wait_until(lambda: not upstream_backends(pg_upstream), "the upstream connections to close")


def test_a_second_signal_makes_shutdown_immediate(pgwire_proxy_process_factory, pg_upstream):
    proxy = pgwire_proxy_process_factory(shutdown_timeout="60s")
    with connect(proxy) as conn:
        worker = threading.Thread(target=lambda: pytest.raises(psycopg.Error, conn.execute,
                                                               "select pg_sleep(60) /* second_signal_probe */"))
        worker.start()
        wait_until(lambda: running(pg_upstream, "second_signal_probe"), "the query to run upstream")
        os.kill(proxy.process.pid, signal.SIGTERM)
        wait_until(lambda: refused(proxy.port), "the listener to close")
        os.kill(proxy.process.pid, signal.SIGINT)
        assert proxy.process.wait(15) == 0
        worker.join(10)
    wait_until(lambda: not running(pg_upstream, "second_signal_probe"), "the upstream query to be cancelled")
    log = proxy.stderr_text()
    assert "event=shutdown_immediate" in log, log


def test_the_57p01_of_a_requested_shutdown_is_logged_at_info(pgwire_proxy_process_factory):
    """A client cut off by SIGTERM (or Proxy.stop(), the fixtures' teardown) is what was asked for: its
    proxy_error 57P01 is an info line, while the proxy's other refusals stay warnings."""
    proxy = pgwire_proxy_process_factory(log_format="json")
    with psycopg.connect(proxy.dsn, autocommit=True) as refused_extended:  # server-side binding: Parse, 0A000
        with pytest.raises(errors.FeatureNotSupported):
            refused_extended.execute("select %s::int", [1])
    idle = connect(proxy)
    try:
        assert idle.execute("select 1").fetchone() == (1,)
        os.kill(proxy.process.pid, signal.SIGTERM)
        assert proxy.process.wait(15) == 0
    finally:
        idle.close()
    events = [json.loads(line) for line in proxy.stderr_text().splitlines() if line.startswith("{")]
    errors_logged = {(e["sqlstate"], e["level"]) for e in events if e["event"] == "proxy_error"}
    assert ("57P01", "INFO") in errors_logged and ("57P01", "WARNING") not in errors_logged, events
    assert ("0A000", "WARNING") in errors_logged, events
