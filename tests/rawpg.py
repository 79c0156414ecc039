"""A blocking PostgreSQL wire-protocol client for tests that need exact message sequences."""

from __future__ import annotations

import socket
import struct

from gateway_harness import GatewayHarness
from pathwarden.protocols.postgres import messages as m

Frame = tuple[bytes, bytes]


class Raw:
    """A blocking wire-protocol client."""

    def __init__(self, gw: GatewayHarness, connection: str = "app-db", **params: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        self.buf = b""
        self.sock.sendall(m.StartupMessage(
            params={"user": "ci-test", "database": connection, **params}).encode())
        self.read_frame()  # AuthenticationCleartextPassword
        self.sock.sendall(m.PasswordMessage(data=gw.token("ci-test").encode() + b"\0").encode())
        self.until_ready()
        host, port = self.sock.getsockname()[:2]
        self.addr = f"{host}:{port}"

    def send(self, *msgs: m.Message) -> None:
        self.sock.sendall(b"".join(msg.encode() for msg in msgs))

    def read_frame(self) -> Frame:
        while len(self.buf) < 5 or len(self.buf) < 1 + struct.unpack_from("!I", self.buf, 1)[0]:
            chunk = self.sock.recv(65536)
            assert chunk, "connection closed"
            self.buf += chunk
        n = 1 + struct.unpack_from("!I", self.buf, 1)[0]
        frame, self.buf = (self.buf[:1], self.buf[5:n]), self.buf[n:]
        return frame

    def until_ready(self) -> list[Frame]:
        frames = []
        while True:
            frames.append(self.read_frame())
            if frames[-1][0] == b"Z":
                return frames

    def close(self) -> None:
        self.sock.sendall(m.Terminate().encode())
        self.sock.close()
