"""The handshake: SSL/GSS encryption refused with 'N', the startup answer as PostgreSQL would give it,
with the proxy's own BackendKeyData."""

from __future__ import annotations

import time

import psycopg
import pytest

import wire
from psql import run_psql
from support import cpu_seconds, wait_until
from tcp_relay import TcpRelay

PARAMS = {"user": "postgres", "database": "postgres", "application_name": "startup-probe",
          "client_encoding": "UTF8", "DateStyle": "ISO, DMY", "TimeZone": "Europe/Lisbon",
          "IntervalStyle": "sql_standard", "extra_float_digits": "2"}


def handshake(host, port, params=PARAMS):
    """(messages up to ReadyForQuery, the connection, still open)."""
    conn = wire.RawConnection(host, port, timeout=20)
    return conn.startup(params), conn


@pytest.mark.parametrize("requests", [[wire.ssl_request()], [wire.gssenc_request()],
                                      [wire.gssenc_request(), wire.ssl_request()]],
                         ids=["ssl", "gssenc", "gssenc-then-ssl"])
def test_encryption_requests_answered_n(pgwire_proxy, requests):
    with wire.RawConnection(pgwire_proxy.host, pgwire_proxy.port, timeout=20) as conn:
        # libpq sends GSSENCRequest, then after 'N' an SSLRequest: one 'N' for each, in order.
        for request in requests:
            conn.send(request)
            assert conn.read_byte() == b"N"
        msgs = conn.startup(PARAMS)
        assert msgs and msgs[0].kind == "R" and msgs[0].body == b"\0\0\0\0", msgs  # AuthenticationOk
        assert msgs[-1].kind == "Z" and msgs[-1].body == b"I", msgs
        assert wire.rows(conn.simple_query("SELECT 'encrypted? no'")) == [["encrypted? no"]]


@pytest.mark.parametrize("sslmode,gssencmode", [("prefer", "disable"), ("disable", "prefer"),
                                                ("allow", "disable")])
def test_libpq_negotiation_modes(pgwire_proxy, sslmode, gssencmode):
    dsn = pgwire_proxy.dsn_with(sslmode=sslmode, gssencmode=gssencmode)
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_sslmode_require_fails_cleanly(pgwire_proxy):
    # Until client TLS exists, a client that insists on it must be told so, not hang.
    with pytest.raises(psycopg.OperationalError, match="(?i)ssl"):
        psycopg.connect(pgwire_proxy.dsn_with(sslmode="require", connect_timeout=10))


def test_parameter_status_matches_a_direct_connection(pg_upstream, pgwire_proxy):
    def statuses(host, port):
        msgs, conn = handshake(host, port)
        with conn:
            assert msgs[-1].kind == "Z", msgs
            assert not wire.errors_in(msgs), msgs
            keys = [m for m in msgs if m.kind == "K"]
            assert len(keys) == 1, msgs
            return dict(m.parameter_status() for m in msgs if m.kind == "S")

    direct = statuses(pg_upstream.host, pg_upstream.port)
    proxied = statuses(pgwire_proxy.host, pgwire_proxy.port)
    assert proxied == direct
    # the client's own startup parameters are what it is told
    assert proxied["application_name"] == "startup-probe"
    assert proxied["DateStyle"] == "ISO, DMY" and proxied["TimeZone"] == "Europe/Lisbon"
    assert proxied["IntervalStyle"] == "sql_standard"


def test_startup_parameters_apply_to_the_upstream_session(pgwire_proxy):
    msgs, conn = handshake(pgwire_proxy.host, pgwire_proxy.port)
    with conn:
        rows = wire.rows(conn.simple_query(
            "SELECT current_setting('DateStyle'), current_setting('TimeZone'), "
            "current_setting('IntervalStyle'), current_setting('extra_float_digits'), "
            "current_user, current_database()"))
    assert rows == [["ISO, DMY", "Europe/Lisbon", "sql_standard", "2", "postgres", "postgres"]]


