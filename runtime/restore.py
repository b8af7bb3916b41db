"""Refilling an empty embedded broker at `ledger up`: ledger.events from the archive, then what `ledger down` saved.

The embedded broker keeps nothing across its own restart. `ledger up` calls `restore_all` after
migrating. When ledger.events and ledger.dlq are both empty, the broker is new: positions stored for
the old topics are dropped, and dead-letter rows keep their history under a `before-restore-<stamp>:`
id prefix, because the new dead-letter topic numbers from 0 again. Then:

1. ledger.events, if empty, gets the archived bytes again, per payee in sequence order and keyed by
   payee, so every chain is exactly as it was. Projections key on each payee's last sequence, so
   nothing is applied twice.
2. Inputs and dead letters saved by `ledger down` (runtime/preserve.py) go back to their topics, each
   only into an empty topic (so a second `ledger up` doubles nothing): same partition, key, value,
   headers and timestamp, in their original order. Rows are deleted only after every record is
   acknowledged; a crash in between re-sends records the sequencer drops as duplicates.
   A restored dead letter's source topic becomes `before-restore-<stamp>:<topic>`: its old position
   would otherwise name a record of the NEW input topic, which the sequencer would then skip.
"""

from __future__ import annotations

import base64
from datetime import datetime, timezone
from typing import Callable

import sqlalchemy
from confluent_kafka import KafkaError

from processors.dead_letters import SOURCE_TOPIC
from processors.kafka_io import DeliveryTracker, flush_or_raise, make_producer, read_topic, topic_partitions
from runtime.database import make_engine
from runtime.settings import Settings

CHUNK = 5_000
PREFIX = "before-restore-"
Report = Callable[[str], None]


class RestoreFailed(RuntimeError):
    """Saved records cannot go back as they were (e.g. a topic now has fewer partitions)."""


def restore_stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def topic_is_empty(bootstrap: str, topic: str) -> bool:
    for _ in read_topic(bootstrap, topic, timeout_s=60):
        return False  # leaving the loop closes the reader
    return True


