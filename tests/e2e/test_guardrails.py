"""Guardrails: statement timeout and the proxy's backstop, row and byte limits, deny and allow lists."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg import errors
from psycopg.pq import TransactionStatus

from psql import run_psql
from support import connect, upstream_active, wait_until
from wire import RawConnection, errors_in, kinds, query


def rows(conn, sql):
    return conn.execute(sql).fetchall()


# ---- row limit -----------------------------------------------------------------------------------

@pytest.fixture
def row_limited(pgwire_proxy_factory):
    return pgwire_proxy_factory(max_rows=10)


def test_rows_at_and_below_the_limit_pass(row_limited):
    with connect(row_limited) as conn:
        assert len(rows(conn, "select generate_series(1, 10)")) == 10
        assert len(rows(conn, "select generate_series(1, 9)")) == 9


def test_rows_above_the_limit_are_refused_with_54000_and_the_session_goes_on(row_limited, pg_upstream):
    with connect(row_limited) as conn:
        with pytest.raises(errors.ProgramLimitExceeded) as excinfo:
            conn.execute("select generate_series(1, 11)")
        diag = excinfo.value.diag
        assert diag.sqlstate == "54000"
        assert "10 rows" in diag.message_primary
        assert diag.message_hint
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert rows(conn, "select 'still usable'") == [("still usable",)]


def test_a_huge_result_is_cancelled_upstream(row_limited, pg_upstream):
    # The 54000 comes only after the upstream's ReadyForQuery, so an idle backend afterwards proves
    # nothing by itself: what must be shown is that the statement stopped short of its natural end.
    # Each row takes 10 ms upstream and takes a number from a sequence (nextval is never rolled back):
    # run to its end the statement would last 10 s and leave the sequence at 1000.
    with connect(row_limited) as conn:
        (upstream_pid,), = rows(conn, "select pg_backend_pid()")
        conn.execute("create temporary sequence huge_probe_rows")
        with pytest.raises(errors.ProgramLimitExceeded):
            conn.execute("select nextval('huge_probe_rows'), repeat('x', 1000), pg_sleep(0.01) "
                         "from generate_series(1, 1000) /* huge_probe */")
        assert not upstream_active(pg_upstream, "huge_probe")
        # The upstream produced the 11th row (the breach) and stopped soon after: it was cancelled,
        # not left streaming rows into the void until its end.
        (produced,), = rows(conn, "select last_value from huge_probe_rows")
        assert 11 <= produced < 1000, produced
        # By a cancel on the same upstream connection, not by closing it.
        assert rows(conn, "select pg_backend_pid()") == [(upstream_pid,)]


def test_a_notification_that_comes_with_a_breached_statements_end_still_reaches_the_client(row_limited, pg_upstream):
    """The relay drops what follows a row-limit breach until ReadyForQuery (the rows, the cancel's
    error); a NotificationResponse that comes meanwhile is the client's all the same, as direct."""
    def raw_messages(target):
        with psycopg.connect(pg_upstream.dsn, autocommit=True) as other, \
                RawConnection(target.host, target.port) as raw:
            assert raw.startup({"user": row_limited.user, "database": row_limited.dbname})[-1].kind == "Z"
            raw.simple_query("LISTEN pgwp_breach")
            other.execute("SELECT pg_advisory_lock(4343)")
            # Its first row waits for the lock, so the NOTIFY commits while the statement runs.
            raw.send(query("SELECT g FROM generate_series(1, 5000) g "
                           "WHERE pg_advisory_lock_shared(4343) IS NOT NULL /* pgwp_breach */"))
            wait_until(lambda: upstream_active(pg_upstream, "/* pgwp_breach */"), "the statement to wait")
            other.execute("NOTIFY pgwp_breach, 'during'")
            other.execute("SELECT pg_advisory_unlock(4343)")
            return raw.read_until_ready()

    direct = raw_messages(pg_upstream)
    proxied = raw_messages(row_limited)
    assert kinds(direct).endswith("CAZ")  # 5000 rows, then the notification before ReadyForQuery
    assert [e["C"] for e in errors_in(proxied)] == ["54000"]
    assert kinds(proxied).endswith(("AEZ", "EAZ"))  # the proxy's error where the rest was dropped
    notified = [m for m in proxied if m.kind == "A"]
    assert len(notified) == 1 and notified[0].body.endswith(b"pgwp_breach\0during\0")


