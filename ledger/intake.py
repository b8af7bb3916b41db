"""Validation of what upstream services send: payments, refunds and adjustments, as records or events.

One rule set for every way in (LedgerClient, `ledger publish`, `POST /v1/payments`, JSON or Avro on
payments.incoming). A rejected input raises IntakeRejected naming each field and the reason.

Bounds (README "Limits"): every string field has a maximum length, and a record a maximum size, so
that no accepted event is large, and a record too large to read is refused before it is parsed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ledger.currencies import UnknownCurrency, currency
from ledger.events import Event, new_envelope
from ledger.money import InvalidAmount, Money

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+-]{0,127}")  # always fullmatch: `$` would allow a final newline
LONG_MAX = 2**63 - 1  # amounts are Avro longs
ID_RULE = "1-128 characters: letters, digits and . _ : @ / + - (starting with a letter or digit)"
ID_MAX_CHARS = 128
# Free-text fields: long enough for any real use (a reason is a sentence or two), short enough that
# every event stays small. Counted in characters (code points), as Python and Avro strings count them.
TEXT_MAX_CHARS = {"source": 256, "reason": 1000, "name": 200, "actor": 200}
CURRENCY_MAX_CHARS = 3  # ISO 4217 codes
# The largest valid record is about 33 KiB (every field at its limit, metadata at 4 KiB, every
# character written as a JSON \u escape); twice that leaves room for formatting. Larger records can
# only be padding or unknown content.
RECORD_MAX_BYTES = 65_536
# A record above this is refused without being parsed at all: the input topics' own limit
# (max.message.bytes, Kafka's default), so nothing larger needs to be read into a JSON parser.
RECORD_READ_MAX_BYTES = 1_048_576
PROBLEMS_SHOWN = 20
# What the ledger's topics and clients are configured for (runtime/settings.py topic_specs, the
# sequencer's producer): the input topics take records up to RECORD_READ_MAX_BYTES; the dead-letter
# topic and ledger.events take that plus room for the headers a dead letter adds.
TOPIC_HEADROOM_BYTES = 65_536
OUTPUT_MESSAGE_MAX_BYTES = RECORD_READ_MAX_BYTES + TOPIC_HEADROOM_BYTES
SHOWN_CHARS = 40  # how much of an offending value an error message repeats
BYTE_ORDER_MARK = b"\xef\xbb\xbf"
EVENT_ID_NAMESPACE = uuid.UUID("8d3f6a52-5c1e-4c8e-9a59-2f0b7b1d6e01")
_NAMESPACE_BYTES = EVENT_ID_NAMESPACE.bytes
INTAKE_TYPES = {"payment": "PaymentCompleted", "refund": "PaymentRefunded", "adjustment": "EarningsAdjusted"}


class IntakeRejected(ValueError):
    """An input that cannot be accepted; `problems` lists (field, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{name}: {reason}" for name, reason in problems))


@dataclass(frozen=True)
class IntakeLimits:
    """Bounds on accepted input."""

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


def shown(value: object) -> str:
    """A value for an error message: its repr, cut to SHOWN_CHARS characters with its length said."""
    text = repr(value)
    if len(text) <= SHOWN_CHARS:
        return text
    length = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return f"{text[:SHOWN_CHARS]}...{length}"


def record_size_problem(size: int) -> tuple[str, str] | None:
    """The problem with a record of `size` bytes, if any (see RECORD_MAX_BYTES)."""
    if size > RECORD_MAX_BYTES:
        return ("record", f"is {size} bytes, at most {RECORD_MAX_BYTES} allowed")
    return None


def check_readable_size(size: int) -> None:
    """Refuse, before parsing, a record too large to be read at all (RECORD_READ_MAX_BYTES)."""
    if size > RECORD_READ_MAX_BYTES:
        raise IntakeRejected([("record", f"is {size} bytes, larger than {RECORD_READ_MAX_BYTES}: "
                                         f"not read (a record may have at most {RECORD_MAX_BYTES})")])


def json_size(record: Mapping[str, Any]) -> int:
    """A record's size as compact UTF-8 JSON: how entrances without raw bytes (LedgerClient, the API's
    records inside one body) measure it, so the same record meets the same limit everywhere."""
    return len(json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
               .encode("utf-8", "surrogatepass"))


def strip_byte_order_mark(value: bytes) -> bytes:
    """A UTF-8 byte-order mark before a JSON record is accepted and ignored (RFC 8259 section 8.1 allows it)."""
    return value[len(BYTE_ORDER_MARK):] if value.startswith(BYTE_ORDER_MARK) else value


def deterministic_event_id(kind: str, business_id: str) -> str:
    """The event id of a payment/refund/adjustment follows from its own id: retries produce the same id."""
    # uuid.uuid5 (RFC 4122 name-based, SHA-1), written out: the same string, without building a UUID object
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{kind}:{business_id}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, str_strip_whitespace=False)

    payee_id: str
    amount_minor: int
    currency: str
    occurred_at: datetime
    metadata: dict[str, str] = Field(default_factory=dict)

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
# Per model, the fields each rule looks at (a missing attribute on a pydantic model is an exception: slow).
_ID_FIELDS = {model: tuple(name for name in ("payee_id", "payment_id", "refund_id", "adjustment_id")
                           if name in model.model_fields) for model in _MODELS.values()}
