"""Experiment records of sweeps (one row per trial) and metered serve requests.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sweep_trials",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id"), nullable=False, index=True),
        sa.Column("trial_id", sa.String(64), nullable=False),
        sa.Column("plan_index", sa.Integer, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("iterations", sa.Integer, nullable=False),
        sa.Column("history", sa.JSON, nullable=False),
        sa.Column("metric", sa.Float, nullable=True),
        sa.Column("best_metric", sa.Float, nullable=True),
        sa.Column("gpu_seconds", sa.Float, nullable=False),
        sa.Column("cost_micros", sa.BigInteger, nullable=False),
        sa.Column("checkpoint", sa.String(500), nullable=True),
        sa.Column("node_ip", sa.String(45), nullable=True),
        sa.Column("lease_id", sa.String(40), nullable=True),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("ended_at", sa.Float, nullable=True),
        sa.UniqueConstraint("job_id", "trial_id", name="uq_sweep_trials_trial"),
    )
    op.create_table(
        "serve_requests",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id"), nullable=False, index=True),
        sa.Column("lease_id", sa.String(40), nullable=False, index=True),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("route", sa.String(32), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("gpu_seconds", sa.Float, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("cost_micros", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("serve_requests")
    op.drop_table("sweep_trials")
