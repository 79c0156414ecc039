"""The PostgreSQL listener: accept, negotiate TLS, authenticate the token, dial upstream.

Theory of operation: each accepted connection runs one handshake coroutine
(:meth:`PostgresListener._handshake`) that reads untyped startup packets:

- SSLRequest: answer 'S' and upgrade to TLS in place (bytes pipelined after
  the request are refused, CVE-2021-23214);
- GSSENCRequest: answer 'N' (the client falls back to TLS or plaintext);
- CancelRequest: look up the gateway-issued key and cancel the session's
  running upstream query;
- StartupMessage: ask for a cleartext password (only inside TLS, or on a
  loopback plaintext listener that allows it), verify the pathwarden token,
  map the database name to a configured connection, log in upstream with the
  connection's credentials, then hand both legs to a :class:`PgSession`.

Clients get pathwarden's own BackendKeyData, so an upstream cancel key never
leaves the gateway. Every failure becomes a FATAL ErrorResponse with a message
that says what to do, and an audit session record with its end reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
import ssl
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..identity.ratelimit import retry_message, source_key
from ..masking.settings import MaskingError
from ..model import ConnectionRef, Protocol, SessionRecord
from ..policy.sql import is_utf8_encoding
from ..protocols.postgres import messages as m
from ..protocols.postgres.connection import NEED_DATA, ServerConnection
from ..protocols.postgres.errors import ProtocolError
from ..recording import RecordingError
from ..store import StoreError
from .pg_masking import PgMasker
from .pg_session import PgSession
from .pg_upstream import UpstreamError, connect_upstream
from .stream import Leg, LegClosed

if TYPE_CHECKING:
    from ..config import ListenerConfig
    from .gateway import Gateway

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 60.0
MAX_PASSWORD_MESSAGE = 16 * 1024  # a token is well under 2 KB

# Startup parameters a client may pass through to the server. Others (notably
# `options`, `role`, `session_authorization`, `replication`) could change the
# upstream identity or protocol, so they are refused with a clear error.
FORWARDED_STARTUP_PARAMS = frozenset({
    "application_name", "client_encoding", "DateStyle", "datestyle", "TimeZone", "timezone",
    "extra_float_digits", "IntervalStyle", "intervalstyle",
    "statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout",
    "default_transaction_isolation", "default_transaction_read_only", "bytea_output",
    "geqo", "work_mem", "jit",
})
# Settings that change how the server lexes SQL: accepted only with the values
# the gateway's parser reads the same way (search_path is refused above: it
# decides which table an unqualified name means, so it is set with SET, where
# the gateway sees it).
_LEXING_STARTUP_CHECKS = {
    "standard_conforming_strings": lambda value: value.lower() == "on",
    "client_encoding": is_utf8_encoding,
}


class _Refused(Exception):
    """The handshake ends with a FATAL error to the client."""

    def __init__(self, sqlstate: str, message: str, hint: str | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.hint = hint
        self.reason = reason or message


_FORGEABLE = frozenset({"malformed", "bad_signature"})


def _source_of(peer: object) -> str:
    """The client's address without its port: what failed logins are counted by."""
    if isinstance(peer, tuple) and peer:
        return source_key(str(peer[0]))
    return "local"


def _is_loopback(peer: object) -> bool:
    if isinstance(peer, tuple) and peer:
        try:
            return ipaddress.ip_address(str(peer[0]).split("%")[0]).is_loopback
        except ValueError:
            return False
    return False


