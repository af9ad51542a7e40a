"""Several instances: --instance-id in the cancel keys, --peers forwarding a CancelRequest to the
instance that owns the key, once; through HAProxy in TCP round-robin when it is installed."""

from __future__ import annotations

import shutil
import signal
import socket
import struct
import subprocess
import threading

import psycopg
import pytest
from psycopg import errors

import wire
from pgwire_proxy.cluster import free_port
from support import cancel_counts, upstream_active, wait_until

FORWARDED_CANCEL_CODE = 80877114


def cancel_packet(pid: int, secret: int, code: int = wire.CANCEL_REQUEST_CODE) -> bytes:
    return struct.pack("!iiii", 16, code, pid, secret)


def send_cancel(port: int, packet: bytes) -> None:
    """Sends a cancel packet and waits for the proxy to close the connection (it answers nothing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(packet)
        assert sock.recv(1) == b""


def distinct_free_ports(count: int) -> list:
    """free_port() binds and closes: two calls can name the same port. These are all different."""
    ports: list = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@pytest.fixture
def instances(pgwire_proxy_process_factory):
    """Three instances (ids 0, 1, 2), each with the other two as peers and a metrics endpoint."""
    ports = distinct_free_ports(3)
    proxies = []
    for i, port in enumerate(ports):
        # The same list for all: each instance skips its own entry.
        peers = ",".join(f"{j}=127.0.0.1:{p}" for j, p in enumerate(ports))
        proxies.append(pgwire_proxy_process_factory(port=port, instance_id=i, peers=peers,
                                                    metrics_address="127.0.0.1:0"))
    return proxies


def running_session(proxy, probe: str):
    """A raw session on `proxy` running pg_sleep(60) tagged with `probe`; returns (conn, pid, secret)."""
    conn = wire.RawConnection(proxy.host, proxy.port, timeout=30)
    hello = conn.startup({"user": "postgres", "database": "postgres"})
    pid, secret = next(m.backend_key() for m in hello if m.kind == "K")
    conn.send(wire.query(f"select pg_sleep(60) /* {probe} */"))
    return conn, pid, secret


def test_keys_carry_the_instance_id(instances):
    for i, proxy in enumerate(instances):
        with wire.RawConnection(proxy.host, proxy.port) as conn:
            hello = conn.startup({"user": "postgres", "database": "postgres"})
            pid, _ = next(m.backend_key() for m in hello if m.kind == "K")
            assert pid >> 23 == i and pid & ((1 << 23) - 1) != 0


def test_a_cancel_landing_on_another_instance_reaches_the_owner(instances, pg_upstream):
    conn, pid, secret = running_session(instances[0], "peer_cancel_probe")
    with conn:
        wait_until(lambda: upstream_active(pg_upstream, "peer_cancel_probe"), what="the query to run")
        send_cancel(instances[2].port, cancel_packet(pid, secret))  # lands on instance 2
        reply = conn.read_until_ready()
        assert wire.errors_in(reply)[0]["C"] == "57014"


def test_a_forged_key_is_forwarded_and_dropped_by_the_owner(instances, pg_upstream):
    owner, other = instances[0], instances[1]
    conn, pid, secret = running_session(owner, "forged_probe")
    with conn:
        wait_until(lambda: upstream_active(pg_upstream, "forged_probe"), what="the query to run")
        owner_before, other_before = cancel_counts(owner), cancel_counts(other)

        # A forged secret, sent to instance 1: forwarded to the owner (counted before instance 1 closes
        # the connection), which must refuse it. The forwarder does not wait for the owner, so wait
        # for the owner's own count of it: only then is the owner's verdict in, and nothing else is
        # in flight that could stop the query.
        send_cancel(other.port, cancel_packet(pid, secret ^ 0x5A5A5A5A))
        assert delta(other_before, cancel_counts(other)) == {"peer": 1}
        owner_seen = wait_until(lambda: delta(owner_before, cancel_counts(owner)) or None,
                                what="the owner to handle the forwarded request")
        assert owner_seen == {"unmatched": 1}  # not "matched": the forged secret did not cancel
        assert upstream_active(pg_upstream, "forged_probe")

        # A request marked forwarded is never forwarded again, even with the real key and naming a
        # third instance: instance 1 drops it itself (counted before it closes the connection).
        send_cancel(other.port, cancel_packet(pid, secret, FORWARDED_CANCEL_CODE))
        assert delta(other_before, cancel_counts(other)) == {"peer": 1, "unmatched": 1}
        assert delta(owner_before, cancel_counts(owner)) == {"unmatched": 1}
        assert upstream_active(pg_upstream, "forged_probe")  # the query keeps running

        # The real key, to the owner itself: now it is cancelled.
        send_cancel(owner.port, cancel_packet(pid, secret))
        error = wire.errors_in(conn.read_until_ready())[0]
        assert error["C"] == "57014" and error["M"] == "canceling statement due to user request"
        assert delta(owner_before, cancel_counts(owner)) == {"unmatched": 1, "matched": 1}


def delta(before: dict, after: dict) -> dict:
    """The cancel counts that changed between two cancel_counts() readings."""
    return {result: after[result] - before.get(result, 0) for result in after if after[result] != before.get(result, 0)}


def test_a_peer_that_is_down_does_not_hang_the_forwarder(pgwire_proxy_process_factory):
    dead = free_port()
    proxy = pgwire_proxy_process_factory(instance_id=1, peers=f"0=127.0.0.1:{dead},7=127.0.0.1:{free_port()}")
    send_cancel(proxy.port, cancel_packet((0 << 23) | 5, 1234))   # peer 0 refuses the connection
    send_cancel(proxy.port, cancel_packet((9 << 23) | 5, 1234))   # instance 9 is unknown: dropped
    with psycopg.connect(proxy.dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        assert conn.execute("select 'still serving'").fetchone() == ("still serving",)


@pytest.mark.parametrize("peers, message", [
    ("1=127.0.0.1", "expected ID=HOST:PORT"),
    ("300=127.0.0.1:5432", "peers"),
])
def test_bad_peer_lists_are_refused(pgwire_proxy_process_factory, peers, message):
    with pytest.raises(RuntimeError, match=message):
        pgwire_proxy_process_factory(instance_id=0, peers=peers)


# ---- through HAProxy --------------------------------------------------------------------------------

@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (scripts/install-deps.sh installs it)")
def test_hundred_cancels_through_a_round_robin_balancer(instances, tmp_path, pg_upstream):
    port = free_port()
    servers = "\n".join(f"    server i{i} 127.0.0.1:{p.port}" for i, p in enumerate(instances))
    config = tmp_path / "haproxy.cfg"
    config.write_text(f"""global
    maxconn 512
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen pg
    bind 127.0.0.1:{port}
    balance roundrobin
{servers}
""")
    balancer = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
    try:
        dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
        wait_until(lambda: _connects(dsn), what="haproxy to listen")
        for i in range(100):
            with psycopg.connect(dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
                pid = conn.info.backend_pid  # the proxy's key pid: which instance owns the session
                assert 0 <= pid >> 23 <= 2

                def cancel_when_running(probe=f"lb_probe_{i} "):
                    wait_until(lambda: upstream_active(pg_upstream, probe), what="the query to run")
                    conn.cancel()  # a new connection through the balancer: any instance

                thread = threading.Thread(target=cancel_when_running)
                thread.start()
                with pytest.raises(errors.QueryCanceled):
                    conn.execute(f"select pg_sleep(60) /* lb_probe_{i} */")  # probe: "lb_probe_7 " not "_70"
                thread.join()
    finally:
        balancer.terminate()
        balancer.wait(timeout=10)


def _connects(dsn: str) -> bool:
    try:
        psycopg.connect(dsn, connect_timeout=2).close()
        return True
    except psycopg.OperationalError:
        return False


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (scripts/install-deps.sh installs it)")
def test_a_draining_instance_gets_no_new_clients_while_its_query_finishes(pgwire_proxy_process_factory,
                                                                          tmp_path, pg_upstream):
    ports, metrics = (lambda p: (p[:2], p[2:]))(distinct_free_ports(4))
    peers = ",".join(f"{i}=127.0.0.1:{p}" for i, p in enumerate(ports))
    proxies = [pgwire_proxy_process_factory(port=ports[i], instance_id=i, peers=peers, shutdown_timeout="60s",
                                            metrics_address=f"127.0.0.1:{metrics[i]}") for i in range(2)]
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(f"""global
    maxconn 256
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
listen pg
    bind 127.0.0.1:{port}
    balance roundrobin
    option httpchk GET /readyz
    retries 2
    option redispatch
    default-server inter 200ms fall 1 rise 1
    server i0 127.0.0.1:{ports[0]} check port {metrics[0]}
    server i1 127.0.0.1:{ports[1]} check port {metrics[1]}
