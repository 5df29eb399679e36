"""Accounts, API keys, invites, sellers and offers.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("role", sa.String(20), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "account_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False, index=True
        ),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
    )
    op.create_table(
        "invites",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("note", sa.String(200), nullable=False),
        sa.Column("redeemed_at", sa.Float, nullable=True),
        sa.Column("redeemed_by_key", sa.String(64), nullable=True),
        sa.Column("seller_id", sa.String(40), nullable=True),
    )
    op.create_table(
        "sellers",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "account_id", sa.String(40), sa.ForeignKey("accounts.id"), nullable=False, unique=True
        ),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("public_key", sa.String(64), nullable=False, unique=True),
        sa.Column("address", sa.String(45), nullable=False, unique=True),
        sa.Column("address_int", sa.BigInteger, nullable=False, unique=True),
        sa.Column("state", sa.String(20), nullable=False, index=True),
        sa.Column("endpoint", sa.String(100), nullable=True),
        sa.Column("behind_nat", sa.Boolean, nullable=False),
        sa.Column("gpus", sa.JSON, nullable=False),
        sa.Column("gpus_simulated", sa.Boolean, nullable=False),
        sa.Column("last_heartbeat", sa.Float, nullable=True),
        sa.Column("rtt_ms", sa.Float, nullable=True),
        sa.Column("bandwidth_mbps", sa.Float, nullable=True),
        sa.Column("enrolled_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("left_at", sa.Float, nullable=True),
    )
    op.create_table(
        "offers",
        sa.Column("seller_id", sa.String(40), sa.ForeignKey("sellers.id"), primary_key=True),
        sa.Column("price_per_gpu_hour_micros", sa.BigInteger, nullable=False),
        sa.Column("available_from", sa.Float, nullable=True),
        sa.Column("available_until", sa.Float, nullable=True),
        sa.Column("max_lease_hours", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for table in ("offers", "sellers", "invites", "api_keys", "accounts"):
        op.drop_table(table)
