"""pytest fixtures: a PostgreSQL for the test session and pgwire-proxy instances in front of it.

pg_upstream                    session scope: a throwaway initdb cluster, or PGWIRE_PROXY_TEST_DSN's server
pgwire_proxy_session           session scope: one in-process Proxy (default options) shared by the tests
pgwire_proxy                   that shared proxy, reset for each test (queries, faults, stats)
pgwire_proxy_factory           make(**options) -> started in-process Proxy; all stopped at teardown
pgwire_proxy_process_factory   the same with the pgwire-proxy binary as a subprocess (signals, argv, env)
pgwire_faults                  add(match, action, **rule) -> Fault on pgwire_proxy; removed at teardown
assert_queries                 assert_queries(proxy, count=, max=, match=): a context manager
pgwire_database                a fresh database for the test, cloned from the session's template: .name, .dsn
pgwire_database_factory        make(proxy=None) -> another such Database; all dropped (WITH FORCE) at teardown
pgwire_database_template       session scope: the template's name (made once; filled by pgwire_template_setup)
pgwire_template_setup          session scope, meant to be overridden: None, or setup(template: Database)

The proxies these fixtures start take their upstream from pg_upstream.server_dsn, which names no
database: each client lands in the database it asks for (.dsn still asks for pg_upstream.dbname).

Registered through the `pytest11` entry point when the package is installed; the project's own suite
loads it from tests/e2e/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Pattern, Union
from urllib.parse import quote

import pytest

from .cluster import from_environment, make_dsn, parse_dsn
from .process import ProxyProcess, find_binary
from .proxy import CapturedQueries, Fault, Proxy

__all__ = ["pg_upstream", "pgwire_proxy", "pgwire_proxy_session", "pgwire_proxy_factory",
           "pgwire_proxy_process_factory", "pgwire_faults", "assert_queries", "check_queries", "SharedProxy",
           "pgwire_database", "pgwire_database_factory", "pgwire_database_template", "pgwire_template_setup",
           "Database"]

# How long a test's teardown waits for the client sessions it closed to end on the shared proxy before
# deciding that the test left one open (and replacing the proxy, so the next test starts clean).
SESSION_DRAIN_SECONDS = 2.0


@pytest.fixture(scope="session")
def pg_upstream():
    """The upstream PostgreSQL every proxy of this test session talks to: the server named by
    PGWIRE_PROXY_TEST_DSN, else a throwaway initdb cluster (run as `postgres` when pytest is root)."""
    server = from_environment()
    server.start()
    try:
        yield server
    finally:
        server.stop()


# What the test fixtures' proxies relay unless a test asks otherwise: the whole protocol (psycopg 3 and
# asyncpg with their defaults, COPY, large objects) and no row, byte or time limit, so a test sees what
# it would see direct. The binary's own defaults stay the seed's (SEED_DEFAULTS): --protocol=simple,
# 10,000 rows, 100MB, 30s.
TRANSPARENT_DEFAULTS: Dict[str, Any] = {"protocol": "full", "max_rows": 0, "max_bytes": 0, "query_timeout": 0}
SEED_DEFAULTS: Dict[str, Any] = {"protocol": "simple", "max_rows": 10000, "max_bytes": "100MB", "query_timeout": "30s"}


def transparent(options: Dict[str, Any]) -> Dict[str, Any]:
    """`options` with TRANSPARENT_DEFAULTS for what they leave unset (extended_protocol= counts as
    setting the protocol)."""
    merged = dict(options)
    for name, value in TRANSPARENT_DEFAULTS.items():
        if name == "protocol" and "extended_protocol" in merged:
            continue
        merged.setdefault(name, value)
    return merged


@pytest.fixture
def pgwire_proxy_factory(pg_upstream) -> Iterator[Callable[..., Proxy]]:
    """make(upstream_dsn=None, **options) starts an in-process Proxy (in front of pg_upstream unless
    upstream_dsn is given: on pg_upstream.server_dsn, so a client's database name is the database it
    gets); every proxy made is stopped at teardown."""
    started: List[Proxy] = []

    def make(upstream_dsn: Optional[str] = None, **options) -> Proxy:
        options = transparent(options)
        if upstream_dsn is None:
            proxy = Proxy(pg_upstream.server_dsn, **options)
            proxy.dbname = pg_upstream.dbname  # what .dsn asks for; other names reach their own database
        else:
            proxy = Proxy(upstream_dsn, **options)
        proxy.start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in reversed(started):
        proxy.stop(timeout=10)


class SharedProxy:
    """The proxy behind `pgwire_proxy_session`: one in-process Proxy with default options in front of
    pg_upstream, reused by every test, and replaced by a fresh one when a test stopped it or left a
    client connected."""

    def __init__(self, upstream_dsn: str, dbname: Optional[str] = None):
        self._upstream_dsn = upstream_dsn
        self._dbname = dbname  # what .dsn asks for, when upstream_dsn names no database
        self._proxy: Optional[Proxy] = None

    def get(self) -> Proxy:
        """The running shared proxy, reset (no queries, faults or counts from before), started if needed."""
        proxy = self._proxy
        if proxy is None or not proxy.running:
            proxy = Proxy(self._upstream_dsn, **TRANSPARENT_DEFAULTS)
            if self._dbname is not None:
                proxy.dbname = self._dbname
            proxy = self._proxy = proxy.start()
        else:
            proxy.reset()
        return proxy

    def release(self, drain_seconds: float = SESSION_DRAIN_SECONDS) -> None:
        """After a test: waits up to `drain_seconds` for the sessions its clients closed to end; a
        session still open then, or a stopped proxy, makes the next get() start a new one (the proxy is
        stopped, so the open client gets FATAL 57P01)."""
        proxy = self._proxy
        if proxy is None:
            return
        if proxy.running:
            deadline = time.monotonic() + drain_seconds
            while proxy.sessions():
                if time.monotonic() > deadline:
                    proxy.stop(timeout=10)
                    break
                time.sleep(0.001)
        if not proxy.running:
            self._proxy = None

    def stop(self) -> None:
        if self._proxy is not None:
            self._proxy.stop(timeout=10)
            self._proxy = None


@pytest.fixture(scope="session")
def pgwire_proxy_session(pg_upstream) -> Iterator[SharedProxy]:
    """The proxy that `pgwire_proxy` hands each test, for the whole test session: `.get()` gives it
    running and reset, `.release()` ends a test's use. Depend on `pgwire_proxy` in tests; this is for
    fixtures of a wider scope (module, session) that need the proxy's address."""
    # No database in its upstream DSN: each client gets the database it names (pgwire_database).
    shared = SharedProxy(pg_upstream.server_dsn, dbname=pg_upstream.dbname)
    yield shared
    shared.stop()


