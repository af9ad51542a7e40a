"""pytest fixtures: an upstream PostgreSQL for the session and pgwire-proxy instances in front of it.

pg_upstream            session scope: a throwaway initdb cluster, or PGWIRE_PROXY_TEST_DSN's server
pgwire_proxy           function scope: a started proxy in front of pg_upstream on a free port
pgwire_proxy_factory   function scope: factory(**options) -> started proxy; all stopped at teardown
"""

from __future__ import annotations

from typing import Callable, Iterator, List, Optional

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


def _make_proxy(upstream_dsn: Optional[str], **options) -> ProxyProcess:
    try:
        find_binary()
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
    return ProxyProcess(upstream_dsn, **options).start()


@pytest.fixture
def pgwire_proxy_factory(pg_upstream) -> Iterator[Callable[..., ProxyProcess]]:
    """make(**options) starts a proxy (in front of pg_upstream unless upstream_dsn= is given)."""
    started: List[ProxyProcess] = []

    def make(upstream_dsn: Optional[str] = None, *, use_upstream: bool = True, **options) -> ProxyProcess:
        if upstream_dsn is None and use_upstream:
            upstream_dsn = pg_upstream.dsn
        proxy = _make_proxy(upstream_dsn, **options)
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


@pytest.fixture
def pgwire_proxy(pgwire_proxy_factory) -> ProxyProcess:
    """A proxy with default options in front of pg_upstream, on a free port."""
    return pgwire_proxy_factory()
