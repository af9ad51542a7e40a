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
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq >/dev/null
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