@pytest.fixture
def pgwire_proxy(pgwire_proxy_session) -> Iterator[Proxy]:
    """A started proxy with the transparent defaults (TRANSPARENT_DEFAULTS) in front of pg_upstream, shared by the tests of the session
    (starting and stopping one per test is what a suite would otherwise pay for) and reset for each:
    no captured queries, no fault rules, stats() counting from zero. A test that leaves a client
    connected, or stops the proxy, gets the next test a new proxy (on another port); options of your
    own: pgwire_proxy_factory."""
    proxy = pgwire_proxy_session.get()
    try:
        yield proxy
    finally:
        pgwire_proxy_session.release()


@pytest.fixture
def pgwire_faults(pgwire_proxy) -> Iterator[Callable[..., "Fault"]]:
    """add(match=None, action="error", **rule) puts a fault rule on `pgwire_proxy` (see
    Proxy.add_fault; `match` is a POSIX extended regular expression, not Python's re) and returns its
    Fault; every rule added is removed at teardown.

        def test_retry(pgwire_proxy, pgwire_faults):
            pgwire_faults("^commit", sqlstate="40001", message="could not serialize access", nth=1)
    """
    added: List["Fault"] = []

    def add(match: Optional[str] = None, action: str = "error", **rule) -> "Fault":
        fault = pgwire_proxy.add_fault(match, action, **rule)
        added.append(fault)
        return fault

    yield add
    for fault in added:
        fault.remove()


