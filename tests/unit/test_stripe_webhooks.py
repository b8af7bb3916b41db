"""connectors.stripe_webhooks: Stripe-Signature verification, the replay guard and translation to ledger events."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from connectors import stripe_webhooks
from connectors.stripe_webhooks import (
    STRIPE_EVENT_NAMESPACE, ReplayGuard, UntranslatableEvent, WebhookRejected, interpret, ledger_event_id,
    translate, verify, verify_delivery,
)
from ledger.codec import EventCodec
from ledger.ledger_index import LedgerIndex
from ledger.money import Money
from sandbox.stripe import StripeTestServer

SECRET = "whsec_test_ledger"
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
RECEIVED_AT = datetime(2026, 1, 1, 0, 0, 5, tzinfo=timezone.utc)
OURS = {"payout_id": "po_payee-1_2025-W52", "payee_id": "payee-1", "attempt": "2"}


def body(event_type: str = "payout.paid", obj: dict[str, Any] | None = None, event_id: str = "evt_1") -> bytes:
    return StripeTestServer.event(event_type, obj if obj is not None else payout(), created=NOW - 60,
                                  event_id=event_id)


def payout(**changes: Any) -> dict[str, Any]:
    obj = {"id": "po_1abc", "object": "payout", "amount": 12_345, "currency": "usd", "status": "paid",
           "failure_code": None, "failure_message": None, "metadata": dict(OURS), "method": "instant"}
    obj.update(changes)
    return obj


def transfer(**changes: Any) -> dict[str, Any]:
    obj = {"id": "tr_1abc", "object": "transfer", "amount": 12_345, "amount_reversed": 12_345,
           "currency": "usd", "reversed": True, "metadata": dict(OURS), "transfer_group": OURS["payout_id"]}
    obj.update(changes)
    return obj


def event(event_type: str = "payout.paid", obj: dict[str, Any] | None = None, event_id: str = "evt_1") -> dict[str, Any]:
    return json.loads(body(event_type, obj, event_id))


def signature(payload: bytes, secret: str = SECRET, timestamp: int = NOW) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()


# --- verify ----------------------------------------------------------------------------------------


def test_a_valid_delivery_returns_the_parsed_event() -> None:
    payload = body()
    header = StripeTestServer.sign_webhook(payload, SECRET, NOW)
    assert verify(payload, header, SECRET, now=NOW) == json.loads(payload)


def test_one_matching_v1_among_several_is_enough() -> None:
    payload = body()
    good = signature(payload)
    header = f"t={NOW},v1={signature(payload, 'whsec_old')},v0={'0' * 64},v1={good}"
    delivery = verify_delivery(payload, header, SECRET, now=NOW)
    assert delivery.event["id"] == "evt_1"
    assert (delivery.timestamp, delivery.signature) == (NOW, good)


def test_signatures_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(stripe_webhooks.hmac, "compare_digest", spy)
    payload = body()
    wrong, good = signature(payload, "whsec_other"), signature(payload)
    verify(payload, f"t={NOW},v1={wrong},v1={good}", SECRET, now=NOW)
    assert [candidate for _, candidate in compared] == [wrong, good]


@pytest.mark.parametrize("secret, payload_change", [
    ("whsec_forger", lambda payload: payload),  # signed with another secret
    (SECRET, lambda payload: payload.replace(b"12345", b"99999")),  # body tampered after signing
    (SECRET, lambda payload: payload + b" "),  # even one trailing byte
])
def test_a_forged_or_tampered_delivery_is_rejected(secret: str, payload_change: Any) -> None:
    payload = body()
    header = StripeTestServer.sign_webhook(payload, secret, NOW)
    with pytest.raises(WebhookRejected, match="no matching signature"):
        verify(payload_change(payload), header, SECRET, now=NOW)


def test_a_delivery_at_the_edge_of_the_tolerance_is_accepted() -> None:
    payload = body()
    for timestamp in (NOW - 300, NOW + 300):
        assert verify(payload, StripeTestServer.sign_webhook(payload, SECRET, timestamp), SECRET, now=NOW)["id"] == "evt_1"


@pytest.mark.parametrize("timestamp, reason", [
    (NOW - 301, "timestamp too old: 301 s"),
    (NOW - 86_400, "timestamp too old"),
    (NOW + 301, "timestamp in the future: 301 s"),
])
def test_a_delivery_outside_the_tolerance_is_rejected(timestamp: int, reason: str) -> None:
    payload = body()
    header = StripeTestServer.sign_webhook(payload, SECRET, timestamp)
    with pytest.raises(WebhookRejected, match=reason):
        verify(payload, header, SECRET, now=NOW)


def test_the_tolerance_is_configurable() -> None:
    payload = body()
    header = StripeTestServer.sign_webhook(payload, SECRET, NOW - 61)
    with pytest.raises(WebhookRejected, match="too old"):
        verify(payload, header, SECRET, now=NOW, tolerance_s=60)


@pytest.mark.parametrize("header, reason", [
    (None, "missing Stripe-Signature header"),
    ("", "missing Stripe-Signature header"),
    ("garbage", "malformed"),
    (f"v1={'a' * 64}", "malformed.*exactly one t="),
    (f"t=abc,v1={'a' * 64}", "malformed.*exactly one t="),
    (f"t=-5,v1={'a' * 64}", "malformed.*exactly one t="),
    (f"t={NOW},t={NOW},v1={'a' * 64}", "malformed.*exactly one t="),
    (f"t={NOW},=x,v1={'a' * 64}", "malformed"),
    ("t=1," + ",".join(["v1=" + "a" * 64] * 17), "more than 16"),
    ("x" * 9_000, "longer than"),
    (f"t={NOW}", "no v1 signature"),
    (f"t={NOW},v0={'a' * 64}", "no v1 signature"),
])
def test_a_missing_or_malformed_header_is_rejected(header: str | None, reason: str) -> None:
    with pytest.raises(WebhookRejected, match=reason):
        verify(body(), header, SECRET, now=NOW)


@pytest.mark.parametrize("payload, reason", [
    (b"not json at all", "body is not JSON"),
    (b"\xff\xfe\x00garbage", "body is not JSON"),  # not even UTF-8: still a clean rejection
    (b"[" * 100_000 + b"]" * 100_000, "body is not JSON"),  # nesting deeper than the parser recurses
    (b"[1, 2]", "not a Stripe event object"),
    (b'{"object": "charge", "id": "ch_1"}', "not a Stripe event object"),
    (b'{"object": "event", "id": "evt_1", "type": "payout.paid", "created": "yesterday", "data": {"object": {}}}',
     "'created'"),
    (b'{"object": "event", "id": "evt_1", "type": "payout.paid", "created": 1, "data": {}}', "'data.object'"),
    (b'{"object": "event", "id": "", "type": "payout.paid", "created": 1, "data": {"object": {}}}', "'id'"),
])
def test_a_signed_body_that_is_not_a_stripe_event_is_rejected(payload: bytes, reason: str) -> None:
    header = f"t={NOW},v1={signature(payload)}"  # signed correctly: only the content is wrong
    with pytest.raises(WebhookRejected, match=reason):
        verify(payload, header, SECRET, now=NOW)


def test_an_empty_secret_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="secret is empty"):
        verify(body(), StripeTestServer.sign_webhook(body(), "", NOW), " ", now=NOW)


# --- ReplayGuard -----------------------------------------------------------------------------------


def test_an_identical_delivery_is_a_replay_but_a_new_signature_is_not() -> None:
    guard = ReplayGuard(300)
    guard.admit(NOW, "a" * 64, now=NOW)
    with pytest.raises(WebhookRejected, match="replayed"):
        guard.admit(NOW, "a" * 64, now=NOW + 10)
    guard.admit(NOW + 10, "b" * 64, now=NOW + 10)  # Stripe's retry: new timestamp, new signature
    assert len(guard) == 2


def test_deliveries_older_than_the_tolerance_are_forgotten() -> None:
    guard = ReplayGuard(300)
    for offset in range(50):
        guard.admit(NOW + offset, f"{offset:064x}", now=NOW + offset)
    guard.admit(NOW + 400, "f" * 64, now=NOW + 400)  # everything before NOW + 100 is now unverifiable anyway
    assert len(guard) == 1


def test_remembered_deliveries_are_bounded() -> None:
    guard = ReplayGuard(300, deliveries_max=10)
    for offset in range(25):
        guard.admit(NOW + offset, f"{offset:064x}", now=NOW + offset)
    assert len(guard) == 10
    with pytest.raises(WebhookRejected, match="replayed"):
        guard.admit(NOW + 24, f"{24:064x}", now=NOW + 24)  # the newest are the ones kept


def test_processed_event_ids_are_a_bounded_lru() -> None:
    guard = ReplayGuard(300, event_ids_max=3)
    assert not guard.already_processed("evt_1")
    for event_id in ("evt_1", "evt_2", "evt_3"):
        guard.mark_processed(event_id)
    assert guard.already_processed("evt_1")  # touched: now the most recent
    guard.mark_processed("evt_4")  # evicts evt_2, the least recently used
    assert [guard.already_processed(e) for e in ("evt_1", "evt_2", "evt_3", "evt_4")] == [True, False, True, True]


# --- translate -------------------------------------------------------------------------------------


def test_payout_paid_becomes_payout_settled() -> None:
    (settled,) = translate(event("payout.paid"), received_at=RECEIVED_AT)
    assert settled.event_type == "PayoutSettled"
    assert dict(settled.payload) == {"payout_id": "po_payee-1_2025-W52", "provider": "stripe",
                                     "provider_reference": "po_1abc", "attempt": 2,
                                     "amount": Money.of(12_345, "USD")}
    envelope = settled.envelope
    assert (envelope.payee_id, envelope.correlation_id) == ("payee-1", "po_payee-1_2025-W52")
    assert envelope.event_id == str(uuid.uuid5(STRIPE_EVENT_NAMESPACE, "stripe:evt_1"))
    assert envelope.occurred_at == datetime.fromtimestamp(NOW - 60, timezone.utc)
    assert envelope.occurred_at.utcoffset() == timedelta(0)
    assert envelope.recorded_at == RECEIVED_AT
    assert envelope.sequence is None and envelope.previous_hash is None


def test_payout_failed_becomes_a_final_payout_failed_with_stripes_code_and_message() -> None:
    obj = payout(status="failed", failure_code="account_closed", failure_message="The bank account has been closed")
    (failed,) = translate(event("payout.failed", obj), received_at=RECEIVED_AT)
    assert failed.event_type == "PayoutFailed"
    assert dict(failed.payload) == {"payout_id": "po_payee-1_2025-W52", "provider": "stripe",
                                    "reason_code": "account_closed",
                                    "provider_message": "The bank account has been closed",
                                    "attempt": 2, "retryable": False, "amount": Money.of(12_345, "USD")}


def test_payout_failed_without_a_code_uses_payout_failed() -> None:
    (failed,) = translate(event("payout.failed", payout(status="failed")), received_at=RECEIVED_AT)
    assert (failed.payload["reason_code"], failed.payload["provider_message"]) == ("payout_failed", "")


def test_a_paid_payout_that_later_fails_gives_settled_then_failed_with_distinct_ids() -> None:
    (settled,) = translate(event("payout.paid", event_id="evt_paid"), received_at=RECEIVED_AT)
    (failed,) = translate(event("payout.failed", payout(status="failed", failure_code="could_not_process"),
                                event_id="evt_failed"), received_at=RECEIVED_AT)
    assert (settled.event_type, failed.event_type) == ("PayoutSettled", "PayoutFailed")
    assert settled.envelope.event_id != failed.envelope.event_id
    assert settled.envelope.correlation_id == failed.envelope.correlation_id == "po_payee-1_2025-W52"
    assert failed.payload["retryable"] is False  # even a retryable code: the payout itself is over


def test_a_fully_reversed_transfer_becomes_a_final_payout_failed() -> None:
    (failed,) = translate(event("transfer.reversed", transfer()), received_at=RECEIVED_AT)
    assert failed.event_type == "PayoutFailed"
    assert (failed.payload["reason_code"], failed.payload["retryable"]) == ("transfer_reversed", False)
    assert failed.payload["amount"] == Money.of(12_345, "USD")
    assert "tr_1abc" in failed.payload["provider_message"]


def test_a_partial_reversal_is_not_a_payout_failure() -> None:
    translation = interpret(event("transfer.reversed", transfer(reversed=False, amount_reversed=1_000)),
                            received_at=RECEIVED_AT)
    assert translation.events == []
    assert "partially reversed (1000 of 12345)" in translation.ignored_reason


@pytest.mark.parametrize("metadata", [{}, {"payout_id": "po-1"}, {"payee_id": "payee-1"},
                                      {"payout_id": "", "payee_id": "payee-1"}, {"order": "1234"}])
def test_objects_without_our_metadata_are_ignored(metadata: dict[str, str]) -> None:
    translation = interpret(event("payout.paid", payout(metadata=metadata)), received_at=RECEIVED_AT)
    assert translation.events == [] and "not a payout of this ledger" in translation.ignored_reason


@pytest.mark.parametrize("event_type", ["charge.succeeded", "payout.created", "transfer.created", "payout.updated"])
def test_other_event_types_are_ignored(event_type: str) -> None:
    translation = interpret(event(event_type), received_at=RECEIVED_AT)
    assert translation.events == [] and event_type in translation.ignored_reason


def test_the_same_stripe_event_gives_the_same_ledger_event_id() -> None:
    first = translate(event(event_id="evt_same"), received_at=RECEIVED_AT)[0]
    redelivered = translate(event(event_id="evt_same"), received_at=RECEIVED_AT + timedelta(hours=5))[0]
    other = translate(event(event_id="evt_other"), received_at=RECEIVED_AT)[0]
    assert first.envelope.event_id == redelivered.envelope.event_id == ledger_event_id("evt_same")
    assert other.envelope.event_id != first.envelope.event_id


def requested_for(outcome):  # noqa: ANN001, ANN201 - the PayoutRequested an outcome's payout needs in the index
    from tests.unit.event_factory import make_event

    return make_event("PayoutRequested", payee_id=outcome.payee_id, payout_id=outcome.payload["payout_id"])


def test_a_redelivered_stripe_event_is_a_duplicate_to_the_sequencers_index() -> None:
    index = LedgerIndex(EventCodec().encode)
    paid = translate(event(event_id="evt_same"), received_at=RECEIVED_AT)[0]
    index.append(requested_for(paid))
    index.append(paid)
    redelivered = translate(event(event_id="evt_same"), received_at=RECEIVED_AT + timedelta(days=2))[0]
    assert index.verdict(redelivered).status == "duplicate"
    later_failure = translate(event("payout.failed", payout(status="failed"), event_id="evt_f"), received_at=RECEIVED_AT)[0]
    assert index.verdict(later_failure).status == "accept"


@pytest.mark.parametrize("stripe_currency, stripe_amount, expected", [
    ("usd", 12_345, "USD 123.45"),
    ("jpy", 12_345, "JPY 12345"),
    ("bhd", 12_340, "BHD 12.340"),
    ("usd", 9_007_199_254_740_993, "USD 90071992547409.93"),  # above 2**53: a float would lose it
    ("isk", 50_000, "ISK 500"),  # Stripe keeps ISK two-decimal in its API; ISO 4217 has none
])
def test_amounts_are_exact_minor_units(stripe_currency: str, stripe_amount: int, expected: str) -> None:
    obj = payout(amount=stripe_amount, currency=stripe_currency)
    (settled,) = translate(json.loads(body("payout.paid", obj)), received_at=RECEIVED_AT)
    assert str(settled.payload["amount"]) == expected


def test_translated_events_round_trip_through_the_ledger_codec() -> None:
    codec = EventCodec()
    for stripe_event in (event("payout.paid"), event("payout.failed", payout(failure_code="declined")),
                         event("transfer.reversed", transfer(currency="bhd", amount=5_120, amount_reversed=5_120))):
        (ledger_event,) = translate(stripe_event, received_at=RECEIVED_AT)
        assert codec.decode(codec.encode(ledger_event)) == ledger_event


def test_metadata_without_attempt_is_recorded_as_attempt_zero() -> None:
    # what our connector sends: a retry under the payout's key cannot change the parameters
    (settled,) = translate(event("payout.paid", payout(metadata={"payout_id": "po-1", "payee_id": "payee-1"})),
                           received_at=RECEIVED_AT)
    assert (settled.event_type, settled.payload["payout_id"], settled.payload["attempt"]) == ("PayoutSettled", "po-1", 0)


@pytest.mark.parametrize("obj, reason", [
    (payout(amount=123.45), "amount 123.45"),
    (payout(amount=True), "amount True"),
    (payout(currency="xxx1"), "XXX1"),
    (payout(currency=None), "'currency'"),
    (payout(currency="isk", amount=50_050), "not a whole minor unit"),
    (payout(metadata={**OURS, "attempt": "0"}), "metadata.attempt '0'"),
    (payout(metadata={**OURS, "attempt": "two"}), "metadata.attempt 'two'"),
    (payout(metadata={**OURS, "payee_id": "payee 1\n"}), "metadata.payee_id"),
    (payout(object="transfer"), "must carry a payout"),
])
def test_our_event_that_cannot_be_recorded_is_untranslatable_not_ignored(obj: dict[str, Any], reason: str) -> None:
    with pytest.raises(UntranslatableEvent, match=reason):
        translate(event("payout.paid", obj), received_at=RECEIVED_AT)
