"""The alerter: measure, judge, move alerts through their lifecycle, and deliver what changed (webhooks, email).

An evaluation is one transaction (serialised by an advisory lock), so its alerts and the outbox rows of
their deliveries are written together. Deliveries are at-least-once: each has a stable id (webhook
X-Ledger-Delivery, email Message-ID) so receivers drop repeats, and is retried with
LEDGER_NOTIFY_RETRY_DELAYS_S until sent or given up.
"""

from __future__ import annotations

import hashlib
import signal
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import sqlalchemy

from ledger.alerts import Condition, Rule, Severity, Transition, overall_status, plan_steps
from processors.alert_measurements import condition_dict, judge, read_measurements
from projections import alert_store
from runtime import metrics
from runtime.database import make_engine
from runtime.mailer import EmailFailed, send_email
from runtime.settings import Settings
from runtime.signed_webhook import WebhookFailed, post_signed

DELIVERIES_PER_PASS = 200  # a bound on one deliver_pending call; the rest waits for the next pass
DELIVERED_TRANSITIONS = (Transition.FIRED, Transition.ESCALATED, Transition.RESOLVED)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class EvaluationResult:
    evaluated_at: datetime
    status: str  # healthy | warning | critical
    conditions: list[Condition]
    fired: list[int] = field(default_factory=list)
    escalated: list[int] = field(default_factory=list)
    resolved: list[int] = field(default_factory=list)
    deliveries_enqueued: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"evaluated_at": self.evaluated_at.isoformat(), "status": self.status,
                "conditions": [condition_dict(c) for c in self.conditions], "fired": self.fired,
                "escalated": self.escalated, "resolved": self.resolved,
                "deliveries_enqueued": self.deliveries_enqueued}


@dataclass
class DeliveryCounts:
    sent: int = 0
    retrying: int = 0
    given_up: int = 0


def delivery_targets(settings: Settings) -> list[tuple[str, str]]:
    return ([("webhook", url) for url in settings.alert_webhook_urls]
            + [("email", address) for address in settings.alert_emails])


def _engine(database_url: str) -> sqlalchemy.Engine:
    return make_engine(database_url, poolclass=sqlalchemy.pool.NullPool)


def evaluate_alerts(settings: Settings, database_url: str, now: datetime) -> EvaluationResult:
    """Measure the read models at `now`, apply the lifecycle, store the transitions, enqueue their deliveries."""
    engine = _engine(database_url)
    try:
        with engine.begin() as connection:
            alert_store.lock_evaluation(connection)
            measured = read_measurements(connection, now, failure_window_s=settings.alert_failure_window_s)
            conditions = judge(settings, measured)
            result = EvaluationResult(now, overall_status(conditions), conditions)
            targets = delivery_targets(settings)
            for step in plan_steps(alert_store.open_alerts(connection), conditions):
                alert_id, transition = alert_store.apply_step(connection, step, now)
                if transition is None:
                    continue
                {Transition.FIRED: result.fired, Transition.ESCALATED: result.escalated,
                 Transition.RESOLVED: result.resolved}[transition].append(alert_id)
                if transition in DELIVERED_TRANSITIONS:
                    result.deliveries_enqueued += alert_store.enqueue_deliveries(connection, alert_id, transition,
                                                                                 targets, now)
            counts = alert_store.open_counts(connection)
    finally:
        engine.dispose()
    for rule in Rule:  # every label pair, so a resolved alert's gauge goes back to 0
        for severity in Severity:
            metrics.ALERTS_OPEN.labels(rule.value, severity.value).set(counts.get((rule.value, severity.value), 0))
    return result


def delivery_id(alert_id: int, transition: str, target: str) -> str:
    """Stable per (alert, transition, target): the same notice sent again carries the same id."""
    return f"alert-{alert_id}-{transition}-{hashlib.sha256(target.encode()).hexdigest()[:16]}"


def email_subject(payload: dict[str, Any]) -> str:
    alert = payload["alert"]
    key = f" {alert['key']}" if alert["key"] else ""
    return f"[payout-ledger] {payload['transition'].upper()} {alert['severity']} {alert['rule']}{key}"