if os.environ.get("PGWIRE_PROXY_FIXTURE") == "process":
    # PGWIRE_PROXY_FIXTURE=process: the proxies of pgwire_proxy / pgwire_proxy_factory are the binary
    # ($PGWIRE_PROXY_BINARY) as a subprocess, e.g. a sanitizer build (scripts/sanitize.sh). Options and
    # .dsn/.port/.host are the same; the in-process extras (stats, queries, capture) are not there.
    @pytest.fixture
    def pgwire_proxy_factory(pgwire_proxy_process_factory):  # noqa: F811 - deliberate override
        return lambda upstream_dsn=None, **options: pgwire_proxy_process_factory(upstream_dsn, **transparent(options))

    @pytest.fixture
    def pgwire_proxy(pgwire_proxy_factory):  # noqa: F811 - a process per test: it has no reset
        return pgwire_proxy_factory()


@pytest.fixture
def pgwire_proxy_process_factory(pg_upstream) -> Iterator[Callable[..., ProxyProcess]]:
    """make(upstream_dsn=None, *, use_upstream=True, env=None, **options) runs the pgwire-proxy
    binary; at teardown each gets SIGTERM and must exit 0 promptly, or the test fails."""
    started: List[ProxyProcess] = []

    def make(upstream_dsn: Optional[str] = None, *, use_upstream: bool = True, **options) -> ProxyProcess:
        default_upstream = upstream_dsn is None and use_upstream
        if default_upstream:
            upstream_dsn = pg_upstream.server_dsn  # the client's database, as pgwire_proxy_factory's
        try:
            find_binary()
        except FileNotFoundError as exc:
            pytest.fail(str(exc), pytrace=False)
        proxy = ProxyProcess(upstream_dsn, **options)
        if default_upstream:
            proxy.dbname = pg_upstream.dbname
        proxy.start()
        started.append(proxy)
        return proxy

    yield make
    unclean = []
    for proxy in reversed(started):
        code = proxy.stop()
        if code != 0:  # SIGTERM must end the proxy promptly with exit code 0
            unclean.append(f"{proxy!r} exited with {code} after SIGTERM (negative: killed by that "
                           f"signal; -9 means it ignored SIGTERM for 10s)\n"
                           f"--- its stderr (tail) ---\n{proxy.stderr_text()[-3000:]}")
    if unclean:
        pytest.fail("\n".join(unclean), pytrace=False)


def _listing(queries: CapturedQueries, counted: Optional[List[bool]] = None) -> str:
    """The block's queries, one a line; with `counted`, those that count are marked `*`."""
    lines = []
    for i, q in enumerate(queries, 1):
        status = q.outcome if q.sqlstate is None else f"{q.outcome} {q.sqlstate}"
        mark = "" if counted is None else ("* " if counted[i - 1] else "  ")
        lines.append(f"  {mark}{i}. [{status}] {q.sql}")
    return "\n".join(lines) or "  (none)"


