"""ledger.intake: what upstream may submit, one rule set for JSON records and Avro events.

Every rejected input must raise IntakeRejected whose `problems` name the offending field; anything
else escaping parse_record (TypeError, OverflowError...) is a bug, because the consumer would
crash or dead-letter without a reason instead of rejecting the record.
"""

from __future__ import annotations

import dataclasses
import json
import re
import string
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from event_factory import make_event
from ledger.codec import EventCodec
from ledger.events import Event
from ledger.intake import (
    IntakeLimits,
    IntakeRejected,
    deterministic_event_id,
    parse_record,
    record_of_event,
    validate_event,
)
from ledger.money import Money

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
LIMITS = IntakeLimits()
DROP = object()  # marks a field to remove from a record


def payment(**changes: Any) -> dict[str, Any]:
    """A minimal valid payment record, with fields changed (or dropped with DROP)."""
    record: dict[str, Any] = {
        "payee_id": "payee-1",
        "payment_id": "pay-1",
        "amount_minor": 1000,
        "currency": "USD",
        "occurred_at": "2026-11-22T10:00:00+00:00",
    }
    record.update(changes)
    return {key: value for key, value in record.items() if value is not DROP}


def refund(**changes: Any) -> dict[str, Any]:
    record = payment(type="refund", refund_id="ref-1", amount_minor=400)
    record.update(changes)
    return {key: value for key, value in record.items() if value is not DROP}


def adjustment(**changes: Any) -> dict[str, Any]:
    record = payment(type="adjustment", payment_id=DROP, adjustment_id="adj-1", kind="DEDUCTION",
                     name="booth_rent", amount_minor=15000)
    record.update(changes)
    return {key: value for key, value in record.items() if value is not DROP}


def rejection(record: Any, limits: IntakeLimits = LIMITS, now: datetime = NOW) -> IntakeRejected:
    with pytest.raises(IntakeRejected) as info:
        parse_record(record, limits, now)
    assert info.value.problems, "an IntakeRejected must list at least one problem"
    assert str(info.value) == "; ".join(f"{name}: {reason}" for name, reason in info.value.problems)
    return info.value


def assert_rejected(record: Any, field: str, pattern: str, limits: IntakeLimits = LIMITS,
                    now: datetime = NOW) -> IntakeRejected:
    """The record is rejected and one problem names `field` with a reason matching `pattern`."""
    rejected = rejection(record, limits, now)
    reasons = [reason for name, reason in rejected.problems if name == field]
    assert reasons, f"no problem names {field!r}: {rejected.problems}"
    assert any(re.search(pattern, reason) for reason in reasons), (field, pattern, rejected.problems)
    return rejected


def problem_fields(rejected: IntakeRejected) -> set[str]:
    return {name for name, _ in rejected.problems}


@pytest.fixture(scope="module")
def codec() -> EventCodec:
    return EventCodec()


# --- valid payments ---------------------------------------------------------------------------


def test_minimal_payment_is_accepted_with_defaults() -> None:
    event = parse_record(payment(), LIMITS, NOW)
    assert event.event_type == "PaymentCompleted"
    assert event.payee_id == "payee-1"
    assert dict(event.payload) == {
        "payment_id": "pay-1",
        "amount": Money.of(1000, "USD"),
        "services": 1,
        "source": "",
        "metadata": {},
    }
    assert event.envelope.occurred_at == datetime(2026, 11, 22, 10, 0, tzinfo=timezone.utc)
    assert event.envelope.recorded_at == NOW
    assert event.envelope.sequence is None and event.envelope.previous_hash is None
    assert event.envelope.event_id == deterministic_event_id("payment", "pay-1")


def test_explicit_type_payment_and_optional_fields_are_carried() -> None:
    event = parse_record(payment(type="payment", services=3, source="booking", metadata={"chair": "4"}),
                         LIMITS, NOW)
    assert event.payload["services"] == 3
    assert event.payload["source"] == "booking"
    assert dict(event.payload["metadata"]) == {"chair": "4"}


def test_event_id_follows_from_the_payment_id() -> None:
    first = parse_record(payment(), LIMITS, NOW)
    retry = parse_record(payment(amount_minor=999, occurred_at="2026-11-21T00:00:00Z"), LIMITS,
                         NOW + timedelta(hours=1))
    other = parse_record(payment(payment_id="pay-2"), LIMITS, NOW)
    assert first.envelope.event_id == retry.envelope.event_id
    assert other.envelope.event_id != first.envelope.event_id
    assert other.envelope.event_id == deterministic_event_id("payment", "pay-2")


