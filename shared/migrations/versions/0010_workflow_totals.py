"""workflow totals: what the retention deleted, kept for the monitor's workflow counters; the workflows'
newest-first index


``cleanup_expired_data`` deletes finished workflows older than ``MALLOPS_WORKFLOW_TTL_DAYS`` (and their
steps); the monitor's ``mallops_workflows_*`` counters are read from the table, so the deleted ones' counts
are added here, per name, in the same transaction. ``ix_workflows_created``: the unfiltered listing
(``GET /api/v1/workflows``, the console's Workflows page), newest first, read 25 rows instead of scanning
and sorting the table (SQLite, 20,000 workflows: 60 ms to a few).

Revision ID: 0010_workflow_totals
Revises: 0009_history_newest_first
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_workflow_totals"
down_revision: str | None = "0009_history_newest_first"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workflow_totals",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("started", sa.BigInteger(), nullable=False),
        sa.Column("succeeded", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.Column("duration_sum", sa.Float(), nullable=False),
        sa.Column("duration_buckets", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_workflow_totals")),
    )
    with op.batch_alter_table("workflows", schema=None) as batch_op:
        batch_op.create_index("ix_workflows_created", ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("workflows", schema=None) as batch_op:
        batch_op.drop_index("ix_workflows_created")
    op.drop_table("workflow_totals")
