"""Saving into PostgreSQL what only the embedded broker holds (before `ledger down`), and counting it.

The embedded broker keeps its topics in memory. Three kinds of record exist nowhere else:
inputs the sequencer has not consumed (past its committed offsets on payments.incoming and
ledger.commands), dead letters the projector has not projected (past its position on ledger.dlq), and
events not yet in event_archive (past the projector's position on ledger.events, or past where an
earlier save or restore left off). Each is read from that position to the end, so the cost follows the
tail, not the history. Inputs are saved first, then dead letters, then events: processors may still be
running, and an input chained after its snapshot then has its event in the later events snapshot
(re-sent, the sequencer drops it as a duplicate).
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Iterable

import sqlalchemy
from confluent_kafka import KafkaException
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import JSONB

from ledger.codec import EventCodec, UndecodableEvent
from processors.kafka_io import topic_partitions
from projections.archive import archive_events
from projections.bulk import upsert
from runtime.database import make_engine
from runtime.settings import Settings
from runtime.tails import Progress, Tail, TailRecord, committed_offsets, measure, read_tail

PROJECTOR = "read-models"  # projections/projector.py NAME: the projector whose positions count
CHUNK = 1000
UNKNOWN = "unknown"
# failures that make a count "unknown" in `ledger status`, and make `ledger down` refuse
FAILURES = (KafkaException, sqlalchemy.exc.SQLAlchemyError, TimeoutError, OSError)

# migration 0007; only what upsert needs (names, and which columns are JSONB)
_metadata = sqlalchemy.MetaData()
preserved_records = sqlalchemy.Table(
    "preserved_records", _metadata,
    *(sqlalchemy.Column(name) for name in ("broker_run", "kind", "topic", "partition", "record_offset", "key",
                                           "value", "timestamp_ms")),
    sqlalchemy.Column("headers", JSONB),
)
archived_positions = sqlalchemy.Table(
    "archived_positions", _metadata,
    *(sqlalchemy.Column(name) for name in ("topic", "partition", "next_offset")),
)


class CannotPreserve(RuntimeError):
    """Reading the broker or writing PostgreSQL failed; the message says why."""


def engine_for(database_url: str) -> sqlalchemy.Engine:
    # a short connect timeout: an unreachable database must be reported, not waited on
    return make_engine(database_url, connect_args={"connect_timeout": 5})


def _positions(engine: sqlalchemy.Engine, table: str, topic: str) -> dict[int, int]:
    where = "topic = :t" + (" AND projector = :p" if table == "projection_positions" else "")
    with engine.connect() as connection:
        rows = connection.execute(text(f"SELECT partition, next_offset FROM {table} WHERE {where}"),  # ours, not input
                                  {"t": topic, "p": PROJECTOR}).all()
    return {int(p): int(offset) for p, offset in rows}


def input_tails(settings: Settings, bootstrap: str) -> list[Tail]:
    """payments.incoming and ledger.commands after the sequencer's committed offsets."""
    tails = []
    for topic in (settings.topic_incoming, settings.topic_commands):
        partitions = topic_partitions(bootstrap, topic)
        tails.append(measure(bootstrap, topic, committed_offsets(bootstrap, settings.sequencer_group, topic, partitions)))
    return tails


def dead_letter_tail(settings: Settings, bootstrap: str, engine: sqlalchemy.Engine) -> Tail:
    """ledger.dlq after the projector's position."""
    return measure(bootstrap, settings.topic_dlq, _positions(engine, "projection_positions", settings.topic_dlq))


def events_tail(settings: Settings, bootstrap: str, engine: sqlalchemy.Engine) -> Tail:
    """ledger.events after the furthest of: the projector's position, where a save or restore left off."""
    topic = settings.topic_events
    projected = _positions(engine, "projection_positions", topic)
    archived = _positions(engine, "archived_positions", topic)
    starts = {p: max(projected.get(p, 0), archived.get(p, 0)) for p in {*projected, *archived}}
    return measure(bootstrap, topic, starts)


def _headers_json(headers: Iterable[tuple[str, bytes | None]]) -> list[list[str | None]]:
    return [[name, None if value is None else base64.b64encode(value).decode()] for name, value in headers]


def _save(engine: sqlalchemy.Engine, table: sqlalchemy.Table, kind: str, broker_run: str,
          records: Iterable[TailRecord], progress: Progress, total: int) -> int:
    """Insert the records (a row already saved from this broker run is kept as it is); returns how many read."""
    read, page = 0, []

    def flush() -> None:
        with engine.begin() as connection:
            upsert(connection, table, ("broker_run", "topic", "partition", "record_offset"), page, update=False)
        page.clear()

    for record in records:
        page.append({"broker_run": broker_run, "kind": kind, "topic": record.topic, "partition": record.partition,
                     "record_offset": record.offset, "key": record.key, "value": record.value,
                     "headers": _headers_json(record.headers), "timestamp_ms": record.timestamp_ms})
        read += 1
        if len(page) >= CHUNK:
            flush()
            progress(kind, read, total)
    if page:
        flush()
    progress(kind, read, total)
    return read


