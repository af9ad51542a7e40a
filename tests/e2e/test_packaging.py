"""The package as users get it: pip install into a fresh venv (the extension, the binary in the venv's
bin/, `python -m pgwire_proxy.local`), the pytest11 plugin from outside the repo, the sdist's contents,
`import pgwire_proxy` without the compiled extension, one version everywhere, and a CMake build that
writes nothing into the source tree."""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import textwrap
import time
from pathlib import Path
from typing import Dict, List

import pytest

REPO = Path(__file__).resolve().parents[2]
EXT_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")
# Written over the copied tree's in-tree extension: if the build packaged it, importing would fail.
STALE_EXTENSION = b"not an extension: a stale in-tree _core that must not be packaged\n"
# Build outputs, caches and VCS data stay out of the copy.
_IGNORED = shutil.ignore_patterns(".git", "build", "build-*", "__pycache__", ".pytest_cache", "*.egg-info",
                                  ".venv", "dist")


def clean_env(**extra: str) -> Dict[str, str]:
    """The environment without what would make a child import this checkout instead of what it installed."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV") and not k.startswith("PGWIRE_PROXY_")}
    env.update(extra)
    return env


def run(argv: List[str], cwd: Path, env: Dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(map(str, argv))} exited with {result.returncode}:\n{result.stdout[-6000:]}",
                    pytrace=False)
    return result


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory) -> Path:
    """The checkout as pip would see it (no build outputs), with a junk in-tree extension."""
    tree = tmp_path_factory.mktemp("source") / "pgwire-proxy"
    shutil.copytree(REPO, tree, ignore=_IGNORED)
    for stale in (tree / "python" / "pgwire_proxy").glob("_core*.so"):
        stale.unlink()
    (tree / "python" / "pgwire_proxy" / f"_core{EXT_SUFFIX}").write_bytes(STALE_EXTENSION)
    return tree


@pytest.fixture(scope="module")
def venv(tmp_path_factory, source_tree) -> Path:
    """A fresh venv over Debian's python3 with the package pip-installed from source_tree (compiles the
    core once for the whole module; the build log is kept next to it)."""
    base = tmp_path_factory.mktemp("venv")
    venv_dir = base / "venv"
    env = clean_env()
    run([sys.executable, "-m", "venv", "--system-site-packages", str(venv_dir)], base, env, 120)
    started = time.monotonic()
    result = run([str(venv_dir / "bin" / "python"), "-m", "pip", "install", "--no-build-isolation", "--no-index",
                  "--no-cache-dir", "-v", str(source_tree)], base, clean_env(CMAKE_BUILD_PARALLEL_LEVEL="2"), 900)
    (base / "pip-install.log").write_text(result.stdout)
    print(f"pip install took {time.monotonic() - started:.0f}s")
    return venv_dir


def site_packages(venv_dir: Path) -> Path:
    (path,) = venv_dir.glob("lib/python3*/site-packages")
    return path


@pytest.mark.slow
def test_plugin_from_the_installed_package_outside_the_repo(venv, pg_upstream, tmp_path):
    """A project that only pip-installed the package: no conftest, the fixtures come from the pytest11
    entry point, the upstream is this session's cluster (PGWIRE_PROXY_TEST_DSN)."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_with_plugin.py").write_text(textwrap.dedent('''
        import psycopg
        import pgwire_proxy as package


        def test_query_through_the_fixture(pgwire_proxy, pg_upstream, assert_queries, request):
            plugin = request.config.pluginmanager.get_plugin("pgwire_proxy")
            assert plugin is package.pytest_plugin, "the plugin did not come from the pytest11 entry point"
            assert package.__file__.startswith(EXPECTED_PREFIX), package.__file__
            assert not pg_upstream.throwaway  # PGWIRE_PROXY_TEST_DSN's server, not a new cluster
            with psycopg.connect(pgwire_proxy.dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
                with assert_queries(pgwire_proxy, count=1) as queries:
                    assert conn.execute("select 40 + 2").fetchone() == (42,)
            assert queries[0].sql == "select 40 + 2" and queries[0].rows == 1 and queries[0].outcome == "ok"
            assert pgwire_proxy.stats()["queries_total"] == 1
    ''').replace("EXPECTED_PREFIX", repr(str(venv))))
    result = run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
                 project, clean_env(PGWIRE_PROXY_TEST_DSN=pg_upstream.dsn), 300)
    assert "1 passed" in result.stdout, result.stdout


# A user's project outside the repo: its conftest fills the template every pgwire_database is cloned from.
USER_CONFTEST = '''
import psycopg
import pytest


@pytest.fixture(scope="session")
def pgwire_template_setup():
    def setup(template):
        with psycopg.connect(template.dsn, autocommit=True) as conn:
            conn.execute("create table accounts (id int primary key, balance int not null)")
            conn.execute("insert into accounts values (1, 100), (2, 0)")
    return setup
'''

USER_TESTS = '''
import os
import shutil
import subprocess
import sys

import psycopg
import psycopg2
import pytest
import sqlalchemy
from sqlalchemy import text

import pgwire_proxy


def test_psycopg3_with_its_defaults(pgwire_proxy_factory):
    # The fixtures' default (protocol="full", no limits): psycopg 3 needs no settings of its own.
    proxy = pgwire_proxy_factory()
    with psycopg.connect(proxy.dsn) as conn:
        with conn.transaction():
            conn.execute("create temporary table t (x int)")
            conn.cursor().executemany("insert into t values (%s)", [(1,), (2,)])
        assert conn.execute("select sum(x) from t where x > %s", [0]).fetchone() == (3,)
    assert "insert into t values ($1)" in [q.sql for q in proxy.queries()]


@pytest.fixture
def engine(pgwire_database):
    # A pool of one: every attempt below reuses the connection the failed COMMIT happened on.
    engine = sqlalchemy.create_engine(pgwire_database.url("postgresql+psycopg2"), pool_size=1, max_overflow=0)
    yield engine
    engine.dispose()


def transfer(engine, amount, backends):
    """The usual retry loop: the work in engine.begin(), again on a serialization failure; no ROLLBACK."""
    for attempt in range(1, 4):
        try:
            with engine.begin() as conn:
                backends.add(conn.execute(text("select pg_backend_pid()")).scalar())
                conn.execute(text("update accounts set balance = balance - :n where id = 1"), {"n": amount})
                conn.execute(text("update accounts set balance = balance + :n where id = 2"), {"n": amount})
            return attempt
        except sqlalchemy.exc.OperationalError as exc:
            if exc.orig.pgcode != "40001":
                raise
    raise AssertionError("still failing after 3 attempts")


def test_sqlalchemy_retries_an_injected_commit_failure(engine, pgwire_proxy, pgwire_faults):
    with engine.connect():
        pass  # SQLAlchemy's first-connect queries, before the counting starts
    pgwire_proxy.clear_queries()
    fault = pgwire_faults("^commit", ignore_case=True, sqlstate="40001", message="could not serialize access",
                          nth=2)
    backends = set()
    assert transfer(engine, 30, backends) == 1
    assert transfer(engine, 30, backends) == 2  # the 2nd COMMIT failed and was rolled back; the retry commits
    assert fault.hits == 1 and len(backends) == 1
    sql = [q.sql for q in pgwire_proxy.queries()]
    # psycopg2 sends no ROLLBACK after a failed COMMIT: the retry worked because the injected failure
    # ended the transaction, as PostgreSQL's own does.
    assert sql.count("COMMIT") == 3 and "ROLLBACK" not in sql, sql
    with engine.connect() as conn:
        assert conn.execute(text("select id, balance from accounts order by id")).all() == [(1, 40), (2, 60)]


def test_the_next_test_starts_from_the_template_again(pgwire_database, pgwire_proxy):
    conn = psycopg2.connect(pgwire_database.dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("select current_database(), array_agg(balance order by id) from accounts")
            assert cur.fetchone() == (pgwire_database.name, [100, 0])  # not the transfers above
    finally:
        conn.close()


def test_the_binary_is_on_the_venvs_path(pgwire_proxy_process_factory):
    binary = shutil.which("pgwire-proxy")
    assert binary == os.path.join(sys.prefix, "bin", "pgwire-proxy")
    assert str(pgwire_proxy.find_binary()) == binary
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    assert out == f"pgwire-proxy {pgwire_proxy.__version__}\\n"
    proxy = pgwire_proxy_process_factory()
    with psycopg.connect(proxy.dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        assert conn.execute("select %s::int + 1", [41]).fetchone() == (42,)
'''


@pytest.mark.slow
def test_a_users_suite_runs_against_the_install(venv, pg_upstream, tmp_path):
    """A user's own suite, outside the repo, run with the venv's pytest and the venv's bin/ on PATH:
    psycopg 3 with its defaults, SQLAlchemy + psycopg2 retrying an injected COMMIT failure with no
    explicit ROLLBACK, a database per test from a template its conftest fills, the binary from PATH."""
    project = tmp_path / "user-project"
    project.mkdir()
    (project / "conftest.py").write_text(USER_CONFTEST)
    (project / "test_app.py").write_text(USER_TESTS)
    env = clean_env(PGWIRE_PROXY_TEST_DSN=pg_upstream.dsn,
                    PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    result = run([str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
                 project, env, 300)
    assert re.search(r"^4 passed in ", result.stdout, re.M), result.stdout


@pytest.mark.slow
def test_installed_package_has_the_fresh_extension_stubs_and_entry_point(venv):
    package = site_packages(venv) / "pgwire_proxy"
    extension = package / f"_core{EXT_SUFFIX}"
    assert extension.read_bytes() != STALE_EXTENSION, "the in-tree _core was packaged instead of a fresh build"
    assert {p.name for p in package.iterdir()} >= {"__init__.py", "proxy.py", "pytest_plugin.py", "cluster.py",
                                                   "process.py", "local.py", "_version.py", "_checkout.py",
                                                   "_core.pyi", "py.typed", extension.name}
    probe = textwrap.dedent('''
        import importlib.metadata as md, pgwire_proxy, pgwire_proxy._core as core
        (ep,) = [ep for ep in md.entry_points(group="pytest11") if ep.name == "pgwire_proxy"]
        assert ep.value == "pgwire_proxy.pytest_plugin", ep
        assert md.version("pgwire-proxy") == pgwire_proxy.__version__
        renamed = {"database": "databases"}  # the repeatable --database NAME=DSN is Proxy(databases={...})
        assert sorted(pgwire_proxy.option_names()) == sorted(renamed.get(s["name"], s["name"].replace("-", "_")) for s in core.option_specs())
        print(core.__file__)
    ''')
    out = run([str(venv / "bin" / "python"), "-c", probe], venv.parent, clean_env(), 60).stdout
    assert out.strip() == str(extension)


def installed_version(venv_dir: Path) -> str:
    return run([str(venv_dir / "bin" / "python"), "-c", "import pgwire_proxy; print(pgwire_proxy.__version__)"],
               venv_dir.parent, clean_env(), 60).stdout.strip()


@pytest.mark.slow
def test_installed_binary_is_in_the_venv_bin_and_has_the_package_version(venv, tmp_path):
    binary = venv / "bin" / "pgwire-proxy"
    assert binary.is_file() and os.access(binary, os.X_OK), sorted(p.name for p in (venv / "bin").iterdir())
    out = run([str(binary), "--version"], tmp_path, clean_env(), 30).stdout
    assert out == f"pgwire-proxy {installed_version(venv)}\n"
    # The installed package finds it without the venv on PATH (clean_env's PATH is this session's).
    probe = "import pgwire_proxy; print(pgwire_proxy.find_binary())"
    found = run([str(venv / "bin" / "python"), "-c", probe], tmp_path, clean_env(), 60).stdout.strip()
    assert found == str(binary)


@pytest.mark.slow
def test_local_runs_from_the_install_outside_the_repo(venv, tmp_path):
    """`python -m pgwire_proxy.local` from an install: --help, then a real run (a throwaway cluster and
    the installed binary) until SIGINT."""
    python = str(venv / "bin" / "python")
    assert "--port" in run([python, "-m", "pgwire_proxy.local", "--help"], tmp_path, clean_env(), 60).stdout
    proc = subprocess.Popen([python, "-m", "pgwire_proxy.local", "--port", "0"], cwd=tmp_path, env=clean_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = b""
    try:
        deadline = time.monotonic() + 120
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while b"Press Ctrl+C" not in output and time.monotonic() < deadline and proc.poll() is None:
                if sel.select(timeout=1):
                    output += os.read(proc.stdout.fileno(), 65536)
        assert b"Press Ctrl+C" in output, output.decode(errors="replace")
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        output += rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text
    assert re.search(r"^pgwire-proxy listening on 127\.0\.0\.1:\d+, in front of PostgreSQL", text, re.M), text
    assert "throwaway cluster removed" in text, text


def test_sdist_has_what_the_build_needs_and_no_extension(source_tree, tmp_path):
    dist = tmp_path / "dist"
    tree = tmp_path / "tree"
    shutil.copytree(source_tree, tree)
    run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(dist)!r})"],
        tree, clean_env(), 120)
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    needed = {"CMakeLists.txt", "setup.py", "pyproject.toml", "python/pgwire_proxy/_core.pyi",
              "python/pgwire_proxy/py.typed", "python/pgwire_proxy/pytest_plugin.py",
              "docs/testing-with-pgwire-proxy.md"}
    needed |= {str(p.relative_to(source_tree)) for p in (source_tree / "cpp").rglob("*") if p.is_file()}
    assert needed - names == set()
    assert [n for n in names if n.endswith(".so")] == []


def test_versions_agree():
    """One version, written in python/pgwire_proxy/_version.py: pyproject.toml takes it from there (dynamic),
    CMake's project(VERSION) reads it, and so does the binary's --version."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+, as Debian 12's python3
    import pgwire_proxy
    from pgwire_proxy.process import find_binary
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pgwire_proxy._version.__version__"}
    assert re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", pgwire_proxy.__version__)
    binary = subprocess.run([str(find_binary()), "--version"], capture_output=True, text=True, check=True)
    assert binary.stdout == f"pgwire-proxy {pgwire_proxy.__version__}\n"


def test_cmake_build_writes_nothing_into_the_source_tree(tmp_path):
    """Every artifact of a configured build (CMake's file API: each target's outputs, the binary, _core and
    the test suites) is under the build directory, and configuring changes nothing in the checkout."""
    if shutil.which("cmake") is None:
        pytest.skip("no cmake")
    build = tmp_path / "build"
    query = build / ".cmake" / "api" / "v1" / "query" / "codemodel-v2"
    query.parent.mkdir(parents=True)
    query.touch()
    git = shutil.which("git") and (REPO / ".git").exists()

    def tree_state() -> str:
        return subprocess.run(["git", "status", "--porcelain", "--ignored=matching"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout if git else ""

    before = tree_state()
    run(["cmake", "-S", str(REPO), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release", "-DPGWIRE_PROXY_TESTS=ON",
         f"-DPython_EXECUTABLE={sys.executable}"], tmp_path, clean_env(), 300)
    assert tree_state() == before
    reply = build / ".cmake" / "api" / "v1" / "reply"
    (index,) = reply.glob("index-*.json")
    codemodel = json.loads((reply / json.loads(index.read_text())["reply"]["codemodel-v2"]["jsonFile"]).read_text())
    artifacts: Dict[str, Path] = {}
    for configuration in codemodel["configurations"]:
        for target in configuration["targets"]:
            details = json.loads((reply / target["jsonFile"]).read_text())
            for artifact in details.get("artifacts", []):
                artifacts[f"{details['name']}: {artifact['path']}"] = (build / artifact["path"]).resolve()
    names = {key.split(":")[0] for key in artifacts}
    assert {"pgwire-proxy", "_core", "pgwire_proxy_tests"} <= names, sorted(artifacts)
    outside = {key: str(path) for key, path in artifacts.items() if not path.is_relative_to(build.resolve())}
    assert outside == {}, "build outputs outside the build directory"


def test_import_without_the_extension_keeps_the_cluster_helpers(tmp_path):
    """`import pgwire_proxy` needs no compiled code; making a Proxy says how to get it."""
    package = tmp_path / "pgwire_proxy"
    shutil.copytree(REPO / "python" / "pgwire_proxy", package, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    probe = textwrap.dedent('''
        import pgwire_proxy, pgwire_proxy.pytest_plugin
        from pgwire_proxy import Proxy, QueryRecord, ProxyError, ThrowawayPostgres, existing
        assert existing("host=db port=6543 user=u").port == 6543
        assert callable(ThrowawayPostgres().start)
        try:
            Proxy("host=127.0.0.1")
        except ImportError as exc:
            print(exc)
        else:
            raise SystemExit("Proxy() worked without the extension")
    ''')
    out = run([sys.executable, "-c", probe], tmp_path, clean_env(), 60).stdout
    assert "pgwire_proxy.Proxy needs the compiled extension pgwire_proxy._core" in out, out
    assert "pip install" in out and "scripts/build.sh" in out
