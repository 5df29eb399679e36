"""The coordinator's HTTP API (FastAPI): routes, schemas, middleware."""
