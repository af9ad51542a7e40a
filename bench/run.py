#!/usr/bin/python3
"""pgwire-proxy benchmark: direct PostgreSQL vs. PgBouncer (session mode) vs. the proxy, side by side.

    /usr/bin/python3 bench/run.py [--quick] [--rounds N] [--duration S] [--binary PATH] [--json out.json]
                                  [--chart out.png|none] [--copy-rows N] [--copy-lines N] [--silent-sockets N]
                                  [--samples N]

Starts a throwaway PostgreSQL (initdb in a temp dir), a PgBouncer in session mode and the proxy (a release
build made into build-bench/ unless --binary is given), all on 127.0.0.1, then measures in interleaved
rounds (the three targets one after another, the starting target rotating each round):

  * `pgbench -M simple -S` at 1, 16 and 64 clients, and bench/write.sql (short write transactions);
  * `pgbench -M extended -S` and `-M prepared -S` at 16 clients (the proxy runs --protocol=full);
    when the binary's --help lists --pin-loops, these and the select-only runs of more than one
    client also run against a second proxy with that option (rows "the same, proxy --pin-loops");
    for every pgbench run also the CPU per transaction of PgBouncer or the proxy (utime+stime of the
    process over the run, /proc/PID/stat) and of all the benchmark's processes together;
  * a connection storm, `pgbench -C -S` (a new connection per transaction) at 16 clients, as connections
    per second; and, when the binary's --help lists --reuse-upstream, a second proxy with that option;
  * a large result (2,000,000 rows of ~110 bytes) read by a raw-socket client that discards it: wall
    time, and the CPU time PgBouncer and the proxy spent on it (/proc/PID/stat), and the proxy's RSS
    during it (VmHWM after clear_refs, plus VmRSS samples) against its RSS just before;
  * COPY (select g, repeat('x', 40) ... --copy-rows, default 1,000,000) TO STDOUT, read by the same
    raw-socket client, and the same rows COPY FROM STDIN into an unlogged table (truncated directly
    before every run) by psycopg in 64 kB writes: wall time, and the CPU of PgBouncer or the proxy;
  * the first --copy-lines (default 200,000) of those rows COPY FROM STDIN again, one psycopg write and
    so one CopyData message per line (as DBD::Pg's pg_putcopydata, ruby-pg's put_copy_data and
    pg-copy-streams send a row each): the middle's cost per message, not per byte;
  * the large result and each COPY take well under a second, so they run --samples times a round
    (default 3; quick 1), each sample the three targets back to back (the first rotating with the
    sample): a ratio is the median over every sample of every round, not over two or three single runs;
  * --silent-sockets (default 1000) TCP connections that never send a byte, on a freshly started
    PgBouncer and proxy each round: the RSS they add and the threads before and with them;
  * once, on freshly started processes: the RSS that N idle clients (default 200) add to the proxy and
    to PgBouncer.

Prints a table of medians with the ratios proxy/direct and proxy/PgBouncer (medians of the per-round
ratios, per sample for the stream and COPY) and the targets of issues 8 and 20 (COPY within 1.05x
direct; silent sockets: proxy RSS growth <= 32 MB and no threads added), writes everything as JSON
with --json, and a chart (TPS and CPU per transaction by client count; matplotlib) with --chart, by
default in full runs only. Progress goes to stderr, the table to stdout. Each run also records how much CPU other processes on the machine took meanwhile
(and the hypervisor's steal time); a run disturbed by more than --max-foreign is repeated up to
--retries times and the least disturbed attempt counts.
Everything started here is stopped on exit, also on Ctrl+C, SIGTERM or an error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import pwd
import re
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "python"))

from pgwire_proxy.cluster import ThrowawayPostgres, find_pg_bindir, free_port  # noqa: E402
from pgwire_proxy.process import ProxyProcess  # noqa: E402

TARGETS = ("direct", "pgbouncer", "proxy")
REUSE_FLAG = "--reuse-upstream"  # issue 20's opt-in upstream reuse; run only when the binary has it
REUSE_TARGET = "proxy-reuse"
PIN_FLAG = "--pin-loops"  # each event-loop thread on a CPU of its own; run only when the binary has it
PIN_TARGET = "proxy-pinned"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SERVICE_USER = "postgres"  # PostgreSQL and PgBouncer refuse to run as root
WRITE_SCRIPT = REPO / "bench" / "write.sql"
STREAM_SQL = "select g, repeat('x', 100) from generate_series(1, {rows}) g"
COPY_OUT_SQL = "copy (select g, repeat('x', 40) from generate_series(1, {rows}) g) to stdout"
COPY_TABLE = "bench_copy"  # unlogged, created once directly, truncated directly before every COPY FROM
COPY_IN_SQL = f"copy {COPY_TABLE} (g, x) from stdin"
COPY_BLOCK = 64 * 1024  # bytes per write: the client's cost per row stays out of the wall time


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def client_env() -> Dict[str, str]:
    """Our environment without PG* variables (a PGHOST or PGOPTIONS must not redirect the clients)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.setdefault("LC_ALL", "C")
    return env


# ---- /proc ---------------------------------------------------------------------------------------

def _stat_fields(pid: int) -> List[str]:
    """The fields of /proc/PID/stat after the command name (field 3, state, is [0])."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_times(pid: int) -> Dict[str, float]:
    """utime and stime of the whole process (all threads, live and exited), in seconds: the one place
    that reads a process's CPU (run.py's CPU per transaction and per byte, profile.py's user/sys split)."""
    fields = _stat_fields(pid)
    return {"user": int(fields[11]) / CLK_TCK, "sys": int(fields[12]) / CLK_TCK}


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all threads), in seconds."""
    times = cpu_times(pid)
    return times["user"] + times["sys"]


def memory_kb(pid: int) -> Dict[str, int]:
    """VmRSS and VmHWM of a process, in kB."""
    result: Dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                name, value = line.split(":", 1)
                result[name] = int(value.split()[0])
    return result


def thread_count(pid: int) -> int:
    """Threads: of /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split(":", 1)[1])
    raise RuntimeError(f"no Threads: in /proc/{pid}/status")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0; needs the right to write clear_refs)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class CpuMeter:
    """How much CPU other processes on the machine used while we measured.

    busy = user+nice+system+irq+softirq of all CPUs (/proc/stat); ours = this process and its reaped
    children (pgbench), the postmaster with everything it forked (live ones and, through cutime/cstime,
    the exited ones), PgBouncer and the proxy. foreign share = (busy - ours) / (wall x CPUs). Tick-based,
    so a few percent either way; a share well above that means the numbers of that run are disturbed.
    The hypervisor's steal time is reported too (other virtual machines on the same host).
    """

    def __init__(self, roots: Callable[[], List[int]]):
        self.roots = roots

    @staticmethod
    def _busy_and_steal() -> Tuple[float, float]:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
        return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK

    def _scan(self) -> Tuple[float, frozenset]:
        """CPU seconds of our processes, and the PIDs of the roots' live children."""
        import resource
        total = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            total += usage.ru_utime + usage.ru_stime
        roots = set(self.roots())
        children = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                pid = int(entry)
                fields = _stat_fields(pid)
                own, reaped = int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14])
                if pid in roots:  # own time, and that of its exited (reaped) children
                    total += (own + reaped) / CLK_TCK
                elif int(fields[1]) in roots:  # live children of a root: PostgreSQL backends
                    total += own / CLK_TCK
                    children.add(pid)
        return total, frozenset(children)

    def _settle(self, timeout: float = 2.0) -> None:
        """Wait until no root gains or loses children for a moment: a backend exiting while /proc is
        scanned would be counted twice or not at all (its time moves into the postmaster's cstime)."""
        deadline = time.monotonic() + timeout
        previous = self._scan()[1]
        stable = 0
        while stable < 2 and time.monotonic() < deadline:
            time.sleep(0.03)
            current = self._scan()[1]
            stable = stable + 1 if current == previous else 0
            previous = current

    def snapshot(self) -> Tuple[float, float, float, float]:
        self._settle()
        busy, steal = self._busy_and_steal()
        return time.monotonic(), busy, self._scan()[0], steal

    def shares(self, before: Tuple[float, float, float, float]) -> Tuple[float, float, float]:
        """(foreign, steal, ours) since `before`: foreign and steal as shares of all CPUs (steal is time
        the hypervisor gave to other guests while this one wanted to run), ours in CPU seconds (what all
        of the benchmark's processes used: a cost per transaction that other load does not inflate)."""
        wall, busy, ours, steal = (a - b for a, b in zip(self.snapshot(), before))
        capacity = wall * (os.cpu_count() or 1)
        if capacity <= 0:
            return 0.0, 0.0, max(0.0, ours)
        return max(0.0, busy - ours) / capacity, max(0.0, steal) / capacity, max(0.0, ours)


