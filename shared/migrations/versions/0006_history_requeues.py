"""task_history.requeues: how often the current delivery's message had been put back by a requeuer

Revision ID: 0006_requeues
Revises: 0005_request_id
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_requeues"
down_revision: str | None = "0005_request_id"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("task_history") as batch:
        batch.add_column(sa.Column("requeues", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("task_history") as batch:
        batch.drop_column("requeues")
