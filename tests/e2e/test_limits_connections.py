"""--max-connections: the client past the limit gets FATAL 53300 before any upstream connection;
a slot frees when a client leaves; a burst of concurrent clients is served correctly."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

import wire
from tcp_relay import TcpRelay

READ_TIMEOUT = 20.0


def connect(proxy, **kwargs) -> psycopg.Connection:
    return psycopg.connect(proxy.dsn, autocommit=True, cursor_factory=psycopg.ClientCursor, **kwargs)


def rejected_fields(proxy) -> dict:
    """Startup past the limit: exactly one FATAL ErrorResponse, then EOF."""
    with wire.RawConnection(proxy.host, proxy.port, timeout=READ_TIMEOUT) as conn:
        msgs = conn.startup()
        msgs += conn.read_until_eof()
    assert [m.kind for m in msgs] == ["E"], msgs
    return msgs[0].error_fields()


def wait_for(predicate, what: str, timeout: float = 15.0):
    """Poll until predicate() is truthy (asynchronous clean-up on the proxy's side)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def test_client_past_the_limit_gets_53300_without_upstream_connection(pg_upstream, pgwire_proxy_factory):
    with TcpRelay(pg_upstream.host, pg_upstream.port) as relay:
        proxy = pgwire_proxy_factory(relay.dsn(pg_upstream), max_connections=2)
        first, second = connect(proxy), connect(proxy)
        try:
            assert relay.accepted == 2
            fields = rejected_fields(proxy)
            assert fields["S"] == "FATAL" and fields["C"] == "53300", fields
            assert "too many connections" in fields["M"], fields
            assert relay.accepted == 2, "an upstream connection was opened for a rejected client"
            # psycopg sees the same refusal
            with pytest.raises(psycopg.OperationalError, match="too many connections"):
                connect(proxy)
            # the admitted sessions are unaffected
            assert first.execute("SELECT 1").fetchone() == (1,)
            assert second.execute("SELECT 2").fetchone() == (2,)
        finally:
            first.close()
            second.close()
        assert relay.accepted == 2


def test_slot_is_freed_when_a_client_leaves(pgwire_proxy_factory):
    proxy = pgwire_proxy_factory(max_connections=2)
    first, second = connect(proxy), connect(proxy)
    try:
        assert rejected_fields(proxy)["C"] == "53300"
        first.close()  # sends Terminate

        def admitted():
            try:
                return connect(proxy)
            except psycopg.OperationalError as exc:
                # until the proxy has noticed, the only acceptable failure is the limit itself
                assert "too many connections" in str(exc), exc
                return None

        third = wait_for(admitted, "a new client to be admitted after one left")
        try:
            assert third.execute("SELECT 'third'").fetchone() == ("third",)
            assert rejected_fields(proxy)["C"] == "53300"  # and the limit still holds
        finally:
            third.close()
    finally:
        second.close()


def test_slot_is_freed_when_a_client_vanishes_without_terminate(pgwire_proxy_factory):
    proxy = pgwire_proxy_factory(max_connections=1)
    conn = wire.RawConnection(proxy.host, proxy.port, timeout=READ_TIMEOUT)
    assert conn.startup()[-1].kind == "Z"
    conn.close()  # no Terminate message: just a closed socket

    def admitted():
        try:
            return connect(proxy)
        except psycopg.OperationalError as exc:
            assert "too many connections" in str(exc), exc
            return None

    with wait_for(admitted, "the slot of a vanished client to be freed") as again:
        assert again.execute("SELECT 1").fetchone() == (1,)


def test_upstream_connection_released_when_client_leaves(pg_upstream, pgwire_proxy):
    conn = connect(pgwire_proxy, application_name="release-probe")
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    conn.close()
    wait_for(lambda: pg_upstream.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid])
             == [(0,)], f"upstream backend {pid} to go away")


def test_burst_of_concurrent_clients(pg_upstream, pgwire_proxy):
    clients = 40
    barrier = threading.Barrier(clients)
    results: dict = {}
    failures: list = []

    def client(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            with connect(pgwire_proxy, application_name=f"burst-{i}") as conn:
                row = conn.execute(
                    "SELECT %s::int AS i, repeat(chr(97 + %s %% 26), %s) AS s, pg_backend_pid(), "
                    "current_setting('application_name')", [i, i, i * 10]).fetchone()
                results[i] = row
        except BaseException as exc:  # collected and reported below
            failures.append((i, repr(exc)))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures
    assert sorted(results) == list(range(clients))
    for i, (value, text, _pid, appname) in results.items():
        assert value == i and text == chr(97 + i % 26) * (i * 10), (i, value, text)
        assert appname == f"pgwire-proxy/burst-{i}@127.0.0.1"
    # one upstream backend per client
    assert len({row[2] for row in results.values()}) == clients
