"""Rebuilding the ledger index from ledger.events, the truth (never from a changelog or a cache)."""

from __future__ import annotations

from ledger.codec import EventCodec, UndecodableEvent
from ledger.guards import InvariantViolation
from ledger.ledger_index import LedgerIndex
from processors.kafka_io import read_topic

REPLAY_TIMEOUT_S = 600.0


class CorruptLedger(RuntimeError):
    """ledger.events holds something that cannot be part of a valid ledger; nothing may be appended."""


def load_index(bootstrap: str, topic: str, codec: EventCodec, timeout_s: float = REPLAY_TIMEOUT_S) -> LedgerIndex:
    """Fold every event of `topic` into a LedgerIndex; refuse a ledger with undecodable bytes or broken chains."""
    index = LedgerIndex(codec.encode)
    for record in read_topic(bootstrap, topic, timeout_s):
        where = f"{topic}[{record.partition}]@{record.offset}"
        try:
            event = codec.decode(record.value or b"")
            index.observe(event, record.value or b"")
        except UndecodableEvent as exc:
            raise CorruptLedger(f"{where} is not a readable event: {exc.reason}") from None
        except InvariantViolation as exc:
            raise CorruptLedger(f"{where}: {exc}") from None
    return index
