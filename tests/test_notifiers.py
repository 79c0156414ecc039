"""Notifications about approval requests, against real servers on loopback.

Slack's API and incoming webhooks and a ticketing webhook are stood in for by
``ThreadingHTTPServer`` receivers, email by an aiosmtpd server; nothing on the
network is mocked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import TypeAdapter, ValidationError

from pathwarden.approvals.notify import (
    Dispatcher,
    EmailNotifier,
    RequestView,
    SlackNotifier,
    WebhookNotifier,
    build_notifiers,
    verify_webhook_signature,
)
from pathwarden.approvals.notify.base import DeliveryError, RetryPolicy
from pathwarden.approvals.notify.messages import (
    APPROVE_ACTION,
    DENY_ACTION,
    SLACK_OPERATION_LIMIT,
    email_message,
    slack_message,
    webhook_body,
    webhook_document,
)
from pathwarden.approvals.notify.webhook import WebhookSignatureError, sign_webhook
from pathwarden.config.notifiers import (
    EmailNotifierConfig,
    NotifiersConfig,
    SlackNotifierConfig,
    WebhookNotifierConfig,
)
from pathwarden.config.secrets import Secret

MASKED_OP = "UPDATE users SET password = '****' WHERE id = 7"
WEBHOOK_SECRET = "whsec-7f3a9c1e5b"
BOT_TOKEN = "xoxb-1111-2222-SECRETBOT"
SLACK_HOOK_TOKEN = "SECRETHOOKTOKEN123"
SMTP_PASSWORD = "smtp-pa55-word-XYZ"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_request(**changes: Any) -> RequestView:
    created = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    view = RequestView(
        id=17,
        kind="operation",
        state="pending",
        requester="ci-deploy",
        groups=("deployers",),
        claims={
            "repository": "acme/shop",
            "run_id": "4242",
            "sha": "0123456789abcdef0123456789abcdef01234567",
            "ref": "refs/heads/main",
            "actor": "octocat",
        },
        connection="prod-db",
        operation=MASKED_OP,
        action="ddl",
        policy="prod",
        rule="ddl-needs-approval",
        scope=(),
        duration_s=None,
        reason="release 1.2",
        approvers=("alice", "bob"),
        required=2,
        votes=(),
        created_at=created,
        expires_at=created + timedelta(minutes=30),
        url="https://gw.example.com/approvals/17",
    )
    return dataclasses.replace(view, **changes)


# -- a loopback HTTP receiver -------------------------------------------------


@dataclasses.dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Reply = tuple[int, dict[str, str], bytes]
Behaviour = Callable[[Received, int], Reply | None]


class Receiver:
    """A ThreadingHTTPServer recording every POST; ``behaviour(request, n)`` answers.

    ``n`` counts requests to that path. Returning None answers 200 ``ok``.
    """

    def __init__(self, behaviour: Behaviour | None = None, port: int = 0) -> None:
        self.behaviour = behaviour or (lambda _r, _n: None)
        self.requests: list[Received] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                request = Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with receiver.lock:
                    receiver.requests.append(request)
                    count = sum(1 for r in receiver.requests if r.path == request.path)
                reply = receiver.behaviour(request, count) or (200, {}, b"ok")
                status, headers, content = reply
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(content)))
                    self.end_headers()
                    self.wfile.write(content)
                except OSError:
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.daemon_threads = True
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.block_on_close = False  # type: ignore[attr-defined]
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def paths(self) -> list[str]:
        with self.lock:
            return [r.path for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(behaviour: Behaviour | None = None, port: int = 0) -> Receiver:
        server = Receiver(behaviour, port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def slack_api(fail_posts: int = 0) -> Behaviour:
    """Slack's Web API: chat.postMessage / chat.update, bearer token checked."""

    def behave(request: Received, n: int) -> Reply:
        if request.headers.get("authorization") != f"Bearer {BOT_TOKEN}":
            return 200, {"Content-Type": "application/json"}, b'{"ok":false,"error":"invalid_auth"}'
        if request.path.endswith("chat.postMessage"):
            if n <= fail_posts:
                return 500, {}, b"oops"
            body = {"ok": True, "channel": "C0CHANNEL", "ts": f"1700000000.00010{n}"}
        elif request.path.endswith("chat.update"):
            body = {"ok": True, "channel": "C0CHANNEL", "ts": request.json()["ts"]}
        else:
            body = {"ok": False, "error": "unknown_method"}
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    return behave


def ticketing(secret: str) -> Behaviour:
    """A receiver that checks the signature as docs/notifiers.md tells it to."""

    def behave(request: Received, n: int) -> Reply:
        timestamp = request.headers.get("x-pathwarden-timestamp", "")
        given = request.headers.get("x-pathwarden-signature", "")
        mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256)
        if not hmac.compare_digest("sha256=" + mac.hexdigest(), given):
            return 401, {}, b"bad signature"
        if abs(time.time() - int(timestamp)) > 300:
            return 401, {}, b"stale"
        return 204, {}, b""

    return behave


