"""What the proxy refuses (extended protocol, function calls, COPY) and that the session survives it.

psycopg 3.1 facts these tests rely on (psycopg/cursor.py, connection.py):
- Cursor.execute(sql) without parameters uses the simple protocol (PQsendQuery); with parameters,
  binary=True or prepare=True it uses the extended protocol (PQsendQueryParams / PQsendPrepare).
  After prepare_threshold (5) runs of the same query the default cursor prepares it (extended too).
- ClientCursor binds parameters client-side and always uses the simple protocol.
- BEGIN/COMMIT issued by the connection itself (autocommit=False) go through PQsendQueryParams, i.e.
  the extended protocol, so clients of the proxy use autocommit=True and explicit BEGIN/COMMIT.
- Cursor.copy() sends the COPY statement with the simple protocol.
"""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors
from psycopg.pq import TransactionStatus

import wire
from pgwire_proxy.pytest_plugin import SEED_DEFAULTS
from psql import run_psql


@pytest.fixture
def pgwire_proxy(pgwire_proxy_factory):
    """This module tests the binary's default mode (--protocol=simple), which refuses what the test
    fixtures otherwise relay."""
    return pgwire_proxy_factory(**SEED_DEFAULTS)


def connect(proxy) -> psycopg.Connection:
    return psycopg.connect(proxy.dsn, autocommit=True)


def assert_usable(conn: psycopg.Connection) -> None:
    cur = psycopg.ClientCursor(conn)
    assert cur.execute("SELECT %s::int + 1 AS answer", [41]).fetchone() == (42,)
    assert conn.info.transaction_status == TransactionStatus.IDLE


@pytest.mark.parametrize("how", ["parameters", "binary", "prepare"])
def test_extended_protocol_refused_then_connection_usable(pgwire_proxy, how):
    with connect(pgwire_proxy) as conn:
        cur = conn.cursor()  # psycopg's default, server-side binding cursor
        with pytest.raises(errors.FeatureNotSupported) as excinfo:
            if how == "parameters":
                cur.execute("SELECT %s::int", [1])
            elif how == "binary":
                cur.execute("SELECT 1", binary=True)
            else:
                cur.execute("SELECT 1", prepare=True)
        diag = excinfo.value.diag
        assert diag.sqlstate == "0A000"
        assert diag.severity_nonlocalized == "ERROR"  # not FATAL: the session goes on
        assert diag.message_primary
        assert_usable(conn)
        # the simple protocol through the default cursor works as well
        assert cur.execute("SELECT 'simple'").fetchone() == ("simple",)


def test_extended_protocol_refused_inside_a_transaction(pgwire_proxy):
    with connect(pgwire_proxy) as conn:
        conn.execute("CREATE TEMP TABLE tx_probe (a int)")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO tx_probe VALUES (1)")
        with pytest.raises(errors.FeatureNotSupported):
            conn.execute("INSERT INTO tx_probe VALUES (%s)", [2])
        conn.execute("ROLLBACK")
        assert_usable(conn)
        assert conn.execute("SELECT count(*) FROM tx_probe").fetchone() == (0,)


def _raw_session(proxy) -> wire.RawConnection:
    conn = wire.RawConnection(proxy.host, proxy.port, timeout=15)
    msgs = conn.startup()
    assert msgs and msgs[-1].kind == "Z", msgs
    return conn


def test_extended_messages_discarded_until_sync(pg_upstream, pgwire_proxy):
    pg_upstream.execute("DROP TABLE IF EXISTS pgwp_refused_probe")
    with _raw_session(pgwire_proxy) as conn:
        # One batch: an extended-protocol cycle, its Sync, then a simple Query.
        conn.send(wire.parse("CREATE TABLE pgwp_refused_probe (a int)") + wire.bind() + wire.describe_portal()
                  + wire.execute() + wire.close_statement() + wire.flush() + wire.sync()
                  + wire.query("SELECT 'after' AS a"))
        first = conn.read_until_ready()
        assert wire.kinds(first) == "EZ", first
        error = first[0].error_fields()
        assert error["C"] == "0A000" and error["S"] == "ERROR", error
        assert first[1].body == b"I"
        second = conn.read_until_ready()
        assert wire.kinds(second) == "TDCZ", second
        assert wire.rows(second) == [["after"]]
        conn.send(wire.terminate())
    # Nothing of the refused cycle reached the upstream.
    assert pg_upstream.execute("SELECT to_regclass('pgwp_refused_probe') IS NULL") == [(True,)]


