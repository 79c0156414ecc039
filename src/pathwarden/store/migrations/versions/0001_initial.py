"""Initial schema: tokens, sessions, statements.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Migrations describe the schema as it was at this revision, so they spell
# the timestamp type out instead of importing the live UtcDateTime: ISO text
# on SQLite (see store/tables.py), timestamptz elsewhere.
_TS = sa.DateTime(timezone=True).with_variant(sa.String(32), "sqlite")


def upgrade() -> None:
    op.create_table(
        "tokens",
        sa.Column("token_ref", sa.String(16), primary_key=True),
        sa.Column("identity", sa.String(63), nullable=False),
        sa.Column("issued_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("connections", sa.JSON(), nullable=True),
        sa.Column("claims", sa.JSON(), nullable=False),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.Column("revoked_reason", sa.Text(), nullable=True),
    )
    op.create_index("ix_tokens_identity", "tokens", ["identity"])

    op.create_table(
        "sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("protocol", sa.String(16), nullable=False),
        sa.Column("identity", sa.String(63), nullable=False),
        sa.Column("token_ref", sa.String(16), nullable=True),
        sa.Column("client_addr", sa.String(255), nullable=False),
        sa.Column("connection", sa.String(63), nullable=False),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("ended_at", _TS, nullable=True),
        sa.Column("bytes_from_client", sa.BigInteger(), nullable=False),
        sa.Column("bytes_to_client", sa.BigInteger(), nullable=False),
        sa.Column("end_reason", sa.Text(), nullable=True),
        sa.Column("claims", sa.JSON(), nullable=False),
    )
    op.create_index("ix_sessions_started_at", "sessions", ["started_at"])
    op.create_index("ix_sessions_identity", "sessions", ["identity"])
    op.create_index("ix_sessions_connection", "sessions", ["connection"])

    op.create_table(
        "statements",
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("policy", sa.String(255), nullable=True),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("command_tag", sa.String(255), nullable=True),
        sa.Column("rows", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("session_id", "seq", name="pk_statements"),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name="fk_statements_session_id",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_statements_started_at", "statements", ["started_at"])


def downgrade() -> None:
    op.drop_table("statements")
    op.drop_table("sessions")
    op.drop_table("tokens")
