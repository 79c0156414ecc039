"""One asyncio Protocol for both legs: awaitable reads during the handshake,
synchronous callbacks during the relay.

Theory of operation: the handshake (TLS negotiation, startup, authentication)
is naturally sequential, so a coroutine drives it with :meth:`read_some`. Once
the session is established, :attr:`on_data` is set and every chunk goes
straight to the relay callback with no task switch and no stream objects; this
is what keeps the per-message cost low. Flow control is explicit: when this
leg's write buffer fills, :attr:`on_pause` / :attr:`on_resume` let the session
stop reading from the other leg, so a slow client bounds the gateway's memory.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import cast


class LegClosed(ConnectionError):
    """The peer closed the connection or the transport failed."""


class Leg(asyncio.Protocol):
    """An asyncio Protocol wrapping one TCP (or TLS) connection."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.on_data: Callable[[bytes], None] | None = None
        self.on_lost: Callable[[BaseException | None], None] | None = None
        self.on_pause: Callable[[], None] | None = None
        self.on_resume: Callable[[], None] | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[None] | None = None
        self._closed: BaseException | None = None
        self.is_closed = False

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        cb = self.on_data
        if cb is not None:
            cb(data)
            return
        self._buffer += data
        self._wake()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.is_closed = True
        self._closed = exc or LegClosed("connection closed by peer")
        self._wake()
        cb = self.on_lost
        if cb is not None:
            self.on_lost = None
            cb(exc)

    def pause_writing(self) -> None:
        if self.on_pause is not None:
            self.on_pause()

    def resume_writing(self) -> None:
        if self.on_resume is not None:
            self.on_resume()

    # -- handshake helpers --------------------------------------------------------

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def read_some(self) -> bytes:
        """Wait for the next bytes (handshake phase only)."""
        while not self._buffer:
            if self._closed is not None:
                if isinstance(self._closed, LegClosed):
                    raise self._closed
                raise LegClosed(str(self._closed)) from self._closed
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    async def read_exact(self, n: int) -> bytes:
        while len(self._buffer) < n:
            if self._closed is not None:
                raise LegClosed("connection closed by peer")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def take_buffer(self) -> bytes:
        """Bytes received but not yet read (handed to the relay at switch-over)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def write(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(data)

    def close(self) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.close()

    def abort(self) -> None:
        t = self.transport
        if t is not None:
            t.abort()

    async def start_tls(self, ctx: ssl.SSLContext, *, server_side: bool,
                        server_hostname: str | None = None, timeout: float = 30.0) -> None:
        """Upgrade this connection to TLS in place."""
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        new = await loop.start_tls(
            self.transport, self, ctx, server_side=server_side,
            server_hostname=server_hostname, ssl_handshake_timeout=timeout,
        )
        if new is None:
            raise LegClosed("TLS handshake failed: connection closed")
        self.transport = new

    def peer(self) -> str:
        t = self.transport
        if t is None:
            return "?"
        addr = t.get_extra_info("peername")
        if isinstance(addr, tuple) and len(addr) >= 2:
            host = str(addr[0])
            return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
        return str(addr) if addr else "?"

    def is_tls(self) -> bool:
        t = self.transport
        return t is not None and t.get_extra_info("ssl_object") is not None
