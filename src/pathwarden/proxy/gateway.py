"""The gateway process: wires configuration, identity, store, audit and listeners.

:class:`Gateway` owns everything that outlives one session: the upstream
targets built from the configuration, the hook pipeline, the audit writer, the
table of live sessions and the cancel keys handed to clients. :func:`serve`
runs it until SIGINT/SIGTERM, then ends every session with a FATAL
``admin_shutdown`` error, flushes the audit trail and exits.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import signal
from collections.abc import Mapping
from pathlib import Path

from ..audit.writer import AuditWriter
from ..config import ConfigError, GatewayConfig, PostgresConnection, load_config
from ..config.schema import policy_masking
from ..identity import Authenticator, AuthError, TokenAuthority
from ..identity.ratelimit import FailureLimiter
from ..masking import MaskEngine, engine_for
from ..masking.settings import MaskingError, mask_options
from ..model import ConnectionRef, Identity
from ..policy import ACTION_CLASSES, PolicyConfig, PolicyEngine
from ..policy.sql import DEFAULT_SIDE_EFFECT_FUNCTIONS, PostgresClassifier
from ..store import Store, open_store, store_url_for
from .pg_listener import PostgresListener
from .pg_session import PgSession
from .pg_upstream import UpstreamTarget
from .pipeline import Pipeline
from .tls import ensure_self_signed, server_context, upstream_context

log = logging.getLogger(__name__)


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
        self.pipeline = Pipeline(build_classifier(config), build_authorizer(config), self.audit)
        self._watch_task: asyncio.Task[None] | None = None
        self.targets = {n: build_target(n, c) for n, c in config.connections.items()}
        self._masking: dict[tuple[str, str], MaskEngine | None] = {}
        # Failed logins per client address and per identity, on every protocol and the API.
        limits = config.auth_limits
        self.auth_limiter = FailureLimiter(per_source=limits.failures_per_source,
                                           per_subject=limits.failures_per_identity,
                                           window=limits.window.total_seconds())
        self.listeners: list[PostgresListener] = []
        self.sessions: set[PgSession] = set()
        self._cancel_keys: dict[tuple[int, bytes], PgSession] = {}
        self._keys_of: dict[PgSession, tuple[int, bytes]] = {}

    async def start(self) -> None:
        self.audit.start()
        data_dir = self.config.data_dir
        for lc in self.config.listeners:
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
            targets = {n: build_target(n, c) for n, c in new.connections.items()}
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
        self.config = new
        self.targets = targets
        self._masking = {}
        self.authenticator = Authenticator(new, self.authority, self.store)
        self.pipeline.classifier = classifier
        self.pipeline.authorizer = authorizer  # reference swaps: each operation sees one rule set
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
        for listener in self.listeners:
            await listener.stop()
        for session in list(self.sessions):
            session.shutdown("pathwarden: the gateway is shutting down; reconnect to continue")
        await self.audit.close()

    # -- hooks used by listeners and sessions --------------------------------------

    async def authenticate(self, *, user: str, token: str, connection: str) -> Identity:
        return await self.authenticator.authenticate(user=user, token=token,
                                                     connection=connection)

    def connection_labels(self, name: str) -> Mapping[str, str]:
        conn = self.config.connections.get(name)
        return dict(conn.labels) if conn is not None else {}

    def masking_for(self, identity: Identity, connection: ConnectionRef) -> MaskEngine | None:
        """The masking engine of a session (None: masking is off for it).

        Raises :class:`MaskingError` when it cannot be built; the login is then
        refused rather than served unmasked.
        """
        key = (identity.name, connection.name)
        if key not in self._masking:
            if len(self._masking) > 10_000:
                self._masking.clear()
            policies = [p for p in self.config.policies if p.applies_to(identity, connection)]
            self._masking[key] = masking_engine(self.config, connection.name, policies)
        return self._masking[key]

    def new_cancel_key(self) -> tuple[int, bytes]:
        while True:
            key = (secrets.randbelow(2**31 - 1) + 1, secrets.token_bytes(4))
            if key not in self._cancel_keys:
                return key

    def session_started(self, session: PgSession, key: tuple[int, bytes]) -> None:
        self.sessions.add(session)
        self._cancel_keys[key] = session
        self._keys_of[session] = key

    def session_ended(self, session: PgSession) -> None:
        self.sessions.discard(session)
        key = self._keys_of.pop(session, None)
        if key is not None:
            self._cancel_keys.pop(key, None)

    async def cancel(self, process_id: int, secret_key: bytes) -> None:
        session = self._cancel_keys.get((process_id, secret_key))
        if session is None:
            log.info("cancel request with an unknown key ignored")
            return
        log.info("session %s: cancel requested by client", session.record.id)
        try:
            await session.cancel()
        except Exception as exc:
            log.warning("session %s: cancel could not reach upstream: %s",
                        session.record.id, exc)


_versions = itertools.count(1)


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


def build_classifier(config: GatewayConfig) -> PostgresClassifier:
    """The SQL classifier a configuration describes (its side-effect function list)."""
    return PostgresClassifier(
        config.sql.effective_side_effect_functions(DEFAULT_SIDE_EFFECT_FUNCTIONS))


def build_authorizer(config: GatewayConfig) -> PolicyEngine:
    """The policy engine a configuration describes.

    A connection's ``allow_all: true`` is a policy of its own that allows every
    class of statement to every identity on it; ``deny`` and
    ``require_approval`` rules of other policies still apply on top.
    """
    policies = list(config.policies)
    for name, conn in config.connections.items():
        if conn.allow_all:
            policies.append(PolicyConfig.model_validate({
                "name": f"{name}.allow_all",
                "description": f"connections.{name}.allow_all",
                "identities": ["*"], "connections": [name],
                "allow": sorted(ACTION_CLASSES),
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
