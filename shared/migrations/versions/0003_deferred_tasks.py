"""deferred_tasks: one-off runs beyond the broker's visibility timeout, published by beat when due

Revision ID: 0003_deferred
Revises: 0002_monitor
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_deferred"
down_revision: str | None = "0002_monitor"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deferred_tasks",
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("task_name", sa.String(length=100), nullable=False),
        sa.Column("queue", sa.String(length=50), nullable=False),
        sa.Column("owner", sa.String(length=100), nullable=False),
        sa.Column("args", sa.JSON(), nullable=False),
        sa.Column("kwargs", sa.JSON(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=True),
        sa.Column("eta", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=12), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("task_id", name=op.f("pk_deferred_tasks")),
    )
    with op.batch_alter_table("deferred_tasks", schema=None) as batch_op:
        batch_op.create_index("ix_deferred_tasks_state_eta", ["state", "eta"], unique=False)
        batch_op.create_index("ix_deferred_tasks_owner_state", ["owner", "state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deferred_tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_deferred_tasks_owner_state")
        batch_op.drop_index("ix_deferred_tasks_state_eta")
    op.drop_table("deferred_tasks")
