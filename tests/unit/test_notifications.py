"""Payee notices, the pure parts: which events notify, the payload, the email text, retries, contact checks."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from ledger import payouts as records
from ledger.money import Money
from ledger.payouts import Payout
from processors.notification_delivery import email_body, email_subject, retry_at, webhook_body
from processors.notifier import notice_kind, notice_payload, outbox_rows
from projections.payee_contacts import InvalidContact, validate_email, validate_webhook_url
from runtime.signed_webhook import signature_header, verify

NOW = datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc)


def payout(minor: int = 4_000, code: str = "USD") -> Payout:
    return Payout("po-1", "barber-7", Money.of(minor, code), "stripe_standard", "2026-11-19", "schedule", NOW)


def test_only_final_outcomes_notify():
    assert notice_kind(records.settled(payout(), 1, "stripe", "po_123", NOW)) == "settled"
    assert notice_kind(records.failed(payout(), 2, "stripe", "account_closed", "closed", False, NOW)) == "failed"
    assert notice_kind(records.failed(payout(), 1, "stripe", "could_not_process", "try later", True, NOW)) is None
    assert notice_kind(records.retry_scheduled(payout(), 2, "stripe", NOW, "x", "y", NOW)) is None
    assert notice_kind(records.accepted(payout(), 1, "stripe", "po_1", NOW)) is None
    with pytest.raises(ValueError, match="not a final payout outcome"):
        notice_payload(records.accepted(payout(), 1, "stripe", "po_1", NOW))


def test_settled_payload_has_exact_amount_and_reference():
    event = records.settled(payout(4_000), 1, "stripe", "po_123", NOW)
    payload = notice_payload(event)
    assert payload == {
        "event_id": event.envelope.event_id, "kind": "settled", "payout_id": "po-1", "payee_id": "barber-7",
        "amount_minor": 4_000, "currency": "USD", "amount": "40.00", "status": "settled", "returned": False,
        "reason_code": "", "reason_message": "", "provider": "stripe", "provider_reference": "po_123",
        "attempt": 1, "occurred_at": "2026-11-20T09:30:00+00:00"}
    json.dumps(payload)  # JSON-ready: no Money, no datetime


@pytest.mark.parametrize(("minor", "code", "major"), [(24_000, "XOF", "24000"), (1_250, "BHD", "1.250"), (5, "USD", "0.05")])
def test_amount_uses_the_currency_exponent(minor, code, major):
    payload = notice_payload(records.settled(payout(minor, code), 1, "manual", "r", NOW))
    assert (payload["amount"], payload["amount_minor"], payload["currency"]) == (major, minor, code)
    assert email_subject(payload) == f"Your payout of {major} {code} was sent"


def test_failure_payload_and_email_carry_the_reason():
    event = records.failed(payout(), 1, "stripe", "account_closed", "The bank account has been closed", False, NOW)
    payload = notice_payload(event)
    assert (payload["status"], payload["reason_code"], payload["returned"]) == ("failed", "account_closed", False)
    assert payload["reason_message"] == "The bank account has been closed"
    assert email_subject(payload) == "Your payout of 40.00 USD failed"
    body = email_body(payload)
    assert "could not be paid: the bank account is closed." in body and "po-1" in body
    assert "back in your balance" in body


def test_a_failure_after_settlement_is_a_return_with_the_settled_reference():
    event = records.failed(payout(), 1, "stripe", "no_account", "", False, NOW)
    payload = notice_payload(event, returned=True, provider_reference="po_123")
    assert (payload["returned"], payload["provider_reference"]) == (True, "po_123")
    assert email_subject(payload) == "Your payout of 40.00 USD was returned"
    assert "was returned by your bank: the bank account could not be found." in email_body(payload)
    unknown = notice_payload(records.failed(payout(), 1, "x", "weird_code", "", False, NOW))
    assert "could not be paid: weird code." in email_body(unknown)


def test_settled_email_is_short_plain_text():
    body = email_body(notice_payload(records.settled(payout(), 1, "stripe", "po_123", NOW)))
    assert body.startswith("Hello,\n\nYour payout of 40.00 USD was sent on 2026-11-20.")
    assert "Reference: po_123" in body and len(body.splitlines()) < 12


def test_outbox_rows_one_per_channel_or_one_no_contact_row():
    payload = notice_payload(records.settled(payout(), 1, "stripe", "po_123", NOW))
    both = outbox_rows(payload, {"email": "a@example.com", "webhook_url": "https://h.example/x"}, NOW)
    assert [(r["channel"], r["target"], r["status"], r["next_attempt_at"]) for r in both] == [
        ("email", "a@example.com", "pending", NOW), ("webhook", "https://h.example/x", "pending", NOW)]
    assert {r["payload"]["event_id"] for r in both} == {payload["event_id"]}
    only_hook = outbox_rows(payload, {"email": None, "webhook_url": "https://h.example/x"}, NOW)
    assert [r["channel"] for r in only_hook] == ["webhook"]
    for contact in (None, {"email": None, "webhook_url": None}):
        rows = outbox_rows(payload, contact, NOW)
        assert [(r["channel"], r["status"], r["next_attempt_at"]) for r in rows] == [("none", "no_contact", None)]


def test_retry_schedule_then_give_up():
    delays = [10, 60, 300]
    assert retry_at(1, NOW, delays) == NOW + timedelta(seconds=10)
    assert retry_at(3, NOW, delays) == NOW + timedelta(seconds=300)
    assert retry_at(4, NOW, delays) is None
    assert retry_at(1, NOW, []) is None
    with pytest.raises(ValueError, match="1-based"):
        retry_at(0, NOW, delays)


def test_webhook_body_is_signed_verifiably():
    payload = notice_payload(records.settled(payout(), 1, "stripe", "po_123", NOW))
    body = json.dumps(webhook_body(17, payload), sort_keys=True, separators=(",", ":")).encode()
    assert json.loads(body)["notification_id"] == "notification-17"
    assert json.loads(body)["type"] == "payout.settled"
    header = signature_header("s3cret", body, now=1_700_000_000)
    assert verify("s3cret", body, header, now=1_700_000_010)
    assert not verify("other", body, header, now=1_700_000_010)
    assert not verify("s3cret", body.replace(b"40.00", b"41.00"), header, now=1_700_000_010)
    assert not verify("s3cret", body, header, now=1_700_000_000 + 301)


@pytest.mark.parametrize("good", ["payee@example.com", "a.b+tag@mail.example.co", "payee@localhost"])
def test_valid_emails(good):
    assert validate_email(good) == good


@pytest.mark.parametrize(("bad", "reason"), [
    ("", "non-empty"), ("no-at.example.com", "exactly one @"), ("a@b@c", "exactly one @"),
    ("a b@example.com", "space"), ("a@example.com\r\nBcc: x@y", "space or a control"), ("@example.com", "before and after"),
    ("a@", "before and after"), ("a@example..com", "invalid domain"), ("a,b@example.com", "contains one of"),
    ("x" * 250 + "@e.co", "at most 254"),
])
def test_invalid_emails_name_the_field(bad, reason):
    with pytest.raises(InvalidContact, match=reason) as caught:
        validate_email(bad)
    assert caught.value.field == "email" and str(caught.value).startswith("email: ")


@pytest.mark.parametrize("good", ["https://hooks.example.com/payouts", "http://127.0.0.1:8080/x?y=1"])
def test_valid_webhook_urls(good):
    assert validate_webhook_url(good) == good


@pytest.mark.parametrize(("bad", "reason"), [
    ("", "non-empty"), ("ftp://example.com/x", "http:// or https://"), ("hooks.example.com/x", "http:// or https://"),
    ("https:///path", "no host"), ("https://exa mple.com/", "space"), ("http://host:99999/", "not a valid URL"),
    ("https://e.co/" + "x" * 2100, "at most 2048"),
])
def test_invalid_webhook_urls_name_the_field(bad, reason):
    with pytest.raises(InvalidContact, match=reason) as caught:
        validate_webhook_url(bad)
    assert caught.value.field == "webhook_url"
