"""The mobile-money connector over real HTTP against the project's Orange-Money-style provider double."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from connectors.base import Outcome, TransferRequest, TransferResult
from connectors.mobile_money import CASHIN_PATH, TOKEN_PATH, MobileMoneyConnector
from ledger.money import Money
from sandbox.mobile_money import MobileMoneyTestServer

MSISDN = "2250701020304"


@pytest.fixture
def server():
    with MobileMoneyTestServer() as running:
        yield running


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def connector(server: MobileMoneyTestServer, timeout_s: float = 5.0, **kwargs) -> MobileMoneyConnector:
    return MobileMoneyConnector(server.url, server.client_id, server.client_secret, timeout_s=timeout_s, **kwargs)


def request(payout_id: str = "po-1", minor: int = 24_000, currency: str = "XOF",
            destination: str = MSISDN, attempt: int = 1) -> TransferRequest:
    return TransferRequest(payout_id, "payee-1", Money.of(minor, currency), "mobile_money", destination, attempt)


def cashin_posts(server: MobileMoneyTestServer) -> list[tuple[str, str, int]]:
    return [entry for entry in server.requests_log() if entry[:2] == ("POST", CASHIN_PATH)]


def lookup_until(mobile: MobileMoneyConnector, payout: TransferRequest, outcome: Outcome,
                 deadline_s: float = 5.0) -> tuple[TransferResult | None, int]:
    """Poll lookup (as the processor's hourly check does) until `outcome`, within a bounded deadline."""
    deadline, polls, found = time.monotonic() + deadline_s, 0, None
    while time.monotonic() < deadline:
        found = mobile.lookup(payout)
        polls += 1
        if found is not None and found.outcome is outcome:
            break
    return found, polls


# ------------------------------------------------------------------ outcomes
def test_pending_then_settled_via_lookup(server):
    mobile, payout = connector(server), request()
    accepted = mobile.submit(payout)
    assert accepted.outcome is Outcome.PENDING and accepted.provider_reference.startswith("CI")
    assert mobile.lookup(payout).outcome is Outcome.PENDING
    server.set_status("po-1", "SUCCESS")
    settled = mobile.lookup(payout)
    assert (settled.outcome, settled.provider_reference) == (Outcome.SETTLED, accepted.provider_reference)
    assert server.creations_by_key() == {"po-1": 1}


def test_auto_completion_settles_on_the_nth_poll(server):
    server.configure(complete_after_polls=3)
    mobile, payout = connector(server), request()
    assert mobile.submit(payout).outcome is Outcome.PENDING
    settled, polls = lookup_until(mobile, payout, Outcome.SETTLED)
    assert settled is not None and settled.outcome is Outcome.SETTLED
    assert polls == 3


def test_an_immediate_success_is_settled_at_submit(server):
    server.configure(complete_after_polls=0)
    result = connector(server).submit(request())
    (transaction,) = server.transactions()
    assert (result.outcome, result.provider_reference) == (Outcome.SETTLED, transaction["txnid"])
    assert transaction["status"] == "SUCCESS"


def test_lookup_of_a_payout_the_provider_never_saw_is_none(server):
    assert connector(server).lookup(request("po-never")) is None


def test_lookup_is_side_effect_free(server):
    mobile, payout = connector(server), request()
    mobile.submit(payout)
    before = server.transactions()
    results = [mobile.lookup(payout) for _ in range(5)]
    assert all(r.outcome is Outcome.PENDING for r in results)
    assert server.transactions() == before and server.creations_by_key() == {"po-1": 1}
    assert [m for m, path, _ in server.requests_log() if path.startswith(CASHIN_PATH)] == ["POST"] + ["GET"] * 5


@pytest.mark.parametrize("provider_code, reason", [
    ("SUBSCRIBER_NOT_FOUND", "invalid_account_number"),
    ("INVALID_MSISDN", "invalid_account_number"),
    ("ACCOUNT_BARRED", "account_frozen"),
    ("ACCOUNT_CLOSED", "account_closed"),
    ("SOMETHING_NEW", "declined"),  # an unknown code is permanent, never retried by default
])
def test_a_refusal_fails_permanently_and_creates_nothing(server, provider_code, reason):
    server.fail_msisdn(MSISDN, provider_code)
    result = connector(server).submit(request())
    assert (result.outcome, result.reason_code, result.retryable) == (Outcome.FAILED, reason, False)
    assert provider_code in result.message
    assert server.creations_by_key() == {}


def test_an_amount_above_the_limit_is_invalid_amount(server):
    server.set_limit("XOF", "20000")
    result = connector(server).submit(request(minor=24_000))
    assert (result.reason_code, result.retryable) == ("invalid_amount", False)
    assert server.transactions() == []


def test_a_transfer_that_fails_after_acceptance_is_failed_on_lookup(server):
    server.fail_msisdn(MSISDN, "ACCOUNT_BARRED", at="completion")
    server.configure(complete_after_polls=1)
    mobile, payout = connector(server), request()
    accepted = mobile.submit(payout)
    assert accepted.outcome is Outcome.PENDING
    result = mobile.lookup(payout)
    assert (result.outcome, result.reason_code, result.retryable) == (Outcome.FAILED, "account_frozen", False)
    assert result.provider_reference == accepted.provider_reference
    # The id is spent: submitting again answers the failed transaction and creates nothing.
    again = mobile.submit(payout)
    assert (again.outcome, again.reason_code) == (Outcome.FAILED, "account_frozen")
    assert server.creations_by_key() == {"po-1": 1}


def test_partner_balance_too_low_is_retryable_and_leaves_the_id_free(server):
    server.set_balance("XOF", "1000")
    mobile, payout = connector(server), request(minor=24_000)
    low = mobile.submit(payout)
    assert (low.outcome, low.reason_code, low.retryable) == (Outcome.FAILED, "balance_insufficient", True)
    assert mobile.lookup(payout) is None
    server.set_balance("XOF", "100000")  # the partner tops up; the same payout id now goes through
    assert mobile.submit(payout).outcome is Outcome.PENDING
    assert server.creations_by_key() == {"po-1": 1}
    assert server.balance("XOF") == "76000"


# ------------------------------------------------------------------ faults
def test_rate_limit_is_retryable_and_carries_retry_after(server):
    mobile, payout = connector(server), request()
    server.inject(kind="rate_limit", retry_after_s=7)
    limited = mobile.submit(payout)
    assert (limited.outcome, limited.reason_code, limited.retryable, limited.retry_after_s) == (
        Outcome.FAILED, "rate_limited", True, 7.0)
    assert server.creations_by_key() == {}
    assert mobile.submit(payout).outcome is Outcome.PENDING


@pytest.mark.parametrize("status, reason", [(500, "provider_error"), (503, "provider_unavailable")])
def test_a_server_error_is_retryable_and_executes_nothing(server, status, reason):
    mobile, payout = connector(server), request()
    server.inject(kind="server_error", status=status)
    result = mobile.submit(payout)
    assert (result.outcome, result.reason_code, result.retryable) == (Outcome.FAILED, reason, True)
    assert mobile.lookup(payout) is None and server.creations_by_key() == {}


def test_a_slow_provider_times_out_and_lookup_finds_the_transfer(server):
    mobile, payout = connector(server, timeout_s=0.2), request()
    server.inject(kind="slow", delay_s=0.6)
    timed_out = mobile.submit(payout)
    assert (timed_out.outcome, timed_out.reason_code, timed_out.retryable) == (Outcome.FAILED, "timeout", True)
    assert server.wait_idle(5)
    found = mobile.lookup(payout)
    assert found is not None and found.outcome is Outcome.PENDING
    assert mobile.submit(payout).outcome is Outcome.PENDING
    assert server.creations_by_key() == {"po-1": 1}


def test_a_dropped_connection_is_a_retryable_connection_error(server):
    mobile, payout = connector(server), request()
    server.inject(kind="drop")
    dropped = mobile.submit(payout)
    assert (dropped.outcome, dropped.reason_code, dropped.retryable) == (Outcome.FAILED, "connection_error", True)
    assert mobile.lookup(payout) is None  # dropped before execution: the provider never saw it
    assert mobile.submit(payout).outcome is Outcome.PENDING
    assert server.creations_by_key() == {"po-1": 1}


@pytest.mark.parametrize("kind, reason", [("accepted_then_500", "provider_error"),
                                          ("accepted_then_drop", "connection_error")])
def test_accepted_but_unanswered_is_found_by_lookup_once(server, kind, reason):
    mobile, payout = connector(server), request()
    server.inject(kind=kind)
    unknown = mobile.submit(payout)
    assert (unknown.outcome, unknown.reason_code, unknown.retryable) == (Outcome.FAILED, reason, True)
    found = mobile.lookup(payout)  # never guess: ask the provider about this payout id
    (transaction,) = server.transactions()
    assert found is not None and (found.outcome, found.provider_reference) == (Outcome.PENDING, transaction["txnid"])
    again = mobile.submit(payout)
    assert again.provider_reference == transaction["txnid"]
    assert server.creations_by_key() == {"po-1": 1}


def test_a_refused_connection_is_a_retryable_connection_error():
    with MobileMoneyTestServer() as gone:
        url = gone.url
    mobile = MobileMoneyConnector(url, "ledger-client", "ledger-secret", timeout_s=2.0)
    result = mobile.submit(request())
    assert (result.outcome, result.reason_code, result.retryable) == (Outcome.FAILED, "connection_error", True)


# ------------------------------------------------------------------ idempotency
def test_resubmitting_the_same_payout_id_creates_nothing(server):
    mobile, payout = connector(server), request()
    first, second = mobile.submit(payout), mobile.submit(payout)
    assert first.provider_reference == second.provider_reference != ""
    assert server.creations_by_key() == {"po-1": 1}
    assert [status for *_, status in cashin_posts(server)] == [201, 200]


@pytest.mark.parametrize("changed", [request(minor=25_000), request(destination="2250709999999")])
def test_a_conflicting_resubmit_is_a_permanent_idempotency_conflict(server, changed):
    mobile = connector(server)
    mobile.submit(request())
    conflict = mobile.submit(changed)
    assert (conflict.outcome, conflict.reason_code, conflict.retryable) == (
        Outcome.FAILED, "idempotency_conflict", False)
    (transaction,) = server.transactions()
    assert (transaction["customerMsisdn"], transaction["amount"]) == (MSISDN, {"value": "24000", "unit": "XOF"})


def test_lookup_refuses_a_provider_record_that_differs_from_the_payout(server):
    mobile = connector(server)
    mobile.submit(request(minor=24_000))
    result = mobile.lookup(request(minor=24_001))
    assert (result.outcome, result.reason_code, result.retryable) == (Outcome.FAILED, "idempotency_conflict", False)


# ------------------------------------------------------------------ attempts (connectors.base.attempt_key)
def test_a_retry_has_its_own_key_after_an_earlier_attempt_failed(server):
    mobile, first, retry = connector(server), request(attempt=1), request(attempt=2)
    mobile.submit(first)
    server.set_status("po-1", "FAILED", "PARTNER_BALANCE_INSUFFICIENT")  # failed after acceptance: po-1 is spent
    failed_first = mobile.lookup(first)
    assert (failed_first.outcome, failed_first.reason_code, failed_first.retryable) == (
        Outcome.FAILED, "balance_insufficient", True)
    assert mobile.lookup(retry) is None  # an earlier failed attempt is history: nothing is moving
    assert mobile.submit(retry).outcome is Outcome.PENDING
    assert server.creations_by_key() == {"po-1": 1, "po-1:2": 1}
    assert server.transaction("po-1:2")["amount"] == {"value": "24000", "unit": "XOF"}


def test_a_retry_lookup_reports_money_moving_under_an_earlier_attempt(server):
    mobile = connector(server)
    server.inject(kind="accepted_then_drop")
    assert mobile.submit(request(attempt=1)).reason_code == "connection_error"
    (transaction,) = server.transactions()
    moving = mobile.lookup(request(attempt=2))  # the processor asks before paying attempt 2: it must not
    assert moving is not None and (moving.outcome, moving.provider_reference) == (Outcome.PENDING, transaction["txnid"])
    server.set_status("po-1", "SUCCESS")
    assert mobile.lookup(request(attempt=3)).outcome is Outcome.SETTLED
    assert server.creations_by_key() == {"po-1": 1}


def test_polling_the_current_pending_attempt_costs_one_request(server):
    mobile, retry = connector(server), request(attempt=3)
    mobile.submit(retry)
    before = len(server.requests_log())
    assert mobile.lookup(retry).outcome is Outcome.PENDING
    assert server.requests_log()[before:] == [("GET", f"{CASHIN_PATH}/po-1:3", 200)]


@pytest.mark.parametrize("kind, reason", [("server_error", "provider_error"), ("drop", "connection_error")])
def test_a_retry_lookup_that_cannot_ask_about_an_earlier_attempt_is_not_none(server, kind, reason):
    mobile = connector(server)
    # po-1:2 is asked first and is unknown (404); the question about po-1 gets no answer.
    server.inject(kind=kind, path_prefix=f"{CASHIN_PATH}/po-1", method="GET", after=1)
    result = mobile.lookup(request(attempt=2))
    assert result is not None and (result.outcome, result.reason_code, result.retryable) == (
        Outcome.FAILED, reason, True)
    assert [path for m, path, _ in server.requests_log() if m == "GET"] == [f"{CASHIN_PATH}/po-1:2",
                                                                           f"{CASHIN_PATH}/po-1"]
    assert mobile.lookup(request(attempt=2)) is None  # asked again, with answers: nothing under the payout id


def test_concurrent_submits_share_one_token_and_each_payout_is_created_once(server):
    mobile = connector(server)
    server.inject(kind="slow", path_prefix=TOKEN_PATH, delay_s=0.2)  # every thread arrives before the token
    payouts = [request(f"po-{i}") for i in range(8)] * 2  # each payout submitted twice, concurrently
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(mobile.submit, payouts))
    assert all(r.outcome is Outcome.PENDING for r in results)
    assert server.tokens_issued() == 1
    assert server.creations_by_key() == {f"po-{i}": 1 for i in range(8)}


