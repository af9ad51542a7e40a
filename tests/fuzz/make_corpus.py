"""Seed corpus for the fuzz targets: the bytes real clients send, recorded from psql and psycopg talking
to a minimal fake server (it answers just enough for the client to send its next messages)."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path


def fake_server(listener: socket.socket, recorded: list) -> None:
    conn, _ = listener.accept()
    data = b""
    conn.settimeout(5)
    try:
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
            if data in (struct.pack("!ii", 8, 80877103), struct.pack("!ii", 8, 80877104)) or \
                    data.endswith(struct.pack("!ii", 8, 80877103)) or data.endswith(struct.pack("!ii", 8, 80877104)):
                conn.sendall(b"N")
            elif b"user\0" in data and not data.endswith(b"X\0\0\0\x04") and b"Q" not in data[-200:] \
                    and not any(t in data for t in (b"P\0", b"B\0")):
                hello = b"R" + struct.pack("!ii", 8, 0)
                for k, v in ((b"server_version", b"15.0"), (b"client_encoding", b"UTF8"),
                             (b"standard_conforming_strings", b"on"), (b"integer_datetimes", b"on")):
                    body = k + b"\0" + v + b"\0"
                    hello += b"S" + struct.pack("!i", len(body) + 4) + body
                hello += b"K" + struct.pack("!iii", 12, 1, 2) + b"Z" + struct.pack("!i", 5) + b"I"
                conn.sendall(hello)
            else:
                # Any query: an empty result and ReadyForQuery, or an error for extended messages.
                if data.endswith(b"S\0\0\0\x04"):
                    conn.sendall(b"Z" + struct.pack("!i", 5) + b"I")
                elif data.endswith(b"\0") and data[-1:] == b"\0":
                    conn.sendall(b"C" + struct.pack("!i", 13) + b"SELECT 0\0" + b"Z" + struct.pack("!i", 5) + b"I")
    except (socket.timeout, ConnectionResetError):
        pass
    recorded.append(data)
    conn.close()


def record(client_argv_for_port) -> bytes:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    recorded: list = []
    thread = threading.Thread(target=fake_server, args=(listener, recorded))
    thread.start()
    client_argv_for_port(port)
    thread.join(10)
    listener.close()
    return recorded[0] if recorded else b""


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    seeds = {}
    seeds["psql_select"] = record(lambda port: subprocess.run(
        ["psql", "-X", "-d", f"host=127.0.0.1 port={port} user=alice dbname=db application_name=fuzz",
         "-c", "select 1; select 'two'"], capture_output=True, timeout=10))
    seeds["psql_nossl"] = record(lambda port: subprocess.run(
        ["psql", "-X", "-d", f"host=127.0.0.1 port={port} user=bob sslmode=disable gssencmode=disable "
         "options='-c search_path=x'", "-c", "begin; select now(); commit"], capture_output=True, timeout=10))
    try:
        import psycopg

        def psycopg_client(port: int) -> None:
            try:
                with psycopg.connect(f"host=127.0.0.1 port={port} user=carol dbname=db sslmode=disable "
                                     "gssencmode=disable", autocommit=True, connect_timeout=5) as conn:
                    conn.execute("select %s::int", [1])
            except Exception:  # noqa: BLE001 - the fake server does not speak the extended protocol
                pass
        seeds["psycopg_extended"] = record(psycopg_client)
    except ImportError:
        pass
    seeds["cancel_request"] = struct.pack("!iiii", 16, 80877102, 1234, 5678)
    seeds["ssl_then_gss"] = struct.pack("!ii", 8, 80877103) + struct.pack("!ii", 8, 80877104)
    # fuzz_relay's scripts: chunks of (control byte: 0x80 = upstream, low 7 bits = length) + bytes.
    def chunk(upstream: bool, data: bytes) -> bytes:
        out = b""
        while data:
            piece, data = data[:127], data[127:]
            out += bytes([(0x80 if upstream else 0) | len(piece)]) + piece
        return out

    def msg(kind: bytes, body: bytes) -> bytes:
        return kind + struct.pack("!i", len(body) + 4) + body

    row = msg(b"D", struct.pack("!hi", 1, 1) + b"1")
    seeds["relay_simple"] = b"\x02" + chunk(False, msg(b"Q", b"select 1\0")) + chunk(
        True, msg(b"T", struct.pack("!h", 1) + b"a\0" + struct.pack("!ihihih", 0, 0, 25, -1, -1, 0)) + row * 3
        + msg(b"C", b"SELECT 3\0") + msg(b"Z", b"I"))
    seeds["relay_extended"] = b"\x81" + chunk(False, msg(b"P", b"\0select 1\0\0\0") + msg(b"B", b"\0\0\0\0\0\0\0\0")
        + msg(b"E", b"\0\0\0\0\0") + msg(b"S", b"")) + chunk(True, msg(b"1", b"") + msg(b"2", b"") + row
        + msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I"))
    # --protocol=full with a 64-byte --max-copy-in-bytes: a COPY FROM STDIN of CopyData lines past it.
    lines = b"".join(msg(b"d", b"%d\tline\n" % i) for i in range(12))
    seeds["relay_copy_in"] = b"\x60" + chunk(False, msg(b"Q", b"copy t from stdin\0")) + chunk(
        True, msg(b"G", b"\0" + struct.pack("!hh", 1, 0))) + chunk(False, lines + msg(b"c", b"")) + chunk(
        True, msg(b"C", b"COPY 12\0") + msg(b"Z", b"I"))
    for name, data in seeds.items():
        if data:
            (out / name).write_bytes(data)
    print(f"wrote {len([d for d in seeds.values() if d])} seeds to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("build-fuzzer/corpus"))
