"""The append-only event archive: each canonical event's exact bytes, keyed on its own identity."""

from __future__ import annotations

from typing import Iterable

import sqlalchemy

from ledger.events import Event
from projections.bulk import upsert

metadata = sqlalchemy.MetaData()
event_archive = sqlalchemy.Table(
    "event_archive",
    metadata,
    sqlalchemy.Column("event_id", sqlalchemy.Text, primary_key=True),
    sqlalchemy.Column("payee_id", sqlalchemy.Text, nullable=False),
    sqlalchemy.Column("sequence", sqlalchemy.BigInteger, nullable=False),
    sqlalchemy.Column("event_type", sqlalchemy.Text, nullable=False),
    sqlalchemy.Column("occurred_at", sqlalchemy.DateTime(timezone=True), nullable=False),
    sqlalchemy.Column("recorded_at", sqlalchemy.DateTime(timezone=True), nullable=False),
    sqlalchemy.Column("topic", sqlalchemy.Text, nullable=False),
    sqlalchemy.Column("encoded", sqlalchemy.LargeBinary, nullable=False),
)


def archive_events(connection: sqlalchemy.Connection, topic: str, items: Iterable[tuple[Event, bytes]]) -> int:
    """Insert sequenced events verbatim; an event already archived is skipped. Returns rows inserted."""
    rows = [
        {
            "event_id": event.envelope.event_id,
            "payee_id": event.payee_id,
            "sequence": event.envelope.sequence,
            "event_type": event.event_type,
            "occurred_at": event.envelope.occurred_at,
            "recorded_at": event.envelope.recorded_at,
            "topic": topic,
            "encoded": encoded,
        }
        for event, encoded in items
    ]
    if not rows:
        return 0
    return upsert(connection, event_archive, ("event_id",), rows, update=False)


def archived_count(connection: sqlalchemy.Connection, payee_ids: list[str]) -> int:
    query = sqlalchemy.select(sqlalchemy.func.count()).where(event_archive.c.payee_id.in_(payee_ids))
    return connection.execute(query).scalar_one()
