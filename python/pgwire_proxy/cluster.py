"""A PostgreSQL for tests: a throwaway initdb cluster, or an existing server named by a DSN."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ["ThrowawayPostgres", "ExistingPostgres", "existing", "from_environment", "find_pg_bindir"]

TEST_DSN_ENV = "PGWIRE_PROXY_TEST_DSN"

# PostgreSQL refuses to run as root; this account owns the cluster when we are root.
_UNPRIVILEGED_USER = "postgres"


def find_pg_bindir() -> Path:
    """The directory holding initdb and pg_ctl: `pg_config --bindir`, else the newest Debian one."""
    candidates: List[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
            candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.CalledProcessError):
            pass
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                    key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
                    reverse=True)
    candidates.extend(Path(p) for p in debian)
    for path in candidates:
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    raise RuntimeError("initdb/pg_ctl not found (tried `pg_config --bindir` and /usr/lib/postgresql/*/bin); "
                       "install the PostgreSQL server packages")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the usual race applies; callers retry on failure)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def parse_dsn(dsn: str) -> Dict[str, str]:
    """libpq keywords of a DSN or URI (psycopg/libpq does the parsing when available)."""
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:  # pragma: no cover - psycopg is present wherever the tests run
        result: Dict[str, str] = {}
        for item in dsn.split():
            key, _, value = item.partition("=")
            result[key] = value.strip("'")
        return result
    return {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}


def make_dsn(**params: object) -> str:
    """A libpq keyword DSN, values quoted when needed."""
    def quote(value: object) -> str:
        text = str(value)
        if text and not any(c in text for c in " '\\"):
            return text
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return " ".join(f"{k}={quote(v)}" for k, v in params.items() if v is not None)


class _Postgres:
    """What tests need to know about an upstream, whichever kind it is."""

    host: str
    port: int
    user: str
    dbname: str
    password: Optional[str] = None

    @property
    def dsn(self) -> str:
        return make_dsn(host=self.host, port=self.port, user=self.user, dbname=self.dbname,
                        password=self.password)

    def dsn_with(self, **overrides: object) -> str:
        """This server's DSN with some keywords replaced (user=..., dbname=..., password=...)."""
        params: Dict[str, object] = {"host": self.host, "port": self.port, "user": self.user,
                                     "dbname": self.dbname, "password": self.password}
        params.update(overrides)
        return make_dsn(**params)

    @property
    def server_dsn(self) -> str:
        """This server's DSN naming no database: a proxy in front of it routes each client to the
        database the client asks for (the pytest fixtures' proxies use it; see pgwire_database)."""
        return make_dsn(**{k: v for k, v in parse_dsn(self.dsn).items() if k != "dbname"})

    def dsn_for_database(self, dbname: str) -> str:
        """This server's DSN (every keyword it has) with another database."""
        return make_dsn(**{**parse_dsn(self.dsn), "dbname": dbname})

    def connect(self, **kwargs):
        """A direct psycopg connection (autocommit unless told otherwise)."""
        import psycopg
        kwargs.setdefault("autocommit", True)
        return psycopg.connect(self.dsn, **kwargs)

    def execute(self, sql: str, params=None) -> list:
        """Run one statement directly on the server and return its rows (empty for commands)."""
        with self.connect() as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description is not None else []

    @property
    def throwaway(self) -> bool:
        return False

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:  # overridden by the throwaway kind
        pass

    def stop(self) -> None:
        pass


class ExistingPostgres(_Postgres):
    """A server someone else runs (e.g. in Docker); never started, stopped or reconfigured here."""

    def __init__(self, dsn: str):
        self._dsn = dsn
        params = parse_dsn(dsn)
        self.host = params.get("host") or params.get("hostaddr") or "127.0.0.1"
        self.port = int(params.get("port") or 5432)
        self.user = params.get("user") or os.environ.get("PGUSER") or pwd.getpwuid(os.getuid()).pw_name
        self.dbname = params.get("dbname") or self.user
        self.password = params.get("password")

    @property
    def dsn(self) -> str:
        return self._dsn

    def add_hba_rule(self, line: str) -> None:
        raise NotImplementedError("cannot edit pg_hba.conf of an existing server")


def existing(dsn: str) -> ExistingPostgres:
    """An upstream already running at `dsn`."""
    return ExistingPostgres(dsn)


