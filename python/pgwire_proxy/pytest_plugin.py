"""pytest fixtures: a PostgreSQL for the test session and pgwire-proxy instances in front of it.

pg_upstream                    session scope: a throwaway initdb cluster, or PGWIRE_PROXY_TEST_DSN's server
pgwire_proxy                   a started in-process Proxy in front of pg_upstream on a free port
pgwire_proxy_factory           make(**options) -> started in-process Proxy; all stopped at teardown
pgwire_proxy_process_factory   the same with the pgwire-proxy binary as a subprocess (signals, argv, env)
assert_queries                 assert_queries(proxy, count=, max=, match=): a context manager

Registered through the `pytest11` entry point when the package is installed; the project's own suite
loads it from tests/e2e/conftest.py.
"""

from __future__ import annotations

import contextlib
import re
from typing import Callable, Iterator, List, Optional, Pattern, Union

import pytest

from .cluster import from_environment
from .process import ProxyProcess, find_binary


@pytest.fixture(scope="session")
def pg_upstream():
    """The upstream PostgreSQL every proxy of this test session talks to."""
    server = from_environment()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pgwire_proxy_factory(pg_upstream) -> Iterator[Callable[..., "Proxy"]]:
    """make(upstream_dsn=None, **options) starts an in-process Proxy (in front of pg_upstream unless
    upstream_dsn is given); every proxy made is stopped at teardown."""
    from .proxy import Proxy

    started: List[Proxy] = []

    def make(upstream_dsn: Optional[str] = None, **options) -> Proxy:
        proxy = Proxy(upstream_dsn if upstream_dsn is not None else pg_upstream.dsn, **options)
        proxy.start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in reversed(started):
        proxy.stop(timeout=10)


@pytest.fixture
def pgwire_proxy(pgwire_proxy_factory):
    """A proxy with default options in front of pg_upstream, on a free port."""
    return pgwire_proxy_factory()


@pytest.fixture
def pgwire_proxy_process_factory(pg_upstream) -> Iterator[Callable[..., ProxyProcess]]:
    """make(upstream_dsn=None, *, use_upstream=True, env=None, **options) runs the pgwire-proxy
    binary; at teardown each gets SIGTERM and must exit 0 promptly, or the test fails."""
    started: List[ProxyProcess] = []

    def make(upstream_dsn: Optional[str] = None, *, use_upstream: bool = True, **options) -> ProxyProcess:
        if upstream_dsn is None and use_upstream:
            upstream_dsn = pg_upstream.dsn
        try:
            find_binary()
        except FileNotFoundError as exc:
            pytest.fail(str(exc), pytrace=False)
        proxy = ProxyProcess(upstream_dsn, **options).start()
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


@contextlib.contextmanager
def _assert_queries(proxy, count: Optional[int] = None, max: Optional[int] = None,  # noqa: A002
                    match: Union[None, str, Pattern[str]] = None):
    """Fails unless the block ran exactly `count` (or at most `max`) queries; with `match`, only
    queries whose SQL matches that regex (re.search) are counted. Yields the captured queries."""
    if count is None and max is None:
        raise TypeError("assert_queries needs count= or max=")
    pattern = re.compile(match) if isinstance(match, str) else match
    with proxy.capture() as captured:
        yield captured
    counted = [q for q in captured if pattern is None or pattern.search(q.sql)]
    what = f" matching {pattern.pattern!r}" if pattern is not None else ""
    listing = "\n".join(f"  {i + 1}. [{q.outcome}] {q.sql}" for i, q in enumerate(captured)) or "  (none)"
    if count is not None and len(counted) != count:
        pytest.fail(f"expected {count} queries{what}, the proxy saw {len(counted)}:\n{listing}", pytrace=False)
    if max is not None and len(counted) > max:
        pytest.fail(f"expected at most {max} queries{what}, the proxy saw {len(counted)}:\n{listing}",
                    pytrace=False)


@pytest.fixture
def assert_queries():
    """assert_queries(proxy, count=None, max=None, match=None) as a context manager, in the manner of
    pytest-django's django_assert_num_queries."""
    return _assert_queries


if False:  # pragma: no cover - for type checkers only
    from .proxy import Proxy  # noqa: F401
