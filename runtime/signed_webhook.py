"""Outgoing webhooks signed with HMAC-SHA256, the way Stripe signs its own (so receivers know the scheme).

Header `X-Ledger-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`; the body is
JSON. `X-Ledger-Delivery` is the delivery's stable id: the same notice sent again carries the same id,
so a receiver drops repeats (delivery is at-least-once). A 2xx answer is success; anything else raises.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.request
from typing import Any

SIGNATURE_HEADER = "X-Ledger-Signature"
DELIVERY_HEADER = "X-Ledger-Delivery"


class WebhookFailed(Exception):
    """The receiver did not answer 2xx (or could not be reached); the delivery may be retried."""


def signature(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secret: str, body: bytes, now: float | None = None) -> str:
    timestamp = int(time.time() if now is None else now)
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(secret: str, body: bytes, header: str | None, *, now: float | None = None, tolerance_s: int = 300) -> bool:
    """True when the header holds a v1 signature of body under secret, made within tolerance_s."""
    if not header:
        return False
    parts = [part.partition("=") for part in header.split(",")]
    stamps = [value for key, _, value in parts if key == "t"]
    if len(stamps) != 1 or not stamps[0].isdigit():
        return False
    timestamp = int(stamps[0])
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = signature(secret, timestamp, body)
    return any(hmac.compare_digest(expected, value) for key, _, value in parts if key == "v1")


def post_signed(url: str, payload: dict[str, Any], *, secret: str, delivery_id: str, timeout_s: float = 10.0) -> int:
    """POST payload as JSON, signed; returns the 2xx status, raises WebhookFailed otherwise."""
    body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", SIGNATURE_HEADER: signature_header(secret, body),
        DELIVERY_HEADER: delivery_id, "User-Agent": "payout-ledger"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        raise WebhookFailed(f"{url} answered {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise WebhookFailed(f"{url} unreachable: {getattr(exc, 'reason', exc)}") from None
