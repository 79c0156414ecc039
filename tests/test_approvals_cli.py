"""`pathwarden approvals list|show`, `approve`, `deny` and `request` as people and jobs run
them: real processes, locally on the gateway's store (--config, --as) and remotely through
its HTTP API (--gateway, PATHWARDEN_TOKEN), against a real gateway holding statements."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from gateway_harness import GatewayHarness, running_gateway, wait_until
from pgserver import PgServer
from test_api_approvals import Held, approvals_config, ask_grant, bearer, pending_for

PATHWARDEN = [sys.executable, "-m", "pathwarden.cli.main"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PATHWARDEN_")}
    return {**env, "COLUMNS": "200", **extra}


@pytest.fixture(scope="module")
def gw(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[GatewayHarness]:
    base = tmp_path_factory.mktemp("approvals-cli")
    with running_gateway(base, approvals_config(pg_server, base)) as harness:
        yield harness


@pytest.fixture
def api(gw: GatewayHarness) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.api_url(), timeout=20) as client:
        yield client


@pytest.fixture(scope="module")
def tokens(gw: GatewayHarness) -> dict[str, str]:
    return {name: gw.token(name) for name in ("ci-test", "alice", "bob", "carol")}


def local(gw: GatewayHarness, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI on the gateway's own store (local mode)."""
    return subprocess.run([*PATHWARDEN, *args, "--config", str(gw.config_path)],
                          capture_output=True, text=True, timeout=60, env=clean_env())