def test_deterministic_event_id_separates_kinds_of_ids() -> None:
    assert deterministic_event_id("payment", "x-1") == deterministic_event_id("payment", "x-1")
    assert deterministic_event_id("payment", "x-1") != deterministic_event_id("refund", "x-1")
    assert deterministic_event_id("refund", "x-1") != deterministic_event_id("adjustment", "x-1")


def test_occurred_at_with_offset_is_converted_to_utc() -> None:
    event = parse_record(payment(occurred_at="2026-11-22T14:05:00+02:00"), LIMITS, NOW)
    occurred = event.envelope.occurred_at
    assert occurred == datetime(2026, 11, 22, 12, 5, tzinfo=timezone.utc)
    assert occurred.utcoffset() == timedelta(0)
    assert (occurred.hour, occurred.minute) == (12, 5)


def test_z_suffix_is_accepted_and_same_instant_gives_the_same_event() -> None:
    zulu = parse_record(payment(occurred_at="2026-11-22T09:30:00Z"), LIMITS, NOW)
    offset = parse_record(payment(occurred_at="2026-11-22T07:30:00-02:00"), LIMITS, NOW)
    assert zulu.envelope.occurred_at == datetime(2026, 11, 22, 9, 30, tzinfo=timezone.utc)
    assert zulu == offset


def test_aware_datetime_object_is_accepted_and_normalised() -> None:
    plus_one = timezone(timedelta(hours=1))
    event = parse_record(payment(occurred_at=datetime(2026, 11, 22, 11, 0, tzinfo=plus_one)), LIMITS, NOW)
    assert event.envelope.occurred_at == datetime(2026, 11, 22, 10, 0, tzinfo=timezone.utc)
    assert event.envelope.occurred_at.tzinfo == timezone.utc


# --- malformed payments ------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["payee_id", "payment_id", "amount_minor", "currency", "occurred_at"])
def test_missing_required_field_is_named(field: str) -> None:
    with pytest.raises(IntakeRejected, match=rf"{field}: is required"):
        parse_record(payment(**{field: DROP}), LIMITS, NOW)


@pytest.mark.parametrize(
    "field, value",
    [
        ("payment_id", ""),
        ("payment_id", "pay 1"),
        ("payment_id", " pay-1"),
        ("payment_id", "pay-1 "),
        ("payment_id", "p" * 200),
        ("payment_id", "p" * 129),
        ("payment_id", "-pay"),
        ("payment_id", ".pay"),
        ("payment_id", "pay\t1"),
        ("payment_id", "pay#1"),
        ("payment_id", "paiement-é"),
        ("payee_id", ""),
        ("payee_id", "payee 1"),
        ("payee_id", "x" * 200),
    ],
    ids=lambda value: repr(value)[:20],
)
def test_invalid_id_is_rejected(field: str, value: str) -> None:
    expected = r"is \d+ characters long, at most 128 allowed" if len(value) > 128 else r"is not a valid id"
    assert_rejected(payment(**{field: value}), field, expected)


@pytest.mark.parametrize("value", ["p" * 128, "a", "A.b_c:d@e/f+g-h", "0", "pi_3PqK9L2eZvKYlo2C1x8aB7dE"])
def test_valid_id_shapes_are_accepted(value: str) -> None:
    event = parse_record(payment(payment_id=value, payee_id=value), LIMITS, NOW)
    assert event.payload["payment_id"] == value
    assert event.payee_id == value


@pytest.mark.parametrize("field", ["payee_id", "payment_id"])
def test_id_with_trailing_newline_is_rejected(field: str) -> None:
    assert_rejected(payment(**{field: "pay-1\n"}), field, r"is not a valid id")


@pytest.mark.parametrize(
    "value, pattern",
    [
        (10.5, r"float"),
        (10.0, r"float"),
        ("1000", r"got a str"),
        (True, r"got a bool"),
        (False, r"got a bool"),
        (None, r"got a NoneType"),
        (0, r"greater than zero"),
        (-1, r"greater than zero"),
        (-1000, r"greater than zero"),
    ],
    ids=repr,
)
def test_bad_amount_is_rejected(value: Any, pattern: str) -> None:
    assert_rejected(payment(amount_minor=value), "amount_minor", pattern)


