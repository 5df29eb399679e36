"""Jobs, leases and their members, the double-entry ledger, seller reliability counters.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sellers") as batch:
        batch.add_column(
            sa.Column("leases_completed", sa.Integer, nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("leases_lost", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "account_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False, index=True
        ),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("state", sa.String(20), nullable=False, index=True),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("lease_id", sa.String(40), nullable=True),
        sa.Column("upload_path", sa.String(500), nullable=True),
        sa.Column("submission_id", sa.String(100), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("ended_at", sa.Float, nullable=True),
    )
    op.create_table(
        "leases",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "account_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False, index=True
        ),
        sa.Column("job_id", sa.String(40), nullable=True),
        sa.Column("state", sa.String(20), nullable=False, index=True),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("token", sa.String(100), nullable=False),
        sa.Column("port_base", sa.Integer, nullable=False),
        sa.Column("head_session", sa.Integer, nullable=True),
        sa.Column("price_per_hour_micros", sa.BigInteger, nullable=False),
        sa.Column("escrow_micros", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("ended_at", sa.Float, nullable=True),
        sa.Column("deadline", sa.Float, nullable=False),
    )
    op.create_table(
        "lease_members",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "lease_id", sa.String(40), sa.ForeignKey("leases.id"), nullable=False, index=True
        ),
        sa.Column(
            "seller_id", sa.String(40), sa.ForeignKey("sellers.id"), nullable=False, index=True
        ),
        sa.Column("gpus", sa.Integer, nullable=False),
        sa.Column("ask_micros", sa.BigInteger, nullable=False),
        sa.Column("price_micros", sa.BigInteger, nullable=False),
        sa.Column("driver", sa.Boolean, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("assigned_at", sa.Float, nullable=False),
        sa.Column("attached_at", sa.Float, nullable=True),
        sa.Column("detached_at", sa.Float, nullable=True),
    )
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("txn_id", sa.String(40), nullable=False, index=True),
        sa.Column("account", sa.String(80), nullable=False, index=True),
        sa.Column("amount_micros", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("ref", sa.String(80), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("ledger_entries", "lease_members", "leases", "jobs"):
        op.drop_table(table)
    with op.batch_alter_table("sellers") as batch:
        batch.drop_column("leases_lost")
        batch.drop_column("leases_completed")