# ------------------------------------------------------------------ tokens
def test_an_expired_token_is_refreshed_before_the_call(server):
    clock = FakeClock()
    mobile, payout = connector(server, clock=clock), request()
    mobile.submit(payout)
    clock.now += 3_600  # the token's expires_in has run out on the connector's clock
    assert mobile.lookup(payout).outcome is Outcome.PENDING
    assert server.tokens_issued() == 2
    assert all(status != 401 for *_, status in server.requests_log())


def test_a_401_refreshes_the_token_once_and_retries(server):
    mobile, payout = connector(server), request()
    mobile.submit(payout)
    server.expire_tokens()  # the provider expired it early: the connector learns it from a 401
    assert mobile.submit(payout).outcome is Outcome.PENDING
    assert server.tokens_issued() == 2
    assert [status for *_, status in cashin_posts(server)] == [201, 401, 200]
    assert server.creations_by_key() == {"po-1": 1}


def test_a_second_401_is_authentication_failed(server):
    server.inject(kind="unauthorized", times=2)
    result = connector(server).submit(request())
    assert (result.outcome, result.reason_code, result.retryable) == (Outcome.FAILED, "authentication_failed", False)
    assert server.tokens_issued() == 2 and server.creations_by_key() == {}


def test_wrong_client_credentials_are_authentication_failed(server):
    mobile = MobileMoneyConnector(server.url, server.client_id, "wrong-secret", timeout_s=5.0)
    result = mobile.submit(request())
    assert (result.outcome, result.reason_code, result.retryable) == (Outcome.FAILED, "authentication_failed", False)
    assert [path for _, path, _ in server.requests_log()] == [TOKEN_PATH]