def test_the_dsns_user_and_database_win_over_the_clients(pg_upstream, pgwire_proxy_factory):
    # A DSN that names the user and database decides them, whatever the client asks for (test_routing.py
    # has the client's own names when the DSN gives none; the fixtures' proxies name no database).
    proxy = pgwire_proxy_factory(pg_upstream.dsn)
    params = {"user": "someone_else", "database": "some_other_db"}
    msgs, conn = handshake(proxy.host, proxy.port, params=params)
    with conn:
        assert msgs[-1].kind == "Z", msgs
        rows = wire.rows(conn.simple_query("SELECT current_user, current_database()"))
    assert rows == [[pg_upstream.user, pg_upstream.dbname]]


def test_backend_key_is_the_proxys_own(pgwire_proxy):
    keys = []
    for _ in range(3):
        msgs, conn = handshake(pgwire_proxy.host, pgwire_proxy.port)
        with conn:
            (key,) = [m.backend_key() for m in msgs if m.kind == "K"]
            upstream_pid = int(wire.rows(conn.simple_query("SELECT pg_backend_pid()"))[0][0])
            assert key[0] != upstream_pid, "the upstream's backend pid reached the client"
            keys.append(key)
    assert len(set(keys)) == 3, keys


def test_psql_connects_with_default_settings(pgwire_proxy):
    # psql's defaults include sslmode=prefer and gssencmode=prefer (when built with GSSAPI).
    result = run_psql(pgwire_proxy.dsn, extra_args=["-A", "-t"], commands=["SELECT 'hello from psql'"])
    assert result.stdout == b"hello from psql\n", result.stdout


def test_port_already_in_use_is_an_error(pgwire_proxy, pgwire_proxy_factory, pgwire_proxy_process_factory):
    # A second proxy must not share the first one's port (SO_REUSEPORT would split clients between them).
    with pytest.raises(RuntimeError, match="cannot listen on"):
        second = pgwire_proxy_factory(port=pgwire_proxy.port)
        pytest.fail(f"second proxy started on the busy port {pgwire_proxy.port}: {second!r}")
    # The binary refuses too, and exits non-zero.
    with pytest.raises(RuntimeError, match="exited with code"):
        second = pgwire_proxy_process_factory(port=pgwire_proxy.port)
        pytest.fail(f"second proxy process started on the busy port {pgwire_proxy.port}: {second!r}")


def test_a_client_that_sends_its_query_with_the_startup_packet_waits_without_spinning(pg_upstream,
                                                                                    pgwire_proxy_process_factory):
    """Bytes sent before AuthenticationOk wait in the kernel while the upstream connect is under way
    (a level-triggered wake for them at every wait would spin a core), then are served in order."""
    startup = wire.startup_packet({"user": pg_upstream.user, "database": pg_upstream.dbname})
    with wire.RawConnection(pg_upstream.host, pg_upstream.port) as direct:
        direct.send(startup + wire.query("select 7"))
        expected = direct.read_until_ready() + direct.read_until_ready()
    with TcpRelay(pg_upstream.host, pg_upstream.port) as relay:
        proxy = pgwire_proxy_process_factory(relay.dsn(pg_upstream))
        relay.hold()
        with wire.RawConnection(proxy.host, proxy.port) as conn:
            conn.send(startup)
            wait_until(lambda: relay.accepted == 1, "the proxy's upstream connect")
            conn.send(wire.query("select 7"))  # arrives while the connect waits: the socket stays readable
            before = cpu_seconds(proxy.process.pid)
            time.sleep(1.0)
            assert cpu_seconds(proxy.process.pid) - before < 0.3
            relay.release()
            got = conn.read_until_ready() + conn.read_until_ready()
    assert wire.kinds(got) == wire.kinds(expected) and wire.rows(got) == wire.rows(expected) == [["7"]], \
        (wire.kinds(got), wire.kinds(expected))
