"""--reuse-upstream: a finished session's upstream connection, reset with DISCARD ALL, serves the next
client of the same database, user and startup parameters; never one left in a transaction, failed,
cancelled or opened for other parameters; a bounded idle pool with an idle timeout. Off (the default)
keeps one upstream connection per client. Each test proves reuse happened (the same backend pid)
before it asserts what the next client must not see of the previous one."""

from __future__ import annotations

import time

import psycopg
import pytest
from psycopg import errors

import wire
from support import cancelled_while_running, wait_until


def backend_pid(dsn: str, **kwargs) -> int:
    with psycopg.connect(dsn, autocommit=True, **kwargs) as conn:
        return conn.execute("SELECT pg_backend_pid()").fetchone()[0]


def wait_parked(pg_upstream, pid: int) -> None:
    """The reset runs after the client has gone: a parked backend idles after its DISCARD ALL."""
    wait_until(lambda: pg_upstream.execute("SELECT state, query FROM pg_stat_activity WHERE pid = %s",
                                           [pid]) == [("idle", "DISCARD ALL")], f"backend {pid} to be parked")


def wait_closed(pg_upstream, pid: int) -> None:
    """Not reusable: the backend ends (a parked one would idle for the 60 s idle timeout)."""
    wait_until(lambda: not pg_upstream.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]),
               f"backend {pid} to be closed, not parked")


def audit_backends(pg_upstream, proxy) -> list:
    """The upstream backends this proxy holds (its audit application_name names the proxy's clients)."""
    return [row[0] for row in pg_upstream.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'pgwire-proxy/%%' AND datname = %s "
        "AND pid <> pg_backend_pid()", [proxy.dbname])]


@pytest.fixture
def reuse_proxy(pgwire_proxy_factory):
    return pgwire_proxy_factory(reuse_upstream=True)


def test_off_by_default_every_client_gets_its_own_backend(pgwire_proxy_factory):
    proxy = pgwire_proxy_factory()
    first = backend_pid(proxy.dsn)
    second = backend_pid(proxy.dsn)
    assert first != second


def test_the_next_client_gets_the_reset_backend_and_none_of_the_last_ones_state(reuse_proxy, pg_upstream):
    proxy = reuse_proxy
    with psycopg.connect(pg_upstream.dsn, autocommit=True) as direct:
        default_timezone = direct.execute("SHOW TimeZone").fetchone()[0]
    timezone = "Asia/Tokyo" if default_timezone != "Asia/Tokyo" else "Europe/Lisbon"
    with psycopg.connect(proxy.dsn, autocommit=True, application_name="first-client") as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        conn.execute("CREATE TEMP TABLE reuse_leftover (id int)")
        conn.execute("PREPARE reuse_plan AS SELECT 1")
        conn.execute(f"SET TimeZone = '{timezone}'")
        conn.execute("SET search_path = pg_catalog")
        conn.execute("SELECT pg_advisory_lock(4242)")
        conn.execute("LISTEN reuse_channel")
    wait_parked(pg_upstream, pid)
    with psycopg.connect(proxy.dsn, autocommit=True, application_name="second-client") as conn:
        assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] == pid, "not reused"
        assert conn.execute("SELECT count(*) FROM pg_class WHERE relname = 'reuse_leftover'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
        assert conn.execute("SHOW TimeZone").fetchone()[0] == default_timezone
        assert conn.execute("SHOW search_path").fetchone()[0] != "pg_catalog"
        assert conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = %s",
                            [pid]).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_listening_channels()").fetchone() == (0,)
        # What the client was told at startup is the reset backend's, and its own application_name.
        assert conn.info.parameter_status("TimeZone") == default_timezone
        assert conn.info.parameter_status("application_name") == "second-client"
        assert conn.execute("SHOW application_name").fetchone()[0].startswith("pgwire-proxy/second-client@")
    # Parked again, it has its first client's name back (what DISCARD ALL resets it to).
    wait_parked(pg_upstream, pid)
    assert pg_upstream.execute("SELECT application_name FROM pg_stat_activity WHERE pid = %s",
                               [pid])[0][0].startswith("pgwire-proxy/first-client@")


