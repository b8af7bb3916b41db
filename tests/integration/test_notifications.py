"""Payee notices on the real stack: ledger events -> outbox -> a real SMTP server and a signed-webhook receiver."""

from __future__ import annotations

import email
import email.policy
import json
import subprocess
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import sqlalchemy
from aiosmtpd.controller import Controller

from ledger import payouts as records
from ledger.codec import EventCodec
from ledger.money import Money
from processors.notifier import Notifier
from processors.payout_run import send_commands
from projections.payee_contacts import InvalidContact, delete_contact, get_contact, set_contact
from runtime.database import make_engine
from runtime.processes import free_port
from runtime.signed_webhook import DELIVERY_HEADER, SIGNATURE_HEADER, verify
from tests.integration.cli_env import LEDGER, env_for
from tests.integration.sequencing_helpers import ledger_events, run_sequencer
from tests.integration.transfer_helpers import (book_of, processor_running, request_payouts, running,
                                                sequencer_running, wait_until)

SECRET = "whsec_notify_test"


class Mailbox:
    """aiosmtpd handler: keeps every message; refuses the recipients in `refuse` (a permanent 550)."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.refused: list[str] = []
        self.refuse: set[str] = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: ANN001, ANN201
        if address in self.refuse:
            self.refused.append(address)
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, ANN201
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[email.message.EmailMessage]:
        return [message for message in self.messages if message["To"] == address]


class Receiver:
    """A payee's webhook endpoint: verifies each signature; `/down` always 503, `fail_first[path]` 500s first."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.fail_first: dict[str, int] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.requests.append({"path": self.path, "body": body, "delivery": self.headers[DELIVERY_HEADER],
                                              "verified": verify(SECRET, body, self.headers[SIGNATURE_HEADER])})
                    if self.path == "/down":
                        status = 503
                    elif receiver.fail_first.get(self.path, 0) > 0:
                        receiver.fail_first[self.path] -= 1
                        status = 500
                    else:
                        status = 200 if receiver.requests[-1]["verified"] else 401
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def at(self, path: str) -> list[dict]:
        with self.lock:
            return [request for request in self.requests if request["path"] == path]


class MovableClock:
    def __init__(self, start: datetime) -> None:
        self.now, self._lock = start, threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += timedelta(seconds=seconds)


@pytest.fixture
def mailbox():
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield box, controller.port
    controller.stop()


@pytest.fixture
def receiver():
    hooks = Receiver()
    yield hooks
    hooks.server.shutdown()
    hooks.server.server_close()


@pytest.fixture
def notify_settings(settings, mailbox):
    return settings.model_copy(update={"smtp_host": "127.0.0.1", "smtp_port": mailbox[1], "smtp_timeout_s": 5.0,
                                       "notify_webhook_secret": SECRET, "notify_retry_delays_s": [10, 60]})


def rows(settings, payee_id: str | None = None) -> list[dict]:
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as connection:
            return [dict(row) for row in connection.execute(sqlalchemy.text(
                "SELECT * FROM payee_notifications WHERE :p IS NULL OR payee_id = :p ORDER BY id"),
                {"p": payee_id}).mappings()]
    finally:
        engine.dispose()


def chain(settings, events) -> None:
    """Send outcome events the way operators and the transfer processor do, and chain them."""
    send_commands(settings.kafka_bootstrap, settings.topic_commands, list(events), EventCodec())
    run_sequencer(settings, idle_exit_s=1.0)


def all_done(settings) -> bool:
    found = rows(settings)
    return bool(found) and all(row["status"] != "pending" for row in found)


