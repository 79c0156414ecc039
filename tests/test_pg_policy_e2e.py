"""Per-statement policy on a real server with real clients: what is allowed runs, what is
denied never executes (checked on the server), what needs approval is refused until
approvals exist, and the session stays usable throughout."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors

from gateway_harness import GatewayHarness, standard_config, write_config
from pathwarden.model import Verdict
from pgserver import PgServer, free_port

SCHEMA = f"pol_{uuid.uuid4().hex[:8]}"


def _policies() -> list[dict[str, Any]]:
    return [
        {"name": "test-readonly", "identities": ["ci-test"], "connections": ["app-db"],
         "allow": ["read"]},
        {"name": "deploy-writes", "identities": ["group:deployers"], "connections": ["app-db"],
         "allow": ["read", "write", "ddl"],
         "require_approval": [{"write": {"tables": [f"{SCHEMA}.billing"]}},
                              {"delete": {"without_where": True}}],
         "deny": [{"ddl": {"kinds": ["drop_schema", "drop_database"]}}, "privilege",
                  {"function": ["pg_terminate_backend"]}]},
    ]


@pytest.fixture(scope="module")
def policy_gw(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[GatewayHarness]:
    pg_server.psql(f"create schema {SCHEMA}; "
                   f"create table {SCHEMA}.users (id int primary key, name text); "
                   f"create table {SCHEMA}.billing (id int primary key, amount int); "
                   f"insert into {SCHEMA}.users values (1, 'ada'), (2, 'bob'); "
                   f"insert into {SCHEMA}.billing values (1, 10)", dbname="test")
    base: Path = tmp_path_factory.mktemp("policy")
    (base / "md5pw").write_text("md5-secret\n")
    config = standard_config(pg_server, base / "data", free_port())
    config["connections"]["app-db"] = {
        "host": pg_server.host, "port": pg_server.port, "database": "test", "user": "postgres",
        "sslmode": "disable"}
    config["identities"]["ci-deploy"] = {"groups": ["ci", "deployers"]}
    config["policies"] = _policies()
    harness = GatewayHarness(write_config(base / "pathwarden.yaml", config))
    try:
        yield harness
    finally:
        harness.stop()
        pg_server.psql(f"drop schema if exists {SCHEMA} cascade", dbname="test")


def _count(pg: PgServer, table: str) -> int:
    with psycopg.connect(pg.dsn(dbname="test"), autocommit=True) as conn:
        row = conn.execute(f"select count(*) from {SCHEMA}.{table}").fetchone()
        assert row is not None
        return int(row[0])


def test_readonly_identity_reads_but_cannot_write(policy_gw: GatewayHarness,
                                                  pg_server: PgServer) -> None:
    with psycopg.connect(policy_gw.dsn("app-db", "ci-test"), autocommit=True) as conn:
        rows = conn.execute(f"select name from {SCHEMA}.users order by id").fetchall()
        assert rows == [("ada",), ("bob",)]
        with pytest.raises(errors.InsufficientPrivilege) as exc:
            conn.execute(f"delete from {SCHEMA}.users")
        message = str(exc.value)
        assert "delete" in message and f"{SCHEMA}.users" in message
        assert "test-readonly" in message and "ci-test" in message
        # Transactions are plumbing: a read-only identity may use them.
        with conn.transaction():
            conn.execute(f"select 1 from {SCHEMA}.users")
        assert conn.execute("select 1").fetchone() == (1,)
    assert _count(pg_server, "users") == 2


def test_denied_statement_hidden_in_a_multi_statement_query_never_runs(
        policy_gw: GatewayHarness, pg_server: PgServer) -> None:
    with psycopg.connect(policy_gw.dsn("app-db", "ci-test"), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"select 1; delete from {SCHEMA}.users where id = 1", prepare=False)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"with gone as (delete from {SCHEMA}.users returning *) "
                         "select count(*) from gone")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("select pg_terminate_backend(pg_backend_pid())")
    assert _count(pg_server, "users") == 2


def test_extended_protocol_and_prepared_statements_are_checked(
        policy_gw: GatewayHarness, pg_server: PgServer) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(host=policy_gw.host, port=policy_gw.port, user="ci-test",
                                     database="app-db", password=policy_gw.token("ci-test"),
                                     ssl=False)
        try:
            assert await conn.fetchval(f"select count(*) from {SCHEMA}.users where id > $1",
                                       0) == 2
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f"update {SCHEMA}.users set name = $1", "x")
            # SQL-level PREPARE of a write is a write; EXECUTE of it is too.
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(f"prepare zap as delete from {SCHEMA}.users")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("execute zap")
            await conn.execute(f"prepare peek as select count(*) from {SCHEMA}.users")
            assert await conn.fetchval("execute peek") == 2
        finally:
            await conn.close()

    asyncio.run(go())
    assert _count(pg_server, "users") == 2


def test_search_path_is_followed_when_resolving_tables(policy_gw: GatewayHarness,
                                                       pg_server: PgServer) -> None:
    with psycopg.connect(policy_gw.dsn("app-db", "ci-deploy"), autocommit=True) as conn:
        conn.execute(f"set search_path = {SCHEMA}")
        # Unqualified `billing` is {SCHEMA}.billing now: writing it needs approval.
        with pytest.raises(errors.InsufficientPrivilege) as exc:
            conn.execute("update billing set amount = 11 where id = 1")
        assert "requires approval" in str(exc.value)
        conn.execute("update users set name = 'ada2' where id = 1")
    assert _count(pg_server, "billing") == 1
    with psycopg.connect(pg_server.dsn(dbname="test"), autocommit=True) as direct:
        assert direct.execute(f"select amount from {SCHEMA}.billing").fetchone() == (10,)
        direct.execute(f"update {SCHEMA}.users set name = 'ada' where id = 1")


def test_deploy_policy_denies_privilege_and_destructive_ddl(policy_gw: GatewayHarness) -> None:
    with psycopg.connect(policy_gw.dsn("app-db", "ci-deploy"), autocommit=True) as conn:
        for sql in (f"drop schema {SCHEMA} cascade", "grant all on schema public to public",
                    "set role postgres", f"delete from {SCHEMA}.users"):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(sql)
        conn.execute(f"create table {SCHEMA}.tmp_deploy (x int)")
        conn.execute(f"drop table {SCHEMA}.tmp_deploy")


def test_backslashes_are_refused_when_standard_conforming_strings_is_off(
        policy_gw: GatewayHarness) -> None:
    with psycopg.connect(policy_gw.dsn("app-db", "ci-test"), autocommit=True) as conn:
        conn.execute("set standard_conforming_strings = off")
        with pytest.raises(errors.InsufficientPrivilege) as exc:
            conn.execute("select 'a\\' ; select 1")
        assert "standard_conforming_strings" in str(exc.value)
        conn.execute("set standard_conforming_strings = on")
        assert conn.execute("select 'a\\'").fetchone() == ("a\\",)


def test_policy_decisions_are_audited_with_their_rule(policy_gw: GatewayHarness) -> None:
    with psycopg.connect(policy_gw.dsn("app-db", "ci-test", application_name="audit-rule"),
                         autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(f"truncate {SCHEMA}.users")
    session = policy_gw.sessions(identity="ci-test", connection="app-db")[0]
    (denied,) = [s for s in policy_gw.statements(session.id) if s.verdict is Verdict.DENY]
    assert denied.text == f"truncate {SCHEMA}.users"
    assert denied.policy == "test-readonly"
    assert denied.action == "write"


def test_psql_reports_a_denial_and_goes_on(policy_gw: GatewayHarness) -> None:
    token = policy_gw.token("ci-test")
    proc = subprocess.run(
        ["psql", "-X", "-At", f"host=127.0.0.1 port={policy_gw.port} user=ci-test "
         "dbname=app-db sslmode=disable",
         "-c", f"delete from {SCHEMA}.users", "-c", "select 'still here'"],
        env={"PGPASSWORD": token, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
        timeout=30,
    )
    assert "still here" in proc.stdout
    assert "pathwarden: statement denied for identity ci-test" in proc.stderr
