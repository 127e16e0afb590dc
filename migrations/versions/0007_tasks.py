"""tasks: a task's name and fixed label set; datasets.task, kind, meta for a task's data

The one task that existed before (`emoji-group`, the CLDR demo task whose labels were a
constant in the code) becomes an ordinary row. The `cldr-emoji` datasets registered before
stay as they are (task NULL: the lineage of the adapters trained on them); the task's data
is registered again, normalised into the store, by controller.data.cldr.register_task.

Revision ID: 0007_tasks
Revises: 0006_h11
Create Date: 2026-12-07 16:00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = '0007_tasks'
down_revision: str | None = '0006_h11'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# the label list the code held for emoji-group before this revision (a head's index order)
EMOJI_GROUP_LABELS = ["Smileys & Emotion", "People & Body", "Animals & Nature",
                      "Food & Drink", "Travel & Places", "Activities", "Objects", "Symbols"]


def upgrade() -> None:
    tasks = op.create_table(
        'tasks',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=100), nullable=False),
        sa.Column('labels', sa.JSON(), nullable=False),
        sa.Column('description', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('created_by', sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_tasks')),
        sa.UniqueConstraint('name', name=op.f('uq_tasks_name')),
    )
    op.add_column('datasets', sa.Column('task', sa.String(length=100), nullable=True))
    op.add_column('datasets', sa.Column('kind', sa.String(length=20), nullable=True))
    op.add_column('datasets', sa.Column('meta', sa.JSON(), nullable=True))
    op.create_index(op.f('ix_datasets_task'), 'datasets', ['task'], unique=False)

    conn = op.get_bind()
    used = {row[0] for row in conn.execute(sa.text(
        "SELECT task FROM adapters UNION SELECT task FROM tracks"))}
    had_cldr = conn.execute(sa.text(
        "SELECT count(*) FROM datasets WHERE name = 'cldr-emoji'")).scalar()
    if 'emoji-group' in used or had_cldr:
        op.bulk_insert(tasks, [{
            'name': 'emoji-group', 'labels': EMOJI_GROUP_LABELS,
            'description': 'Unicode emoji group of a CLDR emoji name or keyword list',
            'created_at': datetime.now(UTC), 'created_by': 'migration 0007'}])


def downgrade() -> None:
    op.drop_index(op.f('ix_datasets_task'), table_name='datasets')
    with op.batch_alter_table('datasets') as batch:
        batch.drop_column('meta')
        batch.drop_column('kind')
        batch.drop_column('task')
    op.drop_table('tasks')
