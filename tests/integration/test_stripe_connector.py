"""The Stripe connector through the real stripe SDK over HTTP, against the project's Stripe-compatible server."""

from __future__ import annotations

import pytest

from connectors.base import Outcome, TransferRequest
from connectors.stripe_connector import StripeConnector
from ledger.money import Money
from sandbox.stripe import StripeTestServer


@pytest.fixture
def server():
    with StripeTestServer() as running:
        yield running


def request(server, payout_id: str = "po-1", method: str = "stripe_standard", minor: int = 12_345) -> TransferRequest:
    account = server.create_account()
    return TransferRequest(payout_id, "payee-1", Money.of(minor, "USD"), method, account, attempt=1)


def connector(server, timeout_s: float = 5.0) -> StripeConnector:
    return StripeConnector("sk_test_ledger", api_base=server.url, timeout_s=timeout_s)


def test_a_transfer_is_created_once_per_payout_id(server):
    stripe_connector, payout = connector(server), request(server)
    first = stripe_connector.submit(payout)
    again = stripe_connector.submit(payout)  # a retry after a crash: the same key, the same transfer
    assert first.outcome is Outcome.SETTLED and first.provider_reference.startswith("tr_")
    assert again.provider_reference == first.provider_reference
    assert server.creations_by_key() == {"po-1": 1}
    (transfer,) = server.transfers()
    assert (transfer["amount"], transfer["currency"], transfer["transfer_group"]) == (12_345, "usd", "po-1")


def test_accepted_but_unanswered_is_resumed_by_asking_the_provider(server):
    stripe_connector, payout = connector(server), request(server)
    server.inject(path_prefix="/v1/transfers", method="POST", kind="accepted_then_500")
    unknown = stripe_connector.submit(payout)
    assert (unknown.outcome, unknown.reason_code, unknown.retryable) == (Outcome.FAILED, "provider_error", True)
    found = stripe_connector.lookup(payout)  # never guess: ask Stripe about this payout id
    assert found is not None and found.outcome is Outcome.SETTLED
    assert server.creations_by_key() == {"po-1": 1}


def test_lookup_of_a_payout_stripe_never_saw_is_none(server):
    assert connector(server).lookup(request(server, "po-never")) is None


def test_an_unknown_account_fails_permanently(server):
    payout = TransferRequest("po-2", "payee-1", Money.of(100, "USD"), "stripe_standard", "acct_missing", 1)
    result = connector(server).submit(payout)
    assert (result.outcome, result.reason_code, result.retryable) == (Outcome.FAILED, "no_account", False)


def test_rate_limit_is_retryable_and_carries_retry_after(server):
    stripe_connector, payout = connector(server), request(server)
    server.inject(path_prefix="/v1/transfers", method="POST", kind="rate_limit", retry_after_s=7)
    limited = stripe_connector.submit(payout)
    assert (limited.reason_code, limited.retryable, limited.retry_after_s) == ("rate_limited", True, 7.0)
    assert stripe_connector.submit(payout).outcome is Outcome.SETTLED  # a 429 is not stored for the key


def test_a_slow_provider_times_out_retryably_and_the_retry_is_replayed(server):
    stripe_connector, payout = connector(server, timeout_s=0.3), request(server)
    server.inject(path_prefix="/v1/transfers", method="POST", kind="slow", delay_s=1.0)
    timed_out = stripe_connector.submit(payout)
    assert (timed_out.reason_code, timed_out.retryable) == ("timeout", True)
    server.wait_idle(5)
    assert stripe_connector.submit(payout).outcome is Outcome.SETTLED
    assert server.creations_by_key() == {"po-1": 1}


def test_instant_method_also_requests_an_instant_payout(server):
    result = connector(server).submit(request(server, method="stripe_instant"))
    assert result.outcome is Outcome.PENDING and "/po_" in result.provider_reference
    (payout,) = server.payouts()
    assert payout["method"] == "instant" and payout["amount"] == 12_345
