"""The alert rules' measurements, read from the PostgreSQL read models, and the health summary built on them.

Each definition is documented in docs/operations.md ("Alerts"). Times come from the caller's `now`, never
from the database clock, so tests and replays judge a chosen instant.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy
from sqlalchemy import Connection, text

from ledger.alerts import Condition, Measurements, Thresholds, evaluate, overall_status
from ledger.money import InvalidAmount, Money
from runtime.database import make_engine
from runtime.settings import Settings

OPEN_STATUSES = ("requested", "submitted", "at_provider", "retry_wait")
# Providers answering over the network; manual and bank_transfer have no gateway to wait for.
GATEWAY_PROVIDERS = ("stripe", "mobile_money")
GATEWAY_WINDOW = timedelta(minutes=15)
RUN_TOTAL_WINDOW = timedelta(hours=24)


class InvalidAlertSetting(ValueError):
    """A LEDGER_ALERT_* setting cannot be used (the message names it and says why)."""


def thresholds(settings: Settings) -> Thresholds:
    """The settings' thresholds as exact Decimals (a float's shortest repr: 10.0 -> Decimal('10.0'))."""
    try:
        negative = Money.from_major(settings.alert_run_total_max, "USD").is_negative
    except InvalidAmount as exc:
        raise InvalidAlertSetting(f"LEDGER_ALERT_RUN_TOTAL_MAX: {exc}") from None
    if negative:
        raise InvalidAlertSetting(f"LEDGER_ALERT_RUN_TOTAL_MAX: must not be negative, got {settings.alert_run_total_max}")
    return Thresholds(
        failure_rate_pct=Decimal(repr(settings.alert_failure_rate_pct)),
        failure_min_payouts=settings.alert_failure_min_payouts,
        pending_max=settings.alert_pending_max,
        processing_delay_h=Decimal(repr(settings.alert_processing_delay_h)),
        run_total_major=settings.alert_run_total_max,
        gateway_latency_s=Decimal(repr(settings.alert_gateway_latency_s)),
        webhook_backlog_max=settings.alert_webhook_backlog_max,
    )


def read_measurements(connection: Connection, now: datetime, *, failure_window_s: int) -> Measurements:
    """Every measurement at `now`, from the read models (payouts, payout_attempts)."""
    finished = connection.execute(text(
        "SELECT count(*) AS finished, count(*) FILTER (WHERE status = 'failed') AS failed FROM payouts "
        "WHERE status IN ('settled', 'failed') AND finished_at > :since AND finished_at <= :now"),
        {"since": now - timedelta(seconds=failure_window_s), "now": now}).one()
    pending = connection.execute(text(
        "SELECT count(*) AS open, min(requested_at) AS oldest, "
        "count(*) FILTER (WHERE status = 'at_provider' AND provider <> 'manual') AS awaiting "
        "FROM payouts WHERE status = ANY(:open)"), {"open": list(OPEN_STATUSES)}).one()
    totals = connection.execute(text(
        "SELECT currency, sum(net_minor)::bigint AS total FROM payouts "
        "WHERE requested_at > :since AND requested_at <= :now AND status <> 'cancelled' GROUP BY currency"),
        {"since": now - RUN_TOTAL_WINDOW, "now": now})
    # An attempt's answer: the acceptance when the provider accepted it during this attempt (an
    # asynchronous outcome follows), else its final outcome. percentile_disc keeps exact numerics.
    latency = connection.execute(text("""
        WITH answers AS (
            SELECT a.submitted_at,
                   CASE WHEN p.accepted_at >= a.submitted_at
                             AND (a.finished_at IS NULL OR p.accepted_at <= a.finished_at)
                        THEN p.accepted_at ELSE a.finished_at END AS answered_at
            FROM payout_attempts a JOIN payouts p ON p.payout_id = a.payout_id
            WHERE a.provider = ANY(:providers)
        )
        SELECT count(*) AS answers,
               percentile_disc(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM answered_at - submitted_at)) AS p95
        FROM answers WHERE answered_at > :since AND answered_at <= :now"""),
        {"providers": list(GATEWAY_PROVIDERS), "since": now - GATEWAY_WINDOW, "now": now}).one()
    oldest_age_s = None
    if pending.oldest is not None:
        oldest_age_s = max(0, int((now - pending.oldest).total_seconds()))
    p95 = None if latency.p95 is None else max(Decimal(0), Decimal(latency.p95)).quantize(Decimal("0.001"))
    return Measurements(
        finished_payouts=finished.finished, failed_payouts=finished.failed,
        open_payouts=pending.open, oldest_open_age_s=oldest_age_s,
        requested_minor={row.currency: int(row.total) for row in totals},
        gateway_latency_p95_s=p95, gateway_answers=latency.answers, awaiting_provider=pending.awaiting)


def judge(settings: Settings, measured: Measurements) -> list[Condition]:
    """The rules applied to the measurements with the settings' thresholds."""
    try:
        return evaluate(measured, thresholds(settings))
    except InvalidAmount as exc:  # the run total threshold has more decimals than a currency seen has
        raise InvalidAlertSetting(f"LEDGER_ALERT_RUN_TOTAL_MAX: {exc}") from None


def condition_dict(condition: Condition) -> dict[str, Any]:
    return {"rule": condition.rule.value, "key": condition.key, "firing": condition.firing,
            "value": None if condition.value is None else format(condition.value, "f"),
            "threshold": format(condition.threshold, "f"),
            "severity": condition.severity.value if condition.severity else None, "summary": condition.summary}


def measurements_dict(m: Measurements) -> dict[str, Any]:
    data = asdict(m)
    data["requested_minor"] = dict(m.requested_minor)
    data["gateway_latency_p95_s"] = None if m.gateway_latency_p95_s is None else format(m.gateway_latency_p95_s, "f")
    return data


def health_summary(settings: Settings, database_url: str, now: datetime) -> dict[str, Any]:
    """The monitoring endpoint's answer: measurements, each rule's condition now, the open alerts, and an
    overall status (healthy | warning | critical: the worst condition firing now)."""
    from projections.alert_store import list_alerts

    engine = make_engine(database_url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            measured = read_measurements(connection, now, failure_window_s=settings.alert_failure_window_s)
    finally:
        engine.dispose()
    conditions = judge(settings, measured)
    return {"status": overall_status(conditions), "evaluated_at": now.isoformat(),
            "measurements": measurements_dict(measured), "conditions": [condition_dict(c) for c in conditions],
            "open_alerts": list_alerts(database_url, status="open", limit=1000)}
