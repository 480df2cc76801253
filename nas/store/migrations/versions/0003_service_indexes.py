"""Indexes for the service's job list and subnet scans

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: Sequence[str] | None = None
depends_on: Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_created_at", ["created_at"], unique=False)

    with op.batch_alter_table("subnets", schema=None) as batch_op:
        batch_op.create_index("ix_subnets_job_id", ["job_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("subnets", schema=None) as batch_op:
        batch_op.drop_index("ix_subnets_job_id")

    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_created_at")
