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


def test_a_reset_connection_is_a_retryable_connection_error_and_the_next_call_reconnects(server):
    stripe_connector, payout = connector(server), request(server)
    server.inject(path_prefix="/v1/transfers", method="POST", kind="reset")
    reset = stripe_connector.submit(payout)
    assert (reset.outcome, reset.reason_code, reset.retryable) == (Outcome.FAILED, "connection_error", True)
    assert stripe_connector.submit(payout).outcome is Outcome.SETTLED  # same key: nothing was executed before
    assert server.creations_by_key() == {"po-1": 1}


def test_a_kept_alive_connection_the_server_closed_while_idle_is_opened_again():
    first = StripeTestServer().start()
    port = first.port
    stripe_connector = StripeConnector("sk_test_ledger", api_base=first.url, timeout_s=5.0)
    try:
        assert stripe_connector.submit(request(first, "po-a")).outcome is Outcome.SETTLED
    finally:
        first.stop()  # closes the connection the connector keeps alive
    with StripeTestServer(port=port) as second:  # the same address, a new server
        paid = stripe_connector.submit(request(second, "po-b"))
        assert paid.outcome is Outcome.SETTLED, paid  # not a request written to the dead connection
        assert second.creations_by_key() == {"po-b": 1}


def test_a_key_still_in_use_is_retryable_not_a_conflict(server):
    stripe_connector, payout = connector(server, timeout_s=0.3), request(server)
    server.inject(path_prefix="/v1/transfers", method="POST", kind="slow", delay_s=1.5)
    assert stripe_connector.submit(payout).reason_code == "timeout"
    in_use = stripe_connector.submit(payout)  # the first request still runs at the provider
    assert (in_use.reason_code, in_use.retryable) == ("idempotency_key_in_use", True)
    assert server.wait_idle(5)
    assert stripe_connector.submit(payout).outcome is Outcome.SETTLED
    assert server.creations_by_key() == {"po-1": 1}


@pytest.mark.parametrize(("key", "mode", "limits"), [
    ("sk_test_x", "test", (16, 25.0)), ("rk_test_x", "test", (16, 25.0)),
    ("sk_live_x", "live", (64, 100.0)), ("rk_live_x", "live", (64, 100.0))])
def test_the_lane_defaults_follow_the_keys_mode(key, mode, limits):
    stripe_connector = StripeConnector(key, api_base="http://127.0.0.1:9")  # nothing is called
    assert (stripe_connector.mode, (stripe_connector.default_concurrency, stripe_connector.default_rate_per_s)) == (
        mode, limits)


def test_an_instant_payout_counts_two_requests_against_the_rate_limit(server):
    assert StripeConnector.requests_per_call(request(server, method="stripe_instant"), "submit") == 2
    assert StripeConnector.requests_per_call(request(server), "submit") == 1
