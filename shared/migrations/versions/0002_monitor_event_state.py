"""monitor: per-task event mask and progress; persisted metric series

Revision ID: 0002_monitor
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_monitor"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("task_history", schema=None) as batch_op:
        batch_op.add_column(sa.Column("event_mask", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("progress_current", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("progress_total", sa.Integer(), nullable=True))

    op.create_table(
        "monitor_metrics",
        sa.Column("key", sa.String(length=1000), nullable=False),
        sa.Column("hostname", sa.String(length=200), nullable=True),
        sa.Column("value", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_monitor_metrics")),
    )
    with op.batch_alter_table("monitor_metrics", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_monitor_metrics_hostname"), ["hostname"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("monitor_metrics", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_monitor_metrics_hostname"))
    op.drop_table("monitor_metrics")
    with op.batch_alter_table("task_history", schema=None) as batch_op:
        batch_op.drop_column("progress_total")
        batch_op.drop_column("progress_current")
        batch_op.drop_column("event_mask")
