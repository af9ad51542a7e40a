"""pgwire_database / pgwire_database_factory: each test gets databases of its own, cloned from the
session's template (pgwire_template_setup in conftest.py fills it), reached through the shared proxy by
their name, and dropped after the test even with a connection left open."""

from __future__ import annotations

import psycopg
import pytest

from support import connect

def captured_sql(proxy):
    """The SQL the proxy captured, or None for the binary (PGWIRE_PROXY_FIXTURE=process has no capture)."""
    return [q.sql for q in proxy.queries()] if hasattr(proxy, "queries") else None


# Names (and a connection left open) handed from one test to the tests after it, which run in file order.
_MADE = {"names": [], "leaked": None}


def make_widgets(database) -> str:
    """Creates the table every test here creates (no IF NOT EXISTS: a shared database would fail)."""
    with connect(database) as conn:
        assert conn.execute("SELECT to_regclass('widgets')").fetchone() == (None,)  # not there yet
        conn.execute("CREATE TABLE widgets (id int PRIMARY KEY, name text)")
        conn.execute("INSERT INTO widgets VALUES (1, %s)", [database.name])
        return conn.execute("SELECT current_database()").fetchone()[0]


def exists(pg_upstream, name) -> bool:
    return bool(pg_upstream.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]))


def test_a_database_of_its_own_through_the_shared_proxy(pgwire_database, pgwire_proxy, pg_upstream):
    assert pgwire_database.proxy is pgwire_proxy and pgwire_database.port == pgwire_proxy.port
    assert pgwire_database.dsn == pgwire_proxy.dsn_with(dbname=pgwire_database.name)
    assert make_widgets(pgwire_database) == pgwire_database.name  # the client's name is where it lands
    assert captured_sql(pgwire_proxy) in (None, [  # the shared proxy's capture has this test's queries
        "SELECT to_regclass('widgets')", "CREATE TABLE widgets (id int PRIMARY KEY, name text)",
        f"INSERT INTO widgets VALUES (1, '{pgwire_database.name}')", "SELECT current_database()"])
    assert not pg_upstream.execute("SELECT 1 FROM pg_tables WHERE tablename = 'widgets'")  # not in postgres
    _MADE["names"].append(pgwire_database.name)


def test_the_next_test_gets_a_fresh_one_and_the_same_table_name_is_free(pgwire_database):
    assert pgwire_database.name not in _MADE["names"]
    assert make_widgets(pgwire_database) == pgwire_database.name  # the earlier test's widgets are not here
    _MADE["names"].append(pgwire_database.name)


def test_the_factory_gives_distinct_databases(pgwire_database_factory, pgwire_database):
    others = [pgwire_database_factory() for _ in range(2)]
    everyone = [pgwire_database, *others]
    assert len({d.name for d in everyone}) == 3
    assert [make_widgets(d) for d in everyone] == [d.name for d in everyone]
    with connect(others[0]) as conn:
        assert conn.execute("SELECT name FROM widgets").fetchall() == [(others[0].name,)]
    _MADE["names"].extend(d.name for d in everyone)


def test_a_connection_left_open_does_not_keep_the_database(pgwire_database, pg_upstream):
    # Directly on the upstream, so only DROP DATABASE ... WITH (FORCE) can end it.
    leaked = psycopg.connect(pg_upstream.dsn_for_database(pgwire_database.name), autocommit=True)
    assert leaked.execute("SELECT current_database()").fetchone() == (pgwire_database.name,)
    _MADE["leaked"] = leaked
    _MADE["names"].append(pgwire_database.name)


def test_every_database_made_above_was_dropped(pg_upstream):
    assert len(_MADE["names"]) == 6, "runs after the tests above, in file order"
    assert [name for name in _MADE["names"] if exists(pg_upstream, name)] == []
    leaked = _MADE["leaked"]
    with pytest.raises(psycopg.OperationalError):  # terminated by the FORCE drop
        leaked.execute("SELECT 1")
    leaked.close()


def test_every_clone_has_what_the_template_setup_made(pgwire_database_factory, pg_upstream,
                                                      pgwire_database_template):
    first, second = pgwire_database_factory(), pgwire_database_factory()
    for database in (first, second):
        with connect(database) as conn:
            assert conn.execute("SELECT extname FROM pg_extension WHERE extname = 'citext'").fetchone() == ("citext",)
            # citext, from the template's extension: the seeded row matches whatever the case.
            assert conn.execute("SELECT name FROM from_the_template WHERE name = 'SEEDED'").fetchone() == ("Seeded",)
            conn.execute("INSERT INTO from_the_template VALUES (%s)", [database.name])
    with connect(second) as conn:  # a clone's changes are its own
        assert conn.execute("SELECT count(*) FROM from_the_template").fetchone() == (2,)
    # The template itself is left alone: closed to connections, as CREATE DATABASE ... TEMPLATE needs.
    assert pg_upstream.execute("SELECT datallowconn FROM pg_database WHERE datname = %s",
                               [pgwire_database_template]) == [(False,)]


def test_through_a_proxy_of_the_tests_own_with_psycopg_defaults(pgwire_database_factory, pgwire_proxy_factory):
    proxy = pgwire_proxy_factory(extended_protocol="relay")
    database = pgwire_database_factory(proxy=proxy)
    with psycopg.connect(database.dsn) as conn:  # psycopg 3's defaults: extended protocol, transactions
        with conn.transaction():
            conn.execute("CREATE TABLE widgets (id int)")
            conn.cursor().executemany("INSERT INTO widgets VALUES (%s)", [(1,), (2,)])
        assert conn.execute("SELECT current_database(), count(*) FROM widgets").fetchone() == (database.name, 2)
    sql = captured_sql(proxy)
    assert sql is None or "INSERT INTO widgets VALUES ($1)" in sql


def test_a_proxy_that_names_its_database_is_refused(pgwire_database_factory, pgwire_proxy_factory, pg_upstream):
    proxy = pgwire_proxy_factory(pg_upstream.dsn)  # dbname=postgres: every client would land there
    with pytest.raises(ValueError, match="sends every client to database 'postgres'"):
        pgwire_database_factory(proxy=proxy)
