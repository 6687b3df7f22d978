"""A long step's progress while it runs (issue 22 item 3): jobs.progress

Revision ID: 0008
Revises: 0007

A training step (distillation, fine-tuning) runs for minutes; the worker writes the latest progress it
reports (a small JSON object: step, iteration of total, loss, validation, elapsed seconds) here, so
``modelpress show`` and ``modelpress wait`` can say how far the job is. NULL for jobs that report none.
A plain JSON column, as 0004's ``model_ref``: JSON on PostgreSQL, TEXT holding JSON on SQLite (batch mode).
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: Union[str, None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('progress', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('progress')
