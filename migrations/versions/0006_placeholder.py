"""ARM worker under emulation (issue 12)

Revision ID: 0006
Revises: 0005

Reserved in the chain so that parallel work can each fill its own revision; a no-op until then.
"""
from typing import Sequence, Union

revision: str = '0006'
down_revision: Union[str, None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
