"""merge the attribute registry/import branch (0002) and the events/features branch (0003)

Revision ID: 0004
Revises: 0002, 0003
Create Date: 2026-11-25
"""

revision = "0004"
down_revision = ("0002", "0003")
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