@contextlib.contextmanager
def check_queries(proxy: Proxy, count: Optional[int] = None, max: Optional[int] = None,  # noqa: A002
                  match: Union[None, str, Pattern[str]] = None) -> Iterator[CapturedQueries]:
    """Raises AssertionError unless the block ran exactly `count` (or at most `max`) queries through
    `proxy`; with `match`, only queries whose SQL matches that regex are counted. `match` is Python's
    `re` (re.search, so `(?i)`, `\\d` and `\\b` work), unlike the proxy's own patterns (deny, allow,
    fault rules), which are POSIX extended regular expressions. The message lists every query of the
    block, marking the counted ones `*` when `match` is given. Yields the block's queries (filled when
    it ends). An exception raised inside the block propagates unchanged (nothing is asserted then)."""
    __tracebackhide__ = True
    if count is None and max is None:
        raise TypeError("assert_queries needs count= or max=")
    pattern = re.compile(match) if isinstance(match, str) else match
    with proxy.capture() as captured:
        yield captured
    flags = [pattern is None or bool(pattern.search(q.sql)) for q in captured]
    seen = sum(flags)
    if pattern is None:
        what, listing = ":", _listing(captured)
    else:
        what = f" (marked *, of {len(captured)} in the block):"
        listing = _listing(captured, flags)
    matching = "" if pattern is None else f" matching {pattern.pattern!r}"
    if count is not None and seen != count:
        raise AssertionError(f"expected {count} queries{matching}, the proxy saw {seen}{what}\n{listing}")
    if max is not None and seen > max:
        raise AssertionError(f"expected at most {max} queries{matching}, the proxy saw {seen}{what}\n{listing}")


@pytest.fixture
def assert_queries() -> Callable[..., "contextlib.AbstractContextManager[CapturedQueries]"]:
    """assert_queries(proxy, count=None, max=None, match=None): a context manager that raises
    AssertionError with the list of queries when the block's query count is not as expected, in the
    manner of pytest-django's django_assert_num_queries. `match` is a Python `re` pattern (re.search),
    not the proxy's POSIX dialect.

        with assert_queries(pgwire_proxy, count=2) as queries:
            conn.execute("select 1")
            conn.execute("select 2")
        assert queries.sql == ["select 1", "select 2"]
    """
    return check_queries


# ---- a database per test --------------------------------------------------------------------------

class Database:
    """A database on pg_upstream: `.name`, and `.dsn` to reach it (through `.proxy`, or directly for
    the template, whose `.proxy` is None). `.dsn_with(**keywords)` adds or replaces libpq keywords,
    `.url(dialect)` is the same as an SQLAlchemy URL, `.host`, `.port` and `.user` are where `.dsn`
    points."""

    def __init__(self, name: str, params: Dict[str, Any], proxy: Any = None):
        self.name = name
        self.proxy = proxy
        first = ("host", "port", "user")  # in .dsn's usual order, the other keywords after
        self._params = {k: params[k] for k in first if k in params}
        self._params.update((k, v) for k, v in params.items() if k not in first and k != "dbname")

    @property
    def dsn(self) -> str:
        return self.dsn_with()

    def dsn_with(self, **overrides: object) -> str:
        return make_dsn(**{**self._params, "dbname": self.name, **overrides})

    @property
    def host(self) -> str:
        return str(self._params.get("host", "127.0.0.1"))

    @property
    def port(self) -> int:
        return int(self._params.get("port", 5432))

    @property
    def user(self) -> str:
        return str(self._params.get("user", "postgres"))

    def url(self, dialect: str = "postgresql+psycopg2") -> str:
        """An SQLAlchemy URL for `.dsn` (e.g. dialect="postgresql+psycopg" for psycopg 3)."""
        password = self._params.get("password")
        auth = quote(self.user, safe="") + (f":{quote(str(password), safe='')}" if password else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{dialect}://{auth}@{host}:{self.port}/{quote(self.name, safe='')}"

    def __repr__(self) -> str:
        return f"<pgwire_proxy Database {self.name} via {self.host}:{self.port}>"


def _drop_database(upstream, name: str) -> None:
    """DROP DATABASE that connections left open cannot block (WITH (FORCE), PostgreSQL 13+)."""
    with upstream.connect() as conn:
        if conn.info.server_version >= 130000:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        else:  # pragma: no cover - older servers: end the sessions first
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                         " WHERE datname = %s AND pid <> pg_backend_pid()", [name])
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def _database_name(prefix: str, label: str = "") -> str:
    """A new identifier that needs no quoting: prefix, the test's name (shortened), a random suffix."""
    slug = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")[:32]
    return "_".join(part for part in (prefix, slug, secrets.token_hex(4)) if part)


