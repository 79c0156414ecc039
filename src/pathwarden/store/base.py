"""The store's interface: what the rest of pathwarden may ask of persistence.

:class:`Store` is a :class:`typing.Protocol` so tests and future backends can
stand in for :class:`~pathwarden.store.sql.SqlStore`. Every method raises
:class:`StoreError` (never a driver exception) and never puts a password from
the store URL into a message.

Timestamps go in and come out timezone-aware (UTC). Session and statement
records are the shared :mod:`pathwarden.model` values; tokens have their own
:class:`TokenRecord` because only the gateway's token machinery uses them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

from pathwarden.model import SessionRecord, StatementRecord

if TYPE_CHECKING:
    from collections.abc import Callable

    from pathwarden.approvals.model import (
        ApprovalChange,
        ApprovalRequest,
        Grant,
        RequestKind,
        RequestState,
    )
    from pathwarden.store.recordings import RecordingRow

__all__ = [
    "MIN_PREFIX",
    "AmbiguousPrefix",
    "NotFound",
    "Store",
    "StoreError",
    "TokenRecord",
]

#: Shortest id prefix accepted where a unique prefix may stand for an id.
MIN_PREFIX = 6

_EMPTY: Mapping[str, str] = MappingProxyType({})


class StoreError(Exception):
    """Persistence failed; the message says which store and why (no credentials)."""


class NotFound(StoreError):
    """No row matches the given id or prefix."""


class AmbiguousPrefix(StoreError):
    """An id prefix matches more than one row."""


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """What the store keeps about an issued token: metadata only, never the token."""

    token_ref: str
    identity: str
    issued_at: datetime
    expires_at: datetime
    connections: tuple[str, ...] | None = None  # None: unscoped
    claims: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    revoked_at: datetime | None = None
    revoked_reason: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def expired(self, now: datetime) -> bool:
        return now >= self.expires_at


class Store(Protocol):
    """Persistent state shared by gateway replicas: tokens, sessions, statements."""

    async def close(self) -> None:
        """Release connections; the store cannot be used afterwards."""

    # -- tokens ---------------------------------------------------------------

    async def record_token(self, rec: TokenRecord) -> None:
        """Remember an issued token (its metadata)."""

    async def token_status(self, token_ref: str) -> TokenRecord | None:
        """The record for exactly ``token_ref``, or None if it was never recorded."""

    async def list_tokens(
        self, identity: str | None = None, include_expired: bool = False
    ) -> list[TokenRecord]:
        """Tokens newest first, optionally for one identity; revoked ones included."""

    async def revoked_among(self, token_refs: Collection[str]) -> dict[str, TokenRecord]:
        """The revoked tokens among ``token_refs``, by ref (one query for the whole set)."""

    async def revoke_token(self, ref_prefix: str, reason: str | None) -> TokenRecord:
        """Revoke the token whose ref starts with ``ref_prefix`` (>= 6 chars).

        Raises :class:`NotFound` or :class:`AmbiguousPrefix`. Revoking a revoked
        token changes nothing and returns it with its original ``revoked_at``.
        """

    # -- sessions and statements ---------------------------------------------

    async def upsert_sessions(self, records: Sequence[SessionRecord]) -> None:
        """Insert new sessions and overwrite existing ones (same id), in one transaction.

        The last record for an id wins, both within a batch and across calls.
        """

    async def insert_statements(self, records: Sequence[StatementRecord]) -> None:
        """Insert statements in one transaction; their sessions must already be stored.

        Idempotent: a (session_id, seq) already stored is skipped, so a batch
        may be replayed after a crash.
        """

    async def list_sessions(
        self,
        *,
        identity: str | None = None,
        connection: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[SessionRecord]:
        """Sessions newest first (by ``started_at``), filtered; see :meth:`statement_counts`."""

    async def statement_counts(self, session_ids: Sequence[str]) -> dict[str, int]:
        """Number of stored statements per session id (ids without any map to 0)."""

    async def get_session(self, id_or_prefix: str) -> SessionRecord | None:
        """The session with this id, or the only one whose id starts with it (>= 6 chars).

        Returns None when nothing matches; raises :class:`AmbiguousPrefix`.
        """

    async def list_statements(self, session_id: str) -> list[StatementRecord]:
        """A session's statements in ``seq`` order."""

    # -- recordings (see store/recordings.py) -------------------------------------

    async def chain_tail(self, gateway_id: str) -> tuple[int, str] | None:
        """The last position and link of a gateway's chain of sessions."""

    async def add_recording(self, row: RecordingRow, head: str) -> None:
        """Index a finished recording together with the signed head covering it."""

    async def get_recording(self, session_id: str) -> RecordingRow | None:
        """Where a session's recording is, if it was indexed."""

    async def list_recordings(
        self, *, gateway_id: str | None = None, before: datetime | None = None,
        limit: int | None = None,
    ) -> list[RecordingRow]:
        """Indexed recordings in chain order."""

    async def heads(self) -> dict[str, str]:
        """Signed chain heads by gateway id."""

    async def checkpoints(self) -> dict[str, str]:
        """Newest signed checkpoint by gateway id."""

    async def prune(self, gateway_id: str, up_to: int, checkpoint: str,
                    session_ids: Sequence[str]) -> None:
        """Drop a chain's oldest entries and their sessions; store the checkpoint."""

    # -- approvals (see store/approvals.py) ---------------------------------------------

    def approvals_listen_url(self) -> str | None:
        """A libpq URL for a LISTEN connection (PostgreSQL), None on SQLite."""

    async def create_approval(
        self, request: ApprovalRequest,
        expire: Callable[[ApprovalRequest], ApprovalChange | None],
    ) -> tuple[ApprovalRequest, bool]:
        """Store a new request, or return the pending twin of an operation request."""

    async def change_approval(
        self, request_id: int, change: Callable[[ApprovalRequest], ApprovalChange | None],
    ) -> ApprovalRequest:
        """Apply ``change`` to the request while holding it; raises NotFound."""

    async def sweep_approvals(
        self, now: datetime, expire: Callable[[ApprovalRequest], ApprovalChange | None],
    ) -> list[int]:
        """Pass requests past ``expires_at`` to ``expire``; the ids it changed."""

    async def consume_approval(
        self, requester: str, connection: str, statement_hash: str, now: datetime,
        request_id: int | None = None,
    ) -> ApprovalRequest | None:
        """Use one approved one-time approval for this statement; exactly one caller wins."""

    async def get_approval(self, request_id: int) -> ApprovalRequest | None:
        """One request with its votes and notifications."""

    async def list_approvals(
        self, *, state: RequestState | None = None, requester: str | None = None,
        connection: str | None = None, kind: RequestKind | None = None, limit: int = 200,
    ) -> list[ApprovalRequest]:
        """Requests newest first, filtered."""

    async def list_grants(
        self, *, identity: str | None = None, connection: str | None = None,
        active_at: datetime | None = None,
    ) -> list[Grant]:
        """Grants newest first; with ``active_at``, only those in force then."""

    async def record_approval_notification(
        self, request_id: int, channel: str, ok: bool, error: str | None, at: datetime,
    ) -> None:
        """Count one attempt to notify ``channel`` about a request, and its outcome."""
