"""outbox lease: claimed_by / claimed_until, so concurrent drains deliver each row once

Revision ID: 0002_h13
Revises: 0001
Create Date: 2026-11-24 20:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002_h13'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_by', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('claimed_until', sa.DateTime(timezone=True),
                                      nullable=True))
        # the claim asks "is there an earlier undelivered row of this key?" per candidate
        batch_op.create_index('ix_outbox_key', ['ordering_key', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_key')
        batch_op.drop_column('claimed_until')
        batch_op.drop_column('claimed_by')
