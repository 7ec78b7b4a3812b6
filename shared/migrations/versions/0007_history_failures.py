"""task history: a failure's traceback, the task's arguments as JSON, the task a retry repeats

Revision ID: 0007_failures
Revises: 0006_requeues
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_failures"
down_revision: str | None = "0006_requeues"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("task_history", schema=None) as batch_op:
        batch_op.add_column(sa.Column("arguments", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("traceback", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("retry_of", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_task_history_retry_of"), ["retry_of"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("task_history", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_task_history_retry_of"))
        batch_op.drop_column("retry_of")
        batch_op.drop_column("traceback")
        batch_op.drop_column("arguments")
