"""fraud events

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 02:03:38.261842
"""
import sqlalchemy as sa
from alembic import op

import services.platform.db

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('fraud_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('partner_id', sa.String(length=128), nullable=False),
    sa.Column('customer_id', sa.String(length=128), nullable=True),
    sa.Column('device_key', sa.String(length=64), nullable=True),
    sa.Column('phone_key', sa.String(length=64), nullable=True),
    sa.Column('ip_key', sa.String(length=64), nullable=True),
    sa.Column('event_time', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('features', sa.JSON(), nullable=False),
    sa.Column('decision', sa.String(length=16), nullable=False),
    sa.Column('suspected', sa.Boolean(), nullable=False),
    sa.Column('anomaly_score', sa.Float(), nullable=True),
    sa.Column('create_time', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fraud_events'))
    )
    with op.batch_alter_table('fraud_events', schema=None) as batch_op:
        batch_op.create_index('ix_fraud_events_customer', ['customer_id', 'event_time'], unique=False)
        batch_op.create_index('ix_fraud_events_device', ['device_key', 'event_time'], unique=False)
        batch_op.create_index('ix_fraud_events_ip', ['ip_key', 'event_time'], unique=False)
        batch_op.create_index('ix_fraud_events_phone', ['phone_key', 'event_time'], unique=False)

    op.create_table('fraud_locks',
    sa.Column('lock_key', sa.String(length=200), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('lock_key', name=op.f('pk_fraud_locks'))
    )


def downgrade() -> None:
    op.drop_table('fraud_locks')
    with op.batch_alter_table('fraud_events', schema=None) as batch_op:
        batch_op.drop_index('ix_fraud_events_phone')
        batch_op.drop_index('ix_fraud_events_ip')
        batch_op.drop_index('ix_fraud_events_device')
        batch_op.drop_index('ix_fraud_events_customer')

    op.drop_table('fraud_events')
