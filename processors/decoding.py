"""Decoding consumed records without ever stopping the loop: bad bytes become dead letters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from ledger.codec import EventCodec, UndecodableEvent
from ledger.events import Event
from processors.kafka_io import Record


@dataclass(frozen=True)
class DeadLetter:
    """A record that cannot be accepted: where it came from, why, and its original bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes
    reason: str


@dataclass(frozen=True)
class Decoded:
    record: Record
    event: Event


def decode_records(records: Iterable[Record], codec: EventCodec) -> Iterator[Decoded | DeadLetter]:
    """Each record in order, decoded or turned into a DeadLetter; only UndecodableEvent is absorbed."""
    for record in records:
        if record.value is None:
            yield DeadLetter(record.topic, record.partition, record.offset, record.key, b"", "record has no value")
            continue
        try:
            yield Decoded(record, codec.decode(record.value))
        except UndecodableEvent as exc:
            yield DeadLetter(record.topic, record.partition, record.offset, record.key, record.value, exc.reason)
