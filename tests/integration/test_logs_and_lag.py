"""Real processes with LEDGER_LOG_FORMAT=json: every stderr line is JSON and carries the ids of what it is
about; consumer lag (as time, from record timestamps) is served on /metrics and returns to 0 when caught up."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

from ledger.codec import EventCodec
from ledger.events import Event, new_envelope
from ledger.intake import deterministic_event_id
from ledger.money import Money
from processors.ledger_client import LedgerClient
from processors.kafka_io import DeliveryTracker, flush_or_raise, make_producer
from runtime.processes import free_port
from tests.integration.cli_env import LEDGER, env_for
from tests.integration.test_metrics import scrape, value
from tests.integration.transfer_helpers import TWO_DAYS_AGO, request_payouts, sequencer_running, wait_until
from sandbox.stripe import StripeTestServer

HOUR_AGO_MS = int(time.time() * 1000) - 3_600_000


def start(args: list[str], env: dict, log_file: Path) -> subprocess.Popen:
    with log_file.open("w") as sink:  # a file, not a pipe: a full pipe would block the process
        return subprocess.Popen([LEDGER, *args], env={**env, "LEDGER_LOG_FORMAT": "json"}, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=sink)


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def json_lines(log_file: Path) -> list[dict]:
    """Every line the process wrote to stderr, each of which must be one JSON object."""
    lines = log_file.read_text().splitlines()
    assert lines, "the process logged nothing"
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    assert all({"ts", "level", "logger", "process", "message"} <= set(entry) for entry in parsed)
    return parsed


def payment(payment_id: str, minor: int, correlation_id: str) -> Event:
    at = datetime.now(timezone.utc)
    return Event(new_envelope("PaymentCompleted", payee_id="lag-1", occurred_at=TWO_DAYS_AGO, recorded_at=at,
                              correlation_id=correlation_id),
                 {"payment_id": payment_id, "amount": Money.of(minor, "USD")})


def send_old(settings, values: list[bytes], timestamp_ms: int = HOUR_AGO_MS) -> None:
    """Records to payments.incoming stamped an hour ago, as if they had waited there that long."""
    producer, tracker = make_producer(settings.kafka_bootstrap), DeliveryTracker()
    for raw in values:
        producer.produce(settings.topic_incoming, key=b"lag-1", value=raw, timestamp=timestamp_ms, on_delivery=tracker)
    flush_or_raise(producer, tracker, len(values))


def test_the_sequencer_logs_json_with_the_events_ids_and_serves_its_lag(settings, tmp_path):
    codec, incoming = EventCodec(), settings.topic_incoming
    accepted, conflicting = payment("lag-p1", 1000, "corr-accepted"), payment("lag-p1", 2000, "corr-conflict")
    port, log_file = free_port(), tmp_path / "sequencer.log"
    worker = start(["sequencer", "--metrics-port", str(port)], env_for(settings, tmp_path), log_file)
    flowing, feeder = threading.Event(), None
    try:
        send_old(settings, [codec.encode(accepted), codec.encode(conflicting)])
        wait_until(lambda: value(scrape(port), "ledger_dead_letters_total", stage="ledger") == 1, 60,
                   "the conflicting payment dead-lettered")
        wait_until(lambda: value(scrape(port), "ledger_consumer_lag_seconds", processor="sequencer",
                                 topic=incoming) == 0.0, 30, "lag 0 once caught up")
        samples = scrape(port)
        assert value(samples, "ledger_consumer_last_record_timestamp_seconds", processor="sequencer",
                     topic=incoming) == HOUR_AGO_MS / 1000
        assert ("ledger_consumer_lag_seconds", (("processor", "sequencer"), ("topic", settings.topic_commands))) in samples

        def feed() -> None:  # duplicates, an hour old, every 10 ms: each poll finds some, so the lag shows
            while not flowing.is_set():
                send_old(settings, [codec.encode(accepted)])
                time.sleep(0.01)  # pacing the producer, not waiting for asynchronous work
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        wait_until(lambda: value(scrape(port), "ledger_consumer_lag_seconds", processor="sequencer",
                                 topic=incoming) >= 3_500, 30, "the hour-old records' age as lag", every_s=0.05)
        flowing.set()
        feeder.join(timeout=30)
        wait_until(lambda: value(scrape(port), "ledger_consumer_lag_seconds", processor="sequencer",
                                 topic=incoming) == 0.0, 30, "lag back to 0 once the records stop")
    finally:
        flowing.set()
        stop(worker)
    lines = json_lines(log_file)
    assert {line["process"] for line in lines} == {"sequencer"}
    (dead,) = [line for line in lines if line["message"].startswith("dead-lettered")]
    assert (dead["level"], dead["stage"], dead["payee_id"]) == ("warning", "ledger", "lag-1")
    # the id the ledger gives a payment (deterministic, from its payment id), and the sender's correlation id
    assert (dead["event_id"], dead["correlation_id"]) == (deterministic_event_id("payment", "lag-p1"), "corr-conflict")
    assert "already recorded with different content" in dead["reason"]
    assert any(line["message"].startswith("reading ") for line in lines)


def test_the_transfer_processor_logs_payout_outcomes_and_connector_lines_with_the_payouts_ids(settings, tmp_path):
    with StripeTestServer() as server:
        requested = {e.payee_id: e for e in request_payouts(settings, {
            "log-ok": ("stripe_standard", server.create_account()), "log-gone": ("stripe_standard", "acct_missing")})}
        port, log_file = free_port(), tmp_path / "transfers.log"
        env = env_for(settings, tmp_path, LEDGER_STRIPE_API_KEY="sk_test_ledger", LEDGER_STRIPE_API_BASE=server.url)
        with sequencer_running(settings):
            worker = start(["transfers", "--metrics-port", str(port)], env, log_file)
            try:
                wait_until(lambda: value(scrape(port), "ledger_payouts_failed_total", provider="stripe",
                                         reason="no_account") == 1
                           and value(scrape(port), "ledger_payouts_settled_total", provider="stripe",
                                     currency="USD") == 1, 60, "one settled and one failed")
                wait_until(lambda: value(scrape(port), "ledger_consumer_lag_seconds", processor="transfers",
                                         topic=settings.topic_events) == 0.0
                           and value(scrape(port), "ledger_consumer_last_record_timestamp_seconds",
                                     processor="transfers", topic=settings.topic_events) > 0, 30, "caught up")
            finally:
                stop(worker)
    lines = json_lines(log_file)
    for payee_id, outcome in (("log-ok", "payout settled"), ("log-gone", "payout failed for good")):
        request = requested[payee_id]
        mine = [line for line in lines if line.get("payout_id") == request.payload["payout_id"]]
        assert {line["correlation_id"] for line in mine} == {request.envelope.correlation_id}
        assert {line["payee_id"] for line in mine} == {payee_id}
        assert any(line["message"].startswith("paying USD") for line in mine)
        assert any(line["message"].startswith(outcome) for line in mine), [line["message"] for line in mine]
    gone = requested["log-gone"].payload["payout_id"]
    # logged in the provider lane's thread: the ids crossed into the pool with copy_context
    (refusal,) = [line for line in lines if line["logger"] == "ledger.connectors.stripe"]
    assert (refusal["payout_id"], refusal["level"]) == (gone, "warning")


def test_the_webhook_endpoint_counts_deliveries_and_logs_json_including_uvicorns_lines(settings, tmp_path):
    secret, port, metrics_port = "whsec_logs", free_port(), free_port()
    log_file = tmp_path / "webhooks.log"
    server = start(["webhooks", "serve", "--port", str(port), "--metrics-port", str(metrics_port)],
                   env_for(settings, tmp_path, LEDGER_STRIPE_WEBHOOK_SECRET=secret), log_file)
    url = f"http://127.0.0.1:{port}/webhooks/stripe"
    try:
        def up() -> bool:
            assert server.poll() is None, log_file.read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False
        wait_until(up, 30, "the webhook endpoint", every_s=0.1)
        other = StripeTestServer.event("customer.created", {"id": "cus_1", "object": "customer"}, event_id="evt_logs_1")
        assert StripeTestServer.send_webhook(url, other, secret) == 200
        assert StripeTestServer.send_webhook(url, other, secret, timestamp=int(time.time()) + 1) == 200
        assert StripeTestServer.send_webhook(url, other, "whsec_not_ours") == 400
        samples = scrape(metrics_port)
    finally:
        stop(server)
    assert [value(samples, "ledger_webhooks_received_total", outcome=outcome)
            for outcome in ("ignored", "duplicate", "rejected", "accepted", "error")] == [1, 1, 1, 0, 0]
    lines = json_lines(log_file)
    ignored = [line for line in lines if line["message"].startswith("stripe event evt_logs_1 ignored")]
    assert [line["stripe_event_id"] for line in ignored] == ["evt_logs_1"]
    assert any(line["logger"] == "uvicorn.access" for line in lines)  # uvicorn's lines are JSON too
    assert any(line["logger"] == "ledger.webhooks" and line["level"] == "warning" for line in lines)


def test_the_aggregator_serves_its_lag(settings, tmp_path):
    port, log_file = free_port(), tmp_path / "aggregator.log"
    worker = start(["aggregator", "--metrics-port", str(port)], env_for(settings, tmp_path), log_file)
    try:
        with LedgerClient(settings.kafka_bootstrap, settings) as client:
            client.record_batch([{"payment_id": "agg-1", "payee_id": "agg", "amount_minor": 700, "currency": "EUR",
                                  "occurred_at": TWO_DAYS_AGO.isoformat()}])
        with sequencer_running(settings):
            wait_until(lambda: value(scrape(port), "ledger_consumer_last_record_timestamp_seconds",
                                     processor="aggregator", topic=settings.topic_events) > 0, 90,
                       "the aggregator folding the chained payment")
        wait_until(lambda: value(scrape(port), "ledger_consumer_lag_seconds", processor="aggregator",
                                 topic=settings.topic_events) == 0.0, 30, "lag 0 once idle")
    finally:
        stop(worker)
    lines = json_lines(log_file)
    assert any(line["logger"] == "ledger.aggregator" and line["message"].startswith("rebuilt") for line in lines)
