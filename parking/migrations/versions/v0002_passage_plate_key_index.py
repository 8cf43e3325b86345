"""Index passages by (lot_id, direction, plate_key): how a read finds the passages it may join.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

Self-contained (no imports from the application), like 0001. A plain ``CREATE INDEX``,
on SQLite and PostgreSQL alike (PostgreSQL runs it inside the migration's transaction; it
locks ``passage`` against writes while it builds, which is brief at a lot's volumes).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_passage_lot_id_direction_plate_key"


def upgrade() -> None:
    op.create_index(INDEX, "passage", ["lot_id", "direction", "plate_key"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="passage")
