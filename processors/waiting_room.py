"""Refunds that arrived before their payment, waiting for it: bounded in count and in time.

A refund whose payment is on another partition, or sent by another producer, or retried, can reach
the sequencer first. It waits here (kept durably by SequencerStore, so the input position can be
committed past it) until its payment is chained, and is then judged again; a refund still waiting
after Settings.sequencer_wait_s, or pushed out by the count limit, is dead-lettered, and
`ledger dlq replay` is the way out.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime, timedelta

from processors.sequencer_store import Waiting

Source = tuple[str, int, int]


class WaitingRoom:
    """In memory: every waiting refund (the count is bounded), by source position and by payment id."""

    def __init__(self, wait_s: int, max_records: int) -> None:
        self.wait = timedelta(seconds=wait_s)
        self.max_records = max_records
        self._by_source: OrderedDict[Source, Waiting] = OrderedDict()  # oldest first
        self._by_payment: dict[str, list[Source]] = {}

    def __len__(self) -> int:
        return len(self._by_source)

    def holds(self, source: Source, value: bytes | None) -> bool:
        """Whether this very record waits: same position and same bytes (after a broker restore the
        topics number from 0 again, so a position alone may name another record)."""
        item = self._by_source.get(source)
        return item is not None and item.record.value == value

    def add(self, item: Waiting) -> list[Waiting]:
        """Let `item` wait; returns the oldest ones pushed out by the count limit (to be dead-lettered)."""
        self._by_source[item.source] = item
        self._by_payment.setdefault(item.waits_for, []).append(item.source)
        pushed_out = []
        while len(self._by_source) > self.max_records:
            pushed_out.append(self._remove(next(iter(self._by_source))))
        return pushed_out

    def take_for(self, payment_id: str) -> list[Waiting]:
        """Every refund waiting for this payment, in arrival order; they stop waiting."""
        return [self._remove(source) for source in list(self._by_payment.get(payment_id, ()))]

    def take_expired(self, now: datetime) -> list[Waiting]:
        """Every refund that has waited longer than the limit."""
        expired = []
        while self._by_source:
            oldest = next(iter(self._by_source.values()))
            if now - oldest.since < self.wait:
                break
            expired.append(self._remove(oldest.source))
        return expired

    def payments(self) -> list[str]:
        return list(self._by_payment)

    def _remove(self, source: Source) -> Waiting:
        item = self._by_source.pop(source)
        sources = self._by_payment[item.waits_for]
        sources.remove(source)
        if not sources:
            del self._by_payment[item.waits_for]
        return item
