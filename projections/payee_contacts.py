"""Payee contacts for notifications (email, webhook URL): personal data, kept in PostgreSQL and erasable.

They are deliberately not ledger events: the ledger is immutable and replayed forever, so an address
written there could never be erased. Deleting a contact also erases the addresses kept on its payee's
notification rows and gives up the ones not yet delivered.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import sqlalchemy

from runtime.database import make_engine

EMAIL_LENGTH_MAX = 254  # RFC 5321's limit on a forward path
URL_LENGTH_MAX = 2048
PAYEE_ID_LENGTH_MAX = 200
ERASED = "[erased]"
# characters that would split or forge the To: header (several recipients, a display name, a comment)
_EMAIL_FORBIDDEN = set(',;<>()[]"\\:')


class InvalidContact(ValueError):
    """A contact field is unusable; `field` names it and `reason` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def validate_email(email: str) -> str:
    """The address if it is usable: one @, a local part and a domain, no spaces, at most 254 characters."""
    if not isinstance(email, str) or not email:
        raise InvalidContact("email", "must be a non-empty address such as payee@example.com")
    if len(email) > EMAIL_LENGTH_MAX:
        raise InvalidContact("email", f"is {len(email)} characters long; at most {EMAIL_LENGTH_MAX} are allowed")
    if any(character.isspace() or not character.isprintable() for character in email):
        raise InvalidContact("email", f"{email!r} contains a space or a control character")
    if email.count("@") != 1:
        raise InvalidContact("email", f"{email!r} must contain exactly one @")
    local, domain = email.split("@")
    if not local or not domain:
        raise InvalidContact("email", f"{email!r} needs text before and after the @")
    if _EMAIL_FORBIDDEN & set(email):
        raise InvalidContact("email", f"{email!r} contains one of {''.join(sorted(_EMAIL_FORBIDDEN))}")
    if domain.startswith(("-", ".")) or domain.endswith(".") or ".." in domain:
        raise InvalidContact("email", f"{email!r} has an invalid domain {domain!r}")
    return email


def validate_webhook_url(url: str) -> str:
    """The URL if it is an absolute http(s) URL with a host."""
    if not isinstance(url, str) or not url:
        raise InvalidContact("webhook_url", "must be a non-empty http:// or https:// URL")
    if len(url) > URL_LENGTH_MAX:
        raise InvalidContact("webhook_url", f"is {len(url)} characters long; at most {URL_LENGTH_MAX} are allowed")
    if any(character.isspace() or not character.isprintable() for character in url):
        raise InvalidContact("webhook_url", f"{url!r} contains a space or a control character")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise InvalidContact("webhook_url", f"{url!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidContact("webhook_url", f"{url!r} must start with http:// or https://")
    if not parts.hostname:
        raise InvalidContact("webhook_url", f"{url!r} has no host")
    return url


def _validate_payee(payee_id: str) -> str:
    if not isinstance(payee_id, str) or not payee_id.strip():
        raise InvalidContact("payee_id", "must be a non-empty string")
    if len(payee_id) > PAYEE_ID_LENGTH_MAX:
        raise InvalidContact("payee_id", f"is longer than {PAYEE_ID_LENGTH_MAX} characters")
    return payee_id


def _row(row: Any) -> dict:
    return {"payee_id": row.payee_id, "email": row.email, "webhook_url": row.webhook_url,
            "updated_at": row.updated_at.isoformat(), "updated_by": row.updated_by}


def set_contact(database_url: str, payee_id: str, *, email: str | None, webhook_url: str | None, actor: str) -> dict:
    """Replace the payee's contact with these channels (None: that channel is not used); returns it."""
    _validate_payee(payee_id)
    if email is None and webhook_url is None:
        raise InvalidContact("contact", "give an email or a webhook URL (or delete the contact)")
    if email is not None:
        validate_email(email)
    if webhook_url is not None:
        validate_webhook_url(webhook_url)
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            row = connection.execute(sqlalchemy.text(
                "INSERT INTO payee_contacts (payee_id, email, webhook_url, updated_at, updated_by) "
                "VALUES (:p, :e, :w, now(), :a) ON CONFLICT (payee_id) DO UPDATE SET email = :e, webhook_url = :w, "
                "updated_at = now(), updated_by = :a "
                "RETURNING payee_id, email, webhook_url, updated_at, updated_by"),
                {"p": payee_id, "e": email, "w": webhook_url, "a": actor}).one()
    finally:
        engine.dispose()
    return _row(row)


def get_contact(database_url: str, payee_id: str) -> dict | None:
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            row = connection.execute(sqlalchemy.text(
                "SELECT payee_id, email, webhook_url, updated_at, updated_by FROM payee_contacts WHERE payee_id = :p"),
                {"p": payee_id}).first()
    finally:
        engine.dispose()
    return _row(row) if row else None


def delete_contact(database_url: str, payee_id: str, *, actor: str = "") -> dict:
    """Erase the payee's contact and the addresses on its notification rows; undelivered ones are given up."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as connection:
            deleted = connection.execute(sqlalchemy.text("DELETE FROM payee_contacts WHERE payee_id = :p"),
                                         {"p": payee_id}).rowcount
            given_up = connection.execute(sqlalchemy.text(
                "UPDATE payee_notifications SET status = 'given_up', next_attempt_at = NULL, "
                "last_error = :why WHERE payee_id = :p AND status = 'pending'"),
                {"p": payee_id, "why": f"contact erased before delivery{f' by {actor}' if actor else ''}"}).rowcount
            erased = connection.execute(sqlalchemy.text(
                "UPDATE payee_notifications SET target = :erased WHERE payee_id = :p AND target NOT IN ('', :erased)"),
                {"p": payee_id, "erased": ERASED}).rowcount
    finally:
        engine.dispose()
    return {"payee_id": payee_id, "deleted": bool(deleted), "notifications_given_up": given_up,
            "addresses_erased": erased}
