"""Recordings index, the chain of sessions per gateway, signed heads and checkpoints.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True).with_variant(sa.String(32), "sqlite")


def upgrade() -> None:
    op.create_table(
        "recordings",
        sa.Column("session_id", sa.String(64), primary_key=True),
        sa.Column("gateway_id", sa.String(64), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("final_hash", sa.String(64), nullable=False),
        sa.Column("link", sa.String(64), nullable=False),
        sa.Column("location", sa.Text(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        sa.Column("complete", sa.Boolean(), nullable=False),
        sa.Column("started_at", _TS, nullable=False),
        sa.Column("ended_at", _TS, nullable=False),
        sa.UniqueConstraint("gateway_id", "position", name="uq_recordings_chain"),
    )
    op.create_index("ix_recordings_started_at", "recordings", ["started_at"])
    op.create_table(
        "audit_heads",
        sa.Column("gateway_id", sa.String(64), primary_key=True),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("signed", sa.Text(), nullable=False),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("gateway_id", sa.String(64), primary_key=True),
        sa.Column("position", sa.BigInteger(), primary_key=True),
        sa.Column("signed", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_heads")
    op.drop_index("ix_recordings_started_at", table_name="recordings")
    op.drop_table("recordings")