def test_final_outcomes_notify_once_by_email_and_signed_webhook_even_after_restarts(notify_settings, mailbox, receiver):
    settings, (box, _) = notify_settings, mailbox
    payees = ("n-paid", "n-failed", "n-returned", "n-silent", "n-late")
    requested = {e.payee_id: e.payload["payout_id"] for e in request_payouts(settings, {p: ("manual", "") for p in payees})}
    set_contact(settings.database_url, "n-paid", email="paid@example.com", webhook_url=f"{receiver.url}/paid", actor="t")
    set_contact(settings.database_url, "n-failed", email="failed@example.com", webhook_url=f"{receiver.url}/failed",
                actor="t")
    set_contact(settings.database_url, "n-returned", email="returned@example.com", webhook_url=None, actor="t")
    set_contact(settings.database_url, "n-late", email="late@example.com", webhook_url=None, actor="t")
    with sequencer_running(settings), processor_running(settings):  # real attempts: Submitted, Accepted
        wait_until(lambda: {p.status.value for p in book_of(settings).payouts.values()} == {"at_provider"}, 30,
                   "manual payouts at the operator")
    book = book_of(settings)
    payout = {payee: book.get(requested[payee]) for payee in payees}
    now = datetime.now(timezone.utc)
    chain(settings, [
        records.settled(payout["n-paid"], 1, "manual", "receipt-17", now),
        records.failed(payout["n-failed"], 1, "manual", "could_not_process", "bank busy", True, now),  # not final
        records.failed(payout["n-failed"], 2, "manual", "account_closed", "The account is closed", False, now),
        records.settled(payout["n-returned"], 1, "manual", "receipt-18", now),
        records.failed(payout["n-returned"], 1, "manual", "no_account", "returned by the bank", False, now),
        records.settled(payout["n-silent"], 1, "manual", "receipt-19", now),
    ])
    amount = payout["n-paid"].amount
    major = f"{amount.to_major_string()} {amount.currency.code}"

    with running(Notifier(settings, settings.kafka_bootstrap, settings.database_url)):
        wait_until(lambda: len(rows(settings)) == 7 and all_done(settings), 60, "every notice delivered")
    assert len(box.messages) == 4 and len(receiver.requests) == 2
    by = {(row["payee_id"], row["kind"], row["channel"]): row for row in rows(settings)}
    assert {key: row["status"] for key, row in by.items()} == {
        ("n-paid", "settled", "email"): "sent", ("n-paid", "settled", "webhook"): "sent",
        ("n-failed", "failed", "email"): "sent", ("n-failed", "failed", "webhook"): "sent",
        ("n-returned", "settled", "email"): "sent", ("n-returned", "failed", "email"): "sent",
        ("n-silent", "settled", "none"): "no_contact"}
    assert all(row["attempts"] == 1 for key, row in by.items() if key[2] != "none")
    silent = by[("n-silent", "settled", "none")]
    assert (silent["attempts"], silent["target"], silent["sent_at"]) == (0, "", None)

    [paid_mail] = box.to("paid@example.com")
    assert paid_mail["Subject"] == f"Your payout of {major} was sent"
    assert paid_mail["Message-ID"] == f"<notification-{by[('n-paid', 'settled', 'email')]['id']}@payout-ledger>"
    assert "receipt-17" in paid_mail.get_content() and requested["n-paid"] in paid_mail.get_content()
    [failed_mail] = box.to("failed@example.com")
    assert failed_mail["Subject"] == f"Your payout of {major} failed"
    assert "could not be paid: the bank account is closed" in failed_mail.get_content()
    assert [m["Subject"] for m in box.to("returned@example.com")] == [
        f"Your payout of {major} was sent", f"Your payout of {major} was returned"]

    [paid_hook], [failed_hook] = receiver.at("/paid"), receiver.at("/failed")
    assert paid_hook["verified"] and failed_hook["verified"]
    assert paid_hook["delivery"] == f"notification-{by[('n-paid', 'settled', 'webhook')]['id']}"
    paid_body, failed_body = json.loads(paid_hook["body"]), json.loads(failed_hook["body"])
    assert {k: paid_body[k] for k in ("type", "payout_id", "payee_id", "amount_minor", "currency", "amount", "status",
                                      "provider_reference")} == {
        "type": "payout.settled", "payout_id": requested["n-paid"], "payee_id": "n-paid",
        "amount_minor": amount.amount_minor, "currency": "USD", "amount": amount.to_major_string(), "status": "settled",
        "provider_reference": "receipt-17"}
    assert (failed_body["status"], failed_body["reason_code"], failed_body["reason_message"]) == (
        "failed", "account_closed", "The account is closed")
    assert by[("n-returned", "failed", "email")]["payload"]["returned"] is True

    # a new notifier in the same group resumes after the committed offsets: only the new outcome is sent
    chain(settings, [records.settled(payout["n-late"], 1, "manual", "receipt-20", now)])
    second = Notifier(settings, settings.kafka_bootstrap, settings.database_url)
    with running(second):
        wait_until(lambda: len(rows(settings)) == 8 and all_done(settings), 60, "the late notice delivered")
    assert second.stats.events == 1  # only the new PayoutSettled: the events before were not read again
    assert len(box.messages) == 5 and len(box.to("late@example.com")) == 1 and len(receiver.requests) == 2

    # re-reading the whole ledger (offsets lost, e.g. a restored broker) makes no notice twice
    total = len(ledger_events(settings))
    replay = Notifier(settings, settings.kafka_bootstrap, settings.database_url, group_id="ledger-notifier-replay")
    with running(replay):
        wait_until(lambda: replay.stats.events == total, 60, "the whole ledger re-read")
    assert (replay.stats.notices, replay.stats.rows, replay.stats.sent) == (6, 0, 0)
    assert len(rows(settings)) == 8 and len(box.messages) == 5 and len(receiver.requests) == 2


