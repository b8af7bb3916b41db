"""A payout run: fold ledger.events into every payee's earnings and decide the closes due at a time.

The decisions are events with deterministic ids (one per payee, period and currency), sent to
ledger.commands for the sequencer to chain. Running the same run twice, or a crashed run again,
sends the same ids, and the sequencer drops what it already chained: nobody is paid twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

from ledger.codec import EventCodec, UndecodableEvent
from ledger.commission import PlanBook
from ledger.earnings import PayeeEarnings, PayoutPolicy
from ledger.events import Event
from processors.kafka_io import DeliveryTracker, flush_or_raise, make_producer, read_topic
from processors.ledger_replay import CorruptLedger


CLOSE_TYPES = ("PayoutRequested", "BalanceCarried")


def fold_ledger(bootstrap: str, topic: str, codec: EventCodec, timeout_s: float = 600.0,
                close_ids: set[str] | None = None) -> dict[str, PayeeEarnings]:
    """Every payee's earnings, folded from ledger.events in per-payee order (close ids collected if asked)."""
    payees: dict[str, PayeeEarnings] = {}
    for record in read_topic(bootstrap, topic, timeout_s):
        try:
            event = codec.decode(record.value or b"")
        except UndecodableEvent as exc:
            raise CorruptLedger(f"{topic}[{record.partition}]@{record.offset}: {exc.reason}") from None
        payees.setdefault(event.payee_id, PayeeEarnings(event.payee_id)).apply(event)
        if close_ids is not None and event.event_type in CLOSE_TYPES:
            close_ids.add(event.envelope.event_id)
    return payees


def unchained_closes(bootstrap: str, commands_topic: str, chained: set[str], codec: EventCodec) -> list[Event]:
    """Close decisions waiting in ledger.commands that are not in the ledger yet.

    Deciding again while they wait could decide a period twice with different content, and base later
    periods on a close that the sequencer then refuses; so a run waits for them to be chained.
    """
    waiting = []
    for record in read_topic(bootstrap, commands_topic):
        try:
            event = codec.decode(record.value or b"")
        except UndecodableEvent:
            continue  # the sequencer dead-letters it; it is no decision of ours
        if event.event_type in CLOSE_TYPES and event.envelope.event_id not in chained:
            waiting.append(event)
    return waiting


def ledger_for_decisions(bootstrap: str, events_topic: str, commands_topic: str,
                         codec: EventCodec) -> tuple[dict[str, PayeeEarnings], list[Event]]:
    """Every payee's earnings, and the close decisions still waiting to be chained (decide on top of none)."""
    chained: set[str] = set()
    payees = fold_ledger(bootstrap, events_topic, codec, close_ids=chained)
    return payees, unchained_closes(bootstrap, commands_topic, chained, codec)


@dataclass(frozen=True)
class RunPlan:
    at: datetime
    closes: list[Event]

    @property
    def payouts(self) -> list[Event]:
        return [event for event in self.closes if event.event_type == "PayoutRequested"]

    def totals(self) -> dict[str, int]:
        return requested_totals(self.payouts)


def requested_totals(payouts: Iterable[Event]) -> dict[str, int]:
    """Sum of the payouts requested, per currency, in minor units."""
    totals: dict[str, int] = {}
    for event in payouts:
        net = event.payload["net"]
        totals[net.currency.code] = totals.get(net.currency.code, 0) + net.amount_minor
    return totals


def plan_run(payees: Iterable[PayeeEarnings], at: datetime, book: PlanBook, policy: PayoutPolicy) -> RunPlan:
    closes: list[Event] = []
    for earnings in sorted(payees, key=lambda p: p.payee_id):
        closes.extend(earnings.decide_closes(at, book, policy))
    return RunPlan(at, closes)


def send_commands(bootstrap: str, topic: str, events: list[Event], codec: EventCodec) -> None:
    """Send events to ledger.commands, keyed by payee; returns when the broker has them all."""
    producer = make_producer(bootstrap)
    tracker = DeliveryTracker()
    for event in events:
        producer.produce(topic, key=event.payee_id.encode(), value=codec.encode(event), on_delivery=tracker)
        producer.poll(0)
    flush_or_raise(producer, tracker, len(events))
