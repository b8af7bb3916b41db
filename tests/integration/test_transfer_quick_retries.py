"""A call that got no answer (connection reset, refused, timed out) is retried within seconds under the same
idempotency key before the retry delays (minutes) apply: the payout settles in seconds, paid once. Stripe gets
the same request again (it replays a request by its key); mobile money is asked first (a lookup), then paid
under the same key if it has nothing. The quick retries are bounded (LEDGER_PROVIDER_QUICK_RETRIES)."""

from __future__ import annotations

import time

from tests.integration.transfer_helpers import (all_final, book_of, outcome_counts, processor_running,
                                                request_payouts, sequencer_running, types_of, wait_until)
from sandbox.mobile_money import MobileMoneyTestServer
from sandbox.stripe import StripeTestServer

CASHIN_PATH = "/omcoreapis/1.0.2/cashin"
HOUR_RETRIES = [3600, 3600, 3600]  # a retry scheduled by the delays would show as a failure and an hour's wait


def transfer_posts(server) -> list[tuple[str, int]]:
    return [(key, status) for method, path, key, status in server.requests_log()
            if method == "POST" and path == "/v1/transfers"]


def test_a_reset_connection_is_retried_at_once_under_the_same_key_and_paid_once(settings):
    with StripeTestServer() as server:
        settings = settings.model_copy(update={"stripe_api_key": "sk_test_ledger", "stripe_api_base": server.url,
                                               "stripe_timeout_s": 3.0, "retry_delays_s": HOUR_RETRIES})
        requested = {e.payload["payout_id"]: e for e in request_payouts(
            settings, {f"q{i}": ("stripe_standard", server.create_account()) for i in range(3)})}
        # the first call is reset before Stripe executes anything; a later one is executed, then reset
        server.inject(path_prefix="/v1/transfers", method="POST", kind="reset", times=1)
        server.inject(path_prefix="/v1/transfers", method="POST", kind="accepted_then_reset", times=1)
        with sequencer_running(settings), processor_running(settings) as worker:
            started = time.monotonic()
            wait_until(lambda: all_final(settings, set(requested)), 30, "every payout settled")
            took = time.monotonic() - started
        assert took < 20  # seconds: not the hour the retry delays would have taken
        assert worker.stats.quick_retries == 2
        posts = transfer_posts(server)
        assert sorted(status for _, status in posts) == [0, 0] + [200] * 3  # two without an answer, then three
        assert len({key for key, _ in posts}) == 3  # every retry under its attempt's own key
        assert server.creations_by_key() == {payout_id: 1 for payout_id in requested}  # paid once each
        for payout_id in requested:  # no failure, no retry in the ledger: the attempt simply settled
            assert types_of(settings, payout_id) == [("PayoutRequested", None), ("PayoutSubmitted", 1),
                                                     ("PayoutSettled", 1)]
        assert set(outcome_counts(settings).values()) == {1}


def test_quick_retries_are_bounded_then_the_retry_delays_apply(settings):
    with StripeTestServer() as server:
        settings = settings.model_copy(update={"stripe_api_key": "sk_test_ledger", "stripe_api_base": server.url,
                                               "stripe_timeout_s": 3.0, "retry_delays_s": HOUR_RETRIES,
                                               "provider_quick_retries": 2})
        (request,) = request_payouts(settings, {"b1": ("stripe_standard", server.create_account())})
        payout_id = request.payload["payout_id"]
        server.inject(path_prefix="/v1/transfers", method="POST", kind="reset", times=10)
        with sequencer_running(settings), processor_running(settings) as worker:
            wait_until(lambda: book_of(settings).get(payout_id).status.value == "retry_wait", 30,
                       "the failure recorded after the quick retries")
        assert transfer_posts(server) == [(payout_id, 0)] * 3  # the call and 2 quick retries, 0.5 s and 1 s apart
        assert worker.stats.quick_retries == 2
        payout = book_of(settings).get(payout_id)
        assert (payout.reason_code, payout.attempts[0].retryable) == ("connection_error", True)
        assert types_of(settings, payout_id) == [("PayoutRequested", None), ("PayoutSubmitted", 1),
                                                 ("PayoutFailed", 1), ("PayoutRetryScheduled", 2)]
        assert server.transfers() == []


def test_mobile_money_is_asked_before_the_same_key_is_paid_again(settings):
    with MobileMoneyTestServer(complete_after_polls=0) as server:  # a cash-in succeeds at once
        settings = settings.model_copy(update={
            "mobile_money_url": server.url, "mobile_money_client_id": server.client_id,
            "mobile_money_client_secret": server.client_secret, "mobile_money_timeout_s": 3.0,
            "retry_delays_s": HOUR_RETRIES})
        (request,) = request_payouts(settings, {"mm": ("mobile_money", "2250701020304")}, currency="XOF",
                                     minor=30000)
        payout_id = request.payload["payout_id"]
        server.inject(kind="reset", path_prefix=CASHIN_PATH, method="POST", times=1)
        with sequencer_running(settings), processor_running(settings) as worker:
            wait_until(lambda: all_final(settings, {payout_id}), 30, "the payout settled")
        calls = [(method, status) for method, path, status in server.requests_log() if path.startswith(CASHIN_PATH)]
        assert calls == [("POST", 0), ("GET", 404), ("POST", 201)]  # reset, asked (nothing there), paid
        assert worker.stats.quick_retries == 1
        assert server.creations_by_key() == {payout_id: 1}
        assert types_of(settings, payout_id) == [("PayoutRequested", None), ("PayoutSubmitted", 1),
                                                 ("PayoutSettled", 1)]
