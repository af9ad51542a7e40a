"""asyncpg: its own binary-format extended protocol, the statement cache (named statements, closed
when evicted), cursors in a transaction (portals fetched with Execute row limits). See _workload.py."""

import asyncio
import datetime
import decimal

import asyncpg

from _workload import BIG, FAILS_AT_START, FAILS_MIDWAY, ROWS, args, checksum, emit

host, port, user, dbname, only = args()


def state(exc):
    return [exc.sqlstate, exc.args[0] if exc.args else str(exc)]


async def main():
    # A small statement cache, so the close step's statements are evicted: asyncpg closes them.
    conn = await asyncpg.connect(host=host, port=port, user=user, database=dbname, statement_cache_size=2)

    async def params():
        sql = ("select $1::int4 + 1 as i, $2::text as t, $3::numeric as n, $4::bool as b, $5::date as d,"
               " $6::float8 as f, $7::bytea as by, $8::text as nul, $9::int8 as big")
        values = [41, "héllo wörld", decimal.Decimal("1.50"), True, datetime.date(2024, 2, 29), 0.25,
                  b"\x00\x01\xff", None, 9007199254740993]
        stmt = await conn.prepare(sql)
        got = await stmt.fetch(*values)
        emit("params", {"rows": [list(r.values()) for r in got], "types": [a.type.oid for a in stmt.get_attributes()],
                        "names": [a.name for a in stmt.get_attributes()], "status": stmt.get_statusmsg()})

    async def rows():
        got = await conn.fetch("select g, md5(g::text) as m from generate_series(1, $1::int) g", ROWS)
        emit("rows", {"count": len(got), "sum": sum(r[0] for r in got), "sha256": checksum(r[1] for r in got)})

    async def transaction():
        await conn.execute("create temp table drivers_t (id int primary key, v text)")
        tr = conn.transaction()
        await tr.start()
        await conn.executemany("insert into drivers_t values ($1, $2)", [(i, f"v{i}") for i in range(3)])
        inside = await conn.fetchval("select count(*) from drivers_t")
        await tr.rollback()
        after = await conn.fetchval("select count(*) from drivers_t")
        emit("transaction", {"inside": inside, "after_rollback": after})

    async def error():
        seen = []
        try:
            await conn.fetchval("select 1 / $1::int", 0)
        except asyncpg.PostgresError as exc:
            seen.append(state(exc))
        tr = conn.transaction()
        await tr.start()
        for sql in ("select 1 / $1::int", "select $1::int"):
            try:
                await conn.fetchval(sql, 0)
            except asyncpg.PostgresError as exc:
                seen.append(state(exc))
        await tr.rollback()
        seen.append(await conn.fetchval("select $1::text", "still alive"))
        emit("error", seen)

    async def big_param():
        got = await conn.fetchrow("select length($1::text), md5($1::text)", BIG)
        back = await conn.fetchval("select repeat('y', $1::int)", len(BIG))
        emit("big_param", {"length": got[0], "md5": got[1], "returned": len(back)})

    async def failed_cursor():
        seen = []
        for sql in (FAILS_MIDWAY, FAILS_AT_START):
            n = 0
            try:
                async with conn.transaction():
                    async for _ in conn.cursor(sql, prefetch=100):
                        n += 1
            except asyncpg.PostgresError as exc:
                seen.append([n, state(exc)])
            seen.append(await conn.fetchval("select $1::text", "after the cursor"))
        emit("failed_cursor", seen)

    async def close():
        seen = []
        for i in range(3):  # three statements through a cache of two: each execution evicts (closes) one
            for sql in ("select $1::int * 2", "select $1::int * 3", "select $1::int * 4"):
                seen.append(await conn.fetchval(sql, i))
        stmt = await conn.prepare("select $1::int * 5")
        seen.append(await stmt.fetchval(1))
        del stmt
        async with conn.transaction():  # a cursor closed before its end
            cur = await conn.cursor("select g from generate_series(1, 1000) g")
            seen.append([r[0] for r in await cur.fetch(5)])
        seen.append(await conn.fetchval("select $1::text", "after the close"))
        seen.append(await conn.fetchval("select count(*) from pg_prepared_statements"))
        emit("close", seen)

    steps = dict(params=params, rows=rows, transaction=transaction, error=error, big_param=big_param,
                 failed_cursor=failed_cursor, close=close)
    for name in only:
        await steps[name]()
    print("done", flush=True)
    await conn.close()


asyncio.run(main())
