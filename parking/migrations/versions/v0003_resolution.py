"""The review queue's resolutions: one row per resolved item, append-only.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08

Self-contained (no imports from the application), like 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ACTIONS = ("pair", "entry", "exit", "charge", "fee", "waive", "dismiss")


def upgrade() -> None:
    op.create_table(
        "resolution",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("resolution_id", sa.String(), nullable=False),
        sa.Column("item", sa.String(), nullable=False),
        sa.Column("session_id", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("other_session_id", sa.String(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cents", sa.BigInteger(), nullable=True),
        sa.Column("account", sa.String(), nullable=True),
        sa.Column("operator", sa.String(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            f"action IN ({', '.join(repr(a) for a in ACTIONS)})",
            name=op.f("ck_resolution_action"),
        ),
        sa.CheckConstraint("cents IS NULL OR cents >= 0", name=op.f("ck_resolution_cents")),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["session.session_id"],
            name=op.f("fk_resolution_session_id_session"),
        ),
        sa.ForeignKeyConstraint(
            ["other_session_id"],
            ["session.session_id"],
            name=op.f("fk_resolution_other_session_id_session"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_resolution")),
        sa.UniqueConstraint("resolution_id", name=op.f("uq_resolution_resolution_id")),
        sa.UniqueConstraint("item", name=op.f("uq_resolution_item")),
    )
    op.create_index(op.f("ix_resolution_session_id"), "resolution", ["session_id"])
    op.create_index(op.f("ix_resolution_other_session_id"), "resolution", ["other_session_id"])


def downgrade() -> None:
    op.drop_table("resolution")
