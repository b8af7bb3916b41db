"""On the real broker: garbage on a topic becomes dead letters with its original bytes; the loop goes on."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

from ledger.codec import EventCodec
from ledger.events import Event, new_envelope
from ledger.money import Money
from processors.decoding import DeadLetter, Decoded, decode_records
from processors.kafka_io import DeliveryTracker, flush_or_raise, make_producer, read_topic

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


def _payment(index: int) -> Event:
    return Event(
        new_envelope("PaymentCompleted", payee_id="payee-1", occurred_at=NOW, recorded_at=NOW),
        {"payment_id": f"p{index}", "amount": Money.of(100 + index, "USD")},
    )


def test_undecodable_records_become_dead_letters_and_valid_ones_still_decode(settings):
    codec = EventCodec()
    valid = [codec.encode(_payment(index)) for index in range(20)]
    garbage = [
        os.urandom(64),
        json.dumps({"payment_id": "p1", "amount": 10.5}).encode(),
        valid[0][:-4],  # truncated
        b"\xc3\x01" + b"\x00" * 8 + b"body",  # unknown fingerprint
        b"",
    ]
    sent = valid[:10] + garbage + valid[10:]
    producer = make_producer(settings.kafka_bootstrap)
    tracker = DeliveryTracker()
    for value in sent:
        producer.produce(settings.topic_incoming, key=b"payee-1", value=value, on_delivery=tracker)
    flush_or_raise(producer, tracker, len(sent))

    results = list(decode_records(read_topic(settings.kafka_bootstrap, settings.topic_incoming), codec))

    decoded = [result for result in results if isinstance(result, Decoded)]
    dead = [result for result in results if isinstance(result, DeadLetter)]
    assert [d.event.payload["payment_id"] for d in decoded] == [f"p{i}" for i in range(20)]
    assert [d.raw for d in dead] == garbage
    assert all(d.reason for d in dead)
    assert {d.topic for d in dead} == {settings.topic_incoming}
    assert [d.offset for d in dead] == list(range(10, 15))  # one partition per key: offsets follow send order
