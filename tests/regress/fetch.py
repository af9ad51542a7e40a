"""PostgreSQL's own regression suite for the installed server, fetched the way Debian allows.

The suite (src/test/regress: sql/, expected/, data/, parallel_schedule, regress.c) comes from the
source package of the installed server's exact version (`apt-get source postgresql-15=VERSION`), so
its expected outputs are the ones that version produces. pg_regress itself is in postgresql-client-15
(lib/pgxs/src/test/regress/pg_regress). regress.so, the C functions the suite loads, is not shipped:
it is compiled from the source's regress.c against the server headers of the same version, taken
from postgresql-server-dev-15=VERSION unpacked beside it (`apt-get download` + `dpkg -x`; nothing is
installed). autoinc.so and refint.so, which the suite also loads, are the installed ones (contrib).

Everything lands in build-regress/ (PGWIRE_PROXY_REGRESS_DIR), once per version: a rerun finds
build-regress/<version>/READY and fetches nothing.

apt-get source needs a deb-src entry. When apt has none that offers the installed version, one is
written to /etc/apt/sources.list.d/pgwire-proxy-deb-src.sources for exactly the archives, suites and
components that `apt-cache policy` names for the installed version (the same URIs and Signed-By as the
deb entries apt already uses), followed by one `apt-get update`. Rewritten only when its text would
change; root only (otherwise it says what to add).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, NamedTuple, Tuple

ROOT = Path(__file__).resolve().parents[2]
SOURCES_FILE = Path("/etc/apt/sources.list.d/pgwire-proxy-deb-src.sources")


class Suite(NamedTuple):
    """What a run needs: the pristine suite directory, the directory with regress.so, the binaries."""
    version: str          # Debian version of the installed server, e.g. 15.18-0+deb12u1
    major: str            # 15
    srcdir: Path          # src/test/regress of that version (sql/, expected/, data/, parallel_schedule)
    dlpath: Path          # regress.so, autoinc.so, refint.so
    bindir: Path          # /usr/lib/postgresql/15/bin (psql, which pg_regress runs)
    pg_regress: Path


def log(msg: str) -> None:
    print(f"regress: {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    return Path(os.environ.get("PGWIRE_PROXY_REGRESS_DIR") or ROOT / "build-regress")


def _run(argv: List[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc


def installed_server() -> Tuple[str, str, Path]:
    """(major, Debian version, bindir) of the server the throwaway clusters use."""
    sys.path.insert(0, str(ROOT / "python"))
    from pgwire_proxy.cluster import find_pg_bindir
    bindir = find_pg_bindir()
    major = bindir.parent.name
    package = f"postgresql-{major}"
    version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True,
                             text=True).stdout.strip()
    if not version:
        raise RuntimeError(f"{package} is not installed as a Debian package (found {bindir}); "
                           "the regression suite is fetched as its Debian source package")
    return major, version, bindir


# --- the deb-src entry -------------------------------------------------------------------------

def _source_versions(package: str) -> List[str]:
    out = subprocess.run(["apt-cache", "showsrc", package], capture_output=True, text=True).stdout
    return re.findall(r"^Version: (\S+)$", out, re.M)


def _archives_of_installed(package: str, version: str) -> List[Tuple[str, str, str]]:
    """(uri, suite, component) of every archive `apt-cache policy` lists for the installed version."""
    out = subprocess.run(["apt-cache", "policy", package], capture_output=True, text=True,
                         env={**os.environ, "LC_ALL": "C"}).stdout
    archives: List[Tuple[str, str, str]] = []
    current = None
    for line in out.splitlines():
        head = re.match(r"^ (?:\*\*\*| {3}) (\S+) -?\d+$", line)
        if head:
            current = head.group(1)
            continue
        entry = re.match(r"^\s+-?\d+ (\S+) (\S+)/(\S+) \S+ Packages$", line)
        if entry and current == version:
            archives.append((entry.group(1), entry.group(2), entry.group(3)))
    return archives


def _signed_by() -> Dict[str, str]:
    """URI (no trailing slash) -> Signed-By of the deb entries apt uses (deb822 and one-line forms)."""
    found: Dict[str, str] = {}
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        if Path(path) == SOURCES_FILE:
            continue
        for stanza in re.split(r"\n\s*\n", Path(path).read_text(errors="replace")):
            fields = dict(re.findall(r"^([A-Za-z-]+):[ \t]*(.*)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split() and fields.get("Signed-By"):
                for uri in fields.get("URIs", "").split():
                    found.setdefault(uri.rstrip("/"), fields["Signed-By"].strip())
    lists = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]
    for path in lists:
        if not os.path.exists(path):
            continue
        for line in Path(path).read_text(errors="replace").splitlines():
            m = re.match(r"^\s*deb\s+\[([^\]]*)\]\s+(\S+)", line)
            if m:
                opt = re.search(r"signed-by=(\S+)", m.group(1))
                if opt:
                    found.setdefault(m.group(2).rstrip("/"), opt.group(1))
    return found


def ensure_deb_src(package: str, version: str) -> None:
    if version in _source_versions(package):
        return
    archives = _archives_of_installed(package, version)
    if not archives:
        raise RuntimeError(f"apt knows no archive offering {package} {version} (apt-cache policy {package}); "
                           f"its source package cannot be fetched. Install the candidate version "
                           f"(apt-get install {package}) and run again")
    keys = _signed_by()
    stanzas = []
    for uri, suite, component in archives:
        lines = ["Types: deb-src", f"URIs: {uri}", f"Suites: {suite}", f"Components: {component}"]
        if keys.get(uri.rstrip("/")):
            lines.append(f"Signed-By: {keys[uri.rstrip('/')]}")
        stanzas.append("\n".join(lines) + "\n")
    text = ("# Written by pgwire-proxy's tests/regress/fetch.py: the source packages of the archives that\n"
            f"# offer the installed {package} ({version}), for PostgreSQL's regression suite.\n\n"
            + "\n".join(stanzas))
    if not (SOURCES_FILE.exists() and SOURCES_FILE.read_text() == text):
        if os.geteuid() != 0:
            raise RuntimeError(f"apt has no deb-src entry offering {package} {version}; as root, put this in "
                               f"{SOURCES_FILE} and run apt-get update:\n{text}")
        log(f"writing {SOURCES_FILE} ({', '.join(f'{s}/{c}' for _, s, c in archives)})")
        SOURCES_FILE.write_text(text)
    log("apt-get update (for the deb-src entry)")
    _run(["apt-get", "update", "-qq"])
    if version not in _source_versions(package):
        raise RuntimeError(f"after apt-get update apt still offers no source of {package} {version} "
                           f"(it offers: {', '.join(_source_versions(package)) or 'none'})")


# --- fetch, unpack, build -------------------------------------------------------------------------

def _apt_fetch(argv: List[str], cwd: Path) -> None:
    # apt drops to the _apt user for downloads; a directory it can write avoids the unsandboxed warning.
    if os.geteuid() == 0:
        try:
            shutil.chown(cwd, user="_apt")
        except (LookupError, OSError):
            pass
    _run(argv, cwd=cwd)


def _build_regress_so(source: Path, headers: Path, out: Path) -> None:
    cflags = _run(["pg_config", "--cflags"]).stdout.split()
    _run(["gcc", *cflags, "-fPIC", "-D_GNU_SOURCE", f"-I{headers}", f"-I{headers}/port",
          "-shared", "-o", str(out), str(source)])


def ensure_suite() -> Suite:
    major, version, bindir = installed_server()
    package = f"postgresql-{major}"
    pg_regress = Path(f"/usr/lib/postgresql/{major}/lib/pgxs/src/test/regress/pg_regress")
    if not pg_regress.is_file():
        raise RuntimeError(f"{pg_regress} not found (it is in postgresql-client-{major})")
    upstream = version.split("-")[0].split(":")[-1]  # 15.18-0+deb12u1 -> 15.18
    for tool in (pg_regress, bindir / "postgres", bindir / "psql"):
        shown = _run([str(tool), "--version"]).stdout
        if not re.search(rf"\b{re.escape(upstream)}\b", shown):
            raise RuntimeError(f"{tool} reports {shown.strip()!r}, not {upstream}: the server, psql and "
                               "pg_regress must be the same version as the suite")

    top = cache_dir() / f"pg-{version}"
    suite = Suite(version, major, top / "regress", top / "lib", bindir, pg_regress)
    if (top / "READY").is_file():
        return suite

    log(f"fetching the regression suite of {package} {version} into {top}")
    ensure_deb_src(package, version)
    shutil.rmtree(top, ignore_errors=True)
    top.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix="fetch-", dir=top))
    try:
        log(f"apt-get source --download-only {package}={version}")
        _apt_fetch(["apt-get", "source", "-q", "--download-only", f"{package}={version}"], work)
        log(f"apt-get download postgresql-server-dev-{major}={version}")
        _apt_fetch(["apt-get", "download", "-q", f"postgresql-server-dev-{major}={version}"], work)
        dsc = next(work.glob(f"{package}_*.dsc"))
        log(f"dpkg-source -x {dsc.name} (the Debian patches applied)")
        _run(["dpkg-source", "--no-copy", "-x", str(dsc), str(work / "src")], cwd=work)
        shutil.copytree(work / "src" / "src" / "test" / "regress", suite.srcdir)
        deb = next(work.glob(f"postgresql-server-dev-{major}_*.deb"))
        _run(["dpkg-deb", "-x", str(deb), str(work / "dev")])
        headers = work / "dev" / "usr" / "include" / "postgresql" / major / "server"
        suite.dlpath.mkdir()
        log("compiling regress.so from regress.c against the server headers of the same version")
        _build_regress_so(suite.srcdir / "regress.c", headers, suite.dlpath / "regress.so")
        pkglibdir = Path(_run(["pg_config", "--pkglibdir"]).stdout.strip())
        for name in ("autoinc.so", "refint.so"):
            if not (pkglibdir / name).is_file():
                raise RuntimeError(f"{pkglibdir / name} not found (postgresql-{major} ships it)")
            (suite.dlpath / name).symlink_to(pkglibdir / name)
    except BaseException:
        shutil.rmtree(top, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (top / "READY").write_text(f"{package} {version}\n")
    tests = count_schedule(suite.srcdir / "parallel_schedule")
    log(f"suite ready: {tests} tests in parallel_schedule")
    return suite


def count_schedule(schedule: Path) -> int:
    return sum(len(line.split()) - 1 for line in schedule.read_text().splitlines() if line.startswith("test:"))


if __name__ == "__main__":
    s = ensure_suite()
    print(s)
