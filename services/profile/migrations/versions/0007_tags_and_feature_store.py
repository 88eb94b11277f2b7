"""tags and feature store: rule tag definitions, rule/external tag values, tag jobs, materialised features

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25 03:23:03.666357
"""
import sqlalchemy as sa
from alembic import op

import services.platform.db

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain CREATE INDEX (not batch mode: the customers table is never copied).
    op.create_index("ix_customers_region_customer_id", "customers", ["region", "customer_id"], unique=False)
    op.create_table("customer_features",
    sa.Column("customer_id", sa.String(length=128), nullable=False),
    sa.Column("name", sa.String(length=128), nullable=False),
    sa.Column("value", sa.Float(), nullable=False),
    sa.Column("as_of", services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("customer_id", "name", name=op.f("pk_customer_features"))
    )
    with op.batch_alter_table("customer_features", schema=None) as batch_op:
        batch_op.create_index("ix_customer_features_name_value", ["name", "value"], unique=False)
    op.create_table("customer_tag_values",
    sa.Column("customer_id", sa.String(length=128), nullable=False),
    sa.Column("name", sa.String(length=32), nullable=False),
    sa.Column("value", sa.String(length=64), nullable=False),
    sa.Column("kind", sa.String(length=16), nullable=False),
    sa.Column("source", sa.String(length=128), nullable=False),
    sa.Column("update_time", services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("customer_id", "name", name=op.f("pk_customer_tag_values"))
    )
    op.create_table("tag_definitions",
    sa.Column("definition_id", sa.String(length=128), nullable=False),
    sa.Column("tag", sa.String(length=32), nullable=False),
    sa.Column("condition_text", sa.Text(), nullable=False),
    sa.Column("value", sa.String(length=64), nullable=False),
    sa.Column("description", sa.String(length=1000), nullable=False),
    sa.Column("create_time", services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("definition_id", name=op.f("pk_tag_definitions"))
    )
    with op.batch_alter_table("tag_definitions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tag_definitions_tag"), ["tag"], unique=False)

    op.create_table("tag_jobs",
    sa.Column("job_id", sa.String(length=128), nullable=False),
    sa.Column("state", sa.String(length=16), nullable=False),
    sa.Column("as_of", services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column("chunk_size", sa.Integer(), nullable=False),
    sa.Column("total_customers", sa.BigInteger(), nullable=False),
    sa.Column("processed_customers", sa.BigInteger(), nullable=False),
    sa.Column("chunks_done", sa.BigInteger(), nullable=False),
    sa.Column("cursor", sa.String(length=128), nullable=True),
    sa.Column("error", sa.String(length=500), nullable=False),
    sa.Column("create_time", services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.Column("update_time", services.platform.db.UtcDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("job_id", name=op.f("pk_tag_jobs"))
    )


def downgrade() -> None:
    op.drop_index("ix_customers_region_customer_id", table_name="customers")
    op.drop_table("tag_jobs")
    with op.batch_alter_table("tag_definitions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tag_definitions_tag"))
    op.drop_table("tag_definitions")
    op.drop_table("customer_tag_values")
    with op.batch_alter_table("customer_features", schema=None) as batch_op:
        batch_op.drop_index("ix_customer_features_name_value")
    op.drop_table("customer_features")
