"""jobs.handle, jobs.device: where a launched training runs, so the tick polls it

Revision ID: 0006_h11
Revises: 0005_h14
Create Date: 2026-11-24 23:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006_h11'
down_revision: str | None = '0005_h14'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # plain nullable columns: SQLite adds them in place, no table rebuild
    op.add_column('jobs', sa.Column('handle', sa.String(length=300), nullable=True))
    op.add_column('jobs', sa.Column('device', sa.String(length=50), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('device')
        batch.drop_column('handle')
