"""Builders of valid, realistic ledger events for the codec, hash-chain and evolution tests.

`make_event(event_type)` returns an Event whose payload sets every field of the event's current
schema (defaults included), so `decode(encode(event)) == event` is an exact check. `full=False`
leaves every optional union (causation_id, day_of_month, minimum_payout, ...) null; `full=True`
sets all of them. Money comes in USD (2 decimals), XOF (0) and BHD (3), spread over the types.
"""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from ledger.events import EVENT_TYPES, Envelope, Event, new_envelope
from ledger.money import Money

OCCURRED_AT = datetime(2025, 3, 14, 17, 45, 12, 123456, tzinfo=timezone.utc)
RECORDED_AT = OCCURRED_AT + timedelta(seconds=2, microseconds=654321)
PERIOD_START = datetime(2025, 3, 3, 0, 0, tzinfo=timezone.utc)
PERIOD_END = datetime(2025, 3, 10, 0, 0, tzinfo=timezone.utc)

# The currency each event type is built in by default: all three exponents are exercised.
DEFAULT_CURRENCY: dict[str, str] = {
    "PaymentCompleted": "USD",
    "PaymentRefunded": "USD",
    "EarningsAdjusted": "XOF",
    "PayeeScheduleSet": "XOF",
    "PayeeHoldSet": "USD",
    "PayoutRequested": "BHD",
    "BalanceCarried": "XOF",
    "PayoutSubmitted": "BHD",
    "PayoutAccepted": "XOF",
    "PayoutSettled": "USD",
    "PayoutFailed": "XOF",
    "PayoutRetryScheduled": "USD",
    "PayoutCancelled": "USD",
}
assert set(DEFAULT_CURRENCY) == set(EVENT_TYPES)

# Field names whose values are ledger Money, per event type (deductions holds Money inside).
MONEY_FIELDS: dict[str, tuple[str, ...]] = {
    "PaymentCompleted": ("amount",),
    "PaymentRefunded": ("amount",),
    "EarningsAdjusted": ("amount",),
    "PayeeScheduleSet": ("minimum_payout",),
    "PayeeHoldSet": (),
    "PayoutRequested": ("gross", "payee_share", "fee", "carry_over", "net"),
    "BalanceCarried": ("gross", "payee_share", "fee", "carry_over", "net", "balance"),
    "PayoutSubmitted": ("amount",),
    "PayoutAccepted": ("amount",),
    "PayoutSettled": ("amount",),
    "PayoutFailed": ("amount",),
    "PayoutRetryScheduled": (),
    "PayoutCancelled": (),
}


def money(major_units: int, code: str, extra_minor: int = 0) -> Money:
    """major_units whole units plus extra_minor minor units (money(12, 'BHD', 345) is BHD 12.345)."""
    probe = Money.of(0, code)
    return Money.of(major_units * 10**probe.currency.exponent + extra_minor, code)


