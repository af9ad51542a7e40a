"""Protocol-aware fault injection: rules that answer matching queries with an error, a delay, a
dropped connection or a notice; counting (nth, every, per session), seeded probability, narrowing by
user/application, rules changed while sessions run, and what the proxy records about each fault."""

from __future__ import annotations

import os
import threading

import psycopg
import pytest
from psycopg import errors
from psycopg.pq import TransactionStatus

import wire
from psql import run_psql
from support import connect, wait_until

pytestmark = pytest.mark.skipif(os.environ.get("PGWIRE_PROXY_FIXTURE") == "process",
                                reason="Proxy.add_fault is the in-process Proxy's; the binary's --faults "
                                       "file has its own test below")

SERIALIZATION = dict(sqlstate="40001", message="could not serialize access due to concurrent update")


@pytest.fixture
def items(pg_upstream):
    pg_upstream.execute("drop table if exists fault_items")
    pg_upstream.execute("create table fault_items (id int primary key)")
    yield "fault_items"
    pg_upstream.execute("drop table if exists fault_items")


def cancel_when_active(proxy, conn) -> threading.Thread:
    """Cancels `conn`'s query once the proxy shows its session running one (the application's own
    timeout firing), from another thread; join() it after the query."""
    def run():
        wait_until(lambda: any(s["state"] == "active" for s in proxy.sessions()), what="the query to start")
        conn.cancel()
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def count_rows(pg_upstream, table: str) -> int:
    return pg_upstream.execute(f"select count(*) from {table}")[0][0]


def upstream_backends(pg_upstream, app: str) -> int:
    return pg_upstream.execute("select count(*) from pg_stat_activity where application_name like %s",
                               [f"%{app}%"])[0][0]


# ---- error ---------------------------------------------------------------------------------------

def injected_errors_metric(proxy) -> int:
    # The Prometheus counter counts since the proxy started (pgwire_proxy's is shared between tests and
    # its metrics are never reset, unlike stats()): compare values.
    prefix = 'pgwire_proxy_faults_injected_total{action="error"} '
    (line,) = [line for line in proxy.metrics_text().splitlines() if line.startswith(prefix)]
    return int(line[len(prefix):])


def test_error_before_the_query_never_runs_it(pgwire_proxy, pgwire_faults, pg_upstream, items):
    metric_before = injected_errors_metric(pgwire_proxy)
    fault = pgwire_faults("^insert", **SERIALIZATION, detail="injected", hint="retry")
    with connect(pgwire_proxy) as conn:
        with pytest.raises(errors.SerializationFailure) as excinfo:
            conn.execute(f"insert into {items} values (1)")
        diag = excinfo.value.diag
        assert (diag.sqlstate, diag.message_primary, diag.message_detail, diag.message_hint) == (
            "40001", SERIALIZATION["message"], "injected", "retry")
        assert conn.execute("select 'usable'").fetchone() == ("usable",)
    assert count_rows(pg_upstream, items) == 0
    assert (fault.hits, fault.matches) == (1, 1)
    record = [q for q in pgwire_proxy.queries() if q.sql.startswith("insert")][-1]
    assert (record.injected, record.outcome, record.sqlstate) == ("error", "error", "40001")
    assert pgwire_proxy.stats()["faults_injected"]["error"] == 1
    assert injected_errors_metric(pgwire_proxy) == metric_before + 1


def test_retry_loop_survives_a_40001_on_the_third_commit(pgwire_proxy, pgwire_faults, pg_upstream, items):
    fault = pgwire_faults("^commit", **SERIALIZATION, nth=3)
    attempts = 0
    with connect(pgwire_proxy) as conn:
        for i in range(5):
            while True:  # the application's retry loop
                attempts += 1
                try:
                    conn.execute("begin")
                    conn.execute(f"insert into {items} values ({i})")
                    conn.execute("commit")
                    break
                except errors.SerializationFailure:
                    # A failed COMMIT has ended the transaction, as PostgreSQL's does: no ROLLBACK needed,
                    # and what the attempt inserted is gone.
                    assert conn.info.transaction_status == TransactionStatus.IDLE
    assert attempts == 6 and fault.hits == 1
    assert count_rows(pg_upstream, items) == 5


