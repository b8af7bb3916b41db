"""Email over SMTP (alerts to operators, payout notices to payees): one message per call, no retries here.

Callers that must not lose a message keep it in an outbox table and call again later (at-least-once);
a message carries a stable Message-ID so a receiver can drop a repeat.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate

from runtime.settings import Settings


class EmailFailed(Exception):
    """The SMTP server did not take the message (it may be retried)."""


def email_configured(settings: Settings) -> bool:
    return bool(settings.smtp_host)


def send_email(settings: Settings, to: list[str], subject: str, body: str, *, message_id: str) -> None:
    """Send one plain-text email; raises EmailFailed with the server's reason."""
    if not settings.smtp_host:
        raise EmailFailed("no SMTP server configured (LEDGER_SMTP_HOST)")
    if not to:
        raise EmailFailed("no recipient")
    message = EmailMessage()
    message["From"] = settings.email_from
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = f"<{message_id}@payout-ledger>"
    message.set_content(body)
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout_s) as smtp:
            if settings.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.smtp_username:
                smtp.login(settings.smtp_username, settings.smtp_password)
            refused = smtp.send_message(message)
    except (smtplib.SMTPException, OSError) as exc:
        raise EmailFailed(f"{type(exc).__name__}: {exc}") from None
    if refused:
        raise EmailFailed(f"recipients refused: {sorted(refused)}")
