"""Approval requests, votes, grants: the values the approval service and the store share.

A request is either for one **operation** (a held statement: approving it
approves exactly that text, for that identity on that connection, once) or for
a **grant** (just-in-time access: action classes, optionally resources, on one
connection, for a time box). Requests are numbered by the store (``17``), so a
person can type ``pathwarden approve 17``.

Lifecycle::

    pending --(N approvals)--> approved --(operation: used once)--> used
       |  \\--(one deny)--> denied         \\--(not used in time)--> expired
       |---(ttl passes)---> expired
       \\---(requester withdraws)--> withdrawn

Everything is a frozen dataclass; the audit trail is the request itself: every
vote with who, what and when, and when and by whom it was decided.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from types import MappingProxyType

from pathwarden.model import Operation

__all__ = [
    "ApprovalChange",
    "ApprovalRequest",
    "Grant",
    "GrantScope",
    "NewGrant",
    "NotificationRecord",
    "OperationDetails",
    "RequestKind",
    "RequestState",
    "Vote",
    "statement_hash",
]

_EMPTY: Mapping[str, str] = MappingProxyType({})

# Classes a grant need not name: the policy engine lets them through as plumbing
# wherever anything is allowed, so a held `begin; alter table ...; commit` is
# covered by a `ddl` grant. Two-phase commit is not plumbing.
_PLUMBING = frozenset({"transaction", "session"})


class RequestKind(enum.StrEnum):
    OPERATION = "operation"  # one held operation, approved once
    GRANT = "grant"  # time-boxed access to action classes on a connection


class RequestState(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"
    USED = "used"  # a one-time approval consumed by the operation it approved


def statement_hash(op: Operation) -> str:
    """What binds an operation approval to the statement: sha256 of its normalised text.

    The classifier's per-statement texts (trimmed, one per statement) when it
    split the text into several, else the text with surrounding whitespace
    removed, and the tables it resolves to. Constants are part of it: approving
    ``delete ... where id = 1`` does not approve ``id = 2``, and approving
    ``delete from invoices`` under one search_path does not approve it where
    ``invoices`` is another table.
    """
    parts = [a.text for a in op.actions if a.text]
    normalised = "\x00".join(parts) if len(parts) > 1 else op.text.strip()
    # The objects as the server resolves them (search_path included): the same text
    # reaching other tables is another operation.
    normalised += "\x01" + "\x00".join(sorted(op.resources))
    return hashlib.sha256(normalised.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Vote:
    """One approver's verdict on a request."""

    approver: str
    approve: bool
    at: datetime
    comment: str = ""
    # The approver's groups at the time of the vote (distinct_groups counts them).
    groups: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NotificationRecord:
    """How telling people about a request went, per channel (slack, email ...)."""

    channel: str
    state: str  # "sent" | "failed"
    attempts: int
    last_error: str | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class OperationDetails:
    """The exact operation an ``operation`` request approves."""

    text: str
    statement_hash: str
    action: str  # the operation's action class
    kinds: tuple[str, ...] = ()
    policy: str | None = None
    rule: str | None = None
    decision_reason: str = ""  # why policy asked for approval
    session_id: str | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class GrantScope:
    """What a grant allows: action classes or kinds, and optionally table globs."""

    actions: tuple[str, ...]
    resources: tuple[str, ...] = ()

    def describe(self) -> str:
        where = f" on {', '.join(self.resources)}" if self.resources else ""
        return ", ".join(self.actions) + where

    def covers(self, op: Operation) -> bool:
        """Whether every action of ``op`` falls in this scope (fail closed on anything else)."""
        if op.actions:
            units = [(a.action, a.kind, a.names("tables"), "two_phase" in a.flags)
                     for a in op.actions]
        else:
            units = [(op.action, op.action, op.resources, False)]
        granted = set(self.actions)
        covered_any = False
        for cls, kind, tables, two_phase in units:
            if cls in _PLUMBING and not two_phase:
                continue
            if cls not in granted and kind not in granted:
                return False
            if self.resources and (not tables or not all(
                    any(fnmatchcase(t, g) for g in self.resources) for t in tables)):
                return False
            covered_any = True
        return covered_any


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """A request for approval, with its votes and notifications (the audit of it)."""

    id: int
    kind: RequestKind
    state: RequestState
    requester: str
    connection: str
    created_at: datetime
    expires_at: datetime
    requester_groups: tuple[str, ...] = ()
    requester_claims: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    reason: str = ""
    policy: str | None = None  # whose approval rules apply (None: the defaults)
    operation: OperationDetails | None = None
    scope: GrantScope | None = None
    duration: timedelta | None = None  # for grants, already capped by max_grant
    decided_at: datetime | None = None
    decided_by: str | None = None  # the deciding approver, the withdrawer, or "expiry"
    outcome: str = ""  # why it left pending, in words
    used_at: datetime | None = None
    grant_id: int | None = None
    votes: tuple[Vote, ...] = ()
    notifications: tuple[NotificationRecord, ...] = ()

    @property
    def pending(self) -> bool:
        return self.state is RequestState.PENDING

    @property
    def approvals(self) -> tuple[Vote, ...]:
        return tuple(v for v in self.votes if v.approve)

    def subject(self) -> str:
        """What is asked, in a few words (for messages)."""
        if self.operation is not None:
            text = " ".join(self.operation.text.split())
            text = text if len(text) <= 80 else text[:77] + "..."
            return f"{self.operation.action} {text!r}"
        scope = self.scope.describe() if self.scope else "?"
        return f"grant of {scope} for {self.duration}"


@dataclass(frozen=True, slots=True)
class Grant:
    """Time-boxed access created when a grant request is approved."""

    id: int
    identity: str
    connection: str
    scope: GrantScope
    starts_at: datetime
    ends_at: datetime
    request_id: int

    def active(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at

    def covers(self, op: Operation, now: datetime) -> bool:
        """Whether this grant lets ``op`` through at ``now``."""
        return (self.active(now) and op.identity.name == self.identity
                and op.connection.name == self.connection and self.scope.covers(op))


@dataclass(frozen=True, slots=True)
class NewGrant:
    """The grant an approval creates (the store gives it its id)."""

    identity: str
    connection: str
    scope: GrantScope
    starts_at: datetime
    ends_at: datetime


@dataclass(frozen=True, slots=True)
class ApprovalChange:
    """What one decision step does to a request; the store applies it in one transaction."""

    state: RequestState
    votes: tuple[Vote, ...] = ()
    decided_at: datetime | None = None
    decided_by: str | None = None
    outcome: str = ""
    expires_at: datetime | None = None  # None: unchanged
    grant: NewGrant | None = None
