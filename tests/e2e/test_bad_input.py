"""Malformed or missing startup input: a FATAL ErrorResponse, then the connection closes; others carry on.

The proxy under test gets a long --startup-timeout (except in the silent-client tests) so that a proxy
which waited for bytes instead of checking the length first would make the read time out and fail.
"""

from __future__ import annotations

import socket
import struct

import pytest

import wire
from psql import run_psql

READ_TIMEOUT = 20.0  # generous: nothing here should take more than a fraction of a second


@pytest.fixture
def proxy(pgwire_proxy_factory):
    return pgwire_proxy_factory(startup_timeout="60s")


def expect_fatal_then_eof(conn: wire.RawConnection, sqlstate: str = "08P01") -> dict:
    """Exactly one ErrorResponse (FATAL, `sqlstate`), then EOF."""
    try:
        msgs = conn.read_until_eof()
    except socket.timeout:
        pytest.fail(f"no ErrorResponse+EOF within {READ_TIMEOUT}s; buffered: {conn.buffer!r}")
    assert [m.kind for m in msgs] == ["E"], f"expected one ErrorResponse then EOF, got {msgs}"
    fields = msgs[0].error_fields()
    assert fields.get("S") == "FATAL" and fields.get("V") == "FATAL", fields
    assert fields.get("C") == sqlstate, fields
    assert fields.get("M"), fields
    return fields


def assert_still_serving(proxy) -> None:
    result = run_psql(proxy.dsn, extra_args=["-A", "-t"], commands=["SELECT 40 + 2"])
    assert result.stdout == b"42\n", result.stdout


def raw(proxy) -> wire.RawConnection:
    return wire.RawConnection(proxy.host, proxy.port, timeout=READ_TIMEOUT)


# Only the header is sent: a proxy that checked the length must answer without reading a body.
@pytest.mark.parametrize("length", [10_001, 1_000_000, 0x7FFFFFFF])
def test_oversize_startup_packet(proxy, length):
    with raw(proxy) as conn:
        conn.send(struct.pack("!ii", length, wire.PROTOCOL_3_0))
        expect_fatal_then_eof(conn)
    assert_still_serving(proxy)


def test_large_but_legal_startup_packet(proxy):
    # Well under the 10,000-byte limit even after the proxy adds its own upstream parameters.
    params = {"user": "postgres", "database": "postgres", "application_name": "big"}
    params["options"] = "-c work_mem=4MB" + " " * 8_000
    packet = wire.startup_packet(params)
    assert 8_000 < len(packet) < 9_000
    with raw(proxy) as conn:
        conn.send(packet)
        msgs = conn.read_until_ready()
        assert not wire.errors_in(msgs), msgs
        assert wire.rows(conn.simple_query("SHOW work_mem")) == [["4MB"]]


@pytest.mark.parametrize("length", [0, 3, -1, -2147483648, 4, 7])
def test_startup_length_too_small(proxy, length):
    # Below 4 the length cannot even cover itself; below 8 there is no room for a protocol version.
    with raw(proxy) as conn:
        conn.send(struct.pack("!i", length) + b"\0" * max(length - 4, 0))
        expect_fatal_then_eof(conn)
    assert_still_serving(proxy)


@pytest.mark.parametrize("major,minor", [(2, 0), (4, 0), (1, 0)])
def test_unsupported_protocol_version(proxy, major, minor):
    with raw(proxy) as conn:
        conn.send(wire.startup_packet(version=(major << 16) | minor))
        fields = expect_fatal_then_eof(conn, sqlstate="0A000")  # PostgreSQL's code for this case
        assert f"{major}.{minor}" in fields["M"], fields
    assert_still_serving(proxy)


@pytest.mark.parametrize("payload", [
    b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",                  # length field 0x47455420
    b"\xff" * 64,                                                  # length -1
    struct.pack("!ii", 21, wire.PROTOCOL_3_0) + b"user\0postgres",  # no terminator as last byte
    struct.pack("!ii", 14, wire.PROTOCOL_3_0) + b"user\0\0",        # a name, no value, no terminator
], ids=["http", "all-ones", "unterminated", "value-missing"])
def test_garbage(proxy, payload):
    with raw(proxy) as conn:
        conn.send(payload)
        expect_fatal_then_eof(conn)
    assert_still_serving(proxy)


def test_garbage_after_ssl_refusal(proxy):
    with raw(proxy) as conn:
        conn.send(wire.ssl_request())
        assert conn.read_byte() == b"N"
        conn.send(b"\x00\x00\x00\x02")  # a length below four where the startup packet should be
        expect_fatal_then_eof(conn)
    assert_still_serving(proxy)


@pytest.mark.parametrize("sent", [b"", b"\x00\x00", struct.pack("!ii", 40, wire.PROTOCOL_3_0) + b"user\0"],
                         ids=["nothing", "half-a-length", "part-of-a-packet"])
def test_silent_client_times_out(pgwire_proxy_factory, sent):
    proxy = pgwire_proxy_factory(startup_timeout="1s")
    with raw(proxy) as conn:
        if sent:
            conn.send(sent)
        # The proxy's 1s timeout must fire well before our read timeout.
        expect_fatal_then_eof(conn)
    assert_still_serving(proxy)


def test_bad_clients_do_not_disturb_a_running_session(proxy):
    with raw(proxy) as good:
        assert good.startup()[-1].kind == "Z"
        for payload in (struct.pack("!i", 1), b"\xff" * 64, struct.pack("!i", 2)):
            with raw(proxy) as bad:
                bad.send(payload)
                expect_fatal_then_eof(bad)
        assert wire.rows(good.simple_query("SELECT 'unharmed'")) == [["unharmed"]]


def test_client_disconnecting_mid_startup_is_harmless(proxy):
    for payload in (b"", b"\x00", struct.pack("!ii", 100, wire.PROTOCOL_3_0)):
        sock = socket.create_connection((proxy.host, proxy.port))
        if payload:
            sock.sendall(payload)
        sock.close()
    assert_still_serving(proxy)


# --- malformed frames after a good startup ----------------------------------------------------

def started(proxy) -> wire.RawConnection:
    conn = raw(proxy)
    msgs = conn.startup()
    assert msgs and msgs[-1].kind == "Z", msgs
    return conn


@pytest.mark.parametrize("frame", [
    b"Q" + struct.pack("!i", 3),                # length below four
    b"Q" + struct.pack("!i", -5),
    b"Q" + struct.pack("!i", 100_000),          # over --max-message-size=1kB (header only)
    b"z" + struct.pack("!i", 4),                # no such message type
    b"Q" + struct.pack("!i", 9) + b"SELECT",    # a Query whose string has no terminating NUL
], ids=["len-3", "len-negative", "over-max", "unknown-type", "unterminated-query"])
def test_malformed_frame_after_startup(pgwire_proxy_factory, frame):
    proxy = pgwire_proxy_factory(startup_timeout="60s", max_message_size="1kB")
    with started(proxy) as conn:
        conn.send(frame)
        expect_fatal_then_eof(conn)
    assert_still_serving(proxy)


def test_query_within_max_message_size_works(pgwire_proxy_factory):
    proxy = pgwire_proxy_factory(max_message_size="1kB")
    with started(proxy) as conn:
        sql = "SELECT '" + "x" * 900 + "' AS padded"
        assert len(wire.query(sql)) < 1024
        assert wire.rows(conn.simple_query(sql)) == [["x" * 900]]
