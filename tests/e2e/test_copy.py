"""COPY both ways and the function-call protocol under --protocol=full, compared with direct: psql's
\\copy, pg_dump -Fc and pg_restore, psycopg's and asyncpg's copy, DBD::Pg, ruby-pg and pg-copy-streams
sending a CopyData per row, \\lo_import/\\lo_export; the guardrails over COPY (rows, bytes, COPY IN's own limit,
faults); the refusals and their truthful texts in the default mode."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import tempfile

import psycopg
import pytest
from psycopg import errors

import wire
from pgwire_proxy.cluster import parse_dsn
from psql import psql_env, run_psql
from support import cancelled_while_running, connect, wait_until

TABLE = "copy_items"
ROWS = [(i, f"name {i}", None if i % 7 == 0 else i * 1.5) for i in range(1, 2001)]


@pytest.fixture
def full(pgwire_proxy_factory):
    return pgwire_proxy_factory(protocol="full", max_rows=0, max_bytes=0)


@pytest.fixture
def items(pg_upstream):
    pg_upstream.execute(f"drop table if exists {TABLE}")
    pg_upstream.execute(f"create table {TABLE} (id int primary key, name text, score float8)")
    yield TABLE
    pg_upstream.execute(f"drop table if exists {TABLE}")


def fill(pg_upstream, table=TABLE):
    with psycopg.connect(pg_upstream.dsn, autocommit=True) as conn:
        with conn.cursor().copy(f"copy {table} from stdin") as copy:
            for row in ROWS:
                copy.write_row(row)


def count(pg_upstream, table=TABLE) -> int:
    return pg_upstream.execute(f"select count(*) from {table}")[0][0]


# ---- psql ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["text", "csv", "binary"])
def test_psql_copy_both_ways_is_byte_identical(full, pg_upstream, items, fmt, tmp_path):
    fill(pg_upstream)
    outputs = []
    for name, dsn in (("direct", pg_upstream.dsn), ("proxy", full.dsn)):
        out = tmp_path / f"{name}.{fmt}"
        result = run_psql(dsn, commands=[f"\\copy (select * from {TABLE} order by id) to '{out}' with (format {fmt})"])
        assert result.returncode == 0, result.stdout
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] and len(outputs[0]) > 10_000
    # ... and back in through the proxy: the same rows.
    pg_upstream.execute(f"truncate {TABLE}")
    result = run_psql(full.dsn, commands=[f"\\copy {TABLE} from '{tmp_path / f'proxy.{fmt}'}' with (format {fmt})"])
    assert result.returncode == 0 and b"COPY 2000" in result.stdout, result.stdout
    assert count(pg_upstream) == 2000
    assert pg_upstream.execute(f"select sum(id), count(score) from {TABLE}") == [(sum(r[0] for r in ROWS),
                                                                               sum(1 for r in ROWS if r[2] is not None))]


def test_psql_copy_from_stdin_inline_data_as_direct(full, pg_upstream, items):
    script = f"copy {TABLE} from stdin;\n1\tone\t1.5\n2\ttwo\t\\N\n\\.\nselect * from {TABLE} order by id;\n"
    seen = []
    for dsn in (pg_upstream.dsn, full.dsn):
        pg_upstream.execute(f"truncate {TABLE}")
        seen.append(run_psql(dsn, input=script.encode()).stdout)
    assert seen[0] == seen[1] and b"two" in seen[1]


# ---- pg_dump / pg_restore ------------------------------------------------------------------------------

def test_pg_dump_and_pg_restore_through_the_proxy(full, pg_upstream, items, tmp_path):
    fill(pg_upstream)
    pg_upstream.execute("drop database if exists copy_restored")
    pg_upstream.execute("create database copy_restored")
    dump = tmp_path / "items.dump"
    env = psql_env()
    params = parse_dsn(full.dsn)
    common = ["-h", params["host"], "-p", str(params["port"]), "-U", params.get("user", "postgres")]
    subprocess.run(["pg_dump", *common, "-d", params.get("dbname", "postgres"), "-Fc", "-t", TABLE, "-f", str(dump)],
                   check=True, env=env, timeout=120, capture_output=True)
    plain = subprocess.run(["pg_dump", *common, "-d", params.get("dbname", "postgres"), "-t", TABLE],
                           check=True, env=env, timeout=120, capture_output=True).stdout
    direct_params = parse_dsn(pg_upstream.dsn)
    direct_plain = subprocess.run(["pg_dump", "-h", direct_params.get("host", "127.0.0.1"),
                                   "-p", str(direct_params.get("port", 5432)), "-U", direct_params.get("user", "postgres"),
                                   "-d", direct_params.get("dbname", "postgres"), "-t", TABLE],
                                  check=True, env=env, timeout=120, capture_output=True).stdout
    # pg_dump 15.14+ brackets the script with \restrict/\unrestrict and a random key per dump.
    unkeyed = [re.sub(rb"(?m)^\\(un)?restrict \S+$", b"", out) for out in (plain, direct_plain)]
    assert unkeyed[0] == unkeyed[1] and b"COPY public.copy_items" in plain
    restore = subprocess.run(["pg_restore", *common, "-d", "copy_restored", "--exit-on-error", str(dump)],
                             env=env, timeout=120, capture_output=True)
    assert restore.returncode == 0, restore.stderr
    with psycopg.connect(pg_upstream.dsn.replace("dbname=postgres", "dbname=copy_restored")
                         if "dbname=postgres" in pg_upstream.dsn else pg_upstream.dsn + " dbname=copy_restored",
                         autocommit=True) as conn:
        assert conn.execute(f"select count(*), sum(id) from {TABLE}").fetchone() == (2000, sum(r[0] for r in ROWS))
    pg_upstream.execute("drop database copy_restored")


# ---- drivers ---------------------------------------------------------------------------------------------

def test_psycopg_copy_read_and_write_as_direct(full, pg_upstream, items):
    results = []
    for dsn in (pg_upstream.dsn, full.dsn):
        pg_upstream.execute(f"truncate {TABLE}")
        with psycopg.connect(dsn) as conn:  # psycopg's defaults, a transaction around the COPY
            with conn.cursor() as cur:
                with cur.copy(f"copy {TABLE} (id, name, score) from stdin") as copy:
                    for row in ROWS:
                        copy.write_row(row)
                conn.commit()
                with cur.copy(f"copy (select * from {TABLE} order by id) to stdout") as copy:
                    read = [tuple(row) for row in copy.rows()]
                results.append((cur.rowcount, read[:3], len(read)))
    assert results[0] == results[1] and results[1][2] == 2000


def test_asyncpg_copy_as_direct(full, pg_upstream, items):
    asyncpg = pytest.importorskip("asyncpg")

    async def session(dsn):
        params = parse_dsn(dsn)
        conn = await asyncpg.connect(host=params["host"], port=int(params["port"]), user=params.get("user", "postgres"),
                                     database=params.get("dbname", "postgres"))
        try:
            await conn.execute(f"truncate {TABLE}")
            status = await conn.copy_records_to_table(TABLE, records=ROWS)
            with tempfile.TemporaryFile() as out:
                await conn.copy_from_query(f"select * from {TABLE} order by id", output=out, format="csv")
                out.seek(0)
                exported = out.read()
            return status, exported, await conn.fetchval(f"select count(*) from {TABLE}")
        finally:
            await conn.close()

    direct = asyncio.run(session(pg_upstream.dsn))
    proxied = asyncio.run(session(full.dsn))
    assert direct == proxied and proxied[2] == 2000


def test_large_objects_round_trip_through_the_function_call_protocol(full, pg_upstream, tmp_path):
    source = tmp_path / "blob.bin"
    source.write_bytes(os.urandom(300_000))
    back = tmp_path / "back.bin"
    imported = run_psql(full.dsn, commands=[f"\\lo_import '{source}'"])
    assert imported.returncode == 0, imported.stdout
    oid = int(imported.stdout.split()[-1])
    exported = run_psql(full.dsn, commands=[f"\\lo_export {oid} '{back}'", f"\\lo_unlink {oid}"])
    assert exported.returncode == 0, exported.stdout
    assert back.read_bytes() == source.read_bytes()
    assert pg_upstream.execute("select count(*) from pg_largeobject_metadata where oid = %s", [oid]) == [(0,)]


def test_function_calls_stay_refused_while_allow_patterns_are_in_force(pgwire_proxy_factory):
    proxy = pgwire_proxy_factory(protocol="full", allow=["^select"])
    with wire.RawConnection(proxy.host, proxy.port, timeout=15) as conn:
        conn.startup({"user": proxy.user, "database": proxy.dbname})
        conn.send(wire.function_call())
        got = conn.read_until_ready()
        assert wire.kinds(got) == "EZ" and got[0].error_fields()["C"] == "42501"


# ---- guardrails over COPY -----------------------------------------------------------------------------

def test_copy_to_counts_rows_against_max_rows(pgwire_proxy_factory, pg_upstream, items):
    fill(pg_upstream)
    proxy = pgwire_proxy_factory(protocol="full", max_rows=100)
    with psycopg.connect(proxy.dsn, autocommit=True) as conn:
        got = 0
        with pytest.raises(errors.ProgramLimitExceeded) as excinfo:
            with conn.cursor().copy(f"copy {TABLE} to stdout") as copy:
                for _ in copy:  # one CopyData per row
                    got += 1
        assert "row limit of 100" in excinfo.value.diag.message_primary
        assert got == 100  # exactly the limit's rows reached the client, as with a SELECT's
        assert conn.execute("select 'usable'").fetchone() == ("usable",)
        # Under the limit it passes whole.
        with conn.cursor().copy(f"copy (select * from {TABLE} limit 100) to stdout") as copy:
            assert sum(1 for _ in copy) == 100


def test_copy_in_is_bounded_by_its_own_byte_limit_and_nothing_is_copied(pgwire_proxy_factory, pg_upstream, items):
    proxy = pgwire_proxy_factory(protocol="full", max_copy_in_bytes="16kB")
    with psycopg.connect(proxy.dsn, autocommit=True) as conn:
        with pytest.raises(errors.ProgramLimitExceeded) as excinfo:
            with conn.cursor().copy(f"copy {TABLE} from stdin") as copy:
                for row in ROWS:
                    copy.write_row(row)
        assert "max-copy-in-bytes" in excinfo.value.diag.message_primary
        assert "nothing of it was copied" in excinfo.value.diag.message_detail
        assert conn.execute("select 'usable'").fetchone() == ("usable",)
    assert count(pg_upstream) == 0
    with psycopg.connect(proxy.dsn, autocommit=True) as conn:  # a small COPY still goes through
        with conn.cursor().copy(f"copy {TABLE} from stdin") as copy:
            for row in ROWS[:50]:
                copy.write_row(row)
    assert count(pg_upstream) == 50


def test_deny_patterns_match_the_copy_statement(pgwire_proxy_factory, items):
    proxy = pgwire_proxy_factory(protocol="full", deny=["^copy .* to stdout"])
    with psycopg.connect(proxy.dsn, autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            with conn.cursor().copy(f"copy {TABLE} to stdout") as copy:
                list(copy)
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.mark.skipif(os.environ.get("PGWIRE_PROXY_FIXTURE") == "process", reason="uses the in-process Proxy's fault API")
def test_faults_apply_to_copy(pgwire_proxy_factory, pg_upstream, items):
    fill(pg_upstream)
    proxy = pgwire_proxy_factory(protocol="full", max_rows=0, max_bytes=0)
    with proxy.fault("^copy copy_items to", action="drop", when="after_rows", rows=10):
        conn = psycopg.connect(proxy.dsn, autocommit=True)
        with pytest.raises(psycopg.OperationalError):
            with conn.cursor().copy(f"copy {TABLE} to stdout") as copy:
                list(copy)
        conn.close()
    pg_upstream.execute(f"truncate {TABLE}")
    with proxy.fault("^copy copy_items from", action="drop", when="mid_message"):
        conn = psycopg.connect(proxy.dsn, autocommit=True)
        with pytest.raises(psycopg.OperationalError):
            with conn.cursor().copy(f"copy {TABLE} from stdin") as copy:
                for row in ROWS:
                    copy.write_row(row)
        conn.close()
    assert count(pg_upstream) == 0  # a connection dropped mid COPY IN commits nothing
    with proxy.fault("^copy", sqlstate="40001", message="injected before the copy"):
        with psycopg.connect(proxy.dsn, autocommit=True) as conn:
            with pytest.raises(errors.SerializationFailure):
                with conn.cursor().copy(f"copy {TABLE} from stdin") as copy:
                    copy.write_row(ROWS[0])
            assert conn.execute("select 1").fetchone() == (1,)
    assert count(pg_upstream) == 0


def test_a_client_that_dies_mid_copy_in_commits_nothing(full, pg_upstream, items):
    with wire.RawConnection(full.host, full.port, timeout=15) as conn:
        conn.startup({"user": full.user, "database": full.dbname})
        conn.send(wire.query(f"copy {TABLE} from stdin"))
        assert conn.read_until("G")[-1].kind == "G"
        conn.send(wire.message(b"d", b"1\tone\t1\n2\ttwo\t2\n"))
        wait_until(lambda: pg_upstream.execute(
            "select 1 from pg_stat_activity where query like 'copy copy_items%' and pid <> pg_backend_pid()"),
            "the COPY running upstream")
    # The client is gone without CopyDone: the upstream COPY ends, nothing committed.
    wait_until(lambda: not pg_upstream.execute(
        "select 1 from pg_stat_activity where query like 'copy copy_items%' and pid <> pg_backend_pid()"),
        "the COPY ended upstream")
    assert count(pg_upstream) == 0


def test_a_cancel_stops_a_copy_to(full, pg_upstream):
    with psycopg.connect(full.dsn, autocommit=True) as conn:
        def reader():
            with conn.cursor().copy("copy (select i, pg_sleep(0.01) from generate_series(1, 100000) i) to stdout") as c:
                for _ in c:
                    pass

        error = cancelled_while_running(conn, pg_upstream, reader, "copy (select i, pg_sleep")
        assert isinstance(error, errors.QueryCanceled), error


# ---- the default mode: refused, and the refusals tell the truth -----------------------------------------

def test_copy_is_refused_by_default_and_a_completed_one_is_reported_as_completed(pgwire_proxy_factory, pg_upstream, items):
    proxy = pgwire_proxy_factory(protocol="simple")
    with connect(proxy) as conn:
        with pytest.raises(errors.FeatureNotSupported) as excinfo:
            conn.execute(f"copy (insert into {TABLE} values (1, 'x', 1) returning id) to stdout")
        diag = excinfo.value.diag
        assert "COPY TO STDOUT is not supported" in diag.message_primary
        committed = count(pg_upstream)
        # Whether the cancel landed or not, the detail says which: never "cancelled" when it committed.
        if committed == 1:
            assert "ran to completion" in diag.message_detail and "committed" in diag.message_detail
        else:
            assert "cancelled" in diag.message_detail
        assert conn.execute("select 1").fetchone() == (1,)


def test_a_row_limit_breach_on_a_completed_insert_says_it_committed(pgwire_proxy_factory, pg_upstream, items):
    proxy = pgwire_proxy_factory(protocol="simple", max_rows=1)
    with connect(proxy) as conn:
        with pytest.raises(errors.ProgramLimitExceeded) as excinfo:
            conn.execute(f"insert into {TABLE} select i, 'n', i from generate_series(1, 5) i returning id")
        detail = excinfo.value.diag.message_detail
    if count(pg_upstream) == 5:
        assert "ran to completion" in detail and "committed" in detail
    else:
        assert count(pg_upstream) == 0 and "cancelled" in detail


def test_a_clients_copy_fail_is_relayed_and_nothing_is_copied(full, pg_upstream, items):
    class Abandon(Exception):
        pass

    messages = []
    for dsn in (pg_upstream.dsn, full.dsn):
        with psycopg.connect(dsn, autocommit=True) as conn:
            with pytest.raises(errors.QueryCanceled) as excinfo:  # psycopg sends CopyFail on an exception
                with conn.cursor().copy(f"copy {TABLE} from stdin") as copy:
                    copy.write_row(ROWS[0])
                    raise Abandon("the client changed its mind")
            messages.append(excinfo.value.diag.message_primary)
            assert conn.execute("select 'usable'").fetchone() == ("usable",)
    assert messages[0] == messages[1] and "COPY from stdin failed" in messages[1]
    assert count(pg_upstream) == 0


def test_a_cancel_stops_a_copy_from_stdin(full, pg_upstream, items):
    with psycopg.connect(full.dsn, autocommit=True) as conn:
        def writer():
            with conn.cursor().copy(f"copy {TABLE} from stdin") as copy:
                for row in ROWS:
                    copy.write_row(row)
                # wait here, inside the COPY, until the cancel has ended it upstream
                wait_until(lambda: not pg_upstream.execute(
                    "select 1 from pg_stat_activity where query like 'copy copy_items%' and pid <> pg_backend_pid()"),
                    "the COPY cancelled upstream")

        error = cancelled_while_running(conn, pg_upstream, writer, "copy copy_items")
        assert isinstance(error, errors.QueryCanceled), error
    assert count(pg_upstream) == 0


def test_the_fixture_is_transparent_for_driver_defaults_copy_and_big_results(pgwire_proxy, pg_upstream, items):
    """The pgwire_proxy fixture relays the whole protocol with no limits: psycopg 3 and asyncpg with
    their defaults, COPY, and a 20,000-row fetch (over the binary's default 10,000-row limit)."""
    with psycopg.connect(pgwire_proxy.dsn) as conn:  # psycopg 3's defaults: server-side parameters, BEGIN
        assert conn.execute("select %s::int + 1", [41]).fetchone() == (42,)
        assert len(conn.execute("select generate_series(1, 20000)").fetchall()) == 20000
        with conn.cursor().copy(f"copy {TABLE} from stdin") as copy:
            for row in ROWS[:100]:
                copy.write_row(row)
        conn.commit()
    asyncpg = pytest.importorskip("asyncpg")

    async def session():
        conn = await asyncpg.connect(host=pgwire_proxy.host, port=pgwire_proxy.port, user=pgwire_proxy.user,
                                     database=pgwire_proxy.dbname)
        try:
            return await conn.fetchval(f"select count(*) from {TABLE} where id < $1", 1000)
        finally:
            await conn.close()

    assert asyncio.run(session()) == 100


# ---- a CopyData per row (the relay's run of CopyData) --------------------------------------------------

# Clients that send a CopyData message per row as a program writes them (psql and psycopg batch lines
# into larger messages): DBD::Pg's pg_putcopydata, ruby-pg's put_copy_data and node-postgres with
# pg-copy-streams (a CopyData per write). Each copies ROWS-shaped rows 1..N and prints `ok` or
# `error SQLSTATE`, then `usable yes` from a query on the same connection. Beside each, the command
# that tells whether it is installed.
DRIVERS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "drivers")  # node's node_modules
PER_ROW_PROBES = {"dbd-pg": ["perl", "-MDBD::Pg", "-e", "1"], "ruby-pg": ["ruby", "-rpg", "-e", "1"],
                  "pg-copy-streams": ["node", "-e", "require('pg'); require('pg-copy-streams')"]}
