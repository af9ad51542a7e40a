"""Simple-query sessions through the proxy look exactly like direct ones (psql output, wire messages)."""

from __future__ import annotations

import difflib
import re
import socket
from pathlib import Path

import psycopg
import pytest

import wire
from psql import normalise, run_psql

SQL_DIR = Path(__file__).parent / "sql"
SCHEMA = "pgwp_t"


@pytest.fixture(scope="module")
def limited_role(pg_upstream):
    """A non-superuser role for the permission errors (SET ROLE target, or a login for the DSN)."""
    pg_upstream.execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgwp_limited') THEN "
        "CREATE ROLE pgwp_limited LOGIN; END IF; END $$")
    return "pgwp_limited"


def reset_schema(pg_upstream) -> None:
    pg_upstream.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    pg_upstream.execute(f"CREATE SCHEMA {SCHEMA}")


def diff(direct: bytes, proxied: bytes) -> str:
    lines = difflib.unified_diff(direct.decode(errors="replace").splitlines(),
                                 proxied.decode(errors="replace").splitlines(),
                                 "direct", "through the proxy", lineterm="", n=2)
    return "\n".join(list(lines)[:200])


def assert_same_psql_output(pg_upstream, proxy, *, prepare=reset_schema, **psql_kwargs) -> bytes:
    """Run psql the same way directly and through the proxy; outputs must match byte for byte."""
    prepare(pg_upstream)
    direct = run_psql(pg_upstream.dsn, **psql_kwargs)
    prepare(pg_upstream)
    proxied = run_psql(proxy.dsn, **psql_kwargs)
    a, b = normalise(direct.stdout), normalise(proxied.stdout)
    assert a == b, "psql output differs:\n" + diff(a, b)
    assert direct.returncode == proxied.returncode
    return a


@pytest.mark.parametrize("script", sorted(p.name for p in SQL_DIR.glob("*.sql")))
def test_psql_script_output_is_identical(pg_upstream, pgwire_proxy, limited_role, script):
    output = assert_same_psql_output(pg_upstream, pgwire_proxy, file=str(SQL_DIR / script))
    # The comparison is only meaningful if the script really ran against a server.
    assert re.search(rb"\(\d+ rows?\)", output), output.decode(errors="replace")[:2000]


def test_scripts_exercise_what_they_claim(pg_upstream, limited_role):
    """Guards the comparison above against vacuous scripts: key outputs appear in direct runs."""
    expectations = {
        "notices_notify.sql": [b'Asynchronous notification "chan" with payload "payload \xc3\xbc" received',
                               b"NOTICE:  00000: notice 1 here", b"HINT:  a hint", b"WARNING:  01000: careful"],
        "transactions.sql": [b"25P02", b"t4", b"(10 rows)", b"doubled"],
        "statements.sql": [b"42501", b"23505", b"SCHEMA NAME:  sch", b"42601", b"after empty"],
        "parameters.sql": [b"22P05", b"renamed by SET", b"Asia/Kolkata", b"P1Y2DT3H4M5S"],
        "describe.sql": [b"in euros", b"items_price_idx", b"add_one", b"List of databases"],
        "types.sql": [b"\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e", b"(2000 rows)", b"0.30000000000000004", b"-9223372036854775808"],
    }
    for script, needles in expectations.items():
        reset_schema(pg_upstream)
        out = run_psql(pg_upstream.dsn, file=str(SQL_DIR / script)).stdout
        for needle in needles:
            assert needle in out, f"{script}: {needle!r} missing from direct output"


def test_single_query_with_many_statements_via_dash_c(pg_upstream, pgwire_proxy):
    # psql -c sends the whole string as one Query message.
    assert_same_psql_output(pg_upstream, pgwire_proxy, prepare=lambda pg: None, commands=[
        "SELECT 1 AS a; SELECT 'two' AS b; BEGIN; SELECT 1/0; SELECT 4; COMMIT",
        "SELECT 5 AS after_failed_query; ;; SELECT 6",
    ])


def test_startup_parameters_reach_the_upstream(pg_upstream, pgwire_proxy):
    env = {"PGOPTIONS": "-c search_path=pgwp_opts,public -c work_mem=5MB -c extra_float_digits=-2",
           "PGTZ": "Europe/Paris", "PGDATESTYLE": "SQL, DMY", "PGAPPNAME": "startup-test"}
    output = assert_same_psql_output(pg_upstream, pgwire_proxy, prepare=lambda pg: None, env=env, commands=[
        "SHOW search_path", "SHOW work_mem", "SHOW TimeZone", "SHOW DateStyle", "SHOW extra_float_digits",
        "SELECT timestamptz '2024-06-01 12:00:00+00' AS t, date '2024-06-01' AS d, pi() AS pi",
    ])
    for expected in (b"pgwp_opts,public", b"5MB", b"Europe/Paris", b"SQL, DMY", b"-2",
                     b"01/06/2024 14:00:00 CEST", b"| 3.14159265359\n"):
        assert expected in output, output.decode()


