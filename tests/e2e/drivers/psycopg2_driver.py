"""psycopg2: client-side parameter interpolation over the simple query protocol, named cursors
(DECLARE/FETCH), transactions. See _workload.py for the transcript."""

import datetime
import decimal

import psycopg2
import psycopg2.extensions

from _workload import BIG, FAILS_AT_START, FAILS_MIDWAY, ROWS, args, checksum, emit, run

host, port, user, dbname, only = args()
conn = psycopg2.connect(host=host, port=port, user=user, dbname=dbname)


def state(exc):
    return [exc.pgcode, exc.diag.message_primary]


def query(sql, params=None, fetch="all"):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        if fetch is None:
            return cur.statusmessage
        return cur.fetchall() if fetch == "all" else cur.fetchone()


def params():
    with conn.cursor() as cur:
        cur.execute(
            "select %s::int4 + 1 as i, %s::text as t, %s::numeric as n, %s::bool as b, %s::date as d,"
            " %s::float8 as f, %s::bytea as by, %s::text as nul, %s::int8 as big",
            [41, "héllo wörld", decimal.Decimal("1.50"), True, datetime.date(2024, 2, 29), 0.25,
             psycopg2.Binary(b"\x00\x01\xff"), None, 9007199254740993])
        emit("params", {"rows": cur.fetchall(), "types": [d.type_code for d in cur.description],
                        "names": [d.name for d in cur.description], "rowcount": cur.rowcount})
    conn.commit()


def rows():
    got = query("select g, md5(g::text) as m from generate_series(1, %s) g", [ROWS])
    emit("rows", {"count": len(got), "sum": sum(r[0] for r in got), "sha256": checksum(r[1] for r in got)})
    conn.commit()


def transaction():
    with conn.cursor() as cur:
        cur.execute("create temp table drivers_t (id int primary key, v text)")
        conn.commit()
        cur.executemany("insert into drivers_t values (%s, %s)", [(i, f"v{i}") for i in range(3)])
        cur.execute("select count(*) from drivers_t")
        inside = cur.fetchone()[0]
        conn.rollback()
        cur.execute("select count(*) from drivers_t")
        after = cur.fetchone()[0]
    conn.commit()
    emit("transaction", {"inside": inside, "after_rollback": after})


def error():
    seen = []
    try:
        query("select 1 / %s::int", [0])
    except psycopg2.Error as exc:
        seen.append(state(exc))
    seen.append(conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INERROR)
    try:
        query("select %s::text", ["in a failed transaction"])
    except psycopg2.Error as exc:
        seen.append(state(exc))
    conn.rollback()
    seen.append(query("select %s::text", ["still alive"], fetch="one")[0])
    conn.commit()
    emit("error", seen)


def big_param():
    got = query("select length(%s::text), md5(%s::text)", [BIG, BIG], fetch="one")
    back = query("select repeat('y', %s)", [len(BIG)], fetch="one")[0]
    conn.commit()
    emit("big_param", {"length": got[0], "md5": got[1], "returned": len(back)})


def failed_cursor():
    seen = []
    for sql in (FAILS_MIDWAY, FAILS_AT_START):
        n = 0
        try:
            with conn.cursor(name="drivers_named") as named:
                named.itersize = 100
                named.execute(sql)
                for _ in named:
                    n += 1
        except psycopg2.Error as exc:
            seen.append([n, state(exc)])
        conn.rollback()
        seen.append(query("select %s::text", ["after the cursor"], fetch="one")[0])
        conn.commit()
    emit("failed_cursor", seen)


def close():
    seen = []
    with conn.cursor(name="drivers_early") as named:  # a server-side cursor closed before its end
        named.itersize = 10
        named.execute("select g from generate_series(1, 1000) g")
        seen.append(named.fetchmany(5))
    seen.append(query("select %s::text", ["after the close"], fetch="one")[0])
    seen.append(query("prepare drivers_s (int) as select $1 * 2", fetch=None))
    seen.append(query("execute drivers_s (21)", fetch="one")[0])
    seen.append(query("deallocate drivers_s", fetch=None))
    seen.append(query("select count(*) from pg_prepared_statements", fetch="one")[0])
    conn.commit()
    emit("close", seen)


run(dict(params=params, rows=rows, transaction=transaction, error=error, big_param=big_param,
         failed_cursor=failed_cursor, close=close), only)
conn.close()
