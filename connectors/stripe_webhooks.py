"""Stripe webhooks as ledger events: signature verification, replay protection and translation.

Pure logic: no Kafka and no HTTP server (processors/webhook_app.py serves it).

Verification is written by hand (about 25 lines, `verify_delivery`) rather than with the stripe SDK's
`stripe.WebhookSignature.verify_header`, because the SDK helper (stripe-python 16):
  - decodes the body to str before signing, so a body that is not UTF-8 raises UnicodeDecodeError
    instead of a rejection; here the HMAC is over the raw bytes exactly as received;
  - rejects only timestamps that are too old, never ones too far in the future;
  - reads time.time() itself, so a test cannot inject the clock;
  - reports which check failed only in free text, and does not say which v1 signature matched,
    which the replay guard needs to remember the delivery.
The scheme is Stripe's documented one: `Stripe-Signature: t=<unix ts>,v1=<hex HMAC-SHA256 of
"<t>.<raw body>">`, several v1 entries allowed (secret rotation), other schemes ignored, tolerance
300 s, signatures compared in constant time (hmac.compare_digest).

Translation (`interpret` / `translate`): payout.paid -> PayoutSettled; payout.failed (also for a
payout that was paid and fails days later) -> PayoutFailed, final; a fully reversed transfer ->
PayoutFailed "transfer_reversed", final. The ledger event id is uuid5 of the Stripe event id, so a
redelivered Stripe event is a duplicate the sequencer drops, whatever this process remembers.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import json
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

from ledger.currencies import UnknownCurrency
from ledger.events import Event, new_envelope
from ledger.intake import ID_PATTERN, ID_RULE
from ledger.money import InvalidAmount, Money

PROVIDER = "stripe"
SIGNATURE_HEADER = "Stripe-Signature"
DEFAULT_TOLERANCE_S = 300

# Fixed forever: changing it would give every Stripe event a new ledger event id, and redeliveries
# of events recorded before the change would no longer be recognised as duplicates.
STRIPE_EVENT_NAMESPACE = uuid.UUID("3bd5523c-25c6-40dd-835c-b4e87d8d4503")

_HEADER_CHARS_MAX = 8_192  # a real header is ~100 characters per signature
_SIGNATURES_MAX = 16  # Stripe sends one per active secret (two while rolling a secret)
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_CREATED_MAX = 2**33  # year 2242: beyond it `created` is garbage, not a time
_ATTEMPT_MAX = 1_000_000

# Stripe's API amount scale where it differs from ISO 4217 (docs.stripe.com/currencies, special
# cases): ISK is zero-decimal in ISO 4217 but stays two-decimal in the API ("100" = 1 krona).
_STRIPE_EXPONENT_OVERRIDES = {"ISK": 2}


class WebhookRejected(ValueError):
    """A delivery that must not be processed: answer 400 with `reason` and append nothing."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UntranslatableEvent(ValueError):
    """A genuine Stripe event about one of our payouts that cannot become a ledger event.

    Answered with an error (not 2xx) so Stripe keeps retrying and the failure stays visible in its
    dashboard, rather than being dropped silently.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- verification ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedDelivery:
    """A delivery whose signature matched: the parsed event, and what identifies this delivery."""

    event: dict[str, Any]
    timestamp: int
    signature: str  # the v1 signature that matched


def _parse_header(header: str) -> tuple[int, list[str]]:
    if len(header) > _HEADER_CHARS_MAX:
        raise WebhookRejected(f"malformed {SIGNATURE_HEADER} header: longer than {_HEADER_CHARS_MAX} characters")
    timestamps: list[str] = []
    signatures: list[str] = []
    for item in header.split(","):
        key, separator, value = item.strip().partition("=")
        if not separator or not key:
            raise WebhookRejected(f"malformed {SIGNATURE_HEADER} header: {item.strip()[:40]!r} is not key=value")
        if key == "t":
            timestamps.append(value)
        elif key == "v1":
            signatures.append(value)
        # Other schemes (v0: test-mode signatures) are ignored, as Stripe documents.
    if len(timestamps) != 1 or not _TIMESTAMP.fullmatch(timestamps[0]):
        raise WebhookRejected(f"malformed {SIGNATURE_HEADER} header: needs exactly one t=<unix seconds>")
    if not signatures:
        raise WebhookRejected(f"no v1 signature in the {SIGNATURE_HEADER} header")
    if len(signatures) > _SIGNATURES_MAX:
        raise WebhookRejected(f"malformed {SIGNATURE_HEADER} header: more than {_SIGNATURES_MAX} v1 signatures")
    return int(timestamps[0]), signatures


def verify_delivery(raw_body: bytes, signature_header: str | None, secret: str, *, now: int | None = None,
                    tolerance_s: int = DEFAULT_TOLERANCE_S) -> VerifiedDelivery:
    """The event in `raw_body` if `signature_header` proves Stripe sent it within the tolerance.

    Raises WebhookRejected with the reason otherwise.
    """
    if not isinstance(secret, str) or not secret.strip():
        raise ValueError("the webhook signing secret is empty (it starts with whsec_)")
    if not signature_header:
        raise WebhookRejected(f"missing {SIGNATURE_HEADER} header")
    timestamp, signatures = _parse_header(signature_header)
    signed = hmac.new(secret.encode("utf-8"), b"%d." % timestamp + bytes(raw_body), hashlib.sha256)
    expected = signed.hexdigest()
    # Candidates that are not 64 lowercase hex digits cannot match; skipping them also keeps
    # compare_digest to ASCII strings. Every candidate is compared: no early exit.
    matched = [candidate for candidate in signatures
               if _HEX_SHA256.fullmatch(candidate) and hmac.compare_digest(expected, candidate)]
    if not matched:
        raise WebhookRejected("no matching signature: wrong signing secret, or the body was altered")
    now = int(time.time()) if now is None else int(now)
    if timestamp < now - tolerance_s:
        raise WebhookRejected(f"timestamp too old: {now - timestamp} s before now (tolerance {tolerance_s} s)")
    if timestamp > now + tolerance_s:
        raise WebhookRejected(f"timestamp in the future: {timestamp - now} s after now (tolerance {tolerance_s} s)")
    return VerifiedDelivery(_parse_event(raw_body), timestamp, matched[0])


def verify(raw_body: bytes, signature_header: str | None, secret: str, *, now: int | None = None,
           tolerance_s: int = DEFAULT_TOLERANCE_S) -> dict[str, Any]:
    """The parsed Stripe event, or WebhookRejected(reason); see verify_delivery."""
    return verify_delivery(raw_body, signature_header, secret, now=now, tolerance_s=tolerance_s).event


def _parse_event(raw_body: bytes) -> dict[str, Any]:
    try:
        event = json.loads(raw_body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise WebhookRejected(f"body is not JSON: {str(exc)[:120]}") from None
    if not isinstance(event, dict) or event.get("object") != "event":
        raise WebhookRejected('not a Stripe event object: expected a JSON object with "object": "event"')
    for name in ("id", "type"):
        if not isinstance(event.get(name), str) or not event[name]:
            raise WebhookRejected(f"not a Stripe event object: {name!r} must be a non-empty string")
    created = event.get("created")
    if isinstance(created, bool) or not isinstance(created, int) or not 0 <= created < _CREATED_MAX:
        raise WebhookRejected("not a Stripe event object: 'created' must be unix seconds")
    data = event.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise WebhookRejected("not a Stripe event object: 'data.object' must be an object")
    return event


# --- replay protection -----------------------------------------------------------------------------


class ReplayGuard:
    """Remembers recent deliveries and processed event ids, in bounded memory.

    An identical delivery (same timestamp and signature) seen within the tolerance window is a
    replay. A Stripe retry is signed anew, so it passes here; its event id then shows it was already
    processed by this process. After a restart the deterministic ledger event id does that job.
    Entries are evicted oldest first past the bounds: a replay that slips through an eviction still
    meets the event id check, then the sequencer's.
    """

    def __init__(self, tolerance_s: int = DEFAULT_TOLERANCE_S, *, deliveries_max: int = 100_000,
                 event_ids_max: int = 100_000) -> None:
        if tolerance_s < 0 or deliveries_max < 1 or event_ids_max < 1:
            raise ValueError("tolerance_s must be >= 0 and the bounds >= 1")
        self.tolerance_s = tolerance_s
        self.deliveries_max = deliveries_max
        self.event_ids_max = event_ids_max
        self._lock = threading.Lock()
        self._deliveries: set[tuple[int, str]] = set()
        self._by_age: list[tuple[int, str]] = []  # min-heap on timestamp, the same pairs
        self._event_ids: OrderedDict[str, None] = OrderedDict()

    def admit(self, timestamp: int, signature: str, *, now: int) -> None:
        """Remember this delivery, or raise WebhookRejected('replayed...') if it was seen already."""
        key = (timestamp, signature)
        with self._lock:
            while self._by_age and self._by_age[0][0] < now - self.tolerance_s:
                self._deliveries.discard(heapq.heappop(self._by_age))  # too old to pass verify now
            if key in self._deliveries:
                raise WebhookRejected("replayed: this exact delivery (timestamp and signature) was already received")
            while len(self._deliveries) >= self.deliveries_max:
                self._deliveries.discard(heapq.heappop(self._by_age))
            self._deliveries.add(key)
            heapq.heappush(self._by_age, key)

    def already_processed(self, event_id: str) -> bool:
        with self._lock:
            if event_id in self._event_ids:
                self._event_ids.move_to_end(event_id)
                return True
            return False

    def mark_processed(self, event_id: str) -> None:
        """Call only once the event's ledger events are durably appended (or it was ignored)."""
        with self._lock:
            self._event_ids[event_id] = None
            self._event_ids.move_to_end(event_id)
            while len(self._event_ids) > self.event_ids_max:
                self._event_ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._deliveries)


