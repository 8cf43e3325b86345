"""Money after the charge: attempts and sources of charges, refunds, disputes, payment results.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08

Self-contained (no imports from the application), like 0001.

``charge`` gains ``attempt`` (1 for every charge so far) and ``source`` (``exit``,
``debt``, ``review``); its UNIQUE ``session_id`` becomes UNIQUE ``(session_id, attempt)``
(a declined charge makes the stay a debt, collected by a later attempt). Existing charges
are marked ``debt`` where a binding of their account was made at the very instant of the
charge (a bind charges its debts at its own time), ``exit`` otherwise. On SQLite the table
is rebuilt (batch mode), its rows kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _text(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.String(), nullable=nullable)


def _session_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["session_id"], ["session.session_id"], name=op.f(f"fk_{table}_session_id_session")
    )


def upgrade() -> None:
    with op.batch_alter_table("charge") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("source", sa.String(), nullable=False, server_default="exit"))
    op.execute(
        "UPDATE charge SET source = 'debt' WHERE EXISTS (SELECT 1 FROM binding "
        "WHERE binding.account = charge.account AND binding.bound_at = charge.charged_at)"
    )
    with op.batch_alter_table("charge") as batch:
        batch.alter_column("attempt", server_default=None)
        batch.alter_column("source", server_default=None)
        batch.drop_constraint("uq_charge_session_id", type_="unique")
        batch.create_unique_constraint("uq_charge_session_id_attempt", ["session_id", "attempt"])
        batch.create_check_constraint("ck_charge_attempt", "attempt >= 1")
        batch.create_check_constraint("ck_charge_source", "source IN ('exit', 'debt', 'review')")
    op.create_table(
        "adjustment",
        sa.Column("id", sa.Integer(), nullable=False),
        _text("adjustment_id"),
        _text("session_id"),
        _text("kind"),
        sa.Column("cents", sa.BigInteger(), nullable=False),
        _text("account"),
        _text("operator"),
        sa.Column("reason", sa.Text(), nullable=False),
        _utc("created_at"),
        _text("resolution_id", nullable=True),
        sa.CheckConstraint("cents > 0", name=op.f("ck_adjustment_cents")),
        sa.CheckConstraint("kind IN ('refund')", name=op.f("ck_adjustment_kind")),
        _session_fk("adjustment"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adjustment")),
        sa.UniqueConstraint("adjustment_id", name=op.f("uq_adjustment_adjustment_id")),
    )
    op.create_index(op.f("ix_adjustment_session_id"), "adjustment", ["session_id"])
    op.create_index(op.f("ix_adjustment_account"), "adjustment", ["account"])
    op.create_table(
        "dispute",
        sa.Column("id", sa.Integer(), nullable=False),
        _text("dispute_id"),
        _text("session_id"),
        _text("operator"),
        sa.Column("reason", sa.Text(), nullable=False),
        _utc("created_at"),
        _session_fk("dispute"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dispute")),
        sa.UniqueConstraint("dispute_id", name=op.f("uq_dispute_dispute_id")),
    )
    op.create_index(op.f("ix_dispute_session_id"), "dispute", ["session_id"])
    op.create_table(
        "payment_result",
        sa.Column("id", sa.Integer(), nullable=False),
        _text("key"),
        _text("kind"),
        _text("session_id"),
        _text("status"),
        sa.Column("detail", sa.Text(), nullable=False),
        _text("reference", nullable=True),
        _utc("received_at"),
        sa.CheckConstraint("kind IN ('charge', 'refund')", name=op.f("ck_payment_result_kind")),
        sa.CheckConstraint("status IN ('paid', 'declined')", name=op.f("ck_payment_result_status")),
        _session_fk("payment_result"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_result")),
        sa.UniqueConstraint("key", name=op.f("uq_payment_result_key")),
    )
    op.create_index(op.f("ix_payment_result_session_id"), "payment_result", ["session_id"])


def downgrade() -> None:
    op.drop_table("payment_result")
    op.drop_table("dispute")
    op.drop_table("adjustment")
    with op.batch_alter_table("charge") as batch:
        batch.drop_constraint("ck_charge_source", type_="check")
        batch.drop_constraint("ck_charge_attempt", type_="check")
        batch.drop_constraint("uq_charge_session_id_attempt", type_="unique")
        batch.create_unique_constraint("uq_charge_session_id", ["session_id"])
        batch.drop_column("source")
        batch.drop_column("attempt")
