"""The client recipes of docs/testing-with-pgwire-proxy.md, run as written there (the first test, COPY
both ways and a 20,000-row fetch, psycopg 3 with its defaults, psycopg2, SQLAlchemy, asyncpg, a
database per test, the retry loop on an injected COMMIT failure) against the harness's fixtures, with
their defaults (protocol="full", no limits)."""

from __future__ import annotations

import asyncio
import os

import psycopg
import pytest

pytestmark = pytest.mark.skipif(os.environ.get("PGWIRE_PROXY_FIXTURE") == "process",
                                reason="the in-process harness (capture, faults) is what these recipes show")


def connect(proxy):
    # autocommit: each statement is its own transaction, so the capture has no BEGIN and COMMIT of
    # psycopg's in it. Any psycopg settings work through the fixtures' proxies.
    return psycopg.connect(proxy.dsn, autocommit=True)


def test_order_total(pgwire_proxy):
    with connect(pgwire_proxy) as conn:
        conn.execute("create temporary table orders (id int, total numeric)")
        conn.execute("insert into orders values (%s, %s), (%s, %s)", [1, 10, 2, 32])
        assert conn.execute("select sum(total) from orders").fetchone() == (42,)

    sql = [q.sql for q in pgwire_proxy.queries()]
    assert sql[1] == "insert into orders values ($1, $2), ($3, $4)"  # psycopg 3's Parse text


def test_copy_and_a_large_fetch(pgwire_proxy):
    with psycopg.connect(pgwire_proxy.dsn) as conn:                     # psycopg's defaults
        conn.execute("create temporary table items (id int, name text)")
        with conn.cursor() as cur:
            with cur.copy("copy items (id, name) from stdin") as copy:    # COPY FROM STDIN
                for i in range(1, 20001):
                    copy.write_row((i, f"item {i}"))
            with cur.copy("copy (select * from items order by id) to stdout") as copy:   # COPY TO STDOUT
                assert len(list(copy.rows())) == 20000
            cur.execute("select id, name from items where id > %s order by id", [0])
            assert len(cur.fetchall()) == 20000     # the binary's default, 10,000 rows, would stop it
    queries = {q.sql: q for q in pgwire_proxy.queries()}
    assert queries["copy items (id, name) from stdin"].command_tag == "COPY 20000"
    assert queries["select id, name from items where id > $1 order by id"].rows == 20000


def test_psycopg3(pgwire_proxy):
    with psycopg.connect(pgwire_proxy.dsn) as conn:
        with conn.transaction():
            conn.execute("create temporary table t (x int)")
            conn.execute("insert into t values (%s)", [1])
    assert "insert into t values ($1)" in [q.sql for q in pgwire_proxy.queries()]   # Parse text, $1


def test_psycopg2(pgwire_proxy):
    psycopg2 = pytest.importorskip("psycopg2")
    conn = psycopg2.connect(pgwire_proxy.dsn)
    with conn, conn.cursor() as cur:            # BEGIN ... COMMIT
        cur.execute("create temporary table orders (id int, total int)")
        cur.execute("insert into orders values (%s, %s)", (1, 10))
    conn.close()
    assert [q.sql for q in pgwire_proxy.queries()] == [
        "BEGIN", "create temporary table orders (id int, total int)",
        "insert into orders values (1, 10)", "COMMIT"]


@pytest.fixture
def engine(pgwire_proxy):
    sqlalchemy = pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg2")
    p = pgwire_proxy
    engine = sqlalchemy.create_engine(f"postgresql+psycopg2://{p.user}@{p.host}:{p.port}/{p.dbname}",
                                      poolclass=sqlalchemy.pool.NullPool)
    yield engine
    engine.dispose()


def test_sqlalchemy(engine, pgwire_proxy, assert_queries):
    import sqlalchemy
    with assert_queries(pgwire_proxy, count=1, match=r"(?i)^SELECT 42$"):   # Python re
        with engine.begin() as conn:
            assert conn.execute(sqlalchemy.text("select :n"), {"n": 42}).scalar() == 42


def test_asyncpg(pgwire_proxy):
    asyncpg = pytest.importorskip("asyncpg")
    proxy = pgwire_proxy

    async def main():
        conn = await asyncpg.connect(host=proxy.host, port=proxy.port, user=proxy.user,
                                     database=proxy.dbname)
        try:
            return await conn.fetchval("select $1::int + 1", 41)
        finally:
            await conn.close()

    assert asyncio.run(main()) == 42


def test_host_and_port(pgwire_proxy):
    assert isinstance(pgwire_proxy.port, int) and pgwire_proxy.host == "127.0.0.1"
    assert f"host={pgwire_proxy.host} port={pgwire_proxy.port}" in pgwire_proxy.dsn


def test_signup(pgwire_database, pgwire_proxy):
    psycopg2 = pytest.importorskip("psycopg2")
    conn = psycopg2.connect(pgwire_database.dsn)       # through pgwire_proxy, to this test's database
    with conn, conn.cursor() as cur:
        cur.execute("create table users (name text primary key)")   # no other test sees it
        cur.execute("insert into users values ('ada')")
    conn.close()
    assert pgwire_proxy.queries()[-1].sql == "COMMIT"


def transfer(engine, amount):
    """The code under test: the usual retry loop, with no ROLLBACK of its own."""
    import sqlalchemy
    from sqlalchemy import text
    for attempt in range(3):
        try:
            with engine.begin() as conn:                # BEGIN ... COMMIT
                conn.execute(text("update accounts set balance = balance - :n where id = 1"), {"n": amount})
                conn.execute(text("update accounts set balance = balance + :n where id = 2"), {"n": amount})
            return
        except sqlalchemy.exc.OperationalError as exc:
            if exc.orig.pgcode != "40001":
                raise
    raise RuntimeError("still failing after 3 attempts")


def test_transfer_is_retried(pgwire_database, pgwire_faults):
    sqlalchemy = pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg2")
    from sqlalchemy import text
    # accounts (1, 100), (2, 0) come from the template (see "Filling the template" above).
    engine = sqlalchemy.create_engine(pgwire_database.url(), pool_size=1)   # one connection, reused
    fault = pgwire_faults("^commit", ignore_case=True, sqlstate="40001",
                          message="could not serialize access", nth=2)
    transfer(engine, 30)
    transfer(engine, 30)                                # its COMMIT fails once and is retried
    assert fault.hits == 1
    with engine.connect() as conn:
        assert conn.execute(text("select balance from accounts order by id")).scalars().all() == [40, 60]
    engine.dispose()                                    # no connection left for the next test
