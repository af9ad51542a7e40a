"""The proxy in-process: pgwire_proxy.Proxy wraps the C++ core (pgwire_proxy._core).

    with Proxy("host=127.0.0.1 port=5432 user=app dbname=app", max_rows=100) as proxy:
        psycopg.connect(proxy.dsn, autocommit=True)
        ...
        proxy.queries()     # what the clients ran
        proxy.stats()       # what the proxy counted

The server runs on C++ threads; the GIL is released while it starts and stops and no Python code
runs on its threads, so clients in the same interpreter (psycopg, threads) work normally.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

from . import _core
from .cluster import make_dsn, parse_dsn

__all__ = ["Proxy", "QueryRecord", "CapturedQueries", "ProxyError"]

Duration = Union[str, int, float, _dt.timedelta]
Size = Union[str, int]


class ProxyError(RuntimeError):
    """The proxy could not be started or stopped (the message says why)."""


@dataclass(frozen=True)
class QueryRecord:
    """One Query message as the proxy saw it, from the client's send to ReadyForQuery."""

    sql: str
    session_id: int
    started_at: _dt.datetime      # UTC
    duration: float               # seconds
    rows: int                     # rows sent to the client
    bytes: int                    # result bytes sent to the client
    command_tag: Optional[str]    # the last CommandComplete tag, e.g. "INSERT 0 1"
    sqlstate: Optional[str]       # the first error's SQLSTATE, None when it succeeded
    outcome: str                  # "ok", "error", "cancelled", "limit" or "denied"

    @classmethod
    def _from_core(cls, d: Mapping[str, Any]) -> "QueryRecord":
        values = dict(d)
        values["started_at"] = _dt.datetime.fromtimestamp(values["started_at"], tz=_dt.timezone.utc)
        return cls(**values)


class CapturedQueries(List[QueryRecord]):
    """The queries of a `proxy.capture()` block; filled when the block ends."""

    @property
    def sql(self) -> List[str]:
        return [q.sql for q in self]


def _duration(name: str, value: Duration) -> str:
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected a duration, got {value!r}")
    if isinstance(value, _dt.timedelta):
        value = value.total_seconds()
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{name}: a duration cannot be negative ({value!r})")
        return f"{round(value * 1000)}ms"
    if isinstance(value, str):
        return value
    raise TypeError(f"{name}: expected seconds or a string such as '30s', got {type(value).__name__}")


def _size(name: str, value: Size) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{name}: expected bytes (int) or a string such as '100MB', got {value!r}")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{name}: a size cannot be negative ({value!r})")
    return str(value)


def _count(name: str, value: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {value!r}")
    return str(value)


def _patterns(name: str, value: Union[str, Iterable[str]]) -> List[str]:
    items = [value] if isinstance(value, (str, os.PathLike)) else list(value)
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"{name}: expected strings, got {item!r}")
    return [os.fspath(item) for item in items]


