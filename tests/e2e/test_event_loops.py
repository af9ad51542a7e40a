"""The event loops: one per CPU the proxy may run on (its affinity, as taskset or a container's cpuset
sets it, not the machine's CPU count), and with --pin-loops each loop on a CPU of its own. The proxy
runs as the binary, so its threads are read from /proc (each loop names its thread pgwire-loop-N)."""
import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

ALLOWED = sorted(os.sched_getaffinity(0))


def loop_tids(pid: int) -> dict:
    """{thread id: name} for each loop thread of the process."""
    loops = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as comm:
            name = comm.read().strip()
        if name.startswith("pgwire-loop-"):
            loops[int(tid)] = name
    return loops


def loop_threads(pid: int, skip=()) -> dict:
    """{name: the CPUs that thread may run on} for each loop thread of the process not in `skip`."""
    return {name: set(os.sched_getaffinity(tid)) for tid, name in loop_tids(pid).items() if tid not in skip}


@contextlib.contextmanager
def running_on(cpus):
    """The calling thread (and so a process it starts) may run only on `cpus` meanwhile."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def answers(proxy, clients: int = 8) -> list:
    """Each of `clients` concurrent connections runs a query; what each got back."""
    def one(i):
        with psycopg.connect(proxy.dsn, autocommit=True) as conn:
            return [conn.execute("SELECT %s::int * 2", (n,)).fetchone()[0] for n in range(i, i + 20)]
    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(clients)))


EXPECTED = [[2 * n for n in range(i, i + 20)] for i in range(8)]


def test_a_loop_per_cpu_the_proxy_may_use_none_pinned(pgwire_proxy_process_factory):
    proxy = pgwire_proxy_process_factory(protocol="full")
    loops = loop_threads(proxy.process.pid)
    assert sorted(loops) == [f"pgwire-loop-{i}" for i in range(len(ALLOWED))]
    assert all(cpus == set(ALLOWED) for cpus in loops.values()), loops  # the kernel places them
    assert answers(proxy) == EXPECTED


def test_a_proxy_started_on_one_cpu_runs_one_loop(pgwire_proxy_process_factory):
    # The loop count follows the affinity it was started with: with two CPUs allowed of several, two.
    with running_on({ALLOWED[-1]}):
        proxy = pgwire_proxy_process_factory(protocol="full")
    assert loop_threads(proxy.process.pid) == {"pgwire-loop-0": {ALLOWED[-1]}}
    assert answers(proxy) == EXPECTED
    if len(ALLOWED) >= 3:
        with running_on(set(ALLOWED[:2])):
            two = pgwire_proxy_process_factory(protocol="full")
        assert len(loop_threads(two.process.pid)) == 2


def test_pin_loops_puts_each_loop_on_a_cpu_of_its_own(pgwire_proxy_process_factory):
    proxy = pgwire_proxy_process_factory(protocol="full", pin_loops=True)
    pid = proxy.process.pid
    loops = loop_threads(pid)
    assert [loops[f"pgwire-loop-{i}"] for i in range(len(ALLOWED))] == [{cpu} for cpu in ALLOWED]
    assert set(os.sched_getaffinity(pid)) == set(ALLOWED)  # the main thread is not pinned
    assert "loops=%d pinned=true" % len(ALLOWED) in proxy.stderr_text()
    assert answers(proxy) == EXPECTED


@pytest.mark.skipif(len(ALLOWED) < 2, reason="needs two CPUs")
def test_pin_loops_within_a_restricted_set(pgwire_proxy_process_factory):
    with running_on({ALLOWED[-1]}):
        proxy = pgwire_proxy_process_factory(protocol="full", pin_loops=True)
    assert loop_threads(proxy.process.pid) == {"pgwire-loop-0": {ALLOWED[-1]}}
    assert answers(proxy) == EXPECTED


def test_the_python_module_pins_its_loops_in_this_process(pg_upstream):
    from pgwire_proxy import Proxy
    before = loop_tids(os.getpid())  # other in-process proxies' loops, if any
    with Proxy(pg_upstream.dsn, protocol="full", pin_loops=True) as proxy:
        added = loop_threads(os.getpid(), skip=before)
        assert [added[f"pgwire-loop-{i}"] for i in range(len(ALLOWED))] == [{cpu} for cpu in ALLOWED]
        assert set(os.sched_getaffinity(0)) == set(ALLOWED)  # the caller's thread is left alone
        assert answers(proxy) == EXPECTED