def test_a_rate_limited_token_request_is_retryable(server):
    server.inject(kind="rate_limit", path_prefix=TOKEN_PATH, retry_after_s=3)
    result = connector(server).submit(request())
    assert (result.reason_code, result.retryable, result.retry_after_s) == ("rate_limited", True, 3.0)
    assert server.creations_by_key() == {}


# ------------------------------------------------------------------ validation and amounts
@pytest.mark.parametrize("destination", ["", "0701020304", "225 0701020304", "+225-0701020304", "abc",
                                         "1234567", "1234567890123456", "2250701020304\n"])
def test_a_malformed_msisdn_is_refused_without_a_request(server, destination):
    result = connector(server).submit(request(destination=destination))
    assert (result.outcome, result.reason_code, result.retryable) == (Outcome.FAILED, "invalid_account_number", False)
    assert server.requests_log() == []


def test_a_plus_prefixed_msisdn_is_sent_as_digits(server):
    assert connector(server).submit(request(destination="+" + MSISDN)).outcome is Outcome.PENDING
    (transaction,) = server.transactions()
    assert transaction["customerMsisdn"] == MSISDN


def test_a_non_positive_amount_is_refused_without_a_request(server):
    result = connector(server).submit(request(minor=0))
    assert (result.reason_code, result.retryable) == ("invalid_amount", False)
    assert server.requests_log() == []


