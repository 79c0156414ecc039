"""``pathwarden connect``: a local port for unmodified PostgreSQL clients.

Theory of operation: psql, an ORM or a migration tool cannot send a
pathwarden token by themselves without being told the token as their
password. ``connect`` listens on a loopback port and, for each client:

1. reads the client's startup packets with the sans-I/O
   :class:`~pathwarden.protocols.postgres.connection.ServerConnection`,
   answering SSLRequest and GSSENCRequest with ``N`` (the hop is local);
   a CancelRequest is passed on to the gateway on a connection of its own;
2. opens a connection to the gateway (TLS per ``--sslmode``), sends a
   StartupMessage with ``user`` = the identity and ``database`` = the
   connection, keeping the client's other startup parameters (the gateway
   refuses those that could change who the session runs as, and the client
   sees that refusal);
3. answers the gateway's AuthenticationCleartextPassword with the token and
   passes the rest of the login (AuthenticationOk, ParameterStatus,
   BackendKeyData, ReadyForQuery, or the gateway's ErrorResponse) to the client;
4. relays bytes both ways until either side closes.

The login is read frame by frame with exact-length reads so that nothing the
client or the gateway sends after it is consumed by the parser; from then on
the bytes are copied untouched. Each client is a task of its own: one that
disconnects, or misbehaves, ends only its own relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..protocols.postgres import messages as m
from ..protocols.postgres.connection import NEED_DATA, ClientConnection, ServerConnection
from ..protocols.postgres.errors import ProtocolError
from .common import EXIT_USAGE, err
from .pipeline_cmd import (
    DEFAULT_ADDRESS,
    ENV_TOKEN,
    AddressOpt,
    CacertOpt,
    IdentityOpt,
    SslmodeOpt,
    TokenEnvOpt,
    die,
    identity_of,
    is_loopback,
    parse_address,
    read_token,
    resolve_sslmode,
    unverified_payload,
)

_LENGTH = struct.Struct("!I")
_HEADER = struct.Struct("!cI")
_CHUNK = 64 * 1024
MAX_LOGIN_FRAME = 1024 * 1024  # anything bigger during login is not PostgreSQL
GATEWAY_TIMEOUT = 30.0


class GatewayUnavailable(Exception):
    """The gateway could not be reached, or refused TLS when it was required."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where and as whom each client's connection goes."""

    host: str
    port: int
    sslmode: str
    cacert: Path | None
    identity: str
    connection: str
    token: str

    def ssl_context(self) -> ssl.SSLContext | None:
        """libpq's meaning of sslmode; a CA certificate makes ``require`` verify the chain."""
        if self.sslmode == "disable":
            return None
        cafile = str(self.cacert) if self.cacert else None
        ctx = ssl.create_default_context(cafile=cafile)
        if self.sslmode != "verify-full":
            ctx.check_hostname = False
            if self.sslmode == "require" and cafile is None:
                ctx.verify_mode = ssl.CERT_NONE
        return ctx


def _fatal(sqlstate: str, message: str, hint: str | None = None) -> bytes:
    return m.ErrorResponse.build(sqlstate, message, severity="FATAL", hint=hint).encode()


async def _open_gateway(target: Target) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    where = f"{target.host}:{target.port}"
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port), GATEWAY_TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise GatewayUnavailable(f"cannot reach the gateway at {where}: "
                                 f"{exc.strerror if isinstance(exc, OSError) else 'timeout'}"
                                 ) from None
    context = target.ssl_context()
    if context is None:
        return reader, writer
    try:
        writer.write(m.SSLRequest().encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.readexactly(1), GATEWAY_TIMEOUT)
        if answer != b"S":
            raise GatewayUnavailable(f"the gateway at {where} does not offer TLS "
                                     f"(sslmode={target.sslmode})")
        await asyncio.wait_for(writer.start_tls(context, server_hostname=target.host),
                               GATEWAY_TIMEOUT)
    except GatewayUnavailable:
        writer.close()
        raise
    except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
        writer.close()
        hint = ""
        if isinstance(exc, ssl.SSLCertVerificationError):
            hint = "; pass the gateway's certificate with --cacert"
        raise GatewayUnavailable(f"TLS with the gateway at {where} failed: {exc}{hint}") from None
    return reader, writer


