// postgres.js (`postgres`) with its defaults: every query a named prepared statement (Parse once,
// then Bind/Execute), pipelined, types fetched at connect; sql.begin transactions; .cursor() portals
// read in batches, failing (mid-way and at once) and left early (Close), then more queries.
// Usage: node postgres_js.js HOST PORT USER DBNAME [STEP...]; prints `STEP JSON` lines, then `done`.
'use strict';
const crypto = require('crypto');
const postgres = require('postgres');

const STEPS = ['params', 'rows', 'transaction', 'error', 'big_param', 'failed_cursor', 'close'];
const [host, port, user, database, ...only] = process.argv.slice(2);
const BIG = 'x'.repeat(1048576);

const emit = (step, value) => process.stdout.write(`${step} ${JSON.stringify(value)}\n`);
const state = (e) => [e.code, e.message];
const sha256 = (texts) => crypto.createHash('sha256').update(texts.join('\n')).digest('hex');

async function main() {
  const sql = postgres({ host, port: Number(port), user, database, max: 1, onnotice: () => {}, connect_timeout: 30 });
  // (After a failed cursor postgres.js 3.4 returns the next result in a longer, sparse array: take the
  // row that is there.)
  const alive = async (text) => (await sql`select ${text}::text as t`).find(Boolean).t;

  const steps = {
    async params() {
      const r = await sql`select ${41}::int4 + 1 as i, ${'héllo wörld'}::text as t, ${'1.50'}::numeric as n,
        ${true}::bool as b, ${'2024-02-29'}::date::text as d, ${0.25}::float8 as f, ${Buffer.from([0, 1, 255])}::bytea as by,
        ${null}::text as nul, ${'9007199254740993'}::int8 as big`;
      emit('params', {
        rows: r.map((row) => Object.values(row).map((v) => (Buffer.isBuffer(v) ? v.toString('hex') : v))),
        types: r.columns.map((c) => c.type), names: r.columns.map((c) => c.name), command: r.command, count: r.count,
      });
    },
    async rows() {
      const r = await sql`select g, md5(g::text) as m from generate_series(1, ${20000}::int) g`;
      emit('rows', { count: r.length, sum: r.reduce((a, row) => a + row.g, 0), sha256: sha256(r.map((row) => row.m)) });
    },
    async transaction() {
      await sql`create temp table drivers_t (id int primary key, v text)`;
      let inside = null;
      try {
        await sql.begin(async (tx) => {
          for (let i = 0; i < 3; i += 1) await tx`insert into drivers_t values (${i}, ${`v${i}`})`;
          inside = (await tx`select count(*)::int as c from drivers_t`)[0].c;
          throw new Error('roll back');
        });
      } catch (e) {
        if (e.message !== 'roll back') throw e;
      }
      const after = (await sql`select count(*)::int as c from drivers_t`)[0].c;
      emit('transaction', { inside, after_rollback: after });
    },
    async error() {
      const seen = [];
      try { await sql`select 1 / ${0}::int`; } catch (e) { seen.push(state(e)); }
      try {
        await sql.begin(async (tx) => {
          try { await tx`select 1 / ${0}::int`; } catch (e) { seen.push(state(e)); }
          await tx`select ${0}::int`;
        });
      } catch (e) { seen.push(state(e)); }
      seen.push(await alive('still alive'));
      emit('error', seen);
    },
    async big_param() {
      const r = await sql`select length(${BIG}::text) as l, md5(${BIG}::text) as m`;
      const back = await sql`select repeat('y', ${BIG.length}::int) as r`;
      emit('big_param', { length: r[0].l, md5: r[0].m, returned: back[0].r.length });
    },
    async failed_cursor() {
      const seen = [];
      const queries = [
        () => sql`select 1 / (5000 - g) as v from generate_series(1, ${10000}::int) g`,
        () => sql`select * from drivers_no_such_table`,
      ];
      for (const query of queries) {
        let n = 0;
        try { // (outside sql.begin: a cursor that fails inside one hangs postgres.js 3.4.9, direct too)
          for await (const rows of query().cursor(100)) n += rows.length;
          seen.push([n, null]);
        } catch (e) {
          seen.push([n, state(e)]);
        }
        seen.push(await alive('after the cursor'));
      }
      emit('failed_cursor', seen);
    },
    async close() {
      const seen = [];
      for (let i = 0; i < 3; i += 1) seen.push((await sql`select ${i}::int * 2 as v`)[0].v);
      const first = [];
      for await (const rows of sql`select g from generate_series(1, ${1000}::int) g`.cursor(5)) {
        first.push(...rows.map((row) => row.g));
        break; // leaves the portal before its end
      }
      seen.push(first);
      seen.push(await alive('after the close'));
      seen.push((await sql.unsafe('select $1::int * 3 as v', [7], { prepare: true }))[0].v);
      seen.push((await sql.unsafe('select $1::int * 3 as v', [8], { prepare: true }))[0].v);
      seen.push(await alive('after the unsafe statements'));
      emit('close', seen);
    },
  };
  for (const name of (only.length ? only : STEPS)) await steps[name]();
  process.stdout.write('done\n');
  await sql.end({ timeout: 5 });
}

main().catch((e) => { process.stderr.write(`${e.stack}\n`); process.exit(1); });
