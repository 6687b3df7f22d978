"""figures that mean one thing (issue 10, items 7, 10, 11)

Revision ID: 0003
Revises: 0002

- ``force``: the job was submitted with ``--force``: the worker measures anew, never from its cache.
- ``metric_eval_batch_size``, ``metric_after_b1``, ``metric_b1_rows``: dynamic int8 scales activations
  per batch, so the metric depends on the batch it is evaluated in; record that batch size, and the
  metric evaluated one row at a time (how a service calls the model) on how many rows.
- ``timing_load_avg``, ``timing_lock_wait_s``: the host's 1-minute load average while latency was
  timed, and how long the job waited for the host-wide timing lock.
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: Union[str, None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.add_column(sa.Column('force', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('metric_eval_batch_size', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('metric_after_b1', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('metric_b1_rows', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('timing_load_avg', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('timing_lock_wait_s', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.drop_column('timing_lock_wait_s')
        batch_op.drop_column('timing_load_avg')
        batch_op.drop_column('metric_b1_rows')
        batch_op.drop_column('metric_after_b1')
        batch_op.drop_column('metric_eval_batch_size')
        batch_op.drop_column('force')
