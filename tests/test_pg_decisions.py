"""Decisions on the PostgreSQL path: denials that keep client and server in step,
fail-closed hooks, and holding a statement until a decision arrives (the seam
approvals use). Real server, real clients; the authorizer is swapped for one
these tests control.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import asyncpg
import psycopg
import pytest
from psycopg import errors

from gateway_harness import GatewayHarness, standard_config, write_config
from pathwarden.model import Decision, Operation, Verdict
from pgserver import PgServer, free_port


class ScriptedAuthorizer:
    """Denies statements containing DENYME, raises on BOOM, holds statements containing HOLDME."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.held: list[tuple[Operation, asyncio.Future[Decision]]] = []
        self.held_event = threading.Event()

    def authorize(self, op: Operation) -> Decision | asyncio.Future[Decision]:
        if "BOOM" in op.text:
            raise RuntimeError("policy engine exploded")
        if "DENYME" in op.text:
            return Decision(Verdict.DENY, "scripted denial", policy="test-policy", rule="1")
        if "HOLDME" in op.text:
            fut: asyncio.Future[Decision] = self.loop.create_future()
            self.held.append((op, fut))
            self.held_event.set()
            return fut
        return Decision(Verdict.ALLOW, "scripted allow", policy="test-policy")

    def release(self, verdict: Verdict = Verdict.ALLOW) -> None:
        """Decide every held operation (thread-safe)."""
        def go() -> None:
            for _, fut in self.held:
                if not fut.done():
                    fut.set_result(Decision(verdict, f"released as {verdict.value}",
                                            policy="approver"))
            self.held.clear()
            self.held_event.clear()

        self.loop.call_soon_threadsafe(go)


@pytest.fixture(scope="module")
def scripted(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[GatewayHarness, ScriptedAuthorizer]]:
    base: Path = tmp_path_factory.mktemp("decisions")
    (base / "md5pw").write_text("md5-secret\n")
    harness = GatewayHarness(write_config(base / "pathwarden.yaml",
                                          standard_config(pg_server, base / "data", free_port())))
    authorizer = ScriptedAuthorizer(harness.loop)
    harness.gateway.pipeline.authorizer = authorizer
    try:
        yield harness, authorizer
    finally:
        harness.stop()


@pytest.fixture
def table(pg_server: PgServer) -> Iterator[str]:
    name = f"dec_{uuid.uuid4().hex[:10]}"
    pg_server.psql(f"create table {name} (id int primary key, note text)", dbname="test")
    try:
        yield name
    finally:
        pg_server.psql(f"drop table if exists {name}", dbname="test")


def _scalar(pg: PgServer, sql: str) -> str:
    with psycopg.connect(pg.dsn(dbname="test"), autocommit=True) as conn:
        row = conn.execute(sql).fetchone()
        assert row is not None
        return str(row[0])


def test_denied_simple_query_is_not_executed_and_names_identity_and_policy(
        scripted: tuple[GatewayHarness, ScriptedAuthorizer], pg_server: PgServer,
        table: str) -> None:
    gw, _ = scripted
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as exc:
            conn.execute(f"insert into {table} values (1, 'DENYME')")
        message = str(exc.value)
        assert "ci-test" in message and "test-db" in message
        assert "test-policy" in message and "scripted denial" in message
        # The session stays usable.
        assert conn.execute("select 1").fetchone() == (1,)
    assert _scalar(pg_server, f"select count(*) from {table}") == "0"


def test_denial_inside_a_transaction_aborts_it_on_both_sides(
        scripted: tuple[GatewayHarness, ScriptedAuthorizer], pg_server: PgServer,
        table: str) -> None:
    gw, _ = scripted
    with psycopg.connect(gw.dsn()) as conn:
        conn.execute(f"insert into {table} values (1, 'kept?')")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"insert into {table} values (2, 'DENYME')")
        # Client and server agree the transaction is aborted.
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.rollback()
        assert conn.execute("select 2").fetchone() == (2,)
        conn.commit()
    assert _scalar(pg_server, f"select count(*) from {table}") == "0"


def test_denied_statement_in_a_multi_statement_query_denies_the_whole_message(
        scripted: tuple[GatewayHarness, ScriptedAuthorizer], pg_server: PgServer,
        table: str) -> None:
    gw, _ = scripted
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"insert into {table} values (1, 'a'); select 'DENYME'",
                         prepare=False)
    assert _scalar(pg_server, f"select count(*) from {table}") == "0"


