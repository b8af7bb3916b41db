"""The dead-letter topic: every input that could not be accepted, with its original bytes and why.

A dead letter keeps the original key and value untouched; where it came from and the reason travel
in headers. Its id is its own position in the DLQ topic ("partition:offset"), which is stable, so
`ledger dlq replay ID` can re-submit exactly those bytes after a fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterator

from processors.kafka_io import Record, read_topic

REASON = "ledger-dlq-reason"
SOURCE_TOPIC = "ledger-dlq-source-topic"
SOURCE_PARTITION = "ledger-dlq-source-partition"
SOURCE_OFFSET = "ledger-dlq-source-offset"
STAGE = "ledger-dlq-stage"
REJECTED_AT = "ledger-dlq-rejected-at"
REPLAYED_FROM = "ledger-replayed-from"
MAX_REASON_BYTES = 2000


def dead_letter_headers(source: Record, stage: str, reason: str, rejected_at: datetime) -> list[tuple[str, bytes]]:
    carried = [(name, value) for name, value in source.headers if not name.startswith("ledger-dlq-")]
    return carried + [
        (REASON, reason.encode()[:MAX_REASON_BYTES]),
        (STAGE, stage.encode()),
        (SOURCE_TOPIC, source.topic.encode()),
        (SOURCE_PARTITION, str(source.partition).encode()),
        (SOURCE_OFFSET, str(source.offset).encode()),
        (REJECTED_AT, rejected_at.isoformat().encode()),
    ]


@dataclass(frozen=True)
class DeadLetterEntry:
    id: str  # "partition:offset" in the DLQ topic
    source_topic: str
    source_partition: int
    source_offset: int
    stage: str
    reason: str
    rejected_at: str
    key: bytes | None
    value: bytes
    replayed_from: str | None

    @property
    def source(self) -> tuple[str, int, int]:
        return self.source_topic, self.source_partition, self.source_offset


def parse_entry(record: Record) -> DeadLetterEntry:
    headers = {name: value.decode(errors="replace") for name, value in record.headers if value is not None}
    return DeadLetterEntry(
        id=f"{record.partition}:{record.offset}",
        source_topic=headers.get(SOURCE_TOPIC, "?"),
        source_partition=int(headers.get(SOURCE_PARTITION, "-1")),
        source_offset=int(headers.get(SOURCE_OFFSET, "-1")),
        stage=headers.get(STAGE, "?"),
        reason=headers.get(REASON, "(no reason recorded)"),
        rejected_at=headers.get(REJECTED_AT, ""),
        key=record.key,
        value=record.value or b"",
        replayed_from=headers.get(REPLAYED_FROM),
    )


def read_dead_letters(bootstrap: str, topic: str, timeout_s: float = 120.0) -> Iterator[DeadLetterEntry]:
    for record in read_topic(bootstrap, topic, timeout_s):
        yield parse_entry(record)


class UnknownDeadLetter(LookupError):
    """No dead letter has that id."""


def find_dead_letter(bootstrap: str, topic: str, entry_id: str) -> DeadLetterEntry:
    for entry in read_dead_letters(bootstrap, topic):
        if entry.id == entry_id:
            return entry
    raise UnknownDeadLetter(f"no dead letter {entry_id!r} in {topic} (ids look like 0:17; see `ledger dlq list`)")