class RssSampler:
    """Samples VmRSS of a process every few milliseconds on a thread; .peak_kb is the largest seen."""

    def __init__(self, pid: int, interval: float = 0.005):
        self.pid = pid
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak_kb = max(self.peak_kb, memory_kb(self.pid).get("VmRSS", 0))
            except OSError:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> "RssSampler":
        self.peak_kb = memory_kb(self.pid).get("VmRSS", 0)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kb = max(self.peak_kb, memory_kb(self.pid).get("VmRSS", 0))


# ---- a minimal frontend: startup, one simple Query, nothing kept ----------------------------------

class WireClient:
    """A raw protocol-3.0 connection (trust auth). Costs next to no CPU, so the servers are what is timed."""

    def __init__(self, host: str, port: int, user: str = "postgres", dbname: str = "postgres",
                 timeout: float = 60.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            params = b"".join(k + b"\0" + v + b"\0" for k, v in (
                (b"user", user.encode()), (b"database", dbname.encode()),
                (b"application_name", b"pgwire-proxy-bench"))) + b"\0"
            body = struct.pack("!I", 196608) + params
            self.sock.sendall(struct.pack("!I", len(body) + 4) + body)
            self._await_ready()
        except BaseException:
            self.sock.close()
            raise

    def _recv_exact(self, n: int) -> bytes:
        chunks = []
        while n > 0:
            chunk = self.sock.recv(n)
            if not chunk:
                raise ConnectionError("server closed the connection")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def _await_ready(self) -> None:
        while True:
            header = self._recv_exact(5)
            kind, length = header[:1], struct.unpack("!I", header[1:])[0]
            body = self._recv_exact(length - 4)
            if kind == b"E":
                fields = dict((f[:1], f[1:].decode(errors="replace")) for f in body.split(b"\0") if f)
                raise ConnectionError(f"server error {fields.get(b'C')}: {fields.get(b'M')}")
            if kind == b"R" and struct.unpack("!I", body[:4])[0] != 0:
                raise ConnectionError("the server asks for a password; the benchmark expects trust auth")
            if kind == b"Z":
                return

    def stream(self, sql: str, expected_tag: str) -> Tuple[int, float]:
        """Run one statement, read and discard its result; returns (bytes received, seconds)."""
        payload = sql.encode() + b"\0"
        message = b"Q" + struct.pack("!I", len(payload) + 4) + payload
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        total = 0
        tail = b""
        started = time.perf_counter()
        self.sock.sendall(message)
        while True:
            n = self.sock.recv_into(buffer)
            if n == 0:
                raise ConnectionError("server closed the connection during the stream")
            total += n
            tail = (tail + bytes(view[max(0, n - 128):n]))[-128:]
            # The result ends with ReadyForQuery; our rows (digits and 'x') never contain these bytes.
            if len(tail) >= 6 and tail[-6:-1] == b"Z\0\0\0\x05":
                break
        elapsed = time.perf_counter() - started
        if expected_tag.encode() + b"\0" not in tail:
            raise RuntimeError(f"the stream did not end with {expected_tag!r}: {tail!r}")
        return total, elapsed

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"X\0\0\0\x04")
        self.sock.close()


# ---- PgBouncer -----------------------------------------------------------------------------------

