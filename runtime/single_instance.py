"""At most one process of a kind per ledger: a PostgreSQL advisory lock, released when the process dies."""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Iterator

import sqlalchemy

from runtime.database import make_engine


class AlreadyRunning(RuntimeError):
    """Another process holds the lock."""


def _lock_id(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def single_instance(database_url: str, name: str) -> Iterator[None]:
    """Hold an exclusive session lock named `name` for the duration; raise AlreadyRunning if taken."""
    engine = make_engine(database_url, poolclass=sqlalchemy.pool.NullPool)
    connection = engine.connect()
    try:
        locked = connection.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:id)"), {"id": _lock_id(name)}).scalar()
        connection.commit()
        if not locked:
            raise AlreadyRunning(f"another {name} is running against this ledger (PostgreSQL advisory lock held)")
        yield
    finally:
        connection.close()  # ends the session, releasing the lock
        engine.dispose()