def test_a_reused_startup_says_what_a_fresh_one_says(reuse_proxy, pgwire_proxy_factory, pg_upstream):
    fresh_proxy = pgwire_proxy_factory()
    params = {"user": reuse_proxy.user, "database": reuse_proxy.dbname, "application_name": "startup-probe"}

    def startup(proxy):
        with wire.RawConnection(proxy.host, proxy.port, timeout=30) as conn:
            msgs = conn.startup(params)
            assert msgs[-1].kind == "Z", msgs
            status = [m.parameter_status() for m in msgs if m.kind == "S"]
            pid = wire.rows(conn.simple_query("SELECT pg_backend_pid()"))
            conn.send(wire.terminate())
            assert conn.read_until_eof() == []
            return [m.kind for m in msgs], status, pid

    fresh_kinds, fresh_status, _ = startup(fresh_proxy)
    with psycopg.connect(reuse_proxy.dsn, autocommit=True) as conn:
        conn.execute("SET DateStyle = 'SQL, DMY'")  # reported to that client, reset before the next
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    wait_parked(pg_upstream, pid)
    kinds, status, rows = startup(reuse_proxy)
    assert rows == [[str(pid)]], "not reused"
    assert kinds == fresh_kinds
    assert status == fresh_status


def test_a_value_the_server_reported_during_a_session_is_what_the_next_client_is_told(reuse_proxy, pg_upstream):
    """A configuration reload (like a promotion's in_hot_standby) changes a reported value while a
    client holds the backend; DISCARD ALL keeps the new value and reports nothing, so the next
    client's startup must carry what the server reported then, not what it said at connect."""
    default_timezone = pg_upstream.execute("SHOW TimeZone")[0][0]
    reloaded = "Asia/Tokyo" if default_timezone != "Asia/Tokyo" else "Europe/Lisbon"
    try:
        with psycopg.connect(reuse_proxy.dsn, autocommit=True) as conn:
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            assert conn.info.parameter_status("TimeZone") == default_timezone
            pg_upstream.execute(f"ALTER SYSTEM SET TimeZone = '{reloaded}'")
            pg_upstream.execute("SELECT pg_reload_conf()")
            # The backend applies the reload before its next statement and reports it.
            wait_until(lambda: conn.execute("SELECT 1") and conn.info.parameter_status("TimeZone") == reloaded,
                       "the reload to reach the backend")
        wait_parked(pg_upstream, pid)
        with psycopg.connect(reuse_proxy.dsn, autocommit=True) as conn:
            assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] == pid, "not reused"
            assert conn.execute("SHOW TimeZone").fetchone()[0] == reloaded
            assert conn.info.parameter_status("TimeZone") == reloaded
    finally:
        pg_upstream.execute("ALTER SYSTEM RESET TimeZone")
        pg_upstream.execute("SELECT pg_reload_conf()")


def test_a_standby_promoted_while_its_backend_was_parked_is_what_the_next_client_is_told(pgwire_proxy_factory):
    """A parked backend of a hot standby says nothing when the standby is promoted: it reports
    in_hot_standby=off only in its next reply. The next client must be told what a fresh
    connection is told (libpq's target_session_attrs=read-write decides on it)."""
    from pgwire_proxy.cluster import ThrowawayPostgres

    with ThrowawayPostgres() as primary, ThrowawayPostgres(standby_of=primary) as standby:
        proxy = pgwire_proxy_factory(standby.dsn, reuse_upstream=True)
        with psycopg.connect(proxy.dsn, autocommit=True) as conn:
            assert conn.info.parameter_status("in_hot_standby") == "on"
            pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        wait_parked(standby, pid)
        standby.promote()
        with psycopg.connect(standby.dsn, autocommit=True) as direct:
            assert direct.info.parameter_status("in_hot_standby") == "off"
        # libpq decides target_session_attrs on the startup's in_hot_standby, before any query (whose
        # reply would report the promotion anyway).
        with psycopg.connect(proxy.dsn + " target_session_attrs=read-write", autocommit=True) as conn:
            assert conn.info.parameter_status("in_hot_standby") == "off"
            assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] == pid, "not reused"
            conn.execute("CREATE TABLE promoted_and_writable (id int)")


