"""data-subject requests: the ledger (dsr_requests) and one step per service (dsr_steps)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 03:26:39.230234
"""
import sqlalchemy as sa
from alembic import op

import services.platform.db

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dsr_requests',
    sa.Column('request_id', sa.String(length=40), nullable=False),
    sa.Column('client_request_id', sa.String(length=128), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('customer_id', sa.String(length=128), nullable=True),
    sa.Column('customer_hash', sa.String(length=64), nullable=False),
    sa.Column('customer_token', sa.String(length=32), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('reason', sa.String(length=512), nullable=False),
    sa.Column('rejection_reason', sa.String(length=64), nullable=False),
    sa.Column('status_message', sa.Text(), nullable=False),
    sa.Column('proof_digest', sa.String(length=64), nullable=False),
    sa.Column('archive', sa.LargeBinary(), nullable=True),
    sa.Column('archive_size', sa.BigInteger(), nullable=False),
    sa.Column('claimed_by', sa.String(length=128), nullable=True),
    sa.Column('lease_until', services.platform.db.UtcDateTime(timezone=True), nullable=True),
    sa.Column('create_time', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('update_time', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('done_time', services.platform.db.UtcDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('request_id', name=op.f('pk_dsr_requests')),
    sa.UniqueConstraint('client_request_id', name=op.f('uq_dsr_requests_client_request_id'))
    )
    with op.batch_alter_table('dsr_requests', schema=None) as batch_op:
        batch_op.create_index('ix_dsr_requests_customer_hash', ['customer_hash', 'kind'], unique=False)
        batch_op.create_index('ix_dsr_requests_state', ['state'], unique=False)

    op.create_table('dsr_steps',
    sa.Column('request_id', sa.String(length=40), nullable=False),
    sa.Column('service', sa.String(length=16), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('done', sa.Boolean(), nullable=False),
    sa.Column('receipt', sa.LargeBinary(), nullable=True),
    sa.Column('export', sa.LargeBinary(), nullable=True),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('record_count', sa.BigInteger(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=False),
    sa.Column('done_time', services.platform.db.UtcDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['request_id'], ['dsr_requests.request_id'],
                            name=op.f('fk_dsr_steps_request_id_dsr_requests'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('request_id', 'service', name=op.f('pk_dsr_steps'))
    )


def downgrade() -> None:
    op.drop_table('dsr_steps')
    with op.batch_alter_table('dsr_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_dsr_requests_state')
        batch_op.drop_index('ix_dsr_requests_customer_hash')
    op.drop_table('dsr_requests')
