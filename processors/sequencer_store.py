"""The sequencer's durable intake state in PostgreSQL: waiting refunds and the run marker (migration 0008).

Waiting: a refund that arrived before its payment is kept here with its original record, so the
sequencer can commit past it on the input topic and still chain it once its payment is there, or
dead-letter it when the wait runs out. Bounded in count (Settings.sequencer_wait_max_records) and
time (Settings.sequencer_wait_s); all of it is loaded at start, since the count is bounded.

Run marker: whether the last run stopped cleanly, and which record it was processing alone when it
stopped (see Sequencer: after an unclean stop the first records are processed one by one, each
marked here first). Two deaths on the same record make it a poison record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

from sqlalchemy import text

from processors.kafka_io import Record
from runtime.database import make_engine


@dataclass(frozen=True)
class Waiting:
    """A refund waiting for its payment: the original record, and since when it waits."""

    record: Record
    waits_for: str
    since: datetime

    @property
    def source(self) -> tuple[str, int, int]:
        return self.record.topic, self.record.partition, self.record.offset


@dataclass(frozen=True)
class RunMarker:
    """What the previous run left: did it stop cleanly; the record it was processing alone, if any."""

    running: bool
    source: tuple[str, int, int] | None
    attempts: int


def _headers_blob(headers: Iterable[tuple[str, bytes | None]]) -> bytes:
    return json.dumps([[name, (value or b"").hex()] for name, value in headers]).encode()


def _headers_of(blob: bytes) -> tuple[tuple[str, bytes], ...]:
    return tuple((name, bytes.fromhex(value)) for name, value in json.loads(bytes(blob)))


class SequencerStore:
    """Reads and writes the sequencer's rows; one short transaction per call."""

    def __init__(self, database_url: str, name: str) -> None:
        self.engine = make_engine(database_url)
        self.name = name

    def close(self) -> None:
        self.engine.dispose()

    # waiting refunds

    def load_waiting(self) -> list[Waiting]:
        with self.engine.connect() as connection:
            rows = connection.execute(text(
                "SELECT source_topic, source_partition, source_offset, key, value, headers, waits_for, waiting_since "
                "FROM sequencer_waiting ORDER BY waiting_since, source_topic, source_partition, source_offset"))
            return [Waiting(Record(topic, partition, offset, bytes(key) if key is not None else None, bytes(value),
                                   _headers_of(headers)), waits_for, since)
                    for topic, partition, offset, key, value, headers, waits_for, since in rows]

    def add_waiting(self, items: list[Waiting]) -> None:
        if not items:
            return
        with self.engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO sequencer_waiting (source_topic, source_partition, source_offset, waits_for, key, value, "
                "headers, waiting_since) VALUES (:topic, :partition, :offset, :waits_for, :key, :value, :headers, "
                ":since) ON CONFLICT DO NOTHING"),
                [{"topic": item.record.topic, "partition": item.record.partition, "offset": item.record.offset,
                  "waits_for": item.waits_for, "key": item.record.key, "value": item.record.value or b"",
                  "headers": _headers_blob(item.record.headers), "since": item.since} for item in items])

    def remove_waiting(self, sources: list[tuple[str, int, int]]) -> None:
        if not sources:
            return
        with self.engine.begin() as connection:
            connection.execute(text(
                "DELETE FROM sequencer_waiting WHERE source_topic = :topic AND source_partition = :partition "
                "AND source_offset = :offset"),
                [{"topic": topic, "partition": partition, "offset": offset} for topic, partition, offset in sources])

    # run marker

    def start_run(self) -> RunMarker:
        """The previous run's marker; from now on this run counts as running until stop_run()."""
        with self.engine.begin() as connection:
            row = connection.execute(text(
                "SELECT running, topic, partition, \"offset\", attempts FROM sequencer_runs WHERE name = :name "
                "FOR UPDATE"), {"name": self.name}).first()
            connection.execute(text(
                "INSERT INTO sequencer_runs (name, running) VALUES (:name, true) "
                "ON CONFLICT (name) DO UPDATE SET running = true, updated_at = now()"), {"name": self.name})
        if row is None:
            return RunMarker(False, None, 0)
        running, topic, partition, offset, attempts = row
        source = (topic, partition, offset) if topic is not None else None
        return RunMarker(bool(running), source, attempts if source else 0)

    def mark_alone(self, source: tuple[str, int, int] | None, attempts: int) -> None:
        """Record (before processing it) the record now processed alone, or None when none is."""
        topic, partition, offset = source if source else (None, None, None)
        with self.engine.begin() as connection:
            connection.execute(text(
                "UPDATE sequencer_runs SET topic = :topic, partition = :partition, \"offset\" = :offset, "
                "attempts = :attempts, updated_at = now() WHERE name = :name"),
                {"name": self.name, "topic": topic, "partition": partition, "offset": offset,
                 "attempts": attempts if source else 0})

    def stop_run(self) -> None:
        with self.engine.begin() as connection:
            connection.execute(text(
                "UPDATE sequencer_runs SET running = false, topic = NULL, partition = NULL, \"offset\" = NULL, "
                "attempts = 0, updated_at = now() WHERE name = :name"), {"name": self.name})

