"""Per-entity state a processor keeps in PostgreSQL instead of memory (table processor_entities).

What grows with the history (a payout settled years ago, say) must not stay in memory, yet a late
event may still need it (a paid payout that fails days later). Such entities are written here in the
checkpoint's transaction and looked up per batch, many keys in one query, when an event names one
that is not in memory. Values are pickled domain objects; they are read only by the code version
whose checkpoint format matches (a full replay clears them with the checkpoint).
"""

from __future__ import annotations

import pickle
from typing import Any, Iterable, Mapping

import sqlalchemy

from runtime.database import copy_rows



class EntityStore:
    def __init__(self, engine: sqlalchemy.Engine, processor: str) -> None:
        self.engine, self.processor = engine, processor

    def get_many(self, kind: str, keys: Iterable[str]) -> dict[str, Any]:
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        with self.engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text(
                "SELECT key, state FROM processor_entities WHERE processor = :p AND kind = :k AND key = ANY(:keys)"),
                {"p": self.processor, "k": kind, "keys": wanted}).all()
        return {key: pickle.loads(bytes(state)) for key, state in rows}  # noqa: S301 - our own rows

    def put_many(self, connection: sqlalchemy.Connection, kind: str, items: Mapping[str, Any]) -> None:
        if not items:
            return
        copy_rows(connection, "processor_entities", ("processor", "kind", "key", "state"),
                  [(self.processor, kind, key, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
                   for key, value in items.items()],
                  "ON CONFLICT (processor, kind, key) DO UPDATE SET state = EXCLUDED.state")

    def delete_many(self, connection: sqlalchemy.Connection, kind: str, keys: Iterable[str]) -> None:
        wanted = sorted(set(keys))
        if wanted:
            connection.execute(sqlalchemy.text(
                "DELETE FROM processor_entities WHERE processor = :p AND kind = :k AND key = ANY(:keys)"),
                {"p": self.processor, "k": kind, "keys": wanted})

    def clear(self, connection: sqlalchemy.Connection) -> None:
        connection.execute(sqlalchemy.text("DELETE FROM processor_entities WHERE processor = :p"),
                           {"p": self.processor})
