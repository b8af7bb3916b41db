"""Delivering payee notifications from the outbox: email and signed webhooks, retried, then given up.

Each row is claimed alone (its attempt counted and a lease set in one short transaction) before it is
sent, so notifiers running side by side never send a row at the same time, and a notifier that dies
mid-send leaves the row to be sent again after the lease: at-least-once, always with the row's stable
id (Message-ID / X-Ledger-Delivery) and the payload stored when the row was made, so a repeat is the
same notice and a receiver can drop it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable, Sequence

import sqlalchemy

from runtime import metrics
from runtime.mailer import EmailFailed, send_email
from runtime.settings import Settings
from runtime.signed_webhook import WebhookFailed, post_signed

log = logging.getLogger("ledger.notifier")

WEBHOOK_TIMEOUT_S = 10.0
LEASE_S_MIN = 120.0  # a claimed row is not claimed again before this: longer than any one send
ERROR_LENGTH_MAX = 1000
# Plain words for the failure codes a payee can act on (Stripe's codes, the ones the connectors map to).
REASON_TEXT = {
    "account_closed": "the bank account is closed",
    "account_frozen": "the bank account is frozen",
    "bank_account_restricted": "the bank account cannot receive this payout",
    "bank_ownership_changed": "the bank account changed owner",
    "no_account": "the bank account could not be found",
    "invalid_account_number": "the account number is not valid",
    "incorrect_account_holder_name": "the account holder's name does not match",
    "incorrect_account_holder_address": "the account holder's address does not match",
    "incorrect_account_holder_tax_id": "the account holder's tax id does not match",
    "invalid_currency": "the account cannot receive this currency",
    "debit_not_authorized": "the bank refused the transfer",
    "declined": "the bank declined the transfer",
    "insufficient_funds": "the transfer could not be funded",
    "could_not_process": "the bank could not process the transfer",
    "unsupported_card": "the card cannot receive payouts",
    "processing_expired": "the transfer was not confirmed in time",
}


@dataclass
class DeliveryStats:
    sent: int = 0
    retried: int = 0
    given_up: int = 0


# --- the messages (pure) ------------------------------------------------------------------------

def reason_text(code: str) -> str:
    return REASON_TEXT.get(code, code.replace("_", " ") if code else "the transfer failed")


def email_subject(payload: dict[str, Any]) -> str:
    amount = f"{payload['amount']} {payload['currency']}"
    if payload["kind"] == "settled":
        return f"Your payout of {amount} was sent"
    if payload.get("returned"):
        return f"Your payout of {amount} was returned"
    return f"Your payout of {amount} failed"


def email_body(payload: dict[str, Any]) -> str:
    """A short plain-text message: what happened, to which payout, and what the payee can do."""
    amount = f"{payload['amount']} {payload['currency']}"
    reference = f"\nReference: {payload['provider_reference']}" if payload.get("provider_reference") else ""
    if payload["kind"] == "settled":
        lines = ["Hello,", "", f"Your payout of {amount} was sent on {payload['occurred_at'][:10]}.",
                 "Depending on your bank it may take a few days to arrive."]
    else:
        what = "was returned by your bank" if payload.get("returned") else "could not be paid"
        lines = ["Hello,", "", f"Your payout of {amount} {what}: {reason_text(payload['reason_code'])}.",
                 "The money is back in your balance and will be paid with a later payout.",
                 "If your payout details have changed, please update them."]
    lines += ["", f"Payout: {payload['payout_id']}{reference}", "", "This message was sent automatically."]
    return "\n".join(lines) + "\n"


def webhook_body(notification_id: int, payload: dict[str, Any]) -> dict[str, Any]:
    """What a receiver gets: the stored payload, its event type and the delivery id it dedupes on."""
    return {"notification_id": delivery_id(notification_id), "type": f"payout.{payload['kind']}", **payload}


def delivery_id(notification_id: int) -> str:
    return f"notification-{notification_id}"


def retry_at(attempts: int, now: datetime, delays_s: Sequence[int]) -> datetime | None:
    """When to try again after attempt `attempts` (1-based) failed, or None: give up."""
    if attempts < 1:
        raise ValueError(f"attempts are 1-based, got {attempts}")
    if attempts > len(delays_s):
        return None
    return now + timedelta(seconds=delays_s[attempts - 1])


# --- the delivery step ---------------------------------------------------------------------------

_CLAIM = sqlalchemy.text(
    "UPDATE payee_notifications SET attempts = attempts + 1, next_attempt_at = :lease "
    "WHERE id = (SELECT id FROM payee_notifications WHERE status = 'pending' AND next_attempt_at <= :now "
    "            ORDER BY next_attempt_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) "
    "RETURNING id, channel, target, attempts, payload")
# Conditional on the claim still being ours: an erased contact (given up meanwhile) is not overwritten.
_SENT = sqlalchemy.text(
    "UPDATE payee_notifications SET status = 'sent', sent_at = :now, next_attempt_at = NULL, last_error = '' "
    "WHERE id = :id AND status = 'pending' AND attempts = :attempts")
_FAILED = sqlalchemy.text(
    "UPDATE payee_notifications SET status = :status, next_attempt_at = :next, last_error = :error "
    "WHERE id = :id AND status = 'pending' AND attempts = :attempts")


def send_one(settings: Settings, channel: str, target: str, notification_id: int, payload: dict[str, Any]) -> None:
    """Send one notice; raises EmailFailed or WebhookFailed."""
    if channel == "email":
        send_email(settings, [target], email_subject(payload), email_body(payload),
                   message_id=delivery_id(notification_id))
    elif channel == "webhook":
        if not settings.notify_webhook_secret:
            raise WebhookFailed("LEDGER_NOTIFY_WEBHOOK_SECRET is not set: notices are never sent unsigned")
        post_signed(target, webhook_body(notification_id, payload), secret=settings.notify_webhook_secret,
                    delivery_id=delivery_id(notification_id), timeout_s=WEBHOOK_TIMEOUT_S)
    else:
        raise ValueError(f"channel {channel!r} cannot be delivered")


def deliver_due(engine: sqlalchemy.Engine, settings: Settings, clock: Callable[[], datetime], *,
                limit: int = 50) -> DeliveryStats:
    """Send up to `limit` due rows, one at a time; each ends sent, waiting for its retry, or given up."""
    stats = DeliveryStats()
    lease_s = max(LEASE_S_MIN, 4 * settings.smtp_timeout_s, 4 * WEBHOOK_TIMEOUT_S)
    for _ in range(limit):
        now = clock()
        with engine.begin() as connection:
            row = connection.execute(_CLAIM, {"now": now, "lease": now + timedelta(seconds=lease_s)}).first()
        if row is None:
            break
        try:
            send_one(settings, row.channel, row.target, row.id, row.payload)
        except (EmailFailed, WebhookFailed) as exc:
            _failed(engine, settings, row, str(exc)[:ERROR_LENGTH_MAX], clock(), stats)
            continue
        with engine.begin() as connection:
            connection.execute(_SENT, {"id": row.id, "attempts": row.attempts, "now": clock()})
        stats.sent += 1
        metrics.NOTIFICATIONS.labels(row.channel, "sent").inc()
        log.info("notification %s sent by %s (attempt %s, payout %s)", row.id, row.channel, row.attempts,
                 row.payload.get("payout_id"))
    return stats


def _failed(engine: sqlalchemy.Engine, settings: Settings, row: Any, error: str, now: datetime,
            stats: DeliveryStats) -> None:
    next_at = retry_at(row.attempts, now, settings.notify_retry_delays_s)
    status = "pending" if next_at is not None else "given_up"
    with engine.begin() as connection:
        connection.execute(_FAILED, {"id": row.id, "attempts": row.attempts, "status": status, "next": next_at,
                                     "error": error})
    if next_at is None:
        stats.given_up += 1
        metrics.NOTIFICATIONS.labels(row.channel, "given_up").inc()
        log.warning("notification %s by %s given up after %s attempts: %s", row.id, row.channel, row.attempts, error)
    else:
        stats.retried += 1
        metrics.NOTIFICATIONS.labels(row.channel, "retry").inc()
        log.info("notification %s by %s failed (attempt %s), next at %s: %s", row.id, row.channel, row.attempts,
                 next_at.isoformat(), error)
