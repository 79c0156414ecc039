"""The gateway process: wires configuration, identity, store, audit and listeners.

:class:`Gateway` owns everything that outlives one session: the upstream
targets built from the configuration, the hook pipeline, the audit writer, the
table of live sessions and the cancel keys handed to clients, the OIDC
exchange and the HTTP API (:mod:`pathwarden.api`). :func:`serve` runs it until
SIGINT/SIGTERM, then ends every session with a FATAL ``admin_shutdown`` error,
flushes the audit trail and exits.

A session lives no longer than its token: every ``tokens.revocation_check``
one store query finds which live sessions' tokens were revoked (by any
replica or the CLI), and a timer per session ends it ``tokens.session_grace``
after its token expires. Either way the client gets a FATAL 28000 error that
names the token, and the session record's end reason says which. A store
failure during the check is logged and retried on the next tick; sessions are
not cut because the store could not be asked.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import signal
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ..approvals import ApprovalRequest, ApprovalService
from ..approvals.notify import build_notifiers
from ..approvals.notify.base import Dispatcher
from ..audit.writer import AuditWriter
from ..config import (
    ConfigError,
    GatewayConfig,
    PostgresConnection,
    SshConnection,
    format_duration,
    load_config,
)
from ..config.schema import policy_masking
from ..identity import Authenticator, AuthError, TokenAuthority
from ..identity.oidc import OidcExchange
from ..identity.ratelimit import FailureLimiter
from ..masking import MaskEngine, engine_for
from ..masking.settings import MaskingError, mask_options
from ..model import ConnectionRef, Identity, Operation, SessionRecord
from ..model import Protocol as ModelProtocol
from ..policy import ACTION_CLASSES, PolicyConfig, PolicyEngine
from ..policy.rules import ALLOW_EVERYTHING
from ..policy.shell import ShellClassifier
from ..policy.sql import DEFAULT_SIDE_EFFECT_FUNCTIONS, PostgresClassifier
from ..store import Store, StoreError, TokenRecord, open_store, store_url_for
from .approvals_gate import ApprovalGate, request_view
from .pg_listener import PostgresListener
from .pg_session import PgSession
from .pg_upstream import UpstreamTarget
from .pipeline import Pipeline
from .recorder import Recorder
from .tls import ensure_self_signed, server_context, upstream_context

if TYPE_CHECKING:
    from ..api import ApiServer

log = logging.getLogger(__name__)


class LiveSession(Protocol):
    """What the gateway needs of a live session of any protocol."""

    record: SessionRecord
    identity: Identity
    pending_approval: int | None

    def approval_waiting(self, request_id: int, notice: str) -> None: ...

    def terminate(self, message: str, reason: str) -> None:
        """Tell the client why, then end the session (a revoked or expired token)."""
        ...

    def shutdown(self, message: str) -> None: ...


class Listener(Protocol):
    @property
    def address(self) -> str: ...

    @property
    def port(self) -> int: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def build_targets(config: GatewayConfig) -> dict[str, UpstreamTarget]:
    """The PostgreSQL connections' dialing parameters, by name."""
    return {n: build_target(n, c) for n, c in config.connections.items()
            if isinstance(c, PostgresConnection)}


def build_target(name: str, conn: PostgresConnection) -> UpstreamTarget:
    """The upstream dialing parameters of one configured connection."""
    password = conn.password

    def reveal() -> str | None:
        return password.reveal() if password is not None else None

    return UpstreamTarget(
        name=name, host=conn.host, port=conn.port, database=conn.database, user=conn.user,
        password=reveal, sslmode=conn.sslmode,
        ssl_context=upstream_context(conn.sslmode, conn.sslrootcert),
        connect_timeout=conn.connect_timeout.total_seconds(),
    )


