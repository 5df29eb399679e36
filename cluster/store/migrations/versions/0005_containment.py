"""Containment: a job's run folder chosen by the coordinator (never by its upload), the
size of its upload while it is kept (per-buyer quota), the files a lease's sandboxes
see, and when a lease's head started (to tell it from a reused PID after a restart).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("run_dir", sa.String(500), nullable=True))
        jobs.add_column(sa.Column("upload_bytes", sa.BigInteger, nullable=True))
    with op.batch_alter_table("leases") as leases:
        leases.add_column(sa.Column("files", sa.JSON, nullable=True))
        leases.add_column(sa.Column("head_started", sa.String(40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("leases") as leases:
        leases.drop_column("head_started")
        leases.drop_column("files")
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_column("upload_bytes")
        jobs.drop_column("run_dir")
