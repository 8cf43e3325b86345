"""A session keeps the tariff's steps its settlement used (receipts).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08

Self-contained (no imports from the application), like 0001. Sessions settled before have
none: their receipts price them again by the tariff as it is then, and say so.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("session", sa.Column("breakdown", sa.Text(), nullable=True))


def downgrade() -> None:
    # A plain ALTER TABLE ... DROP COLUMN (SQLite 3.35 or newer): rebuilding ``session``
    # (batch mode) would drop a table that other tables' foreign keys name.
    op.drop_column("session", "breakdown")