class Gateway:
    """Shared state of one running gateway."""

    auth_errors: tuple[type[Exception], ...] = (AuthError,)

    def __init__(self, config: GatewayConfig, store: Store, authority: TokenAuthority,
                 config_path: Path | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.store = store
        self.authority = authority
        self.authenticator = Authenticator(config, authority, store)
        self.audit = AuditWriter(
            store,
            flush_interval=config.audit.flush_interval.total_seconds(),
            max_batch=config.audit.max_batch,
        )
        self.approvals = ApprovalService(store, config.approvals, notify=self._notify_approval)
        self._notifiers = Dispatcher(build_notifiers(config.notifiers),
                                     record=self.approvals.record_notification)
        self.pipeline = Pipeline(build_classifier(config),
                                 ApprovalGate(build_authorizer(config), self.approvals, self),
                                 self.audit)
        self._watch_task: asyncio.Task[None] | None = None
        self.targets = build_targets(config)
        self._masking: dict[tuple[str, tuple[str, ...]], MaskEngine | None] = {}
        # Failed logins per client address and per identity, on every protocol and the API.
        limits = config.auth_limits
        self.auth_limiter = FailureLimiter(per_source=limits.failures_per_source,
                                           per_subject=limits.failures_per_identity,
                                           window=limits.window.total_seconds())
        self.listeners: list[Listener] = []
        self.sessions: set[LiveSession] = set()
        self._by_id: dict[str, LiveSession] = {}
        self._cancel_keys: dict[tuple[int, bytes], PgSession] = {}
        self._keys_of: dict[PgSession, tuple[int, bytes]] = {}
        # None: no `trust:` configured, the API's exchange answers 404.
        self.oidc: OidcExchange | None = OidcExchange(config.trust) if config.trust else None
        self._retired_oidc: list[OidcExchange] = []
        self.api: ApiServer | None = None
        self._token_task: asyncio.Task[None] | None = None
        self._expiry: dict[LiveSession, asyncio.TimerHandle] = {}
        # None: recording.enabled is false.
        self.recorder: Recorder | None = (
            Recorder(config.recording, Path(config.data_dir), store, authority.signing_key)
            if config.recording.enabled else None)

    async def start(self) -> None:
        self.audit.start()
        await self.approvals.start()
        if self.recorder is not None:
            await self.recorder.start()
        data_dir = self.config.data_dir
        for lc in self.config.listeners:
            if lc.protocol == "ssh":
                from ..ssh.server import SshListener

                ssh_listener = SshListener(self, lc)
                await ssh_listener.start()
                self.listeners.append(ssh_listener)
                continue
            if lc.tls is not None:
                ctx = server_context(lc.tls.cert_file, lc.tls.key_file)
            else:
                cert, key = ensure_self_signed(data_dir)
                ctx = server_context(cert, key)
            if not lc.require_tls:
                log.warning("listener %s: require_tls is false; tokens may cross the network "
                            "in plaintext", lc.name)
            listener = PostgresListener(self, lc, ctx)
            await listener.start()
            self.listeners.append(listener)
        if self.config.api.enabled:
            await self._start_api()
        self._token_task = asyncio.get_running_loop().create_task(self._watch_tokens())

    async def _start_api(self) -> None:
        from ..api import ApiServer, create_app

        settings = self.config.api
        if settings.tls is not None:
            ctx = server_context(settings.tls.cert_file, settings.tls.key_file)
        else:
            cert, key = ensure_self_signed(self.config.data_dir)
            ctx = server_context(cert, key)
        ctx.set_alpn_protocols(["http/1.1"])
        api = ApiServer(create_app(self), settings, ctx)
        await api.start()
        self.api = api

    # -- configuration reload ------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the configuration file and apply what can change live.

        Policies, identities and connections apply to new operations and new
        sessions at once; sessions keep running. A broken file is rejected with
        a log line that names the problem, and the running configuration stays.
        """
        if self.config_path is None:
            log.warning("reload requested but the gateway has no configuration file")
            return False
        try:
            new = load_config(self.config_path)
            classifier = build_classifier(new)
            authorizer = build_authorizer(new)
            targets = build_targets(new)
            check_masking(new)
        except (ConfigError, MaskingError) as exc:
            log.error("configuration reload rejected; the running configuration stays:\n%s",
                      exc)
            return False
        except Exception as exc:
            log.error("configuration reload rejected (%s: %s); the running configuration "
                      "stays", type(exc).__name__, exc)
            return False
        if [lc.model_dump() for lc in new.listeners] != [
                lc.model_dump() for lc in self.config.listeners] or new.store != self.config.store:
            log.warning("listener and store changes take effect only after a restart")
        if new.api != self.config.api:
            log.warning("api changes take effect only after a restart")
        old = self.config
        self.config = new
        self.targets = targets
        self._masking = {}
        self.authenticator = Authenticator(new, self.authority, self.store)
        if new.trust != old.trust:
            self._replace_oidc(OidcExchange(new.trust) if new.trust else None)
        if new.tokens.session_grace != old.tokens.session_grace:
            for session in list(self.sessions):
                self._schedule_expiry(session)
        self.pipeline.classifier = classifier
        self.approvals.config = new.approvals
        self._notifiers = Dispatcher(build_notifiers(new.notifiers),
                                     record=self.approvals.record_notification)
        # reference swaps: each operation sees one rule set
        self.pipeline.authorizer = ApprovalGate(authorizer, self.approvals, self)
        log.info("configuration reloaded from %s: %d connection(s), %d identities",
                 self.config_path, len(new.connections), len(new.identities))
        return True

    def watch_config(self, interval: float = 2.0) -> None:
        """Reload when the configuration file changes (polled; no extra dependency)."""
        if self.config_path is None or self._watch_task is not None:
            return
        self._watch_task = asyncio.get_running_loop().create_task(self._watch(interval))

    async def _watch(self, interval: float) -> None:
        assert self.config_path is not None
        path = self.config_path

        def stamp() -> tuple[float, int] | None:
            try:
                st = path.stat()
            except OSError:
                return None
            return (st.st_mtime, st.st_size)

        last = stamp()
        while True:
            await asyncio.sleep(interval)
            now = stamp()
            if now is not None and now != last:
                last = now
                log.info("configuration file %s changed; reloading", path)
                self.reload()

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            self._watch_task = None
        if self.api is not None:
            await self.api.stop()
            self.api = None
        if self._token_task is not None:
            self._token_task.cancel()
            self._token_task = None
        for listener in self.listeners:
            await listener.stop()
        for session in list(self.sessions):
            session.shutdown("pathwarden: the gateway is shutting down; reconnect to continue")
        for timer in self._expiry.values():
            timer.cancel()
        self._expiry.clear()
        await self._close_oidc()
        await self.approvals.stop()
        await self._notifiers.drain()
        await self.audit.close()
        if self.recorder is not None:
            await self.recorder.stop()

    def _replace_oidc(self, exchange: OidcExchange | None) -> None:
        old, self.oidc = self.oidc, exchange
        if old is not None:
            # Exchanges in flight still use it: close its key cache's HTTP client later.
            self._retired_oidc.append(old)
            asyncio.get_running_loop().call_later(_RETIRE_AFTER, self._close_retired, old)

    def _close_retired(self, exchange: OidcExchange) -> None:
        if exchange in self._retired_oidc:
            self._retired_oidc.remove(exchange)
            task = asyncio.get_running_loop().create_task(exchange.aclose())
            task.add_done_callback(_log_failure)

    async def _close_oidc(self) -> None:
        exchanges = [*self._retired_oidc, *([self.oidc] if self.oidc is not None else [])]
        self._retired_oidc.clear()
        self.oidc = None
        for exchange in exchanges:
            try:
                await exchange.aclose()
            except Exception as exc:
                log.warning("closing the OIDC key cache failed: %s", exc)

    # -- sessions end with their tokens ------------------------------------------------

    async def _watch_tokens(self) -> None:
        while True:
            await asyncio.sleep(self.config.tokens.revocation_check.total_seconds())
            try:
                await self.check_tokens()
            except StoreError as exc:
                log.warning("token revocation check failed; sessions keep running, retrying "
                            "in %s: %s", format_duration(self.config.tokens.revocation_check),
                            exc)
            except Exception:
                log.exception("token revocation check failed")

    async def check_tokens(self) -> int:
        """End live sessions whose token is revoked (one store query) or long expired.

        Returns how many were ended; raises :class:`StoreError` when the store
        cannot be asked (the sessions then keep running).
        """
        ended = 0
        now = datetime.now(UTC)
        for session in list(self.sessions):
            if self._expired(session, now):
                ended += self._end_expired(session)
        by_ref: dict[str, list[LiveSession]] = {}
        for session in self.sessions:
            if session.identity.token_ref is not None:
                by_ref.setdefault(session.identity.token_ref, []).append(session)
        if not by_ref:
            return ended
        revoked = await self.store.revoked_among(by_ref)
        for ref, record in revoked.items():
            ended += self.end_revoked(record, by_ref.get(ref, ()))
        return ended

    def end_revoked(self, record: TokenRecord,
                    sessions: Iterable[LiveSession] | None = None) -> int:
        """End the live sessions of a revoked token at once; returns how many."""
        ref = record.token_ref
        targets = [s for s in (self.sessions if sessions is None else sessions)
                   if s.identity.token_ref == ref and s in self.sessions]
        when = f" at {_iso(record.revoked_at)}" if record.revoked_at is not None else ""
        why = f" ({record.revoked_reason})" if record.revoked_reason else ""
        for session in targets:
            log.info("session %s: token %s of %s was revoked; ending the session",
                     session.record.id, ref, session.identity.name)
            _cut(session, f"pathwarden: token {ref} was revoked{when}{why}; session ended",
                 "token revoked")
        return len(targets)

    def _deadline(self, session: LiveSession) -> datetime | None:
        expires = session.identity.expires_at
        return None if expires is None else expires + self.config.tokens.session_grace

    def _expired(self, session: LiveSession, now: datetime) -> bool:
        deadline = self._deadline(session)
        return deadline is not None and now >= deadline

    def _schedule_expiry(self, session: LiveSession) -> None:
        old = self._expiry.pop(session, None)
        if old is not None:
            old.cancel()
        deadline = self._deadline(session)
        if deadline is None:
            return
        delay = max(0.0, (deadline - datetime.now(UTC)).total_seconds())
        self._expiry[session] = asyncio.get_running_loop().call_later(
            delay, self._on_expiry, session)

    def _on_expiry(self, session: LiveSession) -> None:
        self._expiry.pop(session, None)
        if session not in self.sessions:
            return
        if not self._expired(session, datetime.now(UTC)):
            self._schedule_expiry(session)  # the wall clock moved back: wait for it
            return
        self._end_expired(session)

    def _end_expired(self, session: LiveSession) -> int:
        if session not in self.sessions:
            return 0
        who = session.identity
        grace = self.config.tokens.session_grace
        after = f" (plus the {format_duration(grace)} session grace)" if grace else ""
        expires = _iso(who.expires_at) if who.expires_at is not None else "?"
        log.info("session %s: token %s of %s expired at %s%s; ending the session",
                 session.record.id, who.token_ref, who.name, expires, after)
        _cut(session, f"pathwarden: token {who.token_ref} expired at {expires}{after}; "
                      f"session ended; reconnect with a new token", "token expired")
        return 1

    # -- hooks used by listeners and sessions --------------------------------------

    async def authenticate(self, *, user: str, token: str, connection: str) -> Identity:
        return await self.authenticator.authenticate(user=user, token=token,
                                                     connection=connection)

    def connection_labels(self, name: str) -> Mapping[str, str]:
        conn = self.config.connections.get(name)
        return dict(conn.labels) if conn is not None else {}

    # -- approvals ----------------------------------------------------------------------

    def masked_text(self, op: Operation, text: str | None = None) -> str:
        """``op``'s statement (or ``text`` about it) as approvers and notifiers may see it."""
        text = op.text if text is None else text
        try:
            engine = self.masking_for(op.identity, op.connection)
        except MaskingError:
            return "[statement withheld: masking is unavailable]"
        return engine.mask_text(text)[0] if engine is not None else text

    def approval_pending(self, session_id: str, request_id: int, notice: str) -> None:
        """A session's statement waits for approval ``request_id``: tell its client."""
        session = self._by_id.get(session_id)
        if session is not None:
            session.approval_waiting(request_id, notice)

    def approval_done(self, session_id: str, request_id: int) -> None:
        session = self._by_id.get(session_id)
        if session is not None and session.pending_approval == request_id:
            session.pending_approval = None

    async def _notify_approval(self, request: ApprovalRequest, event: str) -> None:
        await self._notifiers.notify(event, request_view(self.approvals, request))

    def masking_for(self, identity: Identity, connection: ConnectionRef) -> MaskEngine | None:
        """The masking engine of a session (None: masking is off for it).

        Raises :class:`MaskingError` when it cannot be built; the login is then
        refused rather than served unmasked.
        """
        # Policies may match on token claims: two sessions of one identity can fall
        # under different policies, so the key is what actually applies.
        policies = [p for p in self.config.policies if p.applies_to(identity, connection)]
        key = (connection.name, tuple(p.name for p in policies))
        if key not in self._masking:
            if len(self._masking) > 10_000:
                self._masking.clear()
            self._masking[key] = masking_engine(self.config, connection.name, policies)
        return self._masking[key]

    def new_cancel_key(self) -> tuple[int, bytes]:
        while True:
            key = (secrets.randbelow(2**31 - 1) + 1, secrets.token_bytes(4))
            if key not in self._cancel_keys:
                return key

    def session_started(self, session: LiveSession,
                        key: tuple[int, bytes] | None = None) -> None:
        """A session is live: it ends with its token; ``key`` cancels it (PostgreSQL)."""
        self.sessions.add(session)
        self._by_id[session.record.id] = session
        if key is not None and isinstance(session, PgSession):
            self._cancel_keys[key] = session
            self._keys_of[session] = key
        self._schedule_expiry(session)

    def session_ended(self, session: LiveSession) -> None:
        self.sessions.discard(session)
        self._by_id.pop(session.record.id, None)
        timer = self._expiry.pop(session, None)
        if timer is not None:
            timer.cancel()
        if isinstance(session, PgSession):
            key = self._keys_of.pop(session, None)
            if key is not None:
                self._cancel_keys.pop(key, None)

    async def cancel(self, process_id: int, secret_key: bytes) -> None:
        session = self._cancel_keys.get((process_id, secret_key))
        if session is None:
            log.info("cancel request with an unknown key ignored")
            return
        log.info("session %s: cancel requested by client", session.record.id)
        waiting = session.pending_approval
        if waiting is not None:
            try:
                await self.approvals.withdraw(waiting, session.identity, "cancelled by the client")
                log.info("session %s: approval request %d withdrawn", session.record.id, waiting)
            except Exception as exc:
                log.warning("session %s: approval request %d could not be withdrawn: %s",
                            session.record.id, waiting, exc)
            return
        try:
            await session.cancel()
        except Exception as exc:
            log.warning("session %s: cancel could not reach upstream: %s",
                        session.record.id, exc)


_versions = itertools.count(1)
# How long a replaced OIDC exchange stays open for the requests that still use it.
_RETIRE_AFTER = 60.0


def _cut(session: LiveSession, message: str, reason: str) -> None:
    """End a session for its token: a message the client can read, then close."""
    session.terminate(message, reason)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("closing the previous OIDC key cache failed: %s", task.exception())


def injected_credentials(config: GatewayConfig) -> list[str]:
    """Every credential the gateway sends upstream: masked in every response."""
    out = []
    for conn in config.connections.values():
        if conn.password is not None:
            try:
                out.append(conn.password.reveal())
            except ConfigError:
                continue  # the connection cannot log in either; its dial reports it
    return out


def masking_engine(config: GatewayConfig, connection: str,
                   policies: list[PolicyConfig]) -> MaskEngine | None:
    """The engine for sessions on ``connection`` governed by ``policies``."""
    conn = config.connections.get(connection)
    levels = [config.masking, conn.masking if conn is not None else None]
    levels.extend(policy_masking(p) for p in policies)
    options = mask_options(levels, injected_credentials(config))
    if not options.enabled:
        return None
    try:
        return engine_for(options)
    except Exception as exc:
        raise MaskingError(f"the masking patterns could not be compiled: {exc}") from exc


def check_masking(config: GatewayConfig) -> None:
    """Build every connection's masking engine now, so a bad setting stops a (re)load."""
    for name in config.connections:
        masking_engine(config, name, [])


class GatewayClassifier(PostgresClassifier):
    """SQL for PostgreSQL sessions; command lines and file operations for SSH sessions.

    A PostgresClassifier itself, so PostgreSQL sessions keep their SQL context
    (they call ``classify_with``); SSH sessions call ``classify``.
    """

    def __init__(self, side_effect_functions: frozenset[str]) -> None:
        super().__init__(side_effect_functions)
        self.shell = ShellClassifier()

    def classify(self, op: Operation) -> Operation:
        if op.protocol is ModelProtocol.SSH:
            return self.shell.classify(op)
        return super().classify(op)


def build_classifier(config: GatewayConfig) -> GatewayClassifier:
    """The classifier a configuration describes (its SQL side-effect function list)."""
    return GatewayClassifier(
        config.sql.effective_side_effect_functions(DEFAULT_SIDE_EFFECT_FUNCTIONS))


def build_authorizer(config: GatewayConfig) -> PolicyEngine:
    """The policy engine a configuration describes.

    A connection's ``allow_all: true`` is a policy of its own that allows every
    class of statement to every identity on it (on an SSH host: every command,
    opaque ones included, shells and file transfer, but not forwarding); ``deny`` and
    ``require_approval`` rules of other policies still apply on top.
    """
    policies = list(config.policies)
    for name, conn in config.connections.items():
        if conn.allow_all:
            if isinstance(conn, SshConnection):
                # Everything a session does on the host; forwarding still needs a rule.
                allow: list[object] = [
                    r for r in ALLOW_EVERYTHING
                    if not (isinstance(r, str) and (r in ACTION_CLASSES or r == "forwarding"))]
            else:
                allow = [*sorted(ACTION_CLASSES)]
            policies.append(PolicyConfig.model_validate({
                "name": f"{name}.allow_all",
                "description": f"connections.{name}.allow_all",
                "identities": ["*"], "connections": [name],
                "allow": allow,
            }))
    return PolicyEngine(policies, version=next(_versions))


async def open_gateway(config: GatewayConfig, config_path: Path | None = None) -> Gateway:
    """Create the data directory, open the store and the token key, build a Gateway."""
    check_masking(config)
    data_dir = Path(config.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # noqa: ASYNC240 - startup only
    store = await open_store(store_url_for(config))
    authority = TokenAuthority.load_or_create(data_dir)
    return Gateway(config, store, authority, config_path)


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def run(config: GatewayConfig, config_path: Path | None = None,
              ready: asyncio.Event | None = None) -> None:
    """Serve until SIGINT or SIGTERM; SIGHUP or a change of the file reloads it."""
    gateway = await open_gateway(config, config_path)
    try:
        await gateway.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, gateway.reload)
        gateway.watch_config()
        addresses = ", ".join(listener.address for listener in gateway.listeners)
        log.info("pathwarden ready: %d connection(s), listening on %s",
                 len(gateway.targets), addresses)
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("shutting down: ending %d session(s)", len(gateway.sessions))
        await gateway.stop()
    finally:
        await gateway.store.close()


def serve(config: GatewayConfig, config_path: Path | None = None) -> None:
    """Run the gateway in this process (blocking)."""
    _install_uvloop()
    asyncio.run(run(config, config_path))