def test_amount_above_the_default_maximum_is_rejected() -> None:
    rejected = assert_rejected(payment(amount_minor=5_000_001), "amount_minor", r"above the maximum")
    assert "USD 50000.01" in str(rejected) and "USD 50000.00" in str(rejected)


def test_amount_at_the_default_maximum_is_accepted() -> None:
    event = parse_record(payment(amount_minor=5_000_000), LIMITS, NOW)
    assert event.payload["amount"] == Money.from_major("50000.00", "USD")


def test_smallest_amount_is_accepted() -> None:
    assert parse_record(payment(amount_minor=1), LIMITS, NOW).payload["amount"] == Money.of(1, "USD")


def test_default_maximum_is_in_major_units_of_each_currency() -> None:
    # BHD has 3 decimals: 50000.000 is 50,000,000 minor units; XOF has none.
    assert parse_record(payment(currency="BHD", amount_minor=50_000_000), LIMITS, NOW)
    assert_rejected(payment(currency="BHD", amount_minor=50_000_001), "amount_minor", r"above the maximum")
    assert parse_record(payment(currency="XOF", amount_minor=50_000), LIMITS, NOW)
    assert_rejected(payment(currency="XOF", amount_minor=50_001), "amount_minor", r"above the maximum")


def test_per_currency_maximum_overrides_the_default_for_that_currency_only() -> None:
    limits = IntakeLimits(max_amount_major_by_currency={"XOF": "30000000"})
    accepted = parse_record(payment(currency="XOF", amount_minor=30_000_000), limits, NOW)
    assert accepted.payload["amount"] == Money.of(30_000_000, "XOF")
    assert_rejected(payment(currency="XOF", amount_minor=30_000_001), "amount_minor", r"XOF 30000000\b",
                    limits=limits)
    assert parse_record(payment(amount_minor=5_000_000), limits, NOW)
    assert_rejected(payment(amount_minor=5_000_001), "amount_minor", r"above the maximum", limits=limits)


@pytest.mark.parametrize("code", ["XYZ", "", "US", "USDD", "XAU", "ANG "])
def test_unknown_currency_is_rejected(code: str) -> None:
    assert_rejected(payment(currency=code), "currency", r"unknown currency")


def test_lower_case_currency_is_rejected_with_a_suggestion() -> None:
    assert_rejected(payment(currency="usd"), "currency", r"did you mean 'USD'\?")


def test_non_string_currency_is_rejected() -> None:
    assert_rejected(payment(currency=840), "currency", r".")


@pytest.mark.parametrize("value", ["2026-11-22T10:00:00", "2026-11-22 10:00:00", "2026-11-22"])
def test_naive_timestamp_is_rejected(value: str) -> None:
    assert_rejected(payment(occurred_at=value), "occurred_at", r"no UTC offset")


def test_naive_datetime_object_is_rejected() -> None:
    assert_rejected(payment(occurred_at=datetime(2026, 11, 22, 10, 0)), "occurred_at", r"no UTC offset")


@pytest.mark.parametrize("value", ["yesterday", "", "2026-13-01T00:00:00Z", "22/11/2026 10:00 +00:00",
                                   "2026-11-22T25:00:00Z"])
def test_unparseable_timestamp_is_rejected(value: str) -> None:
    assert_rejected(payment(occurred_at=value), "occurred_at", r"not an ISO 8601 timestamp")


@pytest.mark.parametrize("value", [1_700_000_000, 1.7e9, None, ["2026-11-22T10:00:00Z"]], ids=repr)
def test_non_string_timestamp_is_rejected(value: Any) -> None:
    assert_rejected(payment(occurred_at=value), "occurred_at", r".")


def test_future_timestamp_beyond_the_skew_is_rejected() -> None:
    limits = IntakeLimits(future_skew_s=300)
    late = (NOW + timedelta(seconds=301)).isoformat()
    assert_rejected(payment(occurred_at=late), "occurred_at", r"in the future", limits=limits)


@pytest.mark.parametrize("ahead", [299, 300])
def test_future_timestamp_within_the_skew_is_accepted(ahead: int) -> None:
    limits = IntakeLimits(future_skew_s=300)
    event = parse_record(payment(occurred_at=(NOW + timedelta(seconds=ahead)).isoformat()), limits, NOW)
    assert event.envelope.occurred_at == NOW + timedelta(seconds=ahead)


