"""The proxy in-process: pgwire_proxy.Proxy wraps the C++ core (pgwire_proxy._core).

    with Proxy("host=127.0.0.1 port=5432 user=app dbname=app", max_rows=100) as proxy:
        conn = psycopg.connect(proxy.dsn, autocommit=True, cursor_factory=psycopg.ClientCursor)
        ...
        proxy.queries()     # what the clients ran
        proxy.stats()       # what the proxy counted

The server runs on C++ threads; the GIL is released while it starts and stops and no Python code
runs on its threads, so clients in the same interpreter (psycopg, threads) work normally.

The extension is imported when the first Proxy is made, so `import pgwire_proxy` works without it
(the cluster helpers need no compiled code).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
from dataclasses import dataclass, fields
from types import ModuleType
from typing import TYPE_CHECKING, Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

from .cluster import make_dsn, parse_dsn

if TYPE_CHECKING:
    from . import _core as _core_types

__all__ = ["Proxy", "QueryRecord", "CapturedQueries", "ProxyError", "Fault", "option_names", "Duration", "Size"]

Duration = Union[str, int, float, _dt.timedelta]
"""Seconds (int/float), a timedelta, or the binary's strings: '500ms', '30s', '2min'."""
Size = Union[str, int]
"""Bytes (int) or the binary's strings: '64kB', '100MB'."""
PathLike = Union[str, "os.PathLike[str]"]
Patterns = Union[PathLike, Iterable[PathLike]]
"""One pattern (or pattern file) or several."""

UPSTREAM_DSN_ENV = "PGWIRE_PROXY_UPSTREAM_DSN"
DEFAULT_SHUTDOWN_SECONDS = 30.0  # the binary's --shutdown-timeout default


def _load_core() -> ModuleType:
    """pgwire_proxy._core, or an ImportError that says how to get it."""
    try:
        from . import _core
    except ImportError as exc:
        raise ImportError(
            f"pgwire_proxy.Proxy needs the compiled extension pgwire_proxy._core, which is not importable "
            f"({exc}). Install the package with pip (`pip install --no-build-isolation .` builds it with "
            f"CMake) or, in a source checkout, build it with scripts/build.sh (it goes to build/python/pgwire_proxy/, or under $PGWIRE_PROXY_BUILD_DIR). The cluster helpers "
            f"(ThrowawayPostgres, ...) and ProxyProcess work without it.",
            name="pgwire_proxy._core") from exc
    return _core


class ProxyError(RuntimeError):
    """The proxy could not be started (the message says why: address in use, bad address ...)."""


@dataclass(frozen=True)
class QueryRecord:
    """One Query message as the proxy saw it, from the client's send to its ReadyForQuery.

    Several statements sent in one Query ("select 1; select 2") are one record; its rows and bytes
    are the sum, its command_tag the last statement's.
    """

    sql: str
    """The query text exactly as the client sent it."""
    session_id: int
    """The proxy's id of the client session (see Proxy.sessions())."""
    started_at: _dt.datetime
    """When the proxy received the query (UTC)."""
    duration: float
    """Seconds from receiving the query to the client's ReadyForQuery."""
    rows: int
    """DataRows sent to the client."""
    bytes: int
    """Result bytes sent to the client (DataRow messages, headers included)."""
    command_tag: Optional[str]
    """The last CommandComplete tag, e.g. 'INSERT 0 1' or 'SELECT 3'; None when there was none."""
    sqlstate: Optional[str]
    """The first error's SQLSTATE ('42P01', '57014', '54000', '42501' ...); None when it succeeded."""
    outcome: str
    """'ok', 'error', 'cancelled' (57014: a cancel or a timeout), 'limit' (max_rows/max_bytes) or
    'denied' (a deny/allow pattern refused it; it never reached the upstream)."""
    injected: Optional[str] = None
    """The fault a rule injected into it ('error', 'delay', 'drop', 'notice'); None when none did."""

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @classmethod
    def _from_core(cls, d: Mapping[str, Any]) -> "QueryRecord":
        # Fields a newer core may add are left out rather than breaking every caller.
        values = {name: d[name] for name in _RECORD_FIELDS}
        values["started_at"] = _dt.datetime.fromtimestamp(values["started_at"], tz=_dt.timezone.utc)
        return cls(**values)


