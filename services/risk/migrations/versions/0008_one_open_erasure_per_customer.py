"""one open erasure per customer: a partial unique index on dsr_requests

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-25 04:32:23.583159

Two first StartErasureRequest calls for the same customer (different request ids) could both record a request
before; the index makes the second insert fail, and its start answers the first (dsr.py). A database that already
holds two open erasures of one customer keeps the oldest open: the others are REJECTED `DUPLICATE_REQUEST`
(never started work of their own that the oldest does not also do; their customer id is cleared as for any ended
request) before the index is built.
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

OPEN_ERASURE = "kind = 'ERASURE' AND state IN ('PENDING', 'RUNNING')"


def upgrade() -> None:
    op.execute(sa.text(
        "UPDATE dsr_requests SET state = 'REJECTED', rejection_reason = 'DUPLICATE_REQUEST', "
        "status_message = 'another erasure of this customer was already open', customer_id = NULL, "
        "claimed_by = NULL, lease_until = NULL "
        "WHERE kind = 'ERASURE' AND state IN ('PENDING', 'RUNNING') AND EXISTS (SELECT 1 FROM dsr_requests AS earlier "
        "WHERE earlier.customer_hash = dsr_requests.customer_hash AND earlier.kind = 'ERASURE' "
        "AND earlier.state IN ('PENDING', 'RUNNING') AND (earlier.create_time < dsr_requests.create_time "
        "OR (earlier.create_time = dsr_requests.create_time AND earlier.request_id < dsr_requests.request_id)))"))
    with op.batch_alter_table('dsr_requests', schema=None) as batch_op:
        batch_op.create_index('ix_dsr_requests_open_erasure', ['customer_hash'], unique=True,
                              sqlite_where=sa.text(OPEN_ERASURE), postgresql_where=sa.text(OPEN_ERASURE))


def downgrade() -> None:
    with op.batch_alter_table('dsr_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_dsr_requests_open_erasure')
