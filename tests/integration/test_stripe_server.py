"""The Stripe test double (sandbox/stripe.py) driven by the REAL stripe SDK over HTTP."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
import stripe

from sandbox.stripe import StripeTestServer


@pytest.fixture
def server() -> Iterator[StripeTestServer]:
    with StripeTestServer() as srv:
        yield srv


def make_client(srv: StripeTestServer, retries: int = 0, timeout: float = 5.0,
                api_key: str = "sk_test_123", stripe_account: str | None = None) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": srv.url},
        max_network_retries=retries,
        stripe_account=stripe_account,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


def transfer_params(dest: str, amount: int = 1500, payout_id: str = "po-1") -> dict:
    return {"amount": amount, "currency": "usd", "destination": dest,
            "description": "payout", "transfer_group": "run-1", "metadata": {"payout_id": payout_id}}


def statuses(srv: StripeTestServer, key: str) -> list[int]:
    return [status for (_m, _p, k, status) in srv.requests_log() if k == key]


# ---------------------------------------------------------------- basics


def test_create_retrieve_and_list_transfer(server: StripeTestServer) -> None:
    acct = server.create_account(balance=10_000)
    client = make_client(server)
    tr = client.v1.transfers.create(params=transfer_params(acct), options={"idempotency_key": "po-1"})
    assert tr.id.startswith("tr_") and tr.object == "transfer"
    assert (tr.amount, tr.currency, tr.destination, tr.reversed) == (1500, "usd", acct, False)
    assert tr.metadata["payout_id"] == "po-1" and tr.transfer_group == "run-1"
    assert abs(tr.created - time.time()) < 60
    got = client.v1.transfers.retrieve(tr.id)
    assert got.id == tr.id and got.amount == 1500
    other = client.v1.transfers.create(params=transfer_params(acct, 100, "po-2"))
    listed = client.v1.transfers.list(params={"limit": 10})
    assert listed.object == "list" and listed.has_more is False
    assert [t.id for t in listed.data] == [other.id, tr.id]
    assert [t.id for t in client.v1.transfers.list(params={"limit": 1}).data] == [other.id]
    assert server.account_balance(acct) == 10_000 - 1600
    assert client.v1.accounts.retrieve(acct).payouts_enabled is True


def test_sdk_sends_idempotency_key_header_on_every_post(server: StripeTestServer) -> None:
    acct = server.create_account()
    make_client(server).v1.transfers.create(params=transfer_params(acct))  # no key given
    (method, path, key, status), = server.requests_log()
    assert (method, path, status) == ("POST", "/v1/transfers", 200)
    assert key  # SDK 16 auto-generates a UUID4 key for every POST
    assert server.creations_by_key() == {key: 1}


def test_retrieve_missing_transfer_is_resource_missing(server: StripeTestServer) -> None:
    with pytest.raises(stripe.InvalidRequestError) as ei:
        make_client(server).v1.transfers.retrieve("tr_nope")
    assert ei.value.http_status == 404 and ei.value.code == "resource_missing"


@pytest.mark.parametrize(
    ("setup", "code", "param"),
    [
        ("missing", "no_account", "destination"),
        ("disabled", "account_invalid", "destination"),
        ("poor", "balance_insufficient", None),
    ],
)
def test_transfer_business_errors(server: StripeTestServer, setup: str, code: str, param) -> None:
    dest = {"missing": "acct_doesnotexist",
            "disabled": server.create_account(payouts_enabled=False),
            "poor": server.create_account(balance=100)}[setup]
    with pytest.raises(stripe.InvalidRequestError) as ei:
        make_client(server).v1.transfers.create(params=transfer_params(dest), options={"idempotency_key": "k"})
    assert ei.value.http_status == 400 and ei.value.code == code and ei.value.param == param
    assert server.transfers() == [] and server.creations_by_key() == {}


def test_validation_errors_are_not_stored_for_idempotency(server: StripeTestServer) -> None:
    acct = server.create_account()
    client = make_client(server)
    with pytest.raises(stripe.InvalidRequestError) as ei:
        client.v1.transfers.create(params={**transfer_params(acct), "currency": "USD"},
                                   options={"idempotency_key": "k"})
    assert ei.value.param == "currency"
    with pytest.raises(stripe.InvalidRequestError) as ei:
        client.v1.transfers.create(params={**transfer_params(acct), "amount": 0}, options={"idempotency_key": "k"})
    assert ei.value.param == "amount"
    # the key was not consumed by the invalid attempts
    tr = client.v1.transfers.create(params=transfer_params(acct), options={"idempotency_key": "k"})
    assert tr.amount == 1500 and server.creations_by_key() == {"k": 1}


def test_bad_api_key_is_authentication_error(server: StripeTestServer) -> None:
    acct = server.create_account()
    with pytest.raises(stripe.AuthenticationError) as ei:
        make_client(server, api_key="rk_live_nope").v1.transfers.create(params=transfer_params(acct))
    assert ei.value.http_status == 401
    req = urllib.request.Request(server.url + "/v1/transfers/tr_x")
    with pytest.raises(urllib.error.HTTPError) as hi:
        urllib.request.urlopen(req, timeout=5)
    assert hi.value.code == 401
    assert json.loads(hi.value.read())["error"]["type"] == "invalid_request_error"


def test_legacy_global_configuration(server: StripeTestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    acct = server.create_account()
    monkeypatch.setattr(stripe, "api_base", server.url)
    monkeypatch.setattr(stripe, "api_key", "sk_test_legacy")
    monkeypatch.setattr(stripe, "max_network_retries", 0)
    tr = stripe.Transfer.create(**transfer_params(acct), idempotency_key="legacy-1")
    again = stripe.Transfer.create(**transfer_params(acct), idempotency_key="legacy-1")
    assert again.id == tr.id and stripe.Transfer.retrieve(tr.id).amount == 1500
    assert server.creations_by_key() == {"legacy-1": 1}


# ----------------------------------------------------------- idempotency


def test_same_key_replays_same_transfer(server: StripeTestServer) -> None:
    acct = server.create_account()
    client = make_client(server)
    first = client.v1.transfers.create(params=transfer_params(acct), options={"idempotency_key": "po-1"})
    second = client.v1.transfers.create(params=transfer_params(acct), options={"idempotency_key": "po-1"})
    assert second.id == first.id
    assert first.last_response.headers.get("Idempotent-Replayed") is None
    assert second.last_response.headers["Idempotent-Replayed"] == "true"
    assert server.creations_by_key() == {"po-1": 1} and len(server.transfers()) == 1


def test_same_key_different_params_is_idempotency_error(server: StripeTestServer) -> None:
    acct = server.create_account()
    client = make_client(server)
    client.v1.transfers.create(params=transfer_params(acct), options={"idempotency_key": "po-1"})
    with pytest.raises(stripe.IdempotencyError) as ei:
        client.v1.transfers.create(params=transfer_params(acct, amount=999), options={"idempotency_key": "po-1"})
    assert ei.value.http_status == 400
    assert "same parameters" in ei.value.user_message
    assert server.creations_by_key() == {"po-1": 1}


def test_overlong_idempotency_key_rejected(server: StripeTestServer) -> None:
    acct = server.create_account()
    client = make_client(server)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.transfers.create(params=transfer_params(acct), options={"idempotency_key": "x" * 256})
    client.v1.transfers.create(params=transfer_params(acct), options={"idempotency_key": "x" * 255})
    assert server.creations_by_key() == {"x" * 255: 1}


def test_injected_500_is_replayed_for_same_key(server: StripeTestServer) -> None:
    acct = server.create_account()
    client = make_client(server)
    server.inject(path_prefix="/v1/transfers", method="POST", kind="server_error", times=1)
    for _ in range(2):
        with pytest.raises(stripe.APIError) as ei:
            client.v1.transfers.create(params=transfer_params(acct), options={"idempotency_key": "po-1"})
        assert ei.value.http_status == 500
    assert ei.value.headers["Idempotent-Replayed"] == "true"
    assert server.transfers() == [] and server.pending_faults() == []
    tr = client.v1.transfers.create(params=transfer_params(acct), options={"idempotency_key": "po-1-retry"})
    assert server.creations_by_key() == {"po-1-retry": 1} and tr.amount == 1500
    assert statuses(server, "po-1") == [500, 500]


def test_sdk_retries_500_but_obeys_stripe_should_retry_false(server: StripeTestServer) -> None:
    acct = server.create_account()
    server.inject(kind="server_error", should_retry=False)
    with pytest.raises(stripe.APIError):
        make_client(server, retries=2).v1.transfers.create(params=transfer_params(acct),
                                                           options={"idempotency_key": "k"})
    assert statuses(server, "k") == [500]  # header made the SDK give up at once


def test_sdk_retry_of_500_gets_the_stored_500(server: StripeTestServer) -> None:
    acct = server.create_account()
    server.inject(kind="server_error")
    with pytest.raises(stripe.APIError):
        make_client(server, retries=1).v1.transfers.create(params=transfer_params(acct),
                                                           options={"idempotency_key": "k"})
    assert statuses(server, "k") == [500, 500]  # same key on the retry -> replayed 500
    assert server.transfers() == []


def test_accepted_then_500_creates_once_and_replays_500(server: StripeTestServer) -> None:
    acct = server.create_account()
    client = make_client(server)
    server.inject(kind="accepted_then_500")
    for _ in range(2):
        with pytest.raises(stripe.APIError):
            client.v1.transfers.create(params=transfer_params(acct), options={"idempotency_key": "po-1"})
    (tr,) = server.transfers()
    assert tr["metadata"] == {"payout_id": "po-1"}
    assert server.creations_by_key() == {"po-1": 1}
    # a reconciler can find it by listing
    assert [t.id for t in client.v1.transfers.list(params={"destination": acct}).data] == [tr["id"]]


def test_rate_limit_without_should_retry_header_is_not_retried(server: StripeTestServer) -> None:
    acct = server.create_account()
    client = make_client(server, retries=2)
    server.inject(kind="rate_limit", retry_after_s=1)
    with pytest.raises(stripe.RateLimitError) as ei:
        client.v1.transfers.create(params=transfer_params(acct), options={"idempotency_key": "po-1"})
    assert ei.value.http_status == 429 and ei.value.headers["Retry-After"] == "1"
    assert statuses(server, "po-1") == [429]  # stripe 16 never retries a bare 429
    # 429 is not stored: the same key now executes
    tr = client.v1.transfers.create(params=transfer_params(acct), options={"idempotency_key": "po-1"})
    assert tr.last_response.headers.get("Idempotent-Replayed") is None
    assert server.creations_by_key() == {"po-1": 1}


def test_rate_limit_with_should_retry_true_is_retried_ignoring_retry_after(server: StripeTestServer) -> None:
    acct = server.create_account()
    client = make_client(server, retries=2)
    server.inject(kind="rate_limit", times=2, retry_after_s=30, should_retry=True)
    started = time.monotonic()
    tr = client.v1.transfers.create(params=transfer_params(acct), options={"idempotency_key": "po-1"})
    elapsed = time.monotonic() - started
    assert tr.amount == 1500
    assert statuses(server, "po-1") == [429, 429, 200]
    assert server.creations_by_key() == {"po-1": 1}
    assert elapsed < 10  # Retry-After: 30 was ignored; SDK used its own 0.5s.. backoff


def test_slow_request_times_out_then_same_key_returns_created_transfer(server: StripeTestServer) -> None:
    acct = server.create_account()
    server.inject(kind="slow", delay_s=1.0)
    with pytest.raises(stripe.APIConnectionError) as ei:
        make_client(server, timeout=0.3).v1.transfers.create(params=transfer_params(acct),
                                                             options={"idempotency_key": "po-1"})
    assert "timed out" in str(ei.value).lower() or "timeout" in str(ei.value).lower()
    assert ei.value.should_retry is True
    assert server.wait_idle(timeout=5)
    tr = make_client(server).v1.transfers.create(params=transfer_params(acct), options={"idempotency_key": "po-1"})
    assert tr.last_response.headers["Idempotent-Replayed"] == "true"
    assert [t["id"] for t in server.transfers()] == [tr.id]
    assert server.creations_by_key() == {"po-1": 1}


def test_slow_request_sdk_retry_hits_key_in_use_then_replay(server: StripeTestServer) -> None:
    acct = server.create_account()
    server.inject(kind="slow", delay_s=1.0)
    tr = make_client(server, retries=3, timeout=0.3).v1.transfers.create(
        params=transfer_params(acct), options={"idempotency_key": "po-1"})
    server.wait_idle(timeout=5)
    st = statuses(server, "po-1")
    assert 409 in st and st[-1] == 200
    assert tr.last_response.headers["Idempotent-Replayed"] == "true"
    assert server.creations_by_key() == {"po-1": 1}


def test_dropped_connection(server: StripeTestServer) -> None:
    acct = server.create_account()
    server.inject(kind="drop")
    with pytest.raises(stripe.APIConnectionError):
        make_client(server).v1.transfers.create(params=transfer_params(acct), options={"idempotency_key": "a"})
    assert server.transfers() == []
    server.inject(kind="accepted_then_drop")
    tr = make_client(server, retries=1).v1.transfers.create(params=transfer_params(acct),
                                                            options={"idempotency_key": "b"})
    assert statuses(server, "b") == [0, 200] and tr.last_response.headers["Idempotent-Replayed"] == "true"
    assert server.creations_by_key() == {"b": 1}


def test_concurrent_same_key_creates_once(server: StripeTestServer) -> None:
    acct = server.create_account()
    server.inject(kind="slow", delay_s=0.3, times=1)
    results: list = []

    def worker() -> None:
        try:
            results.append(make_client(server, retries=4).v1.transfers.create(
                params=transfer_params(acct), options={"idempotency_key": "same"}).id)
        except Exception as exc:  # pragma: no cover - surfaced by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert len(set(results)) == 1 and str(results[0]).startswith("tr_"), results
    assert server.creations_by_key() == {"same": 1}


# ----------------------------------------------------------------- payouts


def test_payout_lifecycle(server: StripeTestServer) -> None:
    acct = server.create_account()
    client = make_client(server)
    po = client.v1.payouts.create(params={"amount": 700, "currency": "usd", "method": "instant"},
                                  options={"stripe_account": acct, "idempotency_key": "payout-1"})
    assert po.id.startswith("po_") and po.status == "pending" and po.method == "instant"
    got = client.v1.payouts.retrieve(po.id, options={"stripe_account": acct})
    assert got.status == "pending"
    server.set_payout_status(po.id, "paid")
    assert client.v1.payouts.retrieve(po.id, options={"stripe_account": acct}).status == "paid"
    server.set_payout_status(po.id, "failed", failure_code="account_closed")
    failed = client.v1.payouts.retrieve(po.id, options={"stripe_account": acct})
    assert (failed.status, failed.failure_code) == ("failed", "account_closed")
    with pytest.raises(stripe.InvalidRequestError) as ei:  # other account context cannot see it
        client.v1.payouts.retrieve(po.id)
    assert ei.value.code == "resource_missing"
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payouts.create(params={"amount": 1, "currency": "usd", "method": "overnight"},
                                 options={"stripe_account": acct})
    assert server.creations_by_key() == {"payout-1": 1}


# ---------------------------------------------------------------- webhooks


SECRET = "whsec_test_secret"


def test_webhook_signature_round_trip(server: StripeTestServer) -> None:
    payload = server.event("payout.failed", {"id": "po_1", "object": "payout", "failure_code": "account_closed"})
    header = server.sign_webhook(payload, SECRET)
    event = stripe.Webhook.construct_event(payload, header, SECRET)
    assert event.type == "payout.failed" and event.data.object.failure_code == "account_closed"
    assert event.id.startswith("evt_")


@pytest.mark.parametrize("case", ["tampered", "wrong_secret", "stale"])
def test_webhook_signature_rejections(server: StripeTestServer, case: str) -> None:
    payload = server.event("transfer.created", {"id": "tr_1", "object": "transfer"})
    ts = int(time.time()) - 301 if case == "stale" else None
    header = server.sign_webhook(payload, "whsec_other" if case == "wrong_secret" else SECRET, timestamp=ts)
    if case == "tampered":
        payload = payload.replace(b"tr_1", b"tr_2")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload, header, SECRET)


def test_send_webhook_posts_signed_event(server: StripeTestServer) -> None:
    received: list = []

    class Receiver(BaseHTTPRequestHandler):
        def log_message(self, *a) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                received.append(stripe.Webhook.construct_event(body, self.headers["Stripe-Signature"], SECRET))
                code = 200
            except stripe.SignatureVerificationError:
                code = 400
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/hook"
        payload = server.event("payout.paid", {"id": "po_9", "object": "payout"})
        assert server.send_webhook(url, payload, SECRET) == 200
        assert server.send_webhook(url, payload, "whsec_wrong") == 400
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert [e.data.object.id for e in received] == ["po_9"]


# ----------------------------------------------------------- control API


def test_http_control_api_and_reset(server: StripeTestServer) -> None:
    def call(method: str, path: str, body: dict | None = None) -> dict:
        req = urllib.request.Request(server.url + path, method=method,
                                     data=json.dumps(body or {}).encode() if method == "POST" else None,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    acct = call("POST", "/_test/accounts", {"account_id": "acct_fixed", "balance": 50})["id"]
    assert acct == "acct_fixed"
    call("POST", "/_test/faults", {"path_prefix": "/v1/transfers", "kind": "server_error"})
    client = make_client(server)
    with pytest.raises(stripe.APIError):
        client.v1.transfers.create(params=transfer_params(acct, amount=10), options={"idempotency_key": "z"})
    state = call("GET", "/_test/state")
    assert state["requests"] == [["POST", "/v1/transfers", "z", 500]]
    call("POST", "/_test/reset")
    assert server.requests_log() == [] and server.transfers() == []
    with pytest.raises(stripe.InvalidRequestError) as ei:
        client.v1.transfers.create(params=transfer_params(acct, amount=10), options={"idempotency_key": "z"})
    assert ei.value.code == "no_account"


# ---------------------------------------------------- connections


def test_hundreds_of_concurrent_connections_are_all_answered() -> None:
    """The listen backlog: with the standard library's 5, a burst of 300 clients connecting at once lost
    dozens of connection attempts (reset, or dropped until they timed out)."""
    import http.client

    clients = 300
    with StripeTestServer(latency_s=0.2) as srv:  # requests overlap: every client is connected at once
        barrier = threading.Barrier(clients)
        answers: list = []

        def one() -> None:
            barrier.wait(timeout=30)
            try:
                connection = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
                connection.request("GET", "/v1/balance", headers={"Authorization": "Bearer sk_test_123"})
                response = connection.getresponse()
                response.read()
                connection.close()
                answers.append(response.status)
            except OSError as exc:  # ConnectionResetError, ConnectionRefusedError, TimeoutError
                answers.append(type(exc).__name__)

        threads = [threading.Thread(target=one) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
    assert answers == [200] * clients


def test_a_connection_is_kept_alive_and_closed_when_the_server_stops() -> None:
    import http.client

    srv = StripeTestServer().start()
    connection = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    try:
        for _ in range(3):  # one connection, three answers
            connection.request("GET", "/v1/balance", headers={"Authorization": "Bearer sk_test_123"})
            response = connection.getresponse()
            assert (response.status, response.getheader("Connection")) == (200, None)
            response.read()
        srv.stop()  # a stopped server answers nothing more, not even on a connection it kept open
        with pytest.raises((http.client.HTTPException, OSError)):
            connection.request("GET", "/v1/balance", headers={"Authorization": "Bearer sk_test_123"})
            connection.getresponse()
    finally:
        connection.close()
        srv.stop()


def test_reset_fault_aborts_the_connection_and_executes_nothing(server: StripeTestServer) -> None:
    import http.client

    acct = server.create_account()
    server.inject(kind="reset")
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    body = urllib.parse.urlencode({"amount": 100, "currency": "usd", "destination": acct})
    connection.request("POST", "/v1/transfers", body=body, headers={
        "Authorization": "Bearer sk_test_123", "Idempotency-Key": "r-1",
        "Content-Type": "application/x-www-form-urlencoded"})
    with pytest.raises(ConnectionResetError):  # RST, not an orderly close
        connection.getresponse()
    connection.close()
    assert server.transfers() == [] and statuses(server, "r-1") == [0]
    # accepted_then_reset: created and stored for the key, then reset; the same key again is a replay
    server.inject(kind="accepted_then_reset")
    with pytest.raises(stripe.APIConnectionError):
        make_client(server).v1.transfers.create(params=transfer_params(acct), options={"idempotency_key": "r-2"})
    again = make_client(server).v1.transfers.create(params=transfer_params(acct), options={"idempotency_key": "r-2"})
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    assert statuses(server, "r-2") == [0, 200] and server.creations_by_key() == {"r-2": 1}
