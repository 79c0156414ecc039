"""Slack: messages through an incoming webhook or a bot, and interactive callbacks.

Sending: with ``webhook_url`` a message is POSTed to the incoming webhook; with
``bot_token`` and ``channel`` it is posted with ``chat.postMessage`` and, when
the request is decided, the same message is replaced with ``chat.update`` (its
``ts`` is kept in memory, so after a restart a new message is posted instead).

Receiving: when someone presses Approve or Deny, Slack POSTs a signed form to
the gateway's ``/v1/slack/actions`` route. :func:`verify_slack_request` checks
the signature (Slack's ``v0`` scheme) and :func:`parse_slack_action` reads the
button; :func:`slack_decider` maps the Slack user to the pathwarden identity
allowed to decide. All three are pure: the HTTP route lives elsewhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pathwarden.approvals.notify.base import (
    ChannelNotifier,
    DeliveryError,
    RequestView,
    check_status,
    http_post,
    redact,
    reveal,
)
from pathwarden.approvals.notify.messages import APPROVE_ACTION, DENY_ACTION, slack_message
from pathwarden.config.errors import ConfigError
from pathwarden.config.notifiers import SlackNotifierConfig

__all__ = [
    "SlackAction",
    "SlackAuthError",
    "SlackNotifier",
    "SlackPayloadError",
    "parse_slack_action",
    "slack_decider",
    "slack_signature",
    "verify_slack_request",
]

#: Messages whose ts is remembered (for chat.update); older ones are forgotten.
MESSAGE_MEMORY = 1000
# Slack API errors worth retrying; every other error code is permanent.
_TRANSIENT_API_ERRORS = frozenset({
    "ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout",
})
_SLACK_USER = re.compile(r"[UW][A-Z0-9]{2,31}")
_ERROR_CODE = re.compile(r"[a-z0-9_]{1,64}")


class SlackAuthError(Exception):
    """A callback that is not from Slack (stale, unsigned, badly signed) or from an
    unknown Slack user. The message is safe to log and to return."""


class SlackPayloadError(ValueError):
    """A signed callback whose body is not a pathwarden Approve/Deny action."""


@dataclass(frozen=True, slots=True)
class SlackAction:
    """A press of Approve or Deny."""

    request_id: int
    approve: bool
    slack_user_id: str
    response_url: str | None
    channel_id: str | None = None
    message_ts: str | None = None


def slack_signature(signing_secret: str, timestamp: str, body: bytes) -> str:
    """``v0=<hex>``: HMAC-SHA256 of ``v0:{timestamp}:{body}`` with the signing secret."""
    base = b"v0:" + timestamp.encode("ascii") + b":" + body
    return "v0=" + hmac.new(signing_secret.encode("utf-8"), base, hashlib.sha256).hexdigest()


def verify_slack_request(
    signing_secret: str,
    timestamp: str,
    body: bytes,
    signature: str,
    now: float,
    tolerance: int = 300,
) -> None:
    """Check ``X-Slack-Request-Timestamp`` and ``X-Slack-Signature`` against the raw body.

    Raises :class:`SlackAuthError` when the timestamp is missing, not a number or
    more than ``tolerance`` seconds away from ``now`` (a replay), or when the
    signature does not match.
    """
    if not signing_secret:
        raise SlackAuthError("no signing secret configured")
    if not timestamp or not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        raise SlackAuthError("missing or malformed X-Slack-Request-Timestamp")
    if abs(now - int(timestamp)) > tolerance:
        raise SlackAuthError("stale X-Slack-Request-Timestamp (replayed or clock skew)")
    if not signature or not signature.isascii() or not signature.startswith("v0="):
        raise SlackAuthError("missing or malformed X-Slack-Signature")
    expected = slack_signature(signing_secret, timestamp, body)
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii")):
        raise SlackAuthError("bad X-Slack-Signature")


def _str(data: dict[str, Any], key: str) -> str | None:
    value = data.get(key)
    return value if isinstance(value, str) and value else None


def parse_slack_action(body: bytes) -> SlackAction:
    """Read the ``payload=`` form body Slack sends for a ``block_actions`` interaction.

    Raises :class:`SlackPayloadError` for anything but a press of a pathwarden
    Approve/Deny button with a request id, a Slack user id and (if present) an
    https ``response_url``.
    """
    try:
        text = body.decode("ascii")
        form = parse_qs(text, strict_parsing=True, max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        raise SlackPayloadError("body is not a URL-encoded form") from None
    payloads = form.get("payload")
    if not payloads or len(payloads) != 1:
        raise SlackPayloadError("body has no single payload field")
    try:
        data = json.loads(payloads[0])
    except ValueError:
        raise SlackPayloadError("payload is not JSON") from None
    if not isinstance(data, dict):
        raise SlackPayloadError("payload is not a JSON object")
    if data.get("type") != "block_actions":
        raise SlackPayloadError("payload is not a block_actions interaction")
    actions = data.get("actions")
    if not isinstance(actions, list):
        raise SlackPayloadError("payload has no actions")
    action = next(
        (a for a in actions
         if isinstance(a, dict) and a.get("action_id") in (APPROVE_ACTION, DENY_ACTION)),
        None,
    )
    if action is None:
        raise SlackPayloadError("payload has no pathwarden Approve/Deny action")
    value = action.get("value")
    if not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) > 18:
        raise SlackPayloadError("the button carries no request id")
    request_id = int(value)
    if request_id <= 0:
        raise SlackPayloadError("the button carries no request id")
    user = data.get("user")
    user_id = _str(user, "id") if isinstance(user, dict) else None
    if user_id is None or not _SLACK_USER.fullmatch(user_id):
        raise SlackPayloadError("payload has no Slack user id")
    response_url = _str(data, "response_url")
    if response_url is not None:
        try:
            parts = urlsplit(response_url)
        except ValueError:
            raise SlackPayloadError("response_url is not a URL") from None
        if parts.scheme != "https" or not parts.hostname:
            raise SlackPayloadError("response_url is not an https URL")
    channel = data.get("channel")
    container = data.get("container")
    message = data.get("message")
    message_ts = (
        _str(container, "message_ts") if isinstance(container, dict) else None
    ) or (_str(message, "ts") if isinstance(message, dict) else None)
    return SlackAction(
        request_id=request_id,
        approve=action["action_id"] == APPROVE_ACTION,
        slack_user_id=user_id,
        response_url=response_url,
        channel_id=_str(channel, "id") if isinstance(channel, dict) else None,
        message_ts=message_ts,
    )


def slack_decider(config: SlackNotifierConfig, slack_user_id: str) -> str:
    """The pathwarden identity ``slack_user_id`` decides as; :class:`SlackAuthError` if none.

    Whether that identity may decide this request is for the approvals service.
    """
    identity = config.users.get(slack_user_id)
    if identity is None:
        raise SlackAuthError(f"Slack user {slack_user_id} is not mapped to a pathwarden identity")
    return identity


class SlackNotifier(ChannelNotifier[SlackNotifierConfig]):
    """Posts to an incoming webhook and/or with a bot (``chat.postMessage``/``chat.update``)."""

    def __init__(self, config: SlackNotifierConfig) -> None:
        super().__init__(config)
        # request id -> (channel id, message ts) of the bot's message.
        self._messages: OrderedDict[int, tuple[str, str]] = OrderedDict()
        # (request id, event) -> targets ("webhook", "bot") already delivered, so a
        # retry after one of two targets failed does not post twice.
        self._done: OrderedDict[tuple[int, str], set[str]] = OrderedDict()

    def message_ref(self, request_id: int) -> tuple[str, str] | None:
        """``(channel, ts)`` of the bot's message about a request, if known."""
        return self._messages.get(request_id)

    def remember_message(self, request_id: int, channel: str, ts: str) -> None:
        """Note where the message about a request is (e.g. from an interactive callback)."""
        self._messages[request_id] = (channel, ts)
        self._messages.move_to_end(request_id)
        while len(self._messages) > MESSAGE_MEMORY:
            self._messages.popitem(last=False)

    def _secrets(self) -> list[str | None]:
        values: list[str | None] = []
        for secret in (self.config.webhook_url, self.config.bot_token):
            if secret is not None:
                with contextlib.suppress(ConfigError):
                    values.append(secret.reveal())
        return values

    async def send(self, event: str, request: RequestView) -> None:
        key = (request.id, event)
        done = self._done.setdefault(key, set())
        self._done.move_to_end(key)
        while len(self._done) > MESSAGE_MEMORY:
            self._done.popitem(last=False)
        try:
            if self.config.webhook_url is not None and "webhook" not in done:
                await self._send_webhook(event, request)
                done.add("webhook")
            if self.config.bot_token is not None and "bot" not in done:
                await self._send_bot(event, request)
                done.add("bot")
        except DeliveryError as exc:
            # Belt and braces: no message may carry a token or the webhook URL.
            exc.message = redact(exc.message, self._secrets())
            raise
        self._done.pop(key, None)

    async def _send_webhook(self, event: str, request: RequestView) -> None:
        url = reveal(self.config.webhook_url, "Slack webhook")
        body = json.dumps(slack_message(event, request, interactive=False)).encode()
        response = await http_post(
            url, content=body, headers={"Content-Type": "application/json"},
            timeout=self._timeout, what="Slack webhook")
        check_status(response, "Slack webhook")

    async def _api(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        token = reveal(self.config.bot_token, "Slack bot")
        what = f"Slack {method}"
        response = await http_post(
            f"{self.config.api_url}/{method}",
            content=json.dumps(payload).encode(),
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "Authorization": f"Bearer {token}",
            },
            timeout=self._timeout, what=what)
        check_status(response, what)
        try:
            data = response.json()
        except ValueError:
            raise DeliveryError(f"{what}: the answer is not JSON") from None
        if not isinstance(data, dict):
            raise DeliveryError(f"{what}: the answer is not a JSON object")
        if data.get("ok") is not True:
            code = data.get("error")
            code = code if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else "unknown"
            raise DeliveryError(
                f"{what}: {code}", permanent=code not in _TRANSIENT_API_ERRORS)
        return data

    async def _send_bot(self, event: str, request: RequestView) -> None:
        assert self.config.channel is not None
        message = slack_message(event, request, interactive=self.config.interactive)
        known = self._messages.get(request.id)
        if known is not None and event == "decided":
            channel, ts = known
            try:
                await self._api("chat.update", {"channel": channel, "ts": ts, **message})
            except DeliveryError as exc:
                if not exc.permanent:
                    raise
                # The message is gone or cannot be edited: post a new one.
            else:
                self._messages.pop(request.id, None)
                return
        data = await self._api("chat.postMessage", {
            "channel": self.config.channel, "unfurl_links": False, "unfurl_media": False,
            **message,
        })
        posted_channel, posted_ts = data.get("channel"), data.get("ts")
        if event == "created" and isinstance(posted_channel, str) and isinstance(posted_ts, str):
            self.remember_message(request.id, posted_channel, posted_ts)
        elif event == "decided":
            self._messages.pop(request.id, None)
