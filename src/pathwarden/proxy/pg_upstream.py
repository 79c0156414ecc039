"""The upstream leg: dial the target PostgreSQL server and log in with injected credentials.

The client never takes part: pathwarden sends its own StartupMessage with the
connection's user and database, answers the server's authentication request
(trust, cleartext, md5 or SCRAM-SHA-256) with the configured password, and
collects ParameterStatus, BackendKeyData and the first ReadyForQuery. Every
failure becomes an :class:`UpstreamError` whose message says which connection
failed and why, without the password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..protocols.postgres import messages as m
from ..protocols.postgres.auth import (
    SCRAM_SHA_256,
    ScramClient,
    md5_password,
    salted_password,
    server_first_parameters,
)
from ..protocols.postgres.connection import NEED_DATA, ClientConnection, Phase
from ..protocols.postgres.errors import ProtocolError
from .stream import Leg, LegClosed

log = logging.getLogger(__name__)

CONNECTION_FAILURE = "08006"
CANNOT_CONNECT = "08001"


class UpstreamError(Exception):
    """The gateway could not open or use the upstream connection."""

    def __init__(self, message: str, sqlstate: str = CANNOT_CONNECT, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate
        self.hint = hint


@dataclass(frozen=True)
class UpstreamTarget:
    """Where and how to reach one configured PostgreSQL connection."""

    name: str
    host: str
    port: int
    database: str
    user: str
    password: Callable[[], str | None] = field(repr=False)
    sslmode: str = "prefer"
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)
    connect_timeout: float = 10.0

    @property
    def address(self) -> str:
        if self.host.startswith("/"):
            return self.socket_path
        return f"{self.host}:{self.port}"

    @property
    def socket_path(self) -> str:
        return f"{self.host.rstrip('/')}/.s.PGSQL.{self.port}"


@dataclass
class Upstream:
    """An authenticated upstream connection, ready for the relay."""

    leg: Leg
    conn: ClientConnection
    parameters: dict[str, str]
    key: m.BackendKeyData | None
    notices: list[m.NoticeResponse]
    leftover: bytes = b""
    # The session's search_path as the server has it (role and database defaults
    # included), "$user" replaced by the login user: what unqualified names mean.
    search_path: tuple[str, ...] | None = None


async def _dial(target: UpstreamTarget) -> Leg:
    loop = asyncio.get_running_loop()
    try:
        if target.host.startswith("/"):
            # A directory: the server's Unix-domain socket, as libpq understands host.
            if target.sslmode in ("require", "verify-ca", "verify-full"):
                raise UpstreamError(f"connection {target.name}: sslmode {target.sslmode} "
                                    "cannot be used over a Unix-domain socket")
            _, leg = await asyncio.wait_for(
                loop.create_unix_connection(Leg, target.socket_path),
                timeout=target.connect_timeout,
            )
            return leg
        _, leg = await asyncio.wait_for(
            loop.create_connection(Leg, target.host, target.port),
            timeout=target.connect_timeout,
        )
    except TimeoutError:
        raise UpstreamError(
            f"connection {target.name}: timed out after {target.connect_timeout:g}s "
            f"connecting to {target.address}", hint="check that the target server is up and "
            "reachable from the gateway") from None
    except OSError as exc:
        raise UpstreamError(
            f"connection {target.name}: cannot reach {target.address}: "
            f"{exc.strerror or exc}", hint="check that the target server is up and reachable "
            "from the gateway") from None
    sock = leg.transport.get_extra_info("socket") if leg.transport else None
    if sock is not None:
        import socket

        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ctx = target.ssl_context
    if target.sslmode == "disable" or ctx is None:
        return leg
    leg.write(m.SSLRequest().encode())
    try:
        answer = await asyncio.wait_for(leg.read_exact(1), timeout=target.connect_timeout)
    except (TimeoutError, LegClosed):
        leg.abort()
        raise UpstreamError(f"connection {target.name}: no answer to SSLRequest from "
                            f"{target.address}") from None
    if answer == b"S":
        if leg.buffered:
            # Bytes after 'S' but before the handshake could be injected (CVE-2021-23222).
            leg.abort()
            raise UpstreamError(f"connection {target.name}: unexpected data after SSL answer")
        try:
            await leg.start_tls(ctx, server_side=False, server_hostname=target.host,
                                timeout=target.connect_timeout)
        except (ssl.SSLError, OSError, TimeoutError) as exc:
            leg.abort()
            raise UpstreamError(f"connection {target.name}: TLS handshake with "
                                f"{target.address} failed: {exc}") from None
        return leg
    if answer == b"N" and target.sslmode == "prefer":
        return leg
    leg.abort()
    raise UpstreamError(f"connection {target.name}: server {target.address} does not support "
                        f"TLS but sslmode is {target.sslmode}")


async def _next(leg: Leg, conn: ClientConnection, timeout: float) -> m.Message:
    while True:
        ev = conn.next_event()
        if ev is not NEED_DATA:
            assert isinstance(ev, m.Message)
            return ev
        conn.receive_data(await asyncio.wait_for(leg.read_some(), timeout=timeout))


def _password(target: UpstreamTarget) -> str:
    pw = target.password()
    if pw is None:
        raise UpstreamError(
            f"connection {target.name}: the server asks for a password but none is configured",
            hint=f"set connections.{target.name}.password in the gateway configuration")
    return pw


async def connect_upstream(target: UpstreamTarget, params: Mapping[str, str]) -> Upstream:
    """Dial, negotiate TLS, and authenticate to ``target`` as its configured user."""
    leg = await _dial(target)
    try:
        return await _login(leg, target, params)
    except UpstreamError:
        leg.abort()
        raise
    except (LegClosed, TimeoutError) as exc:
        leg.abort()
        what = "timed out" if isinstance(exc, TimeoutError) else "connection closed"
        raise UpstreamError(f"connection {target.name}: {what} during login to "
                            f"{target.address}") from None
    except ProtocolError as exc:
        leg.abort()
        raise UpstreamError(f"connection {target.name}: protocol error from {target.address}: "
                            f"{exc.message}", CONNECTION_FAILURE) from None
    except BaseException:
        leg.abort()
        raise


async def _login(leg: Leg, target: UpstreamTarget, params: Mapping[str, str]) -> Upstream:
    conn = ClientConnection()
    startup = {"user": target.user, "database": target.database, **params}
    leg.write(conn.send(m.StartupMessage(params=startup)))
    scram: ScramClient | None = None
    parameters: dict[str, str] = {}
    notices: list[m.NoticeResponse] = []
    key: m.BackendKeyData | None = None
    timeout = target.connect_timeout
    while True:
        ev = await _next(leg, conn, timeout)
        if isinstance(ev, m.Authentication):
            if ev.code == m.AUTH_OK:
                continue
            if ev.code == m.AUTH_CLEARTEXT:
                if not leg.is_tls():
                    log.warning("connection %s: server %s asks for a cleartext password "
                                "without TLS", target.name, target.address)
                pw = _password(target)
                leg.write(conn.send(m.PasswordMessage(data=pw.encode() + b"\0")))
            elif ev.code == m.AUTH_MD5:
                if len(ev.data) != 4:
                    raise ProtocolError("malformed AuthenticationMD5Password")
                leg.write(conn.send(m.PasswordMessage(
                    data=md5_password(target.user, _password(target), ev.data))))
            elif ev.code == m.AUTH_SASL:
                mechs = ev.sasl_mechanisms()
                if SCRAM_SHA_256 not in mechs:
                    raise UpstreamError(f"connection {target.name}: server offers SASL "
                                        f"mechanisms {mechs}; pathwarden supports SCRAM-SHA-256")
                scram = ScramClient(_password(target))
                leg.write(conn.send(m.PasswordMessage(data=scram.initial_response())))
            elif ev.code == m.AUTH_SASL_CONTINUE and scram is not None:
                # Key derivation costs milliseconds per 4096 iterations: never on the loop.
                _, salt, iterations = server_first_parameters(ev.data)
                await asyncio.to_thread(salted_password, _password(target), salt, iterations)
                leg.write(conn.send(m.PasswordMessage(data=scram.final_response(ev.data))))
            elif ev.code == m.AUTH_SASL_FINAL and scram is not None:
                try:
                    scram.verify_final(ev.data)
                except ProtocolError as exc:
                    raise UpstreamError(f"connection {target.name}: {exc.message}") from None
            else:
                raise UpstreamError(
                    f"connection {target.name}: server {target.address} asks for an "
                    f"authentication method pathwarden does not support (code {ev.code})")
        elif isinstance(ev, m.ErrorResponse):
            hint = None
            if ev.code in ("28P01", "28000"):
                hint = (f"check the user and password configured for connection {target.name}"
                        " (the client's token was accepted; the gateway's login was refused)")
            raise UpstreamError(
                f"connection {target.name}: server {target.address} refused the gateway's "
                f"login as {target.user}: {ev.message}", ev.code or CANNOT_CONNECT, hint)
        elif isinstance(ev, m.NegotiateProtocolVersion):
            continue
        elif isinstance(ev, m.ParameterStatus):
            parameters[ev.name] = ev.value
        elif isinstance(ev, m.BackendKeyData):
            key = ev
        elif isinstance(ev, m.NoticeResponse):
            notices.append(ev)
        elif isinstance(ev, m.ReadyForQuery):
            assert conn.phase is Phase.READY
            path = await _search_path(leg, conn, target)
            leftover = leg.take_buffer()
            return Upstream(leg, conn, parameters, key, notices, leftover, path)


async def _search_path(leg: Leg, conn: ClientConnection,
                       target: UpstreamTarget) -> tuple[str, ...] | None:
    """Ask the server for the session's search_path before the client takes over."""
    leg.write(conn.send(m.Query(text="SHOW search_path")))
    value: str | None = None
    failed = False
    while True:
        ev = await _next(leg, conn, target.connect_timeout)
        if isinstance(ev, m.DataRow):
            values = ev.values()
            if values and values[0] is not None:
                value = values[0].decode("utf-8", "replace")
        elif isinstance(ev, m.ErrorResponse):
            failed = True
        elif isinstance(ev, m.ReadyForQuery):
            break
    if failed or value is None:
        return None
    return parse_search_path(value, target.user)


