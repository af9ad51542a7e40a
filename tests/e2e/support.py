"""Helpers the e2e tests share: a simple-protocol psycopg connection, polling, upstream queries."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

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
