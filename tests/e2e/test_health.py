"""/healthz and /readyz beside /metrics: a balancer or Kubernetes routes around a draining instance or
one whose upstream is gone."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import psycopg

from pgwire_proxy.cluster import free_port
from support import upstream_active, wait_until
from tcp_relay import TcpRelay
from test_metrics_logs import metrics_port


def get(port: int, path: str, timeout: float = 10):
    """(status, body) of GET http://127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
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


# --- the endpoint under idle, slow and silent peers ---------------------------------------------

def thread_count(proxy) -> int:
    return len(os.listdir(f"/proc/{proxy.process.pid}/task"))


def open_idle(port: int, count: int, half_sent: int = 0) -> list:
    """`count` connections to the endpoint that send nothing, plus `half_sent` that send half a
    request line and stop."""
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count + half_sent)]
    for sock in sockets[count:]:
        sock.sendall(b"GET /heal")
    return sockets


def assert_all_paths_answer(port: int) -> None:
    assert get(port, "/healthz", timeout=5) == (200, "ok\n")
    assert get(port, "/readyz", timeout=5) == (200, "ok\n")
    status, body = get(port, "/metrics", timeout=5)
    assert status == 200 and "pgwire_proxy_build_info" in body


def closed_by_peer(sock: socket.socket, timeout: float = 10) -> bool:
    """Whether the endpoint closes `sock` within `timeout` (EOF or a reset)."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_idle_and_half_sent_connections_neither_stall_the_endpoint_nor_add_threads(pgwire_proxy_process_factory):
    proxy = pgwire_proxy_process_factory(metrics_address="127.0.0.1:0")
    port = metrics_port(proxy)
    assert_all_paths_answer(port)
    before = thread_count(proxy)
    idle = open_idle(port, 50, half_sent=10)
    try:
        assert_all_paths_answer(port)
        with_60 = thread_count(proxy)
        idle += open_idle(port, 100, half_sent=20)  # 180 in all: past the endpoint's limit of 64
        assert_all_paths_answer(port)
        with_180 = thread_count(proxy)
        assert before == with_60 == with_180
        # Nothing waits forever: the excess is closed at once, the rest at their request deadline.
        assert all(closed_by_peer(sock) for sock in idle)
        assert_all_paths_answer(port)
    finally:
        for sock in idle:
            sock.close()


def test_a_client_trickling_its_request_is_cut_off(pgwire_proxy_process_factory):
    """The deadline covers the whole request head, not each read: a byte now and then does not keep
    the connection."""
    proxy = pgwire_proxy_process_factory(metrics_address="127.0.0.1:0")
    port = metrics_port(proxy)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.settimeout(0.2)
        deadline = time.monotonic() + 15
        cut = False
        for byte in itertools.cycle(b"GET /healthz HTTP/1.1\r\nX-Slow: "):
            if time.monotonic() > deadline:
                break
            try:
                sock.send(bytes([byte]))
                if sock.recv(4096) == b"":
                    cut = True
                    break
            except socket.timeout:
                continue  # still open: one more byte
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
        assert cut, "the endpoint kept a trickling client for 15 s"
    assert_all_paths_answer(port)


def test_ready_goes_503_while_the_upstream_is_away_and_200_once_it_is_back(pgwire_proxy_process_factory,
                                                                           pg_upstream):
    relay = TcpRelay(pg_upstream.host, pg_upstream.port)
    relay_port = relay.port
    proxy = pgwire_proxy_process_factory(relay.dsn(pg_upstream), metrics_address="127.0.0.1:0")
    port = metrics_port(proxy)
    assert get(port, "/readyz") == (200, "ok\n")
    relay.close()  # connections to its port are refused now
    wait_until(lambda: get(port, "/readyz") == (503, "not ready: the upstream server is not reachable\n"),
               what="/readyz to go 503")
    assert get(port, "/healthz") == (200, "ok\n")
    with TcpRelay(pg_upstream.host, pg_upstream.port, port=relay_port):
        wait_until(lambda: get(port, "/readyz") == (200, "ok\n"), what="/readyz to come back")
        log = proxy.stderr_text()
        assert "event=upstream_unreachable" in log and "event=upstream_reachable" in log


def test_ready_answers_at_once_while_pings_hang_on_a_silent_upstream(pgwire_proxy_process_factory):
    """An upstream that accepts and never answers (a black hole for libpq): each ping takes its full
    2 s connect timeout, in the background; /readyz answers from the last result meanwhile."""
    silent = socket.create_server(("127.0.0.1", 0))
    held = []

    def accept_and_hold():
        while True:
            try:
                held.append(silent.accept()[0])
            except OSError:
                return

    accepting = threading.Thread(target=accept_and_hold, daemon=True)
    accepting.start()
    try:
        dsn = f"host=127.0.0.1 port={silent.getsockname()[1]} user=postgres dbname=postgres"
        proxy = pgwire_proxy_process_factory(dsn, metrics_address="127.0.0.1:0")
        port = metrics_port(proxy)
        pings_before = len(held)
        # For a little over one ping cycle (2 s ping + 1 s interval), every probe answers within 1 s:
        # less than one ping could take, so none waited on one.
        end = time.monotonic() + 3.5
        while time.monotonic() < end:
            assert get(port, "/readyz", timeout=1) == (503, "not ready: the upstream server is not reachable\n")
            assert get(port, "/healthz", timeout=1) == (200, "ok\n")
        assert len(held) > pings_before, "no ping reached the silent upstream while the probes ran"
    finally:
        silent.close()
        for sock in held:
            sock.close()
