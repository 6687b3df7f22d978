"""own models and data: the job's model source reference (issue 9)

Revision ID: 0004
Revises: 0003

``jobs.model_ref`` holds the ``ModelRef`` (``optimize/sources/ref.py``) as JSON, with every user file
already replaced by its store reference, so a worker on another machine needs nothing but the store.
Null for jobs of a registered model submitted by name only (``model_name`` says everything).
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: Union[str, None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('model_ref', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('model_ref')
