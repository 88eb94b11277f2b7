"""merge tags feature store and pii encryption

Revision ID: 0009
Revises: 0007, 0008
Create Date: 2026-11-25
"""

revision = "0009"
down_revision = ('0007', '0008')
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
