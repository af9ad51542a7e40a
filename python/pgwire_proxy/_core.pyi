# Type stubs for the compiled extension pgwire_proxy._core (cpp/bindings/module.cpp); use pgwire_proxy.Proxy.
"""The pgwire-proxy core, in-process. Use pgwire_proxy.Proxy rather than this module."""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, TypedDict

class OptionSpec(TypedDict):
    name: str          # kebab-case, as on the command line
    takes_value: bool
    repeatable: bool
    help: str

class QueryDict(TypedDict):
    sql: str
    session_id: int
    started_at: float  # seconds since the epoch
    duration: float
    rows: int
    bytes: int
    command_tag: str | None
    sqlstate: str | None
    outcome: str
    injected: str | None  # the fault injected: error, delay, drop, notice

class SessionDict(TypedDict):
    id: int
    backend_pid: int
    client_address: str
    application_name: str
    state: str
    connected_at: float  # seconds since the epoch
    queries: int

def option_specs() -> List[OptionSpec]:
    """Every option of the proxy: name (kebab-case), takes_value, repeatable, help."""

class Proxy:
    def __init__(self, options: Mapping[str, Sequence[str]], capture_size: int, capture_bytes: str) -> None:
        """Validates the options (kebab-case names to lists of strings); raises ValueError naming a bad one."""
    def start(self) -> None:
        """Binds and starts accepting; returns once the socket listens."""
    def stop(self, timeout: float) -> None:
        """Stops accepting and ends every session, waiting up to `timeout` seconds before cutting sockets."""
    @property
    def running(self) -> bool: ...
    @property
    def port(self) -> int: ...
    @property
    def host(self) -> str: ...
    @property
    def metrics_port(self) -> int:
        """The metrics endpoint's port; 0 when it serves none."""
    def metrics_text(self) -> str:
        """The Prometheus exposition the metrics endpoint serves."""
    def stats(self) -> Dict[str, Any]:
        """The counters since start or the last reset_stats()."""
    def reset_stats(self) -> None:
        """stats() counts from now on (the metrics' counters are not reset)."""
    def sessions(self) -> List[SessionDict]: ...
    def queries(self) -> List[QueryDict]: ...
    def queries_since(self, sequence: int) -> List[QueryDict]: ...
    def capture_sequence(self) -> int: ...
    def clear_queries(self) -> None: ...
    def captured_bytes(self) -> int: ...
    def add_fault(self, settings: Mapping[str, str]) -> int:
        """Adds a fault rule from --faults-file settings; returns its id. ValueError for a bad rule."""
    def remove_fault(self, id: int) -> bool: ...
    def clear_faults(self) -> None: ...
    def faults(self) -> List[Dict[str, Any]]: ...
    def fault_counts(self, id: int) -> Optional[Tuple[int, int]]:
        """(matches, hits) of a rule still in force, None once removed."""
