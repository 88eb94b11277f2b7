"""decision snapshots for re-evaluation

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 02:03:02.155242
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('snapshot', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('snapshot_hash', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('max_offers', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('action_probability', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.drop_column('action_probability')
        batch_op.drop_column('max_offers')
        batch_op.drop_column('snapshot_hash')
        batch_op.drop_column('snapshot')