_TEXT_FIELDS = {model: tuple((name, limit) for name, limit in TEXT_MAX_CHARS.items() if name in model.model_fields)
                for model in _MODELS.values()}
_STRING_FIELDS = {model: tuple(name for name, info in model.model_fields.items() if info.annotation is str)
                  for model in _MODELS.values()}


def _field_name(error: Mapping[str, Any]) -> str:
    """The field's path, e.g. metadata.tier; a part longer than SHOWN_CHARS (a huge metadata key) is cut."""
    parts = [str(part) for part in error["loc"]]
    return ".".join(part if len(part) <= SHOWN_CHARS else part[:SHOWN_CHARS] + "..." for part in parts) or "record"


def _reason(error: Mapping[str, Any]) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        return "is required"
    if error["type"] == "extra_forbidden":
        return "is not a known field"
    return message


def _check_rules(model: _Record, limits: IntakeLimits, now: datetime) -> tuple[Money, list[tuple[str, str]]]:
    problems: list[tuple[str, str]] = []
    kind = type(model)
    for name in _ID_FIELDS[kind]:
        value = getattr(model, name)
        if len(value) > ID_MAX_CHARS:
            problems.append((name, f"is {len(value)} characters long, at most {ID_MAX_CHARS} allowed"))
        elif not ID_PATTERN.fullmatch(value):
            problems.append((name, f"{shown(value)} is not a valid id: {ID_RULE}"))
    for name, limit in _TEXT_FIELDS[kind]:
        value = getattr(model, name)
        if len(value) > limit:
            problems.append((name, f"is {len(value)} characters long, at most {limit} allowed"))
    amount = None
    if len(model.currency) > CURRENCY_MAX_CHARS:
        problems.append(("currency", f"unknown currency {shown(model.currency)}: is {len(model.currency)} "
                                     f"characters long, a currency is a {CURRENCY_MAX_CHARS}-letter ISO 4217 code"))
        return amount, problems + _unencodable_text(model)  # type: ignore[return-value]
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
    size = len(json.dumps(model.metadata, ensure_ascii=False).encode(errors="surrogatepass")) if model.metadata else 2
    if size > limits.metadata_max_bytes:
        problems.append(("metadata", f"is {size} bytes as JSON, at most {limits.metadata_max_bytes} allowed"))
    return amount, problems  # type: ignore[return-value]


def _unencodable_text(model: _Record) -> list[tuple[str, str]]:
    """Text that cannot be stored as UTF-8 (a lone surrogate from a JSON escape like \\ud800)."""
    strings = [getattr(model, name) for name in _STRING_FIELDS[type(model)]]
    strings += [f"{key}{value}" for key, value in model.metadata.items()]
    try:
        "".join(strings).encode("utf-8")
        return []  # the usual case, decided in one call; the loop below names the field when one fails
    except UnicodeEncodeError:
        pass
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


