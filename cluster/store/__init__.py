"""The coordinator's SQL store: SQLite (WAL) by default, PostgreSQL by URL, same code."""
