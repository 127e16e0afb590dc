"""tracks.unservable_on: a track marked "not servable on <base>" after its attempts failed

Revision ID: 0005_h14
Revises: 0001
Create Date: 2026-11-24 20:05:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005_h14'
down_revision: str | None = '0003_h9loop'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # a plain nullable column: SQLite adds it in place, no table rebuild
    op.add_column('tracks', sa.Column('unservable_on', sa.String(length=301), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tracks') as batch:
        batch.drop_column('unservable_on')
