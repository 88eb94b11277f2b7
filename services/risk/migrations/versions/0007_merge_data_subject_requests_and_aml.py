"""merge data subject requests and aml

Revision ID: 0007
Revises: 0005, 0006
Create Date: 2026-11-25
"""

revision = "0007"
down_revision = ('0005', '0006')
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