PER_ROW_CLIENTS = {
    "dbd-pg": ["perl", "-MDBI", "-e", r"""
        my ($h, $p, $u, $d, $n) = @ARGV;
        my $dbh = DBI->connect("dbi:Pg:host=$h;port=$p;dbname=$d", $u, '', {RaiseError => 1, PrintError => 0, AutoCommit => 1});
        my $ok = eval {
          $dbh->do('copy copy_items from stdin');
          $dbh->pg_putcopydata("$_\tname $_\t" . ($_ % 7 ? $_ * 1.5 : '\N') . "\n") for 1 .. $n;
          $dbh->pg_putcopyend();
          1;
        };
        print $ok ? "ok\n" : "error " . $dbh->state . "\n";
        print 'usable ', $dbh->selectrow_array(q{select 'yes'}), "\n";
    """],
    "ruby-pg": ["ruby", "-rpg", "-e", r"""
        h, p, u, d, n = ARGV
        c = PG.connect(host: h, port: p, user: u, dbname: d)
        begin
          c.copy_data('copy copy_items from stdin') do
            (1..n.to_i).each { |i| c.put_copy_data("#{i}\tname #{i}\t#{i % 7 == 0 ? '\N' : i * 1.5}\n") }
          end
          puts 'ok'
        rescue PG::Error => e
          puts "error #{e.result && e.result.error_field(PG::PG_DIAG_SQLSTATE)}"
        end
        puts "usable #{c.exec("select 'yes'").getvalue(0, 0)}"
    """],
    "pg-copy-streams": ["node", "-e", r"""
        const { Client } = require('pg');
        const { from } = require('pg-copy-streams');
        const [h, p, u, d, n] = process.argv.slice(1);
        (async () => {
          const c = new Client({ host: h, port: Number(p), user: u, database: d });
          await c.connect();
          try {
            await new Promise((resolve, reject) => {
              const copy = c.query(from('copy copy_items from stdin'));
              copy.on('error', reject);
              copy.on('finish', resolve);
              for (let i = 1; i <= Number(n); i++) copy.write(`${i}\tname ${i}\t${i % 7 ? i * 1.5 : '\\N'}\n`);
              copy.end();
            });
            console.log('ok');
          } catch (e) {
            console.log(`error ${e.code}`);
          }
          console.log(`usable ${(await c.query("select 'yes' as v")).rows[0].v}`);
          await c.end();
        })();
    """],
}


