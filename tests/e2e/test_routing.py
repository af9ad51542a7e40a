"""Routing: the client's database and user when the DSN names none, the DSN's when it does, and
PostgreSQL's own FATAL for a database or role that does not exist, compared with a direct connection."""

from __future__ import annotations

import re
import socket

import psycopg
import os

import pytest

import wire
from psql import run_psql
from support import wait_until

in_process_only = pytest.mark.skipif(os.environ.get("PGWIRE_PROXY_FIXTURE") == "process",
                                     reason="reads the in-process Proxy's stats/capture/faults API")

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


# ---- named routes -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def route_databases(pg_upstream):
    """Two databases, each with a table saying which it is."""
    for name in ("pgwp_route_alpha", "pgwp_route_beta"):
        if not pg_upstream.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]):
            pg_upstream.execute(f"CREATE DATABASE {name}")
        with psycopg.connect(pg_upstream.dsn_with(dbname=name), autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS which (name text)")
            conn.execute("TRUNCATE which")
            conn.execute("INSERT INTO which VALUES (%s)", [name])
    return "pgwp_route_alpha", "pgwp_route_beta"


def landed(proxy, dbname, **extra):
    """(current_database(), the `which` table's name or None) of a session asking for `dbname`."""
    with psycopg.connect(proxy.dsn_with(dbname=dbname, **extra), autocommit=True,
                         cursor_factory=psycopg.ClientCursor) as conn:
        database = conn.execute("SELECT current_database()").fetchone()[0]
        exists = conn.execute("SELECT to_regclass('which') IS NOT NULL").fetchone()[0]
        return database, conn.execute("SELECT name FROM which").fetchone()[0] if exists else None


def test_a_route_map_with_a_fallback(pg_upstream, pgwire_proxy_factory, route_databases):
    alpha, beta = route_databases
    proxy = pgwire_proxy_factory(bare_dsn(pg_upstream), databases={
        "app": pg_upstream.dsn_with(dbname=alpha, user=None),   # a name of its own for a real database
        "reports": f"{bare_dsn(pg_upstream)} dbname={beta}",
    })
    assert landed(proxy, "app") == (alpha, alpha)
    assert landed(proxy, "reports") == (beta, beta)
    # Anything else goes to the fallback under its own name (a bare DSN: the client's database).
    assert landed(proxy, beta) == (beta, beta)
    assert landed(proxy, "postgres") == ("postgres", None)


def test_without_a_fallback_unknown_names_get_3d000_as_postgresql_words_it(pg_upstream, pgwire_proxy_factory,
                                                                            route_databases):
    alpha, _ = route_databases
    proxy = pgwire_proxy_factory("", databases={"app": f"{bare_dsn(pg_upstream)} dbname={alpha}"})
    assert proxy.dsn_with(dbname="app")  # .dsn asks for the first route
    assert landed(proxy, "app") == (alpha, alpha)
    params = {"user": "postgres", "database": "pgwp_no_such_db"}
    direct = fatal_fields(pg_upstream.host, pg_upstream.port, params)
    proxied = fatal_fields(proxy.host, proxy.port, params)
    assert direct["C"] == "3D000"
    assert proxied == direct


@in_process_only
def test_fault_rules_match_the_routes_name(pg_upstream, pgwire_proxy_factory, route_databases):
    alpha, _ = route_databases
    proxy = pgwire_proxy_factory(bare_dsn(pg_upstream), databases={"app": f"{bare_dsn(pg_upstream)} dbname={alpha}"})
    proxy.add_fault("^select 'probe'", sqlstate="40001", message="only on the app route", database="app")
    with psycopg.connect(proxy.dsn_with(dbname="app"), autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        with pytest.raises(psycopg.errors.SerializationFailure, match="only on the app route"):
            conn.execute("select 'probe'")
    with psycopg.connect(proxy.dsn_with(dbname=alpha), autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        assert conn.execute("select 'probe'").fetchone() == ("probe",)


def test_databases_must_be_a_mapping(pg_upstream):
    from pgwire_proxy import Proxy
    with pytest.raises(TypeError, match="databases: expected a mapping"):
        Proxy(bare_dsn(pg_upstream), databases=["app=host=x"])
    with pytest.raises(ValueError, match="databases app: invalid connection option"):
        Proxy(bare_dsn(pg_upstream), databases={"app": "nonsense=1"})


def wait_for_log(proxy, pattern):
    return wait_until(lambda: re.search(pattern, proxy.stderr_text()), f"a log line matching {pattern!r}").group(0)


def test_routes_from_the_config_file_reload_on_sighup(pg_upstream, pgwire_proxy_process_factory, route_databases,
                                                       tmp_path):
    import os
    import signal
    alpha, beta = route_databases
    config = tmp_path / "routes.properties"
    config.write_text(f"database.1 = app={bare_dsn(pg_upstream)} dbname={alpha}\n")
    proxy = pgwire_proxy_process_factory(bare_dsn(pg_upstream), config=str(config))
    with psycopg.connect(proxy.dsn_with(dbname="app"), autocommit=True) as before:
        assert before.execute("SELECT current_database()").fetchone() == (alpha,)
        config.write_text(f"database.1 = app={bare_dsn(pg_upstream)} dbname={beta}\n"
                          f"database.2 = other={bare_dsn(pg_upstream)} dbname={alpha}\n")
        os.kill(proxy.process.pid, signal.SIGHUP)
        assert "changed=database" in wait_for_log(proxy, r"event=reloaded .*")
        # New sessions take the new routes; the open one stays where it is.
        assert landed(proxy, "app") == (beta, beta)
        assert landed(proxy, "other") == (alpha, alpha)
        assert before.execute("SELECT current_database()").fetchone() == (alpha,)
        # A broken route changes nothing.
        config.write_text("database.1 = app=nonsense_keyword=1\n")
        os.kill(proxy.process.pid, signal.SIGHUP)
        wait_for_log(proxy, r"event=reload_failed .*nonsense_keyword.*")
        assert landed(proxy, "app") == (beta, beta)
