"""Serving the API inside the gateway's event loop: one port, TLS or loopback plain HTTP.

Theory of operation: the gateway binds the API socket itself and accepts
connections in a task. Before a connection is handed to uvicorn's HTTP/1.1
protocol, its first byte is peeked (``MSG_PEEK``, nothing consumed): 0x16
opens a TLS handshake record (RFC 8446 section 5.1), so the connection is
wrapped in TLS with ``loop.connect_accepted_socket(ssl=...)``; anything else
is plain HTTP, accepted when ``api.require_tls`` is false, or from a
loopback client when ``api.allow_plaintext_loopback`` is true, exactly as the
PostgreSQL listeners decide. Refused plain HTTP gets a 403 JSON answer that
says to use https, then the connection is closed.

uvicorn provides the HTTP protocol, keep-alive, the Date header and graceful
shutdown; it runs on the gateway's (uvloop) loop, without a lifespan, signal
handlers, access log or proxy headers (``X-Forwarded-For`` is not trusted, so
the rate limiter sees the real peer).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
import ssl
from typing import Any

import uvicorn

from pathwarden.config.schema import ApiSettings

__all__ = ["ApiServer", "is_loopback"]

log = logging.getLogger(__name__)

_TLS_HANDSHAKE = 0x16
FIRST_BYTE_TIMEOUT = 10.0
TLS_HANDSHAKE_TIMEOUT = 10.0
MAX_PENDING = 256  # connections that have not yet sent their first byte
MAX_CONNECTIONS = 512


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (``::ffff:127.0.0.1``)."""
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


class ApiServer:
    """The API's socket and uvicorn server; :meth:`start` binds, :meth:`stop` drains."""

    def __init__(self, app: Any, settings: ApiSettings, tls: ssl.SSLContext) -> None:
        self.settings = settings
        self._tls = tls
        self._config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            loop="none",
            http="h11",
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            limit_concurrency=MAX_CONNECTIONS,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=3,
            h11_max_incomplete_event_size=16 * 1024,
        )
        self._server: uvicorn.Server | None = None
        self._sock: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._tick_task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        host = self.settings.host
        shown = f"[{host}]" if ":" in host else host
        return f"https://{shown}:{self.port}"

    async def start(self) -> None:
        """Bind the socket (``OSError`` when it cannot) and start accepting."""
        loop = asyncio.get_running_loop()
        self._sock = _bind(self.settings.host, self.settings.port)
        config = self._config
        config.load()
        server = uvicorn.Server(config)
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[])  # no listeners of its own: ours are below
        self._server = server
        self._tick_task = loop.create_task(server.main_loop())
        self._accept_task = loop.create_task(self._accept(self._sock))
        if self.settings.require_tls and self.settings.allow_plaintext_loopback:
            plain = "plain HTTP from loopback clients"
        elif self.settings.require_tls:
            plain = "TLS only"
        else:
            plain = "plain HTTP from anywhere"
            log.warning("api: require_tls is false; tokens may cross the network in plaintext")
        log.info("pathwarden API listening on %s (%s)", self.url, plain)

    async def stop(self) -> None:
        """Stop accepting, let requests in progress finish (3 s at most), close."""
        if self._accept_task is not None:
            self._accept_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accept_task
            self._accept_task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        for task in list(self._pending):
            task.cancel()
        if self._server is not None:
            self._server.should_exit = True
            if self._tick_task is not None:
                await self._tick_task
            await self._server.shutdown()
            self._server = None

    # -- accepting ------------------------------------------------------------------

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(sock)
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                log.warning("api: accept failed: %s", exc)
                await asyncio.sleep(0.5)
                continue
            if len(self._pending) >= MAX_PENDING:
                conn.close()
                continue
            task = loop.create_task(self._admit(conn, peer))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _admit(self, conn: socket.socket, peer: Any) -> None:
        loop = asyncio.get_running_loop()
        host = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        try:
            conn.setblocking(False)
            first = await asyncio.wait_for(_peek(loop, conn), FIRST_BYTE_TIMEOUT)
            if not first:
                conn.close()
                return
            if first[0] == _TLS_HANDSHAKE:
                await loop.connect_accepted_socket(
                    self._protocol, conn, ssl=self._tls,
                    ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
            elif self._plaintext_ok(host):
                await loop.connect_accepted_socket(self._protocol, conn)
            else:
                log.info("api: plain HTTP from %s refused (TLS required)", host)
                await _refuse_plaintext(loop, conn, self.url)
        except asyncio.CancelledError:
            conn.close()
            raise
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            log.debug("api: connection from %s dropped before HTTP: %s", host, exc)
            conn.close()

    def _plaintext_ok(self, host: str) -> bool:
        settings = self.settings
        return (not settings.require_tls) or (
            settings.allow_plaintext_loopback and is_loopback(host))

    def _protocol(self) -> asyncio.Protocol:
        server = self._server
        assert server is not None
        config = self._config
        protocol: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
            config=config,
            server_state=server.server_state,
            app_state=server.lifespan.state,
            _loop=asyncio.get_running_loop(),
        )
        return protocol


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port} for the API: "
                                 f"{exc.strerror}") from None
    return sock


async def _peek(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes:
    """The first byte the client sent, left in the socket for whoever reads next."""
    readable: asyncio.Future[None] = loop.create_future()
    fd = conn.fileno()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await readable
    finally:
        loop.remove_reader(fd)
    return conn.recv(1, socket.MSG_PEEK)


async def _refuse_plaintext(loop: asyncio.AbstractEventLoop, conn: socket.socket,
                            url: str) -> None:
    body = json.dumps({
        "error": "tls_required",
        "message": f"pathwarden: this API requires TLS; use {url} (plain HTTP is accepted "
                   "only from loopback clients, and only when api.allow_plaintext_loopback "
                   "is true)",
    }).encode()
    head = (
        "HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode()
    try:
        await asyncio.wait_for(loop.sock_sendall(conn, head + body), 5)
        conn.shutdown(socket.SHUT_WR)
        # Read what the client sent, briefly, so closing does not reset the answer away.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1):
                while await loop.sock_recv(conn, 65536):
                    pass
    finally:
        conn.close()
