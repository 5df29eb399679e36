"""Alembic migrations of the coordinator's store."""