@pytest.fixture(scope="session")
def pgwire_template_setup() -> Optional[Callable[[Database], None]]:
    """Override this (scope="session", in your conftest.py) to fill the template every pgwire_database
    is cloned from, once per test session: return a callable that gets the template as a Database (its
    .dsn connects directly to pg_upstream) and creates extensions, runs migrations, loads fixtures.
    Close every connection it opens: a template with a session on it cannot be cloned (any still open
    are terminated). The default (None) leaves the template as template1 makes it."""
    return None


@pytest.fixture(scope="session")
def pgwire_database_template(pg_upstream, pgwire_template_setup) -> Iterator[str]:
    """The name of the database every pgwire_database is cloned from: created on pg_upstream at the
    first test that asks, filled by pgwire_template_setup, closed to connections, dropped at the end."""
    name = _database_name("pgwire_template")
    pg_upstream.execute(f'CREATE DATABASE "{name}"')
    try:
        if pgwire_template_setup is not None:
            pgwire_template_setup(Database(name, parse_dsn(pg_upstream.dsn_for_database(name))))
        # CREATE DATABASE ... TEMPLATE needs the template to itself: nothing may connect to it from now.
        pg_upstream.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        pg_upstream.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                            " WHERE datname = %s AND pid <> pg_backend_pid()", [name])
        yield name
    finally:
        _drop_database(pg_upstream, name)


@pytest.fixture(scope="session")
def _pgwire_clone_strategy(pg_upstream) -> str:
    """PostgreSQL 15+ copies a template block by block through the WAL by default (170 ms for a small
    one); on the throwaway cluster, whose fsync is off, copying the files is 30 ms. A server of
    someone else's keeps its default (FILE_COPY checkpoints there)."""
    if pg_upstream.throwaway:
        with pg_upstream.connect() as conn:
            if conn.info.server_version >= 150000:
                return " STRATEGY FILE_COPY"
    return ""


@pytest.fixture
def pgwire_database_factory(request, pg_upstream, pgwire_database_template, _pgwire_clone_strategy,
                            pgwire_proxy) -> Iterator[Callable[..., Database]]:
    """make(proxy=None) creates a fresh database cloned from pgwire_database_template and returns it as
    a Database whose .dsn goes through `proxy` (default: the shared pgwire_proxy). Every database made
    is dropped at teardown WITH (FORCE), so connections left open do not keep it. A proxy of your own
    must route clients by their database name: one from pgwire_proxy_factory() with its default
    upstream does, one whose upstream DSN names a dbname does not (ValueError)."""
    made: List[str] = []
    strategy = _pgwire_clone_strategy

    def make(proxy: Any = None) -> Database:
        proxy = pgwire_proxy if proxy is None else proxy
        fixed = parse_dsn(getattr(proxy, "upstream_dsn", None) or "").get("dbname")
        if fixed:
            raise ValueError(f"{proxy!r} sends every client to database {fixed!r} (its upstream DSN names "
                             f"it), so a database per test cannot be reached through it; make the proxy "
                             f"with pgwire_proxy_factory(...) and no upstream_dsn, or one naming no dbname")
        name = _database_name("pgwire_test", request.node.name)
        pg_upstream.execute(f'CREATE DATABASE "{name}" TEMPLATE "{pgwire_database_template}"{strategy}')
        made.append(name)
        return Database(name, parse_dsn(proxy.dsn), proxy)

    yield make
    for name in made:
        _drop_database(pg_upstream, name)


@pytest.fixture
def pgwire_database(pgwire_database_factory) -> Database:
    """A database of the test's own, cloned from pgwire_database_template (what pgwire_template_setup
    put there) and dropped after the test: `.name`, `.dsn` (through the shared pgwire_proxy), `.url()`
    for SQLAlchemy. More than one: pgwire_database_factory."""
    return pgwire_database_factory()
