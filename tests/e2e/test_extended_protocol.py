"""The extended query protocol relayed (--extended-protocol=relay): real drivers (psycopg's default
cursors, pipelines, prepared statements, server-side cursors; pgbench -M extended/prepared) see what
they see direct, and the guardrails, cancel and the timeout hold for Parse/Bind/Execute too."""

from __future__ import annotations

import os
import subprocess
import threading

import psycopg
import pytest
from psycopg import errors
from psycopg.pq import TransactionStatus

import wire
from pgwire_proxy.cluster import parse_dsn
from support import upstream_active, wait_until

READ_TIMEOUT = 20


@pytest.fixture
def relay(pgwire_proxy_factory):
    return pgwire_proxy_factory(extended_protocol="relay")


@pytest.fixture
def limited(pgwire_proxy_factory):
    return pgwire_proxy_factory(extended_protocol="relay", max_rows=10, deny=["forbidden_probe"])


@pytest.fixture
def relay_table(pg_upstream):
    pg_upstream.execute("drop table if exists ext_items")
    pg_upstream.execute("create table ext_items (id int primary key, name text)")
    yield "ext_items"
    pg_upstream.execute("drop table if exists ext_items")


def in_process(proxy) -> bool:
    return hasattr(proxy, "queries")


# ---- psycopg's default (server-side binding) cursors, compared with direct -----------------------

def psycopg_session(dsn: str, table: str) -> list:
    """What a typical application does with psycopg 3 defaults; returns everything it saw."""
    seen = []
    with psycopg.connect(dsn) as conn:  # not autocommit: BEGIN goes through the extended protocol too
        cur = conn.cursor()
        seen.append(cur.execute("select %s::int + %s, %s::text, %s::numeric, %s::date is null",
                                [40, 2, "text", "1.50", None]).fetchall())
        cur.executemany(f"insert into {table} (id, name) values (%s, %s)", [(i, f"n{i}") for i in range(40)])
        seen.append(cur.rowcount)
        conn.commit()
        for i in range(8):  # prepared after a few executions (prepare_threshold) and then reused
            seen.append(cur.execute(f"select name from {table} where id = %s", [i]).fetchone())
        seen.append(cur.execute(f"select count(*) from {table} where id < %s", [20], prepare=True).fetchone())
        conn.commit()
        seen.append(cur.execute(f"select count(*) from {table} where id < %s", [30], prepare=True).fetchone())
        with conn.pipeline():
            p1 = conn.execute("select 1 as one")
            p2 = conn.execute(f"update {table} set name = %s where id = %s", ["renamed", 1])
            p3 = conn.execute(f"select name from {table} where id = %s", [1])
        seen += [p1.fetchall(), p2.rowcount, p3.fetchall()]
        conn.commit()
        with conn.cursor(name="ext_server_cursor") as named:
            named.itersize = 7
            seen.append(sum(1 for _ in named.execute(f"select id from {table} order by id")))
        conn.rollback()
        with pytest.raises(errors.UniqueViolation):
            cur.execute(f"insert into {table} (id, name) values (%s, %s)", [1, "dup"])
        seen.append(conn.info.transaction_status)
        conn.rollback()
        seen.append(cur.execute("select %s", ["after the error"]).fetchall())
        conn.commit()
    return seen


def test_psycopg_defaults_see_the_same_as_direct(relay, pg_upstream, relay_table):
    direct = psycopg_session(pg_upstream.dsn, relay_table)
    pg_upstream.execute(f"truncate {relay_table}")
    proxied = psycopg_session(relay.dsn, relay_table)
    assert proxied == direct
    assert direct[0] == [(42, "text", __import__("decimal").Decimal("1.50"), True)]


def test_named_prepared_statements_survive_transactions(relay):
    with psycopg.connect(relay.dsn) as conn:
        conn.execute("prepare by_sql (int) as select $1 * 2")  # an SQL-level one, for comparison
        for value in range(3):
            assert conn.execute("select %s::int * 3", [value], prepare=True).fetchone() == (value * 3,)
            conn.commit()  # the named statement psycopg prepared outlives each transaction
        prepared = conn.execute("select name from pg_prepared_statements where not from_sql").fetchall()
        assert len(prepared) == 1
        assert conn.execute("execute by_sql(21)").fetchone() == (42,)