class PostgresListener:
    """Accepts PostgreSQL clients on one configured address."""

    def __init__(self, gateway: Gateway, config: ListenerConfig,
                 tls_context: ssl.SSLContext | None) -> None:
        self.gateway = gateway
        self.config = config
        self.tls_context = tls_context
        self.server: asyncio.Server | None = None
        self._handshakes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            self._accept, self.config.host, self.config.port, backlog=1024,
        )
        log.info("listener %s: PostgreSQL on %s (TLS %s)", self.config.name, self.address,
                 "required" if self._tls_required_everywhere else "optional on loopback")

    @property
    def _tls_required_everywhere(self) -> bool:
        return self.config.require_tls and not self.config.allow_plaintext_loopback

    @property
    def address(self) -> str:
        if self.server is not None and self.server.sockets:
            host, port = self.server.sockets[0].getsockname()[:2]
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return self.config.bind

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._handshakes):
            task.cancel()
        if self._handshakes:
            await asyncio.gather(*self._handshakes, return_exceptions=True)

    def _accept(self) -> Leg:
        leg = Leg()
        task = asyncio.get_running_loop().create_task(self._run_handshake(leg))
        self._handshakes.add(task)
        task.add_done_callback(self._handshakes.discard)
        return leg

    async def _run_handshake(self, leg: Leg) -> None:
        await asyncio.sleep(0)  # let connection_made run
        sock = leg.transport.get_extra_info("socket") if leg.transport else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.wait_for(self._handshake(leg), timeout=HANDSHAKE_TIMEOUT)
        except asyncio.CancelledError:
            # The gateway is stopping: tell a client still logging in, then close.
            leg.write(m.ErrorResponse.build(
                "57P01", "pathwarden: the gateway is shutting down; reconnect to continue",
                severity="FATAL").encode())
            leg.close()
            raise
        except TimeoutError:
            log.warning("client %s: handshake timed out", leg.peer())
            leg.abort()
        except LegClosed:
            leg.abort()
        except Exception:
            log.exception("client %s: handshake failed", leg.peer())
            leg.abort()

    async def _read(self, leg: Leg, front: ServerConnection) -> m.Message | m.StartupPacket:
        while True:
            ev = front.next_event()
            if ev is not NEED_DATA:
                assert isinstance(ev, m.Message | m.StartupPacket)
                return ev
            front.receive_data(await leg.read_some())

    async def _handshake(self, leg: Leg) -> None:
        front = ServerConnection()
        peer = leg.transport.get_extra_info("peername") if leg.transport else None
        while True:
            try:
                pkt = await self._read(leg, front)
            except ProtocolError as exc:
                leg.write(m.ErrorResponse.build(exc.sqlstate, f"pathwarden: {exc.message}",
                                                severity="FATAL").encode())
                leg.close()
                return
            if isinstance(pkt, m.SSLRequest):
                if leg.is_tls() or self.tls_context is None:
                    leg.write(b"N")
                    continue
                if front.buffered or leg.buffered:
                    log.warning("client %s: data pipelined after SSLRequest; refused", leg.peer())
                    leg.abort()
                    return
                leg.write(b"S")
                try:
                    await leg.start_tls(self.tls_context, server_side=True)
                except (ssl.SSLError, OSError, TimeoutError) as exc:
                    log.info("client %s: TLS handshake failed: %s", leg.peer(), exc)
                    leg.abort()
                    return
                continue
            if isinstance(pkt, m.GSSENCRequest):
                leg.write(b"N")
                continue
            if isinstance(pkt, m.CancelRequest):
                leg.close()
                await self.gateway.cancel(pkt.process_id, pkt.secret_key)
                return
            assert isinstance(pkt, m.StartupMessage)
            await self._startup(leg, front, pkt, peer)
            return

    async def _startup(self, leg: Leg, front: ServerConnection, startup: m.StartupMessage,
                       peer: object) -> None:
        gw = self.gateway
        user = startup.params.get("user", "")
        dbname = startup.params.get("database") or user
        record = SessionRecord(
            id=secrets.token_hex(8), protocol=Protocol.POSTGRES, identity=user,
            token_ref=None, client_addr=leg.peer(), connection=dbname,
            started_at=datetime.now(UTC),
        )
        try:
            await self._establish(leg, front, startup, record, peer, dbname)
        except _Refused as refused:
            leg.write(m.ErrorResponse.build(refused.sqlstate, refused.message,
                                            severity="FATAL", hint=refused.hint).encode())
            leg.close()
            record.ended_at = datetime.now(UTC)
            record.end_reason = refused.reason
            gw.audit.session_ended(record)
            log.info("client %s refused: user=%s connection=%s: %s", record.client_addr, user,
                     dbname, refused.reason)

    async def _establish(self, leg: Leg, front: ServerConnection, startup: m.StartupMessage,
                         record: SessionRecord, peer: object, dbname: str) -> None:
        gw = self.gateway
        user = record.identity
        if startup.params.get("replication", "false").lower() not in ("false", "0", "off", "no"):
            raise _Refused("08P01", "pathwarden: replication connections are not supported",
                           reason="replication connection refused")
        plaintext_ok = (not self.config.require_tls) or (
            self.config.allow_plaintext_loopback and _is_loopback(peer))
        if not leg.is_tls() and not plaintext_ok:
            raise _Refused(
                "28000", "pathwarden: TLS is required to send a token",
                hint="connect with sslmode=require (the gateway refuses tokens in plaintext)",
                reason="plaintext connection refused")
        forwarded: dict[str, str] = {}
        for key, value in startup.params.items():
            if key in ("user", "database"):
                continue
            if key.startswith("_pq_."):
                continue  # protocol extensions: answered by NegotiateProtocolVersion below
            check = _LEXING_STARTUP_CHECKS.get(key)
            if check is not None:
                if not check(value.strip().strip("'\"").strip()):
                    raise _Refused(
                        "08P01", f"pathwarden: startup parameter {key}={value!r} is not allowed",
                        hint="the gateway reads SQL with standard_conforming_strings on and "
                             "client_encoding UTF8; connect with those",
                        reason=f"startup parameter {key}={value} refused")
                forwarded[key] = value
                continue
            if key not in FORWARDED_STARTUP_PARAMS:
                raise _Refused(
                    "08P01", f"pathwarden: startup parameter {key!r} is not allowed",
                    hint="remove it from the connection string; set session settings with "
                         "SET after connecting", reason=f"startup parameter {key} refused")
            forwarded[key] = value
        source = _source_of(peer)
        limiter = gw.auth_limiter
        wait = limiter.check(source, user)
        if wait is not None:
            raise _Refused("28000", f"pathwarden: {retry_message(wait)} (from this address or "
                           f"for user {user})", reason="too many failed authentications")
        # Ask for the token as a cleartext password (inside TLS or on loopback).
        leg.write(front.send(m.Authentication(code=m.AUTH_CLEARTEXT)))
        # Before authentication a client gets no more than a token's worth of
        # buffer (PostgreSQL itself caps login messages at a few KB).
        limit = front.max_message_size
        front.max_message_size = MAX_PASSWORD_MESSAGE
        try:
            msg = await self._read(leg, front)
        except ProtocolError as exc:
            raise _Refused(exc.sqlstate, f"pathwarden: {exc.message}",
                           reason=f"client protocol error: {exc.message}") from None
        if isinstance(msg, m.Terminate):
            raise LegClosed("client left during authentication")
        if not isinstance(msg, m.PasswordMessage):  # the phase table admits nothing else
            raise _Refused("08P01", "pathwarden: expected a password message")
        try:
            token = msg.password()
        except ProtocolError as exc:
            raise _Refused("08P01", f"pathwarden: {exc.message}") from None
        front.max_message_size = limit
        try:
            identity = await gw.authenticate(user=user, token=token, connection=dbname)
        except gw.auth_errors as exc:
            # Anyone can send a forged or garbled token for any name: counting those
            # against the identity would let them lock a pipeline out. They count
            # against the address they come from.
            forged = getattr(exc, "reason", "") in _FORGEABLE
            limiter.failed(source, None if forged else user)
            raise _Refused("28P01", f"pathwarden: authentication failed for user {user}: {exc}",
                           reason=f"authentication failed: {exc}") from None
        except StoreError as exc:
            log.error("login of %s refused: the store is unavailable: %s", user, exc)
            raise _Refused("58000", "pathwarden: the gateway cannot check tokens right now "
                           "(its store is unavailable); try again later",
                           reason="store unavailable during authentication") from None
        del token
        limiter.succeeded(source, user)
        record.token_ref = identity.token_ref
        record.claims = identity.claims
        target = gw.targets.get(dbname)
        if target is None:  # authenticate() already refuses unknown connections
            conn = gw.config.connections.get(dbname)
            what = (f"is an {conn.protocol} connection, not a PostgreSQL database; reach it "
                    f"with an {conn.protocol} client" if conn is not None else "does not exist")
            raise _Refused("3D000", f"pathwarden: connection {dbname} {what}",
                           reason=f"connection {dbname} {what}")
        conn_ref = ConnectionRef(dbname, Protocol.POSTGRES, gw.connection_labels(dbname))
        try:
            engine = gw.masking_for(identity, conn_ref)
        except MaskingError as exc:
            log.error("login of %s refused: %s", identity.name, exc)
            raise _Refused("58000", f"pathwarden: responses on connection {dbname} cannot be "
                           "masked, so the session was refused (fail closed): "
                           f"{exc}", reason=f"masking unavailable: {exc}") from None
        try:
            upstream = await connect_upstream(target, forwarded)
        except UpstreamError as exc:
            raise _Refused(exc.sqlstate, f"pathwarden: {exc.message}", hint=exc.hint,
                           reason=f"upstream: {exc.message}") from None
        recording = None
        if gw.recorder is not None:
            try:
                recording = gw.recorder.open(record, "postgres")
            except RecordingError as exc:
                log.error("session %s: recording cannot start: %s", record.id, exc)
                if gw.recorder.settings.strict:
                    upstream.leg.close()
                    raise _Refused("58000", "pathwarden: the session cannot be recorded "
                                   "right now, so it was refused (recording.strict); try "
                                   "again later", reason=f"recording unavailable: {exc}"
                                   ) from None
        gw.audit.session_started(record)
        # Tell the client what the server told us, with the gateway's own cancel key.
        out = [front.send(m.Authentication(code=m.AUTH_OK))]
        if startup.protocol_version != m.PROTOCOL_3_0 or any(
                k.startswith("_pq_.") for k in startup.params):
            unrecognized = tuple(k for k in startup.params if k.startswith("_pq_."))
            out.append(front.send(m.NegotiateProtocolVersion(newest_minor=0,
                                                             unrecognized=unrecognized)))
        masker = PgMasker(engine) if engine is not None else None
        for name, value in upstream.parameters.items():
            ps = m.ParameterStatus(name=name, value=value)
            masked = masker.text_fields(b"S", ps.payload(), {}) if masker is not None else None
            out.append(masked if masked is not None else front.send(ps))
        for notice in upstream.notices:
            if masker is not None:
                masked = masker.fields_message(b"N", notice.payload(), {})
                if masked is not None:
                    out.append(masked)
                    continue
            out.append(front.send(notice))
        cancel_pid, cancel_secret = gw.new_cancel_key()
        out.append(front.send(m.BackendKeyData(process_id=cancel_pid, secret_key=cancel_secret)))
        out.append(front.send(m.ReadyForQuery(status="I")))
        session = PgSession(
            record=record, identity=identity,
            connection=conn_ref,
            client=leg, front=front, upstream=upstream.leg, back=upstream.conn,
            target=target, upstream_key=upstream.key, pipeline=gw.pipeline,
            on_end=gw.session_ended, masker=masker, recording=recording,
        )
        session.server_parameters.update(upstream.parameters)
        session.sql.initial_search_path = upstream.search_path
        gw.session_started(session, (cancel_pid, cancel_secret))
        log.info("session %s started: identity=%s connection=%s client=%s tls=%s", record.id,
                 identity.name, dbname, record.client_addr, leg.is_tls())
        leg.write(b"".join(out))
        session.start(leg.take_buffer(), upstream.leftover)
