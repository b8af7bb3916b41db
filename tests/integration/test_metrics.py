"""Prometheus metrics of the running processes, scraped over HTTP as Prometheus would."""

from __future__ import annotations

import signal
import subprocess
from datetime import datetime, timedelta, timezone

import httpx
from prometheus_client.parser import text_string_to_metric_families

from processors.ledger_client import LedgerClient
from processors.operations import Operations
from runtime.processes import free_port
from tests.integration.cli_env import LEDGER, env_for
from tests.integration.sequencing_helpers import ledger_events, send_raw
from tests.integration.transfer_helpers import TWO_DAYS_AGO, request_payouts, sequencer_running, wait_until
from sandbox.stripe import StripeTestServer


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except httpx.TransportError:
        return {}
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def running(args: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen([LEDGER, *args], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def test_the_sequencer_counts_appends_duplicates_and_dead_letters(settings, tmp_path):
    port = free_port()
    worker = running(["sequencer", "--metrics-port", str(port)], env_for(settings, tmp_path))
    try:
        with LedgerClient(settings.kafka_bootstrap, settings) as client:
            payment = {"payment_id": "m-1", "payee_id": "m", "amount_minor": 10_000, "currency": "USD",
                       "occurred_at": TWO_DAYS_AGO.isoformat()}
            client.record_batch([payment, {**payment, "payment_id": "m-2"}, payment])  # the third is a duplicate
        send_raw(settings, [b"not json"])
        wait_until(lambda: len(ledger_events(settings)) == 2, 30, "the payments in the ledger")
        run = Operations(settings, settings.kafka_bootstrap, settings.database_url).run(
            datetime.now(timezone.utc) + timedelta(days=8))
        net = run.totals_minor().get("USD", 0)
        wait_until(lambda: value(scrape(port), "ledger_dead_letters_total", stage="decode") == 1
                   and value(scrape(port), "ledger_payouts_requested_total", method="manual", currency="USD") == 1,
                   30, "the dead letter and the payout request counted")
        samples = scrape(port)
    finally:
        stop(worker)
    assert value(samples, "ledger_events_appended_total", event_type="PaymentCompleted") == 2
    assert value(samples, "ledger_duplicates_total", topic=settings.topic_incoming) == 1
    assert net == 16_000 and value(samples, "ledger_payout_amount_minor_total", currency="USD",
                                   outcome="requested") == net


def test_the_transfer_processor_counts_outcomes_amounts_and_provider_latency(settings, tmp_path):
    with StripeTestServer() as server:
        payees = {f"t{i}": ("stripe_standard", server.create_account()) for i in range(3)}
        payees["gone"] = ("stripe_standard", "acct_missing")
        requested = {e.payee_id: e for e in request_payouts(settings, payees)}
        port = free_port()
        env = env_for(settings, tmp_path, LEDGER_STRIPE_API_KEY="sk_test_ledger", LEDGER_STRIPE_API_BASE=server.url)
        with sequencer_running(settings):
            worker = running(["transfers", "--metrics-port", str(port)], env)
            try:
                wait_until(lambda: value(scrape(port), "ledger_payouts_failed_total", provider="stripe",
                                         reason="no_account") == 1
                           and value(scrape(port), "ledger_payouts_settled_total", provider="stripe",
                                     currency="USD") == 3, 60, "three settled and one failed, counted")
                samples = scrape(port)
            finally:
                stop(worker)
    net = requested["t0"].payload["net"].amount_minor
    assert value(samples, "ledger_payout_attempts_total", provider="stripe") == 4
    assert value(samples, "ledger_payout_amount_minor_total", currency="USD", outcome="settled") == 3 * net
    assert value(samples, "ledger_payout_amount_minor_total", currency="USD", outcome="failed") == (
        requested["gone"].payload["net"].amount_minor)
    assert value(samples, "ledger_provider_call_seconds_count", provider="stripe", mode="submit") == 4
    assert value(samples, "ledger_provider_circuit_open", provider="stripe") == 0