@pytest.mark.parametrize("minor, currency, value", [(24_000, "XOF", "24000"), (12_345, "USD", "123.45"),
                                                    (5, "USD", "0.05"), (1_000_000_000_001, "XOF", "1000000000001")])
def test_amounts_are_sent_as_exact_major_unit_strings(server, minor, currency, value):
    assert connector(server).submit(request(minor=minor, currency=currency)).outcome is Outcome.PENDING
    (transaction,) = server.transactions()
    assert transaction["amount"] == {"value": value, "unit": currency}


def test_the_provider_double_refuses_a_json_number_amount(server):
    basic = base64.b64encode(f"{server.client_id}:{server.client_secret}".encode()).decode()
    _, token = _http(server, "POST", TOKEN_PATH, b"grant_type=client_credentials", {
        "Content-Type": "application/x-www-form-urlencoded", "Authorization": f"Basic {basic}"})
    status, body = _http(server, "POST", CASHIN_PATH, json.dumps({
        "partnerTransactionId": "po-1", "customerMsisdn": MSISDN, "amount": {"value": 24000.0, "unit": "XOF"},
    }).encode(), {"Authorization": f"Bearer {token['access_token']}", "Content-Type": "application/json"})
    assert (status, body["code"]) == (400, "INVALID_AMOUNT")
    assert server.transactions() == []


