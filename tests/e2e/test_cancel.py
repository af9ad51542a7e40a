"""Cancel requests through the proxy: psql's Ctrl+C, psycopg's cancel(), the cancel race, bad keys."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pexpect
import psycopg
import pytest
from psycopg import errors

from psql import psql_env
from support import connect, upstream_active as running, wait_until


def test_psql_ctrl_c_cancels_the_running_query(pgwire_proxy, pg_upstream):
    child = pexpect.spawn("psql", ["-X", "-d", pgwire_proxy.dsn], env=psql_env(), encoding="utf-8", timeout=20)
    try:
        child.expect(r"=# ")
        child.sendline("select pg_sleep(30) /* ctrl_c_probe */;")
        wait_until(lambda: running(pg_upstream, "ctrl_c_probe"), what="the query to run upstream")
        child.sendintr()
        child.expect("canceling statement due to user request", timeout=10)
        child.expect(r"=# ")
        child.sendline("select 40 + 2 as answer;")
        child.expect(r"\b42\b")
        child.expect(r"=# ")
        assert not running(pg_upstream, "ctrl_c_probe")
        child.sendline(r"\q")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)


def test_psycopg_cancel_and_the_session_goes_on(pgwire_proxy, pg_upstream):
    with connect(pgwire_proxy) as conn:
        def cancel_when_running():
            wait_until(lambda: running(pg_upstream, "psycopg_cancel_probe"), what="the query upstream")
            conn.cancel()

        canceller = threading.Thread(target=cancel_when_running)
        canceller.start()
        with pytest.raises(errors.QueryCanceled) as excinfo:
            conn.execute("select pg_sleep(30) /* psycopg_cancel_probe */")
        canceller.join()
        assert excinfo.value.diag.sqlstate == "57014"
        assert conn.execute("select 1").fetchone() == (1,)
    # pg_stat_activity: the cancelled query is no longer running upstream.
    assert not running(pg_upstream, "psycopg_cancel_probe")


def test_cancel_never_hits_a_later_query(pgwire_proxy):
    """Many fast queries, each raced by a cancel; the query after each race must never be cancelled."""
    iterations = 150
    cancelled_first = 0
    with connect(pgwire_proxy) as conn:
        for i in range(iterations):
            canceller = threading.Thread(target=conn.cancel)
            canceller.start()
            try:
                # Query lengths around a cancel's round trip, so some cancels land during the
                # query, some as it finishes, some after.
                conn.execute(f"select pg_sleep({(i % 6) * 0.002}), {i}")
            except errors.QueryCanceled:
                cancelled_first += 1  # the race was won by the cancel: fine, it hit its own query
            canceller.join()
            # The cancel call has returned: whatever it did is over. This query must be untouched.
            assert conn.execute(f"select 'after {i}'").fetchone() == (f"after {i}",), f"iteration {i}"
    # The race must really have been run both ways, or the test proves nothing.
    print(f"{cancelled_first}/{iterations} races cancelled their own query")
    assert 0 < cancelled_first < iterations


def cancel_request(port: int, pid: int, secret: int) -> bytes:
    """Sends a raw CancelRequest; returns what the proxy answered before closing (PostgreSQL: nothing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(struct.pack("!iiii", 16, 80877102, pid, secret))
        chunks = []
        while True:
            data = s.recv(4096)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def test_wrong_key_and_idle_cancels_do_nothing(pgwire_proxy, pg_upstream):
    with connect(pgwire_proxy) as conn:
        pid = conn.info.backend_pid  # the proxy's id, not the upstream's
        upstream_pid = conn.execute("select pg_backend_pid()").fetchone()[0]
        assert pid != upstream_pid
        # Idle: a cancel with the right key has nothing to cancel.
        conn.cancel()
        assert conn.execute("select 'idle cancel ignored'").fetchone() == ("idle cancel ignored",)

        done = threading.Event()
        outcome = {}

        def run_query():
            try:
                outcome["rows"] = conn.execute("select pg_sleep(1.5), 'finished' /* wrong_key_probe */").fetchone()
            except Exception as exc:  # noqa: BLE001 - recorded for the assertion below
                outcome["error"] = exc
            done.set()

        worker = threading.Thread(target=run_query)
        worker.start()
        wait_until(lambda: running(pg_upstream, "wrong_key_probe"), what="the query upstream")
        # Wrong secret, unknown pid, the upstream's own pid: closed silently, the query runs on.
        for bad_pid, bad_secret in [(pid, 12345), (pid ^ 1, 0), (upstream_pid, 0)]:
            assert cancel_request(pgwire_proxy.port, bad_pid, bad_secret) == b""
        worker.join(30)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["rows"][1] == "finished"
        assert conn.execute("select 1").fetchone() == (1,)


def test_cancel_of_a_closed_session_is_ignored(pgwire_proxy):
    conn = connect(pgwire_proxy)
    key = (conn.info.backend_pid,)
    conn.close()
    assert cancel_request(pgwire_proxy.port, key[0], 0) == b""
    with connect(pgwire_proxy) as again:
        assert again.execute("select 1").fetchone() == (1,)
