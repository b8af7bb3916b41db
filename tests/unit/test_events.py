"""ledger.events: the Envelope's invariants, Event immutability and new_envelope's defaults."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from event_factory import OCCURRED_AT, RECORDED_AT, make_event
from ledger.events import EVENT_TYPES, Envelope, Event, new_envelope
from ledger.guards import InvariantViolation
from ledger.money import Money


def envelope(**changes: Any) -> Envelope:
    fields: dict[str, Any] = {
        "event_id": "evt-1",
        "event_type": "PaymentCompleted",
        "schema_version": 1,
        "occurred_at": OCCURRED_AT,
        "recorded_at": RECORDED_AT,
        "payee_id": "payee-1",
        "correlation_id": "corr-1",
    }
    fields.update(changes)
    return Envelope(**fields)


# --- the Envelope's invariants --------------------------------------------------------------


def test_a_valid_envelope_keeps_its_values() -> None:
    env = envelope(causation_id="evt-0", sequence=1, previous_hash="0" * 64)
    assert (env.event_id, env.event_type, env.payee_id, env.sequence) == ("evt-1", "PaymentCompleted", "payee-1", 1)
    assert env.is_sequenced


@pytest.mark.parametrize("field", ["occurred_at", "recorded_at"])
def test_naive_datetime_is_refused(field: str) -> None:
    naive = OCCURRED_AT.replace(tzinfo=None)
    with pytest.raises(InvariantViolation, match=rf"^{field} must be timezone-aware UTC, got datetime\.datetime\("):
        envelope(**{field: naive})


@pytest.mark.parametrize("field", ["occurred_at", "recorded_at"])
@pytest.mark.parametrize(
    "offset",
    [timedelta(hours=1), timedelta(hours=-5), timedelta(hours=5, minutes=30), timedelta(minutes=1)],
    ids=["+01:00", "-05:00", "+05:30", "+00:01"],
)
def test_non_utc_offset_is_refused(field: str, offset: timedelta) -> None:
    aware = OCCURRED_AT.astimezone(timezone(offset))
    assert aware == OCCURRED_AT  # the same instant: only the offset is wrong
    with pytest.raises(InvariantViolation, match=rf"^{field} must be timezone-aware UTC"):
        envelope(**{field: aware})


@settings(max_examples=200)
@given(minutes=st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).filter(bool))
def test_any_nonzero_offset_is_refused(minutes: int) -> None:
    with pytest.raises(InvariantViolation, match=r"^occurred_at must be timezone-aware UTC"):
        envelope(occurred_at=OCCURRED_AT.astimezone(timezone(timedelta(minutes=minutes))))


def test_a_zero_offset_tzinfo_counts_as_utc() -> None:
    zulu = OCCURRED_AT.astimezone(timezone(timedelta(0), "Z"))
    assert envelope(occurred_at=zulu).occurred_at == OCCURRED_AT


@pytest.mark.parametrize("value", ["2025-03-14T17:45:12Z", 1741974312, None])
def test_non_datetime_timestamp_is_refused(value: Any) -> None:
    with pytest.raises(InvariantViolation, match=rf"^recorded_at must be a datetime, got {type(value).__name__}$"):
        envelope(recorded_at=value)


@pytest.mark.parametrize("event_type", ["Bogus", "paymentcompleted", "PaymentCompleted ", ""])
def test_unknown_event_type_is_refused(event_type: str) -> None:
    with pytest.raises(InvariantViolation, match=rf"^unknown event type {event_type!r}$"):
        envelope(event_type=event_type)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_known_event_type_is_accepted(event_type: str) -> None:
    assert envelope(event_type=event_type).event_type == event_type


@pytest.mark.parametrize("payee_id", ["", None, 42])
def test_empty_or_non_string_payee_id_is_refused(payee_id: Any) -> None:
    with pytest.raises(InvariantViolation, match=r"^payee_id must be a non-empty string$"):
        envelope(payee_id=payee_id)


@pytest.mark.parametrize("event_id", ["", None])
def test_empty_event_id_is_refused(event_id: Any) -> None:
    with pytest.raises(InvariantViolation, match=r"^event_id must be a non-empty string$"):
        envelope(event_id=event_id)


@pytest.mark.parametrize("sequence", [0, -1])
def test_sequence_below_one_is_refused(sequence: int) -> None:
    with pytest.raises(InvariantViolation, match=rf"^sequence is 1-based, got {sequence}$"):
        envelope(sequence=sequence, previous_hash="0" * 64)


@settings(max_examples=200)
@given(st.integers(max_value=0))
def test_no_sequence_below_one_is_accepted(sequence: int) -> None:
    with pytest.raises(InvariantViolation, match=r"^sequence is 1-based"):
        envelope(sequence=sequence)


def test_schema_version_below_one_is_refused() -> None:
    with pytest.raises(InvariantViolation, match=r"^schema_version must be >= 1, got 0$"):
        envelope(schema_version=0)


def test_invariant_violation_survives_python_O() -> None:
    # An AssertionError subclass raised explicitly, not a bare assert, so -O cannot strip it.
    assert issubclass(InvariantViolation, AssertionError)
    with pytest.raises(AssertionError, match="payee_id"):
        envelope(payee_id="")


def test_envelope_is_frozen() -> None:
    env = envelope()
    with pytest.raises(dataclasses.FrozenInstanceError, match="payee_id"):
        env.payee_id = "someone-else"  # type: ignore[misc]


def test_sequenced_places_a_copy_in_the_chain() -> None:
    env = envelope()
    placed = env.sequenced(7, "ab" * 32)
    assert (placed.sequence, placed.previous_hash) == (7, "ab" * 32)
    assert placed.is_sequenced and not env.is_sequenced
    assert dataclasses.replace(placed, sequence=None, previous_hash=None) == env
    with pytest.raises(InvariantViolation, match=r"^sequence is 1-based, got 0$"):
        env.sequenced(0, "ab" * 32)


@pytest.mark.parametrize(("sequence", "previous_hash"), [(3, None), (None, "0" * 64)])
def test_half_placed_envelope_is_not_sequenced(sequence: int | None, previous_hash: str | None) -> None:
    assert not envelope(sequence=sequence, previous_hash=previous_hash).is_sequenced


# --- Event ----------------------------------------------------------------------------------


def test_event_payload_cannot_be_assigned_to() -> None:
    event = make_event("PaymentCompleted")
    with pytest.raises(TypeError, match="does not support item assignment"):
        event.payload["amount"] = Money.of(1, "USD")  # type: ignore[index]
    with pytest.raises(TypeError, match="does not support item deletion"):
        del event.payload["amount"]  # type: ignore[attr-defined]
    with pytest.raises(dataclasses.FrozenInstanceError, match="payload"):
        event.payload = {}  # type: ignore[misc]
    assert event.payload["amount"] == Money.of(66725, "USD")


def test_event_payload_is_a_copy_of_what_was_passed() -> None:
    source = {"payout_id": "po-1", "reason": "duplicate request", "actor": "ops"}
    event = Event(envelope(event_type="PayoutCancelled"), source)
    source["reason"] = "changed afterwards"
    source["extra"] = "added afterwards"
    assert dict(event.payload) == {"payout_id": "po-1", "reason": "duplicate request", "actor": "ops"}


def test_nested_payload_values_are_immutable_too() -> None:
    event = make_event("PaymentCompleted")
    with pytest.raises(TypeError, match="does not support item assignment"):
        event.payload["metadata"]["chair"] = "9"


def test_payload_must_not_carry_an_envelope() -> None:
    with pytest.raises(InvariantViolation, match=r"^payload must not contain an 'envelope' field$"):
        Event(envelope(), {"envelope": {}, "payment_id": "p"})


def test_event_exposes_type_and_payee_of_its_envelope() -> None:
    event = make_event("PayoutSettled", payee_id="payee-42")
    assert event.event_type == "PayoutSettled" == event.envelope.event_type
    assert event.payee_id == "payee-42"


def test_events_compare_by_value() -> None:
    assert make_event("PayoutFailed") == make_event("PayoutFailed")
    assert make_event("PayoutFailed") != make_event("PayoutFailed", attempt=4)


# --- new_envelope ---------------------------------------------------------------------------


def test_new_envelope_defaults_correlation_id_to_event_id() -> None:
    env = new_envelope("PaymentCompleted", payee_id="p", occurred_at=OCCURRED_AT, recorded_at=RECORDED_AT)
    assert env.correlation_id == env.event_id
    assert uuid.UUID(env.event_id).version == 4
    assert (env.causation_id, env.sequence, env.previous_hash, env.schema_version) == (None, None, None, 1)


def test_new_envelope_uses_a_given_event_id_for_correlation_too() -> None:
    env = new_envelope(
        "PayoutRequested", payee_id="p", occurred_at=OCCURRED_AT, recorded_at=RECORDED_AT, event_id="evt-7"
    )
    assert (env.event_id, env.correlation_id) == ("evt-7", "evt-7")


def test_new_envelope_keeps_an_explicit_correlation_id() -> None:
    env = new_envelope(
        "PayoutRequested",
        payee_id="p",
        occurred_at=OCCURRED_AT,
        recorded_at=RECORDED_AT,
        event_id="evt-7",
        correlation_id="run-2025-W10",
        causation_id="evt-6",
    )
    assert (env.correlation_id, env.causation_id) == ("run-2025-W10", "evt-6")


def test_new_envelope_ids_are_fresh_each_time() -> None:
    ids = {
        new_envelope("PaymentCompleted", payee_id="p", occurred_at=OCCURRED_AT, recorded_at=RECORDED_AT).event_id
        for _ in range(50)
    }
    assert len(ids) == 50


def test_new_envelope_applies_the_envelope_invariants() -> None:
    with pytest.raises(InvariantViolation, match=r"^occurred_at must be timezone-aware UTC"):
        new_envelope("PaymentCompleted", payee_id="p", occurred_at=datetime(2025, 1, 1), recorded_at=RECORDED_AT)
