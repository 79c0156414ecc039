"""Approvals: requests (one pending per identity, connection and statement), votes, grants,
notification outcomes.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True).with_variant(sa.String(32), "sqlite")


def upgrade() -> None:
    op.create_table(
        "approval_requests",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("requester", sa.String(63), nullable=False),
        sa.Column("requester_groups", sa.JSON(), nullable=False),
        sa.Column("requester_claims", sa.JSON(), nullable=False),
        sa.Column("connection", sa.String(63), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("policy", sa.String(255), nullable=True),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("statement_hash", sa.String(64), nullable=True),
        sa.Column("action", sa.String(32), nullable=True),
        sa.Column("kinds", sa.JSON(), nullable=True),
        sa.Column("rule", sa.String(255), nullable=True),
        sa.Column("decision_reason", sa.Text(), nullable=True),
        sa.Column("session_id", sa.String(64), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=True),
        sa.Column("scope_actions", sa.JSON(), nullable=True),
        sa.Column("scope_resources", sa.JSON(), nullable=True),
        sa.Column("duration_us", sa.BigInteger(), nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("decided_at", _TS, nullable=True),
        sa.Column("decided_by", sa.String(63), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("used_at", _TS, nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_approval_requests_state", "approval_requests",
                    ["state", "expires_at"])
    op.create_index("ix_approval_requests_requester", "approval_requests",
                    ["requester", "connection"])
    op.create_index(
        "uq_approval_requests_pending", "approval_requests",
        ["requester", "connection", "statement_hash"], unique=True,
        sqlite_where=sa.text("state = 'pending'"),
        postgresql_where=sa.text("state = 'pending'"),
    )
    op.create_table(
        "approval_votes",
        sa.Column("request_id", sa.Integer(),
                  sa.ForeignKey("approval_requests.id", ondelete="CASCADE",
                                name="fk_approval_votes_request_id"),
                  primary_key=True),
        sa.Column("approver", sa.String(63), primary_key=True),
        sa.Column("approve", sa.Boolean(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("at", _TS, nullable=False),
    )
    op.create_table(
        "approval_grants",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.Integer(),
                  sa.ForeignKey("approval_requests.id", ondelete="CASCADE",
                                name="fk_approval_grants_request_id"),
                  nullable=False),
        sa.Column("identity", sa.String(63), nullable=False),
        sa.Column("connection", sa.String(63), nullable=False),
        sa.Column("actions", sa.JSON(), nullable=False),
        sa.Column("resources", sa.JSON(), nullable=False),
        sa.Column("starts_at", _TS, nullable=False),
        sa.Column("ends_at", _TS, nullable=False),
        sa.UniqueConstraint("request_id", name="uq_approval_grants_request"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_approval_grants_holder", "approval_grants",
                    ["identity", "connection", "ends_at"])
    op.create_table(
        "approval_notifications",
        sa.Column("request_id", sa.Integer(),
                  sa.ForeignKey("approval_requests.id", ondelete="CASCADE",
                                name="fk_approval_notifications_request_id"),
                  primary_key=True),
        sa.Column("channel", sa.String(63), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", _TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("approval_notifications")
    op.drop_index("ix_approval_grants_holder", table_name="approval_grants")
    op.drop_table("approval_grants")
    op.drop_table("approval_votes")
    op.drop_index("uq_approval_requests_pending", table_name="approval_requests")
    op.drop_index("ix_approval_requests_requester", table_name="approval_requests")
    op.drop_index("ix_approval_requests_state", table_name="approval_requests")
    op.drop_table("approval_requests")
