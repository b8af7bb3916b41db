"""Payouts as the ledger says they are (for operator commands), and waiting for an operator's event.

`payout_book` does not fold the whole log: it reads the payout events that the projector has archived
(event_archive, written in the same transaction as its positions in projection_positions) and then
only the tail of ledger.events after those positions. Without a projector that tail is the whole
log, as before. PayoutBook.apply is idempotent by event id, so an event seen in both is harmless.
"""

from __future__ import annotations

import time
from typing import Any

import sqlalchemy
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from ledger.codec import EventCodec, UndecodableEvent
from ledger.payouts import LIFECYCLE_TYPES, Payout, PayoutBook
from processors.dead_letters import parse_entry
from processors.kafka_io import Record, read_topic, topic_partitions
from processors.ledger_replay import CorruptLedger, decode_event
from processors.log_reader import LogReader
from processors.prefetch import BOUNDED_PREFETCH
from runtime.settings import Settings
from runtime.kafka_security import secure


def load_book(bootstrap: str, topic: str, codec: EventCodec | None = None) -> PayoutBook:
    codec = codec or EventCodec()
    book = PayoutBook()
    for record in read_topic(bootstrap, topic, timeout_s=600):
        try:
            book.apply(codec.decode(record.value or b""))
        except UndecodableEvent as exc:
            raise CorruptLedger(f"{topic}[{record.partition}]@{record.offset}: {exc.reason}") from None
    return book


PROJECTOR = "read-models"  # projections/projector.NAME: whose positions say what the archive holds


def payout_book(bootstrap: str, engine: sqlalchemy.Engine, topic: str, codec: EventCodec | None = None, *,
                payout_id: str | None = None, payee_id: str | None = None, timeout_s: float = 600.0) -> PayoutBook:
    """The payouts (of one payee, or of the payee of one payout, or all) from the archive plus the log's tail."""
    codec = codec or EventCodec()
    book = PayoutBook()
    with engine.connect() as connection:
        positions = dict(connection.execute(sqlalchemy.text(
            "SELECT partition, next_offset FROM projection_positions WHERE projector = :p AND topic = :t"),
            {"p": PROJECTOR, "t": topic}).all())
        if payout_id is not None and payee_id is None:
            payee_id = connection.execute(sqlalchemy.text("SELECT payee_id FROM payouts WHERE payout_id = :id"),
                                          {"id": payout_id}).scalar()  # None: not projected (yet): in the tail
        if positions and (payout_id is None or payee_id is not None):
            query = ("SELECT encoded FROM event_archive WHERE event_type = ANY(:types)"
                     + (" AND payee_id = :payee" if payee_id is not None else "") + " ORDER BY payee_id, sequence")
            rows = connection.execution_options(stream_results=True, max_row_buffer=1000).execute(
                sqlalchemy.text(query), {"types": sorted(LIFECYCLE_TYPES), "payee": payee_id})
            for (encoded,) in rows:
                book.apply(codec.decode(bytes(encoded)))
    reader = LogReader(bootstrap, "payout-book", {topic: positions}, batch_max=5_000, config=BOUNDED_PREFETCH)
    try:
        for batch in reader.batches_to_end(timeout_s, f"the tail of {topic}"):
            for message in batch:
                event = decode_event(codec, message)
                if payee_id is None or event.payee_id == payee_id:
                    book.apply(event)
    finally:
        reader.close()
    return book


def await_verdict(settings: Settings, bootstrap: str, event_id: str, timeout_s: float) -> tuple[str, str]:
    """("chained", "") once the event is in ledger.events, ("refused", reason) if dead-lettered, or
    ("waiting", "") after timeout_s (the sequencer is not running, or is behind).

    One reader follows both topics from their beginning: each record is read once, however long it waits.
    """
    codec = EventCodec()
    consumer = Consumer(secure({"bootstrap.servers": bootstrap, "group.id": "ledger-verdict", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "fetch.wait.max.ms": 100}))
    topics = (settings.topic_events, settings.topic_dlq)
    consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)
                     for topic in topics for partition in topic_partitions(bootstrap, topic)])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None or message.error() is not None:
                continue
            try:
                found = codec.decode(message.value() or b"").envelope.event_id == event_id
            except UndecodableEvent:
                continue
            if found and message.topic() == settings.topic_events:
                return "chained", ""
            if found:
                entry = parse_entry(Record(message.topic(), message.partition(), message.offset(), message.key(),
                                           message.value(), tuple(message.headers() or ())))
                return "refused", entry.reason
        return "waiting", ""
    finally:
        consumer.close()


def payout_summary(payout: Payout) -> dict[str, Any]:
    return {
        "payout_id": payout.payout_id, "payee_id": payout.payee_id, "status": payout.status.value,
        "amount_minor": payout.amount.amount_minor, "currency": payout.amount.currency.code,
        "amount": payout.amount.to_major_string(), "method": payout.method, "period_id": payout.period_id,
        "trigger": payout.trigger, "attempts": len(payout.attempts), "reason_code": payout.reason_code,
        "message": payout.message, "provider_reference": payout.provider_reference, "reversed": payout.reversed,
        "requested_at": payout.requested_at.isoformat(),
        "updated_at": payout.updated_at.isoformat() if payout.updated_at else None,
        "next_attempt_due": payout.due_at.isoformat() if payout.due_at else None,
    }


def payout_detail(payout: Payout) -> dict[str, Any]:
    return {**payout_summary(payout), "cancel_reason": payout.cancel_reason, "timeline": [
        {"attempt": a.number, "provider": a.provider, "submitted_at": a.submitted_at.isoformat(),
         "outcome": a.outcome or "in progress", "provider_reference": a.provider_reference,
         "reason_code": a.reason_code, "message": a.message, "retryable": a.retryable,
         "finished_at": a.finished_at.isoformat() if a.finished_at else None} for a in payout.attempts]}
