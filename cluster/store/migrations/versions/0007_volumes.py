"""Volumes: a buyer's persistent, named file trees, committed back by the jobs that mount
them (a chain of manifests in the store); and until when each account's stored bytes
have been billed.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "volumes",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "account_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False, index=True
        ),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("size_limit_bytes", sa.BigInteger, nullable=False),
        sa.Column("head", sa.String(64), nullable=True),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("files", sa.Integer, nullable=False),
        sa.Column("commits", sa.Integer, nullable=False),
        sa.Column("last_error", sa.String(500), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.UniqueConstraint("account_id", "name", name="uq_volumes_name"),
    )
    op.create_table(
        "volume_commits",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "volume_id", sa.String(40), sa.ForeignKey("volumes.id"), nullable=False, index=True
        ),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("base", sa.String(64), nullable=True),
        sa.Column("head", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("lease_id", sa.String(40), nullable=True),
        sa.Column("committed_at", sa.Float, nullable=False),
    )

    op.create_table(
        "storage_meters",
        sa.Column("account_id", sa.String(40), sa.ForeignKey("accounts.id"), primary_key=True),
        sa.Column("until", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("storage_meters")
    op.drop_table("volume_commits")
    op.drop_table("volumes")
