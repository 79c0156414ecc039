"""What notifiers see of a request, the notifier protocol and the dispatcher.

The approvals service builds a :class:`RequestView` (with the operation already
masked) and calls :meth:`Dispatcher.notify`; that schedules one delivery per
notifier and returns at once. Each delivery is retried on its own with
exponential backoff and jitter, and its final outcome is reported through the
``record`` callback. Nothing here raises into the caller or waits for a
channel, so a slow SMTP relay or a Slack outage never holds a pipeline.

Deliveries of one request to one notifier run in order: ``decided`` waits for a
still-retrying ``created``, so Slack can update the message it posted.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, Protocol, TypeVar

import httpx

from pathwarden.config.errors import ConfigError
from pathwarden.config.notifiers import BACKOFF_CAP
from pathwarden.config.secrets import Secret

__all__ = [
    "EVENTS",
    "ChannelNotifier",
    "DeliveryError",
    "Dispatcher",
    "Notifier",
    "Record",
    "RequestView",
    "RetryPolicy",
    "check_status",
    "http_post",
    "redact",
    "reveal",
]

logger = logging.getLogger("pathwarden.notify")

#: The events a notifier can be sent.
EVENTS = ("created", "decided")

#: ``record(request_id, channel_name, ok, error)``: the final outcome of one delivery.
Record = Callable[[int, str, bool, str | None], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RequestView:
    """What a notifier may show of an approval request; built by the approvals service.

    ``operation`` is the exact statement, already masked by the caller. ``votes``
    are ``(approver, "approve" | "deny", comment)``. ``url`` links to the
    request's page.
    """

    id: int
    kind: str  # "operation" | "grant"
    state: str  # "pending", "approved", "denied", "expired" ...
    requester: str
    groups: tuple[str, ...]
    claims: Mapping[str, str]  # repository, run_id, sha, ref, actor ...
    connection: str
    operation: str | None
    action: str | None
    policy: str | None
    rule: str | None
    scope: tuple[str, ...]
    duration_s: int | None
    reason: str | None
    approvers: tuple[str, ...]
    required: int
    votes: tuple[tuple[str, str, str | None], ...]
    created_at: datetime
    expires_at: datetime
    url: str | None

    @property
    def approvals(self) -> int:
        """How many approvers approved so far."""
        return sum(1 for _, vote, _ in self.votes if vote == "approve")

    @property
    def pending(self) -> bool:
        return self.state == "pending"


class DeliveryError(Exception):
    """A failed attempt, with a message safe to log (no URLs, tokens or passwords).

    ``permanent``: retrying cannot help (bad credentials, unknown channel,
    a 4xx answer). ``retry_after``: the receiver asked to wait that many seconds.
    """

    def __init__(
        self, message: str, *, permanent: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``retries`` attempts after the first, waiting ``backoff * 2**n`` (jittered, capped)."""

    retries: int = 5
    backoff: float = 1.0
    cap: float = 60.0

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first retry)."""
        ceiling = min(self.cap, self.backoff * (2 ** min(retry, 32)))
        # "Equal jitter": at least half the exponential delay, so a burst of
        # failures spreads out but never retries immediately.
        wait = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            wait = max(wait, min(self.cap, retry_after))
        return wait


class Notifier(Protocol):
    """One channel: a Slack app, an SMTP relay, a webhook ..."""

    @property
    def name(self) -> str:
        """The configured name, used in logs and in ``record``."""

    @property
    def events(self) -> frozenset[str]:
        """The events this channel wants (``created``, ``decided``)."""

    @property
    def policy(self) -> RetryPolicy: ...

    async def send(self, event: str, request: RequestView) -> None:
        """Deliver once; raise :class:`DeliveryError` (or anything) on failure."""


class ChannelSettings(Protocol):
    """What every notifier's configuration has (``pathwarden.config.notifiers``)."""

    @property
    def name(self) -> str: ...

    @property
    def events(self) -> Sequence[str]: ...

    @property
    def retries(self) -> int: ...

    @property
    def backoff(self) -> timedelta: ...

    @property
    def timeout(self) -> timedelta: ...


C = TypeVar("C", bound=ChannelSettings)


class ChannelNotifier(Generic[C]):
    """The part every channel shares: its configuration, retry policy and timeout.

    Subclasses implement :meth:`Notifier.send`.
    """

    def __init__(self, config: C) -> None:
        self.config = config
        self._policy = RetryPolicy(
            retries=config.retries,
            backoff=config.backoff.total_seconds(),
            cap=BACKOFF_CAP.total_seconds(),
        )
        self._timeout = config.timeout.total_seconds()

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def events(self) -> frozenset[str]:
        return frozenset(self.config.events)

    @property
    def policy(self) -> RetryPolicy:
        return self._policy


