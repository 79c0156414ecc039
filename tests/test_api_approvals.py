"""Deciding approvals over HTTP: the JSON routes, the web page and Slack's signed buttons.

A real gateway (tests/gateway_harness.py) with its API on, a policy that holds
DDL for approval, and real clients: psycopg holds statements through the
gateway's PostgreSQL listener, httpx calls the API.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import psycopg
import pytest

from gateway_harness import (
    GatewayHarness,
    api_settings,
    running_gateway,
    standard_config,
    wait_until,
)
from pgserver import PgServer, free_port

SLACK_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_ENV = "PW_TEST_SLACK_SIGNING_SECRET"


def approvals_config(pg: PgServer, base: Path) -> dict[str, Any]:
    """standard_config plus the API, approvers, a DDL review policy and a Slack app."""
    os.environ["PW_TEST_SCRAM"] = "scram-secret"
    os.environ[SLACK_ENV] = SLACK_SECRET
    (base / "md5pw").write_text("md5-secret\n")
    config = standard_config(pg, base / "data", free_port())
    config["api"] = api_settings()
    config["identities"].update({
        "alice": {"groups": ["dba"]},
        "bob": {"groups": ["dba"]},
        "carol": {"groups": ["dev"]},
        "ci-quick": {"groups": ["ci"]},
        "ops-admin": {"admin": True},
    })
    config["policies"] = [
        {"name": "ddl-review", "identities": ["ci-test", "alice"], "connections": ["test-db"],
         "allow": ["read", "write"], "require_approval": ["ddl"]},
        {"name": "quick", "identities": ["ci-quick"], "connections": ["test-db"],
         "require_approval": ["ddl"]},
    ]
    config["approvals"] = {
        "base_url": "https://gw.example.com",
        "rules": {"approvers": ["group:dba"], "request_ttl": "1h", "wait_timeout": "60s",
                  "max_grant": "2h"},
        # Requests of ci-quick expire at once: for the "expired" refusals.
        "policies": {"quick": {"approvers": ["group:dba"], "request_ttl": "1s",
                               "wait_timeout": "1s"}},
        "sweep_interval": "200ms",
        "poll_interval": "50ms",
    }
    config["notifiers"] = [{
        "name": "ops-slack", "type": "slack", "bot_token": "xoxb-not-a-real-token",
        "channel": "C0TEST", "signing_secret": {"env": SLACK_ENV},
        "users": {"U0ALICE1": "alice", "U0BOB01": "bob", "U0CAROL1": "carol"},
        # Nothing listens there: deliveries fail fast and are recorded as failed.
        "api_url": f"http://127.0.0.1:{free_port()}", "retries": 0, "timeout": "1s",
    }]
    return config


class Held:
    """A statement run through the gateway in a thread; it blocks while held for approval."""

    def __init__(self, gw: GatewayHarness, sql: str, identity: str = "ci-test") -> None:
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.notices: list[str] = []
        dsn = gw.dsn("test-db", identity)
        self._thread = threading.Thread(target=self._run, args=(dsn, sql), daemon=True)
        self._thread.start()

    def _run(self, dsn: str, sql: str) -> None:
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                conn.add_notice_handler(lambda d: self.notices.append(d.message_primary or ""))
                conn.execute(sql)
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def join(self, timeout: float = 15) -> None:
        assert self.done.wait(timeout), "the held statement did not finish"


def pending_for(api: httpx.Client, token: str, needle: str) -> dict[str, Any]:
    """The pending request whose statement contains ``needle`` (waits for it to appear)."""
    def find() -> dict[str, Any] | None:
        items = api.get("/v1/approvals", headers=bearer(token)).json()["approvals"]
        return next((r for r in items if r["operation"] and needle in r["operation"]["text"]),
                    None)
    found: dict[str, Any] = wait_until(find, 10, f"a pending request for {needle!r}")
    return found


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def slack_sign(body: bytes, timestamp: str, secret: str = SLACK_SECRET) -> str:
    # Slack's v0 scheme, written out from its documentation.
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def slack_body(request_id: int, user: str, approve: bool = True) -> bytes:
    payload = {
        "type": "block_actions",
        "user": {"id": user, "username": "someone", "team_id": "T0001"},
        "team": {"id": "T0001"},
        "channel": {"id": "C0TEST", "name": "approvals"},
        "container": {"type": "message", "message_ts": "1700000000.000101"},
        "response_url": "https://hooks.slack.com/actions/T0001/123/abc",
        "actions": [{"type": "button",
                     "action_id": "pathwarden_approve" if approve else "pathwarden_deny",
                     "value": str(request_id), "action_ts": "1700000001.000200"}],
    }
    return urlencode({"payload": json.dumps(payload)}).encode()


def slack_post(api: httpx.Client, body: bytes, *, timestamp: str | None = None,
               signature: str | None = None) -> httpx.Response:
    ts = timestamp if timestamp is not None else str(int(time.time()))
    return api.post("/v1/slack/actions", content=body, headers={
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature if signature is not None else slack_sign(body, ts),
    })


@pytest.fixture(scope="module")
def gw(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[GatewayHarness]:
    base = tmp_path_factory.mktemp("approvals-api")
    with running_gateway(base, approvals_config(pg_server, base)) as harness:
        yield harness


@pytest.fixture
def api(gw: GatewayHarness) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw.api_url(), timeout=20) as client:
        yield client


@pytest.fixture(scope="module")
def tokens(gw: GatewayHarness) -> dict[str, str]:
    return {name: gw.token(name) for name in
            ("ci-test", "ci-quick", "ci-deploy", "alice", "bob", "carol", "ops-admin")}


def ask_grant(api: httpx.Client, token: str, **changes: Any) -> httpx.Response:
    body = {"connection": "test-db", "scope": ["ddl"], "tables": ["public.grant_*"],
            "duration": "10m", "reason": "release 4.2 migration", **changes}
    return api.post("/v1/grants", json=body, headers=bearer(token))


# -- held statements ----------------------------------------------------------------------


def test_a_held_statement_is_listed_shown_and_runs_once_approved(
        gw: GatewayHarness, api: httpx.Client, tokens: dict[str, str]) -> None:
    held = Held(gw, "create table api_held_1 (id int)")
    request = pending_for(api, tokens["alice"], "api_held_1")
    assert not held.done.is_set()
    assert request["kind"] == "operation" and request["state"] == "pending"
    assert request["requester"] == "ci-test" and request["connection"] == "test-db"
    assert request["approvals"] == {"have": 0, "required": 1, "missing": 1}
    assert request["link"] == f"https://gw.example.com/approvals/{request['id']}"
    assert request["operation"]["action"] == "ddl"

    shown = api.get(f"/v1/approvals/{request['id']}", headers=bearer(tokens["bob"]))
    assert shown.status_code == 200
    assert shown.json()["operation"]["text"] == "create table api_held_1 (id int)"

    answer = api.post(f"/v1/approvals/{request['id']}/approve",
                      json={"comment": "looks right"}, headers=bearer(tokens["bob"]))
    assert answer.status_code == 200, answer.text
    decided = answer.json()
    assert decided["state"] == "approved" and decided["decided_by"] == "bob"
    assert [(v["approver"], v["verdict"], v["comment"]) for v in decided["votes"]] == [
        ("bob", "approve", "looks right")]
    held.join()
    assert held.error is None, held.error
    assert any(f"waiting for approval #{request['id']}" in n for n in held.notices)
    used = api.get(f"/v1/approvals/{request['id']}", headers=bearer(tokens["bob"])).json()
    assert used["state"] == "used"


def test_a_deny_fails_the_held_statement(gw: GatewayHarness, api: httpx.Client,
                                         tokens: dict[str, str]) -> None:
    held = Held(gw, "create table api_held_denied (id int)")
    request = pending_for(api, tokens["alice"], "api_held_denied")
    answer = api.post(f"/v1/approvals/{request['id']}/deny", json={"comment": "not today"},
                      headers=bearer(tokens["alice"]))
    assert answer.status_code == 200 and answer.json()["state"] == "denied"
    held.join()
    assert isinstance(held.error, psycopg.Error)
    assert held.error.sqlstate == "42501"
    assert "denied by alice: not today" in str(held.error)


def test_requests_are_visible_to_requester_approvers_and_admins_only(
        gw: GatewayHarness, api: httpx.Client, tokens: dict[str, str]) -> None:
    created = ask_grant(api, tokens["ci-test"]).json()
    rid = created["id"]
    for who in ("ci-test", "alice", "ops-admin"):
        assert api.get(f"/v1/approvals/{rid}", headers=bearer(tokens[who])).status_code == 200
        listed = api.get("/v1/approvals", headers=bearer(tokens[who])).json()["approvals"]
        assert rid in [r["id"] for r in listed], who
    hidden = api.get(f"/v1/approvals/{rid}", headers=bearer(tokens["carol"]))
    assert hidden.status_code == 404 and hidden.json()["error"] == "not_found"
    listed = api.get("/v1/approvals", headers=bearer(tokens["carol"])).json()["approvals"]
    assert rid not in [r["id"] for r in listed]
    assert api.post(f"/v1/approvals/{rid}/approve",
                    headers=bearer(tokens["carol"])).status_code == 404
    assert api.get("/v1/approvals").json()["error"] == "missing_token"
    assert api.get("/v1/approvals", params={"state": "bogus"},
                   headers=bearer(tokens["alice"])).status_code == 400


# -- refusals -----------------------------------------------------------------------------


def test_refusals_carry_their_code_and_status(gw: GatewayHarness, api: httpx.Client,
                                              tokens: dict[str, str]) -> None:
    # alice (a dba) asks; she may not approve her own request.
    rid = ask_grant(api, tokens["alice"]).json()["id"]
    own = api.post(f"/v1/approvals/{rid}/approve", headers=bearer(tokens["alice"]))
    assert own.status_code == 403 and own.json()["error"] == "self_approval"
    assert "own request" in own.json()["message"]

    # ci-test is no approver: it can see its own request but not vote on it.
    rid2 = ask_grant(api, tokens["ci-test"]).json()["id"]
    stranger = api.post(f"/v1/approvals/{rid2}/approve", headers=bearer(tokens["ci-test"]))
    assert stranger.status_code == 403
    assert stranger.json()["error"] in ("not_approver", "self_approval")

    assert api.post(f"/v1/approvals/{rid}/approve",
                    headers=bearer(tokens["bob"])).json()["state"] == "approved"
    again = api.post(f"/v1/approvals/{rid}/deny", headers=bearer(tokens["bob"]))
    assert again.status_code == 409 and again.json()["error"] == "not_pending"

    missing = api.post("/v1/approvals/999999/approve", headers=bearer(tokens["bob"]))
    assert missing.status_code == 404


def test_an_expired_request_answers_410(gw: GatewayHarness, api: httpx.Client,
                                        tokens: dict[str, str]) -> None:
    held = Held(gw, "create table api_expires (id int)", identity="ci-quick")
    held.join()  # wait_timeout 1s
    assert isinstance(held.error, psycopg.Error)
    items = api.get("/v1/approvals", params={"state": "all", "identity": "ci-quick"},
                    headers=bearer(tokens["alice"])).json()["approvals"]
    rid = next(r["id"] for r in items if "api_expires" in r["operation"]["text"])
    wait_until(lambda: api.get(f"/v1/approvals/{rid}", headers=bearer(tokens["alice"]))
               .json()["state"] == "expired", 5, "the request to expire")
    late = api.post(f"/v1/approvals/{rid}/approve", headers=bearer(tokens["alice"]))
    assert late.status_code == 410 and late.json()["error"] == "expired"


def test_only_the_requester_withdraws(gw: GatewayHarness, api: httpx.Client,
                                      tokens: dict[str, str]) -> None:
    rid = ask_grant(api, tokens["ci-test"]).json()["id"]
    other = api.post(f"/v1/approvals/{rid}/withdraw", headers=bearer(tokens["alice"]))
    assert other.status_code == 403 and other.json()["error"] == "not_requester"
    done = api.post(f"/v1/approvals/{rid}/withdraw", json={"reason": "not needed"},
                    headers=bearer(tokens["ci-test"]))
    assert done.status_code == 200
    assert done.json()["state"] == "withdrawn"
    assert done.json()["outcome"] == "withdrawn by ci-test: not needed"


# -- grants -------------------------------------------------------------------------------


def test_an_approved_grant_lets_its_statements_through(gw: GatewayHarness, api: httpx.Client,
                                                       tokens: dict[str, str]) -> None:
    asked = ask_grant(api, tokens["ci-test"])
    assert asked.status_code == 200, asked.text
    body = asked.json()
    assert body["kind"] == "grant" and body["state"] == "pending"
    assert body["scope"]["describe"] == "ddl on public.grant_*"
    assert body["duration"] == "10m" and body["reason"] == "release 4.2 migration"

    approved = api.post(f"/v1/approvals/{body['id']}/approve", headers=bearer(tokens["bob"]))
    grant = approved.json()["grant"]
    assert grant["identity"] == "ci-test" and grant["active"] is True
    assert grant["request_id"] == body["id"]

    mine = api.get("/v1/grants", headers=bearer(tokens["ci-test"])).json()["grants"]
    assert grant["id"] in [g["id"] for g in mine]
    with psycopg.connect(gw.dsn("test-db", "ci-test"), autocommit=True) as conn:
        conn.execute("create table public.grant_t1 (id int)")  # covered: not held
        conn.execute("drop table public.grant_t1")


def test_grant_requests_are_checked(gw: GatewayHarness, api: httpx.Client,
                                    tokens: dict[str, str]) -> None:
    outside = ask_grant(api, tokens["ci-deploy"], connection="scram-db")
    assert outside.status_code == 403 and outside.json()["error"] == "scope_not_allowed"
    typo = ask_grant(api, tokens["ci-test"], scope=["dll"])
    assert typo.status_code == 400 and "unknown action class" in typo.json()["message"]
    bad = ask_grant(api, tokens["ci-test"], duration="soon")
    assert bad.status_code == 400
    capped = ask_grant(api, tokens["ci-test"], duration="5h").json()
    assert capped["duration"] == "2h"  # max_grant
    others = api.get("/v1/grants", params={"identity": "ci-deploy"},
                     headers=bearer(tokens["ci-test"]))
    assert others.status_code == 403


# -- the web page -------------------------------------------------------------------------


def test_the_page_shows_state_and_with_a_token_the_escaped_masked_statement(
        gw: GatewayHarness, api: httpx.Client, tokens: dict[str, str]) -> None:
    sql = ("create table api_page_t (note text default '<script>alert(1)</script>', "
           "dsn text default 'postgresql://app:Sup3rSecretPw@db.internal/app')")
    held = Held(gw, sql)
    request = pending_for(api, tokens["alice"], "api_page_t")
    rid = request["id"]
    stored = request["operation"]["text"]
    assert "Sup3rSecretPw" not in stored  # masked before it is stored

    page = api.get(f"/approvals/{rid}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src" not in page.headers["content-security-policy"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "pending" in page.text and "api_page_t" not in page.text  # no token: state only

    shown = api.post(f"/approvals/{rid}", data={"token": tokens["alice"], "action": "view"})
    assert shown.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown.text
    assert "<script>" not in shown.text
    assert "api_page_t" in shown.text and "Sup3rSecretPw" not in shown.text

    refused = api.post(f"/approvals/{rid}", data={"token": "not-a-token", "action": "approve"})
    assert refused.status_code == 401 and "<html" in refused.text

    decided = api.post(f"/approvals/{rid}", data={"token": tokens["alice"], "action": "deny",
                                                  "comment": "<b>no</b>"})
    assert decided.status_code == 200
    assert "Recorded: alice denied" in decided.text
    assert "&lt;b&gt;no&lt;/b&gt;" in decided.text and "<b>no</b>" not in decided.text
    held.join()
    assert isinstance(held.error, psycopg.Error)
    assert api.get("/approvals/999999").status_code == 404


# -- Slack --------------------------------------------------------------------------------


def test_a_signed_slack_press_records_the_vote_as_the_mapped_identity(
        gw: GatewayHarness, api: httpx.Client, tokens: dict[str, str]) -> None:
    held = Held(gw, "create table api_slack_t (id int)")
    rid = pending_for(api, tokens["alice"], "api_slack_t")["id"]
    answer = slack_post(api, slack_body(rid, "U0BOB01"))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["response_type"] == "ephemeral" and body["replace_original"] is False
    assert f"Recorded your approval of request #{rid} as bob" in body["text"]
    held.join()
    assert held.error is None
    request = api.get(f"/v1/approvals/{rid}", headers=bearer(tokens["alice"])).json()
    assert [(v["approver"], v["verdict"]) for v in request["votes"]] == [("bob", "approve")]
    assert request["votes"][0]["comment"] == "via Slack (U0BOB01)"


def test_slack_presses_that_are_not_from_slack_are_refused(
        gw: GatewayHarness, api: httpx.Client, tokens: dict[str, str]) -> None:
    rid = ask_grant(api, tokens["ci-test"]).json()["id"]
    body = slack_body(rid, "U0BOB01")
    forged = slack_post(api, body, signature=slack_sign(body, str(int(time.time())),
                                                        "the-wrong-secret"))
    assert forged.status_code == 401 and forged.json()["error"] == "bad_signature"
    old = str(int(time.time()) - 600)
    stale = slack_post(api, body, timestamp=old, signature=slack_sign(body, old))
    assert stale.status_code == 401 and stale.json()["error"] == "stale_request"
    unsigned = api.post("/v1/slack/actions", content=body)
    assert unsigned.status_code == 401
    huge = slack_post(api, body + b"&pad=" + b"x" * (65 * 1024))
    assert huge.status_code == 413
    request = api.get(f"/v1/approvals/{rid}", headers=bearer(tokens["alice"])).json()
    assert request["state"] == "pending" and request["votes"] == []


def test_slack_refusals_are_answered_with_the_reason(
        gw: GatewayHarness, api: httpx.Client, tokens: dict[str, str]) -> None:
    rid = ask_grant(api, tokens["ci-test"]).json()["id"]
    unmapped = slack_post(api, slack_body(rid, "U0NOBODY1"))
    assert unmapped.status_code == 200
    assert "U0NOBODY1 is not mapped to a pathwarden identity" in unmapped.json()["text"]
    assert unmapped.json()["text"].startswith("Not recorded")
    carol = slack_post(api, slack_body(rid, "U0CAROL1"))
    assert carol.status_code == 200
    assert "carol may not approve" in carol.json()["text"]
    missing = slack_post(api, slack_body(999999, "U0BOB01"))
    assert missing.status_code == 200 and "no approval request 999999" in missing.json()["text"]
    not_ours = urlencode({"payload": json.dumps({"type": "shortcut"})}).encode()
    other = slack_post(api, not_ours)
    assert other.status_code == 200 and "cannot act on this" in other.json()["text"]
    request = api.get(f"/v1/approvals/{rid}", headers=bearer(tokens["alice"])).json()
    assert request["state"] == "pending" and request["votes"] == []
