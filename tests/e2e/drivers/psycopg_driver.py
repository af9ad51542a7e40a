"""psycopg 3 with its defaults: server-side parameters (extended protocol), prepare_threshold,
named (server-side) cursors, pipelines. See _workload.py for the transcript."""

import datetime
import decimal

import psycopg
from psycopg import errors

from _workload import BIG, FAILS_AT_START, FAILS_MIDWAY, ROWS, args, checksum, emit, run

host, port, user, dbname, only = args()
conn = psycopg.connect(host=host, port=port, user=user, dbname=dbname)  # not autocommit: the default


def state(exc):
    return [exc.sqlstate, exc.diag.message_primary]


def params():
    cur = conn.execute(
        "select %s::int4 + 1 as i, %s::text as t, %s::numeric as n, %s::bool as b, %s::date as d,"
        " %s::float8 as f, %s::bytea as by, %s::text as nul, %s::int8 as big",
        [41, "héllo wörld", decimal.Decimal("1.50"), True, datetime.date(2024, 2, 29), 0.25,
         b"\x00\x01\xff", None, 9007199254740993])
    emit("params", {"rows": cur.fetchall(), "types": [d.type_code for d in cur.description],
                    "names": [d.name for d in cur.description], "rowcount": cur.rowcount})
    conn.commit()


def rows():
    cur = conn.execute("select g, md5(g::text) as m from generate_series(1, %s) g", [ROWS])
    got = cur.fetchall()
    emit("rows", {"count": len(got), "sum": sum(r[0] for r in got), "sha256": checksum(r[1] for r in got)})
    conn.commit()


def transaction():
    conn.execute("create temp table drivers_t (id int primary key, v text)")
    conn.commit()
    cur = conn.cursor()
    cur.executemany("insert into drivers_t values (%s, %s)", [(i, f"v{i}") for i in range(3)])
    inside = cur.execute("select count(*) from drivers_t").fetchone()[0]
    conn.rollback()
    after = cur.execute("select count(*) from drivers_t").fetchone()[0]
    conn.commit()
    emit("transaction", {"inside": inside, "after_rollback": after})


def error():
    seen = []
    try:
        conn.execute("select 1 / %s::int", [0])
    except errors.Error as exc:
        seen.append(state(exc))
    seen.append(conn.info.transaction_status.name)
    try:
        conn.execute("select %s::text", ["in a failed transaction"])
    except errors.Error as exc:
        seen.append(state(exc))
    conn.rollback()
    seen.append(conn.execute("select %s::text", ["still alive"]).fetchone()[0])
    conn.commit()
    emit("error", seen)


def big_param():
    got = conn.execute("select length(%s::text), md5(%s::text)", [BIG, BIG]).fetchone()
    back = conn.execute("select repeat('y', %s)", [len(BIG)]).fetchone()[0]
    conn.commit()
    emit("big_param", {"length": got[0], "md5": got[1], "returned": len(back)})


def failed_cursor():
    seen = []
    for query in (FAILS_MIDWAY, FAILS_AT_START):
        n = 0
        try:
            with conn.cursor(name="drivers_named") as named:
                named.itersize = 100
                for _ in named.execute(query):
                    n += 1
        except errors.Error as exc:
            seen.append([n, state(exc)])
        conn.rollback()
        seen.append(conn.execute("select %s::text", ["after the cursor"]).fetchone()[0])
        conn.commit()
    emit("failed_cursor", seen)


def close():
    seen = []
    conn.prepared_max = 2  # a third prepared statement evicts (deallocates) the oldest
    for i in range(3):
        for query in ("select %s::int * 2", "select %s::int * 3", "select %s::int * 4"):
            seen.append(conn.execute(query, [i], prepare=True).fetchone()[0])
    conn.commit()
    seen.append(conn.execute("select count(*) from pg_prepared_statements where not from_sql").fetchone()[0])
    with conn.cursor(name="drivers_early") as named:  # a server-side cursor closed before its end
        named.itersize = 10
        named.execute("select g from generate_series(1, 1000) g")
        seen.append(named.fetchmany(5))
    seen.append(conn.execute("select %s::text", ["after the close"]).fetchone()[0])
    conn.commit()
    emit("close", seen)


run(dict(params=params, rows=rows, transaction=transaction, error=error, big_param=big_param,
         failed_cursor=failed_cursor, close=close), only)
conn.close()