class Outcomes:
    def __init__(self) -> None:
        self.items: list[tuple[int, str, bool, str | None]] = []

    async def __call__(self, request_id: int, channel: str, ok: bool, error: str | None) -> None:
        self.items.append((request_id, channel, ok, error))

    def by_channel(self) -> dict[str, tuple[bool, str | None]]:
        return {channel: (ok, error) for _, channel, ok, error in self.items}


def webhook_config(url: str, **changes: Any) -> WebhookNotifierConfig:
    data: dict[str, Any] = {
        "name": "tickets", "type": "webhook", "url": url, "secret": WEBHOOK_SECRET,
        "backoff": "10ms", "timeout": "2s", **changes,
    }
    return WebhookNotifierConfig.model_validate(data)


def slack_config(**changes: Any) -> SlackNotifierConfig:
    data: dict[str, Any] = {"name": "ops-slack", "type": "slack", "backoff": "10ms", **changes}
    return SlackNotifierConfig.model_validate(data)


# -- configuration ------------------------------------------------------------


def test_config_full_list_parses() -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(NotifiersConfig)
    notifiers = adapter.validate_python([
        {"name": "s", "type": "slack", "bot_token": {"env": "SLACK_BOT"}, "channel": "C1",
         "signing_secret": {"env": "SLACK_SIGN"}, "users": {"U0123ABCD": "alice"}},
        {"name": "m", "type": "email", "host": "smtp.example.com", "sender": "pw@example.com",
         "to": ["dba@example.com"], "username": {"env": "U"}, "password": {"env": "P"}},
        {"name": "w", "type": "webhook", "url": "https://t.example.com/h",
         "secret": {"env": "W"}, "events": ["decided"], "retries": 0, "backoff": "500ms"},
    ])
    slack, mail, hook = notifiers
    assert isinstance(slack, SlackNotifierConfig) and slack.interactive
    assert slack.api_url == "https://slack.com/api"
    assert isinstance(mail, EmailNotifierConfig)
    assert (mail.port, mail.security, mail.timeout) == (587, "starttls", timedelta(seconds=30))
    assert isinstance(hook, WebhookNotifierConfig)
    assert hook.events == ("decided",) and hook.backoff == timedelta(milliseconds=500)
    assert slack.events == ("created", "decided") and slack.retries == 5
    assert slack.backoff == timedelta(seconds=1)
    kinds = [type(n) for n in build_notifiers(notifiers)]
    assert kinds == [SlackNotifier, EmailNotifier, WebhookNotifier]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"type": "slack"}, "webhook_url"),
        ({"type": "slack", "bot_token": "x"}, "bot_token and channel"),
        ({"type": "slack", "webhook_url": "x", "signing_secret": "s"}, "need bot_token"),
        ({"type": "slack", "bot_token": "x", "channel": "C1", "users": {"U0123": "a"}},
         "signing_secret"),
        ({"type": "slack", "bot_token": "x", "channel": "C1", "signing_secret": "s",
          "users": {"alice": "a"}}, "Slack user id"),
        ({"type": "slack", "webhook_url": "x", "api_url": "http://slack.example.com/api"},
         "https"),
        ({"type": "slack", "webhook_url": "x", "colour": "red"}, "Extra inputs"),
        ({"type": "email", "host": "smtp.example.com", "security": "none",
          "sender": "a@b.c", "to": ["d@e.f"]}, "loopback"),
        ({"type": "email", "host": "h", "sender": "a@b.c", "to": []}, "at least 1"),
        ({"type": "email", "host": "h", "sender": "nobody", "to": ["d@e.f"]},
         "not an email"),
        ({"type": "email", "host": "h", "sender": "a@b.c", "to": ["d@e.f"], "username": "u"},
         "both username and password"),
        ({"type": "webhook", "url": "http://tickets.example.com/", "secret": "s"}, "https"),
        ({"type": "webhook", "url": "ftp://x/", "secret": "s"}, "https"),
        ({"type": "webhook", "url": "https://x/", "secret": "s",
          "headers": {"X-Pathwarden-Signature": "forged"}}, "set by pathwarden"),
        ({"type": "webhook", "url": "https://x/", "secret": "s",
          "headers": {"X-Bad": "a\r\nInjected: 1"}}, "line break"),
        ({"type": "webhook", "url": "https://x/", "secret": "s", "events": []}, "at least 1"),
        ({"type": "webhook", "url": "https://x/", "secret": "s",
          "events": ["created", "created"]}, "once"),
        ({"type": "webhook", "url": "https://x/", "secret": "s", "events": ["voted"]},
         "created"),
        ({"type": "webhook", "url": "https://x/", "secret": "s", "retries": -1}, "greater"),
        ({"type": "webhook", "url": "https://x/", "secret": "s", "backoff": "0s"}, "zero"),
    ],
)
def test_config_rejects(data: dict[str, Any], message: str) -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(NotifiersConfig)
    with pytest.raises(ValidationError, match=message):
        adapter.validate_python([{"name": "n", **data}])


