"""segments and static segment members

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-25 01:32:42.814329
"""
import sqlalchemy as sa
from alembic import op

import services.platform.db

revision = "0006"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("segments",
    sa.Column("segment_id", sa.String(length=128), nullable=False),
    sa.Column("display_name", sa.String(length=200), nullable=False),
    sa.Column("description", sa.String(length=1000), nullable=False),
    sa.Column("kind", sa.String(length=16), nullable=False),
    sa.Column("condition_text", sa.Text(), nullable=False),
    sa.Column("member_count", sa.Integer(), nullable=False),
    sa.Column("snapshot_time", services.platform.db.UtcDateTime(timezone=True), nullable=True),
    sa.Column("create_time", services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column("update_time", services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("segment_id", name=op.f("pk_segments"))
    )
    op.create_table("segment_members",
    sa.Column("segment_id", sa.String(length=128), nullable=False),
    sa.Column("customer_id", sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(["segment_id"], ["segments.segment_id"],
                            name=op.f("fk_segment_members_segment_id_segments"), ondelete="CASCADE"),
    sa.PrimaryKeyConstraint("segment_id", "customer_id", name=op.f("pk_segment_members"))
    )


def downgrade() -> None:
    op.drop_table("segment_members")
    op.drop_table("segments")
