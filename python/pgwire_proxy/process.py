"""The pgwire-proxy binary as a subprocess: start it, wait until it listens, stop it."""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from ._checkout import build_dir
from .cluster import make_dsn, parse_dsn

__all__ = ["ProxyProcess", "find_binary", "binary_candidates", "build_argv"]

BINARY_ENV = "PGWIRE_PROXY_BINARY"
UPSTREAM_DSN_ENV = "PGWIRE_PROXY_UPSTREAM_DSN"
_LISTENING = re.compile(r"^listening on (?P<host>.+):(?P<port>\d+)\s*$")


BINARY_NAME = "pgwire-proxy"


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def binary_candidates() -> List[Path]:
    """Where find_binary() looks after $PGWIRE_PROXY_BINARY, in order: the checkout's build (when this
    package runs from a source tree, its binary belongs with it), the scripts directory of the running
    interpreter's environment (where pip installs it: a venv's bin/, also when the venv is not
    activated), the user scheme's (pip install --user), then PATH."""
    candidates: List[Path] = []
    build = build_dir()
    if build is not None:
        candidates.append(build / BINARY_NAME)
    schemes = [None]
    user_scheme = f"{os.name}_user"
    if user_scheme in sysconfig.get_scheme_names():
        schemes.append(user_scheme)
    for scheme in schemes:
        try:
            scripts = sysconfig.get_path("scripts", scheme) if scheme else sysconfig.get_path("scripts")
        except KeyError:
            continue
        if scripts:
            candidates.append(Path(scripts) / BINARY_NAME)
    candidates.append(Path(sys.executable).parent / BINARY_NAME)
    on_path = shutil.which(BINARY_NAME)
    if on_path:
        candidates.append(Path(on_path))
    unique: List[Path] = []
    for path in candidates:
        if path not in unique:
            unique.append(path)
    return unique


def find_binary() -> Path:
    """The pgwire-proxy binary: $PGWIRE_PROXY_BINARY when set (and nothing else then), else the first
    executable of binary_candidates()."""
    explicit = os.environ.get(BINARY_ENV)
    if explicit:
        path = Path(explicit)
        if not _is_executable(path):
            raise FileNotFoundError(f"pgwire-proxy binary not found at {path} (from ${BINARY_ENV})")
        return path
    candidates = binary_candidates()
    for path in candidates:
        if _is_executable(path):
            return path
    how = ("build it with scripts/build.sh" if build_dir() is not None
           else "reinstall the package with pip, which installs it into the environment's bin/")
    raise FileNotFoundError(
        f"pgwire-proxy binary not found (looked at {', '.join(map(str, candidates))} and PATH); "
        f"{how}, or set {BINARY_ENV}")


def build_argv(options: Mapping[str, object]) -> List[str]:
    """snake_case options to --kebab-case flags: True is a bare flag, False/None are left out,
    a list or tuple repeats the flag, a mapping repeats it as KEY=VALUE (databases={'app': dsn} is
    --database=app=DSN, as Proxy takes it)."""
    argv: List[str] = []
    for name, value in options.items():
        if name == "databases":
            name = "database"
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if isinstance(value, Mapping):
            argv.extend(f"{flag}={key}={item}" for key, item in value.items())
        elif value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv.extend(f"{flag}={item}" for item in value)
        else:
            argv.append(f"{flag}={value}")
    return argv


