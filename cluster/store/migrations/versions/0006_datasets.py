"""Datasets: named, immutable versions (a manifest in the store), read-only shares, the
versions a job pinned at submit, and the version a model was trained on.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "account_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False, index=True
        ),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("account_id", "name", name="uq_datasets_name"),
    )
    op.create_table(
        "dataset_versions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "dataset_id", sa.String(40), sa.ForeignKey("datasets.id"), nullable=False, index=True
        ),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("manifest_id", sa.String(64), nullable=False),
        sa.Column("files", sa.Integer, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("dataset_id", "version", name="uq_dataset_versions_version"),
    )
    op.create_table(
        "dataset_shares",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "dataset_id", sa.String(40), sa.ForeignKey("datasets.id"), nullable=False, index=True
        ),
        sa.Column(
            "account_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False, index=True
        ),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("dataset_id", "account_id", name="uq_dataset_shares"),
    )
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("datasets", sa.JSON, nullable=True))
    with op.batch_alter_table("model_versions") as versions:
        versions.add_column(sa.Column("dataset", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as versions:
        versions.drop_column("dataset")
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_column("datasets")
    op.drop_table("dataset_shares")
    op.drop_table("dataset_versions")
    op.drop_table("datasets")