def test_config_duplicate_names_and_secret_dump() -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(NotifiersConfig)
    hook = {"name": "n", "type": "webhook", "url": "https://x/", "secret": WEBHOOK_SECRET}
    with pytest.raises(ValidationError, match="two notifiers are named 'n'"):
        adapter.validate_python([hook, hook])
    (config,) = adapter.validate_python([hook])
    assert WEBHOOK_SECRET not in repr(config)
    assert WEBHOOK_SECRET not in json.dumps(config.model_dump(mode="json"))


def test_config_loopback_exceptions() -> None:
    email = EmailNotifierConfig.model_validate({
        "name": "m", "type": "email", "host": "localhost", "port": 25, "security": "none",
        "sender": "a@b.c", "to": ["d@e.f"]})
    assert email.security == "none"
    hook = webhook_config("http://[::1]:8080/hook")
    assert hook.url.startswith("http://")


# -- rendering ----------------------------------------------------------------


def test_email_subject_and_bodies() -> None:
    content = email_message("created", make_request())
    assert content.subject == "[pathwarden] approval #17: ddl on prod-db by ci-deploy"
    for body in (content.text, content.html):
        assert "acme/shop" in body and "4242" in body and "0123456789ab" in body
        assert "refs/heads/main" in body and "octocat" in body
        assert "ddl-needs-approval" in body and "alice, bob" in body
        assert "0 of 2 approvals" in body
        assert "2024-05-01 12:30 UTC" in body
        assert "https://gw.example.com/approvals/17" in body
    assert MASKED_OP in content.text
    decided = email_message(
        "decided", make_request(state="approved", votes=(("alice", "approve", "ok"),)))
    assert decided.subject == "[pathwarden] approval #17 approved: ddl on prod-db by ci-deploy"
    assert "alice approved: ok" in decided.text


def test_email_escapes_user_text() -> None:
    request = make_request(
        requester="<script>alert(1)</script>",
        operation="SELECT '</pre><img src=x onerror=alert(1)>'",
        claims={"repository": "a\r\nBcc: victim@example.com"},
        url="javascript:alert(1)",
    )
    content = email_message("created", request)
    assert "<script>" not in content.html and "&lt;script&gt;" in content.html
    assert "<img" not in content.html
    assert "javascript:" not in content.html and "javascript:" not in content.text
    assert "\r" not in content.subject and "\n" not in content.subject
    assert "a Bcc: victim@example.com" in content.text  # folded into one line


def test_slack_blocks_content_and_buttons() -> None:
    message = slack_message("created", make_request(), interactive=True)
    blocks = message["blocks"]
    assert blocks[0]["type"] == "header"
    assert blocks[0]["text"]["text"] == "Approval #17: waiting for approval"
    dump = json.dumps(blocks)
    for text in ("ci-deploy", "acme/shop", "4242", "0123456789ab", "refs/heads/main",
                 "octocat", "prod-db", "ddl-needs-approval", "alice, bob", "0 of 2 approvals",
                 "https://gw.example.com/approvals/17", "!date^"):
        assert text in dump, text
    operation = next(b for b in blocks if "Operation" in b.get("text", {}).get("text", ""))
    assert f"```{MASKED_OP}```" in operation["text"]["text"]
    actions = blocks[-1]
    assert actions["type"] == "actions"
    buttons = {e["action_id"]: e for e in actions["elements"]}
    assert buttons[APPROVE_ACTION]["value"] == "17" and buttons[DENY_ACTION]["value"] == "17"
    assert buttons[APPROVE_ACTION]["style"] == "primary"
    assert message["text"].startswith("Approval #17 waiting for approval: ddl on prod-db")
    # No buttons once decided, nor without interactivity.
    decided = slack_message("decided", make_request(state="denied"), interactive=True)
    assert all(b["type"] != "actions" for b in decided["blocks"])
    plain = slack_message("created", make_request(), interactive=False)
    assert all(b["type"] != "actions" for b in plain["blocks"])
    # Every text object is within Slack's limits.
    for block in blocks:
        if block["type"] == "section":
            assert len(block.get("fields", [])) <= 10
            assert len(block.get("text", {}).get("text", "")) <= 3000


def _mrkdwn_texts(node: Any) -> list[str]:
    if isinstance(node, dict):
        if node.get("type") == "mrkdwn":
            return [node["text"]]
        return [t for value in node.values() for t in _mrkdwn_texts(value)]
    if isinstance(node, list):
        return [t for value in node for t in _mrkdwn_texts(value)]
    return []


