"""The transfer processor on the real broker, paying through the real stripe SDK over HTTP (local server)."""

from __future__ import annotations


import pytest

from ledger.codec import EventCodec
from processors.payout_run import fold_ledger
from tests.integration.sequencing_helpers import dead_letters
from tests.integration.transfer_helpers import (all_final, book_of, outcome_counts, request_payouts,
                                                sequencer_running, wait_until, processor_running, types_of)
from sandbox.stripe import StripeTestServer


@pytest.fixture
def stripe_server():
    with StripeTestServer() as server:
        yield server


def stripe_settings(settings, server, **changes):
    return settings.model_copy(update={"stripe_api_key": "sk_test_ledger", "stripe_api_base": server.url,
                                       "stripe_timeout_s": 3.0, "retry_delays_s": [1, 1, 1], **changes})


def test_payouts_are_paid_once_and_a_bad_account_fails_and_returns_the_money(settings, stripe_server):
    settings = stripe_settings(settings, stripe_server)
    payees = {f"p{i}": ("stripe_standard", stripe_server.create_account()) for i in range(5)}
    payees["closed"] = ("stripe_standard", "acct_missing")
    requested = {e.payee_id: e for e in request_payouts(settings, payees)}
    assert len(requested) == 6
    ids = {e.payload["payout_id"] for e in requested.values()}
    with sequencer_running(settings), processor_running(settings):
        wait_until(lambda: all_final(settings, ids), 60, "every payout settled or failed")
    book = book_of(settings)
    statuses = {payee: book.get(e.payload["payout_id"]).status.value for payee, e in requested.items()}
    assert statuses == {**{f"p{i}": "settled" for i in range(5)}, "closed": "failed"}
    assert book.get(requested["closed"].payload["payout_id"]).reason_code == "no_account"
    assert set(outcome_counts(settings).values()) == {1}
    assert stripe_server.creations_by_key() == {requested[f"p{i}"].payload["payout_id"]: 1 for i in range(5)}
    net = requested["p0"].payload["net"].amount_minor  # 80 % of 50.00, less the Stripe fee
    assert sorted(t["amount"] for t in stripe_server.transfers()) == [net] * 5
    # the failed payout's net is the payee's unpaid balance again; the others are settled
    earnings = fold_ledger(settings.kafka_bootstrap, settings.topic_events, EventCodec())
    assert earnings["closed"].balance("USD").unpaid.amount_minor == requested["closed"].payload["net"].amount_minor
    assert earnings["p0"].balance("USD").settled.amount_minor == net
    assert types_of(settings, requested["p0"].payload["payout_id"]) == [
        ("PayoutRequested", None), ("PayoutSubmitted", 1), ("PayoutSettled", 1)]


def test_a_stored_500_is_retried_under_a_new_key_after_asking_stripe(settings, stripe_server):
    settings = stripe_settings(settings, stripe_server)
    (request,) = request_payouts(settings, {"r1": ("stripe_standard", stripe_server.create_account())})
    payout_id = request.payload["payout_id"]
    stripe_server.inject(path_prefix="/v1/transfers", method="POST", kind="server_error", times=1)
    with sequencer_running(settings), processor_running(settings):
        wait_until(lambda: all_final(settings, {payout_id}), 60, "the payout settled")
    assert types_of(settings, payout_id) == [
        ("PayoutRequested", None), ("PayoutSubmitted", 1), ("PayoutFailed", 1), ("PayoutRetryScheduled", 2),
        ("PayoutSubmitted", 2), ("PayoutSettled", 2)]
    assert stripe_server.creations_by_key() == {f"{payout_id}:2": 1}  # the 500 created nothing
    assert len(stripe_server.transfers()) == 1


def test_an_accepted_transfer_answered_500_is_found_by_lookup_not_paid_again(settings, stripe_server):
    settings = stripe_settings(settings, stripe_server)
    (request,) = request_payouts(settings, {"a1": ("stripe_standard", stripe_server.create_account())})
    payout_id = request.payload["payout_id"]
    stripe_server.inject(path_prefix="/v1/transfers", method="POST", kind="accepted_then_500", times=1)
    with sequencer_running(settings), processor_running(settings):
        wait_until(lambda: all_final(settings, {payout_id}), 60, "the payout settled")
    assert types_of(settings, payout_id)[-1] == ("PayoutSettled", 2)
    assert len(stripe_server.transfers()) == 1 and sum(stripe_server.creations_by_key().values()) == 1


