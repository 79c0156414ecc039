"""Statements that need approval, held on the wire until people decide (real psql, server).

Policy says DDL on the app connection needs approval from group dba. The
statement is held (the client is told so), other sessions go on, and it runs
exactly once when approved; it fails with the request id when denied, when the
wait times out (a retry after approval then runs) or when the client cancels
(which withdraws the request).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gateway_harness import GatewayHarness, standard_config, wait_until, write_config
from pathwarden.approvals import ApprovalRequest, RequestState
from pathwarden.model import Identity
from pgserver import PgServer, free_port

SCHEMA = f"appr_{uuid.uuid4().hex[:8]}"
ALICE = Identity(name="alice", groups=("dba",))
BOB = Identity(name="bob", groups=("dev",))


def _config(pg: PgServer, base: Path, wait: str = "20s") -> dict[str, Any]:
    (base / "md5pw").write_text("md5-secret\n")
    config = standard_config(pg, base / "data", free_port())
    config["connections"]["app-db"] = {"host": pg.host, "port": pg.port, "database": "test",
                                       "user": "postgres", "sslmode": "disable"}
    config["identities"].update({"alice": {"groups": ["dba"]}, "bob": {"groups": ["dev"]}})
    config["policies"] = [{"name": "deploy", "identities": ["ci-test"],
                           "connections": ["app-db"], "allow": ["read", "write"],
                           "require_approval": ["ddl"]}]
    config["approvals"] = {"rules": {"approvers": ["group:dba"], "wait_timeout": wait},
                           "base_url": "https://gw.example.com",
                           "poll_interval": "100ms"}
    return config


@pytest.fixture(scope="module")
def appr_gw(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[GatewayHarness]:
    pg_server.psql(f"create schema {SCHEMA}", dbname="test")
    base = tmp_path_factory.mktemp("approvals")
    harness = GatewayHarness(write_config(base / "pathwarden.yaml", _config(pg_server, base)))
    try:
        yield harness
    finally:
        harness.stop()
        pg_server.psql(f"drop schema if exists {SCHEMA} cascade", dbname="test")


def _pending(gw: GatewayHarness, marker: str) -> ApprovalRequest:
    def find() -> ApprovalRequest | None:
        for request in gw.call(gw.gateway.approvals.list(state=RequestState.PENDING)):
            if request.operation is not None and marker in request.operation.text:
                return request
        return None

    found: ApprovalRequest = wait_until(find, timeout=10, what="the approval request")
    return found


def _psql(gw: GatewayHarness, sql: str) -> subprocess.Popen[str]:
    conninfo = (f"host={gw.host} port={gw.port} user=ci-test dbname=app-db sslmode=disable")
    return subprocess.Popen(
        ["psql", "-X", "-v", "ON_ERROR_STOP=1", conninfo, "-c", sql],
        env={"PATH": "/usr/bin:/bin", "PGPASSWORD": gw.token(), "LC_ALL": "C.UTF-8"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _exists(pg: PgServer, table: str) -> bool:
    with psycopg.connect(pg.dsn(dbname="test"), autocommit=True) as conn:
        row = conn.execute("select to_regclass(%s) is not null", (f"{SCHEMA}.{table}",)
                           ).fetchone()
        return bool(row and row[0])


def test_held_statement_runs_exactly_once_after_approval(appr_gw: GatewayHarness,
                                                         pg_server: PgServer) -> None:
    table = f"t_{uuid.uuid4().hex[:6]}"
    proc = _psql(appr_gw, f"create table {SCHEMA}.{table} (id int)")
    request = _pending(appr_gw, table)
    assert proc.poll() is None, "psql must be waiting"
    assert not _exists(pg_server, table)
    # Other sessions are not held meanwhile.
    with psycopg.connect(appr_gw.dsn("app-db"), autocommit=True) as other:
        assert other.execute("select 42").fetchone() == (42,)
    started = time.monotonic()
    appr_gw.call(appr_gw.gateway.approvals.vote(request.id, ALICE, True, "release 4.2"))
    out, err = proc.communicate(timeout=20)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, err
    assert f"waiting for approval #{request.id}" in err
    assert f"https://gw.example.com/approvals/{request.id}" in err
    assert "CREATE TABLE" in out
    assert _exists(pg_server, table)
    assert elapsed < 5
    decided = appr_gw.call(appr_gw.gateway.approvals.get(request.id))
    assert decided is not None and decided.state is RequestState.USED
    assert [v.approver for v in decided.votes] == ["alice"]
    # The approval was for that statement once: running it again asks again.
    again = _psql(appr_gw, f"create table {SCHEMA}.{table} (id int)")
    second = _pending(appr_gw, table)
    assert second.id != request.id
    appr_gw.call(appr_gw.gateway.approvals.vote(second.id, ALICE, False, "no"))
    _, err = again.communicate(timeout=20)
    assert again.returncode != 0 and f"approval request {second.id}" in err


def test_a_non_approver_cannot_decide(appr_gw: GatewayHarness) -> None:
    table = f"t_{uuid.uuid4().hex[:6]}"
    proc = _psql(appr_gw, f"create table {SCHEMA}.{table} (id int)")
    try:
        request = _pending(appr_gw, table)
        from pathwarden.approvals import ApprovalError
        with pytest.raises(ApprovalError) as exc:
            appr_gw.call(appr_gw.gateway.approvals.vote(request.id, BOB, True, ""))
        assert "bob may not approve" in str(exc.value)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=20)


def test_ctrl_c_withdraws_the_request(appr_gw: GatewayHarness, pg_server: PgServer) -> None:
    table = f"t_{uuid.uuid4().hex[:6]}"
    proc = _psql(appr_gw, f"create table {SCHEMA}.{table} (id int)")
    request = _pending(appr_gw, table)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode != 0
    assert "withdrawn" in err or "cancel" in err.lower()
    withdrawn = appr_gw.call(appr_gw.gateway.approvals.get(request.id))
    assert withdrawn is not None and withdrawn.state is RequestState.WITHDRAWN
    assert not _exists(pg_server, table)


def test_wait_timeout_then_retry_after_approval(pg_server: PgServer, tmp_path: Path) -> None:
    gw = GatewayHarness(write_config(tmp_path / "pathwarden.yaml",
                                     _config(pg_server, tmp_path, wait="1s")))
    try:
        table = f"t_{uuid.uuid4().hex[:6]}"
        sql = f"create table {SCHEMA}.{table} (id int)"
        with psycopg.connect(gw.dsn("app-db"), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as exc:
                conn.execute(sql)
            request = _pending(gw, table)
            assert f"approval request {request.id}" in str(exc.value)
            assert f"pathwarden approve {request.id}" in str(exc.value)
            assert conn.execute("select 1").fetchone() == (1,)  # the session goes on
            gw.call(gw.gateway.approvals.vote(request.id, ALICE, True, ""))
            conn.execute(sql)  # the retry runs at once
        assert _exists(pg_server, table)
    finally:
        gw.stop()


def test_pending_request_survives_a_gateway_restart(pg_server: PgServer, tmp_path: Path) -> None:
    path = write_config(tmp_path / "pathwarden.yaml", _config(pg_server, tmp_path))
    table = f"t_{uuid.uuid4().hex[:6]}"
    sql = f"create table {SCHEMA}.{table} (id int)"
    gw = GatewayHarness(path)
    errors: list[str] = []

    def hold() -> None:
        try:
            with psycopg.connect(gw.dsn("app-db"), autocommit=True) as conn:
                conn.execute(sql)
        except psycopg.Error as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=hold)
    thread.start()
    request = _pending(gw, table)
    gw.stop()  # the held client's wait is cut
    thread.join(20)
    assert errors and "shutting down" in errors[0]
    gw = GatewayHarness(path)
    try:
        again = gw.call(gw.gateway.approvals.get(request.id))
        assert again is not None and again.state is RequestState.PENDING
        gw.call(gw.gateway.approvals.vote(request.id, ALICE, True, "after restart"))
        with psycopg.connect(gw.dsn("app-db"), autocommit=True) as conn:
            conn.execute(sql)
        assert _exists(pg_server, table)
    finally:
        gw.stop()


def test_an_approval_on_one_replica_releases_a_session_on_another(
        pg_server: PgServer, tmp_path: Path) -> None:
    dbname = f"pwappr_{uuid.uuid4().hex[:8]}"
    pg_server.create_database(dbname)
    gateways = []
    for name in ("a", "b"):
        base = tmp_path / name
        base.mkdir()
        config = _config(pg_server, base)
        config["store"] = {"url": pg_server.dsn(dbname=dbname)}
        config["approvals"]["poll_interval"] = "30s"  # only LISTEN/NOTIFY can wake it in time
        gateways.append(GatewayHarness(write_config(base / "pathwarden.yaml", config)))
    a, b = gateways
    try:
        table = f"t_{uuid.uuid4().hex[:6]}"
        proc = _psql(a, f"create table {SCHEMA}.{table} (id int)")
        request = _pending(b, table)  # replica b sees the request replica a opened
        b.call(b.gateway.approvals.vote(request.id, ALICE, True, "from replica b"))
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert _exists(pg_server, table)
    finally:
        for gw in gateways:
            gw.stop()


def test_approved_from_the_cli_in_another_process(appr_gw: GatewayHarness,
                                                  pg_server: PgServer) -> None:
    table = f"t_{uuid.uuid4().hex[:6]}"
    proc = _psql(appr_gw, f"create table {SCHEMA}.{table} (id int)")
    request = _pending(appr_gw, table)
    cli = [sys.executable, "-m", "pathwarden.cli.main"]
    config = ["--config", str(appr_gw.config_path)]
    listing = subprocess.run([*cli, "approvals", "list", *config], capture_output=True,
                             text=True, timeout=60)
    assert str(request.id) in listing.stdout and table in listing.stdout
    refused = subprocess.run([*cli, "approve", str(request.id), "--as", "bob", *config],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "not an approver" in refused.stderr + refused.stdout
    assert proc.poll() is None
    ok = subprocess.run([*cli, "approve", str(request.id), "--as", "alice", "--comment",
                         "matches release 4.2", *config],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "CREATE TABLE" in out and _exists(pg_server, table)
    # The audit trail shows the statement ran under that approval, and who gave it.
    appr_gw.flush()
    statement = next(st for s in appr_gw.sessions(connection="app-db")
                     for st in appr_gw.statements(s.id) if table in st.text)
    assert f"approval {request.id}" in (statement.reason or "") or "alice" in statement.reason
    shown = subprocess.run([*cli, "approvals", "show", str(request.id), *config],
                           capture_output=True, text=True, timeout=60)
    assert "alice" in shown.stdout and "matches release 4.2" in shown.stdout
