"""The common case of the Avro intake decided without pydantic: a PaymentCompleted that passes every rule.

`validate_event` (ledger/intake.py) turns a decoded Avro event back into a record and runs the whole
rule set through pydantic, which costs about a fifth of the sequencer's time per record. Almost every
record is a valid payment, so `fast_payment` checks the same rules directly on the decoded event and
builds the same event `validate_event` would. It only ever answers "valid, here is the event" or "not
sure" (None): on None the caller runs `validate_event`, which accepts or names each problem, so the
messages are the rule set's own. A property test (tests/unit/test_intake_fast.py) checks that every
event it accepts is accepted by `validate_event` with an equal result.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from types import MappingProxyType

from ledger.currencies import UnknownCurrency, currency
from ledger.events import Event, new_envelope
from ledger.intake import (
    CURRENCY_MAX_CHARS, ID_PATTERN, LONG_MAX, RECORD_MAX_BYTES, TEXT_MAX_CHARS, IntakeLimits, deterministic_event_id,
)
from ledger.money import InvalidAmount, Money

_PAYMENT_FIELDS = frozenset({"payment_id", "amount", "services", "source", "metadata"})
_SOURCE_MAX = TEXT_MAX_CHARS["source"]
_SERVICES_MAX = 10_000


def fast_payment(event: Event, limits: IntakeLimits, now: datetime, size: int) -> Event | None:
    """The validated, unsequenced event for an Avro PaymentCompleted that breaks no rule; None when unsure."""
    envelope = event.envelope
    if event.event_type != "PaymentCompleted" or envelope.sequence is not None or envelope.is_sequenced:
        return None
    if not 0 <= size <= RECORD_MAX_BYTES:
        return None
    payload = event.payload
    if payload.keys() != _PAYMENT_FIELDS:
        return None
    payee_id, payment_id, source = envelope.payee_id, payload["payment_id"], payload["source"]
    services, metadata, amount = payload["services"], payload["metadata"], payload["amount"]
    if type(payee_id) is not str or type(payment_id) is not str or type(source) is not str:
        return None
    if not (ID_PATTERN.fullmatch(payee_id) and ID_PATTERN.fullmatch(payment_id)) or len(source) > _SOURCE_MAX:
        return None
    if type(services) is not int or not 0 <= services <= _SERVICES_MAX or type(amount) is not Money:
        return None
    minor, code = amount.amount_minor, amount.currency.code
    if type(minor) is not int or not 0 < minor <= LONG_MAX or type(code) is not str or len(code) > CURRENCY_MAX_CHARS:
        return None
    try:
        checked = Money(minor, currency(code))
    except (UnknownCurrency, InvalidAmount):
        return None
    if checked > limits.max_amount(code):
        return None
    occurred = envelope.occurred_at
    if type(occurred) is not datetime or occurred.tzinfo is None or occurred.utcoffset() is None:
        return None
    try:
        occurred_utc = occurred.astimezone(timezone.utc)
    except OverflowError:
        return None
    if occurred > now + timedelta(seconds=limits.future_skew_s):
        return None
    if len(metadata) > limits.metadata_max_keys:
        return None
    texts = [payee_id, payment_id, source]
    for key, value in metadata.items():
        if type(key) is not str or type(value) is not str:
            return None
        texts.append(key + value)
    encoded = len(json.dumps(dict(metadata), ensure_ascii=False).encode(errors="surrogatepass")) if metadata else 2
    if encoded > limits.metadata_max_bytes:
        return None
    try:
        "".join(texts).encode("utf-8")
    except UnicodeEncodeError:
        return None
    fresh = new_envelope("PaymentCompleted", payee_id=payee_id, occurred_at=occurred_utc, recorded_at=now,
                         event_id=deterministic_event_id("payment", payment_id),
                         correlation_id=envelope.correlation_id, causation_id=envelope.causation_id)
    return Event(fresh, MappingProxyType({"payment_id": payment_id, "amount": checked, "services": services,
                                          "source": source, "metadata": MappingProxyType(dict(metadata))}))
