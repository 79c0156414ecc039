"""Upstream failures: the gateway's own login fails, the target is unreachable, the
upstream connection dies mid-query (cut by a fault-injecting proxy, or terminated
by the server), and the gateway itself shuts down under a live session.

In every case the client gets a clear error quickly, the session is recorded
with its end reason, and other sessions carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import select
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway_harness import GatewayHarness, standard_config, wait_until, write_config
from pathwarden.config import load_config
from pathwarden.identity.tokens import IssuedToken
from pathwarden.model import SessionRecord, StatementRecord
from pathwarden.protocols.postgres import messages as m
from pathwarden.store import open_store, store_url_for
from pgserver import PgServer, free_port

SLEEP_SQL = "select pg_sleep(10)"


# --------------------------------------------------------------------------- helpers




def issue(gw: GatewayHarness, identity: str = "ci-test") -> IssuedToken:
    return gw.call(gw.gateway.authenticator.issue_token(identity, timedelta(minutes=5)))


def dsn(gw: GatewayHarness, connection: str, **extra: str) -> str:
    return gw.dsn(connection, "ci-test", token=issue(gw).token, connect_timeout="10", **extra)


def connect(gw: GatewayHarness, connection: str, **extra: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn(gw, connection, **extra), autocommit=True)


def ended_sessions(gw: GatewayHarness, connection: str, since: datetime,
                   n: int = 1) -> list[SessionRecord]:
    def done() -> list[SessionRecord]:
        # Not gw.sessions(): its flush() races the audit writer (/tmp/pw-bugs failures-2).
        recs = [r for r in gw.call(gw.gateway.store.list_sessions(
                    connection=connection, since=since, limit=500))
                if r.ended_at is not None]
        return recs if len(recs) >= n else []

    recs: list[SessionRecord] = wait_until(done, what=f"{n} ended session(s) on {connection}")
    return recs


def statements_of(gw: GatewayHarness, session_id: str, n: int) -> list[StatementRecord]:
    """The session's statements once ``n`` are stored (the audit writer's background
    flush can still hold the last ones when the session end is already visible)."""
    stmts: list[StatementRecord] = wait_until(
        lambda: (s if len(s := gw.call(gw.gateway.store.list_statements(session_id))) >= n
                 else None),
        what=f"{n} statement(s) of session {session_id}")
    return stmts


class Running:
    """A statement running in a background thread on its own psycopg connection."""

    def __init__(self, conn: psycopg.Connection[Any], sql: str) -> None:
        self.conn = conn
        self.error: BaseException | None = None
        self.finished_at: float | None = None
        self._thread = threading.Thread(target=self._run, args=(sql,), daemon=True)
        self._thread.start()

    def _run(self, sql: str) -> None:
        try:
            self.conn.execute(sql)
        except BaseException as exc:
            self.error = exc
        finally:
            self.finished_at = time.monotonic()

    def join(self, timeout: float) -> BaseException:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"statement still running after {timeout}s"
        assert self.error is not None, "statement succeeded; expected an error"
        return self.error


@pytest.fixture(scope="module")
def superuser(pg_server: PgServer) -> Iterator[psycopg.Connection[Any]]:
    """A direct superuser connection to the test server (not through the gateway)."""
    with psycopg.connect(pg_server.dsn("postgres", "postgres"), autocommit=True) as conn:
        yield conn


def backend_pids(su: psycopg.Connection[Any], app: str, active_sql: str | None = None
                 ) -> list[int]:
    rows = su.execute(
        "select pid, state, query from pg_stat_activity where application_name = %s", (app,)
    ).fetchall()
    return [pid for pid, state, query in rows
            if active_sql is None or (state == "active" and query == active_sql)]


def kill_backends(su: psycopg.Connection[Any], app: str) -> None:
    su.execute("select pg_terminate_backend(pid) from pg_stat_activity "
               "where application_name = %s", (app,))


def unique_app() -> str:
    return f"pw-upstream-{secrets.token_hex(4)}"


# --------------------------------------------------------------------------- fault proxy


@dataclass(eq=False)
class _Pair:
    client: socket.socket  # the gateway's upstream leg
    server: socket.socket  # our connection to PostgreSQL
    cut: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


class FaultProxy:
    """A TCP relay between the gateway and PostgreSQL that can fail on demand.

    ``mode``: "pass" relays; "drop" closes new connections at once; "hang"
    accepts and never answers. :meth:`cut` ends every relayed connection with
    a FIN ("close") or a TCP RST ("reset").
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.mode = "pass"
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port: int = self._listener.getsockname()[1]
        self._pairs: list[_Pair] = []
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name="fault-proxy")
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self.mode == "drop":
                client.close()
                continue
            if self.mode == "hang":
                with self._lock:
                    self._held.append(client)
                continue
            server = socket.create_connection(self.target, timeout=5)
            pair = _Pair(client, server)
            with self._lock:
                self._pairs.append(pair)
            threading.Thread(target=self._relay, args=(pair,), daemon=True).start()

    def _relay(self, pair: _Pair) -> None:
        socks = [pair.client, pair.server]
        try:
            while pair.cut is None:
                ready, _, _ = select.select(socks, [], [], 0.02)
                for sock in ready:
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        return
                    other = pair.server if sock is pair.client else pair.client
                    other.sendall(data)
            if pair.cut == "reset":
                pair.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
        except OSError:
            pass
        finally:
            pair.client.close()
            pair.server.close()
            pair.done.set()

    @property
    def live(self) -> int:
        with self._lock:
            return sum(1 for p in self._pairs if not p.done.is_set())

    def cut(self, how: str = "close") -> int:
        with self._lock:
            pairs = [p for p in self._pairs if not p.done.is_set()]
        for pair in pairs:
            pair.cut = how
        for pair in pairs:
            assert pair.done.wait(2), "relay did not stop"
        return len(pairs)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._listener.close()
        self.cut()
        with self._lock:
            for sock in self._held:
                sock.close()
            self._held.clear()