def _archive_tail(settings: Settings, bootstrap: str, engine: sqlalchemy.Engine, tail: Tail,
                  progress: Progress) -> int:
    """Archive the events of the tail (archive_events skips those already in); returns how many were new."""
    codec, inserted, read, page = EventCodec(), 0, 0, []
    reached: dict[int, int] = {}

    def flush() -> int:
        rows = [{"topic": tail.topic, "partition": p, "next_offset": offset} for p, offset in sorted(reached.items())]
        with engine.begin() as connection:  # events and how far they reach, together
            count = archive_events(connection, tail.topic, page)
            upsert(connection, archived_positions, ("topic", "partition"), rows)
        page.clear()
        return count

    for record in read_tail(bootstrap, tail):
        try:
            event = codec.decode(record.value or b"")
        except UndecodableEvent as exc:
            raise CannotPreserve(f"{tail.topic}[{record.partition}]@{record.offset} is not a readable event: "
                                 f"{exc.reason}") from None
        page.append((event, record.value))
        reached[record.partition] = record.offset + 1
        read += 1
        if len(page) >= CHUNK:
            inserted += flush()
            progress("events", read, tail.size)
    if page:
        inserted += flush()
    progress("events", read, tail.size)
    return inserted


@dataclass(frozen=True)
class Preserved:
    inputs: int
    dead_letters: int
    events_archived: int

    def as_dict(self) -> dict[str, int]:
        return {"inputs": self.inputs, "dead_letters": self.dead_letters, "events_archived": self.events_archived}


def preserve(settings: Settings, bootstrap: str, database_url: str, broker_run: str,
             progress: Progress = lambda *_: None) -> Preserved:
    """Save what only the broker holds: inputs first, then dead letters, then events (module docstring)."""
    engine = engine_for(database_url)
    try:
        inputs = 0
        for tail in input_tails(settings, bootstrap):
            inputs += _save(engine, preserved_records, "input", broker_run, read_tail(bootstrap, tail), progress, tail.size)
        dlq = dead_letter_tail(settings, bootstrap, engine)
        dead = _save(engine, preserved_records, "dead_letter", broker_run, read_tail(bootstrap, dlq), progress, dlq.size)
        events = _archive_tail(settings, bootstrap, engine, events_tail(settings, bootstrap, engine), progress)
        return Preserved(inputs, dead, events)
    finally:
        engine.dispose()


def _not_archived(bootstrap: str, engine: sqlalchemy.Engine, tail: Tail, deadline: float) -> int:
    """Events of the tail whose id is not in event_archive (the smoke run archives without positions)."""
    codec, missing, ids = EventCodec(), 0, []

    def check() -> int:
        with engine.connect() as connection:
            found = connection.execute(text("SELECT count(*) FROM event_archive WHERE event_id = ANY(:ids)"),
                                       {"ids": ids}).scalar_one()
        count = len(ids) - found
        ids.clear()
        return count

    for record in read_tail(bootstrap, tail, stall_s=max(0.5, deadline - time.monotonic()), deadline=deadline):
        try:
            ids.append(codec.decode(record.value or b"").envelope.event_id)
        except UndecodableEvent:
            missing += 1  # cannot be archived at all
        if len(ids) >= CHUNK:
            missing += check()
    return missing + (check() if ids else 0)


def at_risk(settings: Settings, bootstrap: str | None, database_url: str | None,
            timeout_s: float = 10.0) -> dict[str, int | str]:
    """What a crash of the embedded broker would lose right now; "unknown" for what cannot be counted
    (broker or database down, or the count not done within timeout_s)."""
    deadline = time.monotonic() + timeout_s
    report: dict[str, int | str] = {"events_not_archived": UNKNOWN, "inputs_not_sequenced": UNKNOWN,
                                    "dead_letters_not_projected": UNKNOWN}
    if not bootstrap:
        return report
    try:
        report["inputs_not_sequenced"] = sum(tail.size for tail in input_tails(settings, bootstrap))
    except FAILURES:  # not countable now: "unknown", never a failing `status`
        pass
    if not database_url or time.monotonic() > deadline:
        return report
    engine = engine_for(database_url)
    try:
        report["dead_letters_not_projected"] = dead_letter_tail(settings, bootstrap, engine).size
        report["events_not_archived"] = _not_archived(bootstrap, engine, events_tail(settings, bootstrap, engine),
                                                      deadline)
    except (*FAILURES, CannotPreserve):
        pass
    finally:
        engine.dispose()
    return report