class Proxy:
    """pgwire-proxy in this process. Every option of the binary, in snake_case.

    Durations take seconds (int/float), a timedelta or the binary's strings ('500ms', '30s', '2min');
    sizes take bytes (int) or strings ('64kB', '100MB'); None keeps the binary's default.
    Bad options raise ValueError (bad value) or TypeError (wrong type) naming the option.
    """

    def __init__(self, upstream_dsn: Optional[str] = None, *, listen_address: str = "127.0.0.1",
                 port: int = 0, max_connections: Optional[int] = None,
                 query_timeout: Optional[Duration] = None,
                 idle_in_transaction_timeout: Optional[Duration] = None,
                 startup_timeout: Optional[Duration] = None, connect_timeout: Optional[Duration] = None,
                 max_message_size: Optional[Size] = None, max_rows: Optional[int] = None,
                 max_bytes: Optional[Size] = None, deny: Sequence[str] = (), allow: Sequence[str] = (),
                 deny_file: Sequence[Union[str, os.PathLike]] = (),
                 allow_file: Sequence[Union[str, os.PathLike]] = (), patterns_ignore_case: bool = False,
                 log_level: str = "warning", capture_size: int = 10000):
        options: Dict[str, List[str]] = {"listen-address": [listen_address], "port": [_count("port", port)],
                                          "log-level": [log_level]}
        if upstream_dsn is not None:
            options["upstream-dsn"] = [upstream_dsn]
        if max_connections is not None:
            options["max-connections"] = [_count("max_connections", max_connections)]
        for name, value in (("query-timeout", query_timeout),
                            ("idle-in-transaction-timeout", idle_in_transaction_timeout),
                            ("startup-timeout", startup_timeout), ("connect-timeout", connect_timeout)):
            if value is not None:
                options[name] = [_duration(name.replace("-", "_"), value)]
        for name, value in (("max-message-size", max_message_size), ("max-bytes", max_bytes)):
            if value is not None:
                options[name] = [_size(name.replace("-", "_"), value)]
        if max_rows is not None:
            options["max-rows"] = [_count("max_rows", max_rows)]
        for name, value in (("deny", deny), ("allow", allow), ("deny-file", deny_file),
                            ("allow-file", allow_file)):
            items = _patterns(name.replace("-", "_"), value)
            if items:
                options[name] = items
        if patterns_ignore_case:
            options["patterns-ignore-case"] = [""]
        if isinstance(capture_size, bool) or not isinstance(capture_size, int) or capture_size < 0:
            raise ValueError(f"capture_size: expected a non-negative int, got {capture_size!r}")
        self._core = _core.Proxy(options, capture_size)  # ValueError naming the option
        dsn_names = parse_dsn(upstream_dsn or os.environ.get("PGWIRE_PROXY_UPSTREAM_DSN", ""))
        # The proxy ignores a client's user/database (the upstream's come from its DSN); these only
        # give clients of .dsn sensible names to send.
        self.user: str = dsn_names.get("user") or "postgres"
        self.dbname: str = dsn_names.get("dbname") or self.user
        self.upstream_dsn = upstream_dsn

    # ---- life ----------------------------------------------------------------------------------

    def start(self) -> "Proxy":
        """Binds and starts accepting; returns once the socket listens."""
        try:
            self._core.start()
        except RuntimeError as exc:
            raise ProxyError(str(exc)) from None
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stops accepting and ends every session (idle clients get FATAL 57P01, running queries are
        cancelled upstream); sockets still busy after `timeout` seconds are cut. Idempotent."""
        self._core.stop(float(timeout))

    @property
    def running(self) -> bool:
        return self._core.running

    def __enter__(self) -> "Proxy":
        return self.start() if not self.running else self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __del__(self) -> None:
        core = getattr(self, "_core", None)
        if core is not None and core.running:
            core.stop(5.0)

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port}" if self.running else "not running"
        return f"<pgwire_proxy.Proxy {where}>"

    # ---- where it listens ----------------------------------------------------------------------

    @property
    def host(self) -> str:
        return self._core.host

    @property
    def port(self) -> int:
        if not self.running and self._core.port == 0:
            raise ProxyError("the proxy is not started")
        return self._core.port

    @property
    def dsn(self) -> str:
        """A libpq connection string for clients of this proxy."""
        return make_dsn(host=self.host, port=self.port, user=self.user, dbname=self.dbname)

    def dsn_with(self, **overrides: object) -> str:
        params: Dict[str, object] = {"host": self.host, "port": self.port, "user": self.user,
                                     "dbname": self.dbname}
        params.update(overrides)
        return make_dsn(**params)

    # ---- what it saw ---------------------------------------------------------------------------

    def stats(self) -> Dict[str, Any]:
        """A snapshot: connections_total, active_sessions, queries_total, rows_total, bytes_total,
        cancel_requests, cancels_matched, errors_by_sqlstate, limit_breaches, queries_by_outcome."""
        return self._core.stats()

    def sessions(self) -> List[Dict[str, Any]]:
        """The live sessions: id, backend_pid (the key the client was given), client_address,
        application_name, state ('idle' or 'active'), connected_at (UTC datetime), queries."""
        result = []
        for s in self._core.sessions():
            s["connected_at"] = _dt.datetime.fromtimestamp(s["connected_at"], tz=_dt.timezone.utc)
            result.append(s)
        return result

    def queries(self) -> List[QueryRecord]:
        """The queries seen so far, oldest first (at most capture_size of them)."""
        return [QueryRecord._from_core(d) for d in self._core.queries()]

    def clear_queries(self) -> None:
        self._core.clear_queries()

    @contextlib.contextmanager
    def capture(self) -> Iterator[CapturedQueries]:
        """with proxy.capture() as queries: ... -- `queries` holds the block's queries when it ends."""
        start = self._core.capture_sequence()
        captured = CapturedQueries()
        try:
            yield captured
        finally:
            captured.extend(QueryRecord._from_core(d) for d in self._core.queries_since(start))


def option_names() -> List[str]:
    """The binary's option names in snake_case (Proxy takes each as a keyword argument)."""
    return [spec["name"].replace("-", "_") for spec in _core.option_specs()]
