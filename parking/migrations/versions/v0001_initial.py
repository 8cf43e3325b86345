"""Initial parking ledger schema: reads, dead letters, passages, sessions, money.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Self-contained on purpose (no imports from the application): this revision must keep
creating the same schema whatever the models become. Instants are ``timestamptz`` on
PostgreSQL and UTC text on SQLite (see ``tables.UTCDateTime``).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEAD_REASONS = (
    "too_large",
    "not_utf8",
    "malformed_json",
    "not_an_object",
    "missing_field",
    "bad_field",
    "bad_direction",
    "confidence_out_of_range",
    "bad_ts",
    "naive_ts",
    "empty_plate",
    "lot_mismatch",
    "unknown_lot",
    "read_id_conflict",
)


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _text(name: str, *, nullable: bool = False) -> sa.Column[str]:
    return sa.Column(name, sa.String(), nullable=nullable)


def _utc(name: str, *, nullable: bool = False) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _check(sql: str, name: str) -> sa.CheckConstraint:
    return sa.CheckConstraint(sql, name=op.f(name))


def _fk(column: str, target: str, name: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint([column], [target], name=op.f(name))


def upgrade() -> None:
    op.create_table(
        "binding",
        _text("plate"),
        _text("account"),
        _utc("bound_at"),
        sa.PrimaryKeyConstraint("plate", name=op.f("pk_binding")),
    )
    op.create_table(
        "dead_letter",
        sa.Column("id", sa.Integer(), nullable=False),
        _text("digest"),
        _text("topic"),
        _text("lot_id"),
        _text("read_id", nullable=True),
        _text("reason"),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("payload_text", sa.Text(), nullable=True),
        _utc("received_at"),
        _check(_in("reason", DEAD_REASONS), "ck_dead_letter_reason"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letter")),
        sa.UniqueConstraint("digest", name=op.f("uq_dead_letter_digest")),
    )
    op.create_index(op.f("ix_dead_letter_lot_id"), "dead_letter", ["lot_id"])
    op.create_table(
        "passage",
        sa.Column("id", sa.Integer(), nullable=False),
        _text("passage_id"),
        _text("lot_id"),
        _text("direction"),
        _text("plate"),
        _text("plate_key"),
        _utc("first_ts"),
        _utc("last_ts"),
        _check(_in("direction", ("in", "out")), "ck_passage_direction"),
        _check("first_ts <= last_ts", "ck_passage_span"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_passage")),
        sa.UniqueConstraint("passage_id", name=op.f("uq_passage_passage_id")),
    )
    op.create_index(
        op.f("ix_passage_lot_id_direction_plate"), "passage", ["lot_id", "direction", "plate"]
    )
    op.create_table(
        "read",
        sa.Column("id", sa.Integer(), nullable=False),
        _text("read_id"),
        _text("lot_id"),
        _text("camera_id"),
        _text("direction"),
        _text("raw_plate"),
        _text("plate"),
        sa.Column("confidence", sa.Float(), nullable=False),
        _utc("ts"),
        _utc("received_at"),
        sa.Column("payload", sa.Text(), nullable=False),
        _check(_in("direction", ("in", "out")), "ck_read_direction"),
        _check("confidence >= 0 AND confidence <= 1", "ck_read_confidence"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_read")),
        sa.UniqueConstraint("read_id", name=op.f("uq_read_read_id")),
    )
    op.create_table(
        "passage_read",
        _text("read_id"),
        _text("passage_id"),
        _fk("passage_id", "passage.passage_id", "fk_passage_read_passage_id_passage"),
        _fk("read_id", "read.read_id", "fk_passage_read_read_id_read"),
        sa.PrimaryKeyConstraint("read_id", name=op.f("pk_passage_read")),
    )
    op.create_index(op.f("ix_passage_read_passage_id"), "passage_read", ["passage_id"])
    op.create_table(
        "pending_exit",
        _text("passage_id"),
        _text("lot_id"),
        _text("plate"),
        _text("plate_key"),
        _utc("at"),
        _utc("since"),
        _text("reason"),
        sa.Column("candidates", sa.Text(), nullable=False),
        _check(_in("reason", ("no_entry", "ambiguous")), "ck_pending_exit_reason"),
        _fk("passage_id", "passage.passage_id", "fk_pending_exit_passage_id_passage"),
        sa.PrimaryKeyConstraint("passage_id", name=op.f("pk_pending_exit")),
    )
    op.create_index(
        op.f("ix_pending_exit_lot_id_plate_key"), "pending_exit", ["lot_id", "plate_key"]
    )
    op.create_table(
        "session",
        _text("session_id"),
        _text("lot_id"),
        _text("plate"),
        _text("plate_key"),
        _text("status"),
        _utc("received_at"),
        _text("entry_passage_id", nullable=True),
        _utc("entry_at", nullable=True),
        _text("exit_passage_id", nullable=True),
        _utc("exit_at", nullable=True),
        _text("exit_plate", nullable=True),
        _text("matched_by", nullable=True),
        _text("review_reason", nullable=True),
        sa.Column("related", sa.Text(), nullable=False),
        sa.Column("fee_cents", sa.BigInteger(), nullable=True),
        _text("account", nullable=True),
        sa.Column("charged", sa.Boolean(), nullable=False),
        _check(_in("status", ("open", "settled", "unpaid", "review")), "ck_session_status"),
        _check(
            "matched_by IS NULL OR " + _in("matched_by", ("exact", "lookalike")),
            "ck_session_matched",
        ),
        _check(
            "review_reason IS NULL OR "
            + _in("review_reason", ("no_entry", "ambiguous", "no_exit", "conflict")),
            "ck_session_review_reason",
        ),
        _check("entry_at IS NOT NULL OR exit_at IS NOT NULL", "ck_session_has_passage"),
        _check("fee_cents IS NULL OR fee_cents >= 0", "ck_session_fee"),
        _check(
            "status NOT IN ('settled', 'unpaid') OR fee_cents IS NOT NULL",
            "ck_session_decided_fee",
        ),
        _check("status <> 'unpaid' OR fee_cents > 0", "ck_session_debt"),
        _check(
            "NOT charged OR (status = 'settled' AND account IS NOT NULL AND fee_cents > 0)",
            "ck_session_charged",
        ),
        _fk("entry_passage_id", "passage.passage_id", "fk_session_entry_passage_id_passage"),
        _fk("exit_passage_id", "passage.passage_id", "fk_session_exit_passage_id_passage"),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_session")),
        sa.UniqueConstraint("entry_passage_id", name=op.f("uq_session_entry_passage_id")),
        sa.UniqueConstraint("exit_passage_id", name=op.f("uq_session_exit_passage_id")),
    )
    op.create_index(op.f("ix_session_lot_id_plate_key"), "session", ["lot_id", "plate_key"])
    op.create_index(op.f("ix_session_lot_id_status"), "session", ["lot_id", "status"])
    op.create_index(op.f("ix_session_plate_status"), "session", ["plate", "status"])
    op.create_table(
        "charge",
        sa.Column("id", sa.Integer(), nullable=False),
        _text("session_id"),
        _text("account"),
        sa.Column("cents", sa.BigInteger(), nullable=False),
        _utc("charged_at"),
        _check("cents > 0", "ck_charge_cents"),
        _fk("session_id", "session.session_id", "fk_charge_session_id_session"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_charge")),
        sa.UniqueConstraint("session_id", name=op.f("uq_charge_session_id")),
    )
    op.create_index(op.f("ix_charge_account"), "charge", ["account"])


def downgrade() -> None:
    for table in (
        "charge",
        "session",
        "pending_exit",
        "passage_read",
        "read",
        "passage",
        "dead_letter",
        "binding",
    ):
        op.drop_table(table)
