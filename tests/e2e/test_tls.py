"""TLS: clients over TLS to the proxy (require, verify-ca, verify-full, client certificates, reload),
and the proxy over TLS to an upstream started with ssl=on."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
from pathlib import Path

import psycopg
import pytest

from pgwire_proxy.cluster import ThrowawayPostgres
from psql import normalise, run_psql
from support import wait_until
from tcp_relay import SSL_REQUEST, TcpRelay

SQL_DIR = Path(__file__).parent / "sql"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.crt",
            "-days", "2", "-subj", f"/CN={name}", cwd=directory)


def make_cert(directory: Path, name: str, ca: str, cn: str, san: str = "") -> None:
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={cn}", cwd=directory)
    ext = directory / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\n" if san else "basicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", ext.name, cwd=directory)
    os.chmod(directory / f"{name}.key", 0o600)


@pytest.fixture(scope="module")
def pki():
    """A throwaway CA with a server certificate for localhost/127.0.0.1 and a client certificate; a
    second, unrelated CA with its own server certificate (for wrong-CA and reload checks)."""
    directory = Path(tempfile.mkdtemp(prefix="pgwp-pki-"))
    os.chmod(directory, 0o755)  # the upstream cluster (another OS user when we are root) reads from here
    make_ca(directory, "ca")
    make_cert(directory, "server", "ca", "localhost", "DNS:localhost,IP:127.0.0.1")
    make_cert(directory, "client", "ca", "postgres")
    make_ca(directory, "other_ca")
    make_cert(directory, "other_server", "other_ca", "localhost", "DNS:localhost,IP:127.0.0.1")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def tls_options(pki: Path, **extra):
    return dict(enable_tls=True, tls_cert=str(pki / "server.crt"), tls_key=str(pki / "server.key"), **extra)


def dsn(proxy, **params) -> str:
    parts = {"host": "localhost", "port": proxy.port, "user": "postgres", "dbname": "postgres"}
    parts.update(params)
    return " ".join(f"{k}={v}" for k, v in parts.items())


def psql_one(conninfo: str, sql: str) -> subprocess.CompletedProcess:
    return run_psql(conninfo, extra_args=["-A", "-t"], commands=[sql])


# ---- client side -------------------------------------------------------------------------------

@pytest.fixture
def tls_proxy(pgwire_proxy_process_factory, pki):
    return pgwire_proxy_process_factory(**tls_options(pki))


@pytest.mark.parametrize("mode", ["require", "verify-ca", "verify-full"])
def test_psql_over_tls(tls_proxy, pg_upstream, pki, mode):
    # pg_stat_ssl describes the upstream's end: the proxy's own link, not the client's. The client's
    # TLS ends at the proxy, so that link is what the proxy's upstream DSN negotiates on its own:
    # the same as a direct connection with that DSN (plaintext to the throwaway cluster, ssl=off).
    sql = "select ssl, coalesce(version, 'none') from pg_stat_ssl where pid = pg_backend_pid()"
    (direct_ssl, direct_version), = pg_upstream.execute(sql)
    if pg_upstream.throwaway:
        assert (direct_ssl, direct_version) == (False, "none")
    out = psql_one(dsn(tls_proxy, sslmode=mode, sslrootcert=pki / "ca.crt"), sql)
    assert out.returncode == 0, out.stdout
    expected = f"{'t' if direct_ssl else 'f'}|{direct_version}".encode()
    assert out.stdout.strip() == expected, out.stdout
    # psql's own view of the client link.
    info = run_psql(dsn(tls_proxy, sslmode=mode, sslrootcert=pki / "ca.crt"), commands=[r"\conninfo"])
    assert b"SSL connection (protocol: TLSv1." in info.stdout, info.stdout


def test_psql_output_over_tls_matches_direct(pg_upstream, tls_proxy, pki):
    sql = "select g, md5(g::text), repeat('x', g % 50) from generate_series(1, 5000) g"
    direct = run_psql(pg_upstream.dsn, commands=[sql])
    proxied = run_psql(dsn(tls_proxy, sslmode="verify-full", sslrootcert=pki / "ca.crt"), commands=[sql])
    assert direct.returncode == 0 and normalise(direct.stdout) == normalise(proxied.stdout)


def test_wrong_ca_fails_with_psqls_certificate_error(tls_proxy, pki):
    out = psql_one(dsn(tls_proxy, sslmode="verify-ca", sslrootcert=pki / "other_ca.crt"), "select 1")
    assert out.returncode != 0
    assert b"certificate verify failed" in out.stdout, out.stdout


def test_host_name_mismatch_fails_verify_full(tls_proxy, pki):
    conninfo = dsn(tls_proxy, host="wrong.example", hostaddr="127.0.0.1", sslmode="verify-full",
                   sslrootcert=pki / "ca.crt")
    out = psql_one(conninfo, "select 1")
    assert out.returncode != 0
    assert b'does not match host name "wrong.example"' in out.stdout, out.stdout
    # verify-ca does not check the name: the same connection works.
    ok = psql_one(conninfo.replace("verify-full", "verify-ca"), "select 'ca only'")
    assert ok.stdout.strip() == b"ca only", ok.stdout


def test_without_tls_configured_sslrequest_gets_n(pgwire_proxy, pki):
    out = psql_one(dsn(pgwire_proxy, sslmode="require"), "select 1")
    assert out.returncode != 0
    assert b"server does not support SSL" in out.stdout, out.stdout
    assert psql_one(dsn(pgwire_proxy, sslmode="prefer"), "select 'plain'").stdout.strip() == b"plain"


def test_tls_required_refuses_plaintext(pgwire_proxy_process_factory, pki):
    proxy = pgwire_proxy_process_factory(**tls_options(pki, tls_required=True))
    out = psql_one(dsn(proxy, sslmode="disable"), "select 1")
    assert out.returncode != 0
    assert b"requires TLS" in out.stdout, out.stdout
    assert psql_one(dsn(proxy, sslmode="require"), "select 'tls'").stdout.strip() == b"tls"


def test_client_certificate_required_with_tls_ca(pgwire_proxy_process_factory, pki):
    proxy = pgwire_proxy_process_factory(**tls_options(pki, tls_ca=str(pki / "ca.crt")))
    without = psql_one(dsn(proxy, sslmode="require"), "select 1")
    assert without.returncode != 0, without.stdout
    with_cert = psql_one(dsn(proxy, sslmode="verify-full", sslrootcert=pki / "ca.crt",
                             sslcert=pki / "client.crt", sslkey=pki / "client.key"), "select 'mutual'")
    assert with_cert.stdout.strip() == b"mutual", with_cert.stdout


def raw_exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(payload)
        chunks = []
        while True:
            data = s.recv(4096)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def test_bytes_pipelined_after_sslrequest_are_refused(tls_proxy):
    ssl_request = struct.pack("!ii", 8, 80877103)
    startup = b"user\0postgres\0\0"
    startup = struct.pack("!ii", 8 + len(startup), 196608) + startup
    answer = raw_exchange(tls_proxy.port, ssl_request + startup)
    # Not 'S' (no handshake on injected plaintext): a FATAL ErrorResponse, then the close.
    assert answer[:1] == b"E", answer
    assert b"C08P01\0" in answer and b"SFATAL\0" in answer, answer


def test_gssencrequest_is_declined_even_with_tls(tls_proxy):
    with socket.create_connection(("127.0.0.1", tls_proxy.port), timeout=10) as s:
        s.sendall(struct.pack("!ii", 8, 80877104))
        assert s.recv(1) == b"N"


@pytest.mark.parametrize("problem", ["world-readable key", "mismatched key", "missing cert"])
def test_bad_tls_files_fail_startup_naming_the_file(pgwire_proxy_process_factory, pki, tmp_path, problem):
    cert, key = pki / "server.crt", tmp_path / "server.key"
    shutil.copy(pki / "server.key", key)
    os.chmod(key, 0o600)
    if problem == "world-readable key":
        os.chmod(key, 0o644)
        expected = "group or world access"
    elif problem == "mismatched key":
        shutil.copy(pki / "other_server.key", key)
        os.chmod(key, 0o600)
        expected = "does not match"
    else:
        cert = tmp_path / "missing.crt"
        expected = "missing.crt"
    with pytest.raises(RuntimeError) as excinfo:
        pgwire_proxy_process_factory(enable_tls=True, tls_cert=str(cert), tls_key=str(key))
    message = str(excinfo.value)
    assert expected in message, message


def test_sighup_reloads_certificates_without_dropping_clients(pgwire_proxy_process_factory, pki, tmp_path):
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(pki / "server.crt", cert)
    shutil.copy(pki / "server.key", key)
    os.chmod(key, 0o600)
    proxy = pgwire_proxy_process_factory(enable_tls=True, tls_cert=str(cert), tls_key=str(key))
    first = psycopg.connect(dsn(proxy, sslmode="verify-ca", sslrootcert=pki / "ca.crt"), autocommit=True)
    # Replace the files with a certificate from another CA and reload.
    shutil.copy(pki / "other_server.crt", cert)
    shutil.copy(pki / "other_server.key", key)
    os.kill(proxy.process.pid, signal.SIGHUP)

    def new_cert_served() -> bool:
        out = psql_one(dsn(proxy, sslmode="verify-ca", sslrootcert=pki / "other_ca.crt"), "select 1")
        return out.returncode == 0

    import time
    deadline = time.monotonic() + 20
    while not new_cert_served():
        assert time.monotonic() < deadline, "the reloaded certificate was never served"
        time.sleep(0.05)
    old = psql_one(dsn(proxy, sslmode="verify-ca", sslrootcert=pki / "ca.crt"), "select 1")
    assert b"certificate verify failed" in old.stdout, old.stdout
    # The client connected before the reload is still served.
    assert first.execute("select 'still here'").fetchone() == ("still here",)
    first.close()
    # The log names what changed: the files this time, nothing on a reload that finds them the same.
    os.kill(proxy.process.pid, signal.SIGHUP)
    while len(re.findall(r"event=reloaded .*", proxy.stderr_text())) < 2:
        assert time.monotonic() < deadline + 20, proxy.stderr_text()
        time.sleep(0.02)
    reloads = re.findall(r"event=reloaded .*", proxy.stderr_text())
    assert "changed=tls-files" in reloads[0] and "changed=none" in reloads[1], reloads


# ---- upstream side -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_upstream(pki):
    """A second throwaway PostgreSQL with ssl=on, its key owned by the server's OS user."""
    keydir = Path(tempfile.mkdtemp(prefix="pgwp-upstream-tls-"))
    os.chmod(keydir, 0o755)
    shutil.copy(pki / "server.crt", keydir / "server.crt")
    shutil.copy(pki / "server.key", keydir / "server.key")
    if os.geteuid() == 0:
        postgres = pwd.getpwnam("postgres")
        for name in ("server.crt", "server.key"):
            os.chown(keydir / name, postgres.pw_uid, postgres.pw_gid)
    os.chmod(keydir / "server.key", 0o600)
    server = ThrowawayPostgres(settings={"ssl": "on", "ssl_cert_file": f"'{keydir / 'server.crt'}'",
                                         "ssl_key_file": f"'{keydir / 'server.key'}'"})
    server.start()
    yield server
    server.stop()
    shutil.rmtree(keydir, ignore_errors=True)


