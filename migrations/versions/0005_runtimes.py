"""runtimes: the job row names the runtime its artifact runs in and that runtime's versions (issue 11)

Revision ID: 0005
Revises: 0004

``runtime`` is the runtime that built the artifact (for ``runtime: auto`` the winner); ``runtime_versions``
the versions of its packages. Both nullable: rows from before this revision ran in torch.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

revision: str = '0005'
down_revision: Union[str, None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('runtime', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('runtime_versions', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('runtime_versions')
        batch_op.drop_column('runtime')
