"""A payout run: every payee's earnings, and the closes due at a time.

The earnings come from the aggregator's checkpoint plus the tail of ledger.events after it
(processors/earnings_state.py; the whole log only when there is no checkpoint that proves). The
decisions are events with deterministic ids (one per payee, period and currency), sent to
ledger.commands for the sequencer to chain. Running the same run twice, or a crashed run again,
sends the same ids, and the sequencer drops what it already chained: nobody is paid twice.

Close decisions still waiting in ledger.commands are looked for only after the sequencer's committed
offsets there: everything before them was chained or refused already (the sequencer commits only
after its outputs are acknowledged).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

import sqlalchemy
from confluent_kafka import Consumer, TopicPartition

from ledger.codec import EventCodec, UndecodableEvent
from ledger.commission import PlanBook
from ledger.earnings import PayeeEarnings, PayoutPolicy
from ledger.events import Event
from processors.earnings_state import CLOSE_TYPES, load_earnings
from processors.kafka_io import (
    CLIENT_LOG,
    DeliveryTracker,
    flush_or_raise,
    make_producer,
    read_topic,
    topic_partitions,
)
from processors.ledger_replay import CorruptLedger
from processors.log_reader import LogReader
from runtime.kafka_security import secure

logger = logging.getLogger("ledger.run")


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


def processed_offsets(bootstrap: str, group_id: str, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    """The next offset per partition of `topic` that the consumer group has committed (0 where none)."""
    consumer = Consumer(secure({"bootstrap.servers": bootstrap, "group.id": group_id, "enable.auto.commit": False,
                         "logger": CLIENT_LOG}))
    try:
        committed = consumer.committed([TopicPartition(topic, p) for p in topic_partitions(bootstrap, topic)],
                                       timeout=timeout_s)
    finally:
        consumer.close()
    return {tp.partition: max(tp.offset, 0) for tp in committed}


def unchained_closes(bootstrap: str, commands_topic: str, chained: set[str], codec: EventCodec,
                     starts: dict[int, int] | None = None, timeout_s: float = 60.0) -> list[Event]:
    """Close decisions waiting in ledger.commands (from `starts`, else the beginning) that are not in `chained`.

    Deciding again while they wait could decide a period twice with different content, and base later
    periods on a close that the sequencer then refuses; so a run waits for them to be chained.
    """
    reader = LogReader(bootstrap, "payout-run", {commands_topic: starts or {}}, batch_max=5_000)
    waiting = []
    try:
        for batch in reader.batches_to_end(timeout_s):
            for message in batch:
                try:
                    event = codec.decode(message.value() or b"")
                except UndecodableEvent:
                    continue  # the sequencer dead-letters it; it is no decision of ours
                if event.event_type in CLOSE_TYPES and event.envelope.event_id not in chained:
                    waiting.append(event)
    finally:
        reader.close()
    return waiting


def archived(engine: sqlalchemy.Engine, event_ids: list[str]) -> set[str]:
    """Which of these events the projector has archived (so they are chained)."""
    if not event_ids:
        return set()
    with engine.connect() as connection:
        return set(connection.execute(sqlalchemy.text("SELECT event_id FROM event_archive WHERE event_id = ANY(:ids)"),
                                      {"ids": event_ids}).scalars())


def ledger_for_decisions(bootstrap: str, engine: sqlalchemy.Engine, events_topic: str, commands_topic: str,
                         sequencer_group: str, codec: EventCodec) -> tuple[dict[str, PayeeEarnings], list[Event]]:
    """Every payee's earnings (aggregator checkpoint + tail, read-only), and the close decisions still
    waiting to be chained (decide on top of none).

    The sequencer's committed offsets on ledger.commands are read first: what it committed before
    them is in ledger.events before the end that the fold then reaches. A close after them is
    chained if it is in the folded tail or in the projector's archive; otherwise it waits (when it
    was chained before the aggregator's checkpoint but the sequencer died before committing, the run
    waits for the sequencer to come back, which is the safe side)."""
    processed = processed_offsets(bootstrap, sequencer_group, commands_topic)
    fold = load_earnings(bootstrap, engine, events_topic, codec, close_ids=True, log=logger.debug)
    waiting = unchained_closes(bootstrap, commands_topic, fold.chained, codec, processed)
    found = archived(engine, sorted({event.envelope.event_id for event in waiting}))
    return fold.payees, [event for event in waiting if event.envelope.event_id not in found]


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
