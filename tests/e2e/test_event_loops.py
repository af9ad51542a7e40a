"""The event loops: one per CPU the proxy may run on (its affinity, as taskset or a container's cpuset
sets it, not the machine's CPU count) and no more than a cgroup CPU quota pays for, and with --pin-loops each loop on a CPU of its own. The proxy
runs as the binary, so its threads are read from /proc (each loop names its thread pgwire-loop-N)."""
import contextlib
import os
import threading
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


def cpu_cgroup_parent():
    """A cgroup directory with the cpu controller that this process may make children in, and
    whether it is cgroup v2; None where there is none (not root, no cpu controller)."""
    with open("/proc/self/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        dash = fields.index("-")
        fstype, options = fields[dash + 1], fields[dash + 3].split(",")
        if fstype == "cgroup" and "cpu" in options:
            path = next((p for _, ctl, p in lines if "cpu" in ctl.split(",")), None)
            v2 = False
        elif fstype == "cgroup2":
            path = next((p for hid, ctl, p in lines if hid == "0" and ctl == ""), None)
            v2 = True
        else:
            continue
        if path is None or fields[3] != "/":
            continue
        parent = os.path.join(fields[4], path.lstrip("/"))
        controllers = os.path.join(parent, "cgroup.subtree_control")
        if v2 and not (os.path.exists(controllers) and "cpu" in open(controllers).read().split()):
            continue
        if os.access(parent, os.W_OK):
            return parent, v2
    return None


@pytest.fixture
def cpu_quota():
    """cpu_quota(quota_us, period_us=100000): a context in which the calling thread (cgroup v1) or
    process (v2) is in a child cgroup limited to quota/period CPUs, so a process started there runs
    under that quota. The cgroups are removed after the test's proxies have stopped (a fixture
    requested before the proxy factory is torn down after it)."""
    found = cpu_cgroup_parent()
    if found is None:
        pytest.skip("no writable cgroup with the cpu controller here (needs root)")
    parent, v2 = found
    children = []

    @contextlib.contextmanager
    def limited(quota_us: int, period_us: int = 100000):
        child = os.path.join(parent, f"pgwire-e2e-{os.getpid()}-{len(children)}")
        os.mkdir(child)
        children.append(child)
        if v2:
            limits = {"cpu.max": f"{quota_us} {period_us}"}
        else:
            limits = {"cpu.cfs_period_us": str(period_us), "cpu.cfs_quota_us": str(quota_us)}
        for name, value in limits.items():
            with open(os.path.join(child, name), "w") as f:
                f.write(value)
        mover = "cgroup.procs" if v2 else "tasks"
        me = str(os.getpid() if v2 else threading.get_native_id())
        with open(os.path.join(child, mover), "w") as f:
            f.write(me)
        try:
            yield
        finally:
            with open(os.path.join(parent, mover), "w") as f:
                f.write(me)

    yield limited
    for child in children:
        with contextlib.suppress(OSError):
            os.rmdir(child)


def test_a_cpu_quota_bounds_the_loops(cpu_quota, pgwire_proxy_process_factory):
    # docker --cpus=1 on a machine of several CPUs: one loop, not one per CPU it may run on.
    with cpu_quota(100000):
        proxy = pgwire_proxy_process_factory(protocol="full")
    with open(f"/proc/{proxy.process.pid}/cgroup") as f:
        assert "pgwire-e2e-" in f.read()  # it did start in the limited cgroup
    assert sorted(loop_threads(proxy.process.pid)) == ["pgwire-loop-0"]
    assert "loops=1 " in proxy.stderr_text() and "cpu_quota=1 " in proxy.stderr_text()
    assert answers(proxy) == EXPECTED
    # 1.5 CPUs' worth: two loops where two CPUs are allowed.
    if len(ALLOWED) >= 2:
        with cpu_quota(150000):
            more = pgwire_proxy_process_factory(protocol="full")
        assert len(loop_threads(more.process.pid)) == 2
        assert "cpu_quota=1.5" in more.stderr_text()
    # Without one, the log says so (and the loops follow the CPUs, as above).
    assert "cpu_quota=none" in pgwire_proxy_process_factory(protocol="full").stderr_text()