def test_future_skew_is_taken_from_the_limits_and_the_injected_clock() -> None:
    limits = IntakeLimits(future_skew_s=0)
    assert_rejected(payment(occurred_at="2026-11-22T12:00:00.000001Z"), "occurred_at", r"in the future",
                    limits=limits)
    assert parse_record(payment(occurred_at="2026-11-22T12:00:00Z"), limits, NOW)
    # The same record is fine for a clock an hour later.
    assert parse_record(payment(occurred_at="2026-11-22T12:30:00Z"), limits, NOW + timedelta(hours=1))


@pytest.mark.parametrize("value", [1, 1.5, None, True, {"nested": "x"}, ["x"]], ids=repr)
def test_metadata_with_non_string_value_is_rejected(value: Any) -> None:
    rejected = rejection(payment(metadata={"ok": "fine", "chair": value}))
    assert problem_fields(rejected) == {"metadata.chair"}


@pytest.mark.parametrize("value", ["not-a-dict", ["a", "b"], None], ids=repr)
def test_metadata_that_is_not_an_object_is_rejected(value: Any) -> None:
    assert_rejected(payment(metadata=value), "metadata", r".")


def test_metadata_with_too_many_keys_is_rejected() -> None:
    metadata = {f"k{i}": "v" for i in range(33)}
    assert_rejected(payment(metadata=metadata), "metadata", r"has 33 keys, at most 32 allowed")


def test_metadata_with_as_many_keys_as_allowed_is_accepted() -> None:
    metadata = {f"k{i}": "v" for i in range(32)}
    assert dict(parse_record(payment(metadata=metadata), LIMITS, NOW).payload["metadata"]) == metadata