def test_relay_over_a_tls_upstream(tls_upstream, pgwire_proxy_factory):
    proxy = pgwire_proxy_factory(tls_upstream.dsn_with(sslmode="require"), max_rows=0, max_bytes=0)
    sql = "select ssl, version, cipher, bits from pg_stat_ssl where pid = pg_backend_pid()"
    with psycopg.connect(tls_upstream.dsn_with(sslmode="require"), autocommit=True) as direct:
        direct_link = direct.execute(sql).fetchone()
    with psycopg.connect(proxy.dsn, autocommit=True, cursor_factory=psycopg.ClientCursor) as conn:
        # The client's link to the proxy is plaintext; pg_stat_ssl on the upstream shows the proxy's
        # own link encrypted, with what a direct libpq connection with the same sslmode negotiates.
        assert conn.pgconn.ssl_in_use is False
        ssl, version, cipher, bits = conn.execute(sql).fetchone()
        assert ssl is True and version in ("TLSv1.2", "TLSv1.3") and cipher and bits >= 128
        assert (ssl, version, cipher, bits) == direct_link
    # A large result through the TLS link is byte-identical to a direct one.
    sql = "select g, repeat('x', 100) from generate_series(1, 200000) g"
    direct = run_psql(tls_upstream.dsn_with(sslmode="require"), extra_args=["-A", "-t"], commands=[sql])
    proxied = run_psql(proxy.dsn, extra_args=["-A", "-t"], commands=[sql])
    assert direct.returncode == 0 and len(direct.stdout) > 20_000_000
    assert direct.stdout == proxied.stdout


