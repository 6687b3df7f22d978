"""runtimes: onnxruntime, openvino, auto (issue 11)

Revision ID: 0005
Revises: 0004

Reserved in the chain so that parallel work can each fill its own revision; a no-op until then.
"""
from typing import Sequence, Union

revision: str = '0005'
down_revision: Union[str, None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
