"""Webhooks: a signed JSON document POSTed to a URL (a ticketing system, a chat bridge ...).

Each request carries::

    Content-Type: application/json
    X-Pathwarden-Event: created | decided
    X-Pathwarden-Delivery: <uuid, the same for every retry of one delivery>
    X-Pathwarden-Timestamp: <unix seconds, when this attempt was made>
    X-Pathwarden-Signature: sha256=<hex HMAC-SHA256 of "{timestamp}.{body}">

The receiver recomputes the HMAC over the exact body bytes, compares in
constant time and refuses old timestamps (see :func:`verify_webhook_signature`).
Any 2xx answer is success; 5xx, 408, 425 and 429 are retried, other answers
(and redirects, which are not followed) are permanent failures.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid

from pathwarden.approvals.notify.base import (
    ChannelNotifier,
    DeliveryError,
    RequestView,
    check_status,
    http_post,
    redact,
    reveal,
)
from pathwarden.approvals.notify.messages import webhook_body
from pathwarden.config.notifiers import WebhookNotifierConfig

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookNotifier",
    "WebhookSignatureError",
    "sign_webhook",
    "verify_webhook_signature",
]

SIGNATURE_HEADER = "X-Pathwarden-Signature"
TIMESTAMP_HEADER = "X-Pathwarden-Timestamp"
USER_AGENT = "pathwarden-notifier/1"


class WebhookSignatureError(Exception):
    """A webhook request whose signature or timestamp does not check out."""


def sign_webhook(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex>``: HMAC-SHA256 of ``"{timestamp}.{body}"`` with the shared secret."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_webhook_signature(
    secret: str, timestamp: str, body: bytes, signature: str, now: float, tolerance: int = 300
) -> None:
    """What a receiver does; raises :class:`WebhookSignatureError` on a stale or bad request."""
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        raise WebhookSignatureError("malformed timestamp")
    if abs(now - int(timestamp)) > tolerance:
        raise WebhookSignatureError("stale timestamp")
    if not signature.isascii():
        raise WebhookSignatureError("malformed signature")
    expected = sign_webhook(secret, timestamp, body)
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("ascii")):
        raise WebhookSignatureError("bad signature")


class WebhookNotifier(ChannelNotifier[WebhookNotifierConfig]):
    """POSTs :func:`~pathwarden.approvals.notify.messages.webhook_body`, signed."""

    def __init__(self, config: WebhookNotifierConfig) -> None:
        super().__init__(config)
        # (request id, event) -> delivery id, stable across retries.
        self._deliveries: dict[tuple[int, str], str] = {}

    async def send(self, event: str, request: RequestView) -> None:
        secret = reveal(self.config.secret, "webhook")
        key = (request.id, event)
        delivery = self._deliveries.setdefault(key, str(uuid.uuid4()))
        body = webhook_body(event, request)
        timestamp = str(int(time.time()))
        headers = {
            **self.config.headers,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Pathwarden-Event": event,
            "X-Pathwarden-Delivery": delivery,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign_webhook(secret, timestamp, body),
        }
        try:
            response = await http_post(
                self.config.url, content=body, headers=headers, timeout=self._timeout,
                what="webhook")
            check_status(response, "webhook")
        except DeliveryError as exc:
            exc.message = redact(exc.message, [secret, self.config.url])
            if exc.permanent:
                self._deliveries.pop(key, None)
            raise
        self._deliveries.pop(key, None)
