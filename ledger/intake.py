"""Validation of what upstream services send: payments, refunds and adjustments, as records or events.

One rule set for every way in (LedgerClient, `ledger publish`, JSON or Avro on payments.incoming).
A rejected input raises IntakeRejected naming each field and the reason.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ledger.currencies import UnknownCurrency, currency
from ledger.events import Event, new_envelope
from ledger.money import InvalidAmount, Money

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}")  # always fullmatch: `$` would allow a final newline
LONG_MAX = 2**63 - 1  # amounts are Avro longs
ID_RULE = "1-128 characters: letters, digits and . _ : @ / + - (starting with a letter or digit)"
EVENT_ID_NAMESPACE = uuid.UUID("8d3f6a52-5c1e-4c8e-9a59-2f0b7b1d6e01")
INTAKE_TYPES = {"payment": "PaymentCompleted", "refund": "PaymentRefunded", "adjustment": "EarningsAdjusted"}


class IntakeRejected(ValueError):
    """An input that cannot be accepted; `problems` lists (field, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{name}: {reason}" for name, reason in problems))


@dataclass(frozen=True)
class IntakeLimits:
    """Bounds on accepted input (seed 004: PAYMENT_MAX_PAYMENT_AMOUNT and friends)."""

    max_amount_major: str = "50000.00"  # in each currency's major unit, unless overridden below
    max_amount_major_by_currency: Mapping[str, str] = field(default_factory=dict)
    future_skew_s: int = 300
    metadata_max_keys: int = 32
    metadata_max_bytes: int = 4096

    def max_amount(self, code: str) -> Money:
        return _money_from_major(self.max_amount_major_by_currency.get(code, self.max_amount_major), code)


@functools.lru_cache(maxsize=512)
def _money_from_major(major: str, code: str) -> Money:
    return Money.from_major(major, code)


def deterministic_event_id(kind: str, business_id: str) -> str:
    """The event id of a payment/refund/adjustment follows from its own id: retries produce the same id."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{kind}:{business_id}"))


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=False)

    payee_id: str
    amount_minor: int
    currency: str
    occurred_at: datetime
    metadata: dict[str, str] = {}

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _parse_timestamp(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                raise ValueError("not an ISO 8601 timestamp (e.g. 2026-11-22T14:05:00+00:00)") from None
        if isinstance(value, datetime) and (value.tzinfo is None or value.utcoffset() is None):
            raise ValueError("timestamp has no UTC offset: add one, e.g. +00:00 or Z")
        return value

    @field_validator("amount_minor", mode="before")
    @classmethod
    def _integer_minor_units(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float):
                raise ValueError(f"must be an integer number of minor units, got a float ({value!r}): "
                                 "floats are never accepted for money")
            raise ValueError(f"must be an integer number of minor units, got a {type(value).__name__} ({value!r})")
        if value <= 0:
            raise ValueError(f"must be greater than zero, got {value}")
        if value > LONG_MAX:
            raise ValueError(f"must be at most {LONG_MAX} minor units (the largest amount the ledger stores)")
        return value


class _Payment(_Record):
    type: Literal["payment"] = "payment"
    payment_id: str
    services: int = 1
    source: str = ""

    @field_validator("services")
    @classmethod
    def _services_bounds(cls, value: int) -> int:
        if not 0 <= value <= 10_000:
            raise ValueError(f"must be between 0 and 10000, got {value}")
        return value


class _Refund(_Record):
    type: Literal["refund"]
    refund_id: str
    payment_id: str
    reason: str = ""


class _Adjustment(_Record):
    type: Literal["adjustment"]
    adjustment_id: str
    kind: Literal["DEDUCTION", "BONUS"]
    name: str
    reason: str = ""
    actor: str = ""


_MODELS: dict[str, type[_Record]] = {"payment": _Payment, "refund": _Refund, "adjustment": _Adjustment}


def _field_name(error: Mapping[str, Any]) -> str:
    return ".".join(str(part) for part in error["loc"]) or "record"


def _reason(error: Mapping[str, Any]) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        return "is required"
    if error["type"] == "extra_forbidden":
        return "is not a known field"
    return message


def _check_rules(model: _Record, limits: IntakeLimits, now: datetime) -> tuple[Money, list[tuple[str, str]]]:
    problems: list[tuple[str, str]] = []
    ids = [name for name in ("payee_id", "payment_id", "refund_id", "adjustment_id") if hasattr(model, name)]
    for name in ids:
        if not ID_PATTERN.fullmatch(getattr(model, name)):
            problems.append((name, f"{getattr(model, name)!r} is not a valid id: {ID_RULE}"))
    amount = None
    try:
        code = currency(model.currency)
        amount = Money(model.amount_minor, code)
        ceiling = limits.max_amount(code.code)
        if amount > ceiling:
            problems.append(("amount_minor", f"{amount} is above the maximum of {ceiling} per record"))
    except UnknownCurrency as exc:
        problems.append(("currency", str(exc)))
    except InvalidAmount as exc:
        problems.append(("amount_minor", str(exc)))
    problems.extend(_unencodable_text(model))
    try:
        model.occurred_at.astimezone(timezone.utc)
    except OverflowError:
        problems.append(("occurred_at", f"{model.occurred_at.isoformat()} cannot be expressed in UTC"))
        return amount, problems  # type: ignore[return-value]
    if model.occurred_at > now + timedelta(seconds=limits.future_skew_s):
        problems.append(("occurred_at", f"{model.occurred_at.isoformat()} is in the future "
                                        f"(more than {limits.future_skew_s} s ahead of {now.isoformat()})"))
    if len(model.metadata) > limits.metadata_max_keys:
        problems.append(("metadata", f"has {len(model.metadata)} keys, at most {limits.metadata_max_keys} allowed"))
    size = len(json.dumps(model.metadata, ensure_ascii=False).encode(errors="surrogatepass"))
    if size > limits.metadata_max_bytes:
        problems.append(("metadata", f"is {size} bytes as JSON, at most {limits.metadata_max_bytes} allowed"))
    return amount, problems  # type: ignore[return-value]


def _unencodable_text(model: _Record) -> list[tuple[str, str]]:
    """Text that cannot be stored as UTF-8 (a lone surrogate from a JSON escape like \\ud800)."""
    texts: list[tuple[str, str]] = [(name, value) for name, value in model if isinstance(value, str)]
    texts += [("metadata", f"{key}{value}") for key, value in model.metadata.items()]
    problems = []
    for name, text in texts:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            problems.append((name, "contains characters that are not valid UTF-8 (a lone surrogate)"))
            if name == "metadata":
                break
    return problems


def parse_record(record: Any, limits: IntakeLimits, now: datetime) -> Event:
    """Validate one input record (a JSON object's fields) and build its unsequenced event."""
    if not isinstance(record, Mapping):
        raise IntakeRejected([("record", f"must be a JSON object, got {type(record).__name__}")])
    kind = record.get("type", "payment")
    if not isinstance(kind, str) or kind not in _MODELS:
        raise IntakeRejected([("type", f"{kind!r} is not one of payment, refund, adjustment")])
    try:
        model = _MODELS[kind].model_validate(dict(record))
    except ValidationError as exc:
        raise IntakeRejected([(_field_name(error), _reason(error)) for error in exc.errors()]) from None
    amount, problems = _check_rules(model, limits, now)
    if problems:
        raise IntakeRejected(problems)
    return _to_event(model, amount, now)


def _to_event(model: _Record, amount: Money, now: datetime) -> Event:
    occurred = model.occurred_at.astimezone(timezone.utc)
    if isinstance(model, _Payment):
        event_type, business_id = "PaymentCompleted", model.payment_id
        payload: dict[str, Any] = {"payment_id": model.payment_id, "amount": amount, "services": model.services,
                                   "source": model.source, "metadata": model.metadata}
    elif isinstance(model, _Refund):
        event_type, business_id = "PaymentRefunded", model.refund_id
        payload = {"refund_id": model.refund_id, "payment_id": model.payment_id, "amount": amount,
                   "reason": model.reason, "metadata": model.metadata}
    else:
        assert isinstance(model, _Adjustment)
        event_type, business_id = "EarningsAdjusted", model.adjustment_id
        payload = {"adjustment_id": model.adjustment_id, "kind": model.kind, "name": model.name, "amount": amount,
                   "reason": model.reason, "actor": model.actor, "metadata": model.metadata}
    envelope = new_envelope(
        event_type, payee_id=model.payee_id, occurred_at=occurred, recorded_at=now,
        event_id=deterministic_event_id(model.type, business_id),
    )
    return Event(envelope, payload)


def record_of_event(event: Event) -> dict[str, Any]:
    """The input-record form of an intake event, so events arriving as Avro pass the same rules."""
    kinds = {value: key for key, value in INTAKE_TYPES.items()}
    if event.event_type not in kinds:
        raise IntakeRejected([("type", f"{event.event_type} cannot be submitted on the intake topic")])
    payload = dict(event.payload)
    amount = payload.pop("amount")
    record: dict[str, Any] = {
        "type": kinds[event.event_type], "payee_id": event.payee_id, "amount_minor": amount.amount_minor,
        "currency": amount.currency.code, "occurred_at": event.envelope.occurred_at,
        **{key: (dict(value) if isinstance(value, Mapping) else value) for key, value in payload.items()},
    }
    return record


def validate_event(event: Event, limits: IntakeLimits, now: datetime) -> Event:
    """Re-validate an intake event that arrived as Avro; returns it with its deterministic event id."""
    if event.envelope.is_sequenced or event.envelope.sequence is not None:
        raise IntakeRejected([("envelope.sequence", "must be empty on intake: the sequencer assigns it")])
    checked = parse_record(record_of_event(event), limits, now)
    envelope = checked.envelope
    return Event(
        new_envelope(envelope.event_type, payee_id=envelope.payee_id, occurred_at=envelope.occurred_at,
                     recorded_at=now, event_id=envelope.event_id,
                     correlation_id=event.envelope.correlation_id, causation_id=event.envelope.causation_id),
        checked.payload,
    )
