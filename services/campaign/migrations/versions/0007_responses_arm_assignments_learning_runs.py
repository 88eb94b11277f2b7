"""Responses, real-time arm assignments, learning-loop runs, and campaigns.arm_selection (Thompson sampling).

Only this branch's tables and column (parallel branches add their own; the lead merges the heads).

Revision ID: 0007
Revises: 0005
Create Date: 2026-11-25 03:24:04.998773
"""
import sqlalchemy as sa
from alembic import op

import services.platform.db

revision = '0007'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('campaign_arm_assignments',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('campaign_id', sa.String(length=128), nullable=False),
    sa.Column('customer_id', sa.String(length=128), nullable=False),
    sa.Column('arm_id', sa.String(length=64), nullable=False),
    sa.Column('offer_id', sa.String(length=128), nullable=False),
    sa.Column('channel', sa.Integer(), nullable=False),
    sa.Column('probability', sa.Float(), nullable=False),
    sa.Column('decision_id', sa.String(length=32), nullable=False),
    sa.Column('assign_time', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_campaign_arm_assignments')),
    sa.UniqueConstraint('campaign_id', 'customer_id', name=op.f('uq_campaign_arm_assignments_campaign_id_customer_id'))
    )
    with op.batch_alter_table('campaign_arm_assignments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_campaign_arm_assignments_campaign_id'), ['campaign_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_campaign_arm_assignments_customer_id'), ['customer_id'], unique=False)

    op.create_table('campaign_learning_runs',
    sa.Column('campaign_id', sa.String(length=128), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('claimed_by', sa.String(length=128), nullable=True),
    sa.Column('lease_until', services.platform.db.UtcDateTime(timezone=True), nullable=True),
    sa.Column('history_rows', sa.Integer(), nullable=False),
    sa.Column('model_versions', sa.JSON(), nullable=False),
    sa.Column('status_message', sa.Text(), nullable=False),
    sa.Column('create_time', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('done_time', services.platform.db.UtcDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('campaign_id', name=op.f('pk_campaign_learning_runs'))
    )
    with op.batch_alter_table('campaign_learning_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_campaign_learning_runs_state'), ['state'], unique=False)

    op.create_table('campaign_responses',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('campaign_id', sa.String(length=128), nullable=False),
    sa.Column('arm_id', sa.String(length=64), nullable=False),
    sa.Column('customer_id', sa.String(length=128), nullable=False),
    sa.Column('offer_id', sa.String(length=128), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('response_time', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('response_day', sa.String(length=10), nullable=False),
    sa.Column('contact_time', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('revenue', sa.Float(), nullable=False),
    sa.Column('currency_code', sa.String(length=3), nullable=False),
    sa.Column('delivery_key', sa.String(length=200), nullable=False),
    sa.Column('decision_id', sa.String(length=32), nullable=False),
    sa.Column('event_id', sa.String(length=200), nullable=False),
    sa.Column('create_time', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_campaign_responses')),
    sa.UniqueConstraint('campaign_id', 'customer_id', 'outcome',
                        name=op.f('uq_campaign_responses_campaign_id_customer_id_outcome'))
    )
    with op.batch_alter_table('campaign_responses', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_campaign_responses_campaign_id'), ['campaign_id'], unique=False)

    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.add_column(sa.Column('arm_selection', sa.String(length=24), server_default='FIXED_SHARES',
                                      nullable=False))



def downgrade() -> None:
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.drop_column('arm_selection')

    with op.batch_alter_table('campaign_responses', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_campaign_responses_campaign_id'))

    op.drop_table('campaign_responses')
    with op.batch_alter_table('campaign_learning_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_campaign_learning_runs_state'))

    op.drop_table('campaign_learning_runs')
    with op.batch_alter_table('campaign_arm_assignments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_campaign_arm_assignments_customer_id'))
        batch_op.drop_index(batch_op.f('ix_campaign_arm_assignments_campaign_id'))

    op.drop_table('campaign_arm_assignments')