def parse_record(record: Any, limits: IntakeLimits, now: datetime, *, size: int | None = None,
                 correlation_id: str | None = None, causation_id: str | None = None) -> Event:
    """Validate one input record (a JSON object's fields) and build its unsequenced event.

    `size` is the record's size in bytes as it arrived (or json_size() where there are no raw bytes):
    a record too large to read is refused first; the size limit itself is checked last, so a record
    with an over-long field is refused for that field, the same way at every entrance.
    """
    if size is not None:
        check_readable_size(size)
    if not isinstance(record, Mapping):
        raise IntakeRejected([("record", f"must be a JSON object, got {type(record).__name__}")])
    kind = record.get("type", "payment")
    if not isinstance(kind, str) or kind not in _MODELS:
        raise IntakeRejected([("type", f"{shown(kind)} is not one of payment, refund, adjustment")])
    try:
        model = _MODELS[kind].model_validate(dict(record))
    except ValidationError as exc:
        raise IntakeRejected(_bounded([(_field_name(error), _reason(error)) for error in exc.errors()])) from None
    amount, problems = _check_rules(model, limits, now)
    if problems:
        raise IntakeRejected(_bounded(problems))
    too_large = record_size_problem(size) if size is not None else None
    if too_large:
        raise IntakeRejected([too_large])
    return _to_event(model, amount, now, correlation_id, causation_id)


def _bounded(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """At most PROBLEMS_SHOWN problems (a record with 10,000 bad metadata values gets one line, not 10,000)."""
    if len(problems) <= PROBLEMS_SHOWN:
        return problems
    return problems[:PROBLEMS_SHOWN] + [("record", f"{len(problems) - PROBLEMS_SHOWN} more problems not listed")]


def _to_event(model: _Record, amount: Money, now: datetime, correlation_id: str | None = None,
              causation_id: str | None = None) -> Event:
    occurred = model.occurred_at.astimezone(timezone.utc)
    if isinstance(model, _Payment):
        event_type, business_id = "PaymentCompleted", model.payment_id
        payload: dict[str, Any] = {"payment_id": model.payment_id, "amount": amount, "services": model.services,
                                   "source": model.source, "metadata": MappingProxyType(dict(model.metadata))}
    elif isinstance(model, _Refund):
        event_type, business_id = "PaymentRefunded", model.refund_id
        payload = {"refund_id": model.refund_id, "payment_id": model.payment_id, "amount": amount,
                   "reason": model.reason, "metadata": MappingProxyType(dict(model.metadata))}
    else:
        assert isinstance(model, _Adjustment)
        event_type, business_id = "EarningsAdjusted", model.adjustment_id
        payload = {"adjustment_id": model.adjustment_id, "kind": model.kind, "name": model.name, "amount": amount,
                   "reason": model.reason, "actor": model.actor, "metadata": MappingProxyType(dict(model.metadata))}
    envelope = new_envelope(
        event_type, payee_id=model.payee_id, occurred_at=occurred, recorded_at=now,
        event_id=deterministic_event_id(model.type, business_id), correlation_id=correlation_id,
        causation_id=causation_id,
    )
    return Event(envelope, MappingProxyType(payload))  # read-only already (metadata too): Event copies nothing


_PLAIN_VALUES = frozenset({str, int, bool, type(None)})


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
        **{key: (value if type(value) in _PLAIN_VALUES else dict(value) if isinstance(value, Mapping) else value)
           for key, value in payload.items()},
    }
    return record


def validate_event(event: Event, limits: IntakeLimits, now: datetime, *, size: int | None = None) -> Event:
    """Re-validate an intake event that arrived as Avro; returns it with its deterministic event id."""
    if event.envelope.is_sequenced or event.envelope.sequence is not None:
        raise IntakeRejected([("envelope.sequence", "must be empty on intake: the sequencer assigns it")])
    return parse_record(record_of_event(event), limits, now, size=size, correlation_id=event.envelope.correlation_id,
                        causation_id=event.envelope.causation_id)