""")
    balancer = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    holder = pg_upstream.connect()
    try:
        wait_until(lambda: _connects(dsn), what="haproxy to listen")
        holder.execute("select pg_advisory_lock(5151)")
        # A session on instance 0, its query waiting for the lock: the drain lasts until released.
        busy = psycopg.connect(proxies[0].dsn, autocommit=True, cursor_factory=psycopg.ClientCursor)
        result = {}
        query = threading.Thread(target=lambda: result.update(
            rows=busy.execute("select pg_advisory_lock(5151), 'lb_drain_probe'").fetchall()))
        query.start()
        wait_until(lambda: upstream_active(pg_upstream, "lb_drain_probe"), what="the query to run")
        proxies[0].process.send_signal(signal.SIGTERM)

        def instances_of_new_clients():
            owners = set()
            for _ in range(6):
                try:
                    with psycopg.connect(dsn, autocommit=True) as conn:
                        owners.add(conn.info.backend_pid >> 23)
                except psycopg.OperationalError:
                    # Until the balancer's next check a client may still reach the stopping instance
                    # and be refused (57P01): the window a health-check interval leaves open.
                    return None
            return owners

        # Once the balancer has seen /readyz go 503, every new client lands on instance 1.
        wait_until(lambda: instances_of_new_clients() == {1}, what="haproxy to route around instance 0")
        assert upstream_active(pg_upstream, "lb_drain_probe")  # instance 0's query still runs
        holder.execute("select pg_advisory_unlock(5151)")
        query.join()
        assert result["rows"][0][1] == "lb_drain_probe"
        busy.close()
    finally:
        holder.close()
        balancer.terminate()
        balancer.wait(timeout=10)


def test_peers_are_reloaded_on_sighup(pgwire_proxy_process_factory, pg_upstream, tmp_path):
    owner = pgwire_proxy_process_factory(instance_id=0)
    config = tmp_path / "proxy.conf"
    config.write_text("instance-id = 1\n")
    other = pgwire_proxy_process_factory(config=str(config))
    conn, pid, secret = running_session(owner, "reload_peers_probe")
    with conn:
        wait_until(lambda: upstream_active(pg_upstream, "reload_peers_probe"), what="the query to run")
        send_cancel(other.port, cancel_packet(pid, secret))  # instance 1 does not know instance 0 yet
        assert upstream_active(pg_upstream, "reload_peers_probe")
        config.write_text(f"instance-id = 1\npeers = 0=127.0.0.1:{owner.port}\n")
        other.process.send_signal(signal.SIGHUP)

        def cancelled():
            send_cancel(other.port, cancel_packet(pid, secret))
            return not upstream_active(pg_upstream, "reload_peers_probe")

        wait_until(cancelled, what="the reloaded peer list to route the cancel")
        assert wire.errors_in(conn.read_until_ready())[0]["C"] == "57014"
