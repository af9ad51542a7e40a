"""Upstream failures reach the client as a FATAL ErrorResponse with the right SQLSTATE, then a close."""

from __future__ import annotations

import os
import socket

import psycopg
import pytest

import wire
from pgwire_proxy.cluster import free_port
from tcp_relay import TcpRelay

READ_TIMEOUT = 30.0


def fatal_at_startup(proxy, params=None) -> dict:
    """Connect with a normal startup packet; expect one FATAL ErrorResponse and EOF, nothing else."""
    with wire.RawConnection(proxy.host, proxy.port, timeout=READ_TIMEOUT) as conn:
        try:
            msgs = conn.startup(params)
            rest = conn.read_until_eof()
        except socket.timeout:
            pytest.fail(f"no FATAL+EOF within {READ_TIMEOUT}s; buffered: {conn.buffer!r}")
    msgs = msgs + rest
    errors = [m for m in msgs if m.kind == "E"]
    assert errors, f"expected a FATAL ErrorResponse, got {msgs}"
    assert msgs[-1].kind == "E", f"the error must be the last message before EOF: {msgs}"
    # Nothing that would let a client believe it is connected.
    assert not any(m.kind in ("Z", "K") for m in msgs), msgs
    fields = errors[-1].error_fields()
    assert fields["S"] == "FATAL", fields
    return fields


def test_upstream_unreachable(pgwire_proxy_factory):
    port = free_port()  # nothing listens there
    proxy = pgwire_proxy_factory(f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=5")
    fields = fatal_at_startup(proxy)
    assert fields["C"] == "08006", fields
    # the proxy is still up and answers the next client the same way
    assert fatal_at_startup(proxy)["C"] == "08006"


def test_a_dsn_whose_first_host_refuses_connects_through_the_next(pg_upstream, pgwire_proxy_factory):
    # libpq closes the refused attempt's socket and opens the next, usually with the same number: the
    # loop must register the new socket although number and wanted events look unchanged.
    dead = free_port()  # nothing listens there
    proxy = pgwire_proxy_factory(f"host=127.0.0.1,{pg_upstream.host} port={dead},{pg_upstream.port} "
                                 f"user={pg_upstream.user} dbname={pg_upstream.dbname} connect_timeout=10",
                                 connect_timeout="10s")
    for attempt in range(5):  # descriptor numbers come back between sessions: several in a row
        with psycopg.connect(proxy.dsn, autocommit=True, cursor_factory=psycopg.ClientCursor,
                             connect_timeout=10) as conn:
            assert conn.execute("select %s::int", (attempt,)).fetchone() == (attempt,)


def test_upstream_missing_database(pg_upstream, pgwire_proxy_factory):
    proxy = pgwire_proxy_factory(pg_upstream.dsn_with(dbname="pgwp_no_such_database"))
    fields = fatal_at_startup(proxy)
    assert fields["C"] == "3D000", fields
    assert "pgwp_no_such_database" in fields["M"], fields


def test_upstream_missing_role(pg_upstream, pgwire_proxy_factory):
    proxy = pgwire_proxy_factory(pg_upstream.dsn_with(user="pgwp_no_such_role"))
    fields = fatal_at_startup(proxy)
    assert fields["C"] == "28000", fields


@pytest.fixture(scope="module")
def password_role(pg_upstream):
    """A role that must authenticate with SCRAM (a pg_hba.conf line for it alone, before the trust lines)."""
    if not pg_upstream.throwaway:
        pytest.skip("needs to edit pg_hba.conf of the throwaway cluster")
    pg_upstream.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgwp_pw') THEN "
                        "CREATE ROLE pgwp_pw LOGIN; END IF; END $$")
    pg_upstream.execute("SET password_encryption = 'scram-sha-256'; ALTER ROLE pgwp_pw PASSWORD 'right pw'")
    pg_upstream.add_hba_rule("host all pgwp_pw 127.0.0.1/32 scram-sha-256")
    # the rule is in force: directly, a wrong password fails
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(pg_upstream.dsn_with(user="pgwp_pw", password="wrong"))
    return "pgwp_pw"


def test_upstream_wrong_password(pg_upstream, pgwire_proxy_factory, password_role):
    proxy = pgwire_proxy_factory(pg_upstream.dsn_with(user=password_role, password="wrong"))
    fields = fatal_at_startup(proxy)
    assert fields["C"] == "28P01", fields


def test_upstream_password_from_environment(pg_upstream, pgwire_proxy_process_factory, password_role):
    # No password in argv: the DSN comes from PGWIRE_PROXY_UPSTREAM_DSN.
    env = dict(os.environ, PGWIRE_PROXY_UPSTREAM_DSN=pg_upstream.dsn_with(user=password_role,
                                                                          password="right pw"))
    proxy = pgwire_proxy_process_factory(use_upstream=False, env=env)
    assert not any("right pw" in arg for arg in proxy.argv)
    with psycopg.connect(proxy.dsn, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (password_role,)


def test_upstream_lost_mid_session(pg_upstream, pgwire_proxy_factory):
    with TcpRelay(pg_upstream.host, pg_upstream.port) as relay:
        proxy = pgwire_proxy_factory(relay.dsn(pg_upstream))
        with wire.RawConnection(proxy.host, proxy.port, timeout=READ_TIMEOUT) as conn:
            assert conn.startup()[-1].kind == "Z"
            assert wire.rows(conn.simple_query("SELECT 1")) == [["1"]]
            relay.cut_all()
            try:
                conn.send(wire.query("SELECT 2"))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the proxy may already have said goodbye
            try:
                msgs = conn.read_until_eof()
            except socket.timeout:
                pytest.fail(f"proxy neither answered nor closed within {READ_TIMEOUT}s: {conn.buffer!r}")
        errors = wire.errors_in(msgs)
        assert errors and errors[-1]["S"] == "FATAL" and errors[-1]["C"] == "08006", msgs
        assert msgs[-1].kind == "E", msgs
        # the server carries on: a new session through a healthy relay connection works
        with psycopg.connect(proxy.dsn, autocommit=True) as conn:
            assert conn.execute("SELECT 3").fetchone() == (3,)


def test_upstream_backend_terminated(pg_upstream, pgwire_proxy):
    # The upstream says why it goes (57P01); the client gets that FATAL error and the session ends.
    with wire.RawConnection(pgwire_proxy.host, pgwire_proxy.port, timeout=READ_TIMEOUT) as conn:
        assert conn.startup({"user": "postgres", "database": "postgres",
                             "application_name": "to-be-killed"})[-1].kind == "Z"
        pid = int(wire.rows(conn.simple_query("SELECT pg_backend_pid()"))[0][0])
        assert pg_upstream.execute("SELECT pg_terminate_backend(%s, 10000)", [pid]) == [(True,)]
        try:
            conn.send(wire.query("SELECT 2"))
        except (BrokenPipeError, ConnectionResetError):
            pass
        msgs = conn.read_until_eof()
    errors = wire.errors_in(msgs)
    assert errors and all(e["S"] == "FATAL" for e in errors), msgs
    assert errors[0]["C"] in ("57P01", "08006"), msgs
    assert not wire.rows(msgs), msgs
    with psycopg.connect(pgwire_proxy.dsn, autocommit=True) as conn:
        assert conn.execute("SELECT 3").fetchone() == (3,)
