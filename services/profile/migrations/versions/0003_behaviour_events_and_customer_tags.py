"""behaviour events and customer tags

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-25 01:09:38.786439

A branch beside 0002 (attribute registry); the merge revision joins them.
"""
import sqlalchemy as sa
from alembic import op

import services.platform.db

revision = '0003'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('customer_tags',
    sa.Column('customer_id', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('value', sa.String(length=64), nullable=False),
    sa.Column('source', sa.String(length=32), nullable=False),
    sa.Column('rule_version', sa.String(length=16), nullable=False),
    sa.Column('as_of', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('computed_at', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('customer_id', 'name', name=op.f('pk_customer_tags'))
    )
    op.create_table('events',
    sa.Column('event_id', sa.String(length=128), nullable=False),
    sa.Column('customer_id', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=24), nullable=False),
    sa.Column('occurred_at', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('recorded_at', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('amount', sa.Numeric(precision=18, scale=4), nullable=True),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('direction', sa.String(length=8), nullable=False),
    sa.Column('merchant_category', sa.String(length=64), nullable=False),
    sa.Column('channel', sa.String(length=32), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('target', sa.String(length=128), nullable=False),
    sa.Column('due_date', sa.Date(), nullable=True),
    sa.Column('days_late', sa.Integer(), nullable=True),
    sa.Column('product', sa.String(length=64), nullable=False),
    sa.Column('campaign_id', sa.String(length=128), nullable=False),
    sa.Column('offer_id', sa.String(length=128), nullable=False),
    sa.Column('response_kind', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('event_id', name=op.f('pk_events'))
    )
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_customer_id_occurred_at', ['customer_id', 'occurred_at'], unique=False)
        batch_op.create_index('ix_events_recorded_at', ['recorded_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_recorded_at')
        batch_op.drop_index('ix_events_customer_id_occurred_at')

    op.drop_table('events')
    op.drop_table('customer_tags')
