"""Stripe Connect: a transfer to the payee's connected account (and, for stripe_instant, an instant payout).

Every call carries Idempotency-Key = payout id, so a retry after a
timeout or a crash can never create a second transfer; a lookup finds an earlier transfer by its
transfer_group (the payout id). The SDK's own retries are off: retries are the processor's decision.
Its quick retries of a connection-level failure are the SDK's rule (the same key, 0.5 s doubling up
to 5 s), made by the processor without holding a lane's thread during the wait (REPLAYS_BY_KEY).

Limits (https://docs.stripe.com/rate-limits): 100 read and write requests per second in live mode,
25 in test mode, across the account. The lane's defaults follow the key: 25/s for sk_test_/rk_test_,
100/s for a live key, with enough calls in flight to use that rate at Stripe's typical answer times
(LANE_DEFAULTS). An instant payout is two requests (the transfer, then the payout): requests_per_call.

HTTP: the SDK over connectors/stripe_http.py (http.client, a kept-alive connection per lane thread; the
SDK's requests client when a proxy is configured for the API's address).
"""

from __future__ import annotations

import logging

import stripe

from connectors.base import Outcome, TransferRequest, TransferResult
from connectors.classification import failed
from connectors.stripe_http import client_for

logger = logging.getLogger("ledger.connectors.stripe")


TEST_KEY_PREFIXES = ("sk_test_", "rk_test_")
# (calls in flight, requests per second) per mode: the rate is Stripe's documented limit; the calls in flight
# cover it at answers up to 0.64 s (a transfer usually takes a few hundred ms).
LANE_DEFAULTS = {"test": (16, 25.0), "live": (64, 100.0)}


def key_mode(api_key: str) -> str:
    """test or live, from the secret (or restricted) key's prefix."""
    return "test" if api_key.startswith(TEST_KEY_PREFIXES) else "live"


def _error_code(exc: stripe.StripeError) -> str | None:
    body = exc.json_body if isinstance(exc.json_body, dict) else {}
    error = body.get("error")
    return error.get("code") if isinstance(error, dict) else getattr(exc, "code", None)


def classify(exc: stripe.StripeError) -> TransferResult:
    """A Stripe SDK exception as a classified failure."""
    message = str(getattr(exc, "user_message", None) or exc)
    # Stripe's request id is what its support asks for; the caller's context names the payout
    logger.warning("stripe answered HTTP %s (%s): %s", exc.http_status, type(exc).__name__, message,
                   extra={"stripe_request_id": getattr(exc, "request_id", None) or ""})
    if isinstance(exc, stripe.RateLimitError):
        retry_after = (exc.headers or {}).get("retry-after") or (exc.headers or {}).get("Retry-After")
        return failed("rate_limited", message, float(retry_after) if retry_after else None)
    if isinstance(exc, stripe.APIConnectionError):
        return failed("timeout" if "timed out" in message.lower() or "timeout" in message.lower()
                      else "connection_error", message)
    if exc.http_status == 409 and _error_code(exc) == "idempotency_key_in_use":  # the key's first request still runs
        return failed("idempotency_key_in_use", message)  # (the SDK raises a plain APIError for a 409)
    if isinstance(exc, stripe.IdempotencyError):
        return failed("idempotency_conflict", message)
    if isinstance(exc, stripe.AuthenticationError):
        return failed("authentication_failed", message)
    if isinstance(exc, stripe.PermissionError):
        return failed("insufficient_permissions", message)
    if isinstance(exc, stripe.InvalidRequestError):
        return failed(exc.code or "invalid_request", message)
    if isinstance(exc, stripe.APIError) or (exc.http_status or 0) >= 500:
        return failed("provider_error", message)
    return failed(getattr(exc, "code", None) or "provider_error", message)


class StripeConnector:
    name = "stripe"
    REPLAYS_BY_KEY = True  # a request sent again under its key gets the first one's answer, or runs once

    def __init__(self, api_key: str, api_base: str | None = None, timeout_s: float = 30.0) -> None:
        self.mode = key_mode(api_key)
        self.default_concurrency, self.default_rate_per_s = LANE_DEFAULTS[self.mode]
        self._client = stripe.StripeClient(
            api_key, base_addresses={"api": api_base} if api_base else None, max_network_retries=0,
            http_client=client_for(api_base or stripe.api_base, timeout_s),
        )

    @staticmethod
    def requests_per_call(request: TransferRequest, mode: str) -> int:
        """Stripe requests one call makes, for the rate limit: an instant payout adds one to the transfer."""
        return 2 if request.method == "stripe_instant" else 1

    def submit(self, request: TransferRequest) -> TransferResult:
        logger.debug("creating a transfer of %s to %s (idempotency key %s)", request.amount, request.destination,
                     request.idempotency_key)
        try:
            transfer = self._client.v1.transfers.create(
                params={"amount": request.amount.amount_minor, "currency": request.amount.currency.code.lower(),
                        "destination": request.destination, "transfer_group": request.payout_id,
                        "metadata": {"payout_id": request.payout_id, "payee_id": request.payee_id}},
                options={"idempotency_key": request.idempotency_key},
            )
        except stripe.StripeError as exc:
            return classify(exc)
        if request.method != "stripe_instant":
            return TransferResult(Outcome.SETTLED, provider_reference=transfer.id)
        return self._instant_payout(request, transfer.id)

    def _instant_payout(self, request: TransferRequest, transfer_id: str) -> TransferResult:
        try:
            payout = self._client.v1.payouts.create(
                params={"amount": request.amount.amount_minor, "currency": request.amount.currency.code.lower(),
                        "method": "instant",
                        "metadata": {"payout_id": request.payout_id, "payee_id": request.payee_id}},
                options={"idempotency_key": f"{request.idempotency_key}:instant",
                         "stripe_account": request.destination},
            )
        except stripe.StripeError as exc:
            return classify(exc)
        return TransferResult(Outcome.PENDING, provider_reference=f"{transfer_id}/{payout.id}")

    def lookup(self, request: TransferRequest) -> TransferResult | None:
        try:
            found = self._client.v1.transfers.list(params={"transfer_group": request.payout_id, "limit": 1})
        except stripe.StripeError as exc:
            return classify(exc)
        if not found.data:
            return None
        if request.method == "stripe_instant":  # the instant payout is asked for again with its own key: replayed
            return self._instant_payout(request, found.data[0].id)
        return TransferResult(Outcome.SETTLED, provider_reference=found.data[0].id)
