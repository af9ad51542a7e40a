"""pgwire-proxy for Python: a throwaway PostgreSQL and the proxy, for tests and local runs."""

from .cluster import ExistingPostgres, ThrowawayPostgres, existing, from_environment
from .process import ProxyProcess, find_binary

__all__ = ["ExistingPostgres", "ThrowawayPostgres", "existing", "from_environment",
           "ProxyProcess", "find_binary"]
