"""Alerts on the real stack: real payouts through the local Stripe server, the real projector, PostgreSQL,
a local HTTP receiver that checks HMAC signatures, and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest
import sqlalchemy
from aiosmtpd.controller import Controller

from ledger.alerts import AlertNotFound, AlertTransitionRefused
from processors.alert_measurements import InvalidAlertSetting, health_summary
from processors.alerter import deliver_pending, delivery_id, evaluate_alerts
from processors.ledger_client import LedgerClient
from projections.alert_store import acknowledge_alert, deliveries, get_alert, list_alerts, resolve_alert
from runtime.database import make_engine
from runtime.processes import free_port
from runtime.signed_webhook import DELIVERY_HEADER, SIGNATURE_HEADER, verify
from tests.integration.cli_env import LEDGER, env_for
from tests.integration.test_metrics import scrape, value
from tests.integration.test_projector import project
from tests.integration.transfer_helpers import all_final, processor_running, request_payouts, sequencer_running, wait_until
from sandbox.stripe import StripeTestServer

SECRET = "alert-hmac-secret"
OPS = "ops@example.test"


class Receiver:
    """A webhook receiver on a thread: verifies each signature, answers 500 to the first `failures` posts."""

    def __init__(self, failures: int = 0) -> None:
        self.failures, self.posts = failures, []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # noqa: ANN002
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    receiver.posts.append({"verified": verify(SECRET, body, self.headers.get(SIGNATURE_HEADER)),
                                           "delivery": self.headers.get(DELIVERY_HEADER), "body": json.loads(body)})
                    failing = receiver.failures > 0
                    receiver.failures -= failing
                self.send_response(500 if failing else 204)
                self.end_headers()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/alerts"
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class Mailbox:
    def __init__(self) -> None:
        self.messages = []

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, N802 - aiosmtpd's hook
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.original_content)))
        return "250 OK"


@contextmanager
def receivers(failures: int = 0) -> Iterator[tuple[Receiver, Mailbox, int]]:
    receiver, mailbox, port = Receiver(failures), Mailbox(), free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield receiver, mailbox, port
    finally:
        controller.stop()
        receiver.close()


def alerting(settings, receiver: Receiver, smtp_port: int | None = None, **changes):
    email = {"alert_emails": [OPS], "smtp_host": "127.0.0.1", "smtp_port": smtp_port} if smtp_port else {}
    return settings.model_copy(update={"alert_webhook_urls": [receiver.url], "alert_webhook_secret": SECRET,
                                       **email, **changes})


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def pay(settings, server: StripeTestServer, good: list[str], closed: list[str] = ()) -> None:
    """Payouts through the real transfer processor and the local Stripe server, projected into the read models."""
    payees = {name: ("stripe_standard", server.create_account()) for name in good}
    payees.update({name: ("stripe_standard", "acct_missing") for name in closed})  # no such account: fails for good
    ids = {e.payload["payout_id"] for e in request_payouts(settings, payees)}
    assert len(ids) == len(payees)
    with sequencer_running(settings), processor_running(settings):
        wait_until(lambda: all_final(settings, ids), 60, "every payout settled or failed")
    project(settings)


def test_failure_rate_goes_from_healthy_to_firing_to_resolved_with_real_failed_payouts(settings):
    with StripeTestServer() as stripe, receivers() as (receiver, mailbox, smtp_port):
        settings = alerting(settings.model_copy(update={
            "stripe_api_key": "sk_test_ledger", "stripe_api_base": stripe.url, "stripe_timeout_s": 3.0}),
            receiver, smtp_port)
        pay(settings, stripe, ["ok-1", "ok-2", "ok-3"])
        healthy = evaluate_alerts(settings, settings.database_url, utc_now())
        assert healthy.status == "healthy" and healthy.fired == [] and list_alerts(settings.database_url) == []
        rate = next(c for c in healthy.conditions if c.rule.value == "failure_rate")
        assert (rate.value, rate.firing) == (Decimal("0.00"), False)

        pay(settings, stripe, [], closed=["gone-1"])  # 1 failed of 4 finished: 25 % > 2 x 10 %
        firing = evaluate_alerts(settings, settings.database_url, utc_now())
        assert firing.status == "critical" and len(firing.fired) == 1 and firing.deliveries_enqueued == 2
        [alert] = list_alerts(settings.database_url, status="open")
        assert (alert["rule"], alert["severity"], alert["status"], alert["value"], alert["threshold"]) == (
            "failure_rate", "critical", "firing", "25.00", "10.0")
        assert "1 of 4" in alert["summary"]
        assert deliver_pending(settings, settings.database_url, utc_now()).sent == 2
        [post] = receiver.posts
        assert post["verified"] and post["body"]["transition"] == "fired" and post["body"]["alert"]["id"] == alert["id"]
        assert post["delivery"].startswith(f"alert-{alert['id']}-fired-")
        [(to, mail)] = mailbox.messages
        assert to == [OPS] and mail["Subject"] == "[payout-ledger] FIRED critical failure_rate"
        assert "1 of 4" in mail.get_payload() and mail["Message-ID"] == f"<{delivery_id(alert['id'], 'fired', OPS)}@payout-ledger>"
        again = evaluate_alerts(settings, settings.database_url, utc_now())  # still firing: no second alert
        assert again.fired == [] and len(list_alerts(settings.database_url)) == 1

        with LedgerClient(settings.kafka_bootstrap, settings) as client:  # else its returned money is paid again
            client.set_hold("gone-1", held=True, reason="Stripe account closed", actor="ops")
        pay(settings, stripe, [f"more-{i}" for i in range(6)])  # 1 failed of 10: 10 %, not more
        cleared = evaluate_alerts(settings, settings.database_url, utc_now())
        assert cleared.status == "healthy" and cleared.resolved == [alert["id"]] and cleared.deliveries_enqueued == 2
        resolved = get_alert(settings.database_url, alert["id"])
        assert (resolved["status"], resolved["resolution"], resolved["resolved_by"], resolved["value"]) == (
            "resolved", "cleared", None, "10.00")
        assert deliver_pending(settings, settings.database_url, utc_now()).sent == 2
        assert [p["body"]["transition"] for p in receiver.posts] == ["fired", "resolved"]
        assert receiver.posts[1]["verified"] and receiver.posts[1]["body"]["alert"]["resolution"] == "cleared"
        assert mailbox.messages[1][1]["Subject"] == "[payout-ledger] RESOLVED critical failure_rate"
        assert {d["status"] for d in deliveries(settings.database_url, alert["id"])} == {"sent"}


# --- thresholds from rows ---------------------------------------------------------------------------------


def execute(settings, sql: str, rows: list[dict]) -> None:
    engine = make_engine(settings.database_url)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(sql), rows)
    finally:
        engine.dispose()


def insert_payout(settings, payout_id: str, status: str, requested_at: datetime, *, net_minor: int = 100,
                  currency: str = "USD", exponent: int = 2, provider: str = "manual",
                  answered: tuple[datetime, float] | None = None, finished_at: datetime | None = None) -> None:
    """A payouts row; answered = (attempt submitted at, seconds until the provider's first answer) adds its attempt
    (accepted while at_provider, else finished with the payout)."""
    accepted_at = answered[0] + timedelta(seconds=answered[1]) if answered and status == "at_provider" else None
    if answered and status in ("settled", "failed"):
        finished_at = answered[0] + timedelta(seconds=answered[1])
    execute(settings,
            "INSERT INTO payouts (payout_id, payee_id, period_id, trigger, plan, method, currency, exponent, "
            "gross_minor, services, rate_bp, payee_share_minor, fee_minor, carry_over_minor, net_minor, deductions, "
            "payment_count, status, attempts, provider, requested_at, accepted_at, finished_at, updated_at) VALUES "
            "(:id, 'payee-' || :id, 'p', 'schedule', 'flat-80', :provider, :currency, :exponent, :net, 0, 8000, :net, "
            "0, 0, :net, '[]', 1, :status, 1, :provider, :requested, :accepted, :finished, :requested)",
            [{"id": payout_id, "currency": currency, "exponent": exponent, "net": net_minor, "status": status,
              "provider": provider, "requested": requested_at, "accepted": accepted_at, "finished": finished_at}])
    if answered:
        execute(settings,
                "INSERT INTO payout_attempts (payout_id, attempt, payee_id, provider, submitted_at, outcome, "
                "provider_reference, reason_code, message, retryable, finished_at) VALUES (:id, 1, 'payee-' || :id, "
                ":provider, :submitted, :outcome, '', '', '', false, :finished)",
                [{"id": payout_id, "provider": provider, "submitted": answered[0], "finished": finished_at,
                  "outcome": {"at_provider": "accepted"}.get(status, status)}])


def open_by_rule(settings) -> dict[tuple[str, str], dict]:
    return {(a["rule"], a["key"]): a for a in list_alerts(settings.database_url, status="open")}


def test_pending_delay_run_total_backlog_and_latency_fire_escalate_and_clear_from_rows(settings):
    """Read-model rows are inserted directly here (the failure-rate test above drives real payouts)."""
    now = utc_now().replace(microsecond=0)
    hour_ago = now - timedelta(hours=1)
    insert_payout(settings, "oldest", "requested", now - timedelta(hours=25))  # outside the 24 h run window
    for i in range(48):
        insert_payout(settings, f"open-{i}", "requested", hour_ago)
    for i in range(3):  # at the mobile money provider, accepted after 2 s, the outcome still to come
        insert_payout(settings, f"async-{i}", "at_provider", hour_ago, provider="mobile_money",
                      answered=(now - timedelta(minutes=10), 2))
    insert_payout(settings, "big", "settled", now - timedelta(hours=2), net_minor=1_000_000, provider="stripe",
                  answered=(now - timedelta(minutes=5), 7))  # USD 10,000.00, answered in 7 s
    insert_payout(settings, "xof", "settled", now - timedelta(hours=2), net_minor=10_000, currency="XOF", exponent=0,
                  provider="stripe", answered=(now - timedelta(minutes=20), 1))  # answered before the 15 min window
    insert_payout(settings, "last-week", "settled", now - timedelta(days=7), net_minor=5_000_000,
                  finished_at=now - timedelta(days=6))
    settings = settings.model_copy(update={"alert_webhook_backlog_max": 2})

    summary = health_summary(settings, settings.database_url, now)
    assert summary["status"] == "critical" and summary["open_alerts"] == []  # judged now, nothing stored yet
    m = summary["measurements"]
    assert (m["open_payouts"], m["oldest_open_age_s"], m["awaiting_provider"]) == (52, 25 * 3600, 3)
    assert m["requested_minor"] == {"USD": 1_000_000 + 51 * 100, "XOF": 10_000}
    assert (m["gateway_answers"], m["gateway_latency_p95_s"], m["finished_payouts"]) == (4, "7.000", 2)

    result = evaluate_alerts(settings, settings.database_url, now)
    opened = open_by_rule(settings)
    assert {key: (a["severity"], a["value"], a["threshold"]) for key, a in opened.items()} == {
        ("pending_payouts", ""): ("warning", "52", "50"),
        ("processing_delay", ""): ("warning", "25.00", "24.0"),
        ("run_total", "USD"): ("warning", "10051.00", "10000.00"),  # XOF 10,000 is not more than 10,000
        ("gateway_latency", ""): ("critical", "7.000", "3.0"),      # more than 2 x 3 s
        ("webhook_backlog", ""): ("warning", "3", "2"),
    }
    assert result.status == "critical" and sorted(result.fired) == sorted(a["id"] for a in opened.values())

    for i in range(50):  # 102 open payouts: more than 2 x 50
        insert_payout(settings, f"more-{i}", "requested", hour_ago)
    escalated = evaluate_alerts(settings, settings.database_url, now + timedelta(minutes=1))
    assert escalated.escalated == [opened[("pending_payouts", "")]["id"]] and escalated.fired == []
    assert get_alert(settings.database_url, escalated.escalated[0])["severity"] == "critical"

    execute(settings, "UPDATE payouts SET status = 'settled', finished_at = :at WHERE status <> 'settled'",
            [{"at": now + timedelta(minutes=2)}])
    cleared = evaluate_alerts(settings, settings.database_url, now + timedelta(minutes=2))
    assert sorted(cleared.resolved) == sorted(opened[key]["id"] for key in (
        ("pending_payouts", ""), ("processing_delay", ""), ("webhook_backlog", "")))
    later = evaluate_alerts(settings, settings.database_url, now + timedelta(hours=26))  # nothing requested, answered
    assert sorted(later.resolved) == sorted([opened[("run_total", "USD")]["id"], opened[("gateway_latency", "")]["id"]])
    usd = get_alert(settings.database_url, opened[("run_total", "USD")]["id"])
    assert (usd["resolution"], usd["value"]) == ("cleared", None) and later.status == "healthy"
    assert list_alerts(settings.database_url, status="open") == []


def pending_alert(settings, now: datetime) -> int:
    """Three open payouts against a threshold of two: one pending_payouts alert, fired at `now`."""
    for i in range(3):
        insert_payout(settings, f"p-{i}-{now.timestamp()}", "requested", now - timedelta(minutes=5))
    result = evaluate_alerts(settings, settings.database_url, now)
    assert len(result.fired) == 1
    return result.fired[0]


def test_operators_acknowledge_and_resolve_and_wrong_transitions_are_refused(settings):
    settings = settings.model_copy(update={"alert_pending_max": 2})
    now = utc_now()
    first = pending_alert(settings, now)
    acked = acknowledge_alert(settings.database_url, first, "alice")
    assert (acked["status"], acked["acknowledged_by"]) == ("acknowledged", "alice") and acked["acknowledged_at"]
    with pytest.raises(AlertTransitionRefused, match="already acknowledged"):
        acknowledge_alert(settings.database_url, first, "bob")
    assert evaluate_alerts(settings, settings.database_url, now).fired == []  # acknowledged is still open
    done = resolve_alert(settings.database_url, first, "bob")
    assert (done["status"], done["resolution"], done["resolved_by"]) == ("resolved", "operator", "bob")
    with pytest.raises(AlertTransitionRefused, match="already resolved"):
        resolve_alert(settings.database_url, first, "bob")
    with pytest.raises(AlertTransitionRefused, match="nothing to acknowledge"):
        acknowledge_alert(settings.database_url, first, "bob")
    with pytest.raises(AlertNotFound, match="no alert with id 999999"):
        acknowledge_alert(settings.database_url, 999_999, "bob")
    with pytest.raises(AlertNotFound):
        get_alert(settings.database_url, 999_999)
    with pytest.raises(ValueError, match="actor"):
        resolve_alert(settings.database_url, first, " ")

    # resolved by hand while the condition holds: the next evaluation raises a new alert
    second = evaluate_alerts(settings, settings.database_url, now + timedelta(minutes=1)).fired
    assert len(second) == 1 and second[0] != first
    acknowledge_alert(settings.database_url, second[0], "alice")
    execute(settings, "UPDATE payouts SET status = 'cancelled'", [{}])
    assert evaluate_alerts(settings, settings.database_url, now + timedelta(minutes=2)).resolved == second
    assert get_alert(settings.database_url, second[0])["resolution"] == "cleared"  # acknowledged -> cleared
    assert [a["id"] for a in list_alerts(settings.database_url)] == [second[0], first]  # newest first
    assert [a["id"] for a in list_alerts(settings.database_url, status="resolved", limit=1)] == [second[0]]
    assert list_alerts(settings.database_url, status="open") == []
    with pytest.raises(ValueError, match="status: must be one of open"):
        list_alerts(settings.database_url, status="closed")
    with pytest.raises(ValueError, match="limit"):
        list_alerts(settings.database_url, limit=0)


def test_a_receiver_failing_twice_gets_the_delivery_on_the_third_try_and_a_dead_one_is_given_up(settings):
    with receivers(failures=2) as (receiver, _, _):
        settings = alerting(settings, receiver, alert_pending_max=2, notify_retry_delays_s=[10, 60])
        start = utc_now()
        alert_id = pending_alert(settings, start)
        assert deliver_pending(settings, settings.database_url, start).retrying == 1
        assert deliver_pending(settings, settings.database_url, start + timedelta(seconds=9)).retrying == 0  # not due
        assert deliver_pending(settings, settings.database_url, start + timedelta(seconds=10)).retrying == 1
        assert deliver_pending(settings, settings.database_url, start + timedelta(seconds=69)).sent == 0
        assert deliver_pending(settings, settings.database_url, start + timedelta(seconds=70)).sent == 1
        assert len(receiver.posts) == 3 and all(p["verified"] for p in receiver.posts)
        assert len({p["delivery"] for p in receiver.posts}) == 1  # one stable id: the receiver can drop repeats
        [row] = deliveries(settings.database_url, alert_id)
        assert (row["status"], row["attempts"], row["last_error"]) == ("sent", 3, "")

    # nobody listens at the URL any more: two retries, then given up with the reason
    execute(settings, "UPDATE payouts SET status = 'settled', finished_at = :at", [{"at": start}])
    later = start + timedelta(minutes=5)
    assert evaluate_alerts(settings, settings.database_url, later).resolved == [alert_id]
    counts = [deliver_pending(settings, settings.database_url, later + timedelta(seconds=s)) for s in (0, 10, 70)]
    assert [(c.retrying, c.given_up) for c in counts] == [(1, 0), (1, 0), (0, 1)]
    resolved = [d for d in deliveries(settings.database_url, alert_id) if d["transition"] == "resolved"]
    assert [(d["status"], d["attempts"]) for d in resolved] == [("given_up", 3)]
    assert "unreachable" in resolved[0]["last_error"]


def test_a_run_total_threshold_finer_than_a_currency_seen_is_refused_naming_the_setting(settings):
    insert_payout(settings, "xof", "settled", utc_now() - timedelta(hours=1), net_minor=5, currency="XOF", exponent=0)
    settings = settings.model_copy(update={"alert_run_total_max": "10000.50"})
    with pytest.raises(InvalidAlertSetting, match="LEDGER_ALERT_RUN_TOTAL_MAX: 10000.50 has too many decimal places for XOF"):
        evaluate_alerts(settings, settings.database_url, utc_now())


# --- the command ------------------------------------------------------------------------------------------


def ledger(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([LEDGER, "alerts", *args], env=env, capture_output=True, text=True, timeout=60)


def test_the_alerts_command_evaluates_lists_acknowledges_resolves_and_watches(settings, tmp_path):
    with receivers() as (receiver, _, _):
        env = env_for(settings, tmp_path, LEDGER_ALERT_PENDING_MAX="2", LEDGER_ALERT_WEBHOOK_URLS=json.dumps([receiver.url]),
                      LEDGER_ALERT_WEBHOOK_SECRET=SECRET)
        healthy = ledger(env, "evaluate", "--json")
        assert healthy.returncode == 0, healthy.stderr
        assert json.loads(healthy.stdout)["status"] == "healthy"
        for i in range(3):
            insert_payout(settings, f"cli-{i}", "requested", utc_now() - timedelta(minutes=5))
        firing = ledger(env, "evaluate", "--json")
        assert firing.returncode == 3, firing.stderr  # a rule fires
        report = json.loads(firing.stdout)
        assert report["status"] == "warning" and len(report["fired"]) == 1 and report["deliveries"]["sent"] == 1
        alert_id = report["fired"][0]
        assert receiver.posts[0]["verified"] and receiver.posts[0]["body"]["alert"]["rule"] == "pending_payouts"

        listed = json.loads(ledger(env, "list", "--status", "open", "--json").stdout)
        assert [(a["id"], a["rule"], a["status"], a["value"]) for a in listed] == [(alert_id, "pending_payouts", "firing", "3")]
        acked = ledger(env, "ack", str(alert_id), "--actor", "carol", "--json")
        assert acked.returncode == 0 and json.loads(acked.stdout)["acknowledged_by"] == "carol"
        twice = ledger(env, "ack", str(alert_id))
        assert twice.returncode == 1 and f"alert {alert_id}: the alert is already acknowledged" in twice.stderr
        missing = ledger(env, "resolve", "424242")
        assert missing.returncode == 1 and "no alert with id 424242" in missing.stderr
        done = json.loads(ledger(env, "resolve", str(alert_id), "--actor", "carol", "--json").stdout)
        assert (done["status"], done["resolution"]) == ("resolved", "operator")
        table = ledger({**env, "COLUMNS": "200"}, "list").stdout
        assert "pending_payouts" in table and "resolved" in table and "carol" not in table
        assert ledger(env, "list", "--status", "nope").returncode == 2  # click refuses the choice

        # the loop: a new alert fires (the condition still holds), is delivered and counted in the gauge
        port = free_port()
        watcher = subprocess.Popen([LEDGER, "alerts", "watch", "--every", "0.2", "--metrics-port", str(port)], env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: value(scrape(port), "ledger_alerts_open", rule="pending_payouts", severity="warning") == 1,
                       30, "the gauge counting the new open alert")
            wait_until(lambda: len(receiver.posts) == 2, 30, "the new alert delivered")
            execute(settings, "UPDATE payouts SET status = 'cancelled'", [{}])
            wait_until(lambda: value(scrape(port), "ledger_alerts_open", rule="pending_payouts", severity="warning") == 0,
                       30, "the gauge back to 0 once the alert cleared")
        finally:
            watcher.send_signal(signal.SIGTERM)
            _, stderr = watcher.communicate(timeout=30)
        assert watcher.returncode == 0, stderr
        assert "alerts watch stopped after" in stderr
        wait_until(lambda: len(receiver.posts) == 3, 30, "the resolution delivered")
        assert [p["body"]["transition"] for p in receiver.posts] == ["fired", "fired", "resolved"]
        quiet = ledger({**env, "COLUMNS": "200"}, "evaluate")
        assert quiet.returncode == 0 and "status: healthy" in quiet.stdout and "0 payouts open" in quiet.stdout
