"""The dead-letter topic: every input that could not be accepted, with its original bytes and why.

A dead letter keeps the original key and value untouched; where it came from and the reason travel
in headers. Its id is its own position in the DLQ topic ("partition:offset"), which is stable, so
`ledger dlq replay ID` can re-submit exactly those bytes after a fix.
"""

from __future__ import annotations

import hashlib
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
ORIGINAL_SIZE = "ledger-dlq-original-size"  # set only when the original was not kept whole
ORIGINAL_SHA256 = "ledger-dlq-original-sha256"
HEADERS_DROPPED = "ledger-dlq-headers-dropped"
MAX_REASON_BYTES = 2000
CARRIED_HEADERS_MAX_BYTES = 16_384  # a producer's own headers are kept up to this much
KEPT_PREFIX_BYTES = 65_536  # of an original too large to keep whole: its first bytes, for a look
KEPT_KEY_BYTES = 16_384


@dataclass(frozen=True)
class DeadLetterMessage:
    """What goes to the dead-letter topic for one refused record."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    whole: bool  # False: only a prefix of the original value is kept (with its size and SHA-256)

    @property
    def size(self) -> int:
        return (len(self.key or b"") + len(self.value)
                + sum(len(name) + len(value or b"") for name, value in self.headers))


def dead_letter_message(source: Record, stage: str, reason: str, rejected_at: datetime, max_bytes: int,
                        *, whole: bool = True) -> DeadLetterMessage:
    """The dead letter of `source`: its original key and value whole when they fit in max_bytes (and
    `whole` is not turned off after the broker refused them), else a bounded prefix of the value, the
    original's size and SHA-256, and a reason that says so. The bounded form is under 100 KB: a prefix of
    the value, of the key and of the producer's headers, and the ledger's own headers."""
    value = source.value or b""
    key_cut = source.key is not None and len(source.key) > KEPT_KEY_BYTES  # a key that large is itself the problem
    key = source.key[:KEPT_KEY_BYTES] if key_cut and source.key is not None else source.key
    headers = dead_letter_headers(source, stage, reason, rejected_at)
    message = DeadLetterMessage(key, value, headers, whole=True)
    if whole and not key_cut and message.size <= max_bytes:
        return message
    digest = hashlib.sha256(value).hexdigest()
    note = (f" [original value of {len(value)} bytes not kept whole: its first {min(len(value), KEPT_PREFIX_BYTES)} "
            f"bytes are kept, SHA-256 {digest}]")
    headers = dead_letter_headers(source, stage, reason[:MAX_REASON_BYTES - len(note)] + note, rejected_at) + [
        (ORIGINAL_SIZE, str(len(value)).encode()), (ORIGINAL_SHA256, digest.encode())]
    return DeadLetterMessage(key, value[:KEPT_PREFIX_BYTES], headers, whole=False)


def dead_letter_headers(source: Record, stage: str, reason: str, rejected_at: datetime) -> list[tuple[str, bytes]]:
    carried: list[tuple[str, bytes]] = []
    carried_bytes = dropped = 0
    for name, value in source.headers:
        if name.startswith("ledger-dlq-"):
            continue
        size = len(name) + len(value or b"")
        if carried_bytes + size > CARRIED_HEADERS_MAX_BYTES:
            dropped += 1
            continue
        carried.append((name, value))
        carried_bytes += size
    if dropped:
        carried.append((HEADERS_DROPPED, str(dropped).encode()))
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
    original_size: int | None = None  # set when the value is only a prefix of the original
    original_sha256: str | None = None

    @property
    def whole(self) -> bool:
        """Whether `value` is the original value, byte for byte (a replay needs it whole)."""
        return self.original_size is None

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
        original_size=int(headers[ORIGINAL_SIZE]) if headers.get(ORIGINAL_SIZE, "").isdigit() else None,
        original_sha256=headers.get(ORIGINAL_SHA256),
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
