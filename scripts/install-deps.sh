#!/usr/bin/env bash
# Installs the Debian packages that building and testing pgwire-proxy need, and the npm packages of the
# driver matrix (tests/e2e/drivers/node_modules, from its package-lock.json). Idempotent; quiet when done.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  cmake g++ make pkg-config
  libpq-dev libpoco-dev libssl-dev libboost-test-dev
  pybind11-dev python3-pybind11 python3-dev python3-setuptools python3-pip python3-venv
  python3-pytest python3-psycopg python3-pexpect python3-yaml openssl
  prometheus-cpp-dev
  postgresql-15 postgresql-client-15 pgbouncer haproxy
  python3-matplotlib  # bench/run.py --chart
  # PostgreSQL's regression suite (scripts/regress.sh): dpkg-source unpacks its source package
  dpkg-dev
  # the driver matrix (tests/e2e/test_drivers.py)
  python3-psycopg2 python3-asyncpg python3-sqlalchemy pgcli
  libpostgresql-jdbc-java default-jdk-headless ruby-pg libdbd-pg-perl
)
# Node and npm: Debian's, unless a node with its own npm is already there (NodeSource's nodejs
# package conflicts with Debian's npm package).
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)

missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
  [[ $status == "install ok installed" ]] || missing+=("$package")
done

if ((${#missing[@]} > 0)); then
  if [[ $(id -u) -ne 0 ]]; then
    sudo=(sudo)
  else
    sudo=()
  fi
  echo "install-deps: missing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  echo "install-deps: apt-get update" >&2
  "${sudo[@]}" apt-get update -qq >/dev/null
  echo "install-deps: apt-get install (${#missing[@]} packages and their dependencies; a few minutes on a fresh machine)" >&2
  # One line per package as it is set up, so a long install shows it is moving.
  "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" |
    { grep --line-buffered -E '^Setting up ' | sed -u 's/^/install-deps: /' >&2 || true; }
  echo "install-deps: done" >&2
fi

# The driver matrix's node packages, exactly as locked; only when the lock file is newer than the install
# (and only in a source tree: docker/Dockerfile runs this script alone, before copying the tree).
drivers=tests/e2e/drivers
if [[ -f $drivers/package-lock.json && ! $drivers/node_modules/.package-lock.json -nt $drivers/package-lock.json ]]; then
  echo "install-deps: npm ci in $drivers" >&2
  (cd "$drivers" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
