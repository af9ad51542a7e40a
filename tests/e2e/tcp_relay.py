"""A TCP relay between the proxy and PostgreSQL: counts upstream connections, notes how each began,
and can cut them."""

from __future__ import annotations

import socket
import threading
from typing import List, Tuple


SSL_REQUEST = bytes.fromhex("0000000804d2162f")  # length 8, code 80877103


class TcpRelay:
    """Listens on 127.0.0.1:<port> (a free one by default) and pipes every connection to
    (target_host, target_port)."""

    def __init__(self, target_host: str, target_port: int, port: int = 0):
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", port))
        self.host, self.port = self.listener.getsockname()[:2]
        self.accepted = 0
        # The first 8 bytes each connection sent the server, in the order connections were accepted:
        # an SSLRequest (SSL_REQUEST) or the start of a StartupMessage.
        self.openings: List[bytes] = []
        self._pairs: List[Tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._flowing = threading.Event()  # cleared by hold(): accepted connections wait before piping
        self._flowing.set()
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-relay", daemon=True)
        self._thread.start()

    def dsn(self, upstream) -> str:
        """pg_upstream's DSN, pointed at this relay."""
        return upstream.dsn_with(host=self.host, port=self.port)

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self.accepted += 1
                self._pairs.append((client, server))
                self.openings.append(b"")
                index = len(self.openings) - 1
            for src, dst, opening in ((client, server, index), (server, client, None)):
                threading.Thread(target=self._pipe, args=(src, dst, opening), daemon=True).start()

    def hold(self) -> None:
        """Accept the next connections (the TCP connect completes) but pass nothing until release()."""
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    def _pipe(self, src: socket.socket, dst: socket.socket, opening=None) -> None:
        self._flowing.wait()
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if opening is not None and len(self.openings[opening]) < 8:
                    with self._lock:
                        self.openings[opening] = (self.openings[opening] + data)[:8]
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut_all(self) -> None:
        """Drop every relayed connection at once, as a dead network or a crashed server would."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def close(self) -> None:
        self._flowing.set()
        with self._lock:
            self._closed = True
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        except OSError:
            pass
        self.listener.close()
        self.cut_all()

    def __enter__(self) -> "TcpRelay":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