def test_a_session_left_in_a_transaction_is_never_reused(reuse_proxy, pg_upstream):
    pg_upstream.execute("CREATE TABLE IF NOT EXISTS reuse_tx_probe (id int)")
    pg_upstream.execute("TRUNCATE reuse_tx_probe")
    conn = psycopg.connect(reuse_proxy.dsn)
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    conn.execute("INSERT INTO reuse_tx_probe VALUES (1)")  # psycopg opened a transaction: not committed
    conn.pgconn.finish()  # Terminate while in the transaction
    wait_closed(pg_upstream, pid)
    assert pg_upstream.execute("SELECT count(*) FROM reuse_tx_probe") == [(0,)]


def test_a_failed_transaction_is_never_reused(reuse_proxy, pg_upstream):
    conn = psycopg.connect(reuse_proxy.dsn)
    pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    with pytest.raises(errors.DivisionByZero):
        conn.execute("SELECT 1/0")
    conn.pgconn.finish()
    wait_closed(pg_upstream, pid)


def test_a_session_that_needed_a_cancel_is_never_reused(reuse_proxy, pg_upstream):
    with psycopg.connect(reuse_proxy.dsn, autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        error = cancelled_while_running(conn, pg_upstream, lambda: conn.execute("SELECT pg_sleep(30) /* reuse_cancel_a */"),
                                        "reuse_cancel_a")
        assert isinstance(error, errors.QueryCanceled), error
        assert conn.execute("SELECT 1").fetchone() == (1,)
    wait_closed(pg_upstream, pid)


def test_other_startup_parameters_or_users_get_their_own_backend(reuse_proxy, pg_upstream):
    pg_upstream.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgwp_reuse_user') "
                        "THEN CREATE ROLE pgwp_reuse_user LOGIN; END IF; END $$")
    pg_upstream.execute("GRANT CONNECT ON DATABASE " + reuse_proxy.dbname + " TO pgwp_reuse_user")
    pid = backend_pid(reuse_proxy.dsn)
    wait_parked(pg_upstream, pid)
    other_options = backend_pid(reuse_proxy.dsn, options="-c work_mem=8MB")
    other_user = backend_pid(reuse_proxy.dsn_with(user="pgwp_reuse_user"))
    assert pid not in (other_options, other_user)
    # The same parameters again find their own parked backend, still there.
    assert backend_pid(reuse_proxy.dsn) == pid


def test_a_backend_the_server_ended_while_parked_is_replaced(reuse_proxy, pg_upstream):
    pid = backend_pid(reuse_proxy.dsn)
    wait_parked(pg_upstream, pid)
    pg_upstream.execute("SELECT pg_terminate_backend(%s)", [pid])
    wait_until(lambda: not pg_upstream.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]),
               "the terminated backend to go")
    with psycopg.connect(reuse_proxy.dsn, autocommit=True) as conn:
        assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] != pid
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_the_pool_keeps_at_most_its_size(pgwire_proxy_factory, pg_upstream):
    proxy = pgwire_proxy_factory(reuse_upstream=True, reuse_pool_size=2)
    conns = [psycopg.connect(proxy.dsn, autocommit=True) for _ in range(4)]
    pids = [c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in conns]
    for conn in conns:
        conn.close()
    # Two parked, the other two closed as the pool filled (an unbounded pool would keep all four for
    # the minute of the idle timeout).
    kept = wait_until(lambda: (lambda held: held if len(held) == 2 else None)(audit_backends(pg_upstream, proxy)),
                      "two of the four parked")
    assert set(kept) <= set(pids)
    for pid in kept:
        wait_parked(pg_upstream, pid)


