"""Helpers for sequencer tests: send inputs, run the sequencer until idle, read what it wrote."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterable

from ledger.codec import EventCodec
from ledger.events import Event
from ledger.hashchain import ChainLink, verify_chain
from processors.dead_letters import DeadLetterEntry, read_dead_letters
from processors.kafka_io import DeliveryTracker, flush_or_raise, make_producer, read_topic
from processors.sequencer import Sequencer
from runtime.settings import Settings

PAST = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=2)


def payment(payment_id: str, payee_id: str = "barber-1", amount_minor: int = 1000, currency: str = "USD",
            **extra: object) -> dict:
    return {"type": "payment", "payment_id": payment_id, "payee_id": payee_id, "amount_minor": amount_minor,
            "currency": currency, "occurred_at": PAST.isoformat(), **extra}


def refund(refund_id: str, payment_id: str, amount_minor: int, payee_id: str = "barber-1",
           currency: str = "USD") -> dict:
    return {"type": "refund", "refund_id": refund_id, "payment_id": payment_id, "payee_id": payee_id,
            "amount_minor": amount_minor, "currency": currency, "occurred_at": PAST.isoformat()}


def send_raw(settings: Settings, values: Iterable[bytes], key: bytes = b"barber-1") -> int:
    """Records as a foreign producer sends them (any size the broker takes: its own limit raised)."""
    producer = make_producer(settings.kafka_bootstrap, **{"message.max.bytes": 20_000_000})
    tracker = DeliveryTracker()
    count = 0
    for value in values:
        producer.produce(settings.topic_incoming, key=key, value=value, on_delivery=tracker)
        count += 1
    flush_or_raise(producer, tracker, count)
    return count


def run_sequencer(settings: Settings, idle_exit_s: float = 1.5) -> Sequencer:
    """Run a fresh sequencer (rebuilding from the log) until no input arrives for idle_exit_s."""
    worker = Sequencer(settings, settings.kafka_bootstrap)
    worker.run(idle_exit_s=idle_exit_s, handle_signals=False)
    return worker


def ledger_events(settings: Settings) -> list[tuple[Event, bytes]]:
    codec = EventCodec()
    return [(codec.decode(record.value), record.value) for record in read_topic(settings.kafka_bootstrap,
                                                                                settings.topic_events)]


def dead_letters(settings: Settings) -> list[DeadLetterEntry]:
    return list(read_dead_letters(settings.kafka_bootstrap, settings.topic_dlq))


def chain_breaks(events: list[tuple[Event, bytes]]) -> list:
    links = [ChainLink(e.payee_id, e.envelope.sequence, e.envelope.previous_hash, raw) for e, raw in events]
    return verify_chain(links)[1]