def remote(gw: GatewayHarness, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI through the gateway's API, as the token's identity (remote mode)."""
    env = clean_env(PATHWARDEN_GATEWAY=gw.api_url(), PATHWARDEN_TOKEN=token)
    return subprocess.run([*PATHWARDEN, *args], capture_output=True, text=True, timeout=60,
                          env=env)


def state_of(api: httpx.Client, token: str, rid: int) -> dict[str, Any]:
    body: dict[str, Any] = api.get(f"/v1/approvals/{rid}", headers=bearer(token)).json()
    return body


# -- list / show --------------------------------------------------------------------------


def test_list_and_show_locally_and_remotely(gw: GatewayHarness, api: httpx.Client,
                                            tokens: dict[str, str]) -> None:
    held = Held(gw, "create table cli_listed (id int)")
    request = pending_for(api, tokens["alice"], "cli_listed")
    rid = request["id"]
    for proc in (local(gw, "approvals", "list"),
                 remote(gw, tokens["alice"], "approvals", "list")):
        assert proc.returncode == 0, proc.stderr
        row = next(line for line in proc.stdout.splitlines() if "cli_listed" in line)
        assert str(rid) in row and "pending" in row and "operation" in row
        assert "ci-test" in row and "test-db" in row and "0/1" in row

    # A vote with a comment, then show: everything about the request.
    approve = local(gw, "approve", str(rid), "--as", "bob", "--comment", "ship it")
    assert approve.returncode == 0, approve.stderr
    assert f"bob approved request #{rid}" in approve.stdout
    held.join()
    assert held.error is None
    for proc in (local(gw, "approvals", "show", str(rid)),
                 remote(gw, tokens["ci-test"], "approvals", "show", str(rid))):
        assert proc.returncode == 0, proc.stderr
        text = proc.stdout
        assert f"request #{rid}  operation  used" in text
        assert "create table cli_listed (id int)" in text
        assert "group:dba" in text and "ship it" in text and "bob" in text
        assert f"https://gw.example.com/approvals/{rid}" in text
        assert "ops-slack" in text and "failed" in text  # the Slack delivery and its outcome
    listed = local(gw, "approvals", "list", "--state", "all", "--identity", "ci-test")
    assert str(rid) in listed.stdout and "used" in listed.stdout
    nothing = remote(gw, tokens["carol"], "approvals", "show", str(rid))
    assert nothing.returncode == 1 and "no such request" in nothing.stderr


def test_bad_options_are_usage_errors(gw: GatewayHarness, tokens: dict[str, str]) -> None:
    assert local(gw, "approvals", "list", "--state", "maybe").returncode == 2
    no_as = local(gw, "approve", "1")
    assert no_as.returncode == 2 and "--as IDENTITY" in no_as.stderr
    unknown = local(gw, "approve", "1", "--as", "mallory")
    assert unknown.returncode == 2 and "not a configured identity" in unknown.stderr
    both = remote(gw, tokens["bob"], "approve", "1", "--as", "bob")
    assert both.returncode == 2 and "--as is for local mode" in both.stderr
    no_token = subprocess.run([*PATHWARDEN, "approvals", "list", "--gateway", gw.api_url()],
                              capture_output=True, text=True, timeout=60, env=clean_env())
    assert no_token.returncode == 2 and "PATHWARDEN_TOKEN" in no_token.stderr


# -- approve / deny and their refusals ----------------------------------------------------


def test_remote_deny_fails_the_held_statement(gw: GatewayHarness, api: httpx.Client,
                                              tokens: dict[str, str]) -> None:
    held = Held(gw, "create table cli_denied (id int)")
    rid = pending_for(api, tokens["alice"], "cli_denied")["id"]
    proc = remote(gw, tokens["alice"], "deny", str(rid), "-m", "wrong window")
    assert proc.returncode == 0, proc.stderr
    assert f"alice denied request #{rid}: the request is denied" in proc.stdout
    held.join()
    assert isinstance(held.error, psycopg.Error) and "wrong window" in str(held.error)


@pytest.mark.parametrize("mode", ["local", "remote"])
def test_refusals_exit_1_with_the_reason(gw: GatewayHarness, api: httpx.Client,
                                         tokens: dict[str, str], mode: str) -> None:
    def vote(who: str, verb: str, rid: int) -> subprocess.CompletedProcess[str]:
        if mode == "local":
            return local(gw, verb, str(rid), "--as", who)
        return remote(gw, tokens[who], verb, str(rid))

    mine = ask_grant(api, tokens["alice"]).json()["id"]
    own = vote("alice", "approve", mine)
    assert own.returncode == 1
    assert "refused (self-approval)" in own.stderr and "own request" in own.stderr

    theirs = ask_grant(api, tokens["ci-test"]).json()["id"]
    carol = vote("carol", "approve", theirs)
    assert carol.returncode == 1
    expected = "not an approver" if mode == "local" else "no such request"  # hidden remotely
    assert expected in carol.stderr

    assert vote("bob", "approve", mine).returncode == 0
    late = vote("bob", "deny", mine)
    assert late.returncode == 1 and "already decided" in late.stderr
    assert "approved" in late.stderr

    held = Held(gw, f"create table cli_expired_{mode} (id int)", identity="ci-quick")
    held.join()
    expired = wait_until(lambda: next(
        (r for r in api.get("/v1/approvals", params={"state": "expired"},
                            headers=bearer(tokens["alice"])).json()["approvals"]
         if f"cli_expired_{mode}" in r["operation"]["text"]), None), 5, "expiry")
    stale = vote("alice", "approve", expired["id"])
    assert stale.returncode == 1 and "refused (expired)" in stale.stderr


# -- request ------------------------------------------------------------------------------


def _spawn_request(gw: GatewayHarness, token: str | None, *extra: str) -> subprocess.Popen[str]:
    args = [*PATHWARDEN, "request", "--connection", "test-db", "--scope", "ddl",
            "--table", "public.cli_*", "--for", "15m", "--reason", "release 4.2", "--wait",
            *extra]
    if token is None:
        env = clean_env()
        args += ["--config", str(gw.config_path), "--as", "ci-test"]
    else:
        env = clean_env(PATHWARDEN_GATEWAY=gw.api_url(), PATHWARDEN_TOKEN=token)
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


class Lines:
    """Collects a process's stderr lines as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stderr is not None
        stream = proc.stderr
        self._thread = threading.Thread(target=lambda: self.lines.extend(iter(
            stream.readline, "")), daemon=True)
        self._thread.start()

    def waiting_id(self) -> int:
        line: str = wait_until(lambda: next(
            (ln for ln in self.lines if "waiting for approval #" in ln), None), 20,
            "the waiting line")
        return int(line.split("#", 1)[1].split()[0])

    def text(self) -> str:
        self._thread.join(10)
        return "".join(self.lines)


@pytest.mark.parametrize("mode", ["local", "remote"])
def test_request_wait_exits_0_when_approved_from_another_process(
        gw: GatewayHarness, api: httpx.Client, tokens: dict[str, str], mode: str) -> None:
    proc = _spawn_request(gw, None if mode == "local" else tokens["ci-test"])
    errs = Lines(proc)
    rid = errs.waiting_id()
    assert proc.poll() is None
    approver = local(gw, "approve", str(rid), "--as", "bob", "-m", "go")
    assert approver.returncode == 0, approver.stderr
    assert proc.wait(30) == 0
    assert proc.stdout is not None
    assert proc.stdout.read().strip() == str(rid)
    text = errs.text()
    assert f"pathwarden approvals show {rid}" in text
    assert "approved: approved by bob; grant #" in text and "ddl on public.cli_*" in text
    with psycopg.connect(gw.dsn("test-db", "ci-test"), autocommit=True) as conn:
        conn.execute(f"create table public.cli_granted_{mode} (id int)")
        conn.execute(f"drop table public.cli_granted_{mode}")


def test_request_wait_exits_1_when_denied(gw: GatewayHarness, api: httpx.Client,
                                          tokens: dict[str, str]) -> None:
    proc = _spawn_request(gw, tokens["ci-test"])
    errs = Lines(proc)
    rid = errs.waiting_id()
    assert remote(gw, tokens["alice"], "deny", str(rid), "-m", "no").returncode == 0
    assert proc.wait(30) == 1
    assert f"request #{rid} is denied: denied by alice: no" in errs.text()


@pytest.mark.parametrize("mode", ["local", "remote"])
def test_ctrl_c_while_waiting_withdraws_the_request(
        gw: GatewayHarness, api: httpx.Client, tokens: dict[str, str], mode: str) -> None:
    proc = _spawn_request(gw, None if mode == "local" else tokens["ci-test"])
    errs = Lines(proc)
    rid = errs.waiting_id()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130
    assert f"interrupted: request #{rid} withdrawn" in errs.text()
    body = state_of(api, tokens["ci-test"], rid)
    assert body["state"] == "withdrawn" and body["decided_by"] == "ci-test"


def test_request_usage_errors(gw: GatewayHarness, tokens: dict[str, str]) -> None:
    base = ["request", "--connection", "test-db", "--for", "10m", "--reason", "x"]
    typo = local(gw, *base, "--scope", "dll", "--as", "ci-test")
    assert typo.returncode == 2 and "unknown action class" in typo.stderr
    no_as = local(gw, *base, "--scope", "ddl")
    assert no_as.returncode == 2 and "--as IDENTITY" in no_as.stderr
    outside = local(gw, "request", "--connection", "scram-db", "--for", "10m", "--reason", "x",
                    "--scope", "ddl", "--as", "ci-deploy")
    assert outside.returncode == 2 and "may not use connection scram-db" in outside.stderr
    when = local(gw, *base, "--scope", "ddl", "--as", "ci-test", "--for", "later")
    assert when.returncode == 2
    cut = remote(gw, tokens["ci-test"], "request", "--connection", "test-db", "--scope",
                 "write", "--for", "9h", "--reason", "long job")
    assert cut.returncode == 0, cut.stderr
    assert cut.stdout.strip().isdigit() and "cut from 9h by approvals max_grant" in cut.stderr
