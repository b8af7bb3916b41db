"""Postgres read models built from the ledger's events (SQLAlchemy, Alembic migrations)."""