def email_body(payload: dict[str, Any]) -> str:
    alert = payload["alert"]
    lines = [alert["summary"], "", f"alert {alert['id']}: {alert['rule']}{' ' + alert['key'] if alert['key'] else ''}",
             f"transition: {payload['transition']} at {payload['occurred_at']}",
             f"severity: {alert['severity']}, status: {alert['status']}",
             f"value: {alert['value']}, threshold: {alert['threshold']}", f"fired at: {alert['fired_at']}"]
    if alert["resolution"]:
        lines.append(f"resolution: {alert['resolution']}")
    lines += ["", f"ledger alerts ack {alert['id']}   # take it in hand"]
    return "\n".join(lines) + "\n"


def _send(settings: Settings, row: Any) -> None:
    ident = delivery_id(row.alert_id, row.transition, row.target)
    if row.channel == "webhook":
        post_signed(row.target, row.payload, secret=settings.alert_webhook_secret, delivery_id=ident)
    else:
        send_email(settings, [row.target], email_subject(row.payload), email_body(row.payload), message_id=ident)


def deliver_pending(settings: Settings, database_url: str, now: datetime) -> DeliveryCounts:
    """Send every delivery due at `now` (at most DELIVERIES_PER_PASS), one transaction each; a failure is
    retried after the next of settings.notify_retry_delays_s, and given up after the last."""
    counts = DeliveryCounts()
    engine = _engine(database_url)
    try:
        for _ in range(DELIVERIES_PER_PASS):
            with engine.begin() as connection:  # the row stays locked while it is sent: no second sender
                row = alert_store.claim_due_delivery(connection, now)
                if row is None:
                    break
                try:
                    _send(settings, row)
                except (WebhookFailed, EmailFailed) as exc:
                    again = alert_store.retry_at(now, row.attempts + 1, list(settings.notify_retry_delays_s))
                    alert_store.record_failure(connection, row.id, str(exc), again)
                    if again is None:
                        counts.given_up += 1
                    else:
                        counts.retrying += 1
                else:
                    alert_store.record_sent(connection, row.id, now)
                    counts.sent += 1
    finally:
        engine.dispose()
    return counts


def next_delivery_due(database_url: str) -> datetime | None:
    engine = _engine(database_url)
    try:
        with engine.connect() as connection:
            return alert_store.next_delivery_due(connection)
    finally:
        engine.dispose()


class AlertWatcher:
    """`ledger alerts watch`: evaluate every interval_s and deliver what is due, until stop() or SIGTERM."""

    def __init__(self, settings: Settings, database_url: str, *, interval_s: float | None = None,
                 clock: Callable[[], datetime] = utc_now, log: Callable[[str], None] = lambda line: None) -> None:
        self.settings, self.database_url = settings, database_url
        self.interval_s = interval_s if interval_s is not None else settings.alert_interval_s
        self.clock, self.log = clock, log
        self.evaluations = 0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self, handle_signals: bool = True) -> int:
        """Returns how many evaluations ran."""
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stop())
        next_evaluation = self.clock()
        while not self._stop.is_set():
            now = self.clock()
            try:
                if now >= next_evaluation:
                    result = evaluate_alerts(self.settings, self.database_url, now)
                    self.evaluations += 1
                    next_evaluation = now + timedelta(seconds=self.interval_s)
                    if result.fired or result.escalated or result.resolved:
                        self.log(f"{result.status}: fired {result.fired}, escalated {result.escalated}, "
                                 f"resolved {result.resolved}")
                sent = deliver_pending(self.settings, self.database_url, now)
                if sent.sent or sent.retrying or sent.given_up:
                    self.log(f"deliveries: {sent.sent} sent, {sent.retrying} to retry, {sent.given_up} given up")
                due = next_delivery_due(self.database_url)
            except sqlalchemy.exc.SQLAlchemyError as exc:  # the database is away: try again next interval
                self.log(f"evaluation failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                next_evaluation, due = self.clock() + timedelta(seconds=self.interval_s), None
            wake = min(next_evaluation, due) if due is not None else next_evaluation
            self._stop.wait(max(0.05, min((wake - self.clock()).total_seconds(), self.interval_s)))
        return self.evaluations