def _metadata_of_json_size(size: int, char: str = "x") -> dict[str, str]:
    overhead = len(json.dumps({"note": ""}).encode())  # {"note": ""}
    per_char = len(char.encode())
    assert (size - overhead) % per_char == 0
    metadata = {"note": char * ((size - overhead) // per_char)}
    assert len(json.dumps(metadata, ensure_ascii=False).encode()) == size
    return metadata


def test_metadata_exactly_at_the_byte_limit_is_accepted() -> None:
    metadata = _metadata_of_json_size(4096)
    event = parse_record(payment(metadata=metadata), LIMITS, NOW)
    assert dict(event.payload["metadata"]) == metadata


def test_metadata_one_byte_over_the_limit_is_rejected() -> None:
    assert_rejected(payment(metadata=_metadata_of_json_size(4097)), "metadata",
                    r"is 4097 bytes as JSON, at most 4096 allowed")


def test_metadata_size_counts_utf8_bytes_not_characters() -> None:
    limits = IntakeLimits(metadata_max_bytes=100)
    within = _metadata_of_json_size(100, "é")  # 44 characters of 2 bytes each, plus 12 of overhead
    assert parse_record(payment(metadata=within), limits, NOW)
    over = {"note": "é" * 45}  # 57 characters, 102 bytes
    assert_rejected(payment(metadata=over), "metadata", r"is 102 bytes", limits=limits)


@pytest.mark.parametrize("extra", ["tip", "payout_id", "Payment_id", "envelope", "refund_id"])
def test_unknown_extra_field_is_rejected(extra: str) -> None:
    with pytest.raises(IntakeRejected, match=rf"{extra}: is not a known field"):
        parse_record(payment(**{extra: "x"}), LIMITS, NOW)


@pytest.mark.parametrize("record", [[], ["payee-1"], "payment", "", None, 42, 1.5, b"{}"], ids=repr)
def test_non_object_record_is_rejected(record: Any) -> None:
    rejected = assert_rejected(record, "record", r"must be a JSON object")
    assert len(rejected.problems) == 1


@pytest.mark.parametrize("kind", ["payout", "Payment", "PAYMENT", "", None, 1], ids=repr)
def test_unknown_record_type_is_rejected(kind: Any) -> None:
    assert_rejected(payment(type=kind), "type", r"is not one of payment, refund, adjustment")


@pytest.mark.parametrize("kind", [[], {}, ["payment"]], ids=repr)
def test_unhashable_record_type_is_rejected(kind: Any) -> None:
    assert_rejected(payment(type=kind), "type", r".")


@pytest.mark.parametrize("services, pattern", [(-1, r"between 0 and 10000"), (10_001, r"between 0 and 10000"),
                                               (True, r"."), (1.0, r"."), ("2", r".")], ids=repr)
def test_bad_services_count_is_rejected(services: Any, pattern: str) -> None:
    assert_rejected(payment(services=services), "services", pattern)


@pytest.mark.parametrize("services", [0, 10_000])
def test_services_bounds_are_inclusive(services: int) -> None:
    assert parse_record(payment(services=services), LIMITS, NOW).payload["services"] == services


def test_non_string_source_is_rejected() -> None:
    assert_rejected(payment(source=7), "source", r".")


def test_non_string_key_is_rejected() -> None:
    rejected = rejection({**payment(), 1: "x"})
    assert problem_fields(rejected) == {"1"}


# --- several problems at once ------------------------------------------------------------------


def test_schema_problems_are_reported_together() -> None:
    record = {"payee_id": 5, "payment_id": "pay-1", "amount_minor": 10.5, "currency": 3,
              "occurred_at": "soon", "tip": "x"}
    rejected = rejection(record)
    assert problem_fields(rejected) == {"payee_id", "amount_minor", "currency", "occurred_at", "tip"}


def test_missing_fields_are_reported_together() -> None:
    rejected = rejection({"type": "refund"})
    assert problem_fields(rejected) == {"payee_id", "amount_minor", "currency", "occurred_at",
                                        "refund_id", "payment_id"}
    assert all(reason == "is required" for _, reason in rejected.problems)


def test_rule_problems_are_reported_together() -> None:
    record = payment(payee_id="payee 1", payment_id="", currency="usd",
                     occurred_at=(NOW + timedelta(hours=1)).isoformat(),
                     metadata={f"k{i}": "v" * 200 for i in range(40)})
    rejected = rejection(record)
    names = [name for name, _ in rejected.problems]
    assert set(names) == {"payee_id", "payment_id", "currency", "occurred_at", "metadata"}
    assert names.count("metadata") == 2  # too many keys and too many bytes


def test_amount_and_id_rule_problems_are_reported_together() -> None:
    rejected = rejection(payment(payment_id="has space", amount_minor=5_000_001))
    assert problem_fields(rejected) == {"payment_id", "amount_minor"}


def test_schema_problem_is_reported_even_when_a_rule_would_also_fail() -> None:
    # Rules (id shape, maximum, clock) run only on a record that has the right shape, so here only
    # the float is reported; the bad id would be reported once the amount is fixed.
    rejected = rejection(payment(payment_id="has space", amount_minor=10.5))
    assert "amount_minor" in problem_fields(rejected)
    fixed = rejection(payment(payment_id="has space", amount_minor=10))
    assert problem_fields(fixed) == {"payment_id"}


# --- refunds and adjustments --------------------------------------------------------------------


def test_valid_refund_builds_payment_refunded() -> None:
    event = parse_record(refund(reason="customer", metadata={"ticket": "SUP-1"}), LIMITS, NOW)
    assert event.event_type == "PaymentRefunded"
    assert event.payee_id == "payee-1"
    assert dict(event.payload) == {
        "refund_id": "ref-1",
        "payment_id": "pay-1",
        "amount": Money.of(400, "USD"),
        "reason": "customer",
        "metadata": {"ticket": "SUP-1"},
    }
    assert event.envelope.event_id == deterministic_event_id("refund", "ref-1")
    assert event.envelope.event_id != deterministic_event_id("payment", "pay-1")


def test_minimal_refund_defaults() -> None:
    event = parse_record(refund(), LIMITS, NOW)
    assert event.payload["reason"] == ""
    assert dict(event.payload["metadata"]) == {}


@pytest.mark.parametrize("field", ["payment_id", "refund_id"])
def test_refund_requires_both_ids(field: str) -> None:
    assert_rejected(refund(**{field: DROP}), field, r"is required")


@pytest.mark.parametrize("field", ["payment_id", "refund_id"])
def test_refund_ids_follow_the_id_rule(field: str) -> None:
    assert_rejected(refund(**{field: "bad id"}), field, r"is not a valid id")


@pytest.mark.parametrize("value, pattern", [(0, r"greater than zero"), (-400, r"greater than zero"),
                                            (4.0, r"float"), (5_000_001, r"above the maximum")])
def test_refund_amount_follows_the_payment_rules(value: Any, pattern: str) -> None:
    assert_rejected(refund(amount_minor=value), "amount_minor", pattern)


def test_refund_does_not_take_payment_only_fields() -> None:
    assert_rejected(refund(services=1), "services", r"is not a known field")


@pytest.mark.parametrize("kind", ["DEDUCTION", "BONUS"])
def test_valid_adjustment_builds_earnings_adjusted(kind: str) -> None:
    event = parse_record(adjustment(kind=kind, currency="XOF", reason="March rent", actor="ops@x"), LIMITS, NOW)
    assert event.event_type == "EarningsAdjusted"
    assert dict(event.payload) == {
        "adjustment_id": "adj-1",
        "kind": kind,
        "name": "booth_rent",
        "amount": Money.of(15000, "XOF"),
        "reason": "March rent",
        "actor": "ops@x",
        "metadata": {},
    }
    assert event.envelope.event_id == deterministic_event_id("adjustment", "adj-1")


@pytest.mark.parametrize("kind", ["bonus", "CREDIT", "", None, 1], ids=repr)
def test_adjustment_kind_must_be_deduction_or_bonus(kind: Any) -> None:
    assert_rejected(adjustment(kind=kind), "kind", r".")


@pytest.mark.parametrize("field", ["adjustment_id", "kind", "name"])
def test_adjustment_required_fields(field: str) -> None:
    assert_rejected(adjustment(**{field: DROP}), field, r"is required")


def test_adjustment_does_not_take_a_payment_id() -> None:
    assert_rejected(adjustment(payment_id="pay-1"), "payment_id", r"is not a known field")


def test_adjustment_amount_is_positive_and_capped() -> None:
    assert_rejected(adjustment(amount_minor=-15000), "amount_minor", r"greater than zero")
    assert_rejected(adjustment(amount_minor=5_000_001), "amount_minor", r"above the maximum")


# --- crashes instead of rejections -------------------------------------------------------------


def test_timestamp_that_cannot_be_expressed_in_utc_is_rejected() -> None:
    assert_rejected(payment(occurred_at="0001-01-01T00:00:00+01:00"), "occurred_at", r".")


@pytest.mark.parametrize("metadata", ['{"note": "\\ud800"}', '{"\\udfff": "x"}'])
def test_metadata_with_lone_surrogate_is_rejected(metadata: str) -> None:
    assert_rejected(payment(metadata=json.loads(metadata)), "metadata", r".")


@pytest.mark.parametrize("record", [payment(source="\ud800"), refund(reason="\ud800"),
                                    adjustment(name="\ud800")], ids=["source", "reason", "name"])
def test_free_text_with_lone_surrogate_is_rejected_at_intake(record: dict[str, Any], codec: EventCodec) -> None:
    try:
        event = parse_record(record, LIMITS, NOW)
    except IntakeRejected:
        return
    codec.encode(event)  # an accepted event must at least be storable


def test_absurdly_large_amount_is_rejected() -> None:
    assert_rejected(payment(amount_minor=10**5000), "amount_minor", r"must be at most 9223372036854775807 minor units")


# --- Avro path: validate_event ------------------------------------------------------------------


def _with_event_id(event: Event, event_id: str) -> Event:
    envelope = dataclasses.replace(event.envelope, event_id=event_id, correlation_id="corr-upstream")
    return Event(envelope, event.payload)


@pytest.mark.parametrize("record, kind, business_field", [
    (payment(metadata={"chair": "4"}, services=2, source="pos"), "payment", "payment_id"),
    (refund(reason="dup charge"), "refund", "refund_id"),
    (adjustment(kind="BONUS", actor="ops"), "adjustment", "adjustment_id"),
], ids=["payment", "refund", "adjustment"])
def test_avro_event_round_trips_and_gets_its_deterministic_id(record: dict[str, Any], kind: str,
                                                              business_field: str, codec: EventCodec) -> None:
    parsed = parse_record(record, LIMITS, NOW - timedelta(minutes=5))
    submitted = codec.decode(codec.encode(_with_event_id(parsed, "11111111-2222-3333-4444-555555555555")))
    assert submitted.envelope.event_id == "11111111-2222-3333-4444-555555555555"
    checked = validate_event(submitted, LIMITS, NOW)
    assert checked.envelope.event_id == deterministic_event_id(kind, record[business_field])
    assert checked.envelope.event_id == parsed.envelope.event_id
    assert checked.payload == parsed.payload
    assert checked.event_type == parsed.event_type
    assert checked.payee_id == parsed.payee_id
    assert checked.envelope.occurred_at == parsed.envelope.occurred_at
    assert checked.envelope.recorded_at == NOW
    assert checked.envelope.correlation_id == "corr-upstream"
    assert checked.envelope.sequence is None and checked.envelope.previous_hash is None


def test_record_of_event_is_accepted_by_parse_record(codec: EventCodec) -> None:
    parsed = parse_record(payment(metadata={"a": "b"}), LIMITS, NOW)
    record = record_of_event(codec.decode(codec.encode(parsed)))
    assert record["type"] == "payment"
    assert record["amount_minor"] == 1000 and record["currency"] == "USD"
    assert parse_record(record, LIMITS, NOW) == parsed


def test_factory_payment_event_validates(codec: EventCodec) -> None:
    event = codec.decode(codec.encode(make_event("PaymentCompleted")))
    checked = validate_event(event, LIMITS, NOW)
    assert checked.envelope.event_id == deterministic_event_id("payment", event.payload["payment_id"])
    assert checked.envelope.causation_id == event.envelope.causation_id
    assert checked.payload["amount"] == event.payload["amount"]


@pytest.mark.parametrize("sequence, previous_hash", [(1, "0" * 64), (3, None)])
def test_already_sequenced_event_is_rejected(sequence: int, previous_hash: str | None) -> None:
    event = make_event("PaymentCompleted", sequence=sequence, previous_hash=previous_hash)
    with pytest.raises(IntakeRejected, match=r"envelope\.sequence") as info:
        validate_event(event, LIMITS, NOW)
    assert [name for name, _ in info.value.problems] == ["envelope.sequence"]


@pytest.mark.parametrize("event_type", ["PayoutSettled", "PayoutRequested", "PayeeScheduleSet"])
def test_non_intake_event_type_is_rejected(event_type: str) -> None:
    with pytest.raises(IntakeRejected, match=rf"type: {event_type} cannot be submitted"):
        validate_event(make_event(event_type), LIMITS, NOW)


def test_avro_event_above_the_maximum_is_rejected_like_json(codec: EventCodec) -> None:
    event = codec.decode(codec.encode(make_event("PaymentCompleted", amount=Money.of(5_000_001, "USD"))))
    with pytest.raises(IntakeRejected, match=r"amount_minor: USD 50000\.01 is above the maximum"):
        validate_event(event, LIMITS, NOW)
    at_max = codec.decode(codec.encode(make_event("PaymentCompleted", amount=Money.of(5_000_000, "USD"))))
    assert validate_event(at_max, LIMITS, NOW).payload["amount"] == Money.of(5_000_000, "USD")


@pytest.mark.parametrize("changes, field", [
    ({"payment_id": "has space"}, "payment_id"),
    ({"amount": Money.of(0, "USD")}, "amount_minor"),
    ({"amount": Money.of(-5, "USD")}, "amount_minor"),
    ({"metadata": {f"k{i}": "v" for i in range(33)}}, "metadata"),
], ids=["bad-id", "zero", "negative", "metadata"])
def test_avro_event_breaking_a_rule_is_rejected(changes: dict[str, Any], field: str, codec: EventCodec) -> None:
    event = codec.decode(codec.encode(make_event("PaymentCompleted", **changes)))
    with pytest.raises(IntakeRejected) as info:
        validate_event(event, LIMITS, NOW)
    assert field in {name for name, _ in info.value.problems}


def test_avro_event_from_the_future_is_rejected(codec: EventCodec) -> None:
    event = codec.decode(codec.encode(make_event("PaymentCompleted")))
    early_clock = event.envelope.occurred_at - timedelta(seconds=301)
    with pytest.raises(IntakeRejected, match=r"occurred_at: .* is in the future"):
        validate_event(event, LIMITS, early_clock)


def test_avro_event_with_bad_payee_is_rejected(codec: EventCodec) -> None:
    event = codec.decode(codec.encode(make_event("PaymentRefunded", payee_id="payee one")))
    with pytest.raises(IntakeRejected, match=r"payee_id: 'payee one' is not a valid id"):
        validate_event(event, LIMITS, NOW)


# --- properties ---------------------------------------------------------------------------------

ID_FIRST = string.ascii_letters + string.digits
ID_REST = ID_FIRST + "._:@/+-"
IDS = st.builds(lambda first, rest: first + rest, st.sampled_from(ID_FIRST),
                st.text(alphabet=ID_REST, max_size=127))
MAX_MINOR = {"USD": 5_000_000, "XOF": 50_000, "BHD": 50_000_000, "JPY": 50_000, "EUR": 5_000_000}
OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
PAST = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2026, 11, 21))