def parse_search_path(value: str, user: str) -> tuple[str, ...]:
    """Schemas of a ``search_path`` setting, ``"$user"`` replaced by ``user``."""
    schemas: list[str] = []
    for raw in _split_identifiers(value):
        if raw == "$user":
            schemas.append(user)
        elif raw:
            schemas.append(raw)
    return tuple(dict.fromkeys(schemas))


def _split_identifiers(value: str) -> list[str]:
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t,":
            i += 1
        if i >= n:
            break
        if value[i] == '"':
            j, name = i + 1, []
            while j < n:
                if value[j] == '"':
                    if j + 1 < n and value[j + 1] == '"':
                        name.append('"')
                        j += 2
                        continue
                    break
                name.append(value[j])
                j += 1
            out.append("".join(name))
            i = j + 1
        else:
            j = i
            while j < n and value[j] != ",":
                j += 1
            out.append(value[i:j].strip().lower())
            i = j
    return out


async def send_cancel(target: UpstreamTarget, key: m.BackendKeyData) -> None:
    """Deliver a CancelRequest for ``key`` to the upstream server (best effort)."""
    leg = await _dial(target)
    try:
        leg.write(m.CancelRequest(process_id=key.process_id, secret_key=key.secret_key).encode())
        # The server closes the connection once it has read the request.
        with contextlib.suppress(LegClosed, TimeoutError):
            await asyncio.wait_for(leg.read_some(), timeout=5)
    finally:
        leg.close()
