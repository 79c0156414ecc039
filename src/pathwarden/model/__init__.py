"""The values every part of pathwarden shares.

Protocols turn requests into :class:`Operation` values, policy turns operations
into :class:`Decision` values, and the audit trail records both. Everything here
is a frozen, slotted dataclass with no behaviour beyond small helpers, so the
same values flow through policy, approvals, audit and the API regardless of the
wire protocol they came from.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

_EMPTY: Mapping[str, str] = MappingProxyType({})


class Protocol(enum.StrEnum):
    """The wire protocol a session speaks."""

    POSTGRES = "postgres"
    MYSQL = "mysql"
    SSH = "ssh"
    HTTP = "http"
    KUBERNETES = "kubernetes"


class Verdict(enum.StrEnum):
    """What policy says about one operation."""

    ALLOW = "allow"
    DENY = "deny"
    APPROVE = "approve"  # hold until a human approves


@dataclass(frozen=True, slots=True)
class Identity:
    """A principal that authenticated to the gateway (a pipeline stage or a person)."""

    name: str
    groups: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    # Claims carried by the token (CI repository, run id, commit ...); empty for
    # tokens minted directly by `pathwarden token issue`.
    claims: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    token_ref: str | None = None  # hash of the token id, never the token
    # When the token expires: a session outliving it (plus the configured grace) is ended.
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ConnectionRef:
    """The named target a session is attached to (not its credentials)."""

    name: str
    protocol: Protocol
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)


@dataclass(frozen=True, slots=True)
class Action:
    """One classified unit of an operation: a SQL statement, one command of a shell program.

    ``action`` is the coarse class policies allow or deny (``read``, ``write``,
    ``ddl``, ``privilege`` ...), ``kind`` the precise one (``select``,
    ``delete``, ``drop_schema``, ``set_role`` ...). ``objects`` names what the
    action touches, by sort: ``{"tables": ("public.users",), "functions":
    ("pg_terminate_backend",)}``. ``flags`` carry facts rules can test
    (``without_where``, ``for_update``, ``temp`` ...).
    """

    action: str
    kind: str
    objects: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: _EMPTY_OBJECTS)
    flags: frozenset[str] = frozenset()
    text: str = ""

    def names(self, sort: str) -> tuple[str, ...]:
        return self.objects.get(sort, ())


_EMPTY_OBJECTS: Mapping[str, tuple[str, ...]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Operation:
    """One request a client made, in protocol-agnostic form.

    ``action`` is a coarse class (``read``, ``write``, ``ddl``, ``unknown`` ...)
    filled by the protocol's classifier; ``resources`` names what it touches
    (tables, paths, Kubernetes objects). ``text`` is the raw request as the
    client sent it (an SQL statement, a command line); ``params`` holds bind
    parameters rendered as text where the protocol has them.
    """

    session_id: str
    seq: int
    identity: Identity
    connection: ConnectionRef
    protocol: Protocol
    kind: str  # protocol-level message kind: "query", "parse", "execute", "copy" ...
    text: str
    action: str = "unknown"
    resources: tuple[str, ...] = ()
    params: tuple[str | None, ...] = ()
    # Filled by the protocol's classifier: one entry per statement or command.
    actions: tuple[Action, ...] = ()
    # Why the classifier could not classify ``text``; policy denies such operations.
    unclassified: str | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of authorizing one operation, with its explanation."""

    verdict: Verdict
    reason: str
    policy: str | None = None
    rule: str | None = None
    # An ALLOW that holds for one execution only (a one-time approval) ...
    once: bool = False
    # ... or until this moment (a time-boxed grant): a prepared statement allowed
    # by it is refused at later executions.
    until: datetime | None = None

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW


@dataclass(slots=True)
class SessionRecord:
    """What the audit trail keeps about one client session."""

    id: str
    protocol: Protocol
    identity: str
    token_ref: str | None
    client_addr: str
    connection: str
    started_at: datetime
    ended_at: datetime | None = None
    bytes_from_client: int = 0
    bytes_to_client: int = 0
    end_reason: str | None = None
    claims: Mapping[str, str] = field(default_factory=lambda: _EMPTY)


@dataclass(slots=True)
class StatementRecord:
    """What the audit trail keeps about one statement (or other operation)."""

    session_id: str
    seq: int
    kind: str
    text: str
    params: tuple[str | None, ...]
    verdict: Verdict
    reason: str
    started_at: datetime
    duration_ms: float | None = None
    command_tag: str | None = None
    rows: int | None = None
    error: str | None = None
    policy: str | None = None
    action: str = "unknown"
    # What masking replaced in the response, {"<column>:<detector>": count};
    # never the values themselves.
    masked: Mapping[str, int] | None = None
