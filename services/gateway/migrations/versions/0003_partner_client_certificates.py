"""partner client certificates

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 02:03:08.309892
"""
import sqlalchemy as sa
from alembic import op

import services.platform.db

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('partner_client_certs',
    sa.Column('partner_id', sa.String(length=128), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('subject_cn', sa.String(length=255), nullable=False),
    sa.Column('create_time', services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['partner_id'], ['partners.partner_id'],
                            name=op.f('fk_partner_client_certs_partner_id_partners')),
    sa.PrimaryKeyConstraint('partner_id', name=op.f('pk_partner_client_certs')),
    sa.UniqueConstraint('fingerprint', name=op.f('uq_partner_client_certs_fingerprint'))
    )


def downgrade() -> None:
    op.drop_table('partner_client_certs')