def test_a_reused_tls_upstream_serves_the_next_clients_over_the_same_encrypted_link(tls_upstream, pgwire_proxy_factory):
    """--reuse-upstream over TLS: the reset and each next client speak on libpq's SSL object in turn;
    what one of them read must not be missing from (or left for) the next."""
    proxy = pgwire_proxy_factory(tls_upstream.dsn_with(sslmode="require"), reuse_upstream=True)
    link = "select pg_backend_pid(), ssl from pg_stat_ssl where pid = pg_backend_pid()"
    big = "select sum(length(r)) from (select repeat(md5(g::text), 40) || %s as r from generate_series(1, 20000) g) s"
    seen = set()
    for client in range(3):
        with psycopg.connect(proxy.dsn, autocommit=True, application_name="tls-reuse") as conn:
            pid, ssl = conn.execute(link).fetchone()
            assert ssl is True
            seen.add(pid)
            # Many TLS records each way, then a result of thousands of rows.
            assert conn.execute(big, ["y" * 200_000]).fetchone() == (20000 * (1280 + 200_000),)
            assert len(conn.execute("select g, repeat('z', 500) from generate_series(1, 5000) g").fetchall()) == 5000
        wait_until(lambda: tls_upstream.execute("SELECT state, query FROM pg_stat_activity WHERE pid = %s",
                                                [pid]) == [("idle", "DISCARD ALL")], "the backend to be parked")
    assert len(seen) == 1, "not reused"