@pytest.fixture(params=list(PER_ROW_CLIENTS))
def per_row_client(request) -> str:
    """Each per-row client in turn; skipped where its runtime is not installed."""
    try:
        missing = subprocess.run(PER_ROW_PROBES[request.param], capture_output=True, cwd=DRIVERS_DIR).returncode != 0
    except FileNotFoundError:
        missing = True
    if missing:
        pytest.skip(f"{request.param} is not installed (scripts/install-deps.sh installs it)")
    return request.param


def per_row_copy(client: str, host: str, port: int, user: str, dbname: str, rows: int) -> str:
    command = PER_ROW_CLIENTS[client]
    result = subprocess.run([*command, host, str(port), user, dbname, str(rows)], capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL, cwd=DRIVERS_DIR)
    assert result.returncode == 0, result.stderr
    return result.stdout


def table_digest(pg_upstream) -> tuple:
    return tuple(pg_upstream.execute(
        f"select count(*), md5(coalesce(string_agg(id || ':' || name || ':' || coalesce(score::text, 'null'), ','"
        f" order by id), '')) from {TABLE}")[0])


def test_a_copydata_per_row_stores_what_it_stores_direct(per_row_client, full, pg_upstream, items):
    client = per_row_client
    rows = 20000
    assert per_row_copy(client, pg_upstream.host, pg_upstream.port, pg_upstream.user, pg_upstream.dbname,
                        rows) == "ok\nusable yes\n"
    direct = table_digest(pg_upstream)
    assert direct[0] == rows
    pg_upstream.execute(f"truncate {TABLE}")
    assert per_row_copy(client, full.host, full.port, full.user, full.dbname, rows) == "ok\nusable yes\n"
    assert table_digest(pg_upstream) == direct


def test_a_copydata_per_row_past_max_copy_in_bytes_copies_nothing(per_row_client, pgwire_proxy_factory, pg_upstream,
                                                                  items):
    client = per_row_client
    proxy = pgwire_proxy_factory(protocol="full", max_copy_in_bytes="16kB")
    # About 24 bytes a message: 600 rows fit in 16 kB and are copied; 20,000 are refused, and none stored.
    assert per_row_copy(client, proxy.host, proxy.port, proxy.user, proxy.dbname, 600) == "ok\nusable yes\n"
    assert count(pg_upstream) == 600
    pg_upstream.execute(f"truncate {TABLE}")
    assert per_row_copy(client, proxy.host, proxy.port, proxy.user, proxy.dbname, 20000) == \
        "error 54000\nusable yes\n"
    assert count(pg_upstream) == 0
