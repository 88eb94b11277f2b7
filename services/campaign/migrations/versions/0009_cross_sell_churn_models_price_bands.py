"""cross-sell and churn models, offer price bands (issue 10)

Revision ID: 0009
Revises: 0005
Create Date: 2026-11-25 03:30:00
"""
import sqlalchemy as sa
from alembic import op

import services.platform.db

revision = '0009'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'cross_sell_models',
        sa.Column('version', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('metrics', sa.JSON(), nullable=False),
        sa.Column('artifact', sa.LargeBinary(), nullable=False),
        sa.Column('create_time', services.platform.db.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('version', name=op.f('pk_cross_sell_models')),
    )
    op.create_table(
        'churn_models',
        sa.Column('version', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('features', sa.JSON(), nullable=False),
        sa.Column('cutoff_time', services.platform.db.UtcDateTime(timezone=True), nullable=False),
        sa.Column('horizon_days', sa.Integer(), nullable=False),
        sa.Column('metrics', sa.JSON(), nullable=False),
        sa.Column('algorithm', sa.String(length=64), nullable=False),
        sa.Column('artifact', sa.LargeBinary(), nullable=False),
        sa.Column('create_time', services.platform.db.UtcDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('version', name=op.f('pk_churn_models')),
    )
    op.create_table(
        'offer_price_bands',
        sa.Column('offer_id', sa.String(length=128), nullable=False),
        sa.Column('rate_min', sa.Float(), nullable=False),
        sa.Column('rate_max', sa.Float(), nullable=False),
        sa.Column('rate_step', sa.Float(), nullable=False),
        sa.Column('fee_waiver_allowed', sa.Boolean(), nullable=False),
        sa.Column('fee_amount', sa.Float(), nullable=False),
        sa.Column('response', sa.JSON(), nullable=False),
        sa.Column('update_time', services.platform.db.UtcDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['offer_id'], ['offers.offer_id'], name=op.f('fk_offer_price_bands_offer_id_offers'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('offer_id', name=op.f('pk_offer_price_bands')),
    )


def downgrade() -> None:
    op.drop_table('offer_price_bands')
    op.drop_table('churn_models')
    op.drop_table('cross_sell_models')
