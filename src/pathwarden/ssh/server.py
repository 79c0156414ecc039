"""The SSH front leg: who is connecting, to which target, and one session per connection.

Theory of operation
-------------------

:class:`SshListener` serves SSH on asyncssh with the gateway's host key. The
SSH user name selects the target connection: ``<connection>`` or
``<identity>+<connection>`` (the identity part must then be the identity the
credential names, like the PostgreSQL user name). A client proves who it is
with a pathwarden token as the password, or with a short-lived certificate
from the gateway's SSH CA (``pathwarden ssh cert``). Failed logins count
against the client address and the identity exactly as on the PostgreSQL
listener (``auth_limits``); a refusal is explained in an authentication banner
(OpenSSH prints it) without ever echoing the token.

After authentication :class:`SshSession` opens the session record and the
recording and dials the target (:mod:`.upstream`) in the background. Every
channel the client opens is a :class:`~.channel.ChannelRelay`; opening one
waits for the dial, and a target that cannot be reached refuses the channel
with a message naming the cause (``channel 0: open failed: connect failed:
pathwarden: cannot reach ...``). Port forwarding requests are operations like
any other: decided by policy (no rule allows them by default), recorded, and
an allowed local forward is tunnelled through the target connection. Agent
and X11 forwarding are never offered.

The session lives no longer than its token: the gateway's revocation check
and expiry timers call :meth:`SshSession.terminate`, which writes the reason
to every open channel's stderr and closes the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import socket
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh

from ..config import ListenerConfig, SshConnection
from ..identity import AuthError
from ..identity.ratelimit import retry_message, source_key
from ..identity.ssh_ca import (
    CertificateLogin,
    LoginName,
    PresentedCertificate,
    SshCertificateAuthority,
)
from ..identity.tokens import TokenError
from ..masking import MaskEngine
from ..masking.settings import MaskingError
from ..model import (
    Action,
    ConnectionRef,
    Decision,
    Identity,
    Operation,
    Protocol,
    SessionRecord,
    StatementRecord,
    Verdict,
)
from ..proxy.recorder import SessionRecording
from ..recording import RecordingError
from ..store import StoreError
from .keys import HOST_KEY_FILE, load_or_create_host_key
from .upstream import SshTarget, SshUpstreamError, build_ssh_target, dial

if TYPE_CHECKING:
    from ..proxy.gateway import Gateway
    from .channel import ChannelRelay

log = logging.getLogger(__name__)

__all__ = ["SshListener", "SshSession", "parse_username"]

# Token failures anyone can produce for any name (see pg_listener): counted per address.
_FORGEABLE = frozenset({"malformed", "bad_signature"})
_MAX_USERNAME = 256
# Seconds between refusing a channel (target unreachable) and closing the connection.
_END_AFTER_REFUSAL = 1.0


def _normal_host(host: str) -> str:
    """One spelling per address for forwarding policy: ``127.1``, ``2130706433`` and
    ``127.0.0.1`` are the same target; names are lower case without a final dot."""
    text = host.strip().rstrip(".").lower()
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        pass
    else:
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is 127.0.0.1
        return str(mapped if mapped is not None else address)
    try:
        return socket.inet_ntoa(socket.inet_aton(text))
    except OSError:
        return text


def parse_username(username: str) -> tuple[str | None, str]:
    """``connection`` or ``identity+connection`` -> (identity or None, connection)."""
    identity, plus, connection = username.rpartition("+")
    if not plus:
        return None, username
    return identity or None, connection


class SshListener:
    """One ``protocol: ssh`` listener."""

    def __init__(self, gateway: Gateway, config: ListenerConfig) -> None:
        self.gateway = gateway
        self.config = config
        self._server: asyncssh.SSHAcceptor | None = None
        self.host_key_path = Path(config.host_key or Path(gateway.config.data_dir) / HOST_KEY_FILE)
        self.host_key = load_or_create_host_key(self.host_key_path)
        self.ca = SshCertificateAuthority.load_or_create(Path(gateway.config.data_dir))
        self.address = config.bind

    async def start(self) -> None:
        settings = self.gateway.config.ssh
        keepalive = settings.keepalive_interval.total_seconds()
        self._server = await asyncssh.create_server(
            lambda: GatewaySshServer(self), self.config.host, self.config.port,
            server_host_keys=[self.host_key], encoding=None, line_editor=False,
            allow_pty=True, x11_forwarding=False, agent_forwarding=False,
            login_timeout=settings.login_timeout.total_seconds(),
            keepalive_interval=keepalive or None,
            keepalive_count_max=settings.keepalive_count_max,
            server_version="pathwarden", rdns_lookup=False,
            encryption_algs=list(settings.ciphers),
        )
        sock = self._server.sockets[0].getsockname()
        host = f"[{sock[0]}]" if ":" in str(sock[0]) else str(sock[0])
        self.address = f"{host}:{sock[1]}"
        log.info("listener %s: SSH on %s (host key %s)", self.config.name, self.address,
                 self.host_key.get_fingerprint())

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None


class GatewaySshServer(asyncssh.SSHServer):
    """asyncssh's per-connection callbacks: authentication and channel requests."""

    def __init__(self, listener: SshListener) -> None:
        self.listener = listener
        self.gateway = listener.gateway
        self.conn: asyncssh.SSHServerConnection | None = None
        self.peer: tuple[Any, ...] | None = None
        self.session: SshSession | None = None
        self._identity: Identity | None = None
        self._connection: str = ""
        # Certificates from the gateway's SSH CA (pathwarden ssh cert).
        self.certs = CertificateLogin(listener.ca, self._check_certificate)

    # -- connection --------------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.certs.attach(conn)
        peer = conn.get_extra_info("peername")
        self.peer = tuple(peer) if peer else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.session is not None:
            self.session.end("client closed" if exc is None else f"client lost: {exc}")

    @property
    def client_addr(self) -> str:
        if not self.peer:
            return "unknown"
        host = str(self.peer[0])
        return f"[{host}]:{self.peer[1]}" if ":" in host else f"{host}:{self.peer[1]}"

    @property
    def source(self) -> str:
        return source_key(str(self.peer[0])) if self.peer else "local"

    # -- authentication ------------------------------------------------------------

    def begin_auth(self, username: str) -> bool:
        self.certs.begin_auth(username[:_MAX_USERNAME])
        return True

    def password_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    async def validate_password(self, username: str, password: str) -> bool:
        gw = self.gateway
        claimed, connection = parse_username(username[:_MAX_USERNAME])
        limiter = gw.auth_limiter
        wait = limiter.check(self.source, claimed)
        if wait is not None:
            self._refuse(f"{retry_message(wait)} (from this address or for {claimed or username})",
                         username, "too many failed authentications")
            return False
        try:
            user = claimed
            if user is None:
                try:
                    user = gw.authority.verify(password).identity
                except TokenError as exc:
                    raise AuthError(exc.reason, str(exc)) from None
            identity = await gw.authenticate(user=user, token=password, connection=connection)
        except AuthError as exc:
            # A forged token, or a valid one presented for another identity's name,
            # counts only against the address: otherwise anyone could lock a
            # pipeline out by naming it.
            forged = exc.reason in _FORGEABLE or exc.reason == "identity_mismatch"
            limiter.failed(self.source, None if forged or claimed is None else claimed)
            self._refuse(f"authentication failed for {username}: {exc}", username,
                         f"authentication failed: {exc}")
            return False
        except StoreError as exc:
            log.error("SSH login of %s refused: the store is unavailable: %s", username, exc)
            self._refuse("the gateway cannot check tokens right now (its store is "
                         "unavailable); try again later", username,
                         "store unavailable during authentication")
            return False
        limiter.succeeded(self.source, identity.name)
        return self._accept(identity, connection, username)

    async def _check_certificate(self, cert: PresentedCertificate, login: LoginName) -> Identity:
        """A certificate signed by the gateway's CA: its token record decides (revocation)."""
        gw = self.gateway
        limiter = gw.auth_limiter
        wait = limiter.check(self.source, login.identity)
        if wait is not None:
            raise AuthError("rate_limited", f"{retry_message(wait)} (from this address)")
        try:
            identity = await gw.authenticator.authenticate_ssh_certificate(
                key_id=cert.key_id, principals=cert.principals, valid_before=cert.valid_before,
                connection=login.connection, user_identity=login.identity)
        except AuthError as exc:
            limiter.failed(self.source, login.identity)
            self._refuse(f"certificate login refused: {exc}", login.connection,
                         f"certificate refused: {exc}", banner=False)
            raise
        except StoreError as exc:
            log.error("SSH certificate login refused: the store is unavailable: %s", exc)
            raise AuthError("store_unavailable", "the gateway cannot check certificates right "
                            "now (its store is unavailable); try again later") from None
        problem = self._not_ssh(login.connection)
        if problem is not None:
            raise AuthError("not_ssh", problem)
        limiter.succeeded(self.source, identity.name)
        self._identity = identity
        self._connection = login.connection
        return identity

    def _not_ssh(self, connection: str) -> str | None:
        """Why ``connection`` is not an SSH host clients can reach here, or None."""
        conn = self.gateway.config.connections.get(connection)
        if conn is not None and conn.protocol == "ssh":
            return None
        what = (f"is a {conn.protocol} connection, not an SSH host" if conn is not None
                else "does not exist")
        return f"connection {connection} {what}"

    def _accept(self, identity: Identity, connection: str, username: str) -> bool:
        """Check the connection is an SSH target the identity may use; keep who it is."""
        problem = self._not_ssh(connection)
        if problem is not None:
            self._refuse(f"{problem}; the SSH user name is <connection> or "
                         "<identity>+<connection>", username, problem)
            return False
        self._identity = identity
        self._connection = connection
        return True

    def _refuse(self, message: str, username: str, reason: str, *, banner: bool = True) -> None:
        log.info("SSH client %s refused: user=%s: %s", self.client_addr, username, reason)
        if self.conn is not None and banner:
            with contextlib.suppress(Exception):
                self.conn.send_auth_banner(f"pathwarden: {message}\r\n")
        record = SessionRecord(
            id=secrets.token_hex(8), protocol=Protocol.SSH, identity=username, token_ref=None,
            client_addr=self.client_addr, connection=parse_username(username)[1],
            started_at=datetime.now(UTC), ended_at=datetime.now(UTC), end_reason=reason)
        self.gateway.audit.session_ended(record)

    def auth_completed(self) -> None:
        assert self._identity is not None
        assert self.conn is not None
        gw = self.gateway
        identity = self._identity
        name = self._connection
        record = SessionRecord(
            id=secrets.token_hex(8), protocol=Protocol.SSH, identity=identity.name,
            token_ref=identity.token_ref, client_addr=self.client_addr, connection=name,
            started_at=datetime.now(UTC), claims=identity.claims)
        conn_ref = ConnectionRef(name, Protocol.SSH, gw.connection_labels(name))
        try:
            engine = gw.masking_for(identity, conn_ref)
        except MaskingError as exc:
            self._close_refused(record, f"output on connection {name} cannot be masked, so the "
                                f"session was refused (fail closed): {exc}",
                                f"masking unavailable: {exc}")
            return
        recording: SessionRecording | None = None
        if gw.recorder is not None:
            try:
                recording = gw.recorder.open(record, "ssh")
            except RecordingError as exc:
                log.error("session %s: recording cannot be opened: %s", record.id, exc)
                if gw.config.recording.strict:
                    self._close_refused(record, "the session cannot be recorded, so it was "
                                        "refused (recording.strict)",
                                        f"recording unavailable: {exc}")
                    return
        conn_cfg = gw.config.connections[name]
        assert isinstance(conn_cfg, SshConnection)
        target = build_ssh_target(name, conn_cfg, gw.config.ssh)
        self.session = SshSession(gw, self.conn, identity, conn_ref, record, target, engine,
                                  recording)
        self.session.start()

    def _close_refused(self, record: SessionRecord, message: str, reason: str) -> None:
        log.error("session %s refused: %s", record.id, reason)
        record.ended_at = datetime.now(UTC)
        record.end_reason = reason
        self.gateway.audit.session_ended(record)
        assert self.conn is not None
        self.conn.disconnect(asyncssh.DISC_SERVICE_NOT_AVAILABLE, f"pathwarden: {message}")

    # -- channels ------------------------------------------------------------------------

    async def session_requested(self) -> ChannelRelay:
        from .channel import ChannelRelay

        session = self.session
        if session is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED,
                                            "pathwarden: the session is not ready")
        await session.upstream_ready()
        return ChannelRelay(session)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> asyncssh.SSHClientConnection:
        target = f"{_normal_host(dest_host)}:{dest_port}"
        session = self.session
        if session is None:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                            "pathwarden: forwarding refused")
        decision = session.decide_now(
            "forward", f"forward to {target}",
            Action("forwarding", "local_port", {"targets": (target,)}, text=target))
        if decision.allowed and session.upstream is None:
            decision = Decision(Verdict.DENY, "the gateway is not connected to the target yet")
        if not decision.allowed or session.upstream is None:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"pathwarden: port forwarding to {target} denied: {decision.reason}")
        # asyncssh opens the same destination through the target connection.
        return session.upstream

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        if self.session is not None:
            target = f"{_normal_host(listen_host) if listen_host else '*'}:{listen_port}"
            self.session.decide_now(
                "forward", f"remote forward from {target}",
                Action("forwarding", "remote_port", {"targets": (target,)}, text=target),
                refuse_allowed="remote port forwarding is not supported by the gateway")
        return False

    def unix_connection_requested(self, dest_path: str) -> bool:
        if self.session is not None:
            self.session.decide_now(
                "forward", f"forward to unix socket {dest_path}",
                Action("forwarding", "unix_socket", {"targets": (dest_path,)}, text=dest_path),
                refuse_allowed="unix socket forwarding is not supported by the gateway")
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                        "pathwarden: unix socket forwarding refused")

    def unix_server_requested(self, listen_path: str) -> bool:
        if self.session is not None:
            self.session.decide_now(
                "forward", f"remote forward from unix socket {listen_path}",
                Action("forwarding", "unix_socket", {"targets": (listen_path,)},
                       text=listen_path),
                refuse_allowed="unix socket forwarding is not supported by the gateway")
        return False


