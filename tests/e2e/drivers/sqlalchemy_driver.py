"""SQLAlchemy (Core, over psycopg2): bound parameters, a Table with executemany inserts, engine
transactions, errors (the DBAPI's pgcode), stream_results (a psycopg2 named cursor) failing and
closed early, connections returned to the pool and reused. See _workload.py for the transcript."""

import datetime
import decimal

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from _workload import BIG, FAILS_AT_START, FAILS_MIDWAY, ROWS, args, checksum, emit, run

host, port, user, dbname, only = args()
engine = sa.create_engine(f"postgresql+psycopg2://{user}@{host}:{port}/{dbname}", pool_size=1, max_overflow=0,
                          future=True)
meta = sa.MetaData()
items = sa.Table("drivers_sa_items", meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Text),
                 prefixes=["TEMPORARY"])
# One connection for the whole run, as the temporary table lives in its session.
conn = engine.connect()


def state(exc):
    return [exc.orig.pgcode, exc.orig.diag.message_primary]


def params():
    got = conn.execute(sa.text(
        "select cast(:i as int4) + 1 as i, cast(:t as text) as t, cast(:n as numeric) as n, cast(:b as bool) as b,"
        " cast(:d as date) as d, cast(:f as float8) as f, cast(:by as bytea) as by, cast(:nul as text) as nul,"
        " cast(:big as int8) as big"),
        dict(i=41, t="héllo wörld", n=decimal.Decimal("1.50"), b=True, d=datetime.date(2024, 2, 29), f=0.25,
             by=b"\x00\x01\xff", nul=None, big=9007199254740993))
    emit("params", {"rows": [list(r) for r in got], "names": list(got.keys())})
    conn.commit()


def rows():
    got = conn.execute(sa.text("select g, md5(g::text) as m from generate_series(1, :n) g"), dict(n=ROWS)).all()
    emit("rows", {"count": len(got), "sum": sum(r[0] for r in got), "sha256": checksum(r[1] for r in got)})
    conn.commit()


def transaction():
    meta.create_all(conn)
    conn.commit()
    conn.execute(items.insert(), [dict(id=i, v=f"v{i}") for i in range(3)])
    inside = conn.execute(sa.select(sa.func.count()).select_from(items)).scalar()
    conn.rollback()
    after = conn.execute(sa.select(sa.func.count()).select_from(items)).scalar()
    conn.rollback()
    with conn.begin():  # committed
        conn.execute(items.insert().values(id=10, v="kept"))
    kept = conn.execute(sa.select(items.c.v).where(items.c.id == 10)).scalar()
    conn.commit()
    emit("transaction", {"inside": inside, "after_rollback": after, "kept": kept})


def error():
    seen = []
    try:
        conn.execute(sa.text("select 1 / cast(:z as int)"), dict(z=0))
    except sa_exc.DBAPIError as exc:
        seen.append(state(exc))
    try:
        conn.execute(sa.text("select 1"))
    except sa_exc.DBAPIError as exc:
        seen.append(state(exc))
    conn.rollback()
    try:
        conn.execute(items.insert().values(id=10, v="duplicate"))
    except sa_exc.IntegrityError as exc:
        seen.append(state(exc))
    conn.rollback()
    seen.append(conn.execute(sa.text("select cast(:t as text)"), dict(t="still alive")).scalar())
    conn.commit()
    emit("error", seen)


def big_param():
    got = conn.execute(sa.text("select length(cast(:s as text)), md5(cast(:s as text))"), dict(s=BIG)).one()
    back = conn.execute(sa.text("select repeat('y', :n)"), dict(n=len(BIG))).scalar()
    conn.commit()
    emit("big_param", {"length": got[0], "md5": got[1], "returned": len(back)})


def failed_cursor():
    seen = []
    for sql in (FAILS_MIDWAY, FAILS_AT_START):
        n = 0
        try:
            result = conn.execution_options(stream_results=True, max_row_buffer=100).execute(sa.text(sql))
            for _ in result:
                n += 1
        except sa_exc.DBAPIError as exc:
            seen.append([n, state(exc)])
        conn.rollback()
        seen.append(conn.execute(sa.text("select 'after the cursor'")).scalar())
        conn.commit()
    emit("failed_cursor", seen)


def close():
    global conn
    seen = []
    result = conn.execution_options(stream_results=True).execute(
        sa.text("select g from generate_series(1, 1000) g"))
    seen.append([r[0] for r in result.fetchmany(5)])
    result.close()  # closes the server-side cursor before its end
    seen.append(conn.execute(sa.text("select 'after the close'")).scalar())
    conn.commit()
    conn.close()  # back to the pool (which rolls back), then out again: the same session, temp table and all
    conn = engine.connect()
    seen.append(conn.execute(sa.select(sa.func.count()).select_from(items)).scalar())
    emit("close", seen)


run(dict(params=params, rows=rows, transaction=transaction, error=error, big_param=big_param,
         failed_cursor=failed_cursor, close=close), only)
conn.close()
engine.dispose()
