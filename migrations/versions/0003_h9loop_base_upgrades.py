"""base upgrades: one row per track moved to another base encoder

Revision ID: 0003_h9loop
Revises: 0001
Create Date: 2026-11-24 20:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003_h9loop'
down_revision: str | None = '0004_h12'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('base_upgrades',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('track_id', sa.Integer(), nullable=False),
    sa.Column('from_encoder_id', sa.Integer(), nullable=False),
    sa.Column('to_encoder_id', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('candidate_id', sa.Integer(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('requested_by', sa.String(length=200), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['candidate_id'], ['adapters.id'],
                            name=op.f('fk_base_upgrades_candidate_id_adapters')),
    sa.ForeignKeyConstraint(['from_encoder_id'], ['base_encoders.id'],
                            name=op.f('fk_base_upgrades_from_encoder_id_base_encoders')),
    sa.ForeignKeyConstraint(['to_encoder_id'], ['base_encoders.id'],
                            name=op.f('fk_base_upgrades_to_encoder_id_base_encoders')),
    sa.ForeignKeyConstraint(['track_id'], ['tracks.id'],
                            name=op.f('fk_base_upgrades_track_id_tracks')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_base_upgrades'))
    )
    with op.batch_alter_table('base_upgrades', schema=None) as batch_op:
        batch_op.create_index('ix_base_upgrades_track_id_id', ['track_id', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('base_upgrades', schema=None) as batch_op:
        batch_op.drop_index('ix_base_upgrades_track_id_id')
    op.drop_table('base_upgrades')