@pytest.mark.parametrize("appname", [None, "my-app"])
def test_upstream_application_name_names_proxy_and_client(pgwire_proxy, appname):
    env = {"PGAPPNAME": appname} if appname else {}
    result = run_psql(pgwire_proxy.dsn, env=env, extra_args=["-A", "-t"], commands=[
        "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"])
    assert result.returncode == 0, result.stdout
    assert result.stdout.decode().strip() == f"pgwire-proxy/{appname or 'psql'}@127.0.0.1"


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_an_ipv6_listener_serves_clients_and_names_them_by_their_ipv6_address(pgwire_proxy_factory):
    # The loops accept themselves and format the peer's address (inet_ntop for IPv6): the upstream's
    # audit name says "::1", as PostgreSQL's client_addr would for a direct IPv6 client.
    proxy = pgwire_proxy_factory(listen_address="::1")
    assert proxy.host == "::1"
    result = run_psql(proxy.dsn, extra_args=["-A", "-t"], commands=[
        "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()",
        "SELECT 6 * 7"])
    assert result.returncode == 0, result.stdout
    assert result.stdout.decode().split("\n")[:2] == ["pgwire-proxy/psql@::1", "42"]


def test_client_is_told_its_own_application_name(pg_upstream, pgwire_proxy):
    with psycopg.connect(pgwire_proxy.dsn, autocommit=True, application_name="told-app") as conn:
        assert conn.info.parameter_status("application_name") == "told-app"
        # The upstream session carries the audit name, visible to anyone watching pg_stat_activity.
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        seen = pg_upstream.execute("SELECT application_name FROM pg_stat_activity WHERE pid = %s", [pid])
        assert seen == [("pgwire-proxy/told-app@127.0.0.1",)]


def test_permission_errors_for_a_non_superuser_upstream_login(pg_upstream, pgwire_proxy_factory, limited_role):
    reset_schema(pg_upstream)
    pg_upstream.execute(f"CREATE TABLE {SCHEMA}.secret (x int)")
    proxy = pgwire_proxy_factory(pg_upstream.dsn_with(user=limited_role))
    commands = ["SELECT current_user, session_user", "SHOW is_superuser", f"SELECT * FROM {SCHEMA}.secret",
                "CREATE DATABASE pgwp_nope", "SET ROLE postgres", "SELECT pg_reload_conf()",
                "CREATE SCHEMA pgwp_nope_schema"]
    direct = run_psql(pg_upstream.dsn_with(user=limited_role), commands=commands)
    proxied = run_psql(proxy.dsn, commands=commands)
    a, b = normalise(direct.stdout), normalise(proxied.stdout)
    assert a == b, "psql output differs:\n" + diff(a, b)
    assert a.count(b"42501") >= 4, a.decode()


def _transcript(host: str, port: int, statements) -> list:
    """(message kinds, ReadyForQuery status, SQLSTATEs) for each simple Query, over one raw session."""
    out = []
    with wire.RawConnection(host, port) as conn:
        startup = conn.startup({"user": "postgres", "database": "postgres", "application_name": "raw"})
        assert startup and startup[-1].kind == "Z", startup
        for sql in statements:
            msgs = conn.simple_query(sql)
            out.append((wire.kinds(msgs), msgs[-1].body, [e["C"] for e in wire.errors_in(msgs)]))
        conn.send(wire.terminate())
    return out


def test_wire_messages_and_transaction_status_match_direct(pg_upstream, pgwire_proxy):
    statements = ["", ";", "  ", "SELECT 1", "BEGIN", "SELECT 1/0", "SELECT 1", "ROLLBACK",
                  "BEGIN; SELECT 1", "COMMIT", "SELECT 1; SELECT 2", "SELECT 1/0; SELECT 2", "SET TimeZone = 'UTC'",
                  "DO $$ BEGIN RAISE NOTICE 'n'; END $$", "LISTEN wire_chan; NOTIFY wire_chan, 'p'"]
    direct = _transcript(pg_upstream.host, pg_upstream.port, statements)
    proxied = _transcript(pgwire_proxy.host, pgwire_proxy.port, statements)
    assert proxied == direct
    # and the direct transcript is what PostgreSQL is known to send
    assert direct[0] == ("IZ", b"I", []) and direct[1] == ("IZ", b"I", [])
    assert [t[1] for t in direct[4:8]] == [b"T", b"E", b"E", b"I"]
    assert direct[6][2] == ["25P02"]


def test_client_encoding_parameter_status_is_relayed(pgwire_proxy):
    with psycopg.connect(pgwire_proxy.dsn, autocommit=True, client_encoding="LATIN1") as conn:
        assert conn.info.parameter_status("client_encoding") == "LATIN1"
        assert conn.execute("SELECT chr(233)").fetchone()[0] == "é"
        conn.execute("SET client_encoding = 'UTF8'")
        assert conn.info.parameter_status("client_encoding") == "UTF8"
        conn.execute("SET TimeZone = 'Pacific/Auckland'")
        assert conn.info.parameter_status("TimeZone") == "Pacific/Auckland"
        conn.execute("SET DateStyle = 'German'")
        assert conn.info.parameter_status("DateStyle") == "German, DMY"
