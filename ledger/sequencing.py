"""Placing events in a payee's chain: next sequence number and the previous event's hash."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ledger.events import Event
from ledger.guards import require
from ledger.hashchain import GENESIS_HASH, event_hash


@dataclass
class ChainHead:
    """Where a payee's chain ends: the last sequence number and the hash of that event's bytes."""

    sequence: int = 0
    hash: str = GENESIS_HASH


@dataclass
class PayeeChains:
    """Sequences events per payee; `encode` turns a sequenced event into its stored bytes."""

    encode: Callable[[Event], bytes]
    heads: dict[str, ChainHead] = field(default_factory=dict)

    def append(self, event: Event) -> tuple[Event, bytes]:
        require(not event.envelope.is_sequenced, f"event {event.envelope.event_id} is already sequenced")
        head = self.heads.setdefault(event.payee_id, ChainHead())
        sequenced = Event(event.envelope.sequenced(head.sequence + 1, head.hash), event.payload)
        encoded = self.encode(sequenced)
        head.sequence += 1
        head.hash = event_hash(encoded)
        return sequenced, encoded

    def observe(self, event: Event, encoded: bytes) -> None:
        """Advance a payee's head past an event already stored (rebuilding from the log)."""
        head = self.heads.setdefault(event.payee_id, ChainHead())
        require(
            event.envelope.sequence == head.sequence + 1 and event.envelope.previous_hash == head.hash,
            f"stored chain of payee {event.payee_id} is broken at sequence {event.envelope.sequence} "
            f"(expected {head.sequence + 1} after hash {head.hash[:16]})",
        )
        head.sequence += 1
        head.hash = event_hash(encoded)
