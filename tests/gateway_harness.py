"""Runs a real pathwarden gateway in a background thread for tests.

The gateway gets its own uvloop event loop in a daemon thread, listens on a
free loopback port, and talks to the test PostgreSQL server. Tests drive it
with real clients (psql, pgbench, psycopg, asyncpg) and read the audit trail
through the same store the gateway writes (after :meth:`flush`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import uvloop
import yaml

from pathwarden.config import GatewayConfig, load_config, parse_duration
from pathwarden.model import SessionRecord, StatementRecord
from pathwarden.proxy.gateway import Gateway, open_gateway
from pgserver import PgServer, free_port

T = TypeVar("T")


def standard_config(pg: PgServer, data_dir: Path, port: int) -> dict[str, Any]:
    """A configuration with one connection per upstream authentication case."""
    base = {"host": pg.host, "port": pg.port, "database": "test", "allow_all": True,
            "sslmode": "disable", "connect_timeout": "3s"}
    return {
        "data_dir": str(data_dir),
        "listeners": [{"name": "pg", "protocol": "postgres", "bind": f"127.0.0.1:{port}",
                       "allow_plaintext_loopback": True}],
        "connections": {
            "test-db": {**base, "user": "postgres"},
            "scram-db": {**base, "user": "scram_user", "password": {"env": "PW_TEST_SCRAM"}},
            "md5-db": {**base, "user": "md5_user",
                       "password": {"file": str(data_dir.parent / "md5pw")}},
            "tls-db": {**base, "user": "tls_user", "password": "tls-secret",
                       "sslmode": "require"},
            "wrongpw-db": {**base, "user": "scram_user", "password": "not-the-password"},
            "unreachable-db": {**base, "user": "postgres", "port": free_port()},
            "locked-db": {**base, "user": "postgres", "allow_all": False},
        },
        "identities": {
            "ci-test": {"groups": ["ci"]},
            "ci-deploy": {"groups": ["ci", "deployers"], "connections": ["test-db"]},
            "ci-build": {"groups": ["ci"], "max_token_ttl": "5m"},
        },
        "audit": {"flush_interval": "50ms"},
        # Tests refuse many logins on purpose; the limiter has tests of its own.
        "auth_limits": {"failures_per_source": 100000, "failures_per_identity": 100000},
        # The HTTP API is on by default at a fixed port; gateways here share a machine.
        # Tests of the API add one with api_settings().
        "api": {"enabled": False},
    }


def api_settings(port: int | None = None, **changes: Any) -> dict[str, Any]:
    """An ``api:`` block on a free loopback port, plain HTTP allowed from loopback."""
    return {"enabled": True, "bind": f"127.0.0.1:{port or free_port()}",
            "allow_plaintext_loopback": True, **changes}


class GatewayHarness:
    """A gateway serving in a background thread."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.config: GatewayConfig = load_config(config_path)
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="pathwarden-gateway")
        self._thread.start()
        self.gateway: Gateway = self.call(self._start())

    async def _start(self) -> Gateway:
        gw = await open_gateway(self.config, self.config_path)
        await gw.start()
        return gw

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return self.gateway.listeners[0].port

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the gateway's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def token(self, identity: str = "ci-test", ttl: str | None = "15m",
              connections: tuple[str, ...] | None = None) -> str:
        lifetime = parse_duration(ttl) if ttl else None
        issued = self.call(self.gateway.authenticator.issue_token(identity, lifetime, connections))
        return issued.token

    def dsn(self, connection: str = "test-db", identity: str = "ci-test",
            token: str | None = None, sslmode: str = "disable", **extra: str) -> str:
        """A libpq key/value connection string through the gateway."""
        password = token if token is not None else self.token(identity)
        parts = {"host": self.host, "port": str(self.port), "user": identity,
                 "dbname": connection, "password": password, "sslmode": sslmode, **extra}
        return " ".join(f"{k}={_quote(v)}" for k, v in parts.items())

    def env(self, token: str) -> dict[str, str]:
        """Environment for libpq clients (psql, pgbench) carrying the token."""
        return {"PGPASSWORD": token, "PGHOST": self.host, "PGPORT": str(self.port)}

    def flush(self) -> None:
        """Write every queued audit record to the store."""
        self.call(self.gateway.audit.flush())

    def sessions(self, **filters: Any) -> list[SessionRecord]:
        self.flush()
        return self.call(self.gateway.store.list_sessions(**filters))

    def session(self, session_id: str) -> SessionRecord | None:
        self.flush()
        return self.call(self.gateway.store.get_session(session_id))

    def statements(self, session_id: str) -> list[StatementRecord]:
        self.flush()
        return self.call(self.gateway.store.list_statements(session_id))

    def live_sessions(self) -> int:
        return len(self.gateway.sessions)

    def api_url(self, scheme: str = "http") -> str:
        """Where the gateway's HTTP API listens (``api.enabled`` must be true)."""
        api = self.gateway.api
        assert api is not None, "this gateway's configuration has no api.enabled"
        return f"{scheme}://127.0.0.1:{api.port}"

    def stop(self) -> None:
        async def _stop() -> None:
            await self.gateway.stop()
            await self.gateway.store.close()

        try:
            self.call(_stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


def _quote(value: str) -> str:
    if value and all(c not in value for c in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0,
               what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def poll(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until true; False after ``timeout`` (for asserts with messages)."""
    try:
        return bool(wait_until(predicate, timeout))
    except AssertionError:
        return False


def write_config(path: Path, config: Mapping[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    return path


@contextmanager
def running_gateway(base: Path, config: Mapping[str, Any]) -> Iterator[GatewayHarness]:
    """A gateway on ``config`` (written to ``base/pathwarden.yaml``), stopped on leaving."""
    harness = GatewayHarness(write_config(base / "pathwarden.yaml", config))
    try:
        yield harness
    finally:
        harness.stop()
