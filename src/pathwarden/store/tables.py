"""Table definitions used by the queries in :mod:`pathwarden.store.sql`.

The schema itself is created and evolved only by the Alembic migrations in
``migrations/versions``; these definitions must describe the head revision.
``tests/test_store.py`` checks that they agree with the migrated database.

Timestamps use :class:`UtcDateTime`: ``timestamptz`` on PostgreSQL, and on
SQLite fixed-width ISO-8601 text in UTC, so that text order is time order and
range filters work on the indexed column.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator, TypeEngine

__all__ = [
    "UtcDateTime",
    "audit_checkpoints",
    "audit_heads",
    "metadata",
    "recordings",
    "sessions",
    "statements",
    "tokens",
]

_SQLITE_FORMAT = "%Y-%m-%dT%H:%M:%S.%f+00:00"


class UtcDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(32))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            # A naive value would be read back as UTC whatever it meant; refuse it.
            raise ValueError(f"naive datetime {value.isoformat()} given to the store")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.strftime(_SQLITE_FORMAT)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if not isinstance(value, datetime):
            raise TypeError(f"unexpected timestamp value of type {type(value).__name__}")
        moment: datetime = value
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)


metadata = MetaData()

tokens = Table(
    "tokens",
    metadata,
    Column("token_ref", String(16), primary_key=True),
    Column("identity", String(63), nullable=False),
    Column("issued_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("connections", JSON(), nullable=True),
    Column("claims", JSON(), nullable=False),
    Column("revoked_at", UtcDateTime(), nullable=True),
    Column("revoked_reason", Text(), nullable=True),
    Index("ix_tokens_identity", "identity"),
)

sessions = Table(
    "sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("protocol", String(16), nullable=False),
    Column("identity", String(63), nullable=False),
    Column("token_ref", String(16), nullable=True),
    Column("client_addr", String(255), nullable=False),
    Column("connection", String(63), nullable=False),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("ended_at", UtcDateTime(), nullable=True),
    Column("bytes_from_client", BigInteger(), nullable=False),
    Column("bytes_to_client", BigInteger(), nullable=False),
    Column("end_reason", Text(), nullable=True),
    Column("claims", JSON(), nullable=False),
    Index("ix_sessions_started_at", "started_at"),
    Index("ix_sessions_identity", "identity"),
    Index("ix_sessions_connection", "connection"),
)

statements = Table(
    "statements",
    metadata,
    Column(
        "session_id",
        String(64),
        ForeignKey("sessions.id", ondelete="CASCADE", name="fk_statements_session_id"),
        primary_key=True,
    ),
    Column("seq", Integer(), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("text", Text(), nullable=False),
    Column("params", JSON(), nullable=False),
    Column("verdict", String(16), nullable=False),
    Column("reason", Text(), nullable=False),
    Column("policy", String(255), nullable=True),
    Column("action", String(32), nullable=False),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("duration_ms", Float(), nullable=True),
    Column("command_tag", String(255), nullable=True),
    Column("rows", BigInteger(), nullable=True),
    Column("error", Text(), nullable=True),
    # What masking replaced in the response: {"<column or part>:<detector>": count}.
    Column("masked", JSON(), nullable=True),
    Index("ix_statements_started_at", "started_at"),
)

# One row per finished session recording: where it is, and its place in the
# gateway's chain of sessions (see recording/verify.py).
recordings = Table(
    "recordings",
    metadata,
    Column("session_id", String(64), primary_key=True),
    Column("gateway_id", String(64), nullable=False),
    Column("position", BigInteger(), nullable=False),
    Column("final_hash", String(64), nullable=False),
    Column("link", String(64), nullable=False),
    Column("location", Text(), nullable=False),
    Column("events", BigInteger(), nullable=False),
    Column("bytes", BigInteger(), nullable=False),
    Column("stored_bytes", BigInteger(), nullable=False),
    Column("complete", Boolean(), nullable=False),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("ended_at", UtcDateTime(), nullable=False),
    UniqueConstraint("gateway_id", "position", name="uq_recordings_chain"),
    Index("ix_recordings_started_at", "started_at"),
)

# The newest signed chain head per gateway, and the signed checkpoints left where
# retention cut the chain.
audit_heads = Table(
    "audit_heads",
    metadata,
    Column("gateway_id", String(64), primary_key=True),
    Column("position", BigInteger(), nullable=False),
    Column("signed", Text(), nullable=False),
)

audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("gateway_id", String(64), primary_key=True),
    Column("position", BigInteger(), primary_key=True),
    Column("signed", Text(), nullable=False),
)


# -- approvals (see store/approvals.py) ------------------------------------------------

# One row per approval request; ids are a sequence people type (`pathwarden
# approve 17`), never reused (AUTOINCREMENT on SQLite).
approval_requests = Table(
    "approval_requests",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("requester", String(63), nullable=False),
    Column("requester_groups", JSON(), nullable=False),
    Column("requester_claims", JSON(), nullable=False),
    Column("connection", String(63), nullable=False),
    Column("reason", Text(), nullable=False),
    Column("policy", String(255), nullable=True),
    # kind "operation": the exact operation approved.
    Column("text", Text(), nullable=True),
    Column("statement_hash", String(64), nullable=True),
    Column("action", String(32), nullable=True),
    Column("kinds", JSON(), nullable=True),
    Column("rule", String(255), nullable=True),
    Column("decision_reason", Text(), nullable=True),
    Column("session_id", String(64), nullable=True),
    Column("seq", Integer(), nullable=True),
    # kind "grant": what and for how long (microseconds, capped by max_grant).
    Column("scope_actions", JSON(), nullable=True),
    Column("scope_resources", JSON(), nullable=True),
    Column("duration_us", BigInteger(), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("decided_at", UtcDateTime(), nullable=True),
    Column("decided_by", String(63), nullable=True),
    Column("outcome", Text(), nullable=False),
    Column("used_at", UtcDateTime(), nullable=True),
    Index("ix_approval_requests_state", "state", "expires_at"),
    Index("ix_approval_requests_requester", "requester", "connection"),
    sqlite_autoincrement=True,
)

# At most one pending request per identity, connection and statement: a retry
# finds the request its first attempt made, even when both race.
Index(
    "uq_approval_requests_pending",
    approval_requests.c.requester,
    approval_requests.c.connection,
    approval_requests.c.statement_hash,
    unique=True,
    sqlite_where=approval_requests.c.state == "pending",
    postgresql_where=approval_requests.c.state == "pending",
)

approval_votes = Table(
    "approval_votes",
    metadata,
    Column(
        "request_id",
        Integer(),
        ForeignKey("approval_requests.id", ondelete="CASCADE",
                   name="fk_approval_votes_request_id"),
        primary_key=True,
    ),
    # One vote per approver and request, even when an approver's two clicks race.
    Column("approver", String(63), primary_key=True),
    Column("approve", Boolean(), nullable=False),
    Column("comment", Text(), nullable=False),
    Column("groups", JSON(), nullable=False),
    Column("at", UtcDateTime(), nullable=False),
)

approval_grants = Table(
    "approval_grants",
    metadata,
    Column("id", Integer(), primary_key=True, autoincrement=True),
    Column(
        "request_id",
        Integer(),
        ForeignKey("approval_requests.id", ondelete="CASCADE",
                   name="fk_approval_grants_request_id"),
        nullable=False,
    ),
    Column("identity", String(63), nullable=False),
    Column("connection", String(63), nullable=False),
    Column("actions", JSON(), nullable=False),
    Column("resources", JSON(), nullable=False),
    Column("starts_at", UtcDateTime(), nullable=False),
    Column("ends_at", UtcDateTime(), nullable=False),
    UniqueConstraint("request_id", name="uq_approval_grants_request"),
    Index("ix_approval_grants_holder", "identity", "connection", "ends_at"),
    sqlite_autoincrement=True,
)

approval_notifications = Table(
    "approval_notifications",
    metadata,
    Column(
        "request_id",
        Integer(),
        ForeignKey("approval_requests.id", ondelete="CASCADE",
                   name="fk_approval_notifications_request_id"),
        primary_key=True,
    ),
    Column("channel", String(63), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer(), nullable=False),
    Column("last_error", Text(), nullable=True),
    Column("updated_at", UtcDateTime(), nullable=False),
)
