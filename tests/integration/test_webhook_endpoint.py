"""POST /webhooks/stripe under a real uvicorn server, driven over HTTP with Stripe-signed deliveries.

Objects come from the project's Stripe-compatible server through the real stripe SDK; `append` is a
list collector here (the Kafka path is kafka_append, tested against the broker separately).
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Iterator

import httpx
import pytest
import stripe
import uvicorn

from connectors.stripe_webhooks import ledger_event_id
from ledger.events import Event
from ledger.money import Money
from processors.webhook_app import BODY_BYTES_MAX, make_app
from runtime.processes import free_port
from sandbox.stripe import StripeTestServer

SECRET = "whsec_endpoint_test"
NOW = 1_767_225_600  # the app's clock: deliveries are signed relative to it


class Collector:
    """`append` for the app: records batches; fails the next `failures` calls like a broker outage."""

    def __init__(self) -> None:
        self.batches: list[list[Event]] = []
        self.failures = 0
        self.calls = 0
        self.thread_names: set[str] = set()

    def __call__(self, events: list[Event]) -> None:
        self.calls += 1
        self.thread_names.add(threading.current_thread().name)
        if self.failures:
            self.failures -= 1
            raise RuntimeError("broker unavailable")
        self.batches.append(list(events))

    @property
    def events(self) -> list[Event]:
        return [event for batch in self.batches for event in batch]


class Endpoint:
    def __init__(self, url: str, collector: Collector, client: httpx.Client) -> None:
        self.url = url
        self.collector = collector
        self.client = client

    def post(self, payload: bytes, header: str | None) -> httpx.Response:
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if header is not None:
            headers["Stripe-Signature"] = header
        return self.client.post(self.url, content=payload, headers=headers)

    def deliver(self, payload: bytes, timestamp: int = NOW) -> httpx.Response:
        """One delivery as Stripe makes it: signed with the endpoint's secret at `timestamp`."""
        return self.post(payload, StripeTestServer.sign_webhook(payload, SECRET, timestamp))


def _serve(app: Any) -> tuple[uvicorn.Server, threading.Thread, str]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="webhook-uvicorn", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).json() == {"ok": True}:
                return server, thread, base
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise TimeoutError(f"webhook app did not answer /healthz on {base} within 10 s")
        time.sleep(0.02)  # polling interval of a bounded readiness wait, not a wait for work


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    collector = Collector()
    server, thread, base = _serve(make_app(SECRET, collector, clock=lambda: NOW))
    try:
        with httpx.Client(timeout=10) as client:
            yield Endpoint(f"{base}/webhooks/stripe", collector, client)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture
def stripe_server() -> Iterator[StripeTestServer]:
    with StripeTestServer() as running:
        yield running


def instant_payout(stripe_server: StripeTestServer, payout_id: str = "po_payee-7_2025-W52",
                   payee_id: str = "payee-7", amount: int = 4_250, currency: str = "usd") -> str:
    """An instant payout on a connected account, created through the real stripe SDK."""
    account = stripe_server.create_account(balance=1_000_000)
    client = stripe.StripeClient("sk_test_ledger", base_addresses={"api": stripe_server.url}, max_network_retries=0)
    created = client.v1.payouts.create(
        params={"amount": amount, "currency": currency, "method": "instant",
                "metadata": {"payout_id": payout_id, "payee_id": payee_id, "attempt": "1"}},
        options={"idempotency_key": f"{payout_id}:instant", "stripe_account": account})
    return created.id


def paid_event(stripe_server: StripeTestServer, event_id: str = "evt_paid_1") -> bytes:
    payout_object = stripe_server.set_payout_status(instant_payout(stripe_server), "paid")
    return StripeTestServer.event("payout.paid", payout_object, created=NOW - 30, event_id=event_id)


def test_a_valid_payout_paid_is_appended_as_one_payout_settled(endpoint: Endpoint, stripe_server: StripeTestServer) -> None:
    payload = paid_event(stripe_server)
    status = StripeTestServer.send_webhook(endpoint.url, payload, SECRET, timestamp=NOW)
    assert status == 200
    (settled,) = endpoint.collector.events
    payout_object = json.loads(payload)["data"]["object"]
    assert settled.event_type == "PayoutSettled"
    assert (settled.payee_id, settled.payload["payout_id"]) == ("payee-7", "po_payee-7_2025-W52")
    assert settled.payload["provider_reference"] == payout_object["id"]
    assert settled.payload["amount"] == Money.of(4_250, "USD")
    assert settled.envelope.event_id == ledger_event_id("evt_paid_1")
    assert endpoint.collector.thread_names and "webhook-uvicorn" not in endpoint.collector.thread_names


def test_the_response_says_what_was_recorded(endpoint: Endpoint, stripe_server: StripeTestServer) -> None:
    response = endpoint.deliver(paid_event(stripe_server))
    assert (response.status_code, response.json()) == (200, {"received": True, "events": 1})


@pytest.mark.parametrize("sign", [
    pytest.param(lambda payload: StripeTestServer.sign_webhook(payload, "whsec_forger", NOW), id="forged"),
    pytest.param(lambda payload: StripeTestServer.sign_webhook(payload, SECRET, NOW - 301), id="stale"),
    pytest.param(lambda payload: StripeTestServer.sign_webhook(payload, SECRET, NOW + 301), id="future"),
    pytest.param(lambda payload: None, id="unsigned"),
    pytest.param(lambda payload: "t=now,v1=abc", id="malformed"),
])
def test_a_delivery_that_fails_verification_is_400_and_appends_nothing(
        endpoint: Endpoint, stripe_server: StripeTestServer, sign: Any) -> None:
    payload = paid_event(stripe_server)
    response = endpoint.post(payload, sign(payload))
    assert response.status_code == 400
    assert response.json()["error"]
    assert endpoint.collector.calls == 0
    assert endpoint.deliver(payload).status_code == 200  # the same event, properly signed, is still accepted