def test_denied_parse_skips_to_sync_and_later_statements_work(
        scripted: tuple[GatewayHarness, ScriptedAuthorizer], pg_server: PgServer,
        table: str) -> None:
    gw, _ = scripted

    async def go() -> None:
        conn = await asyncpg.connect(dsn=None, host=gw.host, port=gw.port, user="ci-test",
                                     database="test-db", password=gw.token(), ssl=False)
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError) as exc:
                await conn.execute(f"insert into {table} values ($1, 'DENYME')", 1)
            assert "scripted denial" in str(exc.value)
            # A prepared statement whose Parse was denied never exists upstream.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.prepare("select 'DENYME'::text")
            await conn.execute(f"insert into {table} values ($1, 'ok')", 7)
            assert await conn.fetchval(f"select count(*) from {table}") == 1
            async def denied_in_transaction() -> None:
                async with conn.transaction():
                    await conn.execute(f"insert into {table} values ($1, 'in tx')", 8)
                    await conn.execute(f"insert into {table} values ($1, 'DENYME')", 9)

            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await denied_in_transaction()
            # The transaction was rolled back on the server too; the session goes on.
            assert await conn.fetchval(f"select count(*) from {table}") == 1
        finally:
            await conn.close()

    asyncio.run(go())
    assert _scalar(pg_server, f"select count(*) from {table}") == "1"


def test_failing_authorizer_denies_fail_closed(
        scripted: tuple[GatewayHarness, ScriptedAuthorizer], table: str) -> None:
    gw, _ = scripted
    with psycopg.connect(gw.dsn(), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as exc:
            conn.execute(f"insert into {table} values (1, 'BOOM')")
        assert "fail closed" in str(exc.value)
        assert conn.execute("select 3").fetchone() == (3,)


def test_held_statement_waits_without_blocking_other_sessions_then_runs(
        scripted: tuple[GatewayHarness, ScriptedAuthorizer], pg_server: PgServer,
        table: str) -> None:
    gw, authorizer = scripted
    result: Future[object] = Future()

    def held_client() -> None:
        try:
            with psycopg.connect(gw.dsn(), autocommit=True) as conn:
                # Pipelined: the second statement must wait behind the held one.
                conn.execute(f"insert into {table} values (1, 'HOLDME')")
                row = conn.execute(f"select count(*) from {table}").fetchone()
                result.set_result(row)
        except BaseException as exc:  # pragma: no cover - reported below
            result.set_exception(exc)

    thread = threading.Thread(target=held_client)
    thread.start()
    assert authorizer.held_event.wait(10), "statement was never held"
    # Other sessions keep working while one is held.
    start = time.monotonic()
    with psycopg.connect(gw.dsn(), autocommit=True) as other:
        assert other.execute("select 42").fetchone() == (42,)
    assert time.monotonic() - start < 5
    assert _scalar(pg_server, f"select count(*) from {table}") == "0"
    assert not result.done()
    authorizer.release(Verdict.ALLOW)
    assert result.result(timeout=10) == (1,)
    thread.join(5)


def test_held_statement_denied_on_release_is_refused(
        scripted: tuple[GatewayHarness, ScriptedAuthorizer], pg_server: PgServer,
        table: str) -> None:
    gw, authorizer = scripted
    outcome: Future[str] = Future()

    def held_client() -> None:
        with psycopg.connect(gw.dsn(), autocommit=True) as conn:
            try:
                conn.execute(f"insert into {table} values (1, 'HOLDME')")
                outcome.set_result("executed")
            except errors.InsufficientPrivilege as exc:
                assert conn.execute("select 1").fetchone() == (1,)
                outcome.set_result(str(exc))

    thread = threading.Thread(target=held_client)
    thread.start()
    assert authorizer.held_event.wait(10)
    authorizer.release(Verdict.DENY)
    assert "released as deny" in outcome.result(timeout=10)
    thread.join(5)
    assert _scalar(pg_server, f"select count(*) from {table}") == "0"


def test_denials_are_in_the_audit_trail(
        scripted: tuple[GatewayHarness, ScriptedAuthorizer], table: str) -> None:
    gw, _ = scripted
    with psycopg.connect(gw.dsn(application_name="audit-denial"), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"delete from {table} where note = 'DENYME'")
        conn.execute("select 1")
    session = gw.sessions(identity="ci-test")[0]
    stmts = gw.statements(session.id)
    denied = [s for s in stmts if s.verdict is Verdict.DENY]
    assert len(denied) == 1
    assert "DENYME" in denied[0].text
    assert denied[0].policy == "test-policy" and denied[0].rows is None
    assert denied[0].error and "scripted denial" in denied[0].error
    assert any(s.verdict is Verdict.ALLOW and s.text == "select 1" for s in stmts)


def test_locked_connection_denies_by_default(gateway: GatewayHarness) -> None:
    with psycopg.connect(gateway.dsn("locked-db"), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege) as exc:
            conn.execute("select 1")
        assert "default deny" in str(exc.value)
