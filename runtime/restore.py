"""Restoring an empty broker's ledger from the event archive (the embedded broker keeps nothing on disk).

`ledger up` calls this after migrating: when ledger.events is empty and event_archive holds events,
the archived bytes are produced again, per payee in sequence order and keyed by payee, so every chain
is exactly as it was. The events never archived (after the projector's last batch) cannot come back;
run the projector before `ledger down` (README). Consumer positions stored for the old topics are
dropped; projections key on each payee's last sequence, so nothing is applied twice. Dead-letter
rows keep their history under a new id prefix, because the new dead-letter topic numbers from 0 again.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

import sqlalchemy

from processors.kafka_io import DeliveryTracker, flush_or_raise, make_producer, read_topic
from runtime.database import make_engine
from runtime.settings import Settings

CHUNK = 5_000


def topic_is_empty(bootstrap: str, topic: str) -> bool:
    for _ in read_topic(bootstrap, topic, timeout_s=60):
        return False  # leaving the loop closes the reader
    return True


def restore_if_empty(settings: Settings, bootstrap: str, database_url: str,
                     report: Callable[[str], None] = lambda _: None) -> int:
    """Restore ledger.events from the archive when the topic is empty; returns how many events."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            archived = connection.execute(sqlalchemy.text("SELECT count(*) FROM event_archive")).scalar_one()
        if archived == 0 or not topic_is_empty(bootstrap, settings.topic_events):
            return 0
        producer, tracker, sent = make_producer(bootstrap), DeliveryTracker(), 0
        with engine.connect().execution_options(stream_results=True, yield_per=CHUNK) as connection:
            rows = connection.execute(sqlalchemy.text(
                "SELECT payee_id, encoded FROM event_archive ORDER BY payee_id, sequence"))
            for payee_id, encoded in rows:
                producer.produce(settings.topic_events, key=payee_id.encode(), value=bytes(encoded),
                                 on_delivery=tracker)
                producer.poll(0)
                sent += 1
                if sent % CHUNK == 0:
                    producer.flush(30)
        flush_or_raise(producer, tracker, sent)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("DELETE FROM projection_positions"))
            connection.execute(sqlalchemy.text(
                "UPDATE dead_letters SET dlq_id = :prefix || dlq_id WHERE dlq_id NOT LIKE 'before-restore-%'"),
                {"prefix": f"before-restore-{stamp}:"})
        report(f"{settings.topic_events}: was empty; restored {sent} events from the archive")
        return sent
    finally:
        engine.dispose()