_RECORD_FIELDS = tuple(f.name for f in fields(QueryRecord))


class CapturedQueries(List[QueryRecord]):
    """The queries of a `proxy.capture()` block, oldest first; filled when the block ends."""

    @property
    def sql(self) -> List[str]:
        """The query texts, in order."""
        return [q.sql for q in self]


# ---- option conversion: Python values to the binary's strings, errors naming the Python name --------

def _text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a string, got {value!r}")
    return value


def _count(name: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {value!r}")
    return str(value)


def _duration(name: str, value: object) -> str:
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
    raise TypeError(f"{name}: expected seconds, a timedelta or a string such as '30s', got {value!r}")


def _seconds(duration: str) -> float:
    """Seconds of a duration string the core accepts (a number with ms, s, min or h; bare = seconds)."""
    for unit, factor in (("ms", 0.001), ("min", 60.0), ("s", 1.0), ("h", 3600.0)):
        if duration.endswith(unit):
            return float(duration[:-len(unit)]) * factor
    return float(duration)


def _size(name: str, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{name}: expected bytes (int) or a string such as '100MB', got {value!r}")
    if isinstance(value, int) and value < 0:
        raise ValueError(f"{name}: a size cannot be negative ({value!r})")
    return str(value)


def _path(name: str, value: object) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a path, got {value!r}")
    return os.fspath(value)  # type: ignore[arg-type]


def _patterns(name: str, value: object) -> List[str]:
    if isinstance(value, (str, os.PathLike)):
        items: List[object] = [value]
    else:
        try:
            items = list(value)  # type: ignore[call-overload]
        except TypeError:
            raise TypeError(f"{name}: expected a string or a list of strings, got {value!r}") from None
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"{name}: expected strings, got {item!r}")
    return [os.fspath(item) for item in items]  # type: ignore[arg-type]


# Python names that are not the option's snake_case (a mapping is plural).
PYTHON_NAMES = {"database": "databases"}


def _snake_case_message(message: str, option_specs: Iterable[Mapping[str, Any]]) -> str:
    """The core names options in kebab-case ('max-rows: ...'); a Python caller passed max_rows."""
    for core_name, python_name in PYTHON_NAMES.items():
        if message.startswith(core_name + ":") or message.startswith(core_name + " "):
            return python_name + message[len(core_name):]
    for spec in option_specs:
        name = spec["name"]
        if message.startswith(name + ":"):
            return name.replace("-", "_") + message[len(name):]
    return message


class Proxy:
    """pgwire-proxy in this process, in front of one upstream PostgreSQL.

    Every option of the binary is a keyword argument under the same name in snake_case (see
    docs/configuration.md); None keeps the binary's default, except that port=0 picks a free port and
    log_level is 'warning' (the binary's: 5433 and 'info'). Durations take seconds (int/float), a
    timedelta or the binary's strings ('500ms', '30s', '2min'); sizes take bytes (int) or strings
    ('64kB', '100MB'). capture_size bounds the query capture in records (the newest are kept; 0 keeps
    none) and capture_bytes in the bytes their texts hold (the oldest go first, but the newest record
    is always kept whole; 0: no bound in bytes). Bad options raise ValueError (bad value) or TypeError
    (wrong type), naming the option.

    The upstream comes from upstream_dsn (else the environment variable PGWIRE_PROXY_UPSTREAM_DSN):
    a user or dbname it names is used for every session, where it names none the client's are.
    databases={'app': dsn, ...} routes clients asking for database 'app' to that DSN (the binary's
    repeatable --database NAME=DSN); other names go to upstream_dsn, or get FATAL 3D000 without one.
    auth='trust' (the default: clients are not asked), 'passthrough' (the client's password goes
    upstream as the client's user) or 'scram-sha-256' (against auth_file, PgBouncer's userlist.txt);
    see docs/security.md. With enable_tls, clients
    may use TLS (tls_cert/tls_key the proxy's certificate, tls_ca to require client certificates,
    tls_required to refuse plain clients). protocol='extended' relays the extended query
    protocol (psycopg's server-side parameters, prepared statements, pipelines) under the same
    guardrails, protocol='full' also COPY both ways (bounded by max_copy_in_bytes) and the
    function-call protocol; the default 'simple' refuses them with 0A000 (extended_protocol='relay'
    is the older name of protocol='extended'). reuse_upstream=True gives a finished session's upstream
    connection, reset with DISCARD ALL, to the next client of the same database, user and startup
    parameters (reuse_pool_size idle ones kept, closed after reuse_idle_timeout; docs/configuration.md).
    pin_loops=True pins each event-loop thread (one per CPU the process may use) to its CPU; in-process
    that means threads of the Python process.
    deny and allow (and the lines of deny_file
    and allow_file) are POSIX extended regular expressions (glibc's regcomp: [[:space:]], and also
    \\s \\w \\b; no (?i), use patterns_ignore_case=True; no \\d, use [0-9]) searched anywhere in the
    query text; fault rules' match is the same dialect. faults names a rules file (as the
    binary's --faults; add_fault adds rules at runtime). instance_id and peers ({id: 'host:port'}
    or the binary's 'ID=HOST:PORT,...') route cancel requests between instances (docs/scaling.md).
    metrics_address ('127.0.0.1:0' picks a port) serves
    Prometheus metrics over HTTP. The log options (log_level, log_format, log_file, log_queries) set
    the process-wide logger, so the last proxy started decides them for every proxy in the process.
    config (the binary's --config file) is refused: pass the options as keyword arguments.
    A Proxy starts once:
    start() (or `with`), use .dsn, then stop(); a garbage-collected running Proxy is stopped.
    """

    def __init__(self, upstream_dsn: Optional[str] = None, *, listen_address: str = "127.0.0.1",
                 port: int = 0, databases: Optional[Mapping[str, str]] = None,
                 max_connections: Optional[int] = None,
                 max_startup_connections: Optional[int] = None,
                 query_timeout: Optional[Duration] = None,
                 idle_in_transaction_timeout: Optional[Duration] = None,
                 startup_timeout: Optional[Duration] = None, connect_timeout: Optional[Duration] = None,
                 shutdown_timeout: Optional[Duration] = None,
                 max_message_size: Optional[Size] = None, extended_protocol: Optional[str] = None,
                 protocol: Optional[str] = None, max_copy_in_bytes: Optional[Size] = None,
                 reuse_upstream: bool = False, reuse_pool_size: Optional[int] = None,
                 reuse_idle_timeout: Optional[Duration] = None, pin_loops: bool = False,
                 max_rows: Optional[int] = None, max_bytes: Optional[Size] = None, deny: Patterns = (), allow: Patterns = (),
                 deny_file: Patterns = (), allow_file: Patterns = (), patterns_ignore_case: bool = False,
                 enable_tls: bool = False, tls_cert: Optional[PathLike] = None,
                 tls_key: Optional[PathLike] = None, tls_ca: Optional[PathLike] = None,
                 tls_required: bool = False, metrics_address: Optional[str] = None,
                 auth: Optional[str] = None, auth_file: Optional[PathLike] = None,
                 faults: Optional[PathLike] = None, instance_id: Optional[int] = None,
                 peers: Union[None, str, Mapping[int, str]] = None,
                 log_level: str = "warning", log_format: Optional[str] = None,
                 log_file: Optional[PathLike] = None, log_queries: bool = False,
                 config: Optional[PathLike] = None, capture_size: int = 10000,
                 capture_bytes: Size = "64MB") -> None:
        core = _load_core()
        if config is not None:
            # The binary's shell reads --config; the core module has no reader for it, and passing the
            # name on would be silently ignored.
            raise ValueError(f"config: config files ({os.fspath(config)!r}) are read by the pgwire-proxy "
                             f"binary only; pass the options to Proxy as keyword arguments")
        options: Dict[str, List[str]] = {"listen-address": [_text("listen_address", listen_address)],
                                          "port": [_count("port", port)],
                                          "log-level": [_text("log_level", log_level)]}
        if upstream_dsn is not None:
            options["upstream-dsn"] = [_text("upstream_dsn", upstream_dsn)]
        if databases is not None:
            if not isinstance(databases, Mapping):
                raise TypeError(f"databases: expected a mapping of database names to DSNs, got {databases!r}")
            options["database"] = [f"{_text('databases', name)}={_text('databases', dsn)}"
                                   for name, dsn in databases.items()]
        if max_connections is not None:
            options["max-connections"] = [_count("max_connections", max_connections)]
        if max_startup_connections is not None:
            options["max-startup-connections"] = [_count("max_startup_connections", max_startup_connections)]
        for name, value in (("query-timeout", query_timeout),
                            ("idle-in-transaction-timeout", idle_in_transaction_timeout),
                            ("startup-timeout", startup_timeout), ("connect-timeout", connect_timeout),
                            ("shutdown-timeout", shutdown_timeout), ("reuse-idle-timeout", reuse_idle_timeout)):
            if value is not None:
                options[name] = [_duration(name.replace("-", "_"), value)]
        for name, value in (("max-message-size", max_message_size), ("max-bytes", max_bytes),
                            ("max-copy-in-bytes", max_copy_in_bytes)):
            if value is not None:
                options[name] = [_size(name.replace("-", "_"), value)]
        if max_rows is not None:
            options["max-rows"] = [_count("max_rows", max_rows)]
        if reuse_pool_size is not None:
            options["reuse-pool-size"] = [_count("reuse_pool_size", reuse_pool_size)]
        if instance_id is not None:
            options["instance-id"] = [_count("instance_id", instance_id)]
        if peers is not None:
            options["peers"] = [peers if isinstance(peers, str) else
                                ",".join(f"{_count('peers', i)}={_text('peers', a)}" for i, a in peers.items())]
        for name, value in (("deny", deny), ("allow", allow), ("deny-file", deny_file),
                            ("allow-file", allow_file)):
            items = _patterns(name.replace("-", "_"), value)
            if items:
                options[name] = items
        for name, value in (("patterns-ignore-case", patterns_ignore_case), ("enable-tls", enable_tls),
                            ("tls-required", tls_required), ("log-queries", log_queries),
                            ("reuse-upstream", reuse_upstream), ("pin-loops", pin_loops)):
            if not isinstance(value, bool):
                raise TypeError(f"{name.replace('-', '_')}: expected a bool, got {value!r}")
            if value:
                options[name] = [""]
        for name, value in (("tls-cert", tls_cert), ("tls-key", tls_key), ("tls-ca", tls_ca),
                            ("log-file", log_file), ("faults", faults), ("auth-file", auth_file)):
            if value is not None:
                options[name] = [_path(name.replace("-", "_"), value)]
        for name, value in (("metrics-address", metrics_address), ("log-format", log_format), ("auth", auth),
                            ("extended-protocol", extended_protocol), ("protocol", protocol)):
            if value is not None:
                options[name] = [_text(name.replace("-", "_"), value)]
        if isinstance(capture_size, bool) or not isinstance(capture_size, int):
            raise TypeError(f"capture_size: expected an int, got {capture_size!r}")
        if capture_size < 0:
            raise ValueError(f"capture_size: expected 0 or more records, got {capture_size!r}")
        capture_bytes_text = _size("capture_bytes", capture_bytes)
        try:
            self._core: "_core_types.Proxy" = core.Proxy(options, capture_size, capture_bytes_text)
        except ValueError as exc:
            raise ValueError(_snake_case_message(str(exc), core.option_specs())) from None
        dsn_names = parse_dsn(upstream_dsn or os.environ.get(UPSTREAM_DSN_ENV, ""))
        # The proxy ignores a client's user/database (the upstream's come from its DSN); these only
        # give clients of .dsn sensible names to send.
        self.user: str = dsn_names.get("user") or "postgres"
        # With routes and no fallback, .dsn asks for the first route.
        self.dbname: str = dsn_names.get("dbname") or (
            next(iter(databases)) if databases and not (upstream_dsn or os.environ.get(UPSTREAM_DSN_ENV))
            else self.user)
        self.upstream_dsn: Optional[str] = upstream_dsn
        # stop()'s default, as --shutdown-timeout is the binary's on SIGTERM (validated by the core above).
        self._shutdown_seconds = (_seconds(options["shutdown-timeout"][0]) if "shutdown-timeout" in options
                                  else DEFAULT_SHUTDOWN_SECONDS)

    # ---- life ----------------------------------------------------------------------------------

    def start(self) -> "Proxy":
        """Binds and starts accepting; returns (self) once the socket listens, so .port is known.

        Raises ProxyError when it cannot listen (address in use, unknown address, a log file it cannot
        open) or was started before, ValueError for an option only checked now (metrics_address).
        """
        try:
            self._core.start()
        except ValueError as exc:
            raise ValueError(_snake_case_message(str(exc), _load_core().option_specs())) from None
        except RuntimeError as exc:
            raise ProxyError(_snake_case_message(str(exc), _load_core().option_specs())) from None
        return self

    def stop(self, timeout: Optional[Duration] = None) -> None:
        """Shuts down gracefully, as the binary does on SIGTERM: stops accepting at once, sends idle
        clients FATAL 57P01 and closes them, lets running queries finish (each session ends after its
        ReadyForQuery), and once `timeout` has passed cancels what still runs and closes it. Returns
        when every session and thread of the proxy is gone.

        timeout: seconds or a duration as for the options; default shutdown_timeout, else 30 seconds;
        0 cancels running queries at once. Idempotent; a stopped Proxy cannot be started again.
        """
        if timeout is None:
            seconds = self._shutdown_seconds
        else:
            text = _duration("timeout", timeout)
            try:
                seconds = _seconds(text)
            except ValueError:
                raise ValueError(f"timeout: invalid duration {timeout!r} (seconds, or e.g. '500ms', '30s')") from None
        self._core.stop(seconds)

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._core.running

    def __enter__(self) -> "Proxy":
        return self if self.running else self.start()

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
        """The address it listens on (a wildcard address is given as the matching loopback one)."""
        host = self._core.host
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)

    @property
    def port(self) -> int:
        """The port it listens on (the one picked when port=0); ProxyError before start()."""
        port = self._core.port
        if port == 0:
            raise ProxyError("the proxy is not started, so it has no port yet")
        return port

    @property
    def dsn(self) -> str:
        """A libpq connection string for clients of this proxy (host, port, user, dbname)."""
        return self.dsn_with()

    def dsn_with(self, **overrides: object) -> str:
        """.dsn with some keywords replaced or added (application_name=..., connect_timeout=...)."""
        params: Dict[str, object] = {"host": self.host, "port": self.port, "user": self.user,
                                     "dbname": self.dbname}
        params.update(overrides)
        return make_dsn(**params)

    @property
    def metrics_port(self) -> Optional[int]:
        """The port of the Prometheus endpoint (metrics_address=...), None when it serves none."""
        return self._core.metrics_port or None

    # ---- what it saw ---------------------------------------------------------------------------

    def metrics_text(self) -> str:
        """The Prometheus exposition the metrics endpoint serves (available without the endpoint)."""
        return self._core.metrics_text()

    def stats(self) -> Dict[str, Any]:
        """A snapshot of the counters since start (or since the last reset_stats() / reset()), among them:

        connections_total, active_sessions, queries_total, rows_total, bytes_total (result bytes sent
        to clients), cancel_requests, cancels_matched (requests whose key named a live session),
        errors_by_sqlstate (every error a client received, by SQLSTATE), limit_breaches (by guardrail:
        max-rows, max-bytes, query-timeout, deny, allow), faults_injected (by action: error, delay,
        drop, notice) and queries_by_outcome. The same counters as
        metrics_text(), so tests and dashboards agree; queries_by_outcome therefore uses the metrics'
        finer labels (ok, error, cancelled, timeout, limit_rows, limit_bytes, denied) where
        QueryRecord.outcome says 'cancelled' or 'limit'. active_sessions is the live number, never reset.
        """
        return self._core.stats()

    def reset_stats(self) -> None:
        """stats() counts from now on, as on a fresh proxy (a key counted only before is left out). The
        Prometheus counters of metrics_text() and the metrics endpoint are not reset: they only go up."""
        self._core.reset_stats()

    def reset(self) -> None:
        """What a shared proxy does between tests: forgets the captured queries, removes every fault
        rule and restarts the stats() counters (reset_stats). Sessions still open are not touched."""
        self._core.clear_queries()
        self._core.clear_faults()
        self._core.reset_stats()

    def sessions(self) -> List[Dict[str, Any]]:
        """The live client sessions: id, backend_pid (the key the client was given), client_address,
        application_name, state ('idle' or 'active'), connected_at (UTC datetime), queries (count)."""
        return [dict(s, connected_at=_dt.datetime.fromtimestamp(s["connected_at"], tz=_dt.timezone.utc))
                for s in self._core.sessions()]

    def queries(self) -> List[QueryRecord]:
        """The queries seen so far, oldest first: the newest capture_size of them, fewer where their texts
        pass capture_bytes (the newest is always kept)."""
        return [QueryRecord._from_core(d) for d in self._core.queries()]

    def clear_queries(self) -> None:
        """Forgets the captured queries (the counters of stats() are kept)."""
        self._core.clear_queries()

    def captured_bytes(self) -> int:
        """The bytes the kept records' texts hold now: what capture_bytes bounds."""
        return self._core.captured_bytes()

    # ---- fault injection ----------------------------------------------------------------------------

    def add_fault(self, match: Optional[str] = None, action: str = "error", *, when: Optional[str] = None,
                  sqlstate: Optional[str] = None, severity: Optional[str] = None, message: Optional[str] = None,
                  detail: Optional[str] = None, hint: Optional[str] = None, delay: Optional[Duration] = None,
                  rows: Optional[int] = None, nth: Optional[int] = None, every: Optional[int] = None,
                  per_session: bool = False, probability: Optional[float] = None, seed: Optional[int] = None,
                  user: Optional[str] = None, database: Optional[str] = None,
                  application_name: Optional[str] = None, ignore_case: bool = False) -> Fault:
        """Injects a fault into the queries that `match` (a POSIX extended regular expression, as deny
        and allow take, searched anywhere in the query text; not Python's re: no (?i) or \\d, use
        ignore_case=True and [0-9]; None: every query), from each session's next query on. Rules
        apply in the order added; the first that fires wins. See docs/fault-injection.md.

        action='error' answers with an ErrorResponse (sqlstate, message, detail, hint; severity
        'FATAL' closes the connection) instead of running the query (when='before', the default) or
        after running it with its results discarded (when='after': "the commit happened but the
        client saw an error"). action='delay' holds the query (when='before') or its results
        (when='first_row') for `delay`. action='drop' closes the client connection before the query,
        after `rows` DataRows (when='after_rows') or in the middle of the first result message
        (when='mid_message'). action='notice' sends a NoticeResponse first.

        nth=N fires on the Nth match only, every=N on every Nth; counted across all sessions, or
        within each session with per_session=True. probability=p fires with that chance, drawn from a
        generator seeded with `seed` (the same seed gives the same sequence). user, database and
        application_name narrow the match to sessions that sent those.

        Returns a Fault (its .hits counts injections; .remove() or `with` takes it out). ValueError
        for a rule that cannot work (a bad regex or SQLSTATE, an error without a message ...)."""
        settings = _fault_settings(match, action, dict(
            when=when, sqlstate=sqlstate, severity=severity, message=message, detail=detail, hint=hint,
            delay=delay, rows=rows, nth=nth, every=every, per_session=per_session or None,
            probability=probability, seed=seed, user=user, database=database,
            application_name=application_name, ignore_case=ignore_case or None))
        try:
            rule_id = self._core.add_fault(settings)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        return Fault(self, rule_id, settings)

    def fault(self, match: Optional[str] = None, action: str = "error", **kwargs: Any) -> Fault:
        """add_fault for a `with` block: `with proxy.fault("^commit", sqlstate="40001", message=...):`
        -- the rule is removed when the block ends."""
        return self.add_fault(match, action, **kwargs)

    def faults(self) -> List[Dict[str, Any]]:
        """The rules in force: id, action, when, match, matches, hits."""
        return list(self._core.faults())

    def clear_faults(self) -> None:
        """Removes every fault rule."""
        self._core.clear_faults()

    @contextlib.contextmanager
    def capture(self) -> Iterator[CapturedQueries]:
        """`with proxy.capture() as queries:` ... -- `queries` holds the queries that finished during
        the block (from any session), filled when the block ends. A query is recorded before its
        client sees the result, so everything a client ran inside the block is there."""
        start = self._core.capture_sequence()
        captured = CapturedQueries()
        try:
            yield captured
        finally:
            captured.extend(QueryRecord._from_core(d) for d in self._core.queries_since(start))


