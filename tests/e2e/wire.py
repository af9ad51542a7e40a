"""A minimal PostgreSQL v3 wire client over raw sockets, for the tests that need exact bytes."""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

PROTOCOL_3_0 = 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102


# --- frontend messages ------------------------------------------------------------------------

def _cstr(text: str) -> bytes:
    return text.encode() + b"\0"


def startup_packet(params: Optional[Dict[str, str]] = None, version: int = PROTOCOL_3_0) -> bytes:
    params = {"user": "postgres", "database": "postgres"} if params is None else params
    body = struct.pack("!i", version) + b"".join(_cstr(k) + _cstr(v) for k, v in params.items()) + b"\0"
    return struct.pack("!i", len(body) + 4) + body


def ssl_request() -> bytes:
    return struct.pack("!ii", 8, SSL_REQUEST_CODE)


def gssenc_request() -> bytes:
    return struct.pack("!ii", 8, GSSENC_REQUEST_CODE)


def message(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!i", len(body) + 4) + body


def query(sql: str) -> bytes:
    return message(b"Q", _cstr(sql))


def parse(sql: str, name: str = "") -> bytes:
    return message(b"P", _cstr(name) + _cstr(sql) + struct.pack("!h", 0))


def bind(portal: str = "", statement: str = "", params: Iterable[Optional[str]] = ()) -> bytes:
    """Bind with text parameters (None is NULL) and text results."""
    values = list(params)
    body = _cstr(portal) + _cstr(statement) + struct.pack("!hh", 0, len(values))
    for value in values:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value.encode())) + value.encode()
    return message(b"B", body + struct.pack("!h", 0))


def describe_statement(name: str = "") -> bytes:
    return message(b"D", b"S" + _cstr(name))


def describe_portal(portal: str = "") -> bytes:
    return message(b"D", b"P" + _cstr(portal))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return message(b"E", _cstr(portal) + struct.pack("!i", max_rows))


def close_statement(name: str = "") -> bytes:
    return message(b"C", b"S" + _cstr(name))


def close_portal(name: str = "") -> bytes:
    return message(b"C", b"P" + _cstr(name))


def sync() -> bytes:
    return message(b"S")


def flush() -> bytes:
    return message(b"H")


def function_call(oid: int = 1598) -> bytes:  # 1598 = random() ... any oid: it must never run
    return message(b"F", struct.pack("!ihhh", oid, 0, 0, 0))


def terminate() -> bytes:
    return message(b"X")


# --- backend messages -------------------------------------------------------------------------

@dataclass
class Message:
    kind: str     # one letter: 'E', 'Z', 'R', ...
    body: bytes

    def error_fields(self) -> Dict[str, str]:
        """Fields of an ErrorResponse/NoticeResponse keyed by their code letter (S, V, C, M, D, H ...)."""
        assert self.kind in ("E", "N"), f"not an error/notice: {self}"
        fields: Dict[str, str] = {}
        rest = self.body
        while rest and rest[0] != 0:
            code = chr(rest[0])
            end = rest.index(b"\0", 1)
            fields[code] = rest[1:end].decode(errors="replace")
            rest = rest[end + 1:]
        assert rest == b"\0", f"ErrorResponse not terminated by a zero byte: {self.body!r}"
        return fields

    def parameter_status(self) -> Tuple[str, str]:
        assert self.kind == "S"
        name, value, _ = self.body.split(b"\0")
        return name.decode(), value.decode()

    def backend_key(self) -> Tuple[int, int]:
        assert self.kind == "K" and len(self.body) == 8
        return struct.unpack("!ii", self.body)

    def data_row(self) -> List[Optional[str]]:
        assert self.kind == "D"
        (count,) = struct.unpack_from("!h", self.body)
        offset, values = 2, []
        for _ in range(count):
            (size,) = struct.unpack_from("!i", self.body, offset)
            offset += 4
            if size < 0:
                values.append(None)
            else:
                values.append(self.body[offset:offset + size].decode())
                offset += size
        return values

    def __repr__(self) -> str:
        shown = self.body if len(self.body) <= 80 else self.body[:80] + b"..."
        return f"{self.kind}{shown!r}"


class ProtocolError(AssertionError):
    pass


class RawConnection:
    """A socket with a frame reader. Reads raise socket.timeout after `timeout` seconds of silence."""

    def __init__(self, host: str, port: int, timeout: float = 15.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buffer = b""
        self.eof = False
        self.reset = False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "RawConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
            self.reset = True
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def read_byte(self) -> Optional[bytes]:
        """One raw byte (the answer to SSLRequest/GSSENCRequest), None at EOF."""
        while not self.buffer:
            if not self._fill():
                return None
        byte, self.buffer = self.buffer[:1], self.buffer[1:]
        return byte

    def read_message(self) -> Optional[Message]:
        """The next backend message, or None at a clean EOF between messages."""
        while len(self.buffer) < 5:
            if not self._fill():
                if self.buffer:
                    raise ProtocolError(f"EOF inside a message header: {self.buffer!r}")
                return None
        kind = chr(self.buffer[0])
        (length,) = struct.unpack_from("!i", self.buffer, 1)
        if length < 4:
            raise ProtocolError(f"backend message {kind!r} with length {length}")
        while len(self.buffer) < 1 + length:
            if not self._fill():
                raise ProtocolError(f"EOF inside message {kind!r} (have {len(self.buffer)} of {1 + length})")
        body = self.buffer[5:1 + length]
        self.buffer = self.buffer[1 + length:]
        return Message(kind, body)

    def read_until(self, kinds: Iterable[str]) -> List[Message]:
        """Messages up to and including the first of `kinds`; raises if EOF comes first."""
        wanted = set(kinds)
        out: List[Message] = []
        while True:
            msg = self.read_message()
            if msg is None:
                raise ProtocolError(f"EOF before any of {sorted(wanted)}; got {out}")
            out.append(msg)
            if msg.kind in wanted:
                return out

    def read_until_ready(self) -> List[Message]:
        return self.read_until("Z")

    def read_until_eof(self) -> List[Message]:
        """All messages until the server closes (socket.timeout if it never does)."""
        out: List[Message] = []
        while True:
            msg = self.read_message()
            if msg is None:
                return out
            out.append(msg)

    def startup(self, params: Optional[Dict[str, str]] = None) -> List[Message]:
        """Send a v3 startup packet and read until ReadyForQuery or EOF."""
        self.send(startup_packet(params))
        out: List[Message] = []
        while True:
            msg = self.read_message()
            if msg is None or msg.kind == "Z":
                if msg is not None:
                    out.append(msg)
                return out
            out.append(msg)

    def simple_query(self, sql: str) -> List[Message]:
        self.send(query(sql))
        return self.read_until_ready()


def errors_in(messages: Iterable[Message]) -> List[Dict[str, str]]:
    return [m.error_fields() for m in messages if m.kind == "E"]


def kinds(messages: Iterable[Message]) -> str:
    return "".join(m.kind for m in messages)


def rows(messages: Iterable[Message]) -> List[List[Optional[str]]]:
    return [m.data_row() for m in messages if m.kind == "D"]