def test_failed_deliveries_are_retried_on_the_moved_clock_then_sent_or_given_up(notify_settings, mailbox, receiver):
    settings, (box, _) = notify_settings, mailbox
    box.refuse.add("bounce@example.com")
    receiver.fail_first["/flaky"] = 2
    requested = {e.payee_id: e.payload["payout_id"] for e in request_payouts(
        settings, {p: ("manual", "") for p in ("r-flaky", "r-down")})}
    set_contact(settings.database_url, "r-flaky", email=None, webhook_url=f"{receiver.url}/flaky", actor="t")
    set_contact(settings.database_url, "r-down", email="bounce@example.com", webhook_url=f"{receiver.url}/down",
                actor="t")
    book, now = book_of(settings), datetime.now(timezone.utc)
    chain(settings, [records.settled(book.get(requested[p]), 1, "manual", f"ref-{p}", now) for p in ("r-flaky", "r-down")])
    clock = MovableClock(datetime.now(timezone.utc))
    start = clock()

    def attempts() -> dict[tuple[str, str], tuple[int, str]]:
        return {(r["payee_id"], r["channel"]): (r["attempts"], r["status"]) for r in rows(settings)}

    def waiting(attempt: int, next_at: datetime) -> bool:  # every row failed this attempt (not one still in flight)
        found = rows(settings)
        return len(found) == 3 and {(r["attempts"], r["status"], r["next_attempt_at"]) for r in found} == {
            (attempt, "pending", next_at)}

    notifier = Notifier(settings, settings.kafka_bootstrap, settings.database_url, clock=clock)
    with running(notifier):
        wait_until(lambda: waiting(1, start + timedelta(seconds=10)), 60, "first attempts failed")
        assert notifier.deliver_due().retried == 0  # not due before the moved clock says so
        clock.advance(10)
        wait_until(lambda: waiting(2, start + timedelta(seconds=70)), 30, "second attempts failed")
        clock.advance(59)
        assert notifier.deliver_due().retried == 0  # the second wait is 60 s
        clock.advance(1)
        wait_until(lambda: all_done(settings), 30, "third attempts")
    assert attempts() == {("r-flaky", "webhook"): (3, "sent"), ("r-down", "webhook"): (3, "given_up"),
                          ("r-down", "email"): (3, "given_up")}
    final = {(r["payee_id"], r["channel"]): r for r in rows(settings)}
    assert final[("r-flaky", "webhook")]["sent_at"] == start + timedelta(seconds=70)
    assert "answered 503" in final[("r-down", "webhook")]["last_error"]
    assert "550" in final[("r-down", "email")]["last_error"] and final[("r-down", "email")]["next_attempt_at"] is None
    flaky = receiver.at("/flaky")
    assert len(flaky) == 3 and all(r["verified"] for r in flaky)
    assert len({r["delivery"] for r in flaky}) == 1 and len({r["body"] for r in flaky}) == 1  # the same notice
    assert len(receiver.at("/down")) == 3 and box.refused == ["bounce@example.com"] * 3 and box.messages == []
    clock.advance(86_400)
    assert notifier.deliver_due().sent == 0 and len(receiver.requests) == 6  # given up is final