def test_slack_escapes_and_truncates() -> None:
    request = make_request(
        requester="<!channel> <https://evil.example|click> & co",
        operation="SELECT 1; -- ```<@U123>" + "x" * 5000,
        reason="see <https://evil.example>",
        votes=(("mallory", "deny", "<!here>"),),
        url="https://gw.example.com/a?x=1&y=<2>",  # unsafe: dropped
    )
    message = slack_message("created", request, interactive=True)
    # Slack parses mrkdwn objects and the fallback text; plain_text is shown as is.
    dump = json.dumps([message["text"], *_mrkdwn_texts(message["blocks"])])
    assert "<!channel>" in json.dumps(message)  # in plain_text (the confirm dialog)
    assert "<!channel>" not in dump and "<!here>" not in dump and "<@U123>" not in dump
    assert "<https://evil.example" not in dump
    assert "&lt;!channel&gt;" in dump and "&amp; co" in dump
    assert "gw.example.com/a?x" not in dump
    operation = next(b for b in message["blocks"]
                     if "Operation" in b.get("text", {}).get("text", ""))["text"]["text"]
    assert operation.count("```") == 2  # the statement's ``` cannot close the block
    assert "(cut: the statement is longer)" in operation
    assert len(operation) <= SLACK_OPERATION_LIMIT + 200
    for block in message["blocks"]:
        for obj in [block.get("text"), *block.get("fields", [])]:
            if obj and obj["type"] == "mrkdwn":
                assert obj["verbatim"] is True


def test_undecodable_text_is_rendered() -> None:
    request = make_request(operation="SELECT 'caf\udce9'", requester="b\udcffot")
    assert "caf\ufffd" in email_message("created", request).text
    body = webhook_body("created", request)
    assert body.isascii() and b"caf\\ufffd" in body and b"b\\udcffot" in body
    json.dumps(slack_message("created", request, interactive=True)).encode()


def test_grant_rendering() -> None:
    request = make_request(
        kind="grant", operation=None, action=None, scope=("public.orders", "public.items"),
        duration_s=5400)
    message = slack_message("created", request, interactive=False)
    dump = json.dumps(message)
    assert "asks for access to `prod-db` for 1h30m" in dump and "public.orders" in dump
    content = email_message("created", request)
    assert content.subject == "[pathwarden] approval #17: access grant on prod-db by ci-deploy"
    assert "Operation:" not in content.text and "1h30m" in content.text


def test_webhook_document_is_stable() -> None:
    request = make_request(votes=(("alice", "approve", None),))
    document = webhook_document("created", request)
    assert document["version"] == 1 and document["event"] == "created"
    assert set(document["request"]) == {
        "id", "kind", "state", "requester", "groups", "claims", "connection", "operation",
        "operation_truncated", "action", "policy", "rule", "scope", "duration_s", "reason",
        "approvers", "required", "approvals", "votes", "created_at", "expires_at", "url",
    }
    assert document["request"]["created_at"] == "2024-05-01T12:00:00Z"
    assert document["request"]["votes"] == [
        {"approver": "alice", "vote": "approve", "comment": None}]
    assert document["request"]["approvals"] == 1
    assert webhook_body("created", request) == webhook_body("created", request)
    assert json.loads(webhook_body("created", request)) == document


# -- retry policy -------------------------------------------------------------


