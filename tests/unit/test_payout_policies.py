"""Retry schedule, failure classification and circuit breaker: each test fails if the behaviour changes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import stripe

from connectors.base import Outcome, TransferRequest
from connectors.circuit_breaker import BreakerState, CircuitBreaker
from connectors.classification import PERMANENT_CODES, RETRYABLE_CODES, is_retryable
from connectors.in_memory import InMemoryConnector
from connectors.stripe_connector import classify
from ledger.guards import InvariantViolation
from ledger.money import Money
from ledger.retry_policy import RetryPolicy

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


def test_default_retry_schedule_5_min_15_min_1_h_then_give_up():
    policy = RetryPolicy()
    assert [policy.next_attempt_at(n, T0) for n in (1, 2, 3, 4)] == [
        T0 + timedelta(minutes=5), T0 + timedelta(minutes=15), T0 + timedelta(hours=1), None]
    assert policy.max_attempts == 4


def test_retry_after_longer_than_the_schedule_is_honoured_and_shorter_is_not():
    policy = RetryPolicy()
    assert policy.next_attempt_at(1, T0, retry_after_s=900) == T0 + timedelta(seconds=900)
    assert policy.next_attempt_at(1, T0, retry_after_s=2) == T0 + timedelta(minutes=5)


def test_the_schedule_is_configurable_and_validated():
    assert RetryPolicy((10, 20)).next_attempt_at(2, T0) == T0 + timedelta(seconds=20)
    assert RetryPolicy((10, 20)).next_attempt_at(3, T0) is None
    with pytest.raises(InvariantViolation, match="positive integers"):
        RetryPolicy((10, 0))
    with pytest.raises(InvariantViolation, match="1-based"):
        RetryPolicy().next_attempt_at(0, T0)


@pytest.mark.parametrize("code", ["timeout", "connection_error", "rate_limited", "provider_error",
                                  "could_not_process", "insufficient_funds"])
def test_retryable_codes(code):
    assert is_retryable(code)


@pytest.mark.parametrize("code", ["account_closed", "account_frozen", "no_account", "invalid_account_number",
                                  "account_not_verified", "invalid_amount", "insufficient_permissions", "declined",
                                  "some_new_code_nobody_classified"])
def test_permanent_codes_and_unknown_codes_fail_at_once(code):
    assert not is_retryable(code)


def test_the_two_lists_do_not_overlap():
    assert not RETRYABLE_CODES & PERMANENT_CODES


@pytest.mark.parametrize(("exc", "code", "retryable"), [
    (stripe.RateLimitError("slow down", http_status=429, headers={"retry-after": "7"}), "rate_limited", True),
    (stripe.APIConnectionError("Request timed out"), "timeout", True),
    (stripe.APIConnectionError("Connection refused"), "connection_error", True),
    (stripe.APIError("boom", http_status=500), "provider_error", True),
    (stripe.InvalidRequestError("no such account", "destination", code="no_account", http_status=400), "no_account", False),
    (stripe.IdempotencyError("same key, other params", http_status=400), "idempotency_conflict", False),
    (stripe.AuthenticationError("bad key", http_status=401), "authentication_failed", False),
    (stripe.PermissionError("nope", http_status=403), "insufficient_permissions", False),
])
def test_stripe_errors_are_classified(exc, code, retryable):
    result = classify(exc)
    assert (result.outcome, result.reason_code, result.retryable) == (Outcome.FAILED, code, retryable)


def test_a_rate_limit_carries_retry_after():
    assert classify(stripe.RateLimitError("x", http_status=429, headers={"retry-after": "7"})).retry_after_s == 7.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def test_breaker_opens_after_the_threshold_and_half_opens_after_the_cooldown():
    clock = Clock()
    breaker = CircuitBreaker(clock, failure_threshold=3, cooldown_s=60)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure(retryable=True)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    breaker.record_failure(retryable=True)
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.now += timedelta(seconds=59)
    assert not breaker.allow()
    clock.now += timedelta(seconds=1)
    assert breaker.allow() and breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # one trial at a time
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.allow()


def test_a_failed_trial_opens_it_again_and_permanent_failures_do_not_count():
    clock = Clock()
    breaker = CircuitBreaker(clock, failure_threshold=2, cooldown_s=10)
    for _ in range(5):
        breaker.record_failure(retryable=False)  # bad accounts say nothing about the provider
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure(retryable=True)
    breaker.record_failure(retryable=True)
    clock.now += timedelta(seconds=10)
    assert breaker.allow()
    breaker.record_failure(retryable=True)
    assert breaker.state is BreakerState.OPEN and not breaker.allow()


def test_a_success_resets_the_count():
    breaker = CircuitBreaker(Clock(), failure_threshold=2)
    breaker.record_failure(retryable=True)
    breaker.record_success()
    breaker.record_failure(retryable=True)
    assert breaker.state is BreakerState.CLOSED


def test_the_in_memory_twin_pays_once_per_payout_id():
    twin = InMemoryConnector()
    request = TransferRequest("po-1", "payee-1", Money.of(1000, "USD"), "manual", "acct_1", 1)
    twin.fail_next("po-1", "could_not_process")
    first = twin.submit(request)
    assert (first.outcome, first.retryable) == (Outcome.FAILED, True)
    assert twin.lookup(request) is None
    assert twin.submit(request).outcome is Outcome.SETTLED
    assert twin.submit(request).outcome is Outcome.SETTLED
    assert list(twin.transfers) == ["po-1"] and twin.lookup(request).outcome is Outcome.SETTLED
