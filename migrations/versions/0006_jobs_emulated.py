"""ARM worker under emulation (issue 12): jobs.emulated

Revision ID: 0006
Revises: 0005

A job run by an emulated worker (tools/arm-worker: aarch64 under user-mode QEMU) says how it was
emulated; NULL means native. Reports label such latencies and never compare them with native ones.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

revision: str = '0006'
down_revision: Union[str, None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.add_column(sa.Column('emulated', sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.drop_column('emulated')