class PgBouncer:
    """PgBouncer from the Debian package, session mode, trust auth, in a temp dir; runs as `postgres`."""

    def __init__(self, upstream_host: str, upstream_port: int, *, max_client_conn: int, pool_size: int,
                 binary: str = "/usr/sbin/pgbouncer"):
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.max_client_conn = max_client_conn
        self.pool_size = pool_size
        self.binary = shutil.which("pgbouncer") or binary
        self.host = "127.0.0.1"
        self.port = 0
        self.process: Optional[subprocess.Popen] = None
        self.dir: Optional[Path] = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True)
        return out.stdout.splitlines()[0].strip() if out.stdout else "unknown"

    def start(self) -> "PgBouncer":
        if not Path(self.binary).is_file():
            raise RuntimeError(f"pgbouncer not found at {self.binary}; install the Debian package pgbouncer")
        self.dir = Path(tempfile.mkdtemp(prefix="pgwire-proxy-bench-pgbouncer-"))
        owner = pwd.getpwnam(SERVICE_USER) if os.geteuid() == 0 else None
        if owner is not None:
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
        (self.dir / "userlist.txt").write_text('"postgres" ""\n')
        last_error = ""
        for _ in range(5):
            self.port = free_port(self.host)
            ini = self.dir / "pgbouncer.ini"
            ini.write_text(f"""\
[databases]
postgres = host={self.upstream_host} port={self.upstream_port} dbname=postgres user=postgres

[pgbouncer]
listen_addr = {self.host}
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.dir}/userlist.txt
pool_mode = session
max_client_conn = {self.max_client_conn}
default_pool_size = {self.pool_size}
max_db_connections = 0
ignore_startup_parameters = extra_float_digits
logfile = {self.dir}/pgbouncer.log
pidfile = {self.dir}/pgbouncer.pid
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
""")
            popen: Dict[str, object] = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, cwd=str(self.dir),
                                            start_new_session=True, env=client_env())
            if owner is not None:
                popen.update(user=owner.pw_uid, group=owner.pw_gid, extra_groups=[])
            self.process = subprocess.Popen([self.binary, str(ini)], **popen)  # type: ignore[arg-type]
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.process.poll() is None:
                try:
                    WireClient(self.host, self.port, timeout=5).close()
                    return self
                except OSError:
                    time.sleep(0.05)
            last_error = self.log_tail()
            self.stop()
        raise RuntimeError(f"PgBouncer did not start:\n{last_error}")

    def log_tail(self, lines: int = 20) -> str:
        if self.dir is None:
            return ""
        try:
            return "\n".join((self.dir / "pgbouncer.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)  # immediate shutdown
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None

    def cleanup(self) -> None:
        self.stop()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


# ---- building the proxy ---------------------------------------------------------------------------

def build_proxy(build_dir: Path) -> Path:
    """A release build of the binary only (no tests, no Python module) in a build dir of its own."""
    def run(argv: List[str]) -> None:
        log("$ " + " ".join(argv))
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=str(REPO))
        if proc.returncode != 0:
            raise RuntimeError(f"build failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}")

    if not (build_dir / "CMakeCache.txt").exists():
        run(["cmake", "-S", str(REPO), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
             "-DPGWIRE_PROXY_TESTS=OFF", "-DPGWIRE_PROXY_PYTHON=OFF", f"-DPython_EXECUTABLE={sys.executable}"])
    run(["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2), "--target", "pgwire-proxy"])
    return build_dir / "pgwire-proxy"


def supports_option(binary: Path, flag: str) -> bool:
    """Whether the binary's --help lists `flag` (as `--flag`, `--flag=...` or `--flag value`)."""
    try:
        out = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return re.search(rf"(?:^|\s){re.escape(flag)}(?:[=\s\[]|$)", out.stdout + out.stderr, re.M) is not None


# ---- measurements ----------------------------------------------------------------------------------

_TPS = re.compile(r"^tps = ([0-9.]+) \((?:without initial connection time|including reconnection times)\)", re.M)
_TXNS = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)


def pgbench_run(bindir: Path, host: str, port: int, *, clients: int, duration: int, scale: int,
                script: Optional[Path], mode: str = "simple", connect: bool = False) -> Dict[str, float]:
    """One pgbench run (-M mode; select-only when script is None; -C, a new connection per transaction,
    when connect): {"tps", "transactions", "seconds" (wall time of the pgbench process)}. With -C,
    pgbench prints "tps = ... (including reconnection times)": connections per second."""
    argv = [str(bindir / "pgbench"), "-h", host, "-p", str(port), "-U", "postgres", "-n", "-M", mode,
            "-c", str(clients), "-j", str(min(clients, os.cpu_count() or 2)), "-T", str(duration)]
    argv += ["-C"] if connect else []
    argv += ["-S"] if script is None else ["-f", str(script), "-s", str(scale)]
    argv.append("postgres")
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120, env=client_env(),
                          start_new_session=True)
    seconds = time.perf_counter() - started
    match, txns = _TPS.search(proc.stdout), _TXNS.search(proc.stdout)
    failed = _FAILED.search(proc.stdout)
    if proc.returncode != 0 or match is None or txns is None or (failed and int(failed.group(1)) > 0):
        raise RuntimeError(f"pgbench failed (exit {proc.returncode}): {' '.join(argv)}\n"
                           f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return {"tps": float(match.group(1)), "transactions": int(txns.group(1)), "seconds": seconds}


def pgbench(bindir: Path, host: str, port: int, *, clients: int, duration: int, scale: int,
            script: Optional[Path], mode: str = "simple") -> float:
    """TPS of one pgbench run (-M mode; select-only when script is None)."""
    return pgbench_run(bindir, host, port, clients=clients, duration=duration, scale=scale, script=script,
                       mode=mode)["tps"]


def pgbench_with_cpu(bindir: Path, host: str, port: int, middle_pid: Optional[int], **kwargs: object) -> dict:
    """pgbench_run() plus the middle process's (PgBouncer's or the proxy's; none for direct) CPU over the
    run, utime+stime of all its threads from /proc/PID/stat, in total and in µs per transaction."""
    cpu0 = cpu_seconds(middle_pid) if middle_pid else None
    result = pgbench_run(bindir, host, port, **kwargs)  # type: ignore[arg-type]
    if middle_pid and cpu0 is not None:
        cpu = cpu_seconds(middle_pid) - cpu0
        result["middle_cpu_s"] = cpu
        result["middle_cpu_us_per_txn"] = cpu * 1e6 / max(1, result["transactions"])
    return result


class MiddleWatch:
    """CPU and RSS of the processes in `watch` (PgBouncer or the proxy) over one measured transfer."""

    def __init__(self, watch: Dict[str, int]):
        self.watch = watch
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "MiddleWatch":
        self.cpu_before = {name: cpu_seconds(pid) for name, pid in self.watch.items()}
        self.rss_before = {name: memory_kb(pid)["VmRSS"] for name, pid in self.watch.items()}
        self.hwm_reset = {name: reset_peak_rss(pid) for name, pid in self.watch.items()}
        self.samplers = {name: self._stack.enter_context(RssSampler(pid)) for name, pid in self.watch.items()}
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def results(self, nbytes: int) -> Dict[str, float]:
        result: Dict[str, float] = {}
        for name, pid in self.watch.items():
            cpu = cpu_seconds(pid) - self.cpu_before[name]
            peak = self.samplers[name].peak_kb
            if self.hwm_reset[name]:
                peak = max(peak, memory_kb(pid)["VmHWM"])
            result[f"{name}_cpu_s"] = cpu
            result[f"{name}_cpu_ns_per_byte"] = cpu * 1e9 / nbytes
            result[f"{name}_rss_before_mb"] = self.rss_before[name] / 1024
            result[f"{name}_rss_peak_mb"] = peak / 1024
            result[f"{name}_rss_growth_mb"] = (peak - self.rss_before[name]) / 1024
        return result


def read_once(host: str, port: int, sql: str, tag: str, watch: Dict[str, int]) -> Dict[str, float]:
    """One statement through one target, its output read and discarded by the raw-socket client,
    with the CPU and RSS of the processes in `watch`."""
    client = WireClient(host, port)
    try:
        client.stream("select 1", "SELECT 1")  # the session is up and warm
        with MiddleWatch(watch) as middle:
            nbytes, seconds = client.stream(sql, tag)
        return dict(bytes=nbytes, seconds=seconds, mb_per_s=nbytes / seconds / 1e6, **middle.results(nbytes))
    finally:
        client.close()


def stream_once(host: str, port: int, rows: int, watch: Dict[str, int]) -> Dict[str, float]:
    """One large result through one target."""
    return read_once(host, port, STREAM_SQL.format(rows=rows), f"SELECT {rows}", watch)


def copy_out_once(host: str, port: int, rows: int, watch: Dict[str, int]) -> Dict[str, float]:
    """COPY ... TO STDOUT through one target. The raw-socket client reads it: psycopg's copy reads
    one CopyData message (one row) per call, and in the pure-Python libpq binding Debian ships that
    costs the client more than the servers, which would flatten every ratio to 1."""
    return read_once(host, port, COPY_OUT_SQL.format(rows=rows), f"COPY {rows}", watch)


def copy_rows_text(rows: int) -> bytes:
    """The COPY FROM input: the rows COPY_OUT_SQL produces, in COPY's text format."""
    tail = "\t" + "x" * 40 + "\n"
    return "".join(f"{g}{tail}" for g in range(1, rows + 1)).encode()


def copy_blocks(data: bytes) -> List[memoryview]:
    """`data` in COPY_BLOCK pieces, one CopyData each."""
    view = memoryview(data)
    return [view[offset:offset + COPY_BLOCK] for offset in range(0, len(view), COPY_BLOCK)]


def copy_in_once(host: str, port: int, pieces: Sequence[Union[bytes, memoryview]], rows: int,
                 watch: Dict[str, int], truncate: Callable[[], None]) -> Dict[str, float]:
    """COPY ... FROM STDIN of `pieces` (`rows` rows) through one target with psycopg, one write and so
    one CopyData per piece (psycopg's write() does not buffer); the table is truncated first (directly,
    by `truncate`), so every target inserts into an empty table. Wall time runs from sending the COPY
    to its CommandComplete."""
    import psycopg  # here, not at the top: bench/profile.py imports this module without needing it

    truncate()
    nbytes = sum(len(piece) for piece in pieces)
    with psycopg.connect(host=host, port=port, user="postgres", dbname="postgres", autocommit=True,
                         application_name="pgwire-proxy-bench", connect_timeout=60) as conn:
        conn.execute("select 1")  # the session is up and warm
        with conn.cursor() as cur, MiddleWatch(watch) as middle:
            started = time.perf_counter()
            with cur.copy(COPY_IN_SQL) as copy:
                for piece in pieces:
                    copy.write(piece)
            seconds = time.perf_counter() - started
            if cur.rowcount not in (-1, rows):
                raise RuntimeError(f"COPY FROM STDIN stored {cur.rowcount} rows, not {rows}")
        return dict(bytes=nbytes, seconds=seconds, mb_per_s=nbytes / seconds / 1e6, **middle.results(nbytes))


def idle_clients_rss(host: str, port: int, pid: int, count: int) -> Dict[str, float]:
    """RSS of process `pid` before and with `count` idle client sessions open through it."""
    before = memory_kb(pid)["VmRSS"]
    clients: List[WireClient] = []
    try:
        started = time.perf_counter()
        for _ in range(count):
            clients.append(WireClient(host, port))
        connect_seconds = time.perf_counter() - started
        time.sleep(1.0)
        with_clients = memory_kb(pid)["VmRSS"]
    finally:
        for c in clients:
            c.close()
    return {"clients": count, "rss_before_mb": before / 1024, "rss_with_clients_mb": with_clients / 1024,
            "growth_mb": (with_clients - before) / 1024, "per_client_kb": (with_clients - before) / count,
            "connect_seconds": connect_seconds}


def silent_sockets(host: str, port: int, pid: int, count: int, settle: float = 1.0,
                   accept_wait: float = 5.0) -> Dict[str, float]:
    """What `count` TCP connections that never send a byte (no SSLRequest, no startup packet) cost
    process `pid`: its VmRSS, threads and open descriptors before and with them open. Measured `settle`
    s after the process holds a descriptor for each (the kernel completes the handshakes before the
    process accepts them; at most `accept_wait` s for that). `answered` counts the sockets the server
    wrote to or closed meanwhile (a startup timeout would show there)."""
    before = {"rss": memory_kb(pid)["VmRSS"], "threads": thread_count(pid), "fds": open_fds(pid)}
    sockets: List[socket.socket] = []
    try:
        started = time.perf_counter()
        for _ in range(count):
            sockets.append(socket.create_connection((host, port), timeout=10))
        connect_seconds = time.perf_counter() - started
        deadline = time.perf_counter() + accept_wait
        while open_fds(pid) < before["fds"] + count and time.perf_counter() < deadline:
            time.sleep(0.02)
        accept_seconds = time.perf_counter() - started
        time.sleep(settle)
        held = {"rss": memory_kb(pid)["VmRSS"], "threads": thread_count(pid), "fds": open_fds(pid)}
        held_seconds = time.perf_counter() - started
        answered = 0
        for s in sockets:
            s.setblocking(False)  # with a timeout, recv would first wait for input
            try:
                s.recv(1, socket.MSG_PEEK)
                answered += 1  # data or EOF
            except BlockingIOError:
                pass
            except OSError:
                answered += 1  # reset
    finally:
        for s in sockets:
            s.close()
    growth = held["rss"] - before["rss"]
    return {"sockets": count, "rss_before_mb": before["rss"] / 1024, "rss_with_sockets_mb": held["rss"] / 1024,
            "growth_mb": growth / 1024, "per_socket_kb": growth / count,
            "threads_before": before["threads"], "threads_with_sockets": held["threads"],
            "threads_added": held["threads"] - before["threads"],
            "fds_before": before["fds"], "fds_with_sockets": held["fds"],
            "connect_seconds": connect_seconds, "accept_seconds": accept_seconds, "held_seconds": held_seconds,
            "answered": answered}


# ---- the summary -----------------------------------------------------------------------------------

def sampled(order: Sequence[str], samples: int) -> List[Tuple[int, str]]:
    """(sample, target): the targets back to back `samples` times, the first rotating with the sample."""
    turns = [list(order[s % len(order):]) + list(order[:s % len(order)]) for s in range(samples)]
    return [(s + 1, target) for s, turn in enumerate(turns) for target in turn]


def median(values: Sequence[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def summarize(runs: List[dict], idle: Dict[str, dict], silent: List[dict], settings: dict) -> List[dict]:
    """One row per metric: the median of each target, and the ratios proxy/direct and proxy/PgBouncer as
    the median of the per-round ratios (the three targets of a round ran back to back, so slow drift of
    the machine cancels out), with the ratio of the medians kept alongside in the JSON."""

    # A table's keys: (round, sample); every workload but the stream and COPY has one sample a round.
    Table = Dict[Tuple[int, int], Dict[str, float]]

    def per_round(kind: str, key: Callable[[str], str], **match: object) -> Table:
        table: Table = {}
        for r in runs:
            if r["kind"] == kind and all(r.get(k) == v for k, v in match.items()) and key(r["target"]) in r:
                # a sample (the stream, COPY) is its own interleaved triple: paired within it
                table.setdefault((r["round"], r.get("sample", 1)), {})[r["target"]] = r[key(r["target"])]
        return table

    rows: List[dict] = []

    def add(metric: str, unit: str, table: Table, target: str = "",
            check: Optional[Callable[[Optional[float], Optional[float], Dict[str, Optional[float]]],
                                     Optional[bool]]] = None) -> None:
        m = {t: median([v[t] for v in table.values() if t in v]) for t in TARGETS}

        def paired(other: str) -> Optional[float]:
            return median([v["proxy"] / v[other] for v in table.values() if v.get("proxy") is not None
                           and v.get(other)])

        vs_direct, vs_pgb = paired("direct"), paired("pgbouncer")
        met = check(vs_direct, vs_pgb, m) if check else None
        rows.append(dict(metric=metric, unit=unit, direct=m["direct"], pgbouncer=m["pgbouncer"], proxy=m["proxy"],
                         proxy_vs_direct=vs_direct, proxy_vs_pgbouncer=vs_pgb,
                         ratio_of_medians_vs_direct=ratio(m["proxy"], m["direct"]),
                         ratio_of_medians_vs_pgbouncer=ratio(m["proxy"], m["pgbouncer"]),
                         rounds=len({rnd for rnd, _ in table}), samples=len(table),
                         target=target, met=met))

    def at_least(value: Optional[float], bound: float) -> Optional[bool]:
        return None if value is None else value >= bound

    def at_most(value: Optional[float], bound: float) -> Optional[bool]:
        return None if value is None else value <= bound

    tps = lambda target: "tps"  # noqa: E731
    cpu = lambda target: "middle_cpu_us_per_txn"  # noqa: E731

    def variant(table: Table, name: str) -> Table:
        """A proxy variant's runs in the "proxy" column, against the same rounds' direct and PgBouncer."""
        return {rnd: {**{t: v for t, v in row.items() if t != "proxy"}, "proxy": row[name]}
                for rnd, row in table.items() if name in row}

    def pinned_rows(table: Table, cpu_table: Table, cpu_target: str) -> None:
        # SLOT: the proxy with --pin-loops, under the default proxy's rows (same targets)
        if not settings.get("pin_loops"):
            return
        add(f"  the same, proxy {PIN_FLAG}", "TPS", variant(table, PIN_TARGET), ">=1.10x pgb",
            lambda d, p, m: at_least(p, 1.10))
        add("    CPU per txn of the middle process", "us", variant(cpu_table, PIN_TARGET), cpu_target,
            (lambda d, p, m: at_most(p, 0.6)) if cpu_target else None)
    for clients in settings["clients"]:
        table = per_round("pgbench", tps, script="select", clients=clients, mode="simple")
        cpu_table = per_round("pgbench", cpu, script="select", clients=clients, mode="simple")
        if clients == 1:
            # 1 client: this VM's idle wake-up latency dominates (issue 20): reported, never a target
            add(f"select-only, {clients} client", "TPS", table, "(none: wake-up latency)")
            add("  CPU per txn of the middle process", "us", cpu_table)
        else:
            add(f"select-only, {clients} clients", "TPS", table, ">=1.10x pgb",
                lambda d, p, m: at_least(p, 1.10))
            add("  CPU per txn of the middle process", "us", cpu_table, "<=0.6x pgb",
                lambda d, p, m: at_most(p, 0.6))
            pinned_rows(table, cpu_table, "<=0.6x pgb")
    for mode in ("extended", "prepared"):
        ec = settings["extended_clients"]
        table = per_round("pgbench", tps, script="select", clients=ec, mode=mode)
        cpu_table = per_round("pgbench", cpu, script="select", clients=ec, mode=mode)
        add(f"select-only -M {mode}, {ec} clients", "TPS", table, ">=1.10x pgb",
            lambda d, p, m: at_least(p, 1.10))
        add("  CPU per txn of the middle process", "us", cpu_table)
        pinned_rows(table, cpu_table, "")
    wc = settings["write_clients"]
    add(f"write txn, {wc} clients", "TPS", per_round("pgbench", tps, script="write", clients=wc))
    add("  CPU per txn of the middle process", "us", per_round("pgbench", cpu, script="write", clients=wc))
    cc = settings["connect_clients"]
    add(f"connection storm -C -S, {cc} clients", "conn/s", per_round("connect", tps), ">=0.9x direct",
        lambda d, p, m: at_least(d, 0.9))
    add("  CPU per connection of the middle process", "us", per_round("connect", cpu))
    # SLOT: the proxy with --reuse-upstream; a row of dashes when the binary has no such option.
    add(f"  the same, proxy {REUSE_FLAG}" + ("" if settings.get("reuse_upstream") else " (not in this binary)"),
        "conn/s", variant(per_round("connect", tps), REUSE_TARGET), ">=1.0x pgb", lambda d, p, m: at_least(p, 1.0))
    add("  CPU per connection of the middle process", "us", variant(per_round("connect", cpu), REUSE_TARGET))

    rows_n = settings["stream_rows"]
    add(f"stream {rows_n:,} rows, wall", "s", per_round("stream", lambda t: "seconds"), "<=1.0x direct",
        lambda d, p, m: None if d is None else d <= 1.0)
    add("stream throughput", "MB/s", per_round("stream", lambda t: "mb_per_s"))
    add("stream CPU of the middle process", "ns/B", per_round("stream", lambda t: f"{t}_cpu_ns_per_byte"),
        "< pgb", lambda d, p, m: None if p is None else p < 1.0)
    add("stream RSS growth (peak - before)", "MB", per_round("stream", lambda t: f"{t}_rss_growth_mb"),
        "proxy <= 8 MB", lambda d, p, m: None if m["proxy"] is None else m["proxy"] <= 8.0)
    copy_n = settings["copy_rows"]
    lines_n = settings["copy_lines"]
    for kind, name in (("copy_out", f"COPY TO STDOUT {copy_n:,} rows"), ("copy_in", f"COPY FROM STDIN {copy_n:,} rows"),
                       ("copy_in_lines", f"COPY FROM STDIN {lines_n:,} lines, a CopyData each")):
        add(f"{name}, wall", "s", per_round(kind, lambda t: "seconds"), "<=1.05x direct",
            lambda d, p, m: None if d is None else d <= 1.05)
        add("  CPU of the middle process", "s", per_round(kind, lambda t: f"{t}_cpu_s"))
    n = settings["idle_clients"]
    add(f"RSS added by {n} idle clients", "MB",
        {(1, 1): {t: v["growth_mb"] for t, v in idle.items()}}, "proxy <= 64 MB",
        lambda d, p, m: None if m["proxy"] is None else m["proxy"] <= 64.0)
    add("RSS at start, no clients", "MB", {(1, 1): {t: v["rss_before_mb"] for t, v in idle.items()}})
    n = settings["silent_sockets"]

    def silent_table(key: str) -> Table:
        table: Table = {}
        for r in silent:
            table.setdefault((r["round"], 1), {})[r["target"]] = r[key]
        return table

    add(f"RSS added by {n} silent sockets", "MB", silent_table("growth_mb"), "proxy <= 32 MB",
        lambda d, p, m: None if m["proxy"] is None else m["proxy"] <= 32.0)
    threads = silent_table("threads_added")
    add("  threads added by them", "threads", threads, "proxy: none",
        lambda d, p, m: None if m["proxy"] is None else all(v.get("proxy", 0) == 0 for v in threads.values()))
    return rows


def format_table(rows: List[dict]) -> str:
    def num(v: Optional[float], unit: str = "") -> str:
        if v is None:
            return "-"
        if unit in ("TPS", "threads"):
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"

    def rat(v: Optional[float]) -> str:
        return "-" if v is None else f"{v:.2f}x"

    header = ["metric", "unit", "direct", "pgbouncer", "proxy", "proxy/direct", "proxy/pgb", "target", "met"]
    body = [[r["metric"], r["unit"], num(r["direct"], r["unit"]), num(r["pgbouncer"], r["unit"]),
             num(r["proxy"], r["unit"]), rat(r["proxy_vs_direct"]), rat(r["proxy_vs_pgbouncer"]),
             r["target"] or "-", {True: "yes", False: "NO", None: "-"}[r["met"]]] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    right = {2, 3, 4, 5, 6}

    def line(cells: List[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(cells) for cells in body]
    return "\n".join(out)


# ---- the chart -------------------------------------------------------------------------------------

COLORS = {"direct": "#4c72b0", "pgbouncer": "#dd8452", "proxy": "#55a868"}


def check_chart_support() -> Optional[str]:
    """None when matplotlib (Debian: python3-matplotlib) can be imported, else why not."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        return f"{exc} (install the Debian package python3-matplotlib)"
    return None


def write_chart(path: Path, runs: List[dict], settings: dict, title: str) -> None:
    """TPS, and CPU per transaction, by client count for direct, PgBouncer and the proxy (select-only,
    -M simple). Lines are medians over the rounds, dots the single rounds. The CPU panel has the middle
    process's own CPU per transaction (solid) and the whole machine's (dashed: PostgreSQL, pgbench and
    the middle process together, counted per process, so other load on the machine is left out; the
    only CPU figure direct has)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clients = sorted(settings["clients"])
    select = [r for r in runs if r["kind"] == "pgbench" and r["script"] == "select" and r["mode"] == "simple"]

    def values(target: str, key: str, c: int) -> List[float]:
        return [r[key] for r in select if r["target"] == target and r["clients"] == c and key in r]

    fig, (ax_tps, ax_cpu) = plt.subplots(1, 2, figsize=(11, 4.4))
    positions = list(range(len(clients)))  # evenly spaced: client counts are 1, 16, 64, not a scale
    for target in TARGETS:
        series = [(x, values(target, "tps", c)) for x, c in zip(positions, clients)]
        ax_tps.plot([x for x, v in series if v], [statistics.median(v) for _, v in series if v], "-o",
                    color=COLORS[target], label=target)
        for x, v in series:
            ax_tps.scatter([x] * len(v), v, s=10, color=COLORS[target], alpha=0.35)
        for key, style, label in (("middle_cpu_us_per_txn", "-o", f"{target}: its own CPU"),
                                  ("ours_cpu_us_per_txn", "--s", f"via {target}: all processes")):
            series = [(x, values(target, key, c)) for x, c in zip(positions, clients)]
            if not any(v for _, v in series):
                continue
            ax_cpu.plot([x for x, v in series if v], [statistics.median(v) for _, v in series if v], style,
                        color=COLORS[target], label=label, alpha=1.0 if key.startswith("middle") else 0.6)
            for x, v in series:
                ax_cpu.scatter([x] * len(v), v, s=10, color=COLORS[target], alpha=0.35)
    for ax, ylabel in ((ax_tps, "transactions per second"), (ax_cpu, "CPU per transaction (us)")):
        ax.set_xticks(positions)
        ax.set_xticklabels([str(c) for c in clients])
        ax.set_xlabel("pgbench clients (-S -M simple)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    ax_tps.set_title("throughput")
    ax_cpu.set_title("CPU per transaction (utime+stime)")
    ax_tps.legend(fontsize=8)
    ax_cpu.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def git_describe() -> str:
    out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else "unknown"


# ---- machine -----------------------------------------------------------------------------------------

def machine_info(bindir: Path, bouncer: PgBouncer, binary: Path) -> dict:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    pg = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "postgres": pg, "pgbouncer": bouncer.version(), "proxy_binary": str(binary),
            "python": platform.python_version(), "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}


# ---- main ----------------------------------------------------------------------------------------------

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="about a minute: 1 round, 2 s runs, pgbench scale 1, a 500,000-row stream, "
                        "200,000-row COPYs, 300 silent sockets")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3; quick 1)")
    p.add_argument("--duration", type=int, help="seconds per pgbench run (default 10; quick 2)")
    p.add_argument("--binary", type=Path, help="the pgwire-proxy binary (default: build one into build-bench/)")
    p.add_argument("--build-dir", type=Path, default=REPO / "build-bench", help="where to build (default build-bench/)")
    p.add_argument("--json", type=Path, help="write the results here as JSON")
    p.add_argument("--clients", default="1,16,64", help="select-only client counts (default 1,16,64)")
    p.add_argument("--write-clients", type=int, default=16, help="clients for the write script (default 16)")
    p.add_argument("--extended-clients", type=int, default=16,
                   help="clients for the -M extended and -M prepared select-only runs (default 16)")
    p.add_argument("--connect-clients", type=int, default=16,
                   help="clients for the connection storm, pgbench -C -S (default 16)")
    p.add_argument("--chart", type=Path,
                   help="write a PNG chart (TPS and CPU per transaction by client count) here; 'none' for no "
                        "chart. Default: next to --json (same name, .png), else docs/performance.png; "
                        "none with --quick")
    p.add_argument("--scale", type=int, help="pgbench scale (default 10; quick 1)")
    p.add_argument("--stream-rows", type=int, help="rows in the large result (default 2000000; quick 500000)")
    p.add_argument("--idle-clients", type=int, default=200, help="idle clients for the RSS test (default 200)")
    p.add_argument("--copy-rows", type=int,
                   help="rows in the COPY TO STDOUT and COPY FROM STDIN runs (default 1000000; quick 200000)")
    p.add_argument("--copy-lines", type=int,
                   help="rows in the COPY FROM STDIN run that writes a CopyData per line (default 200000; "
                        "quick 50000; at most --copy-rows)")
    p.add_argument("--silent-sockets", type=int,
                   help="TCP connections that never send a byte, for the RSS and thread test (default 1000; "
                        "quick 300)")
    p.add_argument("--max-foreign", type=float, default=0.10,
                   help="repeat a run when other processes (plus hypervisor steal) took more than this share "
                        "of the CPUs (default 0.10)")
    p.add_argument("--samples", type=int,
                   help="runs of the large result and of each COPY per round, each the three targets back to "
                        "back (default 3; quick 1)")
    p.add_argument("--retries", type=int, help="how often to repeat such a run (default 2; quick 0)")
    p.add_argument("--retry-wait", type=float, default=5.0, help="seconds to wait before repeating (default 5)")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.duration = args.duration or (2 if args.quick else 10)
    args.scale = args.scale or (1 if args.quick else 10)
    args.stream_rows = args.stream_rows or (500_000 if args.quick else 2_000_000)
    args.copy_rows = args.copy_rows or (200_000 if args.quick else 1_000_000)
    args.copy_lines = min(args.copy_lines or (50_000 if args.quick else 200_000), args.copy_rows)
    args.silent_sockets = args.silent_sockets or (300 if args.quick else 1000)
    args.retries = args.retries if args.retries is not None else (0 if args.quick else 2)
    args.samples = args.samples or (1 if args.quick else 3)
    args.clients = [int(c) for c in args.clients.split(",") if c.strip()]
    if args.chart is not None and str(args.chart).lower() in ("none", "off", "no"):
        args.chart = None
    elif args.chart is None and not args.quick:
        args.chart = args.json.with_suffix(".png") if args.json else REPO / "docs" / "performance.png"
    if args.rounds < 1 or args.duration < 1 or not args.clients or min(args.clients) < 1:
        p.error("rounds, duration and client counts must be positive")
    if args.copy_rows < 1 or args.silent_sockets < 1:
        p.error("--copy-rows and --silent-sockets must be positive")
    return args


def _raise_interrupt(signum, frame):  # SIGTERM/SIGHUP: unwind like Ctrl+C, so everything gets stopped
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    # Ctrl+C raises KeyboardInterrupt even when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    started = time.monotonic()
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    # The silent sockets need a descriptor each here and in the middle process, which inherits the limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < args.silent_sockets + 500:
        raise SystemExit(f"RLIMIT_NOFILE is {soft}, too low for --silent-sockets {args.silent_sockets}")

    if args.chart is not None:
        why = check_chart_support()
        if why is not None:  # before minutes of measuring, not after
            raise SystemExit(f"--chart {args.chart}: no matplotlib: {why}; or pass --chart none")
    binary = args.binary.resolve() if args.binary else build_proxy(args.build_dir.resolve())
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise SystemExit(f"no pgwire-proxy binary at {binary}")
    bindir = find_pg_bindir()
    max_clients = max(args.clients + [args.write_clients, args.extended_clients, args.connect_clients])
    settings = {"quick": args.quick, "rounds": args.rounds, "duration": args.duration, "scale": args.scale,
                "clients": args.clients, "write_clients": args.write_clients,
                "extended_clients": args.extended_clients, "connect_clients": args.connect_clients,
                "stream_rows": args.stream_rows, "copy_rows": args.copy_rows, "copy_lines": args.copy_lines,
                "samples": args.samples,
                "silent_sockets": args.silent_sockets,
                "idle_clients": args.idle_clients, "pgbench": "-M simple (and extended/prepared) -n, -j min(clients, nproc)",
                "write_script": str(WRITE_SCRIPT.relative_to(REPO))}

    stack = contextlib.ExitStack()
    try:
        # -- start everything ------------------------------------------------------------------------
        pg_conns = 3 * max_clients + args.idle_clients + 20
        log(f"starting PostgreSQL (max_connections={pg_conns}) ...")
        pg = ThrowawayPostgres(max_connections=pg_conns, settings={
            "shared_buffers": "256MB" if not args.quick else "64MB", "work_mem": "64MB",
            "max_wal_size": "4GB", "checkpoint_timeout": "30min", "autovacuum": "off"})
        stack.callback(pg.stop)
        pg.start()
        log(f"pgbench -i -s {args.scale} (directly against PostgreSQL) ...")
        init = subprocess.run([str(bindir / "pgbench"), "-i", "-q", "-s", str(args.scale), "-h", pg.host,
                               "-p", str(pg.port), "-U", "postgres", "postgres"],
                              capture_output=True, text=True, env=client_env(), start_new_session=True)
        if init.returncode != 0:
            raise RuntimeError(f"pgbench -i failed:\n{init.stdout}{init.stderr}")
        with contextlib.suppress(Exception):  # warm shared buffers (contrib may be missing: fine)
            pg.execute("create extension if not exists pg_prewarm")
            pg.execute("select pg_prewarm('pgbench_accounts'), pg_prewarm('pgbench_accounts_pkey')")
        pg.execute(f"create unlogged table {COPY_TABLE} (g int, x text)")
        copy_data = copy_rows_text(args.copy_rows)
        copy_pieces = {"copy_in": copy_blocks(copy_data),
                       "copy_in_lines": copy_data.splitlines(keepends=True)[:args.copy_lines]}
        warm_copy_rows = min(args.copy_rows, 100_000)
        warm_copy_data = copy_blocks(copy_rows_text(warm_copy_rows))

        def truncate_copy_table() -> None:
            pg.execute(f"truncate {COPY_TABLE}")

        bouncer_conns = max(1000, 2 * pg_conns, args.silent_sockets + 100)
        bouncer = PgBouncer(pg.host, pg.port, max_client_conn=bouncer_conns, pool_size=pg_conns)
        stack.callback(bouncer.cleanup)
        bouncer.start()
        log(f"PgBouncer on {bouncer.host}:{bouncer.port} (pid {bouncer.pid}, session mode)")

        # guardrails on, limits far above what the benchmark sends; protocol full: extended and COPY
        proxy_options: Dict[str, object] = dict(
            max_connections=max(300, 3 * max_clients, args.idle_clients + 50),
            max_rows=100 * max(args.stream_rows, args.copy_rows), max_bytes="1TB", max_copy_in_bytes="1TB",
            log_level="warning", protocol="full")
        proxy = ProxyProcess(pg.dsn, binary=binary, **proxy_options)
        stack.callback(proxy.stop)
        proxy.start()
        proxy_pid = proxy.process.pid  # type: ignore[union-attr]
        log(f"proxy {binary} on {proxy.host}:{proxy.port} (pid {proxy_pid})")

        endpoints = {"direct": (pg.host, pg.port), "pgbouncer": (bouncer.host, bouncer.port),
                     "proxy": (proxy.host, proxy.port)}
        middle_pids = {"pgbouncer": bouncer.pid, "proxy": proxy_pid}

        def start_variant(flag: str, name: str, **options: object) -> Tuple[str, ...]:
            """A second proxy process with the same settings plus `flag`, stopped on exit; the targets its
            workloads run against (TARGETS alone when the binary's --help does not list the flag)."""
            if not supports_option(binary, flag):
                log(f"this binary has no {flag}: its variant does not run")
                return TARGETS
            variant = ProxyProcess(pg.dsn, binary=binary, extra_args=[flag], **{**proxy_options, **options})
            stack.callback(variant.stop)
            variant.start()
            endpoints[name] = (variant.host, variant.port)
            middle_pids[name] = variant.process.pid  # type: ignore[union-attr]
            log(f"proxy {flag} on {variant.host}:{variant.port} (pid {middle_pids[name]})")
            return TARGETS + (name,)

        # SLOT: --reuse-upstream (issue 20) for the connection storm; --pin-loops for the select-only
        # runs of more than one client.
        connect_targets = start_variant(REUSE_FLAG, REUSE_TARGET, max_connections=max(300, 3 * args.connect_clients))
        settings["reuse_upstream"] = REUSE_TARGET in endpoints
        pin_targets = start_variant(PIN_FLAG, PIN_TARGET)
        settings["pin_loops"] = PIN_TARGET in endpoints

        # -- idle clients, on fresh processes ------------------------------------------------------
        idle: Dict[str, dict] = {}
        for target in ("pgbouncer", "proxy"):
            host, port = endpoints[target]
            idle[target] = idle_clients_rss(host, port, middle_pids[target], args.idle_clients)
            log(f"{args.idle_clients} idle clients via {target}: RSS {idle[target]['rss_before_mb']:.1f} -> "
                f"{idle[target]['rss_with_clients_mb']:.1f} MB (+{idle[target]['growth_mb']:.1f} MB)")
            time.sleep(1.0)  # let the upstream backends exit

        # -- warm-up ---------------------------------------------------------------------------------
        for target in TARGETS:
            host, port = endpoints[target]
            pgbench(bindir, host, port, clients=max_clients, duration=1, scale=args.scale, script=None)
            stream_once(host, port, min(args.stream_rows, 100_000), {})
            copy_out_once(host, port, warm_copy_rows, {})
            copy_in_once(host, port, warm_copy_data, warm_copy_rows, {}, truncate_copy_table)
        if REUSE_TARGET in endpoints:
            pgbench(bindir, *endpoints[REUSE_TARGET], clients=args.connect_clients, duration=1, scale=args.scale,
                    script=None)
        if PIN_TARGET in endpoints:
            pgbench(bindir, *endpoints[PIN_TARGET], clients=max_clients, duration=1, scale=args.scale, script=None)

        # -- interleaved rounds ------------------------------------------------------------------
        postmaster = int((pg.datadir / "postmaster.pid").read_text().split()[0])  # type: ignore[operator]
        meter = CpuMeter(lambda: [postmaster, *middle_pids.values()])

        def measured(label: str, fn: Callable[[], object]) -> Tuple[object, dict]:
            """fn() again (up to --retries times) while other processes (or other guests, through steal)
            take more than --max-foreign of the CPUs; the least disturbed attempt counts."""
            best: Optional[Tuple[float, object, dict]] = None
            attempt = 0
            for attempt in range(1, args.retries + 2):
                before = meter.snapshot()
                value = fn()
                foreign, steal, ours = meter.shares(before)
                noise = {"foreign_cpu_share": round(foreign, 4), "steal_share": round(steal, 4),
                         "ours_cpu_s": round(ours, 3)}
                if best is None or foreign + steal < best[0]:
                    best = (foreign + steal, value, noise)
                if foreign + steal <= args.max_foreign:
                    break
                if attempt <= args.retries:
                    log(f"    {label}: other processes used {foreign:.0%} of the CPUs, steal {steal:.0%}; "
                        f"again in {args.retry_wait:g} s")
                    time.sleep(args.retry_wait)
            assert best is not None
            return best[1], dict(best[2], attempts=attempt)

        @contextlib.contextmanager
        def fresh_middle(target: str) -> Iterator[Tuple[str, int, int]]:
            """(host, port, pid) of a newly started PgBouncer or proxy with the settings of the ones
            above, stopped afterwards."""
            if target == "pgbouncer":
                fresh_bouncer = PgBouncer(pg.host, pg.port, max_client_conn=bouncer_conns, pool_size=pg_conns)
                try:
                    fresh_bouncer.start()
                    yield fresh_bouncer.host, fresh_bouncer.port, fresh_bouncer.pid
                finally:
                    fresh_bouncer.cleanup()
            else:
                fresh_proxy = ProxyProcess(pg.dsn, binary=binary, **dict(
                    proxy_options, max_startup_connections=max(2000, args.silent_sockets + 100)))
                try:
                    fresh_proxy.start()
                    pid = fresh_proxy.process.pid  # type: ignore[union-attr]
                    yield fresh_proxy.host, fresh_proxy.port, pid  # type: ignore[misc]
                finally:
                    fresh_proxy.stop()

        runs: List[dict] = []
        silent: List[dict] = []
        workloads = ([("select", c, "simple") for c in args.clients] + [("write", args.write_clients, "simple")]
                     + [("select", args.extended_clients, mode) for mode in ("extended", "prepared")]
                     + [("connect", args.connect_clients, "simple")])
        for rnd in range(args.rounds):
            order = TARGETS[rnd % 3:] + TARGETS[:rnd % 3]
            for script, clients, mode in workloads:
                targets = (connect_targets if script == "connect" else
                           pin_targets if script == "select" and clients > 1 else TARGETS)
                for target in targets[rnd % len(targets):] + targets[:rnd % len(targets)]:
                    host, port = endpoints[target]
                    label = f"[round {rnd + 1}/{args.rounds}] {script:7} -M {mode:8} c={clients:<3} {target:11}"
                    result, noise = measured(label, lambda: pgbench_with_cpu(
                        bindir, host, port, middle_pids.get(target), clients=clients, duration=args.duration,
                        scale=args.scale, script=WRITE_SCRIPT if script == "write" else None, mode=mode,
                        connect=script == "connect"))
                    # all of the benchmark's processes (PostgreSQL, pgbench, the middle one), per transaction
                    result["ours_cpu_us_per_txn"] = noise["ours_cpu_s"] * 1e6 / max(1, result["transactions"])
                    kind, name = ("connect", "select") if script == "connect" else ("pgbench", script)
                    runs.append(dict(kind=kind, round=rnd + 1, target=target, script=name, clients=clients,
                                     mode=mode, **result, **noise))
                    cpu = result.get("middle_cpu_us_per_txn")
                    unit = "conn/s" if script == "connect" else "TPS"
                    per = "conn" if script == "connect" else "txn"
                    log(f"{label} {result['tps']:10,.0f} {unit:6}  CPU/{per}: "
                        f"{'-' if cpu is None else f'{cpu:.1f}':>6} us {target if cpu is not None else '':11} "
                        f"{result['ours_cpu_us_per_txn']:6.0f} us all   "
                        f"(others {noise['foreign_cpu_share']:4.0%}, steal {noise['steal_share']:.0%})")
            for sample, target in sampled(order, args.samples):
                host, port = endpoints[target]
                watch = {name: pid for name, pid in middle_pids.items() if name == target}
                label = f"[round {rnd + 1}/{args.rounds}.{sample}] stream {args.stream_rows:,} rows {target:9}"
                result, noise = measured(label, lambda: stream_once(host, port, args.stream_rows, watch))
                runs.append(dict(kind="stream", round=rnd + 1, sample=sample, target=target, rows=args.stream_rows,
                                 **noise, **result))
                extra = ""
                if target in middle_pids:
                    extra = (f", {target} CPU {result[f'{target}_cpu_s']:.2f} s "
                             f"({result[f'{target}_cpu_ns_per_byte']:.2f} ns/B), RSS "
                             f"{result[f'{target}_rss_before_mb']:.1f} -> {result[f'{target}_rss_peak_mb']:.1f} MB")
                log(f"{label} {result['seconds']:.3f} s, {result['bytes'] / 1e6:.1f} MB{extra}   (others {noise['foreign_cpu_share']:.0%}, "
                    f"steal {noise['steal_share']:.0%})")
            for kind in ("copy_out", "copy_in", "copy_in_lines"):
                rows = args.copy_lines if kind == "copy_in_lines" else args.copy_rows
                for sample, target in sampled(order, args.samples):
                    host, port = endpoints[target]
                    watch = {name: pid for name, pid in middle_pids.items() if name == target}
                    what = {"copy_out": "to   ", "copy_in": "from ", "copy_in_lines": "lines"}[kind]
                    label = f"[round {rnd + 1}/{args.rounds}.{sample}] COPY {what} {rows:,} rows {target:9}"
                    if kind == "copy_out":
                        run = lambda: copy_out_once(host, port, rows, watch)  # noqa: E731
                    else:
                        run = lambda: copy_in_once(host, port, copy_pieces[kind], rows, watch,  # noqa: E731
                                                   truncate_copy_table)
                    result, noise = measured(label, run)
                    runs.append(dict(kind=kind, round=rnd + 1, sample=sample, target=target, rows=rows, **noise,
                                     **result))
                    extra = f", {target} CPU {result[f'{target}_cpu_s']:.2f} s" if target in middle_pids else ""
                    log(f"{label} {result['seconds']:.3f} s, {result['bytes'] / 1e6:.1f} MB{extra}   "
                        f"(others {noise['foreign_cpu_share']:.0%}, steal {noise['steal_share']:.0%})")
            # Silent sockets, on a fresh PgBouncer and a fresh proxy each round (same settings as the
            # ones above): a process that has served the rounds reuses freed heap, which would hide growth.
            middles = ("pgbouncer", "proxy")
            for target in middles[rnd % 2:] + middles[:rnd % 2]:
                with fresh_middle(target) as (host, port, pid):
                    time.sleep(0.5)
                    result = silent_sockets(host, port, pid, args.silent_sockets)
                silent.append(dict(round=rnd + 1, target=target, **result))
                log(f"[round {rnd + 1}/{args.rounds}] {args.silent_sockets} silent sockets, fresh {target:9}: RSS "
                    f"{result['rss_before_mb']:.1f} -> {result['rss_with_sockets_mb']:.1f} MB "
                    f"(+{result['growth_mb']:.1f} MB), threads {result['threads_before']} -> "
                    f"{result['threads_with_sockets']}, fds {result['fds_before']} -> "
                    f"{result['fds_with_sockets']}; connected in {result['connect_seconds']:.2f} s, held by it "
                    f"after {result['accept_seconds']:.2f} s, {result['answered']} answered or closed")
                if result["held_seconds"] >= 9.0:
                    log(f"    warning: the sockets were held {result['held_seconds']:.1f} s, close to the proxy's "
                        f"10 s --startup-timeout")

        info = machine_info(bindir, bouncer, binary)
        info["loadavg_at_start"] = load_at_start
        summary = summarize(runs, idle, silent, settings)
        elapsed = time.monotonic() - started
        print(f"\npgwire-proxy benchmark: {info['nproc']} CPUs ({info['cpu']}), {info['postgres']}, "
              f"{info['pgbouncer']}; rounds={args.rounds} duration={args.duration}s scale={args.scale} "
              f"({'quick, ' if args.quick else ''}medians; took {elapsed:.0f} s; load average "
              f"{load_at_start[0]:.2f} at start, {info['loadavg_at_end'][0]:.2f} at end)\n")
        print(format_table(summary))
        shares = [r["foreign_cpu_share"] for r in runs]
        steals = [r["steal_share"] for r in runs]
        retried = sum(1 for r in runs if r["attempts"] > 1)
        noisy = sum(1 for r in runs if r["foreign_cpu_share"] + r["steal_share"] > args.max_foreign)
        print(f"\nduring the measured runs other processes used a median {statistics.median(shares):.1%} "
              f"(max {max(shares):.1%}) of the CPUs, hypervisor steal a median {statistics.median(steals):.1%} "
              f"(max {max(steals):.1%}); {retried} runs repeated, {noisy} still above {args.max_foreign:.0%}; "
              f"ratios are medians of per-round ratios", flush=True)
        info["foreign_cpu_share_median"] = round(statistics.median(shares), 4)
        info["foreign_cpu_share_max"] = round(max(shares), 4)
        info["steal_share_median"] = round(statistics.median(steals), 4)
        if args.json:
            args.json.write_text(json.dumps({"machine": info, "settings": settings, "summary": summary,
                                             "idle_clients": idle, "silent_sockets": silent, "runs": runs,
                                             "seconds": round(elapsed, 1)}, indent=2) + "\n")
            log(f"wrote {args.json}")
        if args.chart is not None:
            write_chart(args.chart, runs, settings,
                        f"bench/run.py at {git_describe()}, binary {binary}\n{info['nproc']} CPUs, "
                        f"{info['postgres']}, {info['pgbouncer']}; {args.rounds} rounds x {args.duration} s"
                        f"{'; --quick: a smoke run, not a measurement' if args.quick else ''}")
            log(f"wrote {args.chart}")
        if proxy.returncode is not None:
            raise RuntimeError(f"the proxy exited during the benchmark:\n{proxy.stderr_text()[-2000:]}")
        return 0
    except KeyboardInterrupt:
        log("interrupted; stopping everything")
        return 130
    finally:
        # A second Ctrl+C must not cut the shutdown short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.close()


if __name__ == "__main__":
    sys.exit(main())