@pytest.fixture(scope="module")
def proxy(pg_server: PgServer) -> Iterator[FaultProxy]:
    p = FaultProxy((pg_server.host, pg_server.port))
    try:
        yield p
    finally:
        p.close()


def _faulty_config(pg: PgServer, base: Path, proxy_port: int) -> Path:
    config = standard_config(pg, base / "data", free_port())
    test_db = config["connections"]["test-db"]
    config["connections"] = {
        "test-db": test_db,
        "faulty-db": {**test_db, "port": proxy_port, "connect_timeout": "1s"},
    }
    return write_config(base / "pathwarden.yaml", config)


@pytest.fixture(scope="module")
def faulty(pg_server: PgServer, proxy: FaultProxy,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHarness]:
    """A gateway whose connection ``faulty-db`` goes through the fault proxy."""
    harness = GatewayHarness(_faulty_config(pg_server, tmp_path_factory.mktemp("faulty"),
                                            proxy.port))
    try:
        yield harness
    finally:
        harness.stop()


@pytest.fixture
def fresh_proxy(proxy: FaultProxy) -> Iterator[FaultProxy]:
    proxy.mode = "pass"
    proxy.cut()
    yield proxy
    proxy.mode = "pass"
    proxy.cut()


# --------------------------------------------------------------------------- login failures


