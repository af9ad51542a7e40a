"""/healthz and /readyz beside /metrics: a balancer or Kubernetes routes around a draining instance or
one whose upstream is gone."""

from __future__ import annotations

import signal
import threading
import urllib.error
import urllib.request

import psycopg

from pgwire_proxy.cluster import free_port
from support import upstream_active, wait_until
from test_metrics_logs import metrics_port


def get(port: int, path: str):
    """(status, body) of GET http://127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_ready_while_serving_and_not_found_elsewhere(pgwire_proxy_process_factory):
    proxy = pgwire_proxy_process_factory(metrics_address="127.0.0.1:0")
    port = metrics_port(proxy)
    assert get(port, "/healthz") == (200, "ok\n")
    assert get(port, "/readyz") == (200, "ok\n")
    assert get(port, "/nope")[0] == 404


def test_not_ready_while_the_upstream_is_unreachable(pgwire_proxy_process_factory):
    dead = f"host=127.0.0.1 port={free_port()} user=postgres dbname=postgres connect_timeout=2"
    proxy = pgwire_proxy_process_factory(dead, metrics_address="127.0.0.1:0")
    port = metrics_port(proxy)
    assert get(port, "/healthz") == (200, "ok\n")  # alive, but
    assert get(port, "/readyz") == (503, "not ready: the upstream server is not reachable\n")


def test_not_ready_as_soon_as_sigterm_arrives_while_queries_drain(pgwire_proxy_process_factory, pg_upstream):
    proxy = pgwire_proxy_process_factory(metrics_address="127.0.0.1:0", shutdown_timeout="60s")
    port = metrics_port(proxy)
    assert get(port, "/readyz")[0] == 200
    holder = pg_upstream.connect()  # holds a lock the proxied query waits for: the drain lasts until released
    holder.execute("select pg_advisory_lock(4242)")
    conn = psycopg.connect(proxy.dsn, autocommit=True, cursor_factory=psycopg.ClientCursor)
    result = {}

    def run():
        result["rows"] = conn.execute("select pg_advisory_lock(4242), 'drain_probe'").fetchall()

    query = threading.Thread(target=run)
    query.start()
    wait_until(lambda: upstream_active(pg_upstream, "drain_probe"), what="the query to run")
    proxy.process.send_signal(signal.SIGTERM)
    # Not ready at once (the balancer stops sending new clients) while the running query goes on.
    wait_until(lambda: get(port, "/readyz") == (503, "not ready: shutting down\n"), what="/readyz to go 503")
    assert upstream_active(pg_upstream, "drain_probe")
    holder.execute("select pg_advisory_unlock(4242)")
    query.join()
    assert result["rows"][0][1] == "drain_probe"
    conn.close()
    holder.close()
