"""The payment outbox: one row per charge or refund whose answer is not recorded yet.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08

Self-contained (no imports from the application), like 0001. Charges and refunds made
before this revision get no instruction (their money was handled outside the ledger).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "payment_outbox",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("session_id", sa.String(), nullable=False),
        sa.Column("lot_id", sa.String(), nullable=False),
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("cents", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sends", sa.Integer(), nullable=False),
        sa.CheckConstraint("kind IN ('charge', 'refund')", name=op.f("ck_payment_outbox_kind")),
        sa.CheckConstraint("cents > 0", name=op.f("ck_payment_outbox_cents")),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["session.session_id"],
            name=op.f("fk_payment_outbox_session_id_session"),
        ),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_payment_outbox")),
    )
    op.create_index(op.f("ix_payment_outbox_due_at"), "payment_outbox", ["due_at"])


def downgrade() -> None:
    op.drop_table("payment_outbox")
