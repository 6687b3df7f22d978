"""figures that mean one thing (issue 10, items 6-12)

Revision ID: 0003
Revises: 0002

Reserved in the chain so that parallel work can each fill its own revision; a no-op until then.
"""
from typing import Sequence, Union

revision: str = '0003'
down_revision: Union[str, None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
