"""No Docker engine runs here: keep docker/ consistent with the build instead (packages, ports)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE = ROOT / "docker" / "docker-compose.yml"
# Always in the slim base image.
BASE_IMAGE_PACKAGES = {"libc6", "libgcc-s1", "libstdc++6", "zlib1g", "libgnutls30", "libp11-kit0", "libidn2-0",
                       "libunistring2", "libtasn1-6", "libnettle8", "libhogweed6", "libgmp10", "libffi8",
                       "libpcre3", "libcom-err2", "libkeyutils1"}


def runtime_packages() -> set:
    text = DOCKERFILE.read_text()
    stage = text[text.index("AS runtime"):]
    install = re.search(r"apt-get install[^\n]*\\\n(.*?)\\\n", stage, re.S)
    assert install, "no apt-get install in the runtime stage"
    return set(install.group(1).split())


def test_build_stage_uses_the_install_script():
    text = DOCKERFILE.read_text()
    build = text[:text.index("AS runtime")]
    assert "FROM debian:bookworm AS build" in build
    assert "RUN scripts/install-deps.sh" in build, "the image must install what the tests and CI install"
    assert "scripts/build.sh" in build


def test_runtime_stage_has_every_library_the_binary_links():
    binary = ROOT / "build" / "pgwire-proxy"
    libraries = [line.split("=>")[1].split()[0] for line in
                 subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout.splitlines()
                 if "=>" in line and "/" in line.split("=>")[1]]
    needed = set()
    for library in libraries:
        real = str(Path(library).resolve())
        owner = subprocess.run(["dpkg", "-S", real], capture_output=True, text=True)
        if owner.returncode != 0:
            owner = subprocess.run(["dpkg", "-S", library], capture_output=True, text=True)
        needed.add(owner.stdout.split(":")[0])
    # libpq's own dependencies (Kerberos, LDAP, SASL) come with libpq5; the rest must be named.
    transitive_of_libpq = {p for p in needed if p.startswith(("libkrb5", "libk5crypto", "libgssapi", "libldap",
                                                               "libsasl2", "libkrb5support"))}
    missing = needed - runtime_packages() - BASE_IMAGE_PACKAGES - transitive_of_libpq - {"libexpat1"}
    assert not missing, f"the runtime stage lacks {sorted(missing)}"


def test_runtime_image_runs_as_a_non_root_user_with_the_binary_as_entrypoint():
    stage = DOCKERFILE.read_text().split("AS runtime", 1)[1]
    assert re.search(r"^USER (?!root)\S+", stage, re.M)
    assert 'ENTRYPOINT ["/usr/local/bin/pgwire-proxy"]' in stage
    assert "EXPOSE 5433 9187" in stage


def test_compose_file_parses_and_wires_the_services():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "proxy", "e2e"}
    assert services["postgres"]["image"] == "postgres:15"
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    proxy = services["proxy"]
    assert proxy["build"]["dockerfile"] == "docker/Dockerfile"
    assert "5433:5433" in proxy["ports"] and "9187:9187" in proxy["ports"]
    assert "PGWIRE_PROXY_UPSTREAM_DSN" in proxy["environment"]
    assert proxy["depends_on"]["postgres"]["condition"] == "service_healthy"
    e2e = services["e2e"]
    assert e2e["build"]["target"] == "build"
    assert "PGWIRE_PROXY_TEST_DSN" in e2e["environment"]
    assert e2e["command"] == ["./scripts/test.sh"]
    # The ports the compose file publishes are the ones the docs tell operators about.
    operations = (ROOT / "docs" / "operations.md").read_text()
    for port in ("5433", "9187"):
        assert port in operations, f"docs/operations.md does not mention port {port}"
