"""Second review of the PostgreSQL relay: attacks on the fixes of the first review.

Reuses the fixtures of ``test_pg_relay_attacks`` (read-only identity ci-test,
policy allows ``read`` and denies reading the "secret" schema).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway_harness import GatewayHarness, standard_config, write_config
from pathwarden.model import Decision, Operation, Verdict
from pathwarden.protocols.postgres import messages as m
from pgserver import PgServer, free_port
from test_pg_relay_attacks import _TAG, PUB, SEC, Raw, gw, q, rows

__all__ = ["gw"]  # the module-scoped gateway fixture, re-used
USR = f"rv_usr_{_TAG}"


def _secret_read(gw: GatewayHarness, *batches: tuple[m.Message, ...]) -> list[str]:
    """Send each batch, wait for one ReadyForQuery per Query/Sync in it; all rows seen."""
    c = Raw(gw)
    seen: list[str] = []
    try:
        for batch in batches:
            c.send(*batch)
            for msg in batch:
                if isinstance(msg, (m.Query, m.Sync)):
                    seen += rows(c.until_ready())
    finally:
        c.close()
    return seen


# --- search_path: the server rolls back a SET the gateway kept ----------------------------

def test_commit_of_aborted_transaction_rolls_back_set_search_path(gw: GatewayHarness) -> None:
    seen = _secret_read(
        gw, (q(f"SET search_path = {SEC}"),), (q("BEGIN"),), (q(f"SET search_path = {PUB}"),),
        (q("SELECT 1/0"),),
        (q("COMMIT"),),  # the transaction failed: the server answers ROLLBACK
        (q("SELECT v FROM only_secret"),))
    assert "SECRET-ROW" not in seen


def test_pipelined_query_after_failing_implicit_transaction(gw: GatewayHarness) -> None:
    seen = _secret_read(
        gw, (q(f"SET search_path = {SEC}"),),
        (q(f"SET search_path = {PUB}; SELECT 1/0"), q("SELECT v FROM only_secret")))
    assert "SECRET-ROW" not in seen


def test_portal_planned_at_bind_under_other_search_path(gw: GatewayHarness) -> None:
    seen = _secret_read(
        gw, (q(f"SET search_path = {PUB}"),),
        (m.Parse(name="s", query="SELECT v FROM items"), m.Sync()),
        (m.Parse(query=f"SET search_path = {SEC}"), m.Bind(), m.Execute(),
         m.Bind(portal="p", statement="s"),
         m.Parse(query=f"SET search_path = {PUB}"), m.Bind(), m.Execute(),
         m.Execute(portal="p"), m.Sync()))
    assert "SECRET-ROW" not in seen


def test_failed_bind_of_existing_portal_is_recorded(gw: GatewayHarness) -> None:
    seen = _secret_read(
        gw, (q(f"SET search_path = {PUB}"),), (q("BEGIN"),),
        (m.Parse(name="a", query=f"SET search_path = {SEC}"), m.Parse(name="b", query="SELECT 1"),
         m.Bind(portal="p", statement="a"), m.Sync()),
        (q("SAVEPOINT x"),),
        (m.Bind(portal="p", statement="b"), m.Sync()),  # fails: portal p exists
        (q("ROLLBACK TO SAVEPOINT x"),),
        (m.Execute(portal="p"), m.Sync()),  # runs a, the gateway thinks b
        (q("COMMIT"),),
        (q("SELECT v FROM only_secret"),))
    assert "SECRET-ROW" not in seen


def test_bind_of_sql_prepared_statement_after_search_path_change(gw: GatewayHarness) -> None:
    seen = _secret_read(
        gw, (q(f"SET search_path = {PUB}"),), (q("PREPARE peek AS SELECT v FROM items"),),
        (q(f"SET search_path = {SEC}"),),
        (m.Bind(statement="peek"), m.Execute(), m.Sync()))
    assert "SECRET-ROW" not in seen


# --- holding a statement until its decision arrives -----------------------------------------

class _Holder:
    """Wraps the policy engine: statements containing HOLDME wait for :meth:`release`."""

    def __init__(self, gw: GatewayHarness) -> None:
        self.gw = gw
        self.inner = gw.gateway.pipeline.authorizer
        self.held: list[asyncio.Future[Decision]] = []
        self.event = threading.Event()

    def authorize(self, op: Operation) -> object:
        decision = self.inner.authorize(op)
        if "HOLDME" not in op.text or not isinstance(decision, Decision):
            return decision
        fut: asyncio.Future[Decision] = self.gw.loop.create_future()
        fut.add_done_callback(lambda _: None)
        self.held.append(fut)
        self.event.set()
        return fut

    def release(self) -> None:
        def go() -> None:
            for fut in self.held:
                if not fut.done():
                    fut.set_result(Decision(Verdict.ALLOW, "approved", policy="approver"))
        self.gw.loop.call_soon_threadsafe(go)


@pytest.fixture
def holder(gw: GatewayHarness) -> Iterator[_Holder]:
    h = _Holder(gw)
    gw.gateway.pipeline.authorizer = h  # type: ignore[assignment]
    try:
        yield h
    finally:
        h.release()
        gw.gateway.pipeline.authorizer = h.inner


def test_pipelined_messages_behind_a_held_one_keep_their_order(gw: GatewayHarness,
                                                               holder: _Holder) -> None:
    c = Raw(gw)
    try:
        c.send(q("SELECT 'first HOLDME'"), q("SELECT 'second'"))
        assert holder.event.wait(5)
        holder.release()
        assert rows(c.until_ready()) == ["first HOLDME"]
        assert rows(c.until_ready()) == ["second"]
    finally:
        c.close()


def test_client_disconnect_while_held_ends_the_session(gw: GatewayHarness,
                                                       holder: _Holder) -> None:
    c = Raw(gw)
    c.send(q("SELECT 'gone HOLDME'"))
    assert holder.event.wait(5)
    before = gw.live_sessions()
    c.sock.close()
    deadline = time.monotonic() + 1.5
    while gw.live_sessions() >= before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gw.live_sessions() < before, "a held session outlives its client"


# --- "$user" in the server's search_path ---------------------------------------------------

@pytest.fixture(scope="module")
def allow_public(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[GatewayHarness]:
    """ci-test may read public.* only; the upstream login user (postgres) has its own schema."""
    pg_server.psql(
        f"create schema postgres; create table postgres.{USR} (v text); "
        f"insert into postgres.{USR} values ('SECRET-ROW'); create table public.{USR} (v text)",
        dbname="test")
    base: Path = tmp_path_factory.mktemp("review2")
    (base / "md5pw").write_text("md5-secret\n")
    config = standard_config(pg_server, base / "data", free_port())
    config["connections"]["app-db"] = {
        "host": pg_server.host, "port": pg_server.port, "database": "test", "user": "postgres",
        "sslmode": "disable"}
    config["policies"] = [{"name": "public-only", "identities": ["ci-test"],
                           "connections": ["app-db"],
                           "allow": [{"read": {"tables": ["public.*"]}}]}]
    harness = GatewayHarness(write_config(base / "pathwarden.yaml", config))
    try:
        yield harness
    finally:
        harness.stop()
        pg_server.psql(f"drop schema postgres cascade; drop table public.{USR}", dbname="test")


def test_default_search_path_includes_the_login_users_schema(allow_public: GatewayHarness
                                                             ) -> None:
    assert "SECRET-ROW" not in _secret_read(allow_public, (q(f"SELECT v FROM {USR}"),))


@pytest.mark.parametrize(("setting", "expected"), [
    ('"$user", public', ("app", "public")),
    ("public", ("public",)),
    ('"My Schema", x, "a""b"', ("My Schema", "x", 'a"b')),
    ("", ()),
    ('"$user", app, public', ("app", "public")),
])
def test_search_path_settings_are_read_as_the_server_reads_them(
        setting: str, expected: tuple[str, ...]) -> None:
    from pathwarden.proxy.pg_upstream import parse_search_path

    assert parse_search_path(setting, "app") == expected