def test_contacts_are_validated_erasable_and_listed_by_the_cli(notify_settings, mailbox, tmp_path):
    settings, (box, smtp_port) = notify_settings, mailbox
    with pytest.raises(InvalidContact, match="^email: .*exactly one @") as caught:
        set_contact(settings.database_url, "c-1", email="nobody.example.com", webhook_url=None, actor="t")
    assert caught.value.field == "email"
    with pytest.raises(InvalidContact, match="^webhook_url: .*http:// or https://"):
        set_contact(settings.database_url, "c-1", email=None, webhook_url="ftp://x.example/", actor="t")
    with pytest.raises(InvalidContact, match="^contact: give an email or a webhook URL"):
        set_contact(settings.database_url, "c-1", email=None, webhook_url=None, actor="t")
    assert get_contact(settings.database_url, "c-1") is None

    env = env_for(settings, tmp_path, LEDGER_SMTP_HOST="127.0.0.1", LEDGER_SMTP_PORT=str(smtp_port),
                  LEDGER_NOTIFY_WEBHOOK_SECRET=SECRET)

    def cli(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([LEDGER, *args], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
        return result

    bad = cli("payee", "contact", "c-1", "--email", "a b@example.com", code=1)
    assert "email: 'a b@example.com' contains a space" in bad.stderr
    assert "webhook_url:" in cli("payee", "contact", "c-1", "--webhook-url", "hooks.example", code=1).stderr
    assert json.loads(cli("payee", "contact", "c-1", "--email", "c1@example.com", "--json").stdout)["contact"]["email"] \
        == "c1@example.com"
    both = json.loads(cli("payee", "contact", "c-1", "--webhook-url", "http://127.0.0.1:1/c1", "--actor", "ops",
                          "--json").stdout)["contact"]
    assert (both["email"], both["webhook_url"], both["updated_by"]) == ("c1@example.com", "http://127.0.0.1:1/c1", "ops")

    # a notice recorded (not delivered: nothing runs), listed, then the contact erased with its addresses
    request = records.Payout("po-c1", "c-1", Money.of(1_250, "EUR"), "manual", "p", "schedule", datetime.now(timezone.utc))
    notifier = Notifier(settings, settings.kafka_bootstrap, settings.database_url)
    assert notifier.record([records.settled(request, 1, "manual", "r-1", datetime.now(timezone.utc))]) == 2
    listed = json.loads(cli("notifications", "list", "--payee", "c-1", "--status", "pending", "--json").stdout)
    assert listed["total"] == 2
    assert {(n["channel"], n["target"], n["amount"], n["currency"]) for n in listed["notifications"]} == {
        ("email", "c1@example.com", "12.50", "EUR"), ("webhook", "http://127.0.0.1:1/c1", "12.50", "EUR")}
    assert "2 of 2 notices" in cli("notifications", "list").stdout
    # `ledger notifier` delivers them: the email goes out, the webhook (nothing listens on port 1) waits to retry
    stats = json.loads(cli("notifier", "--idle-exit", "1", "--json").stdout)
    assert (stats["sent"], stats["retried"], stats["given_up"]) == (1, 1, 0)
    assert [m["Subject"] for m in box.to("c1@example.com")] == ["Your payout of 12.50 EUR was sent"]
    cleared = json.loads(cli("payee", "contact", "c-1", "--clear", "--json").stdout)
    assert cleared == {"payee_id": "c-1", "deleted": True, "notifications_given_up": 1, "addresses_erased": 2}
    assert {(r["channel"], r["status"], r["target"]) for r in rows(settings, "c-1")} == {
        ("email", "sent", "[erased]"), ("webhook", "given_up", "[erased]")}
    assert "has no contact" in cli("payee", "contact", "c-1", code=3).stderr
    assert delete_contact(settings.database_url, "c-1")["deleted"] is False