async def _read_startup(reader: asyncio.StreamReader, front: ServerConnection
                        ) -> m.StartupPacket | m.Message:
    """One untyped startup packet, read to its exact length."""
    head = await reader.readexactly(4)
    (length,) = _LENGTH.unpack(head)
    front.receive_data(head)
    if 8 <= length <= 10_000:
        front.receive_data(await reader.readexactly(length - 4))
    event = front.next_event()  # raises on a bad length or packet
    if event is NEED_DATA:
        raise ProtocolError("incomplete startup packet")
    assert isinstance(event, m.StartupPacket | m.Message)
    return event


async def _read_backend(reader: asyncio.StreamReader, back: ClientConnection) -> m.Message:
    """One backend message of the login, read to its exact length."""
    head = await asyncio.wait_for(reader.readexactly(5), GATEWAY_TIMEOUT)
    _, length = _HEADER.unpack(head)
    back.receive_data(head)
    if 4 <= length <= MAX_LOGIN_FRAME:
        back.receive_data(await asyncio.wait_for(reader.readexactly(length - 4),
                                                 GATEWAY_TIMEOUT))
    event = back.next_event()  # raises on a bad type or length
    if event is NEED_DATA:
        raise ProtocolError("login message too large")
    assert isinstance(event, m.Message)
    return event


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await src.read(_CHUNK):
            dst.write(data)
            await dst.drain()


