"""Ways around approvals and policy on the wire that must not work.

Each test is an attack: an approval stretched over more executions or other
tables than it was given for, a grant used after it ended, a denied re-Parse
used to run an older statement, a reload that denies what is being held, and
forged tokens used to lock every pipeline out.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway_harness import GatewayHarness, write_config
from pathwarden.approvals import GrantScope
from pathwarden.model import Identity
from pathwarden.protocols.postgres import messages as m
from pgserver import PgServer
from rawpg import Raw
from test_pg_approvals import ALICE, _config, _pending

CI_TEST = Identity(name="ci-test", groups=("ci",))


def _schema(pg: PgServer, rows: int = 0) -> str:
    name = f"atk_{uuid.uuid4().hex[:8]}"
    pg.psql(f"create schema {name}; create table {name}.t (id int)"
            + (f"; insert into {name}.t select generate_series(1, {rows})" if rows else ""),
            dbname="test")
    return name


def _count(pg: PgServer, table: str) -> int:
    with psycopg.connect(pg.dsn(dbname="test"), autocommit=True) as conn:
        row = conn.execute(f"select count(*) from {table}").fetchone()
        return int(row[0]) if row else -1


@pytest.fixture
def gw(pg_server: PgServer, tmp_path: Path) -> Iterator[GatewayHarness]:
    config = _config(pg_server, tmp_path)
    config["policies"][0]["allow"] = ["read", "write", "session", "transaction"]
    config["policies"][0]["require_approval"] = ["ddl", "delete"]
    harness = GatewayHarness(write_config(tmp_path / "pathwarden.yaml", config))
    try:
        yield harness
    finally:
        harness.stop()


def test_one_approval_allows_one_execution_of_a_prepared_statement(
        gw: GatewayHarness, pg_server: PgServer) -> None:
    schema = _schema(pg_server, rows=10)
    sql = f"delete from {schema}.t where id = %s"
    with psycopg.connect(gw.dsn("app-db"), autocommit=True) as conn:
        held = threading.Thread(target=lambda: conn.execute(sql, (1,), prepare=True))
        held.start()
        request = _pending(gw, f"{schema}.t")
        gw.call(gw.gateway.approvals.vote(request.id, ALICE, True, "one row"))
        held.join(20)
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
            conn.execute(sql, (2,), prepare=True)  # no new Parse: the same server statement
        assert "one execution" in str(exc.value)
    assert _count(pg_server, f"{schema}.t") == 9


def test_a_grant_stops_covering_a_prepared_statement_when_it_ends(
        gw: GatewayHarness, pg_server: PgServer) -> None:
    schema = _schema(pg_server, rows=10)
    service = gw.gateway.approvals
    request = gw.call(service.request_grant(CI_TEST, "app-db", GrantScope(actions=("delete",)),
                                            timedelta(seconds=2), "cleanup"))
    gw.call(service.vote(request.id, ALICE, True, ""))
    sql = f"delete from {schema}.t where id = %s"
    with psycopg.connect(gw.dsn("app-db"), autocommit=True) as conn:
        conn.execute(sql, (1,), prepare=True)
        time.sleep(2.5)
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
            conn.execute(sql, (2,), prepare=True)
        assert "grant ended" in str(exc.value)
    assert _count(pg_server, f"{schema}.t") == 9


def test_an_approval_is_bound_to_the_tables_the_statement_reaches(
        gw: GatewayHarness, pg_server: PgServer) -> None:
    lax, strict = _schema(pg_server, rows=2), _schema(pg_server, rows=2)
    with psycopg.connect(gw.dsn("app-db"), autocommit=True) as conn:
        conn.execute(f"set search_path = {lax}")
        held = threading.Thread(target=lambda: conn.execute("delete from t"))
        held.start()
        request = _pending(gw, "delete from t")
        gw.call(gw.gateway.approvals.vote(request.id, ALICE, True, "scratch table"))
        held.join(20)
        assert _count(pg_server, f"{lax}.t") == 0
    # The same text where `t` is another table is another operation: it asks again.
    with psycopg.connect(gw.dsn("app-db"), autocommit=True) as conn:
        conn.execute(f"set search_path = {strict}")
        held = threading.Thread(target=lambda: _quietly(conn, "delete from t"))
        held.start()
        again = _pending(gw, "delete from t")
        assert again.id != request.id
        gw.call(gw.gateway.approvals.vote(again.id, ALICE, False, "not this one"))
        held.join(20)
    assert _count(pg_server, f"{strict}.t") == 2


def _quietly(conn: psycopg.Connection[Any], sql: str) -> None:
    with contextlib.suppress(psycopg.Error):
        conn.execute(sql)


def test_a_denied_reparse_cannot_run_the_older_statement_of_that_name(
        gw: GatewayHarness, pg_server: PgServer) -> None:
    lax, strict = _schema(pg_server), _schema(pg_server)
    r = Raw(gw)
    try:
        r.send(m.Query(text=f"set search_path = {lax}"))
        r.until_ready()
        r.send(m.Parse(name="s", query="insert into t values (1)"), m.Sync())
        r.until_ready()
        r.send(m.Query(text=f"set search_path = {strict}"))
        r.until_ready()
        # A re-Parse the policy refuses, then Bind/Execute of the name after the Sync.
        r.send(m.Parse(name="s", query="grant all on t to public"), m.Sync(),
               m.Bind(portal="", statement="s"), m.Execute(portal=""), m.Sync())
        r.until_ready()
        r.until_ready()
    finally:
        r.close()
    assert _count(pg_server, f"{strict}.t") == 0


def test_a_reload_that_denies_wins_over_an_approval_given_meanwhile(
        pg_server: PgServer, tmp_path: Path) -> None:
    schema = _schema(pg_server)
    config = _config(pg_server, tmp_path)
    path = write_config(tmp_path / "pathwarden.yaml", config)
    gw = GatewayHarness(path)
    try:
        outcome: dict[str, str] = {}

        def run() -> None:
            try:
                with psycopg.connect(gw.dsn("app-db"), autocommit=True) as conn:
                    outcome["tag"] = conn.execute(
                        f"create table {schema}.x (id int)").statusmessage or ""
            except psycopg.Error as exc:
                outcome["error"] = str(exc)

        held = threading.Thread(target=run)
        held.start()
        request = _pending(gw, f"{schema}.x")
        config["policies"][0]["deny"] = ["ddl"]
        write_config(path, config)

        async def reload() -> bool:
            return gw.gateway.reload()

        assert gw.call(reload())
        gw.call(gw.gateway.approvals.vote(request.id, ALICE, True, ""))
        held.join(20)
        assert "tag" not in outcome and "denied" in outcome.get("error", "")
    finally:
        gw.stop()


def test_forged_tokens_do_not_lock_an_identity_out(pg_server: PgServer,
                                                  tmp_path: Path) -> None:
    config = _config(pg_server, tmp_path)
    config["auth_limits"] = {"failures_per_source": 1000, "failures_per_identity": 3}
    gw = GatewayHarness(write_config(tmp_path / "pathwarden.yaml", config))
    try:
        good = gw.token("ci-test")
        forged = good[:-6] + ("A" * 6 if not good.endswith("A" * 6) else "B" * 6)
        for _ in range(10):
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(gw.dsn("app-db", token=forged), connect_timeout=10)
        with psycopg.connect(gw.dsn("app-db", token=good), autocommit=True) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        gw.stop()