def test_psycopg3_transaction_retry_loop_recovers_from_an_injected_commit_failure(pgwire_proxy, pgwire_faults, pg_upstream):
    """psycopg 3's `with conn.transaction()` (its defaults: not autocommit, the extended protocol):
    a 40001 on the 2nd COMMIT is retried by the application, and the balances come out right."""
    pg_upstream.execute("drop table if exists retry_accounts")
    pg_upstream.execute("create table retry_accounts (id int primary key, balance int)")
    pg_upstream.execute("insert into retry_accounts values (1, 100), (2, 0)")
    fault = pgwire_faults("^commit", ignore_case=True, sqlstate="40001", message="could not serialize access", nth=2)
    attempts = 0
    with psycopg.connect(pgwire_proxy.dsn, autocommit=True) as conn:
        for _ in range(3):
            while True:
                attempts += 1
                try:
                    with conn.transaction():
                        conn.execute("update retry_accounts set balance = balance - 10 where id = 1")
                        conn.execute("update retry_accounts set balance = balance + 10 where id = 2")
                    break
                except errors.SerializationFailure:
                    assert conn.info.transaction_status == TransactionStatus.IDLE
    assert attempts == 4 and fault.hits == 1
    assert pg_upstream.execute("select balance from retry_accounts order by id") == [(70,), (30,)]
    pg_upstream.execute("drop table retry_accounts")


