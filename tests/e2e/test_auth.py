"""Client authentication (--auth): SCRAM-SHA-256 against an auth file, passthrough of the client's
password to an upstream whose pg_hba.conf asks scram-sha-256 for some roles, compared with direct."""

from __future__ import annotations

import os
import re
import signal
import socket
import struct

import psycopg
import pytest

import wire
from psql import run_psql
from support import wait_until
from test_tls import pki, tls_options  # noqa: F401 - the module's certificates

in_process_only = pytest.mark.skipif(os.environ.get("PGWIRE_PROXY_FIXTURE") == "process",
                                     reason="reads the in-process Proxy's stats/capture/faults API")

ROLE = "pgwp_auth_scram"          # upstream: scram-sha-256
PASSWORD = "scram pw"
PLAIN = "pgwp_auth_plain"         # only in the proxy's auth file, with a plain-text password
PLAIN_PASSWORD = "plain 'pw'"
GHOST = "pgwp_auth_ghost"         # upstream: a scram-sha-256 rule, but no such role
READ_TIMEOUT = 30.0


def without_port(text: str) -> str:
    return re.sub(r"port \d+", "port <port>", text)


def connect_error(dsn: str) -> str:
    with pytest.raises(psycopg.OperationalError) as excinfo:
        psycopg.connect(dsn, connect_timeout=20)
    return without_port(str(excinfo.value))


@pytest.fixture(scope="module")
def scram_roles(pg_upstream):
    """pg_hba.conf asks scram-sha-256 for ROLE and GHOST (which does not exist); others stay trusted."""
    if not pg_upstream.throwaway:
        pytest.skip("needs to edit pg_hba.conf of the throwaway cluster")
    pg_upstream.execute(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN "
                        f"CREATE ROLE {ROLE} LOGIN; END IF; END $$")
    pg_upstream.execute(f"SET password_encryption = 'scram-sha-256'; ALTER ROLE {ROLE} PASSWORD '{PASSWORD}'")
    for role in (ROLE, GHOST):
        pg_upstream.add_hba_rule(f"host all {role} 127.0.0.1/32 scram-sha-256")
    verifier = pg_upstream.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", [ROLE])[0][0]
    assert verifier.startswith("SCRAM-SHA-256$"), verifier
    return verifier


def write_auth_file(path, entries, mode=0o600):
    path.write_text("; pgwire-proxy test users\n" + "".join(
        '"{}" "{}"\n'.format(user.replace('"', '""'), secret.replace('"', '""')) for user, secret in entries))
    os.chmod(path, mode)
    return str(path)


@pytest.fixture
def auth_file(tmp_path, scram_roles):
    return write_auth_file(tmp_path / "userlist.txt", [(ROLE, scram_roles), (PLAIN, PLAIN_PASSWORD)])


@pytest.fixture
def scram_proxy(pg_upstream, pgwire_proxy_factory, auth_file):
    # The upstream credentials stay the DSN's: every session runs as ROLE upstream.
    return pgwire_proxy_factory(pg_upstream.dsn_with(user=ROLE, password=PASSWORD), auth="scram-sha-256",
                                auth_file=auth_file)


# ---- scram-sha-256 ------------------------------------------------------------------------------

def test_psql_with_the_right_password_as_direct(pg_upstream, scram_proxy):
    sql = ["SELECT current_user, current_database()"]
    direct = run_psql(pg_upstream.dsn_with(user=ROLE, password=None), commands=sql, env={"PGPASSWORD": PASSWORD})
    proxied = run_psql(scram_proxy.dsn_with(user=ROLE), commands=sql, env={"PGPASSWORD": PASSWORD})
    assert direct.returncode == 0, direct.stdout
    assert proxied.stdout == direct.stdout


