"""Which provider failures are worth an automatic retry, and which need a person (new account details).

Retryable: timeouts, connection errors, rate limits (429, honouring Retry-After), provider errors
(5xx), a request whose idempotency key is still in use by the first one (Stripe's 409
idempotency_key_in_use: its outcome is not known yet), and Stripe's could_not_process and
insufficient_funds. QUICK_RETRY_CODES, the failures that left no answer, are first retried within
seconds under the same key (processors/transfer_processor.py). Everything
else fails at once: invalid or closed accounts, accounts not verified, invalid amounts, missing
permissions and the other Stripe failure codes.
"""

from __future__ import annotations

from connectors.base import Outcome, TransferResult

RETRYABLE_CODES = frozenset({
    "timeout", "connection_error", "rate_limited", "provider_error", "provider_unavailable",
    "could_not_process", "insufficient_funds", "balance_insufficient", "idempotency_key_in_use",
})
# No answer at all (the connection was reset or refused, or timed out before an answer), or the first request
# under the key still running: the same request again under the same key is safe and usually answered.
QUICK_RETRY_CODES = frozenset({"connection_error", "timeout", "idempotency_key_in_use"})
PERMANENT_CODES = frozenset({
    "account_closed", "account_frozen", "bank_account_restricted", "bank_ownership_changed", "debit_not_authorized",
    "declined", "invalid_account_number", "incorrect_account_holder_name", "incorrect_account_holder_address",
    "incorrect_account_holder_tax_id", "invalid_currency", "no_account", "unsupported_card", "account_invalid",
    "account_not_verified", "invalid_amount", "insufficient_permissions", "authentication_failed",
    "idempotency_conflict",
})


def is_retryable(reason_code: str) -> bool:
    """Unknown codes are permanent: an automatic retry must be a decision, never a default."""
    return reason_code in RETRYABLE_CODES


def failed(reason_code: str, message: str = "", retry_after_s: float | None = None) -> TransferResult:
    return TransferResult(Outcome.FAILED, reason_code=reason_code, message=message,
                          retryable=is_retryable(reason_code), retry_after_s=retry_after_s)