# ------------------------------------------------------------------ HTTP control API
def test_the_http_control_api_steers_the_provider(server):
    mobile, payout = connector(server), request()
    fault = json.dumps({"kind": "rate_limit", "retry_after_s": 2}).encode()
    assert _http(server, "POST", "/_test/faults", fault)[0] == 200
    assert mobile.submit(payout).reason_code == "rate_limited"
    assert mobile.submit(payout).outcome is Outcome.PENDING
    status, _ = _http(server, "POST", "/_test/transactions/po-1/status", json.dumps(
        {"status": "FAILED", "reason_code": "ACCOUNT_BARRED"}).encode())
    assert status == 200
    assert mobile.lookup(payout).reason_code == "account_frozen"
    status, state = _http(server, "GET", "/_test/state", None)
    assert status == 200 and state["creations_by_key"] == {"po-1": 1}
    assert state["transactions"][0]["errorCode"] == "ACCOUNT_BARRED"
    assert _http(server, "POST", "/_test/faults", json.dumps({"kind": "nonsense"}).encode())[0] == 400
    assert _http(server, "POST", "/_test/reset", b"{}")[0] == 200
    assert server.transactions() == [] and mobile.lookup(payout) is None


def _http(server, method: str, path: str, body: bytes | None, headers: dict | None = None):
    req = urllib.request.Request(server.url + path, data=body, method=method, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # localhost: never a proxy
    try:
        with opener.open(req, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
