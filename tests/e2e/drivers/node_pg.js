// node-postgres (`pg`) with pg-cursor and pg-query-stream: the extended protocol with unnamed and
// named statements, portals read in batches (Execute with a row limit), a cursor/stream that fails
// (mid-way and at once) and one closed early (Close + Sync), then more queries on the same client.
// Usage: node node_pg.js HOST PORT USER DBNAME [STEP...]; prints `STEP JSON` lines, then `done`.
'use strict';
const crypto = require('crypto');
const { Client } = require('pg');
const Cursor = require('pg-cursor');
const QueryStream = require('pg-query-stream');

const STEPS = ['params', 'rows', 'transaction', 'error', 'big_param', 'failed_cursor', 'close'];
const [host, port, user, database, ...only] = process.argv.slice(2);
const BIG = 'x'.repeat(1048576);
const FAILS_MIDWAY = 'select 1 / (5000 - g) as v from generate_series(1, 10000) g';
const FAILS_AT_START = 'select * from drivers_no_such_table';

const emit = (step, value) => process.stdout.write(`${step} ${JSON.stringify(value)}\n`);
const state = (e) => [e.code, e.message];
const sha256 = (texts) => crypto.createHash('sha256').update(texts.join('\n')).digest('hex');

function readCursor(cursor, n) {
  return new Promise((resolve, reject) => cursor.read(n, (err, rows) => (err ? reject(err) : resolve(rows))));
}
function closeCursor(cursor) {
  return new Promise((resolve) => cursor.close((err) => resolve(err ? state(err) : 'closed')));
}
function drainStream(stream, limit) {
  // Resolves with [rows seen, SQLSTATE or null]; with a limit, destroys the stream after that many rows.
  return new Promise((resolve) => {
    let n = 0;
    stream.on('data', () => {
      n += 1;
      if (limit && n === limit) stream.destroy();
    });
    stream.on('error', (e) => resolve([n, state(e)]));
    stream.on('end', () => resolve([n, null]));
    stream.on('close', () => resolve([n, null]));
  });
}

async function main() {
  const client = new Client({ host, port: Number(port), user, database });
  await client.connect();
  const alive = async (text) => (await client.query('select $1::text as t', [text])).rows[0].t;

  const steps = {
    async params() {
      const r = await client.query(
        'select $1::int4 + 1 as i, $2::text as t, $3::numeric as n, $4::bool as b, $5::date::text as d,' +
          ' $6::float8 as f, $7::bytea as by, $8::text as nul, $9::int8 as big',
        [41, 'héllo wörld', '1.50', true, '2024-02-29', 0.25, Buffer.from([0, 1, 255]), null, '9007199254740993']);
      emit('params', {
        rows: r.rows.map((row) => Object.values(row).map((v) => (Buffer.isBuffer(v) ? v.toString('hex') : v))),
        types: r.fields.map((f) => f.dataTypeID), names: r.fields.map((f) => f.name), command: r.command,
        rowCount: r.rowCount,
      });
    },
    async rows() {
      const r = await client.query('select g, md5(g::text) as m from generate_series(1, $1::int) g', [20000]);
      emit('rows', { count: r.rows.length, sum: r.rows.reduce((a, row) => a + row.g, 0), sha256: sha256(r.rows.map((row) => row.m)) });
    },
    async transaction() {
      await client.query('create temp table drivers_t (id int primary key, v text)');
      await client.query('begin');
      for (let i = 0; i < 3; i += 1) await client.query('insert into drivers_t values ($1, $2)', [i, `v${i}`]);
      const inside = (await client.query('select count(*)::int as c from drivers_t')).rows[0].c;
      await client.query('rollback');
      const after = (await client.query('select count(*)::int as c from drivers_t')).rows[0].c;
      emit('transaction', { inside, after_rollback: after });
    },
    async error() {
      const seen = [];
      try { await client.query('select 1 / $1::int', [0]); } catch (e) { seen.push(state(e)); }
      await client.query('begin');
      for (const text of ['select 1 / $1::int', 'select $1::int']) {
        try { await client.query(text, [0]); } catch (e) { seen.push(state(e)); }
      }
      await client.query('rollback');
      seen.push(await alive('still alive'));
      emit('error', seen);
    },
    async big_param() {
      const r = await client.query('select length($1::text) as l, md5($1::text) as m', [BIG]);
      const back = await client.query("select repeat('y', $1::int) as r", [BIG.length]);
      emit('big_param', { length: r.rows[0].l, md5: r.rows[0].m, returned: back.rows[0].r.length });
    },
    async failed_cursor() {
      const seen = [];
      for (const text of [FAILS_MIDWAY, FAILS_AT_START]) {
        const cursor = client.query(new Cursor(text));
        let n = 0;
        try {
          for (;;) {
            const rows = await readCursor(cursor, 100);
            if (rows.length === 0) break;
            n += rows.length;
          }
          seen.push([n, null]);
        } catch (e) {
          seen.push([n, state(e)]);
        }
        // Closed after the error, as a finally block would: pg-cursor sends that Close with no Sync of
        // its own (it sent one at the error), so the next message PostgreSQL reads after it is this
        // simple Query.
        seen.push(await closeCursor(cursor));
        seen.push((await client.query("select 'after the cursor' as t")).rows[0].t);
        seen.push(await alive('after the cursor, with a parameter'));
      }
      for (const text of [FAILS_MIDWAY, FAILS_AT_START]) {
        seen.push(await drainStream(client.query(new QueryStream(text, [], { batchSize: 100 }))));
        seen.push(await alive('after the stream'));
      }
      emit('failed_cursor', seen);
    },
    async close() {
      const seen = [];
      for (let i = 0; i < 3; i += 1) { // Parse once, then Bind/Execute of the named statement
        seen.push((await client.query({ name: 'drivers_named', text: 'select $1::int * 2 as v', values: [i] })).rows[0].v);
      }
      const cursor = client.query(new Cursor('select g from generate_series(1, 1000) g'));
      seen.push((await readCursor(cursor, 5)).map((row) => row.g));
      seen.push(await closeCursor(cursor)); // Close of the portal before its end, then Sync
      seen.push((await client.query("select 'after the close' as t")).rows[0].t);
      seen.push(await alive('after the close, with a parameter'));
      seen.push(await drainStream(client.query(new QueryStream('select g from generate_series(1, 1000) g', [], { batchSize: 10 })), 5));
      seen.push(await alive('after the destroyed stream'));
      await client.query('deallocate drivers_named');
      try { // the client still believes it is prepared: Bind of a statement that is gone
        await client.query({ name: 'drivers_named', text: 'select $1::int * 2 as v', values: [1] });
      } catch (e) { seen.push(state(e)); }
      seen.push(await alive('after the deallocate'));
      emit('close', seen);
    },
  };
  for (const name of (only.length ? only : STEPS)) await steps[name]();
  process.stdout.write('done\n');
  await client.end();
}

main().catch((e) => { process.stderr.write(`${e.stack}\n`); process.exit(1); });
