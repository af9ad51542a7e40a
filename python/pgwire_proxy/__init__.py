"""pgwire-proxy for Python: the proxy in-process with query capture, a throwaway PostgreSQL, pytest fixtures.

    from pgwire_proxy import Proxy, ThrowawayPostgres

    with ThrowawayPostgres() as pg, Proxy(pg.dsn, max_rows=1000) as proxy:
        ...  # connect clients to proxy.dsn; proxy.queries(), proxy.stats(), proxy.capture()

Under pytest the fixtures pg_upstream, pgwire_proxy, pgwire_proxy_factory and assert_queries come from
the plugin this package registers (pgwire_proxy.pytest_plugin). The compiled core (pgwire_proxy._core)
is imported when the first Proxy is made, so the cluster helpers work without it.

From a source checkout the CMake build writes _core to <build>/python/pgwire_proxy/ (<build> is
$PGWIRE_PROXY_BUILD_DIR, else <repo>/build), not into the source tree; that directory is put first on
this package's __path__, so `from pgwire_proxy import _core` finds it there.
"""

from ._checkout import build_dir as _build_dir
from ._version import __version__

_build = _build_dir()
if _build is not None:
    __path__.insert(0, str(_build / "python" / "pgwire_proxy"))  # noqa: F821 (a package's __path__)
del _build, _build_dir

from .cluster import ExistingPostgres, ThrowawayPostgres, existing, from_environment
from .process import ProxyProcess, find_binary
from .proxy import CapturedQueries, Proxy, ProxyError, QueryRecord, option_names

__all__ = ["Proxy", "QueryRecord", "CapturedQueries", "ProxyError", "option_names",
           "ExistingPostgres", "ThrowawayPostgres", "existing", "from_environment",
           "ProxyProcess", "find_binary"]
