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
import wire
from support import cancel_counts, connect, upstream_active as running, wait_until


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


def raw_session(proxy):
    """A raw session through `proxy`: (conn, pid, secret), the key being the one the proxy issued."""
    conn = wire.RawConnection(proxy.host, proxy.port, timeout=30)
    hello = conn.startup({"user": "postgres", "database": "postgres"})
    pid, secret = next(m.backend_key() for m in hello if m.kind == "K")
    return conn, pid, secret


LOCK_KEY = 7301


@pytest.fixture
def lock_holder(pg_upstream):
    """A direct connection holding advisory lock LOCK_KEY: a query waiting for it runs (upstream,
    state active) until the test releases it, so whether it was cancelled does not depend on timing."""
    holder = pg_upstream.connect()
    holder.execute("select pg_advisory_lock(%s)", [LOCK_KEY])
    yield holder
    holder.close()


def test_wrong_key_and_idle_cancels_do_nothing(pgwire_proxy_factory, pg_upstream, lock_holder):
    proxy = pgwire_proxy_factory(metrics_address="127.0.0.1:0")
    conn, pid, secret = raw_session(proxy)
    with conn:
        upstream_pid = int(wire.rows(conn.simple_query("select pg_backend_pid()"))[0][0])
        assert pid != upstream_pid  # the proxy's own key, not the upstream's
        before = cancel_counts(proxy)
        # Idle: a cancel with the right key has nothing to cancel; the next query is untouched.
        assert cancel_request(proxy.port, pid, secret) == b""
        assert wire.rows(conn.simple_query("select 'idle cancel ignored'")) == [["idle cancel ignored"]]

        # A query that runs until the lock is released (the xact lock ends with its statement).
        conn.send(wire.query(f"select pg_advisory_xact_lock({LOCK_KEY}), 'finished' /* wrong_key_probe */"))
        wait_until(lambda: running(pg_upstream, "wrong_key_probe"), what="the query to wait upstream")
        # The real pid with wrong secrets, the real secret with wrong pids (a neighbour id, the
        # upstream's own pid): closed silently. Each is fully handled (matched, and a match forwarded
        # upstream) before the proxy closes the connection.
        bad_keys = [(pid, secret ^ 1), (pid, secret ^ -0x80000000), (pid, 0),
                    (pid ^ 1, secret), (pid ^ 2, secret), (upstream_pid, secret)]
        for bad_pid, bad_secret in bad_keys:
            assert cancel_request(proxy.port, bad_pid, bad_secret) == b""
        after = cancel_counts(proxy)
        assert after["unmatched"] - before["unmatched"] == len(bad_keys)
        assert after["matched"] == before["matched"] and after["idle"] - before["idle"] == 1
        assert running(pg_upstream, "wrong_key_probe")
        # Released, the query completes: a cancel that had reached the upstream would have ended it
        # with 57014 instead (it waits for the lock until here, whatever the scheduling).
        lock_holder.execute("select pg_advisory_unlock(%s)", [LOCK_KEY])
        reply = conn.read_until_ready()
        assert not wire.errors_in(reply), reply
        assert wire.rows(reply) == [["", "finished"]]

        # The right key does cancel a running query: the requests above were refused for their key.
        lock_holder.execute("select pg_advisory_lock(%s)", [LOCK_KEY])
        conn.send(wire.query(f"select pg_advisory_xact_lock({LOCK_KEY}), 'finished' /* right_key_probe */"))
        wait_until(lambda: running(pg_upstream, "right_key_probe"), what="the query to wait upstream")
        assert cancel_request(proxy.port, pid, secret) == b""
        reply = conn.read_until_ready()
        error = wire.errors_in(reply)[0]
        assert error["C"] == "57014" and error["M"] == "canceling statement due to user request", reply
        assert cancel_counts(proxy)["matched"] - before["matched"] == 1
        assert not running(pg_upstream, "right_key_probe")
        assert wire.rows(conn.simple_query("select 1")) == [["1"]]


def test_cancel_of_a_closed_session_is_ignored(pgwire_proxy_factory, pg_upstream, lock_holder):
    proxy = pgwire_proxy_factory(metrics_address="127.0.0.1:0")
    closed, closed_pid, closed_secret = raw_session(proxy)
    with closed:
        closed_upstream = int(wire.rows(closed.simple_query("select pg_backend_pid()"))[0][0])
        closed.send(wire.terminate())
    # The session forgets its key before it closes its upstream connection: once that backend is
    # gone, the key is gone.
    wait_until(lambda: not pg_upstream.execute("select 1 from pg_stat_activity where pid = %s", [closed_upstream]),
               what="the closed session's upstream connection to end")

    conn, pid, secret = raw_session(proxy)
    with conn:
        assert (pid, secret) != (closed_pid, closed_secret)
        conn.send(wire.query(f"select pg_advisory_xact_lock({LOCK_KEY}), 'finished' /* closed_key_probe */"))
        wait_until(lambda: running(pg_upstream, "closed_key_probe"), what="the query to wait upstream")
        before = cancel_counts(proxy)
        # The closed session's real key: no such session any more (not "idle": not found at all).
        assert cancel_request(proxy.port, closed_pid, closed_secret) == b""
        after = cancel_counts(proxy)
        assert after["unmatched"] - before["unmatched"] == 1 and after["idle"] == before["idle"]
        assert after["matched"] == before["matched"]
        assert running(pg_upstream, "closed_key_probe")
        lock_holder.execute("select pg_advisory_unlock(%s)", [LOCK_KEY])
        reply = conn.read_until_ready()
        assert not wire.errors_in(reply) and wire.rows(reply) == [["", "finished"]], reply