@st.composite
def valid_payments(draw: st.DrawFn) -> dict[str, Any]:
    code = draw(st.sampled_from(sorted(MAX_MINOR)))
    local = draw(PAST)
    record = {
        "payee_id": draw(IDS),
        "payment_id": draw(IDS),
        "amount_minor": draw(st.integers(min_value=1, max_value=MAX_MINOR[code])),
        "currency": code,
        "occurred_at": local.replace(tzinfo=draw(OFFSETS)),
    }
    if draw(st.booleans()):
        record["occurred_at"] = record["occurred_at"].isoformat()
    if draw(st.booleans()):
        record["metadata"] = draw(st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=5))
    if draw(st.booleans()):
        record["services"] = draw(st.integers(min_value=0, max_value=10_000))
    return record


@settings(max_examples=200, deadline=None)
@given(valid_payments())
def test_valid_payments_are_always_accepted_with_their_amount(record: dict[str, Any]) -> None:
    event = parse_record(record, LIMITS, NOW)
    assert event.payload["amount"] == Money.of(record["amount_minor"], record["currency"])
    assert event.payload["payment_id"] == record["payment_id"]
    assert event.payee_id == record["payee_id"]
    occurred = record["occurred_at"]
    if isinstance(occurred, str):
        occurred = datetime.fromisoformat(occurred)
    assert event.envelope.occurred_at == occurred
    assert event.envelope.occurred_at.utcoffset() == timedelta(0)
    assert event.envelope.event_id == deterministic_event_id("payment", record["payment_id"])
    assert dict(event.payload["metadata"]) == record.get("metadata", {})


