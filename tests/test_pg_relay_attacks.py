"""Attacks on the PostgreSQL relay found in review, each kept as a regression test.

A read-only identity (ci-test: policy allows ``read``, denies reading the
"secret" schema) talks to the gateway with a raw wire-protocol client, so the
exact message order is under the test's control.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gateway_harness import GatewayHarness, standard_config, write_config
from pathwarden.model import StatementRecord
from pathwarden.protocols.postgres import messages as m
from pgserver import PgServer, free_port
from rawpg import Frame, Raw

_TAG = uuid.uuid4().hex[:8]
PUB = f"rv_pub_{_TAG}"
SEC = f"rv_sec_{_TAG}"

def rows(frames: list[Frame]) -> list[str]:
    """The first column of every DataRow (text format)."""
    return [(m.DataRow.decode(p).values()[0] or b"").decode() for t, p in frames if t == b"D"]


def errors_of(frames: list[Frame]) -> list[str]:
    return [m.ErrorResponse.decode(p).code for t, p in frames if t == b"E"]


def q(text: str) -> m.Query:
    return m.Query(text=text)


@pytest.fixture(scope="module")
def gw(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHarness]:
    pg_server.psql(
        f"create schema {PUB}; create schema {SEC}; "
        f"create table {PUB}.items (v text); insert into {PUB}.items values ('public-row'); "
        f"create table {SEC}.items (v text); insert into {SEC}.items values ('SECRET-ROW'); "
        f"create table {PUB}.victim (id int); insert into {PUB}.victim values (1), (2); "
        f"create table {SEC}.only_secret (v text); insert into {SEC}.only_secret values "
        f"('SECRET-ROW'); create sequence {PUB}.seq",
        dbname="test")
    base: Path = tmp_path_factory.mktemp("review")
    (base / "md5pw").write_text("md5-secret\n")
    config = standard_config(pg_server, base / "data", free_port())
    config["connections"]["app-db"] = {
        "host": pg_server.host, "port": pg_server.port, "database": "test", "user": "postgres",
        "sslmode": "disable"}
    config["policies"] = [{
        "name": "readonly", "identities": ["ci-test"], "connections": ["app-db"],
        "allow": ["read"], "deny": [{"read": {"tables": [f"{SEC}.*"]}}]}]
    harness = GatewayHarness(write_config(base / "pathwarden.yaml", config))
    try:
        yield harness
    finally:
        harness.stop()
        pg_server.psql(f"drop schema {PUB} cascade; drop schema {SEC} cascade", dbname="test")


@pytest.fixture
def victim(pg_server: PgServer, gw: GatewayHarness) -> int:
    """Fresh rows in the table the attacks try to delete; returns their count."""
    pg_server.psql(f"truncate {PUB}.victim; insert into {PUB}.victim values (1), (2)",
                   dbname="test")
    return 2


def victims(pg: PgServer) -> int:
    with psycopg.connect(pg.dsn(dbname="test"), autocommit=True) as conn:
        row = conn.execute(f"select count(*) from {PUB}.victim").fetchone()
        assert row is not None
        return int(row[0])


def statements_of(gw: GatewayHarness, addr: str) -> list[StatementRecord]:
    (session,) = [s for s in gw.sessions() if s.client_addr == addr]
    return gw.statements(session.id)


# A harmless SELECT of two strings when standard_conforming_strings is on; a SELECT
# followed by a DELETE when it is off (the backslash then escapes the quote).
ATTACK = f"SELECT '\\', ' ; DELETE FROM {PUB}.victim; --'"


def test_sanity_policy_denies_the_attack_pieces(gw: GatewayHarness) -> None:
    c = Raw(gw)
    try:
        c.send(q(f"DELETE FROM {PUB}.victim"))
        assert errors_of(c.until_ready()) == ["42501"]
        c.send(q(f"SELECT v FROM {SEC}.items"))
        assert errors_of(c.until_ready()) == ["42501"]
        c.send(q(f"SET search_path = {SEC}"), q("SELECT v FROM items"))
        c.until_ready()
        assert errors_of(c.until_ready()) == ["42501"]
    finally:
        c.close()
    # With the setting off, a backslash is refused outright.
    c = Raw(gw)
    try:
        c.send(q("SET standard_conforming_strings = off"))
        c.until_ready()
        c.send(q(ATTACK))
        assert errors_of(c.until_ready()) == ["42501"]
    finally:
        c.close()


# --- 1. lexing settings: a server-side revert the context does not model -----------------

@pytest.mark.parametrize("setting", ["standard_conforming_strings=off", "client_encoding=SJIS"])
def test_startup_parameters_that_change_lexing_are_refused(gw: GatewayHarness,
                                                           setting: str) -> None:
    name, value = setting.split("=")
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    try:
        sock.sendall(m.StartupMessage(
            params={"user": "ci-test", "database": "app-db", name: value}).encode())
        reply = b""
        while chunk := sock.recv(4096):  # refused before the password is asked for
            reply += chunk
    finally:
        sock.close()
    assert reply[:1] == b"E" and name.encode() in reply and b"not allowed" in reply


@pytest.mark.parametrize("revert", ["rollback", "rollback_to_savepoint"])
def test_scs_revert_cannot_let_a_readonly_token_delete(gw: GatewayHarness, pg_server: PgServer,
                                                      victim: int, revert: str) -> None:
    c = Raw(gw)
    try:
        c.send(q("SET standard_conforming_strings = off"))  # the session's value: off
        c.until_ready()
        c.send(q("BEGIN"))
        c.until_ready()
        if revert == "rollback_to_savepoint":
            c.send(q("SAVEPOINT s"))
            c.until_ready()
        c.send(q("SET standard_conforming_strings = on"))  # server reports 'on'
        c.until_ready()
        undo = {"rollback": "ROLLBACK", "rollback_to_savepoint": "ROLLBACK TO SAVEPOINT s"}
        # Pipelined: the attack is classified before the server reports 'off' again.
        c.send(q(undo[revert]), q(ATTACK))
        c.until_ready()
        assert errors_of(c.until_ready()) == ["42501"]
    finally:
        c.close()
    assert victims(pg_server) == victim


# --- 2. search_path: table-scoped policy bypassed ----------------------------------------

@pytest.mark.parametrize("path", [f"{PUB}, {SEC}", f"no_such_schema, {SEC}"])
def test_unqualified_table_resolved_to_first_search_path_schema(gw: GatewayHarness,
                                                                path: str) -> None:
    c = Raw(gw)
    try:
        c.send(q(f"SET search_path = {path}"))
        c.until_ready()
        c.send(q("SELECT v FROM only_secret"))
        frames = c.until_ready()
    finally:
        c.close()
    assert "SECRET-ROW" not in rows(frames)


def test_readonly_token_cannot_call_nextval(gw: GatewayHarness, pg_server: PgServer) -> None:
    c = Raw(gw)
    try:
        c.send(q(f"SELECT nextval('{PUB}.seq')"))
        frames = c.until_ready()
    finally:
        c.close()
    assert errors_of(frames) == ["42501"]


def test_startup_search_path_is_refused(gw: GatewayHarness) -> None:
    """search_path decides what an unqualified name means: only SET, which the gateway sees."""
    with pytest.raises(AssertionError, match="connection closed"):
        Raw(gw, search_path=SEC)


def test_prepared_statement_reruns_under_new_search_path(gw: GatewayHarness) -> None:
    with psycopg.connect(gw.dsn("app-db", "ci-test"), autocommit=True) as conn:
        conn.execute(f"SET search_path = {PUB}")
        assert conn.execute("SELECT v FROM items", prepare=True).fetchall() == [("public-row",)]
        conn.execute(f"SET search_path = {SEC}")
        # Re-decided under the new search_path: now it reads the denied schema.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT v FROM items", prepare=True).fetchall()
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_failure_after_commit_in_multi_statement_desyncs_search_path(
        gw: GatewayHarness) -> None:
    c = Raw(gw)
    try:
        c.send(q(f"SET search_path = {PUB}"))
        c.until_ready()
        c.send(q(f"BEGIN; SET search_path = {SEC}; COMMIT; SELECT 1/0"))
        assert errors_of(c.until_ready()) == ["22012"]
        c.send(q("SELECT v FROM items"))
        frames = c.until_ready()
    finally:
        c.close()
    assert "SECRET-ROW" not in rows(frames)


def test_query_skipped_after_extended_error_still_changes_context(gw: GatewayHarness) -> None:
    c = Raw(gw)
    try:
        c.send(q(f"SET search_path = {SEC}"))
        c.until_ready()
        c.send(m.Parse(query="SELECT 1/0"), m.Bind(), m.Execute(),
               q(f"SET search_path = {PUB}"), m.Sync())
        assert errors_of(c.until_ready()) == ["22012"]
        c.send(q("SELECT v FROM items"))
        frames = c.until_ready()
    finally:
        c.close()
    assert "SECRET-ROW" not in rows(frames)


def test_portal_bound_before_reparse_runs_old_statement(gw: GatewayHarness) -> None:
    c = Raw(gw)
    try:
        c.send(q(f"SET search_path = {PUB}"))
        c.until_ready()
        c.send(m.Parse(query=f"SET search_path = {SEC}"), m.Bind(portal="p"),
               m.Parse(query="SELECT 1"), m.Execute(portal="p"), m.Sync())
        assert errors_of(c.until_ready()) == []
        c.send(q("SELECT v FROM items"))
        frames = c.until_ready()
    finally:
        c.close()
    assert "SECRET-ROW" not in rows(frames)


def test_failed_parse_completion_drops_later_pipelined_parse(gw: GatewayHarness) -> None:
    c = Raw(gw)
    try:
        c.send(q(f"SET search_path = {PUB}"))
        c.until_ready()
        c.send(m.Parse(query="SELEC broken"), m.Sync(),
               m.Parse(query=f"SET search_path = {SEC}"), m.Sync())
        c.until_ready()
        c.until_ready()
        c.send(m.Bind(), m.Execute(), m.Sync())
        assert errors_of(c.until_ready()) == []
        c.send(q("SELECT v FROM items"))
        frames = c.until_ready()
    finally:
        c.close()
    assert "SECRET-ROW" not in rows(frames)


# --- 3. audit: executed statements without a record ---------------------------------------

def test_skipped_close_loses_audit_of_later_execute(gw: GatewayHarness) -> None:
    c = Raw(gw)
    try:
        c.send(m.Parse(name="s", query="SELECT 'audit-me-1'"), m.Sync())
        c.until_ready()
        c.send(m.Parse(query="SELECT 1/0"), m.Bind(), m.Execute(), m.Close(kind="S", name="s"),
               m.Sync())
        assert errors_of(c.until_ready()) == ["22012"]
        c.send(m.Bind(statement="s"), m.Execute(), m.Sync())
        assert rows(c.until_ready()) == ["audit-me-1"]
    finally:
        c.close()
    texts = [s.text for s in statements_of(gw, c.addr) if s.kind == "execute"]
    assert "SELECT 'audit-me-1'" in texts


def test_bind_of_sql_prepared_statement_is_not_audited(gw: GatewayHarness) -> None:
    c = Raw(gw)
    try:
        c.send(q(f"PREPARE peek AS SELECT 'audit-me-2' FROM {PUB}.items"))
        c.until_ready()
        c.send(m.Bind(statement="peek"), m.Execute(), m.Sync())
        assert rows(c.until_ready()) == ["audit-me-2"]
    finally:
        c.close()
    kinds = [s.kind for s in statements_of(gw, c.addr)]
    assert "execute" in kinds