def test_a_stale_delivery_via_send_webhook_is_400(endpoint: Endpoint, stripe_server: StripeTestServer) -> None:
    status = StripeTestServer.send_webhook(endpoint.url, paid_event(stripe_server), SECRET, timestamp=NOW - 3_600)
    assert status == 400 and endpoint.collector.calls == 0


def test_an_identical_delivery_replayed_is_400_replayed(endpoint: Endpoint, stripe_server: StripeTestServer) -> None:
    payload = paid_event(stripe_server)
    header = StripeTestServer.sign_webhook(payload, SECRET, NOW - 5)
    assert endpoint.post(payload, header).status_code == 200
    replay = endpoint.post(payload, header)
    assert replay.status_code == 400 and "replayed" in replay.json()["error"]
    assert len(endpoint.collector.events) == 1 and endpoint.collector.calls == 1


def test_a_stripe_retry_of_a_processed_event_is_a_200_duplicate(endpoint: Endpoint, stripe_server: StripeTestServer) -> None:
    payload = paid_event(stripe_server)
    assert endpoint.deliver(payload, timestamp=NOW - 20).status_code == 200
    retry = endpoint.deliver(payload, timestamp=NOW - 10)  # Stripe re-signs each attempt
    assert (retry.status_code, retry.json()) == (200, {"duplicate": True})
    assert len(endpoint.collector.events) == 1 and endpoint.collector.calls == 1


def test_a_paid_payout_that_later_fails_is_settled_then_failed(endpoint: Endpoint, stripe_server: StripeTestServer) -> None:
    payout = instant_payout(stripe_server)
    paid = StripeTestServer.event("payout.paid", stripe_server.set_payout_status(payout, "paid"),
                                  created=NOW - 86_400 * 3, event_id="evt_paid")
    failed_object = stripe_server.set_payout_status(payout, "failed", failure_code="account_closed",
                                                    failure_message="The bank account has been closed.")
    failed = StripeTestServer.event("payout.failed", failed_object, created=NOW - 60, event_id="evt_failed")
    assert endpoint.deliver(paid, timestamp=NOW - 2).status_code == 200
    assert endpoint.deliver(failed, timestamp=NOW - 1).status_code == 200
    settled, failure = endpoint.collector.events
    assert (settled.event_type, failure.event_type) == ("PayoutSettled", "PayoutFailed")
    assert settled.payload["payout_id"] == failure.payload["payout_id"] == "po_payee-7_2025-W52"
    assert settled.payload["provider_reference"] == payout
    assert (failure.payload["reason_code"], failure.payload["provider_message"], failure.payload["retryable"]) == (
        "account_closed", "The bank account has been closed.", False)
    assert failure.payload["amount"] == settled.payload["amount"] == Money.of(4_250, "USD")
    assert settled.envelope.occurred_at < failure.envelope.occurred_at


def test_when_append_fails_the_answer_is_500_and_a_retry_appends(endpoint: Endpoint, stripe_server: StripeTestServer) -> None:
    payload = paid_event(stripe_server)
    endpoint.collector.failures = 1
    first = endpoint.deliver(payload, timestamp=NOW - 20)
    assert first.status_code == 500 and endpoint.collector.events == []
    retry = endpoint.deliver(payload, timestamp=NOW - 10)  # not marked seen: the retry is processed
    assert (retry.status_code, retry.json()) == (200, {"received": True, "events": 1})
    assert len(endpoint.collector.events) == 1 and endpoint.collector.calls == 2


def test_an_oversized_body_is_413_and_appends_nothing(endpoint: Endpoint) -> None:
    padding = {"id": "po_big", "object": "payout", "amount": 1, "currency": "usd", "description": "x" * BODY_BYTES_MAX}
    payload = StripeTestServer.event("payout.paid", padding, created=NOW, event_id="evt_big")
    assert len(payload) > BODY_BYTES_MAX
    assert StripeTestServer.send_webhook(endpoint.url, payload, SECRET, timestamp=NOW) == 413
    assert endpoint.collector.calls == 0


def test_events_that_are_not_ours_are_acknowledged_and_ignored(endpoint: Endpoint, stripe_server: StripeTestServer) -> None:
    charge = StripeTestServer.event("charge.succeeded", {"id": "ch_1", "object": "charge"}, created=NOW, event_id="evt_c")
    response = endpoint.deliver(charge)
    assert (response.status_code, response.json()["ignored"]) == (200, "charge.succeeded")
    foreign = dict(json.loads(paid_event(stripe_server))["data"]["object"], metadata={})
    response = endpoint.deliver(StripeTestServer.event("payout.paid", foreign, created=NOW, event_id="evt_f"), NOW - 1)
    assert (response.status_code, response.json()["ignored"]) == (200, "payout.paid")
    assert endpoint.collector.calls == 0


def test_our_event_that_cannot_be_recorded_is_not_acknowledged(endpoint: Endpoint, stripe_server: StripeTestServer) -> None:
    broken = dict(json.loads(paid_event(stripe_server))["data"]["object"], currency="zzz")
    response = endpoint.deliver(StripeTestServer.event("payout.paid", broken, created=NOW, event_id="evt_z"))
    assert response.status_code == 422 and "ZZZ" in response.json()["error"]
    assert endpoint.collector.calls == 0