class Fault:
    """A fault rule in force on a Proxy (from Proxy.add_fault); .hits counts the queries it fired on."""

    def __init__(self, proxy: "Proxy", rule_id: int, settings: Mapping[str, str]):
        self._proxy = proxy
        self.id = rule_id
        self.settings = dict(settings)

    def _counts(self) -> Tuple[int, int]:
        counts = self._proxy._core.fault_counts(self.id)
        if counts is None:
            raise LookupError(f"fault {self.id} is no longer in force (removed or cleared)")
        return counts

    @property
    def hits(self) -> int:
        """Queries the fault was injected into."""
        return self._counts()[1]

    @property
    def matches(self) -> int:
        """Queries that matched (before nth/every/probability decided whether it fires)."""
        return self._counts()[0]

    def remove(self) -> None:
        """Takes the rule out (idempotent); sessions stop applying it from their next query."""
        self._proxy._core.remove_fault(self.id)

    def __enter__(self) -> "Fault":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return f"<pgwire_proxy.Fault {self.id}: {shown}>"


def _fault_settings(match: Optional[str], action: str, kwargs: Mapping[str, object]) -> Dict[str, str]:
    settings: Dict[str, str] = {"action": _text("action", action)}
    if match is not None:
        settings["match"] = _text("match", match)
    for name, value in kwargs.items():
        if value is None:
            continue
        if name == "delay":
            settings[name] = _duration(name, value)
        elif isinstance(value, bool):
            settings[name] = "true" if value else "false"
        elif name in ("nth", "every", "rows", "seed"):
            settings[name] = _count(name, value)
        elif name == "probability":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"probability: expected a number, got {value!r}")
            settings[name] = repr(float(value))
        else:
            settings[name] = _text(name, value)
    return settings


def option_names() -> List[str]:
    """The binary's option names in snake_case (Proxy takes each as a keyword argument; --database
    is databases={...})."""
    return [PYTHON_NAMES.get(spec["name"], spec["name"].replace("-", "_")) for spec in _load_core().option_specs()]
