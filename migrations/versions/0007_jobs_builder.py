"""Which code built a result: jobs.builder_sha256

Revision ID: 0007
Revises: 0006

A producer hands out an old row instead of running a job only when the row was built by the code it
runs itself (and by the runtime packages it has); rows from before this column are never reused.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

revision: str = '0007'
down_revision: Union[str, None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.add_column(sa.Column('builder_sha256', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.drop_column('builder_sha256')