def test_an_injected_failure_leaves_the_status_a_real_one_would(pgwire_proxy, pgwire_faults, pg_upstream):
    """Direct, a deferred constraint fails the COMMIT (the transaction is over: idle) and a failing
    statement inside a block leaves it failed; the same statements failed by injected faults leave
    the session exactly there."""
    pg_upstream.execute("drop table if exists status_probe")
    pg_upstream.execute("create table status_probe (id int unique deferrable initially deferred)")

    def statuses(dsn, inject):
        seen = []
        with psycopg.connect(dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
            conn.execute("begin")
            conn.execute("insert into status_probe values (1), (1)" if not inject else "insert into status_probe values (2)")
            with pytest.raises(psycopg.Error):
                conn.execute("commit")
            seen.append(conn.info.transaction_status)
            conn.execute("begin")
            with pytest.raises(psycopg.Error):
                conn.execute("select 1/0" if not inject else "select 'status_probe_fail'")
            seen.append(conn.info.transaction_status)
            conn.execute("rollback")
        return seen

    direct = statuses(pg_upstream.dsn, inject=False)
    pgwire_faults("^commit", sqlstate="23505", message="duplicate key (injected)")
    pgwire_faults("status_probe_fail", sqlstate="22012", message="division by zero (injected)")
    injected = statuses(pgwire_proxy.dsn, inject=True)
    assert direct == injected == [TransactionStatus.IDLE, TransactionStatus.INERROR]
    assert pg_upstream.execute("select count(*) from status_probe") == [(0,)]  # the failed COMMIT rolled back
    pg_upstream.execute("drop table status_probe")


def test_error_after_the_query_ran_the_commit_happened(pgwire_proxy, pgwire_faults, pg_upstream, items):
    pgwire_faults("^insert", when="after", sqlstate="08006", message="connection lost (injected)")
    with connect(pgwire_proxy) as conn:
        with pytest.raises(psycopg.OperationalError) as excinfo:
            conn.execute(f"insert into {items} values (7) returning id")
        assert excinfo.value.sqlstate == "08006"
        assert conn.execute("select 1").fetchone() == (1,)
    assert count_rows(pg_upstream, items) == 1  # it ran; the client was told otherwise


def test_fatal_error_closes_the_connection_and_the_upstream(pgwire_proxy_factory, pg_upstream):
    proxy = pgwire_proxy_factory()
    proxy.add_fault("fatal_probe", severity="FATAL", sqlstate="57P01",
                    message="terminating connection due to administrator command")
    conn = connect(proxy, application_name="fatal_app")
    # psycopg reports a FATAL followed by the close as it does for pg_terminate_backend direct.
    with pytest.raises(psycopg.OperationalError, match="terminating connection due to administrator command"):
        conn.execute("select 'fatal_probe'")
    assert conn.closed
    wait_until(lambda: upstream_backends(pg_upstream, "fatal_app") == 0, what="the upstream backend to go")
    with connect(proxy) as again:
        assert again.execute("select 2").fetchone() == (2,)


def test_psql_shows_the_injected_error(pgwire_proxy, pgwire_faults):
    pgwire_faults("deadlock_probe", sqlstate="40P01", message="deadlock detected",
                  detail="Process 1 waits for ShareLock on transaction 2.")
    result = run_psql(pgwire_proxy.dsn, commands=["select 'deadlock_probe'", "select 'after'"])
    out = result.stdout.decode()
    assert "ERROR:  40P01: deadlock detected" in out
    assert "DETAIL:  Process 1 waits for ShareLock on transaction 2." in out
    assert "after" in out


# ---- delay ---------------------------------------------------------------------------------------

def test_delay_holds_the_query_then_runs_it(pgwire_proxy, pgwire_faults):
    pgwire_faults("delay_probe", action="delay", delay=0.4)
    with connect(pgwire_proxy) as conn:
        assert conn.execute("select 'delay_probe'").fetchone() == ("delay_probe",)
    record = [q for q in pgwire_proxy.queries() if "delay_probe" in q.sql][-1]
    assert record.injected == "delay" and record.outcome == "ok"
    assert record.duration >= 0.4  # a lower bound: the hold cannot be shorter


def test_delay_of_the_results_lets_an_application_timeout_fire(pgwire_proxy, pgwire_faults, pg_upstream):
    pgwire_faults("slow_rows_probe", action="delay", when="first_row", delay="30s")
    with connect(pgwire_proxy) as conn:
        conn.execute("set statement_timeout = 0")
        # The application's own timeout: it cancels what takes too long.
        timer = cancel_when_active(pgwire_proxy, conn)
        with pytest.raises(errors.QueryCanceled):
            conn.execute("select 'slow_rows_probe'").fetchall()
        timer.join()
    # The statement itself had finished upstream: only the proxy held its rows.
    assert not [r for r in pg_upstream.execute("select query from pg_stat_activity where state = 'active'")
                if "slow_rows_probe" in r[0]]


def test_cancel_of_a_held_query_means_it_never_ran(pgwire_proxy, pgwire_faults, pg_upstream, items):
    pgwire_faults("^insert", action="delay", delay="30s")
    with connect(pgwire_proxy) as conn:
        timer = cancel_when_active(pgwire_proxy, conn)
        with pytest.raises(errors.QueryCanceled, match="canceling statement due to user request"):
            conn.execute(f"insert into {items} values (1)")
        timer.join()
        assert conn.execute("select 'usable'").fetchone() == ("usable",)
    assert count_rows(pg_upstream, items) == 0
    record = [q for q in pgwire_proxy.queries() if q.sql.startswith("insert")][-1]
    assert (record.injected, record.outcome, record.sqlstate) == ("delay", "cancelled", "57014")


# ---- drop ----------------------------------------------------------------------------------------

def test_drop_before_the_query(pgwire_proxy, pgwire_faults, pg_upstream, items):
    fault = pgwire_faults("^insert", action="drop")
    conn = connect(pgwire_proxy, application_name="drop_app")
    with pytest.raises(psycopg.OperationalError):
        conn.execute(f"insert into {items} values (1)")
    assert conn.closed
    wait_until(lambda: upstream_backends(pg_upstream, "drop_app") == 0, what="the upstream backend to go")
    assert count_rows(pg_upstream, items) == 0 and fault.hits == 1
    fault.remove()
    with connect(pgwire_proxy) as again:  # a reconnect works
        again.execute(f"insert into {items} values (2)")
    assert count_rows(pg_upstream, items) == 1


def raw(proxy) -> wire.RawConnection:
    conn = wire.RawConnection(proxy.host, proxy.port, timeout=20)
    conn.startup({"user": proxy.user, "database": proxy.dbname})
    return conn


def test_drop_after_n_rows(pgwire_proxy, pgwire_faults, pg_upstream):
    pgwire_faults("rows_probe", action="drop", when="after_rows", rows=5)
    with raw(pgwire_proxy) as conn:
        conn.send(wire.query("select g, 'rows_probe' from generate_series(1, 100000) g"))
        got = conn.read_until_eof()
    assert wire.kinds(got) == "T" + "D" * 5
    assert [r[0] for r in wire.rows(got)] == ["1", "2", "3", "4", "5"]
    wait_until(lambda: not [r for r in pg_upstream.execute(
        "select query from pg_stat_activity where state = 'active'") if "rows_probe" in r[0]],
        what="the upstream statement to stop")


def test_drop_in_the_middle_of_a_message(pgwire_proxy, pgwire_faults):
    pgwire_faults("mid_probe", action="drop", when="mid_message")
    with raw(pgwire_proxy) as conn:
        conn.send(wire.query("select 'mid_probe' as a_fairly_long_column_name"))
        with pytest.raises(wire.ProtocolError, match="EOF inside message 'T'"):
            conn.read_until_eof()


# ---- notice --------------------------------------------------------------------------------------

def test_notice_then_the_query_as_usual(pgwire_proxy, pgwire_faults):
    pgwire_faults("notice_probe", action="notice", severity="WARNING", sqlstate="01000",
                  message="disk is almost full (injected)")
    notices = []
    with connect(pgwire_proxy) as conn:
        conn.add_notice_handler(lambda d: notices.append((d.severity, d.sqlstate, d.message_primary)))
        assert conn.execute("select 'notice_probe'").fetchone() == ("notice_probe",)
    assert notices == [("WARNING", "01000", "disk is almost full (injected)")]


# ---- matching and counting -----------------------------------------------------------------------

def outcomes(conn, sql: str, n: int) -> str:
    """'.' for a success, 'E' for an injected error, over n runs of sql."""
    out = ""
    for _ in range(n):
        try:
            conn.execute(sql)
            out += "."
        except errors.SerializationFailure:
            out += "E"
    return out


def test_nth_counts_across_sessions(pgwire_proxy, pgwire_faults):
    fault = pgwire_faults("nth_probe", **SERIALIZATION, nth=3)
    with connect(pgwire_proxy) as a, connect(pgwire_proxy) as b:
        seen = [outcomes(c, "select 'nth_probe'", 1) for c in (a, b, a, b, a)]
    assert "".join(seen) == "..E.."
    assert (fault.matches, fault.hits) == (5, 1)


def test_nth_and_every_per_session(pgwire_proxy, pgwire_faults):
    pgwire_faults("per_probe", **SERIALIZATION, nth=2, per_session=True)
    pgwire_faults("every_probe", **SERIALIZATION, every=3)
    with connect(pgwire_proxy) as a, connect(pgwire_proxy) as b:
        assert outcomes(a, "select 'per_probe'", 3) == ".E."
        assert outcomes(b, "select 'per_probe'", 3) == ".E."
        assert outcomes(a, "select 'every_probe'", 7) == "..E..E."


def test_seeded_probability_is_reproducible(pgwire_proxy):
    def pattern(seed: int) -> str:
        with pgwire_proxy.fault("prob_probe", **SERIALIZATION, probability=0.5, seed=seed) as fault:
            with connect(pgwire_proxy) as conn:
                result = outcomes(conn, "select 'prob_probe'", 40)
            assert fault.hits == result.count("E")
        return result
    first, again, other = pattern(7), pattern(7), pattern(8)
    assert first == again
    assert first != other
    assert 0 < first.count("E") < 40


def test_match_narrowed_to_an_application(pgwire_proxy, pgwire_faults):
    pgwire_faults(None, **SERIALIZATION, application_name="victim")
    with connect(pgwire_proxy, application_name="victim") as victim, \
            connect(pgwire_proxy, application_name="bystander") as bystander:
        assert outcomes(victim, "select 1", 2) == "EE"
        assert outcomes(bystander, "select 1", 2) == ".."


def test_rules_change_while_a_session_runs(pgwire_proxy):
    with connect(pgwire_proxy) as conn:
        assert outcomes(conn, "select 'live_probe'", 1) == "."
        fault = pgwire_proxy.add_fault("live_probe", **SERIALIZATION)
        assert outcomes(conn, "select 'live_probe'", 2) == "EE"
        assert [f["id"] for f in pgwire_proxy.faults()] == [fault.id]
        fault.remove()
        assert outcomes(conn, "select 'live_probe'", 1) == "."
        pgwire_proxy.add_fault("live_probe", **SERIALIZATION)
        pgwire_proxy.clear_faults()
        assert outcomes(conn, "select 'live_probe'", 1) == "."
        assert pgwire_proxy.faults() == []
    with pytest.raises(LookupError):
        _ = fault.hits


@pytest.mark.parametrize("rule, message", [
    (dict(match="(", message="x"), "fault match"),
    (dict(sqlstate="4000", message="x"), "sqlstate"),
    (dict(), "needs a message"),
    (dict(action="delay"), "needs a duration"),
    (dict(action="drop", when="after"), "a drop happens"),
    (dict(message="x", probability=1.5), "probability"),
    (dict(message="x", nth=2, every=3), "cannot be combined"),
    (dict(action="explode", message="x"), "action"),
])
def test_bad_rules_are_refused(pgwire_proxy, rule, message):
    with pytest.raises(ValueError, match=message):
        pgwire_proxy.add_fault(**rule)
    assert pgwire_proxy.faults() == []


def test_a_bad_match_names_the_fault_option_and_the_dialect(pgwire_proxy):
    # Python's (?i) is not POSIX ERE: the error names `fault match` (not the deny list whose code it
    # shares), the dialect, and the way to ignore case.
    with pytest.raises(ValueError) as excinfo:
        pgwire_proxy.add_fault("(?i)^commit", sqlstate="40001", message="x")
    message = str(excinfo.value)
    assert message.startswith('fault match: invalid pattern "(?i)^commit" (a POSIX extended regular expression)')
    assert "deny" not in message and "ignore-case option" in message, message
    fault = pgwire_proxy.add_fault("^commit", sqlstate="40001", message="x", ignore_case=True)
    assert pgwire_proxy.faults()[0]["match"] == "^commit"
    fault.remove()


def test_in_process_proxy_reads_a_rules_file(pgwire_proxy_factory, tmp_path):
    rules = tmp_path / "faults.rules"
    rules.write_text("match=file_probe; action=error; sqlstate=40P01; message=deadlock detected (file)\n")
    proxy = pgwire_proxy_factory(faults=rules)
    with connect(proxy) as conn:
        with pytest.raises(errors.DeadlockDetected, match=r"deadlock detected \(file\)"):
            conn.execute("select 'file_probe'")
    assert [(f["action"], f["match"], f["hits"]) for f in proxy.faults()] == [("error", "file_probe", 1)]


def test_error_and_drop_at_an_extended_protocol_execute(pgwire_proxy_factory, pg_upstream, items):
    proxy = pgwire_proxy_factory(extended_protocol="relay")
    fault = proxy.add_fault("^insert", **SERIALIZATION)
    ignored = proxy.add_fault("^select", action="notice", message="simple protocol only")
    with psycopg.connect(proxy.dsn) as conn:  # psycopg's defaults: Parse/Bind/Execute, transactions
        conn.execute(f"select count(*) from {items} where id > %s", [0])
        with pytest.raises(errors.SerializationFailure):
            conn.execute(f"insert into {items} values (%s)", [1])
        assert conn.info.transaction_status == TransactionStatus.INERROR
        conn.rollback()
        assert fault.hits == 1 and ignored.hits == 0
        fault.remove()
        conn.execute(f"insert into {items} values (%s)", [2])
        conn.commit()
    assert count_rows(pg_upstream, items) == 1
    record = [q for q in proxy.queries() if q.injected][-1]
    assert (record.sql, record.injected, record.sqlstate) == (f"insert into {items} values ($1)", "error", "40001")
    proxy.add_fault("^delete", action="drop")
    conn = psycopg.connect(proxy.dsn, autocommit=True)
    with pytest.raises(psycopg.OperationalError):
        conn.execute(f"delete from {items} where id = %s", [2])
    assert conn.closed
    assert count_rows(pg_upstream, items) == 1
