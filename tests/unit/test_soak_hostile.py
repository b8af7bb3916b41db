"""demo/hostile.py: every hostile record the soak sends is refused by the rules, naming its field."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.intake import RECORD_MAX_BYTES, IntakeLimits, json_size, parse_record
from ledger.ledger_index import content_digest
from processors.sequencer_input import interpret
from demo.hostile import (
    CATEGORIES, ENTRANCES, STATEFUL_KINDS, Hostile, _codec, _json, expected_refusal, hostile_records,
)

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
ZONES = [timezone.utc, timezone(timedelta(hours=-5)), timezone(timedelta(hours=9))]
NOWS = st.datetimes(datetime(2021, 1, 1), datetime(2035, 12, 31), timezones=st.sampled_from(ZONES))


def valid_payments(now: datetime) -> dict[str, dict]:
    """The soak's valid payments the stateful kinds are built from (one at its currency's maximum: no refund)."""
    payments = {f"soak-pay-{n}": {"type": "payment", "payment_id": f"soak-pay-{n}", "payee_id": f"soak-payee-{n % 3}",
                                  "amount_minor": 1000 + n, "currency": ["USD", "JPY", "BHD"][n % 3],
                                  "occurred_at": (now - timedelta(hours=n + 1)).isoformat()} for n in range(6)}
    payments["soak-pay-max"] = {"payment_id": "soak-pay-max", "payee_id": "soak-payee-0", "amount_minor": 5_000_000,
                                "currency": "USD", "occurred_at": now - timedelta(minutes=5), "source": "pos"}
    return payments


@settings(max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(min_value=-(2**63), max_value=2**64), now=NOWS)
def test_every_stateless_record_is_refused_naming_its_field(seed, now):
    later = now + timedelta(hours=12)  # a soak sends its records after generating them: still refused
    for record in hostile_records(seed, 3000, now, valid_payments(now)):
        for clock in (now, later):
            refusal = expected_refusal(record, clock)
            if record.kind in STATEFUL_KINDS:  # only the sequencer's state refuses these: the rules must not
                assert refusal is None, (record.kind, record.entrance, refusal)
                continue
            assert refusal is not None, f"accepted: {record.kind} at {record.entrance}: {record.value[:300]!r}"
            if record.field:
                assert refusal[0] == record.field, (record.kind, record.entrance, refusal, record.value[:300])


@settings(max_examples=3, deadline=None, database=None)
@given(seed=st.integers(min_value=0, max_value=2**32))
def test_the_same_seed_gives_the_same_bytes_and_another_seed_others(seed):
    first = hostile_records(seed, 400, NOW, valid_payments(NOW))
    assert first == hostile_records(seed, 400, NOW, valid_payments(NOW))
    assert first != hostile_records(seed + 1, 400, NOW, valid_payments(NOW))


def test_every_category_and_entrance_appears_in_a_run_of_1000():
    records = hostile_records(11, 1000, NOW, valid_payments(NOW))
    assert len(records) == 1000
    assert {record.kind for record in records} == set(CATEGORIES)
    assert {record.entrance for record in records} == set(ENTRANCES)
    pairs = Counter((record.kind, record.entrance) for record in records)
    assert set(pairs) == {(kind, entrance) for kind, (entrances, _) in CATEGORIES.items() for entrance in entrances}
    assert all(record.key is None for record in records if record.entrance == "api")


def test_without_valid_ids_the_stateful_kinds_are_left_out():
    records = hostile_records(5, 200, NOW)
    assert len(records) == 200 and not {record.kind for record in records} & STATEFUL_KINDS
    assert {record.kind for record in records} == set(CATEGORIES) - STATEFUL_KINDS
    at_the_maximum = {"p": valid_payments(NOW)["soak-pay-max"]}  # nothing to refund more of: refunds left out
    assert "refund_too_large" not in {record.kind for record in hostile_records(5, 200, NOW, at_the_maximum)}
    assert len(hostile_records(5, 3, NOW)) == 3


def event_of(record: Hostile, now: datetime = NOW):
    """The event a record the rules accept becomes (the sequencer's or the API's own parse)."""
    if record.entrance == "api":
        (item,) = json.loads(record.value)["records"]
        return parse_record(item, IntakeLimits(), now, size=json_size(item))
    return interpret(record.value, _codec(), IntakeLimits(), now, record.key, check_key=True)


def test_stateful_records_conflict_with_or_overdraw_a_valid_payment():
    valid = valid_payments(NOW)
    originals = {pid: event_of(Hostile("valid", "api", None, _json(payment, api=True), ""))
                 for pid, payment in valid.items()}
    records = [record for record in hostile_records(8, 1000, NOW, valid) if record.kind in STATEFUL_KINDS]
    assert {(record.kind, record.entrance) for record in records} == {(kind, entrance) for kind in STATEFUL_KINDS
                                                                      for entrance in ENTRANCES}
    for record in records:
        event = event_of(record)
        original = originals[event.payload["payment_id"]]
        assert event.payee_id == original.payee_id and (record.key in (None, event.payee_id.encode()))
        if record.kind == "conflicting_id":
            assert event.event_type == "PaymentCompleted" and content_digest(event) != content_digest(original)
        else:
            assert event.event_type == "PaymentRefunded" and event.payload["amount"] > original.payload["amount"]
            assert event.payload["refund_id"] not in valid


def test_oversized_records_are_larger_than_a_record_may_be():
    for record in hostile_records(3, 2000, NOW):
        if record.kind == "oversized_record" and record.entrance == "api":
            (item,) = json.loads(record.value)["records"]
            assert json_size(item) > RECORD_MAX_BYTES
        elif record.kind == "oversized_record":
            assert len(record.value) > RECORD_MAX_BYTES


def test_a_valid_record_mutated_by_nothing_is_accepted():
    record = {"type": "payment", "payment_id": "soak-pay-1", "payee_id": "soak-payee-1", "amount_minor": 1250,
              "currency": "EUR", "occurred_at": "2026-11-22T11:00:00+01:00", "metadata": {"chair": "4"}}
    avro = _codec().encode(parse_record(record, IntakeLimits(), NOW))
    for entrance, value in (("incoming_json", _json(record)), ("incoming_avro", avro),
                            ("api", _json(record, api=True))):
        key = None if entrance == "api" else b"soak-payee-1"
        assert expected_refusal(Hostile("valid", entrance, key, value, ""), NOW) is None, entrance
    # and the checker sees a single change: the key
    assert expected_refusal(Hostile("wrong_key", "incoming_avro", b"soak-payee-2", avro, "key"), NOW)[0] == "key"
