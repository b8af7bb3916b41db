"""The sequencer on the real broker: exactly once in the ledger, every reject in the DLQ with a reason."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from ledger.codec import EventCodec
from ledger.intake import parse_record
from ledger.money import Money
from processors.kafka_io import DeliveryTracker, flush_or_raise, make_producer
from processors.ledger_client import LedgerClient
from tests.integration.cli_env import LEDGER, env_for
from tests.integration.sequencing_helpers import (
    PAST, chain_breaks, dead_letters, ledger_events, payment, refund, run_sequencer, send_raw,
)


def _ids(events) -> list[str]:
    return [event.payload.get("refund_id") or event.payload.get("payment_id") for event, _ in events]


def test_a_payment_sent_twice_is_in_the_ledger_once_also_across_a_restart(settings):
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.record_batch([payment("p1"), payment("p2"), payment("p1")])
    first = run_sequencer(settings)
    assert (first.stats.appended, first.stats.duplicates) == (2, 1)

    with LedgerClient(settings.kafka_bootstrap, settings) as client:  # after a restart: from the checkpoint
        client.record_batch([payment("p1"), payment("p3")])
    second = run_sequencer(settings)
    assert second.stats.rebuilt_events == 0  # the clean stop checkpointed everything: no tail to read
    assert (second.stats.appended, second.stats.duplicates) == (1, 1)

    events = ledger_events(settings)
    assert sorted(_ids(events)) == ["p1", "p2", "p3"]
    assert [event.envelope.sequence for event, _ in events] == [1, 2, 3]
    assert chain_breaks(events) == []


MALFORMED = {
    "bad JSON": (b'{"payment_id": "x1", ', "not valid JSON"),
    "wrong type": (json.dumps(payment("x2", services="three")).encode(), "services"),
    "float amount": (json.dumps(payment("x3", amount_minor=10.5)).encode(), "floats are never accepted"),
    "zero amount": (json.dumps(payment("x4", amount_minor=0)).encode(), "greater than zero"),
    "negative amount": (json.dumps(payment("x5", amount_minor=-100)).encode(), "greater than zero"),
    "unknown currency": (json.dumps(payment("x6", currency="ABC")).encode(), "unknown currency 'ABC'"),
    "lower-case currency": (json.dumps(payment("x7", currency="usd")).encode(), "upper-case"),
    "naive timestamp": (json.dumps({**payment("x8"), "occurred_at": "2026-11-21T10:00:00"}).encode(), "no UTC offset"),
    "missing payee": (json.dumps({k: v for k, v in payment("x9").items() if k != "payee_id"}).encode(),
                      "payee_id: is required"),
    "oversized metadata": (json.dumps(payment("x10", metadata={"note": "x" * 5000})).encode(), "metadata: is"),
    "random bytes": (bytes(range(7, 200)), "neither a JSON object nor a readable Avro event"),
    "empty value": (b"", "record has no value"),
    "payout event on intake": (None, "cannot be submitted on the intake topic"),
}


def test_every_malformed_record_lands_in_the_dlq_with_its_bytes_and_reason(settings):
    from tests.unit.event_factory import make_event

    cases = dict(MALFORMED)
    cases["payout event on intake"] = (EventCodec().encode(make_event("PayoutSettled")), cases["payout event on intake"][1])
    good = json.dumps(payment("good-1")).encode()
    values = [good] + [value for value, _ in cases.values()]
    send_raw(settings, values)

    worker = run_sequencer(settings)

    assert worker.stats.appended == 1
    letters = dead_letters(settings)
    assert [letter.value for letter in letters] == [value for value, _ in cases.values()]
    for (name, (_, expected)), letter in zip(cases.items(), letters):
        assert expected in letter.reason, f"{name}: {letter.reason!r}"
        assert letter.source_topic == settings.topic_incoming and letter.source_offset >= 1
    assert sorted(letter.source_offset for letter in letters) == list(range(1, len(cases) + 1))


def test_refunds_reverse_earnings_within_what_remains(settings):
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.record_batch([
            payment("p1", amount_minor=10_000),
            refund("r1", "p1", 4_000),
            refund("r2", "p1", 6_000),   # exactly the rest: accepted
            refund("r3", "p1", 1),       # nothing remains
            refund("r4", "nope", 100),   # unknown payment
            refund("r5", "p1", 100, currency="EUR"),
        ])
    worker = run_sequencer(settings.model_copy(update={"sequencer_wait_s": 1}))  # r4 waits 1 s for its payment
    assert worker.stats.appended == 3
    events = ledger_events(settings)
    assert _ids(events) == ["p1", "r1", "r2"]
    assert sum((e.payload["amount"] for e, _ in events if e.event_type == "PaymentRefunded"),
               Money.zero("USD")) == Money.of(10_000, "USD")
    reasons = [letter.reason for letter in dead_letters(settings)]
    assert "larger than the USD 0.00 that remains" in reasons[0]
    assert "refund is in EUR but payment 'p1' is in USD" in reasons[1]
    assert "refund of unknown payment 'nope': it waited longer than LEDGER_SEQUENCER_WAIT_S (1 s)" in reasons[2]


def test_a_conflicting_resubmission_is_refused_not_overwritten(settings):
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.record_batch([payment("p1", amount_minor=1000), payment("p1", amount_minor=9000)])
    run_sequencer(settings)
    events = ledger_events(settings)
    assert len(events) == 1 and events[0][0].payload["amount"] == Money.of(1000, "USD")
    (letter,) = dead_letters(settings)
    assert "PaymentCompleted:p1 is already recorded with different content" in letter.reason


def test_a_dead_letter_replayed_after_its_cause_is_fixed_is_appended(settings, tmp_path):
    import subprocess

    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.record_batch([refund("r1", "p1", 500)])  # the payment has not arrived yet
    run_sequencer(settings.model_copy(update={"sequencer_wait_s": 1}))  # nor does it within the wait
    (letter,) = dead_letters(settings)

    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.record_batch([payment("p1", amount_minor=1000)])
    env = env_for(settings, tmp_path)
    ledger = LEDGER
    listed = json.loads(subprocess.run([ledger, "dlq", "list", "--json"], env=env, capture_output=True,
                                       text=True, check=True).stdout)
    assert [entry["id"] for entry in listed] == [letter.id]
    subprocess.run([ledger, "dlq", "replay", letter.id], env=env, capture_output=True, check=True)
    missing = subprocess.run([ledger, "dlq", "replay", "0:999"], env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and "no dead letter '0:999'" in missing.stderr

    run_sequencer(settings)
    assert _ids(ledger_events(settings)) == ["p1", "r1"]
    assert len(dead_letters(settings)) == 1  # the original stays as evidence; nothing new was refused


def test_ledger_chains_verify_and_tampering_is_detected(settings):
    records = [payment(f"p{i}", payee_id=f"payee-{i % 3}", amount_minor=100 + i) for i in range(30)]
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.record_batch(records)
    run_sequencer(settings)
    events = ledger_events(settings)
    assert len(events) == 30 and chain_breaks(events) == []
    per_payee = Counter(event.payee_id for event, _ in events)
    assert set(per_payee.values()) == {10}

    middle = next(i for i, (e, _) in enumerate(events) if e.payee_id == "payee-1" and e.envelope.sequence == 5)
    edited_event, raw = events[middle]
    edited = list(events)
    edited[middle] = (edited_event, raw.replace(edited_event.payload["payment_id"].encode(), b"pX", 1))
    dropped = events[:middle] + events[middle + 1:]
    same_payee = [i for i, (e, _) in enumerate(events) if e.payee_id == "payee-1"]
    reordered = list(events)
    a, b = same_payee[2], same_payee[3]
    reordered[a], reordered[b] = reordered[b], reordered[a]
    for name, tampered in (("edit", edited), ("drop", dropped), ("reorder", reordered)):
        breaks = chain_breaks(tampered)
        assert breaks and {b.payee_id for b in breaks} == {"payee-1"}, name


def test_client_refuses_bad_input_synchronously_naming_the_field(settings):
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        with pytest.raises(ValueError, match=r"amount_minor: must be greater than zero, got 0"):
            client.record_payment(payment_id="p1", payee_id="b1", amount_minor=0, currency="USD", occurred_at=PAST)
        with pytest.raises(ValueError, match=r"occurred_at: timestamp has no UTC offset"):
            client.record_payment(payment_id="p1", payee_id="b1", amount_minor=5, currency="USD",
                                  occurred_at=PAST.replace(tzinfo=None))
        result = client.record_batch([payment("ok-1"), payment("bad", amount_minor=2.5), payment("ok-2")])
    assert len(result.sent) == 2 and [index for index, _ in result.rejected] == [1]
    assert parse_record(payment("ok-1"), settings.intake_limits(), PAST).envelope.event_id == result.sent[0]


def _command(settings, events) -> None:
    codec = EventCodec()
    producer = make_producer(settings.kafka_bootstrap)
    tracker = DeliveryTracker()
    for event in events:
        producer.produce(settings.topic_commands, key=event.payee_id.encode(), value=codec.encode(event),
                         on_delivery=tracker)
    flush_or_raise(producer, tracker, len(events))


def test_internal_commands_are_chained_once_and_intake_types_are_refused_there(settings):
    from tests.unit.event_factory import make_event

    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.record_batch([payment("p1", payee_id="payee-1")])
    schedule = make_event("PayeeScheduleSet", payee_id="payee-1")
    held = make_event("PayeeHoldSet", payee_id="payee-1")
    smuggled = make_event("PaymentCompleted", payee_id="payee-1")
    _command(settings, [schedule, held, schedule, smuggled])

    worker = run_sequencer(settings)

    events = ledger_events(settings)
    types = [event.event_type for event, _ in events]
    assert sorted(types) == ["PayeeHoldSet", "PayeeScheduleSet", "PaymentCompleted"]
    assert types.index("PayeeScheduleSet") < types.index("PayeeHoldSet")  # one partition keeps their order
    assert chain_breaks(events) == []
    assert schedule.envelope.event_id in {event.envelope.event_id for event, _ in events}
    assert worker.stats.duplicates == 1
    (letter,) = dead_letters(settings)
    assert letter.source_topic == settings.topic_commands
    assert "PaymentCompleted must be submitted on the intake topic" in letter.reason


def test_a_refund_waits_for_its_payment_then_is_chained_after_it(settings):
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.record_batch([refund("r1", "p1", 500)])
    waited = run_sequencer(settings)
    assert waited.stats.waiting == 1 and ledger_events(settings) == [] and dead_letters(settings) == []
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.record_batch([payment("p1", amount_minor=1000)])
    run_sequencer(settings)  # a new process: the refund's wait survived the restart (PostgreSQL)
    assert _ids(ledger_events(settings)) == ["p1", "r1"] and dead_letters(settings) == []


def test_a_waiting_refunds_old_position_does_not_hide_a_new_record_there(settings):
    """After a broker restore the topics number from 0 again: a waiting refund's source position may then
    name a new record, which must not be skipped as 'already waiting'."""
    import sqlalchemy

    from runtime.database import make_engine

    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.record_batch([refund("r1", "p-never", 500)])
    run_sequencer(settings)
    engine = make_engine(settings.database_url)
    with engine.begin() as connection:  # pretend it waited at the position the next record will take
        connection.execute(sqlalchemy.text("UPDATE sequencer_waiting SET source_offset = source_offset + 1"))
    engine.dispose()
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        client.record_batch([payment("p2", amount_minor=1000)])  # same payee, same partition, next offset
    run_sequencer(settings)
    assert _ids(ledger_events(settings)) == ["p2"]
