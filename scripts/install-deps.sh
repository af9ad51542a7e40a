#!/usr/bin/env bash
# Installs the Debian packages that building and testing pgwire-proxy need. Idempotent; quiet when done.
set -euo pipefail

packages=(
  cmake g++ make pkg-config
  libpq-dev libpoco-dev libssl-dev libboost-test-dev
  pybind11-dev python3-pybind11 python3-dev python3-setuptools python3-pip python3-venv
  python3-pytest python3-psycopg python3-pexpect python3-yaml openssl
  prometheus-cpp-dev
  postgresql-15 postgresql-client-15 pgbouncer haproxy
)

missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
  [[ $status == "install ok installed" ]] || missing+=("$package")
done
((${#missing[@]} == 0)) && exit 0

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