@pytest.mark.parametrize("script", sorted(p.name for p in SQL_DIR.glob("*.sql")))
def test_transparency_scripts_over_a_tls_upstream(tls_upstream, pgwire_proxy_factory, script):
    tls_upstream.execute("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgwp_limited') "
                         "THEN CREATE ROLE pgwp_limited LOGIN; END IF; END $$")
    proxy = pgwire_proxy_factory(tls_upstream.dsn_with(sslmode="require"))

    def run(conninfo):
        tls_upstream.execute("DROP SCHEMA IF EXISTS pgwp_t CASCADE")
        tls_upstream.execute("CREATE SCHEMA pgwp_t")
        return run_psql(conninfo, file=str(SQL_DIR / script))

    direct = run(tls_upstream.dsn_with(sslmode="require"))
    proxied = run(proxy.dsn)
    assert normalise(direct.stdout) == normalise(proxied.stdout)


# ---- sslmode=prefer's answer, remembered ------------------------------------------------------------

STARTUP_V3 = bytes.fromhex("00030000")  # a StartupMessage's protocol version, after its length


def proxied_ssl(proxy) -> bool:
    with psycopg.connect(proxy.dsn, autocommit=True) as conn:
        return conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()[0]


@pytest.mark.parametrize("sslmode", [None, "prefer"])
def test_a_server_that_declined_tls_is_not_asked_again_until_a_reload(pg_upstream, pgwire_proxy_process_factory,
                                                                     sslmode):
    """libpq's sslmode=prefer (its default) asks for TLS before every connection; a server that said no
    is connected to in plaintext without asking for a minute, and asked again after a reload."""
    if pg_upstream.execute("show ssl") != [("off",)]:
        pytest.skip("the upstream offers TLS")
    with TcpRelay(pg_upstream.host, pg_upstream.port) as relay:
        extra = {} if sslmode is None else {"sslmode": sslmode}
        dsn = pg_upstream.dsn_with(host=relay.host, port=relay.port, **extra)
        for _ in range(2):  # libpq alone asks every time
            psycopg.connect(dsn).close()
        assert relay.openings == [SSL_REQUEST, SSL_REQUEST]
        proxy = pgwire_proxy_process_factory(dsn)
        assert [proxied_ssl(proxy) for _ in range(3)] == [False, False, False]
        opened = wait_until(lambda: relay.openings[2:] if len(relay.openings) >= 5 else None, "three upstream connects")
        assert opened[0] == SSL_REQUEST, opened
        assert [o[4:8] for o in opened[1:]] == [STARTUP_V3, STARTUP_V3], opened
        os.kill(proxy.process.pid, signal.SIGHUP)
        wait_until(lambda: re.search(r"event=reloaded", proxy.stderr_text()), "the reloaded line")
        assert proxied_ssl(proxy) is False
        assert relay.openings[5] == SSL_REQUEST, relay.openings