def test_breach_inside_a_transaction_leaves_it_aborted(row_limited):
    with connect(row_limited) as conn:
        conn.execute("begin")
        with pytest.raises(errors.ProgramLimitExceeded):
            conn.execute("select generate_series(1, 11)")
        assert conn.info.transaction_status == TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.execute("rollback")
        assert conn.info.transaction_status == TransactionStatus.IDLE
        assert rows(conn, "select 2") == [(2,)]


def test_limits_count_per_statement_in_a_multi_statement_query(row_limited):
    with connect(row_limited) as conn:
        # Two statements of 10 rows each: each is within its own budget.
        conn.execute("select generate_series(1, 10); select generate_series(1, 10)")
        with pytest.raises(errors.ProgramLimitExceeded):
            conn.execute("select generate_series(1, 5); select generate_series(1, 11)")
        assert rows(conn, "select 3") == [(3,)]


def test_psql_shows_the_limit_error(row_limited):
    out = run_psql(row_limited.dsn, commands=["select generate_series(1, 11)", "select 'next' as after"])
    text = out.stdout.decode()
    assert "ERROR:  54000: result exceeds the proxy's row limit of 10 rows (max-rows)" in text
    assert "next" in text


# ---- byte limit ----------------------------------------------------------------------------------

def test_bytes_just_below_at_and_above_the_limit(pgwire_proxy_factory):
    proxy = pgwire_proxy_factory(max_bytes="1kB", max_rows=0)
    # A one-column text DataRow is 'D' + int32 length + int16 count + int32 size + value = value + 11 bytes.
    with connect(proxy) as conn:
        assert rows(conn, "select repeat('x', 1012)")[0][0] == "x" * 1012
        assert rows(conn, "select repeat('x', 1013)")[0][0] == "x" * 1013  # exactly 1024 bytes
        with pytest.raises(errors.ProgramLimitExceeded) as excinfo:
            conn.execute("select repeat('x', 1014)")
        assert "1kB" in excinfo.value.diag.message_primary
        assert rows(conn, "select 'ok'") == [("ok",)]


def test_zero_turns_the_limits_off(pgwire_proxy_factory):
    proxy = pgwire_proxy_factory(max_rows=0, max_bytes=0)
    with connect(proxy) as conn:
        assert len(rows(conn, "select generate_series(1, 20000)")) == 20000


def test_default_row_limit_is_10000(pgwire_proxy_process_factory):
    # The binary's default (the test fixtures turn the limits off unless a test asks).
    with connect(pgwire_proxy_process_factory()) as conn:
        assert len(rows(conn, "select generate_series(1, 10000)")) == 10000
        with pytest.raises(errors.ProgramLimitExceeded):
            conn.execute("select generate_series(1, 10001)")


# ---- time limits ---------------------------------------------------------------------------------

def test_statement_timeout_comes_from_the_proxy(pgwire_proxy_factory):
    proxy = pgwire_proxy_factory(query_timeout="1s")
    with connect(proxy) as conn:
        assert rows(conn, "show statement_timeout") == [("1s",)]
        with pytest.raises(errors.QueryCanceled) as excinfo:
            conn.execute("select pg_sleep(30)")
        assert "statement timeout" in excinfo.value.diag.message_primary
        assert rows(conn, "select 1") == [(1,)]


def test_a_clients_lower_statement_timeout_in_its_options_wins(pgwire_proxy_factory):
    proxy = pgwire_proxy_factory(query_timeout="30s")
    # libpq's options, as psql, psycopg and pgjdbc send them.
    with psycopg.connect(proxy.dsn, autocommit=True, options="-c statement_timeout=1500ms") as conn:
        assert rows(conn, "show statement_timeout") == [("1500ms",)]
        with pytest.raises(errors.QueryCanceled) as excinfo:
            conn.execute("select pg_sleep(30)")
        assert "statement timeout" in excinfo.value.diag.message_primary