class ThrowawayPostgres(_Postgres):
    """initdb + pg_ctl in a temporary directory; everything removed at stop().

    Runs as the `postgres` OS account when the caller is root (PostgreSQL refuses root).
    """

    def __init__(self, *, max_connections: int = 200, settings: Optional[Dict[str, str]] = None,
                 bindir: Optional[Path] = None, base_dir: Optional[str] = None,
                 standby_of: Optional["ThrowawayPostgres"] = None):
        self.host = "127.0.0.1"
        self.port = 0
        self.user = "postgres"
        self.dbname = "postgres"
        self.password = None
        self._max_connections = max_connections
        self._settings = dict(settings or {})
        self._bindir = Path(bindir) if bindir else None
        self._base_dir = base_dir
        self.tmpdir: Optional[Path] = None
        self.datadir: Optional[Path] = None
        self.logfile: Optional[Path] = None
        self._running = False
        self._owner: Optional[pwd.struct_passwd] = None
        # A streaming hot standby of that (running) throwaway: pg_basebackup -R instead of initdb.
        self._primary = standby_of

    @property
    def throwaway(self) -> bool:
        return True

    # --- running commands as the cluster's owner -------------------------------------------------

    def _as_owner(self, argv: List[str]) -> List[str]:
        if self._owner is None:
            return argv
        return ["runuser", "-u", self._owner.pw_name, "--", *argv]

    def _run(self, argv: List[str], timeout: float = 120) -> subprocess.CompletedProcess:
        # start_new_session: a Ctrl+C in the terminal must not reach the postmaster directly;
        # whoever owns this object stops it in order.
        proc = subprocess.run(self._as_owner(argv), capture_output=True, text=True, timeout=timeout,
                              cwd=str(self.tmpdir), start_new_session=True,
                              env=self._child_env())
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed (exit {proc.returncode}):\n"
                               f"{proc.stdout}{proc.stderr}{self._log_tail()}")
        return proc

    @staticmethod
    def _child_env() -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.setdefault("LC_ALL", "C")
        return env

    def _log_tail(self, lines: int = 30) -> str:
        if self.logfile and self.logfile.exists():
            try:
                tail = self.logfile.read_text(errors="replace").splitlines()[-lines:]
                return "\n--- server log ---\n" + "\n".join(tail)
            except OSError:
                return ""
        return ""

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        if self._running:
            return
        bindir = self._bindir or find_pg_bindir()
        if os.geteuid() == 0:
            try:
                self._owner = pwd.getpwnam(_UNPRIVILEGED_USER)
            except KeyError:
                raise RuntimeError(f"running as root needs an OS user '{_UNPRIVILEGED_USER}' "
                                   "to own the throwaway cluster") from None
        self.tmpdir = Path(tempfile.mkdtemp(prefix="pgwire-proxy-pg-", dir=self._base_dir))
        try:
            if self._owner is not None:
                os.chown(self.tmpdir, self._owner.pw_uid, self._owner.pw_gid)
            self.datadir = self.tmpdir / "data"
            self.logfile = self.tmpdir / "postgres.log"
            if self._primary is not None:
                primary = self._primary
                self._run([str(bindir / "pg_basebackup"), "-h", primary.host, "-p", str(primary.port),
                           "-U", primary.user, "-D", str(self.datadir), "-R", "-X", "stream", "--no-sync"])
            else:
                self._run([str(bindir / "initdb"), "-D", str(self.datadir), "--auth=trust", "-U", self.user,
                           "-E", "UTF8", "--locale=C", "--no-sync"])
            self._write_config()
            self._start_on_free_port(bindir)
        except BaseException:
            self._cleanup(bindir)
            raise
        self._bindir = bindir

    def _write_config(self) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.datadir}'",
            "max_connections": str(self._max_connections),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
            "log_min_messages": "warning",
        }
        settings.update(self._settings)
        text = "\n# pgwire-proxy test settings\n" + "".join(f"{k} = {v}\n" for k, v in settings.items())
        conf = self.datadir / "postgresql.conf"
        # Written as the owner would: the file already exists and keeps its ownership.
        with open(conf, "a") as f:
            f.write(text)

    def _start_on_free_port(self, bindir: Path, attempts: int = 5) -> None:
        last_error: Optional[Exception] = None
        for _ in range(attempts):
            port = free_port(self.host)
            try:
                self._run([str(bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
                           "-w", "-t", "60", "-o", f"-p {port}", "start"])
            except RuntimeError as exc:  # most likely someone took the port meanwhile
                last_error = exc
                continue
            self.port = port
            self._running = True
            return
        raise RuntimeError(f"could not start PostgreSQL: {last_error}")

    def add_hba_rule(self, line: str) -> None:
        """Put a pg_hba.conf line before the trust lines and reload (e.g. a password rule for one role).

        Returns once new connections are authenticated under the new rules.
        """
        import time
        assert self.datadir is not None and self._bindir is not None, "not started"
        before = self.execute("SELECT pg_conf_load_time()")[0][0]
        hba = self.datadir / "pg_hba.conf"
        hba.write_text(line.rstrip("\n") + "\n" + hba.read_text())
        self._run([str(self._bindir / "pg_ctl"), "-D", str(self.datadir), "reload"])
        # The reload is asynchronous; a backend forked after it reports the new load time, and the
        # postmaster loads pg_hba.conf in the same step.
        deadline = time.monotonic() + 30
        while self.execute("SELECT pg_conf_load_time()")[0][0] <= before:
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not reload its configuration{self._log_tail()}")
            time.sleep(0.02)

    def promote(self) -> None:
        """A standby (standby_of=) ends recovery and takes writes; returns once it does."""
        assert self._primary is not None and self._bindir is not None and self.datadir is not None, "not a started standby"
        self._run([str(self._bindir / "pg_ctl"), "-D", str(self.datadir), "-w", "-t", "60", "promote"])

    def stop(self) -> None:
        self._cleanup(self._bindir)

    def _cleanup(self, bindir: Optional[Path]) -> None:
        if self._running and bindir is not None and self.datadir is not None:
            try:
                self._run([str(bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w",
                           "-t", "60", "stop"])
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            self._running = False
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def __del__(self):  # last resort; stop() is the real way
        try:
            if self._running:
                self.stop()
        except Exception:
            pass


def from_environment() -> _Postgres:
    """The upstream the tests should use: PGWIRE_PROXY_TEST_DSN if set, else a (not yet started) throwaway."""
    dsn = os.environ.get(TEST_DSN_ENV)
    if dsn:
        return existing(dsn)
    return ThrowawayPostgres()
