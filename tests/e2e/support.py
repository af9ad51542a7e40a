"""Helpers the e2e tests share: a simple-protocol psycopg connection, polling, upstream queries."""

from __future__ import annotations

import os
import threading
import time
from typing import Callable, Optional, TypeVar

import psycopg

T = TypeVar("T")


def connect(proxy, **kwargs) -> psycopg.Connection:
    """A psycopg connection through `proxy` that stays on the simple query protocol."""
    kwargs.setdefault("autocommit", True)
    kwargs.setdefault("cursor_factory", psycopg.ClientCursor)
    return psycopg.connect(proxy.dsn, **kwargs)


def wait_until(predicate: Callable[[], T], what: str = "condition", timeout: float = 20.0) -> T:
    """Polls `predicate` until it returns something true (synchronisation by observation, not by
    sleeping a guessed time); fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def upstream_active(pg_upstream, probe: str) -> list:
    """Upstream backends (other than this probe's own) whose current query contains `probe` and runs."""
    return pg_upstream.execute(
        "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s AND pid <> pg_backend_pid()",
        [f"%{probe}%"])


def cancelled_while_running(conn, pg_upstream, work: Callable[[], None], probe: str) -> Optional[psycopg.Error]:
    """Runs `work` (a statement on `conn`) on a thread, cancels it once a query containing `probe` is
    active upstream, and returns the psycopg error `work` raised (None if it raised none)."""
    outcome: dict = {}

    def run() -> None:
        try:
            work()
        except psycopg.Error as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    try:
        wait_until(lambda: upstream_active(pg_upstream, probe), f"a query with {probe!r} running upstream")
        conn.cancel()
    finally:
        worker.join(30)
    assert not worker.is_alive(), "the cancelled statement did not end"
    return outcome.get("error")


def cancel_counts(proxy) -> dict:
    """The proxy's CancelRequests so far by result (matched, unmatched, idle, peer): from stats() in
    process, else from the binary's /metrics (it must have been started with metrics_address).
    Each count is updated before the proxy closes the cancelling connection."""
    if hasattr(proxy, "stats"):
        return dict(proxy.stats()["cancels_by_result"])
    import re
    import urllib.request
    match = wait_until(lambda: re.search(r"event=listening .*metrics_port=(\d+)", proxy.stderr_text()),
                       what="the listening line with metrics_port")
    with urllib.request.urlopen(f"http://127.0.0.1:{match.group(1)}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {result: int(float(count)) for result, count in
            re.findall(r'^pgwire_proxy_cancel_requests_total\{result="(\w+)"\} (\S+)$', text, re.M)}


def cpu_seconds(pid: int) -> float:
    """User and system CPU a process has used so far (/proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