def test_a_parked_backend_is_closed_after_the_idle_timeout(pgwire_proxy_factory, pg_upstream):
    proxy = pgwire_proxy_factory(reuse_upstream=True, reuse_idle_timeout="1s")
    pid = backend_pid(proxy.dsn)
    wait_parked(pg_upstream, pid)
    wait_closed(pg_upstream, pid)
    assert backend_pid(proxy.dsn) != pid


def test_reuse_and_passthrough_cannot_be_combined(pgwire_proxy_factory):
    # In process a ValueError; the binary exits with its own message (the process fixture raises RuntimeError).
    with pytest.raises((ValueError, RuntimeError), match="reuse.upstream: cannot be combined with --auth=passthrough"):
        pgwire_proxy_factory(reuse_upstream=True, auth="passthrough")


def test_metrics_count_the_reused_sessions(pgwire_proxy_process_factory, pg_upstream):
    import re
    import urllib.request

    from test_metrics_logs import metrics_port

    proxy = pgwire_proxy_process_factory(reuse_upstream=True, metrics_address="127.0.0.1:0")
    port = metrics_port(proxy)
    pid = backend_pid(proxy.dsn)
    for _ in range(2):
        wait_parked(pg_upstream, pid)
        assert backend_pid(proxy.dsn) == pid

    def reused():
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        return int(re.search(r"^pgwire_proxy_upstream_reused_total (\d+)", text, re.M).group(1))

    assert reused() == 2


def test_a_reused_session_cancels_its_own_query(reuse_proxy, pg_upstream):
    pid = backend_pid(reuse_proxy.dsn)
    wait_parked(pg_upstream, pid)
    with psycopg.connect(reuse_proxy.dsn, autocommit=True) as conn:
        assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] == pid, "not reused"
        error = cancelled_while_running(conn, pg_upstream, lambda: conn.execute("SELECT pg_sleep(30) /* reuse_cancel_b */"),
                                        "reuse_cancel_b")
        assert isinstance(error, errors.QueryCanceled), error


def test_stopping_the_proxy_closes_the_parked_backends(pgwire_proxy_factory, pg_upstream):
    proxy = pgwire_proxy_factory(reuse_upstream=True)
    pid = backend_pid(proxy.dsn)
    wait_parked(pg_upstream, pid)
    proxy.stop()
    wait_closed(pg_upstream, pid)


def test_a_client_arriving_during_the_reset_waits_for_that_backend(reuse_proxy, pg_upstream):
    # Five hundred temporary tables make the DISCARD ALL take tens of milliseconds after the client
    # has gone; a client connecting while it is seen running (pg_stat_activity) gets that backend, not
    # a new one. Connecting "at once" instead raced with the proxy reading the first client's
    # Terminate (an ASan run in CI lost it): no proxy can wait for a reset it has not begun. Tried
    # again if the reset ends before it is seen running.
    with pg_upstream.connect() as watcher:
        watcher.autocommit = True
        for _ in range(5):
            with psycopg.connect(reuse_proxy.dsn, autocommit=True) as conn:
                pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
                conn.execute("DO $$ BEGIN FOR i IN 1..500 LOOP EXECUTE format('CREATE TEMP TABLE reuse_slow_%s (id int)', i); "
                             "END LOOP; END $$")
            deadline = time.monotonic() + 20
            state = None
            while state is None and time.monotonic() < deadline:  # polled as fast as the server answers
                rows = watcher.execute("SELECT state, query FROM pg_stat_activity WHERE pid = %s", [pid]).fetchall()
                if rows and rows[0][1] == "DISCARD ALL":
                    state = rows[0][0]
            assert state is not None, f"backend {pid} was never reset"
            if state != "active":
                continue  # over before it was seen: the next client would find it parked
            with psycopg.connect(reuse_proxy.dsn, autocommit=True) as conn:
                assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] == pid
                assert conn.execute("SELECT count(*) FROM pg_class WHERE relname LIKE 'reuse_slow_%'").fetchone() == (0,)
            return
        pytest.fail("the reset was never seen running in five tries")