def test_retries_stop_after_the_last_attempt_and_the_money_returns(settings, stripe_server):
    settings = stripe_settings(settings, stripe_server)
    (request,) = request_payouts(settings, {"x1": ("stripe_standard", stripe_server.create_account())})
    payout_id = request.payload["payout_id"]
    stripe_server.inject(path_prefix="/v1/transfers", method="POST", kind="server_error", times=10)
    with sequencer_running(settings), processor_running(settings):
        wait_until(lambda: all_final(settings, {payout_id}), 60, "the payout failed")
    payout = book_of(settings).get(payout_id)
    assert (payout.status.value, payout.reason_code, len(payout.attempts)) == ("failed", "provider_error", 4)
    assert "gave up after 4 attempts" in payout.message
    assert stripe_server.transfers() == []
    earnings = fold_ledger(settings.kafka_bootstrap, settings.topic_events, EventCodec())
    assert earnings["x1"].balance("USD").unpaid.amount_minor == request.payload["net"].amount_minor


def test_a_last_attempt_answered_500_after_stripe_made_the_transfer_settles_instead_of_failing(settings, stripe_server):
    """Found by the soak: the key replays the 500, so only a lookup shows the money moved; without it the payout
    failed for good while Stripe had paid, and its money went back to the payee's balance to be paid again."""
    settings = stripe_settings(settings, stripe_server)
    (request,) = request_payouts(settings, {"z1": ("stripe_standard", stripe_server.create_account())})
    payout_id = request.payload["payout_id"]
    stripe_server.inject(path_prefix="/v1/transfers", method="POST", kind="server_error", times=3)
    stripe_server.inject(path_prefix="/v1/transfers", method="POST", kind="accepted_then_500", times=1)
    with sequencer_running(settings), processor_running(settings):
        wait_until(lambda: all_final(settings, {payout_id}), 60, "the payout finished")
    payout = book_of(settings).get(payout_id)
    assert (payout.status.value, len(payout.attempts)) == ("settled", 4)
    assert types_of(settings, payout_id)[-1] == ("PayoutSettled", 4)
    (transfer,) = stripe_server.transfers()
    assert transfer["amount"] == request.payload["net"].amount_minor
    earnings = fold_ledger(settings.kafka_bootstrap, settings.topic_events, EventCodec())
    assert earnings["z1"].balance("USD").unpaid.amount_minor == 0


def test_a_cancelled_payout_never_reaches_the_provider(settings, stripe_server):
    from ledger import payouts as records
    from processors.payout_run import send_commands
    from tests.integration.sequencing_helpers import run_sequencer

    settings = stripe_settings(settings, stripe_server)
    (request,) = request_payouts(settings, {"c1": ("stripe_standard", stripe_server.create_account())})
    payout = book_of(settings).get(request.payload["payout_id"])
    send_commands(settings.kafka_bootstrap, settings.topic_commands,
                  [records.cancelled(payout, "payee asked", "ops", request.envelope.occurred_at)], EventCodec())
    run_sequencer(settings, idle_exit_s=1.0)
    with sequencer_running(settings), processor_running(settings) as worker:
        wait_until(lambda: worker.book.get(payout.payout_id) is not None, 30, "the processor rebuilt")
    assert book_of(settings).get(payout.payout_id).status.value == "cancelled"
    assert stripe_server.transfers() == [] and worker.stats.submitted == 0
    assert dead_letters(settings) == []


def test_an_operator_retry_makes_a_waiting_payout_due_now(settings, stripe_server, tmp_path):
    import json
    import subprocess

    from tests.integration.cli_env import LEDGER, env_for

    settings = stripe_settings(settings, stripe_server, retry_delays_s=[3600, 3600, 3600])
    (request,) = request_payouts(settings, {"w1": ("stripe_standard", stripe_server.create_account())})
    payout_id = request.payload["payout_id"]
    stripe_server.inject(path_prefix="/v1/transfers", method="POST", kind="rate_limit", times=1, retry_after_s=1)
    with sequencer_running(settings), processor_running(settings):
        wait_until(lambda: book_of(settings).get(payout_id).status.value == "retry_wait", 30, "a retry an hour away")
        assert book_of(settings).get(payout_id).reason_code == "rate_limited"
        result = subprocess.run([LEDGER, "payouts", "retry", payout_id, "--actor", "ops", "--json"],
                                env=env_for(settings, tmp_path), capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["verdict"] == "chained"
        wait_until(lambda: all_final(settings, {payout_id}), 30, "the retried payout settled")
    assert types_of(settings, payout_id)[-1] == ("PayoutSettled", 2)
    assert len(stripe_server.transfers()) == 1