@in_process_only
def test_psycopg_right_and_wrong_password_and_unknown_user_as_direct(pg_upstream, scram_proxy):
    with psycopg.connect(scram_proxy.dsn_with(user=ROLE, password=PASSWORD), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (ROLE,)
    # A plain-text password in the auth file works the same; the upstream user is still the DSN's.
    with psycopg.connect(scram_proxy.dsn_with(user=PLAIN, password=PLAIN_PASSWORD), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (ROLE,)
    for user, password in ((ROLE, "wrong"), (GHOST, "anything")):
        direct = connect_error(pg_upstream.dsn_with(user=user, password=password))
        assert f'password authentication failed for user "{user}"' in direct, direct
        assert connect_error(scram_proxy.dsn_with(user=user, password=password)) == direct
    stats = scram_proxy.stats()["auth_failures"]
    assert (stats["wrong_password"], stats["unknown_user"]) == (1, 1), stats


@in_process_only
def test_no_password_at_all_as_direct(pg_upstream, scram_proxy):
    direct = run_psql(pg_upstream.dsn_with(user=ROLE, password=None), commands=["SELECT 1"], extra_args=["-w"])
    proxied = run_psql(scram_proxy.dsn_with(user=ROLE), commands=["SELECT 1"], extra_args=["-w"])
    assert b"no password supplied" in direct.stdout, direct.stdout
    assert without_port(proxied.stdout.decode()) == without_port(direct.stdout.decode())
    assert proxied.returncode == direct.returncode == 2
    wait_until(lambda: scram_proxy.stats()["auth_failures"]["abandoned"] == 1, "the abandoned exchange counted")


def test_the_wire_exchange_is_postgresqls(scram_proxy, pg_upstream):
    """The proxy's AuthenticationSASL offers what PostgreSQL offers without TLS."""
    def offer(host, port):
        with wire.RawConnection(host, port, timeout=READ_TIMEOUT) as conn:
            conn.send(wire.startup_packet({"user": ROLE, "database": "postgres"}))
            message = conn.read_message()
        return message.kind, message.body
    assert offer(scram_proxy.host, scram_proxy.port) == offer(pg_upstream.host, pg_upstream.port) == \
        ("R", struct.pack("!i", 10) + b"SCRAM-SHA-256\0\0")


def test_channel_binding_required_by_the_client_over_tls(pg_upstream, pgwire_proxy_factory, auth_file, pki):
    proxy = pgwire_proxy_factory(pg_upstream.dsn_with(user=ROLE, password=PASSWORD), auth="scram-sha-256",
                                 auth_file=auth_file, **tls_options(pki))
    dsn = proxy.dsn_with(user=PLAIN, password=PLAIN_PASSWORD, sslmode="require", channel_binding="require")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match=f'password authentication failed for user "{PLAIN}"'):
        psycopg.connect(proxy.dsn_with(user=PLAIN, password="wrong", sslmode="require", channel_binding="require"))
    # Without TLS there is nothing to bind to: libpq refuses before sending a password.
    with pytest.raises(psycopg.OperationalError, match="channel binding"):
        psycopg.connect(proxy.dsn_with(user=PLAIN, password=PLAIN_PASSWORD, sslmode="disable",
                                       channel_binding="require"))


@in_process_only
def test_a_client_stalling_mid_exchange_is_ended_by_the_startup_timeout(pg_upstream, pgwire_proxy_factory, auth_file):
    proxy = pgwire_proxy_factory(pg_upstream.dsn_with(user=ROLE, password=PASSWORD), auth="scram-sha-256",
                                 auth_file=auth_file, startup_timeout="1s")
    with wire.RawConnection(proxy.host, proxy.port, timeout=READ_TIMEOUT) as conn:
        conn.send(wire.startup_packet({"user": ROLE, "database": "postgres"}))
        assert conn.read_message().kind == "R"  # AuthenticationSASL; the client never answers
        try:
            rest = conn.read_until_eof()
        except socket.timeout:
            pytest.fail(f"the proxy did not end the stalled exchange within {READ_TIMEOUT}s")
    assert [m.kind for m in rest] == ["E"], rest
    assert rest[0].error_fields()["C"] == "08P01", rest[0].error_fields()
    assert proxy.stats()["auth_failures"]["timeout"] == 1


def test_failures_are_logged_with_the_client_address_never_a_password(pg_upstream, pgwire_proxy_process_factory,
                                                                      auth_file):
    proxy = pgwire_proxy_process_factory(pg_upstream.dsn_with(user=ROLE, password=PASSWORD), auth="scram-sha-256",
                                         auth_file=auth_file, metrics_address="127.0.0.1:0")
    connect_error(proxy.dsn_with(user=ROLE, password="secret-wrong-password"))
    line = wait_until(lambda: re.search(r"event=auth_failed .*", proxy.stderr_text()), "the auth_failed line").group(0)
    assert re.search(r"client=127\.0\.0\.1\b", line) and f"user={ROLE}" in line and "reason=wrong_password" in line
    assert "secret-wrong-password" not in proxy.stderr_text()
    import urllib.request
    port = re.search(r"metrics_port=(\d+)", proxy.stderr_text()).group(1)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'pgwire_proxy_auth_failures_total{reason="wrong_password"} 1' in text, text


def test_the_auth_file_reloads_on_sighup(pg_upstream, pgwire_proxy_process_factory, tmp_path, scram_roles):
    path = tmp_path / "userlist.txt"
    write_auth_file(path, [(PLAIN, "first pw")])
    proxy = pgwire_proxy_process_factory(pg_upstream.dsn_with(user=ROLE, password=PASSWORD), auth="scram-sha-256",
                                         auth_file=str(path))
    psycopg.connect(proxy.dsn_with(user=PLAIN, password="first pw")).close()
    write_auth_file(path, [(PLAIN, "second pw"), (ROLE, scram_roles)])
    os.kill(proxy.process.pid, signal.SIGHUP)
    line = wait_until(lambda: re.search(r"event=reloaded .*", proxy.stderr_text()), "the reloaded line").group(0)
    assert "auth-file" in line, line
    psycopg.connect(proxy.dsn_with(user=PLAIN, password="second pw")).close()
    psycopg.connect(proxy.dsn_with(user=ROLE, password=PASSWORD)).close()
    assert "password authentication failed" in connect_error(proxy.dsn_with(user=PLAIN, password="first pw"))
    # A malformed line fails the reload naming file:line; the previous users stay.
    path.write_text(f'"{PLAIN}" "second pw"\nnot quoted\n')
    os.kill(proxy.process.pid, signal.SIGHUP)
    wait_until(lambda: re.search(rf"event=reload_failed .*{re.escape(str(path))}:2", proxy.stderr_text()),
               "the reload_failed line naming file:line")
    psycopg.connect(proxy.dsn_with(user=PLAIN, password="second pw")).close()


@pytest.mark.parametrize("content, mode, expected", [
    ('"alice" "pw"\nbob pw\n', 0o600, ":2: expected"),
    ('"alice" "pw"\n', 0o644, "group or world access"),
])
def test_a_bad_auth_file_fails_startup(pg_upstream, pgwire_proxy_process_factory, tmp_path, content, mode, expected):
    path = tmp_path / "userlist.txt"
    path.write_text(content)
    os.chmod(path, mode)
    with pytest.raises(RuntimeError) as excinfo:
        pgwire_proxy_process_factory(auth="scram-sha-256", auth_file=str(path))
    assert expected in str(excinfo.value) and "exited with code 78" in str(excinfo.value), str(excinfo.value)


# ---- passthrough --------------------------------------------------------------------------------

@pytest.fixture
def passthrough_proxy(pg_upstream, pgwire_proxy_factory, scram_roles):
    return pgwire_proxy_factory(f"host={pg_upstream.host} port={pg_upstream.port}", auth="passthrough")


def test_passthrough_connects_as_the_client_with_its_password(pg_upstream, passthrough_proxy):
    with psycopg.connect(passthrough_proxy.dsn_with(user=ROLE, password=PASSWORD), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (ROLE,)
    sql = ["SELECT current_user"]
    direct = run_psql(pg_upstream.dsn_with(user=ROLE, password=None), commands=sql, env={"PGPASSWORD": PASSWORD})
    proxied = run_psql(passthrough_proxy.dsn_with(user=ROLE), commands=sql, env={"PGPASSWORD": PASSWORD})
    assert proxied.stdout == direct.stdout and direct.returncode == 0


@in_process_only
def test_passthrough_relays_the_upstreams_verdict_as_direct(pg_upstream, passthrough_proxy):
    for user, password in ((ROLE, "wrong"), (GHOST, "anything")):
        direct = connect_error(pg_upstream.dsn_with(user=user, password=password))
        assert connect_error(passthrough_proxy.dsn_with(user=user, password=password)) == direct
    direct = run_psql(pg_upstream.dsn_with(user=ROLE, password=None), commands=["SELECT 1"], extra_args=["-w"])
    proxied = run_psql(passthrough_proxy.dsn_with(user=ROLE), commands=["SELECT 1"], extra_args=["-w"])
    assert without_port(proxied.stdout.decode()) == without_port(direct.stdout.decode())
    assert passthrough_proxy.stats()["auth_failures"]["upstream_rejected"] == 2


def non_loopback_address():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") else address


@in_process_only
def test_passthrough_refuses_clear_text_passwords_off_loopback_without_tls(pg_upstream, pgwire_proxy_factory,
                                                                            scram_roles):
    address = non_loopback_address()
    if address is None:
        pytest.skip("no non-loopback address on this machine")
    proxy = pgwire_proxy_factory(f"host={pg_upstream.host} port={pg_upstream.port}", auth="passthrough",
                                 listen_address="0.0.0.0")
    with wire.RawConnection(address, proxy.port, timeout=READ_TIMEOUT) as conn:
        msgs = conn.startup({"user": ROLE, "database": "postgres"}) + conn.read_until_eof()
    assert [m.kind for m in msgs] == ["E"], msgs  # no password was ever asked for
    fields = msgs[0].error_fields()
    assert (fields["S"], fields["C"]) == ("FATAL", "28000"), fields
    assert "only over TLS or from a loopback client" in fields["M"], fields
    assert proxy.stats()["auth_failures"]["insecure_transport"] == 1


def test_passthrough_over_tls_from_anywhere(pg_upstream, pgwire_proxy_factory, scram_roles, pki):
    address = non_loopback_address()
    if address is None:
        pytest.skip("no non-loopback address on this machine")
    proxy = pgwire_proxy_factory(f"host={pg_upstream.host} port={pg_upstream.port}", auth="passthrough",
                                 listen_address="0.0.0.0", **tls_options(pki))
    dsn = proxy.dsn_with(host=address, user=ROLE, password=PASSWORD, sslmode="require")
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (ROLE,)