def _discard(pending: Any) -> None:
    """Drop an approval wait nobody will use (forwarding cannot be held)."""
    close = getattr(pending, "close", None)
    if close is not None:
        close()


def _retrieve(task: asyncio.Task[asyncssh.SSHClientConnection]) -> None:
    if not task.cancelled():
        task.exception()  # reported by the channel that waits for it


class SshSession:
    """One authenticated SSH connection: its target connection, record and channels."""

    def __init__(self, gateway: Gateway, conn: asyncssh.SSHServerConnection, identity: Identity,
                 connection: ConnectionRef, record: SessionRecord, target: SshTarget,
                 engine: MaskEngine | None, recording: SessionRecording | None) -> None:
        self.gateway = gateway
        self.conn = conn
        self.identity = identity
        self.connection = connection
        self.record = record
        self.target = target
        self.engine = engine
        self.recording = recording
        self.pending_approval: int | None = None
        self.channels: set[ChannelRelay] = set()
        self._channel_ids = 0
        self._seq = 0
        self._dial: asyncio.Task[asyncssh.SSHClientConnection] | None = None
        self.upstream: asyncssh.SSHClientConnection | None = None
        self._ended = False
        self.waiting_channel: ChannelRelay | None = None
        self._recording_closed = False

    @property
    def ended(self) -> bool:
        return self._ended

    def start(self) -> None:
        gw = self.gateway
        gw.audit.session_started(self.record)
        gw.session_started(self)
        log.info("session %s started: identity=%s connection=%s client=%s", self.record.id,
                 self.identity.name, self.connection.name, self.record.client_addr)
        self._dial = asyncio.get_running_loop().create_task(self._connect())
        self._dial.add_done_callback(_retrieve)

    async def _connect(self) -> asyncssh.SSHClientConnection:
        try:
            upstream = await dial(self.target)
        except SshUpstreamError as exc:
            log.warning("session %s: %s", self.record.id, exc.message)
            raise
        if self._ended:
            upstream.close()
            raise SshUpstreamError("ended", "the session ended")
        self.upstream = upstream
        return upstream

    async def upstream_ready(self) -> asyncssh.SSHClientConnection:
        """The target connection; a channel open fails with the reason when it cannot be had."""
        assert self._dial is not None
        try:
            return await asyncio.shield(self._dial)
        except SshUpstreamError as exc:
            # The refusal below must reach the client before the connection closes.
            asyncio.get_running_loop().call_later(_END_AFTER_REFUSAL, self.end,
                                                  f"upstream: {exc.message}")
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED,
                                            f"pathwarden: {exc.message}") from None

    # -- operations ---------------------------------------------------------------------

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def next_channel_id(self) -> int:
        self._channel_ids += 1
        return self._channel_ids - 1

    def mask_text(self, text: str) -> str:
        return self.engine.mask_text(text)[0] if self.engine is not None else text

    def operation(self, kind: str, text: str, actions: tuple[Action, ...] = ()) -> Operation:
        return Operation(
            session_id=self.record.id, seq=self.next_seq(), identity=self.identity,
            connection=self.connection, protocol=Protocol.SSH, kind=kind, text=text,
            action=actions[0].action if actions else "unknown", actions=actions)

    def write_ahead(self, op: Operation, decision: Decision) -> str | None:
        """Record ``op`` and its decision before it runs; why it must not run, or None."""
        if self.recording is None:
            return None
        return self.recording.operation(op, decision, self.mask_text(op.text), ())

    def audit(self, op: Operation, decision: Decision, started: datetime, *,
              duration_ms: float | None = None, tag: str | None = None,
              error: str | None = None, masked: dict[str, int] | None = None) -> None:
        self.gateway.audit.statement(StatementRecord(
            session_id=self.record.id, seq=op.seq, kind=op.kind,
            text=self.mask_text(op.text)[:4096], params=(), verdict=decision.verdict,
            reason=decision.reason, started_at=started, duration_ms=duration_ms,
            command_tag=tag, error=error, policy=decision.policy, action=op.action,
            masked=masked or None))

    def masked(self, decision: Decision) -> Decision:
        """``decision`` with its reason masked (reasons quote the command line)."""
        reason = self.mask_text(decision.reason)
        return decision if reason == decision.reason else replace(decision, reason=reason)

    async def decide(self, op: Operation) -> tuple[Operation, Decision]:
        """Classify and decide ``op``, waiting for approval when policy says so."""
        op, result = self.gateway.pipeline.decide(op)
        if isinstance(result, Decision):
            return op, self.masked(result)
        decision = await result
        return op, self.masked(decision)

    def decide_now(self, kind: str, text: str, action: Action, *,
                   refuse_allowed: str | None = None) -> Decision:
        """Decide, record and audit a one-shot request (forwarding) that cannot wait."""
        started = datetime.now(UTC)
        op, result = self.gateway.pipeline.decide(self.operation(kind, text, (action,)))
        if isinstance(result, Decision):
            decision = self.masked(result)
        else:
            _discard(result)
            decision = Decision(Verdict.DENY, "forwarding requires approval, and a forwarding "
                                "request cannot wait for it; ask for a grant (pathwarden "
                                "request --scope forwarding)")
        if decision.allowed and refuse_allowed is not None:
            decision = Decision(Verdict.DENY, f"{refuse_allowed} (allowed by "
                                f"{decision.policy} {decision.rule})", decision.policy,
                                decision.rule)
        refused = self.write_ahead(op, decision)
        if refused is not None and decision.allowed:
            decision = Decision(Verdict.DENY, refused)
        self.audit(op, decision, started)
        log.info("session %s: %s %s: %s", self.record.id, self.mask_text(text),
                 "allowed" if decision.allowed else "denied", decision.reason)
        return decision

    def event(self, type: str, data: dict[str, Any], essential: bool = True) -> None:
        if self.recording is not None and not self._recording_closed:
            self.recording.event(type, data, essential)

    # -- the gateway's LiveSession ----------------------------------------------------------

    def approval_waiting(self, request_id: int, notice: str) -> None:
        self.pending_approval = request_id
        channel = self.waiting_channel
        if channel is not None:
            channel.notice(notice)
        self.event("approval", {"request_id": request_id, "state": "pending"})

    def terminate(self, message: str, reason: str) -> None:
        for channel in list(self.channels):
            channel.notice(message)
        self.end(reason)

    def shutdown(self, message: str) -> None:
        self.terminate(message, "gateway shutdown")

    def end(self, reason: str) -> None:
        """Close both legs and write the session's final record (idempotent)."""
        if self._ended:
            return
        self._ended = True
        for channel in list(self.channels):
            channel.close_for_session(reason)
        if self._dial is not None and not self._dial.done():
            self._dial.cancel()
        if self.upstream is not None:
            self.upstream.close()
        with contextlib.suppress(Exception):
            self.conn.close()
        record = self.record
        record.ended_at = datetime.now(UTC)
        record.end_reason = reason
        self.gateway.audit.session_ended(record)
        if self.recording is not None:
            self.recording.close(record)
            self._recording_closed = True
        self.gateway.session_ended(self)
        log.info("session %s ended: identity=%s connection=%s reason=%s", record.id,
                 self.identity.name, self.connection.name, reason)
