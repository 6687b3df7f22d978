"""own models and data: model sources and data files (issue 9)

Revision ID: 0004
Revises: 0003

Reserved in the chain so that parallel work can each fill its own revision; a no-op until then.
"""
from typing import Sequence, Union

revision: str = '0004'
down_revision: Union[str, None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