def reveal(secret: Secret | None, what: str) -> str:
    """The secret's value; a :class:`DeliveryError` naming ``what`` (permanent) if unreadable.

    ``ConfigError`` names the field and the variable or file, never a value.
    """
    if secret is None:
        raise DeliveryError(f"{what}: not configured", permanent=True)
    try:
        return secret.reveal()
    except ConfigError as exc:
        raise DeliveryError(f"{what}: {exc}", permanent=True) from None


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """Replace every occurrence of each secret (longest first) with ``***``."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


class Dispatcher:
    """Sends each event to every notifier that wants it, in the background."""

    def __init__(self, notifiers: Sequence[Notifier], record: Record | None = None) -> None:
        names = [n.name for n in notifiers]
        if len(set(names)) != len(names):
            raise ValueError("notifier names must be unique")
        self._notifiers = tuple(notifiers)
        self._record = record
        self._tasks: set[asyncio.Task[None]] = set()
        # (notifier name, request id) -> the last delivery scheduled for it.
        self._tails: dict[tuple[str, int], asyncio.Task[None]] = {}

    @property
    def notifiers(self) -> tuple[Notifier, ...]:
        return self._notifiers

    @property
    def in_flight(self) -> int:
        """Deliveries not yet finished (including those waiting to retry)."""
        return len(self._tasks)

    async def notify(self, event: str, request: RequestView) -> None:
        """Schedule ``event`` for every notifier that wants it and return at once."""
        if event not in EVENTS:
            logger.error("unknown notification event %r for request %d", event, request.id)
            return
        for notifier in self._notifiers:
            if event not in notifier.events:
                continue
            key = (notifier.name, request.id)
            previous = self._tails.get(key)
            task = asyncio.get_running_loop().create_task(
                self._deliver(notifier, event, request, previous),
                name=f"notify {notifier.name} #{request.id} {event}",
            )
            self._tasks.add(task)
            self._tails[key] = task
            task.add_done_callback(functools.partial(self._finished, key=key))

    def _finished(self, task: asyncio.Task[None], *, key: tuple[str, int]) -> None:
        self._tasks.discard(task)
        if self._tails.get(key) is task:
            del self._tails[key]
        if not task.cancelled() and task.exception() is not None:  # pragma: no cover
            logger.error("notification task failed", exc_info=task.exception())

    async def drain(self) -> None:
        """Wait until every scheduled delivery has finished (for shutdown and tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _deliver(
        self,
        notifier: Notifier,
        event: str,
        request: RequestView,
        previous: asyncio.Task[None] | None,
    ) -> None:
        if previous is not None:
            await asyncio.wait({previous})
        policy = notifier.policy
        error: str | None = None
        ok = False
        for attempt in range(policy.retries + 1):
            retry_after: float | None = None
            try:
                await notifier.send(event, request)
            except DeliveryError as exc:
                error = exc.message
                retry_after = exc.retry_after
                if exc.permanent:
                    break
            except Exception as exc:
                # Whatever else a channel raised: its text may hold anything, so
                # only its type is reported.
                error = f"unexpected {type(exc).__name__}"
            else:
                ok, error = True, None
                break
            if attempt < policy.retries:
                wait = policy.delay(attempt, retry_after)
                logger.info(
                    "notification %s of request %d via %s failed (%s); retry %d/%d in %.1fs",
                    event, request.id, notifier.name, error, attempt + 1, policy.retries, wait)
                await asyncio.sleep(wait)
        if not ok:
            logger.warning(
                "notification %s of request %d via %s failed: %s",
                event, request.id, notifier.name, error)
        if self._record is not None:
            try:
                await self._record(request.id, notifier.name, ok, error)
            except Exception:
                logger.exception(
                    "recording the outcome of notification %s of request %d via %s failed",
                    event, request.id, notifier.name)


# -- HTTP, shared by the Slack and webhook channels ---------------------------


class _RedactUrls(logging.Filter):
    """httpx logs every request's URL at INFO; a Slack webhook URL is a credential."""

    urls: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.urls and isinstance(record.args, tuple):
            record.args = tuple(
                "<notifier URL>" if str(arg) in self.urls else arg for arg in record.args)
        return True


_redact_urls = _RedactUrls()
logging.getLogger("httpx").addFilter(_redact_urls)


def _os_reason(exc: BaseException) -> str | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno:
            # strerror can hold the address ("Connect call failed ('10.0.0.1', 443)").
            return os.strerror(current.errno).lower()
        current = current.__cause__ or current.__context__
    return None


async def http_post(
    url: str, *, content: bytes, headers: Mapping[str, str], timeout: float, what: str
) -> httpx.Response:
    """POST ``content``; failures become :class:`DeliveryError` naming ``what``, never the URL.

    ``timeout`` bounds the whole attempt. Redirects are not followed (a signed
    request must not be replayed elsewhere).
    """
    _redact_urls.urls.add(str(httpx.URL(url)))
    try:
        async with asyncio.timeout(timeout):
            async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
                return await client.post(url, content=content, headers=dict(headers))
    except (TimeoutError, httpx.TimeoutException):
        raise DeliveryError(f"{what}: no answer within {timeout:g}s") from None
    except httpx.ConnectError as exc:
        reason = _os_reason(exc) or "connection failed"
        raise DeliveryError(f"{what}: cannot connect ({reason})") from None
    except httpx.InvalidURL:
        raise DeliveryError(f"{what}: invalid URL", permanent=True) from None
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{what}: {type(exc).__name__}") from None


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 3600 else None


def check_status(response: httpx.Response, what: str) -> None:
    """Raise :class:`DeliveryError` unless the answer is 2xx; 5xx, 408, 425, 429 are transient."""
    status = response.status_code
    if 200 <= status < 300:
        return
    transient = status >= 500 or status in (408, 425, 429)
    detail = f"{what}: HTTP {status}"
    if 300 <= status < 400:
        detail += " (redirects are not followed)"
    raise DeliveryError(
        detail, permanent=not transient,
        retry_after=_retry_after(response.headers.get("retry-after")))
