"""delivery state and status callbacks

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 03:23:36.182995
"""
import sqlalchemy as sa
from alembic import op

import services.platform.db

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('campaign_deliveries',
    sa.Column('delivery_key', sa.String(length=200), nullable=False),
    sa.Column('outbox_id', sa.Integer(), nullable=False),
    sa.Column('launch_id', sa.String(length=32), nullable=False),
    sa.Column('channel', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('next_attempt_time', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('claimed_by', sa.String(length=128), nullable=True),
    sa.Column('lease_until', services.platform.db.UtcDateTime(timezone=True), nullable=True),
    sa.Column('in_flight', sa.Boolean(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('deferrals', sa.Integer(), nullable=False),
    sa.Column('reservation_generation', sa.Integer(), nullable=False),
    sa.Column('last_reason', sa.String(length=64), nullable=False),
    sa.Column('provider_message_id', sa.String(length=200), nullable=False),
    sa.Column('sent_time', services.platform.db.UtcDateTime(timezone=True), nullable=True),
    sa.Column('dead_time', services.platform.db.UtcDateTime(timezone=True), nullable=True),
    sa.Column('delivery_status', sa.String(length=16), nullable=False),
    sa.Column('delivery_status_time', services.platform.db.UtcDateTime(timezone=True), nullable=True),
    sa.Column('opened_time', services.platform.db.UtcDateTime(timezone=True), nullable=True),
    sa.Column('clicked_time', services.platform.db.UtcDateTime(timezone=True), nullable=True),
    sa.Column('ignored_callbacks', sa.Integer(), nullable=False),
    sa.Column('create_time', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('update_time', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('delivery_key', name=op.f('pk_campaign_deliveries')),
    sa.UniqueConstraint('outbox_id', name=op.f('uq_campaign_deliveries_outbox_id'))
    )
    with op.batch_alter_table('campaign_deliveries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_campaign_deliveries_launch_id'), ['launch_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_campaign_deliveries_provider_message_id'),
                              ['provider_message_id'], unique=False)
        batch_op.create_index('ix_campaign_deliveries_state_next_attempt_time', ['state', 'next_attempt_time'],
                              unique=False)

    with op.batch_alter_table('campaign_outbox', schema=None) as batch_op:
        batch_op.create_index('ix_campaign_outbox_state_id', ['state', 'id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('campaign_outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_campaign_outbox_state_id')

    with op.batch_alter_table('campaign_deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_campaign_deliveries_state_next_attempt_time')
        batch_op.drop_index(batch_op.f('ix_campaign_deliveries_provider_message_id'))
        batch_op.drop_index(batch_op.f('ix_campaign_deliveries_launch_id'))

    op.drop_table('campaign_deliveries')