# --- translation -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Translation:
    """The ledger events for one Stripe event; when there are none, why it was ignored."""

    events: list[Event]
    ignored_reason: str = ""


def ledger_event_id(stripe_event_id: str) -> str:
    """The ledger event id of the one ledger event a Stripe event can become (deterministic)."""
    return str(uuid.uuid5(STRIPE_EVENT_NAMESPACE, f"stripe:{stripe_event_id}"))


def _amount(obj: dict[str, Any]) -> Money:
    code = obj.get("currency")
    if not isinstance(code, str):
        raise UntranslatableEvent(f"{obj.get('id')}: 'currency' must be a string")
    code = code.upper()
    amount = obj.get("amount")
    try:
        money = Money.of(amount, code)  # refuses floats, bools and unknown currencies
    except (InvalidAmount, UnknownCurrency, TypeError) as exc:
        raise UntranslatableEvent(f"{obj.get('id')}: amount {amount!r} {code}: {exc}") from None
    scale = 10 ** (_STRIPE_EXPONENT_OVERRIDES.get(code, money.currency.exponent) - money.currency.exponent)
    if amount % scale:
        raise UntranslatableEvent(f"{obj.get('id')}: Stripe amount {amount} {code} is not a whole minor unit")
    return Money.of(amount // scale, code)


def _attempt(value: Any, object_id: Any) -> int:
    # Our connector cannot put the attempt in metadata (a retry under the payout's key must send the same
    # parameters), so it is usually absent: 0 means "pushed by the provider, attempt not told".
    if value is None:
        return 0
    text = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if not text.isdigit() or not 1 <= int(text) <= _ATTEMPT_MAX:
        raise UntranslatableEvent(f"{object_id}: metadata.attempt {value!r} is not a positive whole number")
    return int(text)


def _settled(obj: dict[str, Any], common: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "PayoutSettled", {**common, "provider_reference": obj["id"]}


def _payout_failed(obj: dict[str, Any], common: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    # Final: a failed Stripe payout is never retried by Stripe, and even the codes worth a retry
    # (could_not_process, insufficient_funds) need a new payout, so the money returns to unpaid.
    return "PayoutFailed", {**common, "reason_code": obj.get("failure_code") or "payout_failed",
                            "provider_message": obj.get("failure_message") or "", "retryable": False}


def _transfer_reversed(obj: dict[str, Any], common: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return "PayoutFailed", {**common, "reason_code": "transfer_reversed",
                            "provider_message": f"Stripe transfer {obj['id']} was reversed", "retryable": False}


_TRANSLATORS: dict[str, tuple[str, Callable[[dict[str, Any], dict[str, Any]], tuple[str, dict[str, Any]]]]] = {
    "payout.paid": ("payout", _settled),
    "payout.failed": ("payout", _payout_failed),
    "transfer.reversed": ("transfer", _transfer_reversed),
}


def interpret(event: dict[str, Any], *, received_at: datetime) -> Translation:
    """The ledger events a verified Stripe event becomes, or why it becomes none.

    Raises UntranslatableEvent for an event about one of our payouts that is malformed.
    """
    handler = _TRANSLATORS.get(event["type"])
    if handler is None:
        return Translation([], f"{event['type']} is not a payout outcome")
    expected_object, build = handler
    obj = event["data"]["object"]
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    payout_id, payee_id = metadata.get("payout_id"), metadata.get("payee_id")
    if not payout_id or not payee_id:
        return Translation([], f"{obj.get('id')} has no payout_id/payee_id metadata: not a payout of this ledger")
    object_id = obj.get("id")
    if obj.get("object") != expected_object or not isinstance(object_id, str) or not object_id:
        raise UntranslatableEvent(f"{event['id']}: {event['type']} must carry a {expected_object} with an id")
    for name, value in (("payout_id", payout_id), ("payee_id", payee_id)):
        if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
            raise UntranslatableEvent(f"{object_id}: metadata.{name} {value!r} is not a valid id: {ID_RULE}")
    if event["type"] == "transfer.reversed" and not _fully_reversed(obj):
        # A partial reversal cannot be a PayoutFailed (all or nothing); the reversal that completes
        # it arrives as its own transfer.reversed with reversed=true and becomes one.
        return Translation([], f"{object_id} is partially reversed ({obj.get('amount_reversed')} of "
                               f"{obj.get('amount')}): recorded when fully reversed")
    common = {"payout_id": payout_id, "provider": PROVIDER, "attempt": _attempt(metadata.get("attempt"), object_id),
              "amount": _amount(obj)}
    event_type, payload = build(obj, common)
    envelope = new_envelope(
        event_type, payee_id=payee_id, event_id=ledger_event_id(event["id"]), correlation_id=payout_id,
        occurred_at=datetime.fromtimestamp(event["created"], timezone.utc), recorded_at=received_at)
    return Translation([Event(envelope, payload)])


def _fully_reversed(transfer: dict[str, Any]) -> bool:
    reversed_minor, amount = transfer.get("amount_reversed"), transfer.get("amount")
    return transfer.get("reversed") is True or (
        isinstance(reversed_minor, int) and isinstance(amount, int) and 0 < amount <= reversed_minor)


def translate(event: dict[str, Any], *, received_at: datetime) -> list[Event]:
    """The ledger events a verified Stripe event becomes ([] for events that are not ours)."""
    return interpret(event, received_at=received_at).events
