"""Stripe webhooks through `ledger webhooks serve` into the ledger: an instant payout paid, then failed days later."""

from __future__ import annotations

import signal
import subprocess
import time

import httpx

from ledger.codec import EventCodec
from processors.payout_run import fold_ledger
from runtime.processes import free_port
from tests.integration.cli_env import LEDGER, env_for
from tests.integration.sequencing_helpers import ledger_events
from tests.integration.transfer_helpers import book_of, processor_running, request_payouts, sequencer_running, wait_until
from sandbox.stripe import StripeTestServer

SECRET = "whsec_ledger_e2e"


def test_instant_payout_paid_then_failed_reaches_the_ledger_and_returns_the_money(settings, tmp_path):
    with StripeTestServer() as stripe_server:
        settings = settings.model_copy(update={"stripe_api_key": "sk_test_ledger", "stripe_api_base": stripe_server.url})
        account = stripe_server.create_account()
        (request,) = request_payouts(settings, {"inst-1": ("stripe_instant", account)})
        payout_id, net = request.payload["payout_id"], request.payload["net"]
        port = free_port()
        server = subprocess.Popen([LEDGER, "webhooks", "serve", "--port", str(port)], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  env=env_for(settings, tmp_path, LEDGER_STRIPE_WEBHOOK_SECRET=SECRET))
        url = f"http://127.0.0.1:{port}/webhooks/stripe"
        try:
            def up() -> bool:
                assert server.poll() is None, server.stderr.read()
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
                except httpx.TransportError:
                    return False
            wait_until(up, 30, "the webhook endpoint", every_s=0.1)
            with sequencer_running(settings):
                with processor_running(settings):
                    wait_until(lambda: book_of(settings).get(payout_id).status.value == "at_provider", 30,
                           "the instant payout accepted by Stripe")
                (stripe_payout,) = stripe_server.payouts()
                assert stripe_payout["metadata"]["payout_id"] == payout_id

                paid = StripeTestServer.event("payout.paid", stripe_server.set_payout_status(stripe_payout["id"], "paid"))
                assert StripeTestServer.send_webhook(url, paid, SECRET) == 200
                wait_until(lambda: book_of(settings).get(payout_id).status.value == "settled", 30, "settled")
                # Stripe's redelivery of the same event: signed anew (a later timestamp); recorded once
                assert StripeTestServer.send_webhook(url, paid, SECRET, timestamp=int(time.time()) + 1) == 200
                forged = StripeTestServer.send_webhook(url, paid, "whsec_not_ours")
                assert forged == 400

                failed = StripeTestServer.event("payout.failed", stripe_server.set_payout_status(
                    stripe_payout["id"], "failed", failure_code="account_closed"))
                assert StripeTestServer.send_webhook(url, failed, SECRET) == 200
                wait_until(lambda: book_of(settings).get(payout_id).status.value == "failed", 30, "failed")
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    payout = book_of(settings).get(payout_id)
    assert (payout.reversed, payout.reason_code) == (True, "account_closed")
    settled = [e for e in ledger_events(settings)
               if e[0].event_type == "PayoutSettled"]
    assert len(settled) == 1  # the redelivered payout.paid was not recorded twice
    earnings = fold_ledger(settings.kafka_bootstrap, settings.topic_events, EventCodec())
    balance = earnings["inst-1"].balance(net.currency.code)
    assert (balance.settled.amount_minor, balance.unpaid.amount_minor) == (0, net.amount_minor)