def test_wrong_upstream_password(gateway: GatewayHarness,
                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pathwarden")
    since = datetime.now(UTC)
    issued = issue(gateway)
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(gateway.dsn("wrongpw-db", token=issued.token, connect_timeout="10"))
    err = str(info.value)
    target = gateway.config.connections["wrongpw-db"]
    assert (f"pathwarden: connection wrongpw-db: server {target.host}:{target.port} refused "
            f"the gateway's login as scram_user") in err
    assert "password authentication failed" in err
    assert "check the user and password configured for connection wrongpw-db" in err
    assert "the client's token was accepted" in err
    [rec] = ended_sessions(gateway, "wrongpw-db", since)
    assert rec.token_ref == issued.token_ref
    assert (rec.end_reason or "").startswith("upstream: connection wrongpw-db: server ")
    for secret in ("not-the-password", issued.token):
        assert secret not in err
        assert secret not in caplog.text


def test_unreachable_target(gateway: GatewayHarness) -> None:
    since = datetime.now(UTC)
    target = gateway.config.connections["unreachable-db"]
    conninfo = dsn(gateway, "unreachable-db")
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(conninfo)
    elapsed = time.monotonic() - started
    err = str(info.value)
    assert elapsed < 5, f"took {elapsed:.1f}s to report an unreachable target"
    assert (f"pathwarden: connection unreachable-db: cannot reach "
            f"{target.host}:{target.port}") in err
    assert "check that the target server is up and reachable from the gateway" in err
    [rec] = ended_sessions(gateway, "unreachable-db", since)
    assert (rec.end_reason or "").startswith(
        f"upstream: connection unreachable-db: cannot reach {target.host}:{target.port}")


def test_upstream_closes_during_login(faulty: GatewayHarness, fresh_proxy: FaultProxy) -> None:
    fresh_proxy.mode = "drop"
    since = datetime.now(UTC)
    with pytest.raises(psycopg.OperationalError) as info:
        connect(faulty, "faulty-db")
    assert (f"pathwarden: connection faulty-db: connection closed during login to "
            f"127.0.0.1:{fresh_proxy.port}") in str(info.value)
    [rec] = ended_sessions(faulty, "faulty-db", since)
    assert (rec.end_reason or "").startswith("upstream: connection faulty-db: ")


def test_upstream_hangs_during_login(faulty: GatewayHarness, fresh_proxy: FaultProxy) -> None:
    fresh_proxy.mode = "hang"  # accepts TCP, never answers the StartupMessage
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as info:
        connect(faulty, "faulty-db")
    elapsed = time.monotonic() - started
    assert (f"pathwarden: connection faulty-db: timed out during login to "
            f"127.0.0.1:{fresh_proxy.port}") in str(info.value)
    assert 0.8 < elapsed < 4, elapsed  # connect_timeout is 1s


# --------------------------------------------------------------------------- dies mid-query


@pytest.mark.parametrize("how", ["close", "reset"])
def test_upstream_cut_mid_query(faulty: GatewayHarness, fresh_proxy: FaultProxy,
                                superuser: psycopg.Connection[Any], how: str) -> None:
    app = unique_app()
    since = datetime.now(UTC)
    baseline = faulty.live_sessions()
    with connect(faulty, "test-db") as bystander, \
            connect(faulty, "faulty-db", application_name=app) as victim:
        assert victim.execute("select 1").fetchone() == (1,)
        try:
            running = Running(victim, SLEEP_SQL)
            wait_until(lambda: backend_pids(superuser, app, SLEEP_SQL), what="pg_sleep running")
            cut_at = time.monotonic()
            assert fresh_proxy.cut(how) == 1
            error = running.join(5)
            assert running.finished_at is not None
            assert running.finished_at - cut_at < 2, "client waited for the dead upstream"
            assert isinstance(error, psycopg.OperationalError), repr(error)
            assert ("pathwarden: connection faulty-db to the server was lost "
                    "(the server closed it or terminated the session)") in str(error)
            assert error.sqlstate == ("57P01" if how == "close" else "08006")
            # The other session, on another connection of the same gateway, carries on.
            assert bystander.execute("select 'unaffected'").fetchone() == ("unaffected",)
        finally:
            kill_backends(superuser, app)
    [rec] = ended_sessions(faulty, "faulty-db", since)
    if how == "close":
        assert rec.end_reason == "upstream disconnected"
    else:
        assert (rec.end_reason or "").startswith("upstream lost: "), rec.end_reason
    stmts = statements_of(faulty, rec.id, 2)
    assert [s.text for s in stmts] == ["select 1", SLEEP_SQL]
    assert stmts[1].error == (f"session ended before the statement completed "
                              f"({rec.end_reason})")
    wait_until(lambda: faulty.live_sessions() == baseline, what="live sessions at baseline")
    with connect(faulty, "faulty-db") as again:  # the connection recovers
        assert again.execute("select 2").fetchone() == (2,)


def test_upstream_backend_terminated_mid_query(gateway: GatewayHarness,
                                               superuser: psycopg.Connection[Any]) -> None:
    app = unique_app()
    since = datetime.now(UTC)
    baseline = gateway.live_sessions()
    with connect(gateway, "test-db", application_name=app) as conn:
        running = Running(conn, SLEEP_SQL)
        [pid] = wait_until(lambda: backend_pids(superuser, app, SLEEP_SQL),
                           what="pg_sleep running")
        killed_at = time.monotonic()
        assert superuser.execute("select pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        error = running.join(5)
        assert running.finished_at is not None
        assert running.finished_at - killed_at < 2
        assert isinstance(error, psycopg.OperationalError), repr(error)
        assert error.sqlstate == "57P01"
        assert "terminating connection due to administrator command" in str(error)
    [rec] = ended_sessions(gateway, "test-db", since)
    assert rec.end_reason == "upstream disconnected"
    [stmt] = statements_of(gateway, rec.id, 1)
    assert stmt.text == SLEEP_SQL
    assert stmt.error is not None
    assert "terminating connection due to administrator command" in stmt.error
    wait_until(lambda: gateway.live_sessions() == baseline, what="live sessions at baseline")
    with connect(gateway, "test-db") as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_upstream_backend_terminated_while_idle(gateway: GatewayHarness,
                                                superuser: psycopg.Connection[Any]) -> None:
    app = unique_app()
    since = datetime.now(UTC)
    with connect(gateway, "test-db", application_name=app) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
        [pid] = backend_pids(superuser, app)
        superuser.execute("select pg_terminate_backend(%s)", (pid,))
        [rec] = ended_sessions(gateway, "test-db", since)
        assert rec.end_reason == "upstream disconnected"
        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute("select 2")
        assert "terminating connection due to administrator command" in str(info.value)
    assert [s.text for s in statements_of(gateway, rec.id, 1)] == ["select 1"]


# --------------------------------------------------------------------------- gateway shutdown


def _read_store(config_path: Path, connection: str
                ) -> list[tuple[SessionRecord, list[StatementRecord]]]:
    async def read() -> list[tuple[SessionRecord, list[StatementRecord]]]:
        store = await open_store(store_url_for(load_config(config_path)))
        try:
            out = []
            for rec in await store.list_sessions(connection=connection):
                out.append((rec, await store.list_statements(rec.id)))
            return out
        finally:
            await store.close()

    return asyncio.run(read())


@pytest.fixture
def doomed(pg_server: PgServer, tmp_path: Path) -> Iterator[GatewayHarness]:
    """A gateway of its own, for tests that stop it."""
    config = standard_config(pg_server, tmp_path / "data", free_port())
    config["connections"] = {"test-db": config["connections"]["test-db"]}
    harness = GatewayHarness(write_config(tmp_path / "pathwarden.yaml", config))
    stopped = False

    def stop() -> None:
        nonlocal stopped
        if not stopped:
            stopped = True
            harness.stop()

    harness.stop_once = stop  # type: ignore[attr-defined]
    try:
        yield harness
    finally:
        stop()


def test_gateway_shutdown_mid_session(doomed: GatewayHarness,
                                      superuser: psycopg.Connection[Any]) -> None:
    app = unique_app()
    busy = connect(doomed, "test-db", application_name=app)
    idle = connect(doomed, "test-db", application_name=app)
    port = doomed.port
    try:
        assert idle.execute("select 'idle'").fetchone() == ("idle",)
        running = Running(busy, SLEEP_SQL)
        wait_until(lambda: backend_pids(superuser, app, SLEEP_SQL), what="pg_sleep running")
        stop_at = time.monotonic()
        doomed.stop_once()  # type: ignore[attr-defined]
        error = running.join(5)
        assert running.finished_at is not None
        assert running.finished_at - stop_at < 3
        assert isinstance(error, psycopg.errors.AdminShutdown), repr(error)
        assert error.sqlstate == "57P01"
        assert "pathwarden: the gateway is shutting down; reconnect to continue" in str(error)
        with pytest.raises(psycopg.OperationalError) as info:
            idle.execute("select 'too late'")
        assert "the gateway is shutting down" in str(info.value)
        # Nothing listens any more.
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        busy.close()
        idle.close()
        kill_backends(superuser, app)
    records = _read_store(doomed.config_path, "test-db")
    assert len(records) == 2
    for rec, stmts in records:
        assert rec.ended_at is not None
        assert rec.end_reason == "gateway shutdown"
        if stmts and stmts[-1].text == SLEEP_SQL:
            assert stmts[-1].error == ("session ended before the statement completed "
                                       "(gateway shutdown)")
    texts = sorted(s.text for _, stmts in records for s in stmts)
    assert texts == sorted(["select 'idle'", SLEEP_SQL])


def test_gateway_shutdown_mid_handshake(doomed: GatewayHarness) -> None:
    """A client waiting in the handshake is let go when the gateway stops."""
    with socket.create_connection(("127.0.0.1", doomed.port), timeout=5) as sock:
        sock.sendall(m.StartupMessage(params={"user": "ci-test", "database": "test-db"}
                                      ).encode())
        assert sock.recv(1) == b"R"  # the password request
        sock.recv(100)
        doomed.stop_once()  # type: ignore[attr-defined]
        sock.settimeout(2)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(4096):
                data += chunk
        # Closed (with or without a FATAL message), not left hanging.
        if data:
            assert data[:1] == b"E"
            assert b"57P01" in data


def test_a_statement_is_cancelled_when_its_client_goes_away(gateway: GatewayHarness,
                                                            pg_server: PgServer) -> None:
    marker = uuid.uuid4().hex
    sock = socket.create_connection((gateway.host, gateway.port), timeout=10)
    sock.sendall(m.StartupMessage(params={"user": "ci-test", "database": "test-db"}).encode())
    sock.recv(65536)  # AuthenticationCleartextPassword
    sock.sendall(m.PasswordMessage(data=gateway.token().encode() + b"\0").encode())
    time.sleep(0.3)
    sock.recv(65536)
    sock.sendall(m.Query(text=f"select pg_sleep(60) /* {marker} */").encode())

    def running() -> int:
        with psycopg.connect(pg_server.dsn(dbname="test"), autocommit=True) as direct:
            row = direct.execute("select count(*) from pg_stat_activity where query like %s "
                                 "and pid <> pg_backend_pid()", (f"%{marker}%",)).fetchone()
            return int(row[0]) if row else 0

    wait_until(lambda: running() == 1, what="the statement to run")
    sock.close()
    wait_until(lambda: running() == 0, timeout=5, what="the statement to be cancelled")