def test_a_clients_lower_statement_timeout_as_a_startup_parameter_wins(pgwire_proxy_factory):
    proxy = pgwire_proxy_factory(query_timeout="30s")
    # A startup parameter of its own, as asyncpg's server_settings and node-pg's statement_timeout send it.
    with RawConnection(proxy.host, proxy.port) as raw:
        raw.startup({"user": "postgres", "database": "postgres", "statement_timeout": "1500"})
        shown = [m.data_row() for m in raw.simple_query("show statement_timeout") if m.kind == "D"]
        assert shown == [["1500ms"]]


def test_a_clients_higher_statement_timeout_gives_way_to_the_proxys(pgwire_proxy_factory):
    proxy = pgwire_proxy_factory(query_timeout="2s")
    with psycopg.connect(proxy.dsn, autocommit=True, options="-c statement_timeout=1h") as conn:
        assert rows(conn, "show statement_timeout") == [("2s",)]
    with psycopg.connect(proxy.dsn, autocommit=True, options="-c statement_timeout=0") as conn:
        assert rows(conn, "show statement_timeout") == [("2s",)]  # 0 is "no timeout": the proxy's wins


def test_backstop_cancels_a_query_that_escaped_statement_timeout(pgwire_proxy_factory, pg_upstream):
    proxy = pgwire_proxy_factory(query_timeout="1s")
    with connect(proxy) as conn:
        conn.execute("set statement_timeout = 0")  # the client turns the server-side timeout off
        with pytest.raises(errors.QueryCanceled) as excinfo:
            conn.execute("select pg_sleep(60) /* backstop_probe */")
        assert "proxy's query timeout of 1s" in excinfo.value.diag.message_primary
        assert not upstream_active(pg_upstream, "backstop_probe")
        assert rows(conn, "select 1") == [(1,)]


# ---- deny and allow lists ------------------------------------------------------------------------

def test_deny_pattern_refuses_with_42501_naming_the_rule(pgwire_proxy_factory, pg_upstream):
    proxy = pgwire_proxy_factory(deny=[r"^[[:space:]]*drop[[:space:]]", "pg_terminate_backend"],
                                 patterns_ignore_case=True)
    pg_upstream.execute("create table if not exists guarded_table (a int)")
    with connect(proxy) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as excinfo:
            conn.execute("  DROP TABLE guarded_table")
        assert "drop" in excinfo.value.diag.message_primary
        assert rows(conn, "select count(*) from guarded_table") == [(0,)]  # still there, session usable
    assert pg_upstream.execute("select to_regclass('guarded_table') is not null") == [(True,)]


def test_allow_list_lets_only_matching_queries_through(pgwire_proxy_factory, tmp_path):
    patterns = tmp_path / "allow.txt"
    patterns.write_text("# read-only access\n^select \n\n^show \n")
    proxy = pgwire_proxy_factory(allow_file=[str(patterns)])
    with connect(proxy) as conn:
        assert rows(conn, "select 1") == [(1,)]
        assert rows(conn, "show server_encoding") == [("UTF8",)]
        with pytest.raises(errors.InsufficientPrivilege) as excinfo:
            conn.execute("create table not_allowed (a int)")
        assert "allow" in excinfo.value.diag.message_primary
        assert rows(conn, "select 2") == [(2,)]


def test_invalid_pattern_fails_startup_naming_it(pgwire_proxy_factory):
    with pytest.raises(Exception) as excinfo:
        pgwire_proxy_factory(deny=["drop("])
    assert "drop(" in str(excinfo.value)


def test_breaches_are_logged_with_session_limit_duration_and_excerpt(pgwire_proxy_process_factory):
    proxy = pgwire_proxy_process_factory(max_rows=1, deny=["forbidden"])
    with connect(proxy) as conn:
        with pytest.raises(errors.ProgramLimitExceeded):
            conn.execute("select generate_series(1, 2) /* logged_probe */")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("select 'forbidden'")
    log = proxy.stderr_text()
    breach = [line for line in log.splitlines() if "event=query_failed" in line and "outcome=limit_rows" in line]
    assert breach, log
    for field in ("session=", "sqlstate=54000", "max-rows", "query_seconds=", "logged_probe"):
        assert field in breach[0], (field, breach[0])
    denied = [line for line in log.splitlines() if "event=query_failed" in line and "outcome=denied" in line]
    assert denied and "forbidden" in denied[0] and "sqlstate=42501" in denied[0], log
