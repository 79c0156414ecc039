"""Slack interactive callbacks: request signatures (Slack's v0 scheme) and button payloads."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any
from urllib.parse import urlencode

import pytest

from pathwarden.approvals.notify import (
    SlackAuthError,
    SlackPayloadError,
    parse_slack_action,
    slack_decider,
    verify_slack_request,
)
from pathwarden.approvals.notify.messages import APPROVE_ACTION, DENY_ACTION
from pathwarden.approvals.notify.slack import slack_signature
from pathwarden.config.notifiers import SlackNotifierConfig

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
NOW = 1_700_000_000.0


def sign(body: bytes, timestamp: str, secret: str = SECRET) -> str:
    # Written out from Slack's documentation rather than calling the code under test.
    base = b"v0:" + timestamp.encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def payload(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "type": "block_actions",
        "user": {"id": "U0123ABCD", "username": "alice", "team_id": "T0001"},
        "team": {"id": "T0001"},
        "channel": {"id": "C0CHANNEL", "name": "approvals"},
        "container": {"type": "message", "message_ts": "1700000000.000101",
                      "channel_id": "C0CHANNEL"},
        "message": {"ts": "1700000000.000101", "text": "Approval #17"},
        "response_url": "https://hooks.slack.com/actions/T0001/123/abc",
        "actions": [{
            "type": "button", "action_id": APPROVE_ACTION, "block_id": "pathwarden_request_17",
            "value": "17", "action_ts": "1700000001.000200",
        }],
    }
    data.update(changes)
    return data


def form(data: Any) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    return urlencode({"payload": text}).encode()


# -- signatures ---------------------------------------------------------------


def test_valid_signature() -> None:
    body = form(payload())
    timestamp = str(int(NOW))
    verify_slack_request(SECRET, timestamp, body, sign(body, timestamp), now=NOW)
    assert slack_signature(SECRET, timestamp, body) == sign(body, timestamp)


def test_slack_documented_example() -> None:
    # The worked example in Slack's "Verifying requests from Slack" guide.
    body = (
        b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&"
        b"channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&"
        b"command=%2Fwebhook-collect&text=&"
        b"response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F"
        b"96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447f"
        b"ce8b6703c"
    )
    verify_slack_request(
        SECRET, "1531420618", body,
        "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503",
        now=1531420618 + 10)


def test_tolerance_edges() -> None:
    body = form(payload())
    timestamp = str(int(NOW))
    signature = sign(body, timestamp)
    verify_slack_request(SECRET, timestamp, body, signature, now=NOW + 300)
    verify_slack_request(SECRET, timestamp, body, signature, now=NOW - 300)
    with pytest.raises(SlackAuthError, match="stale"):
        verify_slack_request(SECRET, timestamp, body, signature, now=NOW + 301)
    with pytest.raises(SlackAuthError, match="stale"):
        verify_slack_request(SECRET, timestamp, body, signature, now=NOW - 301)
    verify_slack_request(SECRET, timestamp, body, signature, now=NOW + 30, tolerance=60)


@pytest.mark.parametrize(
    "tamper",
    [
        "other-secret",
        "body",
        "timestamp-in-signature",
        "truncated",
        "uppercase",
        "v1",
        "empty",
        "non-ascii",
    ],
)
def test_bad_signature(tamper: str) -> None:
    body = form(payload())
    timestamp = str(int(NOW))
    signature = sign(body, timestamp)
    if tamper == "other-secret":
        signature = sign(body, timestamp, secret="not-the-secret")
    elif tamper == "body":
        body = form(payload(actions=[{"action_id": DENY_ACTION, "value": "17"}]))
    elif tamper == "timestamp-in-signature":
        signature = sign(body, str(int(NOW) - 1))
    elif tamper == "truncated":
        signature = signature[:-1]
    elif tamper == "uppercase":
        signature = "v0=" + signature[3:].upper()
    elif tamper == "v1":
        signature = "v1=" + signature[3:]
    elif tamper == "empty":
        signature = ""
    elif tamper == "non-ascii":
        signature = signature[:-1] + "é"
    with pytest.raises(SlackAuthError, match="X-Slack-Signature"):
        verify_slack_request(SECRET, timestamp, body, signature, now=NOW)


FULLWIDTH_DIGITS = "\uff11\uff17\uff10\uff10"


@pytest.mark.parametrize(
    "timestamp", ["", "abc", "-1700000000", "1.7e9", FULLWIDTH_DIGITS, "9" * 40])
def test_malformed_timestamp(timestamp: str) -> None:
    body = form(payload())
    with pytest.raises(SlackAuthError, match="X-Slack-Request-Timestamp"):
        verify_slack_request(SECRET, timestamp, body, "v0=00", now=NOW)


def test_no_signing_secret() -> None:
    with pytest.raises(SlackAuthError, match="no signing secret"):
        verify_slack_request("", str(int(NOW)), b"", "v0=00", now=NOW)


def test_errors_do_not_echo_secret_or_signature() -> None:
    body = form(payload())
    timestamp = str(int(NOW))
    bad = sign(body, timestamp, secret="x")
    with pytest.raises(SlackAuthError) as info:
        verify_slack_request(SECRET, timestamp, body, bad, now=NOW)
    assert SECRET not in str(info.value) and bad not in str(info.value)
    assert sign(body, timestamp) not in str(info.value)


# -- payloads -----------------------------------------------------------------


def test_parse_approve() -> None:
    action = parse_slack_action(form(payload()))
    assert action.request_id == 17 and action.approve is True
    assert action.slack_user_id == "U0123ABCD"
    assert action.response_url == "https://hooks.slack.com/actions/T0001/123/abc"
    assert (action.channel_id, action.message_ts) == ("C0CHANNEL", "1700000000.000101")


def test_parse_deny_and_ignores_other_actions() -> None:
    data = payload(actions=[
        {"action_id": "someone_elses_button", "value": "99"},
        {"action_id": DENY_ACTION, "value": "42"},
    ], container=None, channel=None)
    action = parse_slack_action(form(data))
    assert (action.request_id, action.approve) == (42, False)
    assert action.message_ts == "1700000000.000101"  # from message.ts
    assert action.channel_id is None


def test_parse_without_response_url() -> None:
    data = payload()
    del data["response_url"]
    assert parse_slack_action(form(data)).response_url is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "no single payload"),
        (b"payload", "URL-encoded"),
        ("payload=caf\u00e9".encode(), "URL-encoded"),
        (b"\xff\xfe", "URL-encoded"),
        (b"token=abc", "no single payload"),
        (form(payload()) + b"&" + form(payload()), "no single payload"),
        (form("{not json"), "not JSON"),
        (form("[1, 2]"), "not a JSON object"),
        (form(payload(type="view_submission")), "block_actions"),
        (form(payload(actions="approve")), "no actions"),
        (form(payload(actions=[])), "no pathwarden"),
        (form(payload(actions=[{"action_id": "other", "value": "17"}])), "no pathwarden"),
        (form(payload(actions=[{"action_id": APPROVE_ACTION}])), "request id"),
        (form(payload(actions=[{"action_id": APPROVE_ACTION, "value": "abc"}])), "request id"),
        (form(payload(actions=[{"action_id": APPROVE_ACTION, "value": "-3"}])), "request id"),
        (form(payload(actions=[{"action_id": APPROVE_ACTION, "value": "0"}])), "request id"),
        (form(payload(actions=[{"action_id": APPROVE_ACTION, "value": 17}])), "request id"),
        (form(payload(actions=[{"action_id": APPROVE_ACTION, "value": "1" * 40}])),
         "request id"),
        (form(payload(user=None)), "Slack user id"),
        (form(payload(user={"id": 5})), "Slack user id"),
        (form(payload(user={"id": "alice"})), "Slack user id"),
        (form(payload(response_url="http://hooks.slack.com/x")), "https"),
        (form(payload(response_url="javascript:alert(1)")), "https"),
    ],
)
def test_malformed_payload(body: bytes, message: str) -> None:
    with pytest.raises(SlackPayloadError, match=message):
        parse_slack_action(body)


def test_decider_mapping() -> None:
    config = SlackNotifierConfig.model_validate({
        "name": "s", "type": "slack", "bot_token": "xoxb", "channel": "C1",
        "signing_secret": SECRET, "users": {"U0123ABCD": "alice"}})
    assert slack_decider(config, "U0123ABCD") == "alice"
    with pytest.raises(SlackAuthError, match="not mapped"):
        slack_decider(config, "U9999ZZZZ")


def test_end_to_end_verify_then_parse() -> None:
    """What the /v1/slack/actions route does: verify the raw body, then parse it."""
    body = form(payload(actions=[{"action_id": DENY_ACTION, "value": "17"}]))
    timestamp = str(int(NOW))
    verify_slack_request(SECRET, timestamp, body, sign(body, timestamp), now=NOW + 1)
    action = parse_slack_action(body)
    assert (action.request_id, action.approve, action.slack_user_id) == (17, False, "U0123ABCD")