class LocalProxy:
    """Accepts local clients and logs each in to the gateway as ``target`` says."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.clients: set[asyncio.Task[None]] = set()
        self.served = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.clients.add(task)
        try:
            await self._client(reader, writer)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the client or the gateway went away: only this relay ends
        except asyncio.CancelledError:
            pass  # shutting down; the task ends here so nothing reports it
        except Exception as exc:  # a bug must not take the other clients down
            err.print(escape(f"client {self._peer(writer)}: {type(exc).__name__}: {exc}"))
        finally:
            self.clients.discard(task)
            writer.close()

    @staticmethod
    def _peer(writer: asyncio.StreamWriter) -> str:
        peer = writer.get_extra_info("peername")
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        front = ServerConnection()
        while True:
            try:
                packet = await _read_startup(reader, front)
            except ProtocolError as exc:
                writer.write(_fatal(exc.sqlstate, f"pathwarden connect: {exc.message}"))
                return
            if isinstance(packet, m.SSLRequest | m.GSSENCRequest):
                writer.write(b"N")  # loopback only: no encryption on this hop
                continue
            if isinstance(packet, m.CancelRequest):
                await self._cancel(packet)
                return
            assert isinstance(packet, m.StartupMessage)
            break
        try:
            up_reader, up_writer = await _open_gateway(self.target)
        except GatewayUnavailable as exc:
            err.print(escape(f"client {self._peer(writer)}: {exc}"))
            writer.write(_fatal("08001", f"pathwarden connect: {exc}"))
            return
        try:
            if await self._login(packet, up_reader, up_writer, writer):
                self.served += 1
                await self._relay(reader, writer, up_reader, up_writer)
        finally:
            up_writer.close()

    async def _cancel(self, packet: m.CancelRequest) -> None:
        with contextlib.suppress(GatewayUnavailable, OSError):
            _, up_writer = await _open_gateway(self.target)
            up_writer.write(m.frame_of(packet))
            with contextlib.suppress(OSError):
                await up_writer.drain()
            up_writer.close()

    async def _login(self, startup: m.StartupMessage, up_reader: asyncio.StreamReader,
                     up_writer: asyncio.StreamWriter, writer: asyncio.StreamWriter) -> bool:
        """Log in to the gateway for the client; True when the session is ready."""
        target = self.target
        params = {k: v for k, v in startup.params.items() if k not in ("user", "database")}
        params = {"user": target.identity, "database": target.connection, **params}
        back = ClientConnection()
        up_writer.write(back.send(m.StartupMessage(protocol_version=startup.protocol_version,
                                                   params=params)))
        password_sent = False
        while True:
            try:
                msg = await _read_backend(up_reader, back)
            except ProtocolError as exc:
                writer.write(_fatal("08P01", f"pathwarden connect: the gateway sent "
                                             f"{exc.message}"))
                return False
            if isinstance(msg, m.Authentication) and msg.code == m.AUTH_CLEARTEXT:
                if password_sent:
                    writer.write(_fatal("28000", "pathwarden connect: the gateway asked "
                                                 "for the token twice"))
                    return False
                up_writer.write(back.send(m.PasswordMessage(
                    data=target.token.encode() + b"\0")))
                password_sent = True
                continue
            if isinstance(msg, m.Authentication) and msg.code != m.AUTH_OK:
                writer.write(_fatal(
                    "28000", f"pathwarden connect: {target.host}:{target.port} asked for "
                             f"authentication method {msg.code}, not for a token; is "
                             f"--address the gateway's PostgreSQL listener?"))
                return False
            writer.write(m.frame_of(msg))
            if isinstance(msg, m.ErrorResponse):
                err.print(escape(f"client {self._peer(writer)}: the gateway refused the "
                                 f"login: {msg.message}"))
                await writer.drain()
                return False
            if isinstance(msg, m.ReadyForQuery):
                await writer.drain()
                return True

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
        to_gateway = asyncio.create_task(_pipe(reader, up_writer))
        to_client = asyncio.create_task(_pipe(up_reader, writer))
        try:
            await asyncio.wait((to_gateway, to_client), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (to_gateway, to_client):
                task.cancel()
            await asyncio.gather(to_gateway, to_client, return_exceptions=True)


async def serve_locally(target: Target, host: str, port: int) -> None:
    """Listen on (host, port) until SIGINT/SIGTERM."""
    proxy = LocalProxy(target)
    try:
        server = await asyncio.start_server(proxy.handle, host, port)
    except OSError as exc:
        die(f"cannot listen on {host}:{port}: {exc.strerror}")
    bound = server.sockets[0].getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    err.print(escape(f"listening on {shown}:{bound[1]}; connect with: psql \"host={bound[0]} "
                     f"port={bound[1]} dbname={target.connection}\""), highlight=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
        server.close()
        for task in list(proxy.clients):
            task.cancel()
        await asyncio.gather(*proxy.clients, return_exceptions=True)
    err.print(f"stopped after {proxy.served} client session(s)")


def _expiry_note(token: str) -> str:
    try:
        exp = unverified_payload(token).get("exp")
    except ValueError:
        return ""
    if not isinstance(exp, int | float):
        return ""
    moment = datetime.fromtimestamp(exp, UTC)
    left = int((moment - datetime.now(UTC)).total_seconds())
    when = f"{moment:%Y-%m-%d %H:%M:%S}Z"
    if left <= 0:
        return f"; the token expired at {when}: the gateway will refuse new sessions"
    return f"; token expires {when} (in {left // 60} min {left % 60} s)"


def connect_command(
    connection: Annotated[str, typer.Argument(help="The gateway connection to open.")],
    listen: Annotated[str, typer.Option(
        help="Local address to listen on (loopback only; port 0 picks a free one).")
    ] = "127.0.0.1:0",
    address: AddressOpt = DEFAULT_ADDRESS,
    token_env: TokenEnvOpt = ENV_TOKEN,
    identity: IdentityOpt = None,
    sslmode: SslmodeOpt = None,
    cacert: CacertOpt = None,
) -> None:
    """Open a local port where unmodified clients (psql, an ORM, a migration tool) reach
    CONNECTION through the gateway without a password.

    Every process on this machine can use the port while it is open, with the token's
    rights: run it inside the CI job, and stop it (SIGINT/SIGTERM) when done.
    """
    listen_host, listen_port = parse_address(listen, default_port=0)
    if not is_loopback(listen_host):
        die(f"--listen {listen}: pathwarden connect listens on loopback addresses only "
            f"(127.0.0.1, ::1): its clients need no password", EXIT_USAGE)
    host, port = parse_address(address)
    mode = resolve_sslmode(sslmode, cacert, host)
    token = read_token(token_env)
    user = identity_of(token, token_env, identity)
    target = Target(host=host, port=port, sslmode=mode, cacert=cacert, identity=user,
                    connection=connection, token=token)
    err.print(escape(f"{connection} as {user} through the gateway at {host}:{port} "
                     f"(sslmode={mode}){_expiry_note(token)}"), highlight=False)
    asyncio.run(serve_locally(target, listen_host, listen_port))