def make_payload(event_type: str, code: str | None = None, *, full: bool = True) -> dict[str, Any]:
    """A realistic payload for event_type setting every schema field; `full` sets optional unions."""
    code = code or DEFAULT_CURRENCY[event_type]
    if event_type == "PaymentCompleted":
        return {
            "payment_id": "pi_3PqK9L2eZvKYlo2C1x8aB7dE",
            "amount": money(667, code, 25 if code == "USD" else 0),
            "services": 3,
            "source": "booking-service",
            "metadata": {"location": "Abidjan-Cocody", "chair": "4", "note": "coupe + barbe ✂"} if full else {},
        }
    if event_type == "PaymentRefunded":
        return {
            "refund_id": "re_3PqK9L2eZvKYlo2C0Zr4mNpQ",
            "payment_id": "pi_3PqK9L2eZvKYlo2C1x8aB7dE",
            "amount": money(20, code),
            "reason": "customer_dissatisfied" if full else "",
            "metadata": {"ticket": "SUP-4411"} if full else {},
        }
    if event_type == "EarningsAdjusted":
        return {
            "adjustment_id": "adj-2025-03-booth-rent-payee-1",
            "kind": "DEDUCTION",
            "name": "booth_rent",
            "amount": money(15000, code),
            "reason": "March booth rent" if full else "",
            "actor": "ops@salon.example" if full else "",
            "metadata": {"month": "2025-03"} if full else {},
        }
    if event_type == "PayeeScheduleSet":
        return {
            "frequency": "MONTHLY" if full else "WEEKLY",
            "day_of_week": 4 if full else None,
            "day_of_month": 31 if full else None,
            "cutoff_time": "18:00",
            "timezone": "Africa/Abidjan",
            "plan": "tiered-services",
            "payout_method": "mobile_money",
            "destination": "+2250700000000" if full else "",
            "minimum_payout": money(5000, code) if full else None,
            "actor": "admin" if full else "",
        }
    if event_type == "PayoutRequested":
        gross = money(1200, code, 500)
        return {
            "payout_id": "po_payee-1_2025-W10",
            "period_id": "2025-W10",
            "period_start": PERIOD_START,
            "period_end": PERIOD_END,
            "trigger": "MANUAL" if full else "SCHEDULE",
            "plan": "flat-80",
            "payout_method": "bank_transfer",
            "gross": gross,
            "services": 14,
            "rate_bp": 8000,
            "payee_share": money(960, code, 400),
            "deductions": (
                [
                    {"name": "booth_rent", "amount": money(150, code)},
                    {"name": "supply_fee", "amount": money(12, code, 345)},
                ]
                if full
                else []
            ),
            "fee": money(1, code, 250),
            "carry_over": money(-30, code, -125) if full else money(0, code),
            "net": money(766, code, 680),
            "payment_count": 2 if full else 0,
            "payment_digest": hashlib.sha256(b"pi_1\npi_2").hexdigest(),
            "payment_ids": ["pi_1", "pi_2"] if full else [],
            "late_payment_count": 1 if full else 0,
            "through_sequence": 42 if full else 0,
        }
    if event_type == "BalanceCarried":
        return {
            "period_id": "2025-W10",
            "period_start": PERIOD_START,
            "period_end": PERIOD_END,
            "reason": "HELD" if full else "BELOW_MINIMUM",
            "plan": "flat-80",
            "payout_method": "mobile_money",
            "gross": money(20, code),
            "services": 3,
            "rate_bp": 8000,
            "payee_share": money(16, code),
            "deductions": [{"name": "supply_fee", "amount": money(1, code)}] if full else [],
            "fee": money(0, code),
            "carry_over": money(5, code),
            "net": money(15, code) if full else money(16, code),
            "balance": money(20, code) if full else money(21, code),
            "payment_count": 3,
            "payment_digest": hashlib.sha256(b"pi_3").hexdigest(),
            "late_payment_count": 0,
            "through_sequence": 7 if full else 0,
        }
    if event_type == "PayeeHoldSet":
        return {"held": full, "reason": "fraud review" if full else "", "actor": "ops@salon.example" if full else ""}
    if event_type == "PayoutSubmitted":
        return {
            "payout_id": "po_payee-1_2025-W10",
            "provider": "stripe",
            "attempt": 1,
            "idempotency_key": "po_payee-1_2025-W10",
            "amount": money(766, code, 680),
        }
    if event_type == "PayoutAccepted":
        return {
            "payout_id": "po_payee-1_2025-W10",
            "provider": "mobile_money",
            "provider_reference": "MP250314.1745.A01234",
            "attempt": 1,
            "amount": money(24000, code),
        }
    if event_type == "PayoutSettled":
        return {
            "payout_id": "po_payee-1_2025-W10",
            "provider": "stripe",
            "provider_reference": "tr_1PqLm2eZvKYlo2C",
            "attempt": 2,
            "amount": money(766, code, 68),
        }
    if event_type == "PayoutFailed":
        return {
            "payout_id": "po_payee-1_2025-W10",
            "provider": "wave",
            "reason_code": "account_closed",
            "provider_message": "The destination wallet is closed" if full else "",
            "attempt": 3,
            "retryable": full,
            "amount": money(24000, code),
        }
    if event_type == "PayoutRetryScheduled":
        return {
            "payout_id": "po_payee-1_2025-W10",
            "provider": "stripe",
            "next_attempt": 2,
            "due_at": OCCURRED_AT + timedelta(minutes=15),
            "reason_code": "timeout",
            "provider_message": "upstream timed out after 30s" if full else "",
        }
    if event_type == "PayoutCancelled":
        return {"payout_id": "po_payee-1_2025-W10", "reason": "duplicate request", "actor": "ops@salon.example"}
    raise ValueError(f"no factory for {event_type!r}")


def make_envelope(
    event_type: str,
    *,
    payee_id: str = "payee-1",
    event_id: str | None = None,
    full: bool = True,
    schema_version: int = 1,
) -> Envelope:
    """A deterministic unsequenced envelope; `full` sets causation_id too."""
    event_id = event_id or f"evt-{event_type}-{payee_id}"
    return new_envelope(
        event_type,
        payee_id=payee_id,
        occurred_at=OCCURRED_AT,
        recorded_at=RECORDED_AT,
        correlation_id=f"corr-{payee_id}",
        causation_id=f"cause-{event_id}" if full else None,
        event_id=event_id,
        schema_version=schema_version,
    )


def make_event(
    event_type: str,
    code: str | None = None,
    *,
    payee_id: str = "payee-1",
    event_id: str | None = None,
    full: bool = True,
    sequence: int | None = None,
    previous_hash: str | None = None,
    **overrides: Any,
) -> Event:
    """A valid event of event_type; keyword overrides replace payload fields."""
    envelope = make_envelope(event_type, payee_id=payee_id, event_id=event_id, full=full)
    if sequence is not None or previous_hash is not None:
        envelope = dataclasses.replace(envelope, sequence=sequence, previous_hash=previous_hash)
    payload = make_payload(event_type, code, full=full)
    payload.update(overrides)
    return Event(envelope, payload)


def with_payload(event: Event, **changes: Any) -> Event:
    """The same event (same envelope) with some payload fields changed."""
    payload: Mapping[str, Any] = {**event.payload, **changes}
    return Event(event.envelope, payload)


def to_wire(value: Any) -> Any:
    """What plain Avro (fastavro, Apache avro) holds for a payload value: Money as its record."""
    if isinstance(value, Money):
        return {"amount_minor": value.amount_minor, "currency": value.currency.code, "exponent": value.currency.exponent}
    if isinstance(value, Mapping):
        return {key: to_wire(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_wire(item) for item in value]
    return value


def wire_record(event: Event) -> dict[str, Any]:
    """The full Avro record of an event, envelope included, as a generic Avro library sees it."""
    return {"envelope": dataclasses.asdict(event.envelope), **to_wire(dict(event.payload))}
