"""aml monitoring: transactions, cases, alerts, rule sets

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-25 03:40:00.000000
"""
import sqlalchemy as sa
from alembic import op

import services.platform.db

revision = '0006'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('aml_cases',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('customer_id', sa.String(length=128), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('alert_count', sa.Integer(), nullable=False),
    sa.Column('rules', sa.JSON(), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('create_time', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('update_time', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_aml_cases'))
    )
    op.create_index('ix_aml_cases_customer', 'aml_cases', ['customer_id', 'state'], unique=False)
    op.create_index('ix_aml_cases_state', 'aml_cases', ['state'], unique=False)
    op.create_table('aml_rule_sets',
    sa.Column('version', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('rules', sa.JSON(), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('create_time', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('version', name=op.f('pk_aml_rule_sets'))
    )
    op.create_table('aml_transactions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('transaction_id', sa.String(length=128), nullable=False),
    sa.Column('customer_id', sa.String(length=128), nullable=False),
    sa.Column('occurred_at', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('amount', sa.Float(), nullable=False),
    sa.Column('currency', sa.String(length=3), nullable=False),
    sa.Column('direction', sa.String(length=3), nullable=False),
    sa.Column('country', sa.String(length=2), nullable=False),
    sa.Column('counterparty_key', sa.String(length=64), nullable=False),
    sa.Column('channel', sa.String(length=32), nullable=False),
    sa.Column('create_time', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_aml_transactions')),
    sa.UniqueConstraint('transaction_id', name=op.f('uq_aml_transactions_transaction_id'))
    )
    op.create_index('ix_aml_transactions_customer', 'aml_transactions', ['customer_id', 'occurred_at'], unique=False)
    op.create_table('aml_alerts',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('customer_id', sa.String(length=128), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=False),
    sa.Column('rule', sa.String(length=32), nullable=False),
    sa.Column('reasons', sa.JSON(), nullable=False),
    sa.Column('detail', sa.String(length=256), nullable=False),
    sa.Column('amount', sa.Float(), nullable=False),
    sa.Column('anomaly_score', sa.Float(), nullable=False),
    sa.Column('window_start', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('window_end', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column('transaction_ids', sa.JSON(), nullable=False),
    sa.Column('rules_version', sa.String(length=16), nullable=False),
    sa.Column('create_time', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['case_id'], ['aml_cases.id'], name=op.f('fk_aml_alerts_case_id_aml_cases')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_aml_alerts'))
    )
    op.create_index('ix_aml_alerts_case', 'aml_alerts', ['case_id'], unique=False)
    op.create_index('ix_aml_alerts_customer', 'aml_alerts', ['customer_id', 'rule', 'window_end'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_aml_alerts_customer', table_name='aml_alerts')
    op.drop_index('ix_aml_alerts_case', table_name='aml_alerts')
    op.drop_table('aml_alerts')
    op.drop_index('ix_aml_transactions_customer', table_name='aml_transactions')
    op.drop_table('aml_transactions')
    op.drop_table('aml_rule_sets')
    op.drop_index('ix_aml_cases_state', table_name='aml_cases')
    op.drop_index('ix_aml_cases_customer', table_name='aml_cases')
    op.drop_table('aml_cases')
