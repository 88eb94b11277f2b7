"""pii encryption at rest: customer data keys and the encrypted PII values of customers

Revision ID: 0008
Revises: 0006
Create Date: 2026-11-25 03:40:00.000000
"""
import sqlalchemy as sa
from alembic import op

import services.platform.db

revision = "0008"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("customer_keys",
    sa.Column("customer_id", sa.String(length=128), nullable=False),
    sa.Column("key_id", sa.String(length=16), nullable=False),
    sa.Column("master_key_id", sa.String(length=32), nullable=False),
    sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
    sa.Column("create_time", services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column("update_time", services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_customer_keys")),
    sqlite_with_rowid=False,
    )

    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pii", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("customers", schema=None) as batch_op:
        batch_op.drop_column("pii")

    op.drop_table("customer_keys")