def test_backoff_is_exponential_jittered_and_capped() -> None:
    policy = RetryPolicy(retries=10, backoff=1.0, cap=60.0)
    for retry, ceiling in [(0, 1), (1, 2), (2, 4), (5, 32), (6, 60), (30, 60)]:
        delays = [policy.delay(retry) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1
    assert policy.delay(0, retry_after=5) >= 5
    assert policy.delay(0, retry_after=600) <= 60


# -- webhook delivery ---------------------------------------------------------


def test_webhook_signed_delivery(receiver: Callable[..., Receiver]) -> None:
    server = receiver(ticketing(WEBHOOK_SECRET))
    config = webhook_config(server.url("/hooks/pw"), headers={"X-Team": "dba"})
    outcomes = Outcomes()

    async def main() -> None:
        dispatcher = Dispatcher([WebhookNotifier(config)], outcomes)
        await dispatcher.notify("created", make_request())
        await dispatcher.drain()

    asyncio.run(main())
    assert outcomes.items == [(17, "tickets", True, None)]
    (got,) = server.requests
    assert got.headers["content-type"] == "application/json"
    assert got.headers["x-pathwarden-event"] == "created"
    assert got.headers["x-team"] == "dba"
    assert got.body == webhook_body("created", make_request())
    assert got.json()["request"]["operation"] == MASKED_OP
    verify_webhook_signature(
        WEBHOOK_SECRET, got.headers["x-pathwarden-timestamp"], got.body,
        got.headers["x-pathwarden-signature"], now=time.time())
    assert WEBHOOK_SECRET.encode() not in got.body


def test_webhook_signature_helpers() -> None:
    body = b'{"a":1}'
    signature = sign_webhook("s3cret", "1700000000", body)
    expected = hmac.new(b"s3cret", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature == f"sha256={expected}"
    verify_webhook_signature("s3cret", "1700000000", body, signature, now=1700000100)
    with pytest.raises(WebhookSignatureError, match="bad signature"):
        verify_webhook_signature("s3cret", "1700000000", body + b" ", signature, 1700000000)
    with pytest.raises(WebhookSignatureError, match="stale"):
        verify_webhook_signature("s3cret", "1700000000", body, signature, 1700000301)
    with pytest.raises(WebhookSignatureError, match="malformed"):
        verify_webhook_signature("s3cret", "17e8", body, signature, 1700000000)


def test_webhook_retries_after_500_then_succeeds(receiver: Callable[..., Receiver]) -> None:
    def behave(request: Received, n: int) -> Reply | None:
        return (500, {}, b"down") if n <= 2 else ticketing(WEBHOOK_SECRET)(request, n)

    server = receiver(behave)
    outcomes = Outcomes()

    async def main() -> None:
        dispatcher = Dispatcher([WebhookNotifier(webhook_config(server.url("/h")))], outcomes)
        await dispatcher.notify("created", make_request())
        await dispatcher.drain()

    asyncio.run(main())
    assert outcomes.items == [(17, "tickets", True, None)]
    assert len(server.requests) == 3
    deliveries = {r.headers["x-pathwarden-delivery"] for r in server.requests}
    assert len(deliveries) == 1  # one delivery id across retries, for dedup


def test_webhook_retries_after_connection_refused(receiver: Callable[..., Receiver]) -> None:
    port = free_port()
    outcomes = Outcomes()
    config = webhook_config(f"http://127.0.0.1:{port}/h", backoff="100ms", retries=8)
    started: list[Receiver] = []

    async def main() -> None:
        dispatcher = Dispatcher([WebhookNotifier(config)], outcomes)
        await dispatcher.notify("created", make_request())
        await asyncio.sleep(0.3)  # a few refused attempts
        assert outcomes.items == []
        started.append(receiver(ticketing(WEBHOOK_SECRET), port=port))
        await dispatcher.drain()

    asyncio.run(main())
    assert outcomes.items == [(17, "tickets", True, None)]
    assert len(started[0].requests) == 1


def test_retry_after_is_honoured(receiver: Callable[..., Receiver]) -> None:
    def behave(request: Received, n: int) -> Reply | None:
        return (429, {"Retry-After": "1"}, b"") if n == 1 else None

    server = receiver(behave)
    outcomes = Outcomes()

    async def main() -> float:
        dispatcher = Dispatcher([WebhookNotifier(webhook_config(server.url("/h")))], outcomes)
        start = time.monotonic()
        await dispatcher.notify("created", make_request())
        await dispatcher.drain()
        return time.monotonic() - start

    assert asyncio.run(main()) >= 1.0
    assert outcomes.items == [(17, "tickets", True, None)]


def test_permanent_failure_recorded_others_succeed_caller_not_blocked(
    receiver: Callable[..., Receiver],
) -> None:
    failing = receiver(lambda _r, _n: (500, {}, b"down"))
    missing = receiver(lambda _r, _n: (404, {}, b"no such hook"))
    good = receiver(ticketing(WEBHOOK_SECRET))
    slow_ok = receiver(lambda _r, _n: time.sleep(0.5))  # answers 200 after 0.5 s
    outcomes = Outcomes()
    notifiers = [
        WebhookNotifier(webhook_config(failing.url("/h"), name="always-500", retries=3)),
        WebhookNotifier(webhook_config(missing.url("/h"), name="gone", retries=3)),
        WebhookNotifier(webhook_config(good.url("/h"), name="good")),
        WebhookNotifier(webhook_config(slow_ok.url("/h"), name="slow")),
    ]

    async def main() -> None:
        dispatcher = Dispatcher(notifiers, outcomes)
        start = time.monotonic()
        await dispatcher.notify("created", make_request())
        assert time.monotonic() - start < 0.05
        assert dispatcher.in_flight == 4
        # The caller's loop keeps running while deliveries go on.
        ticks = 0
        while dispatcher.in_flight:
            await asyncio.sleep(0.01)
            ticks += 1
        assert ticks > 10
        await dispatcher.drain()

    asyncio.run(main())
    result = outcomes.by_channel()
    assert result["good"] == (True, None)
    assert result["slow"] == (True, None)
    assert result["always-500"] == (False, "webhook: HTTP 500")
    assert result["gone"] == (False, "webhook: HTTP 404")
    assert len(failing.requests) == 4  # first attempt + 3 retries
    assert len(missing.requests) == 1  # 4xx is not retried
    for _, _, _, error in outcomes.items:
        assert error is None or str(failing.port) not in error


def test_timeout_is_a_failure(receiver: Callable[..., Receiver]) -> None:
    server = receiver(lambda _r, _n: time.sleep(3))
    outcomes = Outcomes()
    config = webhook_config(server.url("/h"), timeout="300ms", retries=1)

    async def main() -> float:
        dispatcher = Dispatcher([WebhookNotifier(config)], outcomes)
        start = time.monotonic()
        await dispatcher.notify("created", make_request())
        await dispatcher.drain()
        return time.monotonic() - start

    elapsed = asyncio.run(main())
    assert outcomes.items == [(17, "tickets", False, "webhook: no answer within 0.3s")]
    assert elapsed < 2.0
    assert len(server.requests) == 2


def test_events_filter_and_record_errors_are_contained(
    receiver: Callable[..., Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    server = receiver()

    async def broken_record(*_args: Any) -> None:
        raise RuntimeError("store down")

    async def main() -> None:
        dispatcher = Dispatcher(
            [WebhookNotifier(webhook_config(server.url("/h"), events=["decided"]))],
            broken_record)
        await dispatcher.notify("created", make_request())
        assert dispatcher.in_flight == 0
        await dispatcher.notify("decided", make_request(state="approved"))
        await dispatcher.drain()

    with caplog.at_level(logging.ERROR, logger="pathwarden.notify"):
        asyncio.run(main())
    assert [r.headers["x-pathwarden-event"] for r in server.requests] == ["decided"]
    assert any("recording the outcome" in r.getMessage() for r in caplog.records)


def test_unexpected_exceptions_are_reported_by_type_only() -> None:
    class Exploding:
        name = "boom"
        events = frozenset({"created"})
        policy = RetryPolicy(retries=1, backoff=0.01)
        calls = 0

        async def send(self, event: str, request: RequestView) -> None:
            self.calls += 1
            raise ValueError("https://hooks.example/T/B/topsecret")

    outcomes = Outcomes()
    exploding = Exploding()

    async def main() -> None:
        dispatcher = Dispatcher([exploding], outcomes)
        await dispatcher.notify("created", make_request())
        await dispatcher.drain()

    asyncio.run(main())
    assert outcomes.items == [(17, "boom", False, "unexpected ValueError")]
    assert exploding.calls == 2


def test_missing_secret_is_permanent_and_named() -> None:
    config = WebhookNotifierConfig(
        name="t", type="webhook", url="https://x.example/", secret=Secret.from_env(
            "PW_TEST_NO_SUCH_VARIABLE"), backoff=timedelta(milliseconds=10))
    outcomes = Outcomes()

    async def main() -> None:
        dispatcher = Dispatcher([WebhookNotifier(config)], outcomes)
        await dispatcher.notify("created", make_request())
        await dispatcher.drain()

    asyncio.run(main())
    ((_, _, ok, error),) = outcomes.items
    assert not ok and error is not None and "PW_TEST_NO_SUCH_VARIABLE is not set" in error


# -- Slack delivery -----------------------------------------------------------


def test_slack_incoming_webhook(
    receiver: Callable[..., Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    server = receiver()
    config = slack_config(webhook_url=server.url(f"/services/T0/B0/{SLACK_HOOK_TOKEN}"))
    outcomes = Outcomes()

    async def main() -> None:
        dispatcher = Dispatcher([SlackNotifier(config)], outcomes)
        await dispatcher.notify("created", make_request())
        await dispatcher.drain()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(main())
    assert "HTTP Request: POST <notifier URL>" in caplog.text  # httpx's own log line
    assert SLACK_HOOK_TOKEN not in caplog.text
    assert outcomes.items == [(17, "ops-slack", True, None)]
    (got,) = server.requests
    message = got.json()
    assert message["blocks"][0]["text"]["text"] == "Approval #17: waiting for approval"
    assert MASKED_OP in json.dumps(message)
    assert all(b["type"] != "actions" for b in message["blocks"])


def test_slack_webhook_url_never_in_errors(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    config = slack_config(
        webhook_url=f"http://127.0.0.1:{port}/services/T0/B0/{SLACK_HOOK_TOKEN}", retries=1)
    outcomes = Outcomes()

    async def main() -> None:
        dispatcher = Dispatcher([SlackNotifier(config)], outcomes)
        await dispatcher.notify("created", make_request())
        await dispatcher.drain()

    with caplog.at_level(logging.DEBUG):
        asyncio.run(main())
    ((_, _, ok, error),) = outcomes.items
    assert not ok and error is not None and error.startswith("Slack webhook: cannot connect")
    assert SLACK_HOOK_TOKEN not in error
    assert SLACK_HOOK_TOKEN not in caplog.text


def test_slack_bot_posts_then_updates(receiver: Callable[..., Receiver]) -> None:
    server = receiver(slack_api())
    config = slack_config(
        bot_token=BOT_TOKEN, channel="#approvals", signing_secret="sign",
        api_url=server.url("/api"))
    notifier = SlackNotifier(config)
    outcomes = Outcomes()

    async def main() -> None:
        dispatcher = Dispatcher([notifier], outcomes)
        await dispatcher.notify("created", make_request())
        await dispatcher.drain()
        assert notifier.message_ref(17) == ("C0CHANNEL", "1700000000.000101")
        await dispatcher.notify(
            "decided", make_request(state="approved", votes=(("alice", "approve", None),
                                                             ("bob", "approve", "lgtm"))))
        await dispatcher.drain()

    asyncio.run(main())
    assert outcomes.items == [(17, "ops-slack", True, None)] * 2
    post, update = server.requests
    assert post.path == "/api/chat.postMessage" and update.path == "/api/chat.update"
    posted = post.json()
    assert posted["channel"] == "#approvals"
    assert any(b["type"] == "actions" for b in posted["blocks"])
    updated = update.json()
    assert (updated["channel"], updated["ts"]) == ("C0CHANNEL", "1700000000.000101")
    assert updated["blocks"][0]["text"]["text"] == "Approval #17: approved"
    assert all(b["type"] != "actions" for b in updated["blocks"])
    assert "2 of 2 approvals" in json.dumps(updated) and "lgtm" in json.dumps(updated)
    assert notifier.message_ref(17) is None


def test_slack_decided_waits_for_a_retrying_created(receiver: Callable[..., Receiver]) -> None:
    server = receiver(slack_api(fail_posts=2))
    config = slack_config(bot_token=BOT_TOKEN, channel="C1", api_url=server.url("/api"))
    outcomes = Outcomes()

    async def main() -> None:
        dispatcher = Dispatcher([SlackNotifier(config)], outcomes)
        await dispatcher.notify("created", make_request())
        await dispatcher.notify("decided", make_request(state="denied"))
        await dispatcher.drain()

    asyncio.run(main())
    assert server.paths() == ["/api/chat.postMessage"] * 3 + ["/api/chat.update"]
    assert [ok for _, _, ok, _ in outcomes.items] == [True, True]


def test_slack_decided_without_known_message_posts_new(receiver: Callable[..., Receiver]) -> None:
    server = receiver(slack_api())
    config = slack_config(bot_token=BOT_TOKEN, channel="C1", api_url=server.url("/api"))

    async def main() -> None:
        dispatcher = Dispatcher([SlackNotifier(config)], None)
        await dispatcher.notify("decided", make_request(state="expired"))
        await dispatcher.drain()

    asyncio.run(main())
    assert server.paths() == ["/api/chat.postMessage"]


def test_slack_api_errors(receiver: Callable[..., Receiver]) -> None:
    def behave(request: Received, n: int) -> Reply:
        if n == 1:
            return 429, {"Retry-After": "0"}, b""
        if n == 2:
            return 200, {}, b'{"ok":false,"error":"ratelimited"}'
        return 200, {}, b'{"ok":false,"error":"channel_not_found"}'

    server = receiver(behave)
    wrong_token = receiver(slack_api())
    outcomes = Outcomes()
    notifiers = [
        SlackNotifier(slack_config(bot_token=BOT_TOKEN, channel="C1", api_url=server.url("/a"))),
        SlackNotifier(slack_config(name="wrong", bot_token="xoxb-wrong", channel="C1",
                                   api_url=wrong_token.url("/a"))),
    ]

    async def main() -> None:
        dispatcher = Dispatcher(notifiers, outcomes)
        await dispatcher.notify("created", make_request())
        await dispatcher.drain()

    asyncio.run(main())
    result = outcomes.by_channel()
    assert result["ops-slack"] == (False, "Slack chat.postMessage: channel_not_found")
    assert len(server.requests) == 3  # 429 and ratelimited retried, channel_not_found not
    assert result["wrong"] == (False, "Slack chat.postMessage: invalid_auth")
    assert len(wrong_token.requests) == 1


def test_slack_webhook_and_bot_do_not_double_post_on_retry(
    receiver: Callable[..., Receiver],
) -> None:
    hook = receiver()
    api = receiver(slack_api(fail_posts=1))
    config = slack_config(
        webhook_url=hook.url("/services/x"), bot_token=BOT_TOKEN, channel="C1",
        api_url=api.url("/api"))
    outcomes = Outcomes()

    async def main() -> None:
        dispatcher = Dispatcher([SlackNotifier(config)], outcomes)
        await dispatcher.notify("created", make_request())
        await dispatcher.drain()

    asyncio.run(main())
    assert outcomes.items == [(17, "ops-slack", True, None)]
    assert len(hook.requests) == 1 and len(api.requests) == 2


# -- email delivery -----------------------------------------------------------


class Mailbox:
    def __init__(self, refuse: bool = False) -> None:
        self.messages: list[tuple[str, list[str], EmailMessage]] = []
        self.refuse = refuse

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        if self.refuse:
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), message))
        return "250 Message accepted"


def _authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth: Any) -> Any:
    ok = (isinstance(auth, LoginPassword) and auth.login == b"relay-user"
          and auth.password == SMTP_PASSWORD.encode())
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(
        mailbox, hostname="127.0.0.1", port=port, authenticator=_authenticator,
        auth_require_tls=False)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


def email_config(port: int, **changes: Any) -> EmailNotifierConfig:
    data: dict[str, Any] = {
        "name": "ops-mail", "type": "email", "host": "127.0.0.1", "port": port,
        "security": "none", "sender": "pathwarden@example.com",
        "to": ["dba@example.com", "sec@example.com"], "username": "relay-user",
        "password": SMTP_PASSWORD, "backoff": "10ms", "timeout": "5s", **changes,
    }
    return EmailNotifierConfig.model_validate(data)


def test_email_delivered(smtp_server: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp_server
    outcomes = Outcomes()

    async def main() -> None:
        dispatcher = Dispatcher([EmailNotifier(email_config(port))], outcomes)
        await dispatcher.notify("created", make_request())
        await dispatcher.notify("decided", make_request(state="approved"))
        await dispatcher.drain()

    asyncio.run(main())
    assert outcomes.items == [(17, "ops-mail", True, None)] * 2
    (sender, rcpts, created), (_, _, decided) = mailbox.messages
    assert sender == "pathwarden@example.com"
    assert rcpts == ["dba@example.com", "sec@example.com"]
    assert created["Subject"] == "[pathwarden] approval #17: ddl on prod-db by ci-deploy"
    assert decided["Subject"] == "[pathwarden] approval #17 approved: ddl on prod-db by ci-deploy"
    assert decided["In-Reply-To"] == created["References"]
    text = created.get_body(("plain",))
    html_part = created.get_body(("html",))
    assert text is not None and html_part is not None
    assert MASKED_OP in text.get_content()
    assert "UPDATE users SET password = &#x27;****&#x27;" in html_part.get_content()
    assert "acme/shop" in text.get_content()
    raw = created.as_string()
    assert SMTP_PASSWORD not in raw and "relay-user" not in raw


def test_email_refused_recipient_is_permanent(smtp_server: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp_server
    mailbox.refuse = True
    outcomes = Outcomes()

    async def main() -> None:
        dispatcher = Dispatcher([EmailNotifier(email_config(port))], outcomes)
        await dispatcher.notify("created", make_request())
        await dispatcher.drain()

    asyncio.run(main())
    ((_, _, ok, error),) = outcomes.items
    assert not ok and error is not None and error.startswith("SMTP: recipients refused")
    assert mailbox.messages == []


def test_email_bad_password_not_leaked(smtp_server: tuple[Mailbox, int]) -> None:
    _, port = smtp_server
    outcomes = Outcomes()
    config = email_config(port, password="wrong-password-QQQ")

    async def main() -> None:
        dispatcher = Dispatcher([EmailNotifier(config)], outcomes)
        await dispatcher.notify("created", make_request())
        await dispatcher.drain()

    asyncio.run(main())
    ((_, _, ok, error),) = outcomes.items
    assert not ok and error == "SMTP: authentication failed (535)"


def test_email_starttls_never_downgrades(smtp_server: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp_server
    outcomes = Outcomes()
    config = email_config(port, security="starttls", host="localhost")

    async def main() -> None:
        dispatcher = Dispatcher([EmailNotifier(config)], outcomes)
        await dispatcher.notify("created", make_request())
        await dispatcher.drain()

    asyncio.run(main())
    ((_, _, ok, error),) = outcomes.items
    assert not ok and error is not None and "does not offer STARTTLS" in error
    assert mailbox.messages == []


def test_email_connection_refused_retried_then_fails() -> None:
    port = free_port()
    outcomes = Outcomes()

    async def main() -> None:
        dispatcher = Dispatcher([EmailNotifier(email_config(port, retries=2))], outcomes)
        await dispatcher.notify("created", make_request())
        await dispatcher.drain()

    asyncio.run(main())
    ((_, _, ok, error),) = outcomes.items
    assert not ok and error == "SMTP: cannot connect (connection refused)"


def test_mixed_channels_one_dead(
    receiver: Callable[..., Receiver], smtp_server: tuple[Mailbox, int]
) -> None:
    mailbox, port = smtp_server
    hook = receiver(ticketing(WEBHOOK_SECRET))
    slack = receiver()
    outcomes = Outcomes()
    notifiers = [
        EmailNotifier(email_config(port)),
        WebhookNotifier(webhook_config(hook.url("/h"))),
        SlackNotifier(slack_config(webhook_url=slack.url("/services/x"))),
        WebhookNotifier(webhook_config(f"http://127.0.0.1:{free_port()}/", name="dead",
                                       retries=2)),
    ]

    async def main() -> None:
        dispatcher = Dispatcher(notifiers, outcomes)
        await dispatcher.notify("created", make_request())
        await dispatcher.drain()

    asyncio.run(main())
    result = outcomes.by_channel()
    assert result == {
        "ops-mail": (True, None),
        "tickets": (True, None),
        "ops-slack": (True, None),
        "dead": (False, "webhook: cannot connect (connection refused)"),
    }
    assert len(mailbox.messages) == 1 and len(hook.requests) == 1 and len(slack.requests) == 1


def test_delivery_error_carries_flags() -> None:
    error = DeliveryError("x", permanent=True, retry_after=3)
    assert (error.message, error.permanent, error.retry_after) == ("x", True, 3)