def test_function_call_refused_then_usable(pgwire_proxy):
    with _raw_session(pgwire_proxy) as conn:
        # A FunctionCall is its own cycle (libpq's PQfn sends no Sync): the answer ends with ReadyForQuery.
        conn.send(wire.function_call())
        msgs = conn.read_until_ready()
        assert wire.kinds(msgs) == "EZ", msgs
        assert msgs[0].error_fields()["C"] == "0A000"
        assert wire.rows(conn.simple_query("SELECT 7")) == [["7"]]


@pytest.mark.parametrize("command", ["COPY (SELECT g FROM generate_series(1, 200000) g) TO STDOUT",
                                     r"\copy (SELECT 1 AS copied_value) to stdout"])
def test_psql_copy_out_refused(pgwire_proxy, command):
    result = run_psql(pgwire_proxy.dsn, commands=[command, "SELECT 'still here' AS status"])
    out = result.stdout.decode()
    assert "ERROR:  0A000:" in out, out
    assert "still here" in out, out
    assert "\n1\n" not in out and "copied_value" not in out, out


@pytest.mark.parametrize("command", ["COPY pgwp_copy_in FROM STDIN", r"\copy pgwp_copy_in from stdin"])
def test_psql_copy_in_refused(pgwire_proxy, command):
    result = run_psql(pgwire_proxy.dsn, input=b"1\n2\n\\.\n", commands=[
        "CREATE TEMP TABLE pgwp_copy_in (a int)", command,
        "SELECT count(*) AS copied_rows FROM pgwp_copy_in", "SELECT 'still here' AS status"])
    out = result.stdout.decode()
    assert "ERROR:  0A000:" in out, out
    assert " copied_rows \n-------------\n           0\n" in out, out
    assert "still here" in out, out


def test_psycopg_copy_to_stdout_refused(pgwire_proxy):
    with connect(pgwire_proxy) as conn:
        cur = conn.cursor()
        with pytest.raises(errors.FeatureNotSupported):
            with cur.copy("COPY (SELECT g FROM generate_series(1, 200000) g) TO STDOUT") as copy:
                list(copy.rows())
        assert_usable(conn)


def test_psycopg_copy_from_stdin_refused(pgwire_proxy):
    with connect(pgwire_proxy) as conn:
        conn.execute("CREATE TEMP TABLE copy_target (a int)")
        cur = conn.cursor()
        with pytest.raises(errors.FeatureNotSupported):
            with cur.copy("COPY copy_target FROM STDIN") as copy:
                copy.write_row((1,))
                copy.write_row((2,))
        assert_usable(conn)
        assert conn.execute("SELECT count(*) FROM copy_target").fetchone() == (0,)
        # the upstream is idle and consistent: a transaction works normally afterwards
        conn.execute("BEGIN")
        conn.execute("INSERT INTO copy_target VALUES (3)")
        conn.execute("COMMIT")
        assert conn.execute("SELECT array_agg(a) FROM copy_target").fetchone() == ([3],)


def test_close_is_answered_in_the_default_mode(pgwire_proxy, pg_upstream):
    """node-pg with pg-query-stream closes its portal after a refused stream: CloseComplete, as
    PostgreSQL answers a Close of something that does not exist, and the session goes on."""
    with _raw_session(pgwire_proxy) as conn:
        conn.send(wire.close_portal("stream") + wire.close_statement("nothing") + wire.flush())
        closed = conn.read_until("3")
        closed += conn.read_until("3")
        assert wire.kinds(closed) == "33", closed
        conn.send(wire.query("select 'after close'"))
        after = conn.read_until_ready()
        assert wire.kinds(after) == "TDCZ" and wire.rows(after) == [["after close"]]


def test_a_query_after_a_refusal_without_sync_is_answered(pgwire_proxy):
    with _raw_session(pgwire_proxy) as conn:
        conn.send(wire.parse("select 1") + wire.bind() + wire.execute() + wire.flush())
        refused = conn.read_until("E")
        assert refused[-1].error_fields()["C"] == "0A000"
        conn.send(wire.query("select 'served'"))
        served = conn.read_until_ready()
        assert wire.kinds(served) == "TDCZ" and wire.rows(served) == [["served"]]