@pytest.mark.parametrize("mode", ["extended", "prepared"])
def test_pgbench_modes_run_without_failures(pgwire_proxy_factory, pg_upstream, mode):
    proxy = pgwire_proxy_factory(extended_protocol="relay", max_rows=0)
    subprocess.run(["pgbench", "-i", "-s", "1", "-q", pg_upstream.dsn], check=True, capture_output=True)
    result = subprocess.run(["pgbench", "-M", mode, "-t", "200", "-c", "4", "-j", "2", "-n", proxy.dsn],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "number of failed transactions: 0" in result.stdout
    assert "number of transactions actually processed: 800/800" in result.stdout


# ---- exact message sequences, compared with direct -----------------------------------------------

def raw_direct(pg_upstream) -> wire.RawConnection:
    params = parse_dsn(pg_upstream.dsn)
    conn = wire.RawConnection(params.get("host", "127.0.0.1"), int(params.get("port", 5432)), timeout=READ_TIMEOUT)
    conn.startup({"user": params.get("user", "postgres"), "database": params.get("dbname", "postgres")})
    return conn


def raw_proxy(proxy) -> wire.RawConnection:
    conn = wire.RawConnection(proxy.host, proxy.port, timeout=READ_TIMEOUT)
    conn.startup({"user": proxy.user, "database": proxy.dbname})
    return conn


def exchange(conn: wire.RawConnection, data: bytes, syncs: int = 1) -> list:
    conn.send(data)
    out = []
    for _ in range(syncs):
        out += conn.read_until_ready()
    return [(m.kind, m.body if m.kind != "E" else (m.error_fields()["C"], m.error_fields()["M"])) for m in out]


PIPELINE = (
    wire.parse("select $1::int as n", "ext_s1") + wire.describe_statement("ext_s1")
    + wire.bind("", "ext_s1", ["1"]) + wire.describe_portal() + wire.execute()
    + wire.parse("select generate_series(1, 3)") + wire.bind() + wire.execute()
    + wire.sync()
    + wire.bind("", "ext_s1", ["2"]) + wire.execute()
    + wire.parse("select 1/0") + wire.bind() + wire.execute()  # the error in the middle
    + wire.bind("", "ext_s1", ["3"]) + wire.execute()         # ignored up to the Sync
    + wire.sync()
    + wire.bind("p1", "ext_s1", ["4"]) + wire.execute("p1", 0) + wire.close_portal("p1")
    + wire.close_statement("ext_s1") + wire.parse("select 'x' where false") + wire.bind() + wire.describe_portal()
    + wire.execute() + wire.parse("") + wire.bind() + wire.execute()
    + wire.sync()
)


def test_pipelined_batches_with_an_error_match_direct_byte_for_byte(relay, pg_upstream):
    with raw_direct(pg_upstream) as direct:
        expected = exchange(direct, PIPELINE, syncs=3)
    with raw_proxy(relay) as proxied:
        got = exchange(proxied, PIPELINE, syncs=3)
    assert got == expected
    kinds = "".join(kind for kind, _ in got)
    # (1/0 of constants fails already when planned at Bind; "select 'x' where false" still describes a row.)
    assert kinds == "1tT2TDC" "12DDDC" "Z" "2DC" "1E" "Z" "2DC3" "3" "12TC" "12I" "Z"


def memory_kb(pid: int, field: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def pipeline_answers(conn: wire.RawConnection, pipeline: bytes, length: int) -> bytes:
    """Sends `pipeline` from a thread as fast as the socket takes it while reading `length` bytes of replies."""
    sender = threading.Thread(target=conn.sock.sendall, args=(pipeline,))
    sender.start()
    got = bytearray(conn.buffer)
    while len(got) < length:
        chunk = conn.sock.recv(1 << 20)
        if not chunk:
            break
        got += chunk
    sender.join()
    return bytes(got)


def test_a_pipeline_sent_faster_than_answered_is_relayed_whole_without_the_proxy_growing(
        pgwire_proxy_process_factory, pg_upstream):
    # Tiny messages written faster than PostgreSQL answers them pile up on their way upstream; each used
    # to become a pending entry (~80 bytes for a 12-byte message): 300,000 pairs grew the proxy by 85-120
    # MB. The relay now reads a pipeline while fewer than 16,384 of its messages await replies.
    proxy = pgwire_proxy_process_factory(extended_protocol="relay")
    pairs = 300_000
    pipeline = wire.parse("select 1", "ext_flood") + (wire.bind("", "ext_flood") + wire.execute()) * pairs + wire.sync()
    length = 5 + pairs * (5 + 12 + 14) + 6  # ParseComplete, (BindComplete DataRow CommandComplete) each, ReadyForQuery
    with raw_direct(pg_upstream) as direct:
        expected = pipeline_answers(direct, pipeline, length)
    assert len(expected) == length and expected.endswith(b"Z\0\0\0\x05I")
    pid = proxy.process.pid
    with raw_proxy(proxy) as proxied:
        before = memory_kb(pid, "VmRSS")
        got = pipeline_answers(proxied, pipeline, length)
    assert got == expected
    if not os.environ.get("PGWIRE_PROXY_SANITIZER"):  # a sanitizer's allocator keeps what is freed
        assert memory_kb(pid, "VmHWM") - before < 16 * 1024


def test_large_parses_pipelined_without_a_sync_are_answered_as_direct_without_the_proxy_growing(
        pgwire_proxy_process_factory, pg_upstream):
    # PostgreSQL is done with an unnamed statement's text once the next Parse replaces it, and holds
    # its ParseCompletes back until a Sync. The proxy kept every text until its ParseComplete: 64 texts
    # of 1 MB grew it by 64 MB. It now stops reading at 8 MB of them and sends a Flush of its own so the
    # answers come (without that Flush this pipeline would wait forever).
    proxy = pgwire_proxy_process_factory(extended_protocol="relay")
    pipeline = b"".join(wire.parse(f"select {i} -- " + "x" * 1_000_000) for i in range(64)) + wire.sync()
    with raw_direct(pg_upstream) as direct:
        expected = exchange(direct, pipeline)
    assert [kind for kind, _ in expected] == ["1"] * 64 + ["Z"]
    pid = proxy.process.pid
    with raw_proxy(proxy) as proxied:
        before = memory_kb(pid, "VmRSS")
        got = exchange(proxied, pipeline)
    assert got == expected
    if not os.environ.get("PGWIRE_PROXY_SANITIZER"):  # a sanitizer's allocator keeps what is freed
        assert memory_kb(pid, "VmHWM") - before < 32 * 1024


def test_portal_suspension_and_flush_match_direct(relay, pg_upstream):
    script = (wire.parse("select generate_series(1, 5)") + wire.bind("cur") + wire.execute("cur", 2) + wire.flush())
    rest = wire.execute("cur", 2) + wire.execute("cur", 0) + wire.sync()
    results = []
    for conn in (raw_direct(pg_upstream), raw_proxy(relay)):
        with conn:
            conn.send(wire.query("begin"))
            conn.read_until_ready()
            conn.send(script)
            first = conn.read_until("s")  # answered on Flush, before any Sync
            results.append(([m.kind for m in first], exchange(conn, rest)))
    assert results[0] == results[1]
    assert results[1][0] == ["1", "2", "D", "D", "s"]


# ---- guardrails ----------------------------------------------------------------------------------

def test_row_limit_per_execute_then_the_next_batch_succeeds(limited, pg_upstream):
    with raw_proxy(limited) as conn:
        conn.send(wire.parse("select generate_series(1, 1000000) /* ext_breach_probe */") + wire.bind()
                  + wire.execute() + wire.parse("select 'after in batch'") + wire.bind() + wire.execute()
                  + wire.sync()
                  + wire.parse("select generate_series(1, 10)") + wire.bind() + wire.execute() + wire.sync())
        first = conn.read_until_ready()
        assert wire.kinds(first) == "12" + "D" * 10 + "EZ"
        error = wire.errors_in(first)[0]
        assert error["C"] == "54000" and "10 rows" in error["M"]
        second = conn.read_until_ready()
        assert wire.kinds(second) == "12" + "D" * 10 + "CZ"
        assert second[-1].body == b"I"
    wait_until(lambda: not upstream_active(pg_upstream, "ext_breach_probe"), what="the breached statement to stop")


def test_a_breach_rolls_back_what_the_batch_already_did(limited, pg_upstream, relay_table):
    # An insert and a too-large select in one batch (one implicit transaction), the client waiting on
    # Flush before its Sync: it is told the batch failed, so the insert must not stay.
    with raw_proxy(limited) as conn:
        conn.send(wire.parse(f"insert into {relay_table} values (1, 'rolled back')") + wire.bind() + wire.execute()
                  + wire.parse("select generate_series(1, 100)") + wire.bind() + wire.execute() + wire.flush())
        assert wire.kinds(conn.read_until("E")) == "12C12" + "D" * 10 + "E"
        # Messages after the error are ignored up to the Sync, as PostgreSQL would.
        reply = exchange(conn, wire.parse(f"insert into {relay_table} values (2, 'ignored')") + wire.bind()
                         + wire.execute() + wire.sync())
        assert reply == [("Z", b"I")]
    assert pg_upstream.execute(f"select count(*) from {relay_table}") == [(0,)]


def test_a_breach_inside_a_transaction_block_fails_it(limited, pg_upstream, relay_table):
    with raw_proxy(limited) as conn:
        assert exchange(conn, wire.query("begin"))[-1] == ("Z", b"T")
        reply = exchange(conn, wire.parse(f"insert into {relay_table} values (1, 'rolled back')") + wire.bind()
                         + wire.execute() + wire.parse("select generate_series(1, 100)") + wire.bind()
                         + wire.execute() + wire.sync())
        assert "".join(kind for kind, _ in reply) == "12C12" + "D" * 10 + "EZ"
        assert reply[-2][1][0] == "54000" and reply[-1] == ("Z", b"E")
        assert exchange(conn, wire.query("commit"))[-1] == ("Z", b"I")  # COMMIT of a failed block rolls back
    assert pg_upstream.execute(f"select count(*) from {relay_table}") == [(0,)]


def test_row_limit_counts_each_execute_of_a_portal(limited):
    with raw_proxy(limited) as conn:
        conn.send(wire.query("begin"))
        conn.read_until_ready()
        conn.send(wire.parse("select generate_series(1, 25)") + wire.bind("c") + wire.execute("c", 10)
                  + wire.execute("c", 10) + wire.execute("c", 10) + wire.sync())
        got = wire.kinds(conn.read_until_ready())
        assert got == "12" + "D" * 10 + "s" + "D" * 10 + "s" + "D" * 5 + "CZ"


def test_psycopg_breach_keeps_the_transaction_semantics(limited):
    with psycopg.connect(limited.dsn) as conn:
        conn.execute("select 1")
        with pytest.raises(errors.ProgramLimitExceeded):
            conn.execute("select generate_series(1, %s)", [11])
        assert conn.info.transaction_status == TransactionStatus.INERROR
        conn.rollback()
        assert conn.execute("select count(*) from generate_series(1, %s)", [10]).fetchone() == (10,)


def test_deny_matches_parse_text_and_the_batch_is_ignored_up_to_sync(limited, pg_upstream, relay_table):
    with raw_proxy(limited) as conn:
        reply = exchange(conn, wire.parse(f"insert into {relay_table} values (1, 'runs then rolls back')")
                         + wire.bind() + wire.execute()
                         + wire.parse("select 'forbidden_probe'") + wire.bind() + wire.execute()
                         + wire.parse(f"insert into {relay_table} values (2, 'ignored')") + wire.bind()
                         + wire.execute() + wire.sync())
        assert [kind for kind, _ in reply] == ["1", "2", "C", "E", "Z"]
        assert reply[3][1][0] == "42501" and "forbidden_probe" in reply[3][1][1]
        assert reply[4][1] == b"I"
        assert exchange(conn, wire.parse("select 1") + wire.bind() + wire.execute() + wire.sync()) == [
            ("1", b""), ("2", b""), ("D", b"\x00\x01\x00\x00\x00\x011"), ("C", b"SELECT 1\x00"), ("Z", b"I")]
    # As PostgreSQL does after an error, the whole implicit transaction rolled back.
    assert pg_upstream.execute(f"select count(*) from {relay_table}") == [(0,)]


def test_deny_with_psycopg_parameters(limited):
    with psycopg.connect(limited.dsn, autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("select %s::text as forbidden_probe", ["x"])
        assert conn.execute("select %s::int", [7]).fetchone() == (7,)


def test_function_call_and_copy_stay_refused(relay, relay_table):
    with raw_proxy(relay) as conn:
        reply = exchange(conn, wire.parse("select 1") + wire.bind() + wire.execute() + wire.function_call()
                         + wire.sync())
        assert [kind for kind, _ in reply] == ["1", "2", "D", "C", "E", "Z"]
        assert reply[4][1][0] == "0A000"
        reply = exchange(conn, wire.parse(f"copy {relay_table} from stdin") + wire.bind() + wire.execute()
                         + wire.sync())
        assert [kind for kind, _ in reply] == ["1", "2", "E", "Z"]
        assert reply[2][1][0] == "0A000"
        reply = exchange(conn, wire.parse("copy (select generate_series(1, 100000)) to stdout") + wire.bind()
                         + wire.execute() + wire.sync())
        assert [kind for kind, _ in reply] == ["1", "2", "E", "Z"]
        assert reply[2][1][0] == "0A000"
        assert exchange(conn, wire.query("select 'simple still works'"))[-1] == ("Z", b"I")


# ---- cancel and timeout --------------------------------------------------------------------------

def test_cancel_reaches_an_extended_protocol_statement(relay, pg_upstream):
    with psycopg.connect(relay.dsn, autocommit=True) as conn:
        def cancel_when_running():
            wait_until(lambda: upstream_active(pg_upstream, "ext_cancel_probe"), what="the statement to run")
            conn.cancel()
        canceller = threading.Thread(target=cancel_when_running)
        canceller.start()
        with pytest.raises(errors.QueryCanceled):
            conn.execute("select pg_sleep(%s) /* ext_cancel_probe */", [30])
        canceller.join()
        assert conn.execute("select %s::int", [1]).fetchone() == (1,)


def test_statement_timeout_and_backstop_in_relay_mode(pgwire_proxy_factory, pg_upstream):
    proxy = pgwire_proxy_factory(extended_protocol="relay", query_timeout="1s")
    with psycopg.connect(proxy.dsn, autocommit=True) as conn:
        with pytest.raises(errors.QueryCanceled) as excinfo:
            conn.execute("select pg_sleep(%s)", [30])
        assert "statement timeout" in excinfo.value.diag.message_primary
        conn.execute("set statement_timeout = 0")
        with pytest.raises(errors.QueryCanceled) as excinfo:
            conn.execute("select pg_sleep(%s) /* ext_backstop_probe */", [60])
        assert "proxy's query timeout of 1s" in excinfo.value.diag.message_primary
        assert not upstream_active(pg_upstream, "ext_backstop_probe")
        assert conn.execute("select %s::int", [5]).fetchone() == (5,)


# ---- what the harness records ----------------------------------------------------------------------

def test_capture_shows_parse_text_rows_and_outcomes(limited):
    if not in_process(limited):
        pytest.skip("query capture is the in-process Proxy's")
    with psycopg.connect(limited.dsn, autocommit=True) as conn:
        conn.execute("select generate_series(1, %s)", [3]).fetchall()
        with pytest.raises(errors.ProgramLimitExceeded):
            conn.execute("select generate_series(1, %s)", [50])
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("select 'forbidden_probe' where %s", [True])
        with pytest.raises(errors.DivisionByZero):
            conn.execute("select 1 / %s", [0])
        with pytest.raises(errors.SyntaxError):
            conn.execute("selec %s", [1])
    got = [(q.sql, q.outcome, q.sqlstate, q.rows) for q in limited.queries()]
    assert got == [
        ("select generate_series(1, $1)", "ok", None, 3),
        ("select generate_series(1, $1)", "limit", "54000", 10),
        ("select 'forbidden_probe' where $1", "denied", "42501", 0),
        ("select 1 / $1", "error", "22012", 0),
        ("selec $1", "error", "42601", 0),
    ]
    assert limited.queries()[0].command_tag == "SELECT 3"


def test_reject_stays_the_default(pgwire_proxy_process_factory):
    # The binary's default is the seed's --protocol=simple (the test fixtures relay the whole protocol).
    proxy = pgwire_proxy_process_factory()
    with psycopg.connect(proxy.dsn, autocommit=True) as conn:
        with pytest.raises(errors.FeatureNotSupported):
            conn.execute("select %s::int", [1])


def test_bad_extended_protocol_option_is_refused(pgwire_proxy_factory):
    # ValueError from the in-process Proxy; the binary (PGWIRE_PROXY_FIXTURE=process) exits with the message.
    with pytest.raises((ValueError, RuntimeError), match=r"extended.protocol: invalid value \"sometimes\""):
        pgwire_proxy_factory(extended_protocol="sometimes")


# ---- messages real drivers send that the suite above does not: Close, a Query in a batch, huge Binds

CLOSE_THEN_QUERY = (
    wire.parse("select generate_series(1, 3)", "cur_s") + wire.bind("cur_p", "cur_s") + wire.execute("cur_p", 1)
    + wire.flush()
)


def test_close_then_a_query_without_sync_matches_direct(relay, pg_upstream):
    """pg-cursor after a failed read: Close of its portal, then a simple Query, with no Sync between."""
    results = []
    for conn in (raw_direct(pg_upstream), raw_proxy(relay)):
        with conn:
            conn.send(CLOSE_THEN_QUERY)
            first = conn.read_until("s")
            conn.send(wire.close_portal("cur_p") + wire.flush())
            closed = conn.read_until("3")
            conn.send(wire.query("select 'after close' as a"))
            after = conn.read_until_ready()
            conn.send(wire.query("select 2"))
            again = conn.read_until_ready()
            results.append(([m.kind for m in first], [m.kind for m in closed], wire.kinds(after), wire.rows(after),
                             after[-1].body, wire.rows(again)))
    assert results[0] == results[1]
    assert results[1][2] == "TDCZ" and results[1][3] == [["after close"]]


def test_a_proxy_refusal_then_a_query_without_sync_is_answered(limited, pg_upstream):
    """The proxy failed the batch (a denied Parse); the client sends a Query instead of a Sync."""
    with raw_proxy(limited) as conn:
        conn.send(wire.parse("select 'forbidden_probe'") + wire.bind() + wire.execute() + wire.flush())
        refused = conn.read_until("E")
        assert refused[-1].error_fields()["C"] == "42501"
        conn.send(wire.query("select 'served'"))
        served = conn.read_until_ready()
        assert wire.kinds(served) == "TDCZ" and wire.rows(served) == [["served"]]


@pytest.mark.parametrize("size", [1 << 20, 8 << 20])
def test_a_bind_of_megabytes_is_relayed(relay, pg_upstream, size):
    """asyncpg's `fetchval("select length($1::text)", "x" * 1048576)` once hung: the Bind was read whole
    while the upstream queue was full, and nothing decoded it once the queue drained."""
    script = wire.parse("select length($1::text)") + wire.bind("", "", ["x" * size]) + wire.execute() + wire.sync()
    with raw_proxy(relay) as conn:
        conn.send(script)
        got = conn.read_until_ready()
        assert wire.kinds(got) == "12DCZ" and wire.rows(got) == [[str(size)]]
        # pipelined twice in one write, then a simple query
        conn.send(script + script + wire.query("select 'next'"))
        got = conn.read_until_ready() + conn.read_until_ready() + conn.read_until_ready()
        assert wire.rows(got) == [[str(size)], [str(size)], ["next"]]