def test_a_plaintext_connect_that_fails_asks_for_tls_again(pg_upstream, pgwire_proxy_factory):
    """A failed connect made without asking (the server might want TLS now, or be another server)
    forgets the decline: the next one asks."""
    if pg_upstream.execute("show ssl") != [("off",)]:
        pytest.skip("the upstream offers TLS")
    relay = TcpRelay(pg_upstream.host, pg_upstream.port)
    relay_port = relay.port
    proxy = pgwire_proxy_factory(relay.dsn(pg_upstream))
    assert [proxied_ssl(proxy) for _ in range(2)] == [False, False]
    assert relay.openings[0] == SSL_REQUEST and relay.openings[1][4:8] == STARTUP_V3, relay.openings
    relay.close()  # connections to its port are refused now
    with pytest.raises(psycopg.OperationalError, match="could not connect to the upstream server"):
        psycopg.connect(proxy.dsn).close()
    with TcpRelay(pg_upstream.host, pg_upstream.port, port=relay_port) as back:
        assert [proxied_ssl(proxy) for _ in range(2)] == [False, False]
        assert back.openings[0] == SSL_REQUEST and back.openings[1][4:8] == STARTUP_V3, back.openings


def test_a_server_that_offers_tls_gets_it_on_every_connection_with_prefer(tls_upstream, pgwire_proxy_factory):
    """Only a decline is remembered: a server that accepts is asked, and speaks TLS, every time."""
    with TcpRelay(tls_upstream.host, tls_upstream.port) as relay:
        proxy = pgwire_proxy_factory(tls_upstream.dsn_with(host=relay.host, port=relay.port, sslmode="prefer"))
        assert [proxied_ssl(proxy) for _ in range(3)] == [True, True, True]
        assert relay.openings == [SSL_REQUEST] * 3, relay.openings


def test_tls_required_or_allowed_is_libpqs_own(pg_upstream, pgwire_proxy_factory):
    """sslmode=allow tries plaintext first: nothing to remember; a list of hosts is asked every time;
    require fails against a server without TLS on every connection, as libpq does."""
    if pg_upstream.execute("show ssl") != [("off",)]:
        pytest.skip("the upstream offers TLS")
    with TcpRelay(pg_upstream.host, pg_upstream.port) as relay:
        proxy = pgwire_proxy_factory(pg_upstream.dsn_with(host=relay.host, port=relay.port, sslmode="allow"))
        assert [proxied_ssl(proxy) for _ in range(2)] == [False, False]
        assert [o[4:8] for o in relay.openings] == [STARTUP_V3, STARTUP_V3], relay.openings
    with TcpRelay(pg_upstream.host, pg_upstream.port) as relay:
        # A list of hosts may hold servers that answer differently: each connect asks, as libpq's do.
        hosts = f"{relay.host},{relay.host}"
        proxy = pgwire_proxy_factory(pg_upstream.dsn_with(host=hosts, port=f"{relay.port},{relay.port}"))
        assert [proxied_ssl(proxy) for _ in range(3)] == [False, False, False]
        assert relay.openings == [SSL_REQUEST] * 3, relay.openings
    proxy = pgwire_proxy_factory(pg_upstream.dsn_with(sslmode="require"))
    for _ in range(2):
        with pytest.raises(psycopg.OperationalError, match="server does not support SSL"):
            psycopg.connect(proxy.dsn).close()