# JSON-ish garbage. Cases once found crashing (unhashable "type", lone surrogates, timestamps near
# year 1, huge ints) have tests of their own above.
JSON_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
                | st.floats(allow_nan=False) | st.text(max_size=30))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)
FIELD_NAMES = st.sampled_from(["type", "payee_id", "payment_id", "refund_id", "adjustment_id", "amount_minor",
                               "currency", "occurred_at", "metadata", "services", "source", "kind", "name",
                               "reason", "actor"]) | st.text(max_size=10)
TIMESTAMPISH = (st.datetimes(min_value=datetime(2, 1, 1), timezones=st.none() | OFFSETS).map(lambda d: d.isoformat())
                | st.sampled_from(["2026-11-22T10:00:00Z", "2026-11-22", "Z", "T", "2026-02-30T00:00:00Z"]))


def _garbage_value(name: str) -> st.SearchStrategy[Any]:
    if name == "type":
        return (st.sampled_from(["payment", "refund", "adjustment", "payout", ""]) | JSON_SCALARS)
    if name == "occurred_at":
        return TIMESTAMPISH | JSON_SCALARS
    if name == "kind":
        return st.sampled_from(["DEDUCTION", "BONUS"]) | JSON_VALUES
    if name == "currency":
        return st.sampled_from(["USD", "usd", "XOF", "XAU"]) | JSON_VALUES
    return JSON_VALUES


@st.composite
def garbage_records(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON_VALUES)  # not necessarily an object at all
    base = draw(st.sampled_from([payment(), refund(), adjustment(), {}]))
    record = dict(base)
    for name in draw(st.lists(FIELD_NAMES, max_size=6)):
        if draw(st.booleans()) and name in record:
            del record[name]
        else:
            record[name] = draw(_garbage_value(name))
    return record


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(garbage_records())
def test_garbage_raises_only_intake_rejected(record: Any) -> None:
    try:
        event = parse_record(record, LIMITS, NOW)
    except IntakeRejected as exc:
        assert exc.problems
        assert all(isinstance(name, str) and isinstance(reason, str) and reason for name, reason in exc.problems)
    else:
        assert isinstance(event, Event)
        assert event.event_type in {"PaymentCompleted", "PaymentRefunded", "EarningsAdjusted"}
