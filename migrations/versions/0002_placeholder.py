"""ownership and host clocks (issue 10, items 2-5, 13-15)

Revision ID: 0002
Revises: 0001

Reserved in the chain so that parallel work can each fill its own revision; a no-op until then.
"""
from typing import Sequence, Union

revision: str = '0002'
down_revision: Union[str, None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