class _Ends(DeliveryTracker):
    """Also remembers, per partition, the offset after the last acknowledged record."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: dict[int, int] = {}

    def __call__(self, error: KafkaError | None, message) -> None:  # noqa: ANN001 - confluent_kafka.Message
        super().__call__(error, message)
        if error is None:
            self.ends[message.partition()] = max(self.ends.get(message.partition(), 0), message.offset() + 1)


def forget_old_broker(settings: Settings, connection: sqlalchemy.Connection, stamp: str) -> None:
    """The broker is new: positions in its old topics mean nothing, dead-letter ids would collide."""
    topics = {"events": settings.topic_events, "dlq": settings.topic_dlq}
    connection.execute(sqlalchemy.text("DELETE FROM projection_positions WHERE topic IN (:events, :dlq)"), topics)
    connection.execute(sqlalchemy.text("DELETE FROM archived_positions WHERE topic = :events"), topics)
    connection.execute(sqlalchemy.text(
        "UPDATE dead_letters SET dlq_id = :prefix || dlq_id WHERE dlq_id NOT LIKE 'before-restore-%'"),
        {"prefix": f"{PREFIX}{stamp}:"})
    # The sequencer's refunds waiting for their payment keep their records in PostgreSQL; their source
    # positions are in the old topics, so they are renamed like the dead letters' (the sequencer also
    # compares the bytes). A record the old run was processing alone is no longer in any topic.
    connection.execute(sqlalchemy.text(
        "UPDATE sequencer_waiting SET source_topic = :prefix || source_topic "
        "WHERE source_topic NOT LIKE 'before-restore-%'"), {"prefix": f"{PREFIX}{stamp}:"})
    connection.execute(sqlalchemy.text(
        "UPDATE sequencer_runs SET topic = NULL, partition = NULL, \"offset\" = NULL, attempts = 0"))
    # Checkpoints name positions in the old topics. Their proof (the record before each position) would
    # refuse most of them, but a restore writes each payee's events together, in another order, and one
    # record can sit at its old offset by chance while the records before it differ: every processor
    # replays the restored log in full once instead.
    connection.execute(sqlalchemy.text("DELETE FROM processor_checkpoints"))


def restore_if_empty(settings: Settings, bootstrap: str, database_url: str, report: Report = lambda _: None,
                     stamp: str | None = None) -> int:
    """Restore ledger.events from the archive when the topic is empty; returns how many events."""
    stamp = stamp or restore_stamp()
    engine = make_engine(database_url)
    try:
        events_empty = topic_is_empty(bootstrap, settings.topic_events)
        if events_empty and topic_is_empty(bootstrap, settings.topic_dlq):
            with engine.begin() as connection:
                forget_old_broker(settings, connection, stamp)
        with engine.connect() as connection:
            archived = connection.execute(sqlalchemy.text("SELECT count(*) FROM event_archive")).scalar_one()
        if archived == 0 or not events_empty:
            return 0
        producer, tracker, sent = make_producer(bootstrap), _Ends(), 0
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
        with engine.begin() as connection:  # all of it came from the archive: the next save starts after it
            for partition, offset in tracker.ends.items():
                connection.execute(sqlalchemy.text(
                    "INSERT INTO archived_positions (topic, partition, next_offset) VALUES (:t, :p, :o) "
                    "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset"),
                    {"t": settings.topic_events, "p": partition, "o": offset})
        report(f"{settings.topic_events}: was empty; restored {sent} events from the archive")
        return sent
    finally:
        engine.dispose()


def _headers(saved: list, topic: str, kind: str, stamp: str) -> list[tuple[str, bytes | None]]:
    headers = [(name, None if value is None else base64.b64decode(value)) for name, value in saved]
    if kind != "dead_letter":
        return headers
    return [(name, f"{PREFIX}{stamp}:{value.decode()}".encode())
            if name == SOURCE_TOPIC and value is not None and not value.startswith(PREFIX.encode()) else (name, value)
            for name, value in headers]


def restore_saved(settings: Settings, bootstrap: str, database_url: str, stamp: str,
                  report: Report = lambda _: None) -> dict[str, int]:
    """Put back what `ledger down` saved, each topic only if it is empty; returns records restored per kind."""
    restored = {"inputs": 0, "dead_letters": 0}
    engine = make_engine(database_url)
    try:
        for kind, topic in (("input", settings.topic_incoming), ("input", settings.topic_commands),
                            ("dead_letter", settings.topic_dlq)):
            with engine.connect() as connection:
                waiting = connection.execute(sqlalchemy.text(
                    "SELECT count(*), max(id) FROM preserved_records WHERE kind = :k AND topic = :t"),
                    {"k": kind, "t": topic}).one()
            if not waiting[0]:
                continue
            if not topic_is_empty(bootstrap, topic):
                report(f"{topic}: not empty; {waiting[0]} records saved by `ledger down` kept for the next restart")
                continue
            sent = _produce_saved(engine, bootstrap, kind, topic, waiting[1], stamp)
            with engine.begin() as connection:  # every record acknowledged: now they may go
                connection.execute(sqlalchemy.text(
                    "DELETE FROM preserved_records WHERE kind = :k AND topic = :t AND id <= :last"),
                    {"k": kind, "t": topic, "last": waiting[1]})
            restored["inputs" if kind == "input" else "dead_letters"] += sent
            report(f"{topic}: was empty; restored {sent} records saved by `ledger down`")
    finally:
        engine.dispose()
    return restored


def _produce_saved(engine: sqlalchemy.Engine, bootstrap: str, kind: str, topic: str, last_id: int, stamp: str) -> int:
    partitions = set(topic_partitions(bootstrap, topic))
    producer, tracker, sent = make_producer(bootstrap), DeliveryTracker(), 0
    with engine.connect().execution_options(stream_results=True, yield_per=CHUNK) as connection:
        rows = connection.execute(sqlalchemy.text(
            "SELECT partition, key, value, headers, timestamp_ms FROM preserved_records "
            "WHERE kind = :k AND topic = :t AND id <= :last ORDER BY id"), {"k": kind, "t": topic, "last": last_id})
        for partition, key, value, headers, timestamp_ms in rows:
            if partition not in partitions:
                raise RestoreFailed(f"{topic} has partitions {sorted(partitions)} but a record saved by `ledger down` "
                                    f"was in partition {partition}: set the partition count it had (LEDGER_PARTITIONS_*)")
            extra = {"timestamp": timestamp_ms} if timestamp_ms else {}
            producer.produce(topic, partition=partition, key=None if key is None else bytes(key),
                             value=None if value is None else bytes(value),
                             headers=_headers(headers, topic, kind, stamp), on_delivery=tracker, **extra)
            producer.poll(0)
            sent += 1
            if sent % CHUNK == 0:
                producer.flush(30)
    flush_or_raise(producer, tracker, sent)
    return sent


def restore_all(settings: Settings, bootstrap: str, database_url: str, report: Report = lambda _: None) -> dict[str, int]:
    """Everything `ledger up` puts back into a new embedded broker (module docstring)."""
    stamp = restore_stamp()  # one stamp for renamed dead-letter rows and restored dead letters' sources
    events = restore_if_empty(settings, bootstrap, database_url, report, stamp)
    return {"events": events, **restore_saved(settings, bootstrap, database_url, stamp, report)}
