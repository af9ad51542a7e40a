"""The Python module and its pytest plugin: life cycle, query capture, stats, sessions, option checking."""

from __future__ import annotations

import ast
import dataclasses
import datetime
import gc
import inspect
import os
import socket
import struct
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pexpect
import psycopg
import pytest
from psycopg import errors

import pgwire_proxy
from pgwire_proxy import Proxy, ProxyError, QueryRecord, option_names
from pgwire_proxy import _core
from psql import psql_env, run_psql
from wire import RawConnection


def connect(proxy, **kwargs) -> psycopg.Connection:
    # The proxy refuses the extended protocol: autocommit plus ClientCursor keeps psycopg on simple Query.
    return psycopg.connect(proxy.dsn, autocommit=True, cursor_factory=psycopg.ClientCursor, **kwargs)


def wait_until(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition"):
    """Polls `predicate` (no fixed sleeps standing in for synchronisation); fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def running_upstream(pg_upstream, marker: str) -> list:
    """Upstream backends running a query that contains `marker` (other than this probe)."""
    return pg_upstream.execute(
        "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s AND pid <> pg_backend_pid()",
        [f"%{marker}%"])


def cancel_while_running(conn: psycopg.Connection, pg_upstream, marker: str) -> threading.Thread:
    """A thread that calls conn.cancel() once the query carrying `marker` runs upstream."""
    def cancel() -> None:
        wait_until(lambda: running_upstream(pg_upstream, marker), what=f"{marker} to run upstream")
        conn.cancel()
    thread = threading.Thread(target=cancel)
    thread.start()
    return thread


def data_row_bytes(*values: str) -> int:
    """What a DataRow of these text values counts as: 'D', int32 length, int16 count, then an int32
    length and the bytes of each value."""
    return 1 + 4 + 2 + sum(4 + len(v.encode()) for v in values)


def delta(after: Dict[str, object], before: Dict[str, object]) -> Dict[str, object]:
    """Counter differences between two stats() snapshots (nested dicts too); zeros left out."""
    out: Dict[str, object] = {}
    for key, value in after.items():
        if isinstance(value, dict):
            old = before.get(key, {})
            diff = {k: v - old.get(k, 0) for k, v in value.items() if v - old.get(k, 0)}
            if diff:
                out[key] = diff
        elif key != "active_sessions" and value - before.get(key, 0):
            out[key] = value - before.get(key, 0)
    return out


# ---- threads and file descriptors ---------------------------------------------------------------

def _resources() -> Tuple[Dict[str, str], Dict[str, str]]:
    """This process's threads (tid -> name) and open file descriptors (fd -> target)."""
    threads, fds = {}, {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                threads[tid] = f.read().strip()
        except OSError:
            pass  # ended while listing
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            pass  # the directory's own fd, closed by now
    return threads, fds


def wait_for_resources(baseline: Tuple[Dict[str, str], Dict[str, str]], what: str, timeout: float = 5.0) -> None:
    """Polls until no more threads or fds are open than at `baseline`; fails listing the extra ones."""
    deadline = time.monotonic() + timeout
    while True:
        threads, fds = _resources()
        if len(threads) <= len(baseline[0]) and len(fds) <= len(baseline[1]):
            return
        if time.monotonic() > deadline:
            extra_threads = {t: n for t, n in threads.items() if t not in baseline[0]}
            extra_fds = {f: t for f, t in fds.items() if f not in baseline[1]}
            pytest.fail(f"{what}: {len(threads)} threads and {len(fds)} fds, {len(baseline[0])} and "
                        f"{len(baseline[1])} before (polled for {timeout}s); new threads {extra_threads}, "
                        f"new fds {extra_fds}")
        time.sleep(0.02)


def test_start_stop_20_times_leaks_no_threads_or_fds(pg_upstream):
    gc.collect()
    baseline = _resources()
    for cycle in range(20):
        proxy = Proxy(pg_upstream.dsn, log_level="error")
        proxy.start()
        assert proxy.running and proxy.port > 0
        with connect(proxy, application_name=f"cycle-{cycle}") as conn:
            assert conn.execute("select %s::int", [cycle]).fetchone() == (cycle,)
        proxy.stop(timeout=10)
        assert not proxy.running
        del proxy
    gc.collect()
    wait_for_resources(baseline, "after 20 start/stop cycles with a client each")


def test_stop_releases_the_proxys_threads_and_fds(pg_upstream):
    """A stopped Proxy cannot start again, so once stop() returns it should hold no threads or fds,
    even while the Python object is still referenced (a fixture's list, a test's local)."""
    gc.collect()
    baseline = _resources()
    kept: List[Proxy] = []
    for _ in range(5):
        proxy = Proxy(pg_upstream.dsn, log_level="error").start()
        with connect(proxy) as conn:
            conn.execute("select 1")
        proxy.stop(timeout=10)
        kept.append(proxy)
    wait_for_resources(baseline, "5 stopped proxies still referenced")


def test_a_running_proxy_is_stopped_when_collected(pg_upstream):
    proxy = Proxy(pg_upstream.dsn).start()
    port = proxy.port
    with connect(proxy) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    del proxy
    gc.collect()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=5")


def test_context_manager_starts_and_stops(pg_upstream):
    with Proxy(pg_upstream.dsn) as proxy:
        assert proxy.running
        assert repr(proxy) == f"<pgwire_proxy.Proxy 127.0.0.1:{proxy.port}>"
        with connect(proxy) as conn:
            assert conn.execute("select 'in'").fetchone() == ("in",)
    assert not proxy.running
    assert repr(proxy) == "<pgwire_proxy.Proxy not running>"
    with pytest.raises(ProxyError, match="already started"):
        proxy.start()
    proxy.stop()  # idempotent


def test_several_proxies_at_once(pgwire_proxy_factory):
    proxies = [pgwire_proxy_factory(max_rows=limit, log_level="error") for limit in (2, 3, 4, 5)]
    assert len({p.port for p in proxies}) == 4
    failures: List[BaseException] = []

    def client(proxy: Proxy, index: int) -> None:
        try:
            with connect(proxy, application_name=f"client-{index}") as conn:
                for i in range(10):
                    assert conn.execute(f"select {index} as proxy, {i} as i").fetchone() == (index, i)
                with pytest.raises(errors.ProgramLimitExceeded):
                    conn.execute("select generate_series(1, 100)")
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread below
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(p, i)) for i, p in enumerate(proxies)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures
    # Each proxy saw its own client only, and applied its own max_rows.
    for index, proxy in enumerate(proxies):
        queries = proxy.queries()
        assert [q.sql for q in queries[:10]] == [f"select {index} as proxy, {i} as i" for i in range(10)]
        assert queries[10].outcome == "limit" and queries[10].rows == index + 2
        assert len(queries) == 11
        assert proxy.stats()["connections_total"] == 1


# ---- stop while clients are connected -----------------------------------------------------------

def test_stop_with_an_idle_client_sends_fatal_57p01(pgwire_proxy_factory):
    proxy = pgwire_proxy_factory(log_level="off")
    raw = RawConnection(proxy.host, proxy.port)
    try:
        assert raw.startup({"user": "postgres", "database": "postgres"})[-1].kind == "Z"
        assert raw.simple_query("select 1")[-1].kind == "Z"
        started = time.monotonic()
        proxy.stop(timeout=10)
        assert time.monotonic() - started < 5, "stop() waited although every client was idle"
        messages = raw.read_until_eof()
        assert [m.kind for m in messages] == ["E"], messages
        fields = messages[0].error_fields()
        assert (fields["S"], fields["V"], fields["C"]) == ("FATAL", "FATAL", "57P01")
    finally:
        raw.close()
    assert proxy.stats()["errors_by_sqlstate"].get("57P01") == 1


def run_in_thread(conn: psycopg.Connection, sql: str) -> Tuple[threading.Thread, Dict[str, object]]:
    """Runs `sql` on `conn` in a thread; the dict gets 'rows' or 'error'."""
    outcome: Dict[str, object] = {}

    def run() -> None:
        try:
            outcome["rows"] = conn.execute(sql).fetchall()
        except BaseException as exc:  # noqa: BLE001 - checked by the caller
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_stop_with_psycopg_and_psql_clients_connected(pgwire_proxy_factory, pg_upstream):
    """stop(timeout): idle clients are told at once, a query still running at the timeout is
    cancelled, and stop() returns soon after the timeout."""
    proxy = pgwire_proxy_factory(log_level="off")
    idle = connect(proxy)
    busy = connect(proxy)
    shell = pexpect.spawn("psql", ["-X", "-d", proxy.dsn], env=psql_env(), encoding="utf-8", timeout=20)
    try:
        shell.expect(r"=# ")
        worker, outcome = run_in_thread(busy, "select pg_sleep(60) /* stop_probe */")
        wait_until(lambda: running_upstream(pg_upstream, "stop_probe"), what="the query to run upstream")
        started = time.monotonic()
        proxy.stop(timeout=1)
        took = time.monotonic() - started
        worker.join(15)
        assert not worker.is_alive()
        assert 1 <= took < 6, f"stop(timeout=1) took {took:.1f}s with a query running"
        assert isinstance(outcome.get("error"), psycopg.Error), outcome
        # The running query was cancelled upstream, not left to run its 60 seconds.
        wait_until(lambda: not running_upstream(pg_upstream, "stop_probe"), timeout=10,
                   what="the upstream query to end")
        # The idle psycopg client learns on its next use.
        with pytest.raises(psycopg.OperationalError, match="shutting down|closed the connection"):
            idle.execute("select 1")
        # So does psql, whose reconnect attempt finds nothing listening.
        shell.sendline("select 1;")
        shell.expect(r"terminating connection because pgwire-proxy is shutting down")
        shell.expect(r"connection to server was lost|Failed")
        shell.sendline(r"\q")
        shell.expect(pexpect.EOF)
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(proxy.dsn_with(connect_timeout=5))
    finally:
        shell.close(force=True)
        idle.close()
        busy.close()


def test_stop_lets_a_running_query_finish_within_the_timeout(pgwire_proxy_factory, pg_upstream):
    proxy = pgwire_proxy_factory(log_level="off", shutdown_timeout="20s")
    busy = connect(proxy)
    try:
        worker, outcome = run_in_thread(busy, "select pg_sleep(0.5), 'drained' /* drain_probe */")
        wait_until(lambda: running_upstream(pg_upstream, "drain_probe"), what="the query to run upstream")
        started = time.monotonic()
        proxy.stop()  # shutdown_timeout's 20s
        took = time.monotonic() - started
        worker.join(15)
        assert outcome == {"rows": [("", "drained")]}
        assert took < 10, f"stop() took {took:.1f}s although the only query ended after 0.5s"
        assert [(q.sql, q.outcome) for q in proxy.queries()] == [
            ("select pg_sleep(0.5), 'drained' /* drain_probe */", "ok")]
    finally:
        busy.close()


# ---- query capture ------------------------------------------------------------------------------

def test_capture_records_what_psycopg_ran(pgwire_proxy_factory, pg_upstream):
    proxy = pgwire_proxy_factory(max_rows=5, deny=[r"drop\s+table"], log_level="off")
    before = time.time()
    with connect(proxy) as conn, connect(proxy) as other:
        conn.execute("select repeat('x', 1000) from generate_series(1, 3)")
        conn.execute("select 1; select generate_series(1, 3)")          # one Query, two statements
        with pytest.raises(errors.DivisionByZero):
            conn.execute("select 1; select 1/0; select 3")                # stops at the error
        with pytest.raises(errors.UndefinedTable):
            conn.execute("select * from no_such_table")
        with pytest.raises(errors.ProgramLimitExceeded):
            conn.execute("select generate_series(1, 100)")               # max_rows=5
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("drop table capture_probe")                      # denied, never upstream
        canceller = cancel_while_running(other, pg_upstream, "capture_cancel_probe")
        with pytest.raises(errors.QueryCanceled):
            other.execute("select pg_sleep(30) /* capture_cancel_probe */")
        canceller.join()
        conn.execute("create temporary table t (x int)")
        conn.execute("insert into t values (1), (2)")
    queries = proxy.queries()
    row = data_row_bytes
    expected = [
        ("select repeat('x', 1000) from generate_series(1, 3)", 3, 3 * row("x" * 1000), "SELECT 3", None, "ok"),
        ("select 1; select generate_series(1, 3)", 4, 4 * row("1"), "SELECT 3", None, "ok"),
        ("select 1; select 1/0; select 3", 1, row("1"), "SELECT 1", "22012", "error"),
        ("select * from no_such_table", 0, 0, None, "42P01", "error"),
        ("select generate_series(1, 100)", 5, 5 * row("1"), None, "54000", "limit"),  # rows 1..5
        ("drop table capture_probe", 0, 0, None, "42501", "denied"),
        ("select pg_sleep(30) /* capture_cancel_probe */", 0, 0, None, "57014", "cancelled"),
        ("create temporary table t (x int)", 0, 0, "CREATE TABLE", None, "ok"),
        ("insert into t values (1), (2)", 0, 0, "INSERT 0 2", None, "ok"),
    ]
    assert [(q.sql, q.rows, q.bytes, q.command_tag, q.sqlstate, q.outcome) for q in queries] == expected
    sessions = {q.session_id for q in queries}
    assert len(sessions) == 2
    assert queries[6].session_id != queries[0].session_id
    assert all(isinstance(q, QueryRecord) for q in queries)
    assert [q.ok for q in queries] == [e[5] == "ok" for e in expected]
    starts = [q.started_at.timestamp() for q in queries]
    assert starts == sorted(starts) and before - 1 <= starts[0] <= time.time()
    assert all(q.duration >= 0 for q in queries)
    assert queries[5].duration < 1
    assert queries[6].duration > 0  # it ran until the cancel
    assert not pg_upstream.execute("select 1 from pg_stat_activity where query like 'drop table capture_probe%'")


def test_capture_records_what_psql_ran(pgwire_proxy_factory):
    proxy = pgwire_proxy_factory(max_rows=3, log_level="off")
    result = run_psql(proxy.dsn, commands=["select 1 as a; select 2 as b", "select generate_series(1, 10)",
                                           "select nothing_here"])
    out = result.stdout.decode()
    assert "54000" in out and "42703" in out, out
    assert [(q.sql, q.outcome, q.sqlstate, q.rows) for q in proxy.queries()] == [
        ("select 1 as a; select 2 as b", "ok", None, 2),
        ("select generate_series(1, 10)", "limit", "54000", 3),
        ("select nothing_here", "error", "42703", 0),
    ]


def test_capture_context_manager_holds_only_its_block(pgwire_proxy):
    with connect(pgwire_proxy) as conn, connect(pgwire_proxy) as other:
        conn.execute("select 'before'")
        with pgwire_proxy.capture() as captured:
            conn.execute("select 'inside 1'")
            other.execute("select 'from another session'")
            with pgwire_proxy.capture() as inner:
                conn.execute("select 'nested'")
            assert captured == []  # filled when the block ends
        conn.execute("select 'after'")
    assert captured.sql == ["select 'inside 1'", "select 'from another session'", "select 'nested'"]
    assert inner.sql == ["select 'nested'"]
    assert len(pgwire_proxy.queries()) == 5


def test_capture_size_keeps_the_newest(pgwire_proxy_factory):
    proxy = pgwire_proxy_factory(capture_size=5)
    with connect(proxy) as conn:
        with proxy.capture() as captured:
            for i in range(8):
                conn.execute(f"select {i}")
    assert [q.sql for q in proxy.queries()] == [f"select {i}" for i in range(3, 8)]
    assert captured.sql == [f"select {i}" for i in range(3, 8)]  # a block cannot see past the bound
    assert proxy.stats()["queries_total"] == 8


def test_capture_size_zero_and_clear_queries(pgwire_proxy_factory):
    off = pgwire_proxy_factory(capture_size=0)
    on = pgwire_proxy_factory()
    with connect(off) as a, connect(on) as b:
        a.execute("select 1")
        b.execute("select 1")
        b.execute("select 2")
        assert off.queries() == [] and off.stats()["queries_total"] == 1
        on.clear_queries()
        assert on.queries() == [] and on.stats()["queries_total"] == 2
        with on.capture() as captured:
            b.execute("select 3")
        assert captured.sql == ["select 3"] and [q.sql for q in on.queries()] == ["select 3"]


def test_capture_bytes_bounds_the_texts_kept(pgwire_proxy_factory):
    """40 queries of 1 MB each with capture_bytes='8MB': the capture keeps the newest that fit (the
    binary's 16 MB messages times capture_size 10000 would otherwise hold up to 160 GB), whole and in
    order, and stats() still counts every one."""
    proxy = pgwire_proxy_factory(capture_bytes="8MB")
    texts = [f"select length('{chr(ord('a') + i % 26) * 1_000_000}') as q{i}" for i in range(40)]
    with connect(proxy) as conn:
        for text in texts:
            assert conn.execute(text).fetchone() == (1_000_000,)
    kept = [q.sql for q in proxy.queries()]
    assert 4 <= len(kept) <= 8, len(kept)
    assert kept == texts[-len(kept):]  # the newest, oldest first, each whole
    assert len(kept[0]) * len(kept) <= proxy.captured_bytes() <= 8 * 1024 * 1024
    assert proxy.stats()["queries_total"] == 40


def test_capture_bytes_keeps_the_newest_record_whole(pgwire_proxy_factory):
    proxy = pgwire_proxy_factory(capture_bytes="1kB")
    big = "select '" + "x" * 10_000 + "'"
    with connect(proxy) as conn:
        conn.execute("select 1")
        conn.execute(big)
        assert [q.sql for q in proxy.queries()] == [big]  # larger than the bound, and kept
        conn.execute("select 2")
        conn.execute("select 3")
    assert [q.sql for q in proxy.queries()] == ["select 2", "select 3"]  # short texts need no storage
    proxy.clear_queries()
    assert proxy.queries() == [] and proxy.captured_bytes() == 0


def epoll_registrations() -> int:
    """The descriptors in all of this process's epoll sets (the in-process proxies' loops), from
    /proc/self/fdinfo: a registration the kernel keeps for a socket closed here but still open
    elsewhere is listed too, by the number it was added with."""
    count = 0
    for entry in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{entry}") != "anon_inode:[eventpoll]":
                continue
            with open(f"/proc/self/fdinfo/{entry}") as info:
                count += sum(1 for line in info if line.startswith("tfd:"))
        except OSError:  # closed meanwhile (listdir's own descriptor, another thread's)
            continue
    return count


def test_sessions_ending_while_a_forked_child_holds_their_sockets(pgwire_proxy_factory):
    # A test process forks (subprocess, multiprocessing), and until the child execs or exits it holds
    # a copy of every descriptor, the in-process proxy's sockets too. A socket the proxy closes then
    # stays open, and in the loop's epoll set unless the loop removed it first: the clients' hang-ups
    # kept reporting events for sessions already destroyed (the in-process benchmark segfaulted on
    # one every few runs; pgbench started while sessions ended).
    proxy = pgwire_proxy_factory()
    with connect(proxy) as conn:  # every loop has its listener registered by now
        conn.execute("select 1")
    wait_until(lambda: proxy.stats()["active_sessions"] == 0, what="the session to end")
    idle = epoll_registrations()
    clients = [connect(proxy) for _ in range(20)]
    for conn in clients:
        assert conn.execute("select 1").fetchone() == (1,)
    assert epoll_registrations() >= idle + 40  # each session's client and upstream socket
    release_read, release_write = os.pipe()
    child = os.fork()
    if child == 0:  # holds every descriptor until told to go; runs no Python beyond this
        os.close(release_write)
        os.read(release_read, 1)
        os._exit(0)
    os.close(release_read)
    try:
        for conn in clients:
            conn.close()  # each session ends; its client socket, held by the child, turns readable
        wait_until(lambda: proxy.stats()["active_sessions"] == 0, what="the sessions to end")
        # Nothing of them is left in the loops' sets (before, all 40 were: they named freed slots).
        assert epoll_registrations() == idle
        for _ in range(20):  # the loops keep serving while the hung-up sockets stay open in the child
            with connect(proxy) as conn:
                assert conn.execute("select 42").fetchone() == (42,)
        wait_until(lambda: proxy.stats()["active_sessions"] == 0, what="the sessions to end")
        assert epoll_registrations() == idle
        assert proxy.running
    finally:
        os.close(release_write)
        os.waitpid(child, 0)
    with connect(proxy) as conn:
        assert conn.execute("select 7").fetchone() == (7,)


def test_capture_bytes_zero_bounds_records_only(pgwire_proxy_factory):
    proxy = pgwire_proxy_factory(capture_bytes=0, capture_size=15)
    texts = [f"select '{'y' * 100_000}', {i}" for i in range(20)]
    with connect(proxy) as conn:
        for text in texts:
            conn.execute(text)
    assert [q.sql for q in proxy.queries()] == texts[5:]
    assert proxy.captured_bytes() >= 15 * 100_000


def test_assert_queries_passes(pgwire_proxy, assert_queries):
    with connect(pgwire_proxy) as conn:
        with assert_queries(pgwire_proxy, count=2) as queries:
            conn.execute("select 1")
            conn.execute("select 2")
        assert queries.sql == ["select 1", "select 2"]
        with assert_queries(pgwire_proxy, max=3):
            conn.execute("select 1")
        with assert_queries(pgwire_proxy, count=1, match=r"^insert"):
            conn.execute("create temporary table t (x int)")
            conn.execute("insert into t values (1)")
            conn.execute("select * from t")
        with assert_queries(pgwire_proxy, count=0):
            pass


def test_assert_queries_fails_listing_the_queries(pgwire_proxy, assert_queries):
    with connect(pgwire_proxy) as conn:
        # An AssertionError (what pytest.raises(AssertionError) and unittest expect), not pytest's Failed.
        with pytest.raises(AssertionError) as failed:
            with assert_queries(pgwire_proxy, count=1):
                conn.execute("select 'first'")
                with pytest.raises(errors.UndefinedTable):
                    conn.execute("select * from missing_table")
        assert str(failed.value) == ("expected 1 queries, the proxy saw 2:\n"
                                     "  1. [ok] select 'first'\n"
                                     "  2. [error 42P01] select * from missing_table")
        # With match=, the listing marks the queries that were counted.
        with pytest.raises(AssertionError) as failed:
            with assert_queries(pgwire_proxy, max=1, match="^select"):
                conn.execute("select 1")
                conn.execute("set application_name = 'x'")
                conn.execute("select 2")
        assert str(failed.value) == ("expected at most 1 queries matching '^select', the proxy saw 2 "
                                     "(marked *, of 3 in the block):\n"
                                     "  * 1. [ok] select 1\n"
                                     "    2. [ok] set application_name = 'x'\n"
                                     "  * 3. [ok] select 2")
        # match= is Python's re: (?i) works here (the proxy's own patterns are POSIX ERE).
        with assert_queries(pgwire_proxy, count=1, match=r"(?i)^SELECT\s+\d"):
            conn.execute("select 3")
            conn.execute("show application_name")
        with pytest.raises(TypeError, match="count= or max="):
            with assert_queries(pgwire_proxy):
                pass
        # An exception from the block is the test's failure, not a count mismatch.
        with pytest.raises(ZeroDivisionError):
            with assert_queries(pgwire_proxy, count=5):
                1 / 0


# ---- the shared proxy of pgwire_proxy: reset between tests --------------------------------------

_DIRTIED: Dict[str, object] = {}


def test_shared_proxy_first_test_leaves_queries_faults_and_counts(pgwire_proxy):
    with connect(pgwire_proxy) as conn:
        conn.execute("select 'left behind'")
        with pytest.raises(errors.UndefinedTable):
            conn.execute("select * from no_such_table")
        pgwire_proxy.add_fault("^select 'faulted'", sqlstate="40001", message="left armed")
        with pytest.raises(errors.SerializationFailure):
            conn.execute("select 'faulted'")
    assert pgwire_proxy.queries() and pgwire_proxy.faults() and pgwire_proxy.stats()["queries_total"] == 3
    _DIRTIED.update(port=pgwire_proxy.port, proxy=pgwire_proxy)


def test_shared_proxy_next_test_finds_it_reset(pgwire_proxy):
    if not _DIRTIED:
        pytest.skip("runs after test_shared_proxy_first_test_leaves_queries_faults_and_counts")
    assert pgwire_proxy is _DIRTIED["proxy"] and pgwire_proxy.port == _DIRTIED["port"]  # the same proxy
    assert pgwire_proxy.queries() == [] and pgwire_proxy.faults() == []
    stats = pgwire_proxy.stats()
    assert (stats["queries_total"], stats["connections_total"], stats["errors_by_sqlstate"],
            stats["faults_injected"].get("error", 0), stats["active_sessions"]) == (0, 0, {}, 0, 0), stats
    assert pgwire_proxy.sessions() == []
    with connect(pgwire_proxy) as conn:
        assert conn.execute("select 'faulted'").fetchone() == ("faulted",)  # the rule is gone
    assert [q.sql for q in pgwire_proxy.queries()] == ["select 'faulted'"]
    assert pgwire_proxy.stats()["queries_by_outcome"]["ok"] == 1


def test_shared_proxy_is_replaced_when_a_test_leaves_a_client_or_stops_it(pg_upstream):
    from pgwire_proxy.pytest_plugin import SharedProxy
    shared = SharedProxy(pg_upstream.dsn)
    try:
        first = shared.get()
        left_open = connect(first)
        left_open.execute("select 1")
        shared.release(drain_seconds=0.2)  # a client still connected: stopped, its client told 57P01
        assert not first.running
        with pytest.raises(psycopg.OperationalError):
            left_open.execute("select 1")
        left_open.close()
        second = shared.get()
        assert second is not first and second.running and second.queries() == []
        with connect(second) as conn:
            conn.execute("select 2")
        shared.release()  # closed clients: kept
        assert shared.get() is second and second.queries() == []
        second.stop()  # a test that stops it
        shared.release()
        third = shared.get()
        assert third is not second and third.running
    finally:
        shared.stop()


# ---- stats and sessions -------------------------------------------------------------------------

def test_stats_deltas_match_the_work_done(pgwire_proxy_factory, pg_upstream):
    proxy = pgwire_proxy_factory(max_rows=10, deny=["^vacuum"], log_level="off")
    with connect(proxy) as warm:
        warm.execute("select 1")
    before = proxy.stats()
    with connect(proxy) as a, connect(proxy) as b:
        a.execute("select generate_series(1, 7)")
        b.execute("select 'ab'; select 'cde'")
        with pytest.raises(errors.UndefinedTable):
            a.execute("select * from nope")
        with pytest.raises(errors.DivisionByZero):
            b.execute("select 1/0")
        with pytest.raises(errors.ProgramLimitExceeded):
            a.execute("select generate_series(1, 1000)")                   # rows 1..10 sent
        with pytest.raises(errors.InsufficientPrivilege):
            b.execute("vacuum")
        canceller = cancel_while_running(a, pg_upstream, "stats_cancel_probe")
        with pytest.raises(errors.QueryCanceled):
            a.execute("select pg_sleep(30) /* stats_cancel_probe */")
        canceller.join()
    row = data_row_bytes
    expected = {
        "connections_total": 2,
        "queries_total": 7,
        "rows_total": 7 + 2 + 10,
        "bytes_total": 7 * row("1") + row("ab") + row("cde") + 9 * row("1") + row("10"),
        "cancel_requests": 1,
        "cancels_matched": 1,
        "errors_by_sqlstate": {"42P01": 1, "22012": 1, "54000": 1, "42501": 1, "57014": 1},
        "limit_breaches": {"max-rows": 1, "deny": 1},
    }
    changed = delta(proxy.stats(), before)
    assert {key: changed.get(key) for key in expected} == expected
    # By outcome in the metrics' finer labels (limit_rows, timeout ...): every query counted once.
    assert sum(changed["queries_by_outcome"].values()) == 7
    assert {k: v for k, v in changed["queries_by_outcome"].items() if k in ("ok", "error", "denied")} == \
        {"ok": 2, "error": 2, "denied": 1}
    # A cancel request with a key the proxy never gave out counts (by the time the proxy closes its
    # connection), but matches nothing.
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as s:
        s.sendall(struct.pack("!iiii", 16, 80877102, 1, 2))
        assert s.recv(1) == b""
    changed = delta(proxy.stats(), before)
    assert (changed["cancel_requests"], changed["cancels_matched"]) == (2, 1)
    assert wait_until(lambda: proxy.stats()["active_sessions"] == 0, what="sessions to close")


def test_sessions_lists_live_sessions(pgwire_proxy, pg_upstream):
    with connect(pgwire_proxy, application_name="alpha") as a, connect(pgwire_proxy, application_name="beta") as b:
        a.execute("select 1")
        sessions = sorted(pgwire_proxy.sessions(), key=lambda s: s["application_name"])
        assert [s["application_name"] for s in sessions] == ["alpha", "beta"]
        assert [s["backend_pid"] for s in sessions] == [a.info.backend_pid, b.info.backend_pid]
        assert [s["state"] for s in sessions] == ["idle", "idle"]
        assert [s["queries"] for s in sessions] == [1, 0]
        assert all(s["client_address"].startswith("127.0.0.1") for s in sessions)
        assert sessions[0]["connected_at"] <= sessions[1]["connected_at"]
        assert len({s["id"] for s in sessions}) == 2
        outcome: Dict[str, BaseException] = {}

        def sleep() -> None:
            try:
                b.execute("select pg_sleep(30) /* sessions_probe */")
            except BaseException as exc:  # noqa: BLE001 - checked below
                outcome["error"] = exc

        worker = threading.Thread(target=sleep)
        worker.start()
        wait_until(lambda: running_upstream(pg_upstream, "sessions_probe"), what="the query upstream")
        seen = {s["application_name"]: s["state"] for s in pgwire_proxy.sessions()}
        b.cancel()
        worker.join(20)
        assert isinstance(outcome.get("error"), errors.QueryCanceled), outcome
        assert seen == {"alpha": "idle", "beta": "active"}
        assert {s["application_name"]: s["state"] for s in pgwire_proxy.sessions()} == {"alpha": "idle",
                                                                                         "beta": "idle"}
    wait_until(lambda: pgwire_proxy.sessions() == [], what="closed sessions to leave sessions()")


def test_a_session_is_listed_as_soon_as_the_client_is_connected(pgwire_proxy):
    """Like the query capture (recorded before the client sees its result), a session should be in
    sessions() and counted in stats() by the time its client has ReadyForQuery."""
    missing = []
    for i in range(100):
        with connect(pgwire_proxy) as conn:
            pids = [s["backend_pid"] for s in pgwire_proxy.sessions()]
            counted = pgwire_proxy.stats()["connections_total"]
            if conn.info.backend_pid not in pids or counted != i + 1:
                missing.append((i, counted))
    assert missing == [], (f"{len(missing)} of 100 freshly connected clients were not yet in sessions()/"
                           f"connections_total: {missing}")


# ---- options ------------------------------------------------------------------------------------

def test_proxy_keywords_are_the_binarys_options():
    """Proxy.__init__ takes every option of the binary, under its snake_case name (capture_size and
    capture_bytes are the only Python-only ones; the repeatable --database NAME=DSN is the mapping databases={...}), so
    the module and the binary cannot drift apart."""
    renamed = {"database": "databases"}
    params = inspect.signature(Proxy.__init__).parameters
    keywords = {name for name in params if name not in ("self", "capture_size", "capture_bytes")}
    core = {renamed.get(spec["name"], spec["name"].replace("-", "_")) for spec in _core.option_specs()}
    assert (sorted(core - keywords), sorted(keywords - core)) == ([], []), \
        "(options Proxy lacks, Proxy keywords the core does not know)"
    assert option_names() == [renamed.get(spec["name"], spec["name"].replace("-", "_"))
                              for spec in _core.option_specs()]
    for name in keywords:
        assert params[name].default is not inspect.Parameter.empty or name == "upstream_dsn", name
    assert pgwire_proxy.Proxy is Proxy


@pytest.mark.parametrize("options, error, message", [
    ({"max_rows": -1}, ValueError, "max_rows: -1 is outside the valid range"),
    ({"max_rows": "10"}, TypeError, "max_rows: expected an int"),
    ({"query_timeout": "soon"}, ValueError, 'query_timeout: invalid value "soon"'),
    ({"query_timeout": -1}, ValueError, "query_timeout: a duration cannot be negative"),
    ({"query_timeout": [1]}, TypeError, "query_timeout: expected seconds"),
    ({"deny": ["drop("]}, ValueError, 'deny: invalid pattern "drop\\("'),
    ({"deny": [3]}, TypeError, "deny: expected strings"),
    ({"allow": 5}, TypeError, "allow: expected a string or a list of strings"),
    ({"upstream_dsn": "nonsense=1"}, ValueError, 'upstream_dsn: invalid connection option "nonsense"'),
    ({"upstream_dsn": 42}, TypeError, "upstream_dsn: expected a string"),
    ({"port": 70000}, ValueError, "port: 70000 is outside the valid range 0..65535"),
    ({"port": "5433"}, TypeError, "port: expected an int"),
    ({"capture_size": -1}, ValueError, "capture_size: expected 0 or more"),
    ({"capture_size": 1.5}, TypeError, "capture_size: expected an int"),
    ({"capture_bytes": "lots"}, ValueError, 'capture_bytes: invalid value "lots"'),
    ({"capture_bytes": -1}, ValueError, "capture_bytes: a size cannot be negative"),
    ({"capture_bytes": 1.5}, TypeError, "capture_bytes: expected bytes"),
    ({"max_connections": 0}, ValueError, "max_connections: 0 is outside the valid range"),
    ({"max_bytes": "lots"}, ValueError, 'max_bytes: invalid value "lots"'),
    ({"max_message_size": "2GB"}, ValueError, "max_message_size: must be at most 1GB"),
    ({"log_level": "loud"}, ValueError, 'log_level: invalid value "loud"'),
    ({"log_format": "xml"}, ValueError, 'log_format: invalid value "xml"'),
    ({"log_queries": 1}, TypeError, "log_queries: expected a bool"),
    ({"listen_address": None}, TypeError, "listen_address: expected a string"),
    ({"patterns_ignore_case": "yes"}, TypeError, "patterns_ignore_case: expected a bool"),
    ({"enable_tls": True}, ValueError, "tls"),
    ({"tls_cert": 7}, TypeError, "tls_cert: expected a path"),
    ({"shutdown_timeout": "forever"}, ValueError, 'shutdown_timeout: invalid value "forever"'),
    ({"config": "/etc/pgwire-proxy.conf"}, ValueError, "config: config files .* are read by the pgwire-proxy binary"),
])
def test_bad_options_raise_naming_the_option(pg_upstream, options, error, message):
    options = {"upstream_dsn": pg_upstream.dsn, **options}
    with pytest.raises(error, match=message):
        Proxy(**options)


def test_unknown_keyword_and_missing_upstream(monkeypatch):
    with pytest.raises(TypeError, match="max_rowz"):
        Proxy("host=127.0.0.1", max_rowz=1)  # type: ignore[call-arg]
    monkeypatch.delenv("PGWIRE_PROXY_UPSTREAM_DSN", raising=False)
    with pytest.raises(ValueError, match="upstream_dsn: no upstream given"):
        Proxy()


def test_start_failures_raise_proxy_error(pgwire_proxy, pg_upstream):
    taken = Proxy(pg_upstream.dsn, port=pgwire_proxy.port)
    with pytest.raises(ProxyError, match=f"cannot listen on 127.0.0.1:{pgwire_proxy.port}"):
        taken.start()
    assert not taken.running
    with pytest.raises(ProxyError, match="not started"):
        taken.port
    nowhere = Proxy(pg_upstream.dsn, listen_address="host.invalid")
    with pytest.raises(ProxyError, match="host.invalid"):
        nowhere.start()
    # Checked only when starting, still named as in Python.
    with pytest.raises(ValueError, match='metrics_address: invalid address "nope"'):
        Proxy(pg_upstream.dsn, metrics_address="nope", log_level="off").start()
    unwritable = Proxy(pg_upstream.dsn, log_file="/nonexistent/dir/proxy.log", log_level="off")
    with pytest.raises(ProxyError, match='log_file: cannot open "/nonexistent/dir/proxy.log"'):
        unwritable.start()
    assert not unwritable.running
    with pytest.raises(ValueError, match="timeout: a duration cannot be negative"):
        pgwire_proxy.stop(timeout=-1)
    with pytest.raises(ValueError, match="timeout: invalid duration 'soon'"):
        pgwire_proxy.stop(timeout="soon")
    assert pgwire_proxy.running
    with connect(pgwire_proxy) as conn:  # none of that disturbed the running proxy
        assert conn.execute("select 1").fetchone() == (1,)


def test_python_options_reach_the_core(pgwire_proxy_factory, tmp_path):
    """Durations, sizes, pattern files and flags as Python values take effect."""
    deny_file = tmp_path / "deny.txt"
    deny_file.write_text("# comment\n^truncate\n")
    proxy = pgwire_proxy_factory(query_timeout=datetime.timedelta(milliseconds=300), max_bytes=100,
                                 deny=["^DELETE"], deny_file=[deny_file], patterns_ignore_case=True,
                                 log_level="off")
    with connect(proxy) as conn:
        with pytest.raises(errors.QueryCanceled, match="statement timeout"):
            conn.execute("select pg_sleep(5)")
        with pytest.raises(errors.ProgramLimitExceeded):
            conn.execute("select repeat('x', 200)")
        for sql in ("delete from x", "TRUNCATE x"):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(sql)
    breaches = proxy.stats()["limit_breaches"]
    assert (breaches.get("max-bytes"), breaches.get("deny")) == (1, 2), breaches


def test_core_stub_matches_the_extension():
    """_core.pyi (what editors show) names exactly what the compiled module has."""
    # The stub is in the package's source directory; a checkout's build puts _core under build/.
    stub = ast.parse((Path(pgwire_proxy.__file__).parent / "_core.pyi").read_text())
    functions = {n.name for n in stub.body if isinstance(n, ast.FunctionDef)}
    (proxy_class,) = [n for n in stub.body if isinstance(n, ast.ClassDef) and n.name == "Proxy"]
    methods = {n.name for n in proxy_class.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}
    assert functions == {n for n in dir(_core) if not n.startswith("_") and n != "Proxy"}
    assert methods == {n for n in dir(_core.Proxy) if not n.startswith("_")}


def test_query_record_has_every_field_of_the_core(pgwire_proxy):
    with connect(pgwire_proxy) as conn:
        conn.execute("select 1")
    (raw,) = pgwire_proxy._core.queries()
    assert sorted(raw) == sorted(f.name for f in dataclasses.fields(QueryRecord))


def test_metrics_endpoint_from_python(pgwire_proxy_factory, pgwire_proxy):
    assert pgwire_proxy.metrics_port is None
    proxy = pgwire_proxy_factory(metrics_address="127.0.0.1:0")
    with connect(proxy) as conn:
        conn.execute("select 1")
    assert isinstance(proxy.metrics_port, int) and proxy.metrics_port not in (0, proxy.port)
    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.metrics_port}/metrics", timeout=10) as response:
        served = response.read().decode()
    assert "pgwire_proxy" in served and "pgwire_proxy" in proxy.metrics_text()


def test_dsn_and_dsn_with(pgwire_proxy):
    assert pgwire_proxy.dsn == f"host=127.0.0.1 port={pgwire_proxy.port} user=postgres dbname=postgres"
    with psycopg.connect(pgwire_proxy.dsn_with(application_name="via dsn_with"), autocommit=True,
                         cursor_factory=psycopg.ClientCursor) as conn:
        assert conn.execute("show application_name").fetchone()[0].startswith("pgwire-proxy/via dsn_with@")
    out = subprocess.run(["psql", "-X", "-A", "-t", "-d", pgwire_proxy.dsn, "-c", "select 6 * 7"],
                         capture_output=True, text=True, env=psql_env(), timeout=30)
    assert out.stdout.strip() == "42", out.stderr