class ProxyProcess:
    """A running `pgwire-proxy`; `.host`, `.port` and `.dsn` are valid once start() returns.

    ProxyProcess(upstream_dsn, port=0, max_connections=2, query_timeout="5s") runs
    `pgwire-proxy --upstream-dsn=... --listen-address=127.0.0.1 --port=0 --max-connections=2 ...`.
    With upstream_dsn None the binary reads PGWIRE_PROXY_UPSTREAM_DSN (pass it in `env`).
    """

    def __init__(self, upstream_dsn: Optional[str] = None, *, binary: Optional[os.PathLike] = None,
                 env: Optional[Mapping[str, str]] = None, ready_timeout: float = 30.0,
                 extra_args: Sequence[str] = (), inherit_stderr: bool = False, **options: object):
        self.upstream_dsn = upstream_dsn
        self.options: Dict[str, object] = {"listen_address": "127.0.0.1", "port": 0}
        self.options.update(options)
        self._binary = Path(binary) if binary else None
        self._env = dict(env) if env is not None else None
        self._ready_timeout = ready_timeout
        self._extra_args = list(extra_args)  # verbatim flags after the generated ones
        self._inherit_stderr = inherit_stderr  # logs to our stderr (run-local) instead of a file
        self.host: Optional[str] = None
        self.port: Optional[int] = None
        self.process: Optional[subprocess.Popen] = None
        self.stderr_path: Optional[Path] = None
        self._stdout_lines: List[str] = []
        self._drain: Optional[threading.Thread] = None

        dsn_for_names = upstream_dsn or (self._env or os.environ).get(UPSTREAM_DSN_ENV) or ""
        try:
            names = parse_dsn(dsn_for_names) if dsn_for_names else {}
        except Exception:
            names = {}
        # The proxy ignores the client's user/database; these only keep clients' defaults tidy.
        self.user = names.get("user", "postgres")
        routes = options.get("databases") or options.get("database")
        if not dsn_for_names and isinstance(routes, Mapping) and routes:
            self.dbname = next(iter(routes))  # with routes and no fallback, .dsn asks for the first route
        else:
            self.dbname = names.get("dbname", self.user)

    # --- the interface shared with the in-process Proxy ----------------------------------------

    @property
    def dsn(self) -> str:
        """A libpq keyword DSN for clients of this proxy."""
        if self.port is None:
            raise RuntimeError("proxy not started")
        return make_dsn(host=self.host, port=self.port, user=self.user, dbname=self.dbname)

    def dsn_with(self, **overrides: object) -> str:
        params: Dict[str, object] = {"host": self.host, "port": self.port, "user": self.user,
                                     "dbname": self.dbname}
        params.update(overrides)
        return make_dsn(**params)

    @property
    def argv(self) -> List[str]:
        binary = self._binary or find_binary()
        upstream = [f"--upstream-dsn={self.upstream_dsn}"] if self.upstream_dsn is not None else []
        return [str(binary), *upstream, *build_argv(self.options), *self._extra_args]

    def start(self) -> "ProxyProcess":
        if self.process is not None:
            raise RuntimeError("already started")
        argv = self.argv
        env = dict(os.environ if self._env is None else self._env)
        popen = dict(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, env=env,
                     # Own session: a terminal's Ctrl+C goes to our process, which stops the proxy in order.
                     start_new_session=True)
        if self._inherit_stderr:
            self.process = subprocess.Popen(argv, **popen)
        else:
            fd, name = tempfile.mkstemp(prefix="pgwire-proxy-", suffix=".stderr")
            os.close(fd)
            self.stderr_path = Path(name)
            # O_APPEND: our reads never move the offset the proxy writes at.
            with open(self.stderr_path, "ab") as stderr:
                self.process = subprocess.Popen(argv, stderr=stderr, **popen)
        try:
            self._wait_until_listening()
        except BaseException:
            self.stop(timeout=5)
            raise
        self._drain = threading.Thread(target=self._drain_stdout, name="pgwire-proxy-stdout",
                                       daemon=True)
        self._drain.start()
        return self

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code (None if never started)."""
        if self.process is None:
            return None
        code = self._terminate(timeout)
        if self.stderr_path is not None and not os.environ.get("PGWIRE_PROXY_KEEP_LOGS"):
            # Keep the text for post-mortems through stderr_text() before the file goes.
            self._stderr_cache = self._read_stderr()
            try:
                self.stderr_path.unlink()
            except OSError:
                pass
            self.stderr_path = None
        return code

    def __enter__(self) -> "ProxyProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- diagnostics ---------------------------------------------------------------------------

    @property
    def returncode(self) -> Optional[int]:
        return None if self.process is None else self.process.poll()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stderr_text(self) -> str:
        """Everything the proxy logged so far (empty with inherit_stderr=True)."""
        if self.stderr_path is not None:
            return self._read_stderr()
        return getattr(self, "_stderr_cache", "")

    def stdout_text(self) -> str:
        return "".join(self._stdout_lines)

    def __repr__(self) -> str:
        return f"<ProxyProcess {self.host}:{self.port} pid={self.process.pid if self.process else None}>"

    # --- internals -----------------------------------------------------------------------------

    def _read_stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")  # type: ignore[union-attr]
        except OSError:
            return ""

    def _wait_until_listening(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        deadline = time.monotonic() + self._ready_timeout
        buffer = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.process.stdout, selectors.EVENT_READ)
            while True:
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    text = line.decode(errors="replace")
                    self._stdout_lines.append(text + "\n")
                    match = _LISTENING.match(text)
                    if match:
                        self.host = match.group("host").strip("[]")
                        self.port = int(match.group("port"))
                        if buffer:
                            self._stdout_lines.append(buffer.decode(errors="replace"))
                        return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"pgwire-proxy did not print 'listening on' within "
                                       f"{self._ready_timeout}s; argv={self.argv}\n"
                                       f"stdout:\n{self.stdout_text()}{buffer.decode(errors='replace')}\n"
                                       f"stderr:\n{self._read_stderr()}")
                if sel.select(timeout=min(left, 0.5)):
                    chunk = os.read(self.process.stdout.fileno(), 65536)
                    if chunk:
                        buffer += chunk
                        continue
                    # stdout closed: the process is on its way out (or closed stdout, which is a bug)
                    try:
                        self.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
                    except subprocess.TimeoutExpired:
                        sel.unregister(self.process.stdout)
                        continue
                if self.process.poll() is not None:
                    raise RuntimeError(f"pgwire-proxy exited with code {self.process.returncode} before "
                                       f"listening; argv={self.argv}\nstdout:\n{self.stdout_text()}"
                                       f"{buffer.decode(errors='replace')}\nstderr:\n{self._read_stderr()}")

    def _drain_stdout(self) -> None:
        stream = self.process.stdout if self.process else None
        if stream is None:
            return
        try:
            for line in iter(lambda: os.read(stream.fileno(), 65536), b""):
                self._stdout_lines.append(line.decode(errors="replace"))
        except (OSError, ValueError):
            pass

    def _terminate(self, timeout: float) -> Optional[int]:
        proc = self.process
        assert proc is not None
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._drain is not None:
            self._drain.join(timeout=2)
        if proc.stdout is not None:
            try:
                proc.stdout.close()
            except OSError:
                pass
        return proc.returncode
