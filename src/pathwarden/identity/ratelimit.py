"""A limiter for failed authentications, per source address and per identity or issuer.

Theory of operation: each key (a source address, or a subject such as an
identity name or an OIDC trust issuer) keeps the times of its most recent
failures, at most ``limit`` of them: a sliding-window log. When ``limit``
failures fall within ``window`` seconds, the key is blocked until the oldest
of them is ``window`` old, and :meth:`FailureLimiter.check` refuses every
attempt until then, even one with a correct credential, so that guessing
cannot continue on the side of a valid login. Refused attempts are not
failures: callers call :meth:`~FailureLimiter.failed` only for attempts
:meth:`~FailureLimiter.check` let through, so a blocked client's retries do
not extend its block.

A success forgets the failures of its source and its subject, so a shared CI
runner that mistyped a few times is not held to them afterwards.

Memory is bounded: keys whose failures have all aged out are dropped as time
passes, and each table holds at most ``max_entries`` keys, evicting the one
that failed least recently. An attacker spraying distinct subjects is held by
the per-source limit first. The per-subject limit trades availability for
safety: anyone can make an identity wait a window by failing as it ``limit``
times, which bounds guessing against it from many addresses.

Pure: no I/O, no asyncio; ``clock`` (monotonic seconds) is injectable.
"""

from __future__ import annotations

import ipaddress
import math
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["FailureLimiter", "retry_message", "source_key"]


class _Window:
    """Recent failure times per key, oldest key (by last failure) first."""

    def __init__(self, limit: int, window: float, max_entries: int) -> None:
        if limit < 1 or window <= 0 or max_entries < 1:
            raise ValueError("limit, window and max_entries must be positive")
        self.limit = limit
        self.window = window
        self.max_entries = max_entries
        self._failures: OrderedDict[str, array[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def prune(self, now: float) -> None:
        # Ordered by last failure, so the stale keys are all at the front.
        horizon = now - self.window
        while self._failures:
            key, times = next(iter(self._failures.items()))
            if times[-1] > horizon:
                break
            del self._failures[key]

    def wait(self, key: str, now: float) -> float | None:
        times = self._failures.get(key)
        if times is None or len(times) < self.limit:
            return None
        # len(times) == limit: blocked while the oldest kept failure is in the window.
        remaining = times[0] + self.window - now
        return remaining if remaining > 0 else None

    def record(self, key: str, now: float) -> None:
        times = self._failures.pop(key, None)
        if times is None:
            times = array("d")
        times.append(now)
        if len(times) > self.limit:
            del times[: len(times) - self.limit]
        self._failures[key] = times
        while len(self._failures) > self.max_entries:
            self._failures.popitem(last=False)

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)


class FailureLimiter:
    """Refuses authentication attempts from sources or for subjects that failed too often.

    Defaults: 10 failures per minute per source, 20 per subject, 100,000 keys
    per table. ``subject`` may be None when the attempt names no identity yet.
    """

    def __init__(
        self,
        *,
        per_source: int = 10,
        per_subject: int = 20,
        window: float = 60.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sources = _Window(per_source, window, max_entries)
        self._subjects = _Window(per_subject, window, max_entries)
        self._clock = clock

    def check(self, source: str, subject: str | None = None) -> float | None:
        """Seconds to wait before the next attempt, or None when the attempt may proceed."""
        now = self._prune()
        waits = [self._sources.wait(source, now)]
        if subject is not None:
            waits.append(self._subjects.wait(subject, now))
        blocked = [wait for wait in waits if wait is not None]
        return max(blocked) if blocked else None

    def failed(self, source: str, subject: str | None = None) -> None:
        """Record a failed attempt that :meth:`check` had allowed."""
        now = self._prune()
        self._sources.record(source, now)
        if subject is not None:
            self._subjects.record(subject, now)

    def succeeded(self, source: str, subject: str | None = None) -> None:
        """Forget the failures of ``source`` and ``subject`` after a successful attempt."""
        self._sources.forget(source)
        if subject is not None:
            self._subjects.forget(subject)

    def tracked(self) -> tuple[int, int]:
        """How many sources and subjects currently have failures on record."""
        self._prune()
        return len(self._sources), len(self._subjects)

    def _prune(self) -> float:
        now = self._clock()
        self._sources.prune(now)
        self._subjects.prune(now)
        return now


def retry_message(wait: float) -> str:
    """The sentence a refused client sees: how long until it may try again."""
    seconds = max(1, math.ceil(wait))
    return (
        f"too many failed authentications; retry in {seconds} second{'s' if seconds != 1 else ''}"
    )


def source_key(address: str) -> str:
    """The key failed logins from ``address`` are counted under.

    An IPv6 client usually holds a whole /64, so it counts as one source;
    IPv4-mapped IPv6 addresses count as the IPv4 address they carry.
    """
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)
