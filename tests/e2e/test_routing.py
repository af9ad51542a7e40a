"""Routing: the client's database and user when the DSN names none, the DSN's when it does, and
PostgreSQL's own FATAL for a database or role that does not exist, compared with a direct connection."""

from __future__ import annotations

import re
import socket

import psycopg
import pytest

import wire
from psql import run_psql
from support import wait_until

READ_TIMEOUT = 30.0
# ErrorResponse fields a proxy relays; PostgreSQL's F/L/R (source file, line, routine) it cannot know.
RELAYED_FIELDS = ("S", "V", "C", "M", "D", "H")


def startup_outcome(host, port, params):
    """Every message of a startup up to ReadyForQuery, or up to EOF after a FATAL."""
    with wire.RawConnection(host, port, timeout=READ_TIMEOUT) as conn:
        try:
            msgs = conn.startup(params)
            if not msgs or msgs[-1].kind != "Z":
                msgs += conn.read_until_eof()
        except socket.timeout:
            pytest.fail(f"no answer within {READ_TIMEOUT}s; buffered: {conn.buffer!r}")
    return msgs


def fatal_fields(host, port, params):
    msgs = startup_outcome(host, port, params)
    errors = [m for m in msgs if m.kind == "E"]
    assert errors and msgs[-1].kind == "E", msgs
    assert not any(m.kind in ("Z", "K") for m in msgs), msgs
    fields = errors[-1].error_fields()
    return {k: v for k, v in fields.items() if k in RELAYED_FIELDS}


def bare_dsn(pg_upstream) -> str:
    """The upstream's address and nothing else: user and database come from each client."""
    return f"host={pg_upstream.host} port={pg_upstream.port}"


def without_port(text: str) -> str:
    return re.sub(r"port \d+", "port <port>", text)


@pytest.fixture(scope="module")
def client_names(pg_upstream):
    """A role and a database of its own that only a client's startup packet names."""
    pg_upstream.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgwp_route_user') "
                        "THEN CREATE ROLE pgwp_route_user LOGIN; END IF; END $$")
    if not pg_upstream.execute("SELECT 1 FROM pg_database WHERE datname = 'pgwp_route_db'"):
        pg_upstream.execute("CREATE DATABASE pgwp_route_db OWNER pgwp_route_user")
    yield "pgwp_route_user", "pgwp_route_db"


def test_the_clients_user_and_database_when_the_dsn_names_none(pg_upstream, pgwire_proxy_factory, client_names):
    user, dbname = client_names
    proxy = pgwire_proxy_factory(bare_dsn(pg_upstream))
    with psycopg.connect(proxy.dsn_with(user=user, dbname=dbname), autocommit=True,
                         cursor_factory=psycopg.ClientCursor) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (user, dbname)
        assert conn.info.dbname == dbname
    # A startup packet without a database asks for the one named after the user, as PostgreSQL does.
    msgs = startup_outcome(proxy.host, proxy.port, {"user": "postgres"})
    assert msgs[-1].kind == "Z", msgs


def test_a_database_created_through_the_proxy_is_the_one_used(pg_upstream, pgwire_proxy_factory):
    # The Django-style walk: create a database through the proxy, connect to it, create a table.
    proxy = pgwire_proxy_factory(bare_dsn(pg_upstream))
    with psycopg.connect(proxy.dsn_with(dbname="postgres"), autocommit=True,
                         cursor_factory=psycopg.ClientCursor) as conn:
        conn.execute("DROP DATABASE IF EXISTS pgwp_route_app WITH (FORCE)")
        conn.execute("CREATE DATABASE pgwp_route_app")
    try:
        with psycopg.connect(proxy.dsn_with(dbname="pgwp_route_app"), autocommit=True,
                             cursor_factory=psycopg.ClientCursor) as conn:
            conn.execute("CREATE TABLE made_through_the_proxy (id int)")
        with psycopg.connect(pg_upstream.dsn_with(dbname="pgwp_route_app"), autocommit=True) as direct:
            assert direct.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'made_through_the_proxy'"
                                  ).fetchone() == (1,)
        assert not pg_upstream.execute("SELECT 1 FROM pg_tables WHERE tablename = 'made_through_the_proxy'")
    finally:
        pg_upstream.execute("DROP DATABASE IF EXISTS pgwp_route_app WITH (FORCE)")


def test_names_the_dsn_gives_win_and_are_logged_once(pg_upstream, pgwire_proxy_process_factory, client_names):
    user, dbname = client_names
    proxy = pgwire_proxy_process_factory(pg_upstream.dsn_with(user="postgres", dbname="postgres"))
    for _ in range(2):
        with psycopg.connect(proxy.dsn_with(user=user, dbname=dbname), autocommit=True) as conn:
            assert conn.execute("SELECT current_user, current_database()").fetchone() == ("postgres", "postgres")
    lines = [line for line in proxy.stderr_text().splitlines() if "event=route_names_fixed" in line]
    assert len(lines) == 1, proxy.stderr_text()
    assert "user=postgres" in lines[0] and "dbname=postgres" in lines[0], lines[0]


def test_a_bare_dsn_logs_no_fixed_names(pg_upstream, pgwire_proxy_process_factory):
    proxy = pgwire_proxy_process_factory(bare_dsn(pg_upstream))
    with psycopg.connect(proxy.dsn, autocommit=True) as conn:
        conn.execute("SELECT 1")
    wait_until(lambda: "event=listening" in proxy.stderr_text(), "the listening line")
    assert "route_names_fixed" not in proxy.stderr_text()


@pytest.mark.parametrize("params", [{"user": "postgres", "database": "pgwp_no_such_db"},
                                    {"user": "pgwp_no_such_role", "database": "postgres"}],
                         ids=["unknown-database", "unknown-role"])
def test_unknown_database_or_role_gets_postgresqls_own_fatal(pg_upstream, pgwire_proxy_factory, params):
    proxy = pgwire_proxy_factory(bare_dsn(pg_upstream))
    direct = fatal_fields(pg_upstream.host, pg_upstream.port, params)
    proxied = fatal_fields(proxy.host, proxy.port, params)
    assert direct["C"] in ("3D000", "28000"), direct
    assert proxied == direct


@pytest.mark.parametrize("dbname", ["pgwp_no_such_db"])
def test_psql_reports_an_unknown_database_as_direct(pg_upstream, pgwire_proxy_factory, dbname):
    proxy = pgwire_proxy_factory(bare_dsn(pg_upstream))
    direct = run_psql(pg_upstream.dsn_with(dbname=dbname), commands=["SELECT 1"])
    proxied = run_psql(proxy.dsn_with(dbname=dbname), commands=["SELECT 1"])
    assert direct.returncode == proxied.returncode == 2
    assert b"does not exist" in direct.stdout, direct.stdout
    assert without_port(proxied.stdout.decode()) == without_port(direct.stdout.decode())
