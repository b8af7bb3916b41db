"""Alert rules and the alert lifecycle, as pure functions: measurements in, conditions and steps out."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from enum import Enum
from typing import Iterable, Mapping

from ledger.guards import require
from ledger.money import Money

# A rule fires at warning when its value passes the threshold, and at critical past this many times it
# (2x keeps one simple, documented rule for all six).
CRITICAL_FACTOR = 2


class Rule(str, Enum):
    FAILURE_RATE = "failure_rate"
    PENDING_PAYOUTS = "pending_payouts"
    PROCESSING_DELAY = "processing_delay"
    RUN_TOTAL = "run_total"  # one alert per currency: amounts in different currencies are never added
    GATEWAY_LATENCY = "gateway_latency"
    WEBHOOK_BACKLOG = "webhook_backlog"


class Severity(str, Enum):
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return 2 if self is Severity.CRITICAL else 1


class AlertStatus(str, Enum):
    FIRING = "firing"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"

    @property
    def open(self) -> bool:
        return self is not AlertStatus.RESOLVED


class Resolution(str, Enum):
    CLEARED = "cleared"    # the condition no longer holds
    OPERATOR = "operator"  # a person resolved it; if the condition still holds, a new alert fires


class Transition(str, Enum):
    FIRED = "fired"
    ESCALATED = "escalated"  # warning -> critical while open
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class AlertNotFound(LookupError):
    """No alert has this id."""


class AlertTransitionRefused(Exception):
    """The alert's status does not allow this operator action (the reason says why)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Thresholds:
    """Where each rule fires (runtime settings LEDGER_ALERT_*); numbers are exact Decimals, never floats."""

    failure_rate_pct: Decimal = Decimal("10")
    failure_min_payouts: int = 1
    pending_max: int = 50
    processing_delay_h: Decimal = Decimal("24")
    run_total_major: str = "10000.00"  # per currency, converted with its exponent
    gateway_latency_s: Decimal = Decimal("3")
    webhook_backlog_max: int = 50


@dataclass(frozen=True)
class Measurements:
    """What the read models say at one instant (processors/alert_measurements.py defines each one)."""

    finished_payouts: int = 0           # settled + failed within the failure window
    failed_payouts: int = 0
    open_payouts: int = 0               # requested, submitted, at_provider, retry_wait
    oldest_open_age_s: int | None = None
    requested_minor: Mapping[str, int] = field(default_factory=dict)  # currency -> minor units, last 24 h
    gateway_latency_p95_s: Decimal | None = None
    gateway_answers: int = 0
    awaiting_provider: int = 0          # at a provider, waiting for an asynchronous outcome


@dataclass(frozen=True)
class Condition:
    """One rule judged once: value None when it could not be judged (then it does not fire)."""

    rule: Rule
    key: str  # the currency for run_total, '' otherwise
    firing: bool
    value: Decimal | None
    threshold: Decimal
    severity: Severity | None
    summary: str


def _severity(over: bool, over_critical: bool) -> Severity | None:
    return Severity.CRITICAL if over_critical else Severity.WARNING if over else None


def _condition(rule: Rule, value: Decimal | None, threshold: Decimal, severity: Severity | None, summary: str,
               key: str = "") -> Condition:
    return Condition(rule, key, severity is not None, value, threshold, severity, summary)


def _quantize(value: Decimal, places: str) -> Decimal:
    return value.quantize(Decimal(places), rounding=ROUND_HALF_UP)


def _count_rule(rule: Rule, count: int, maximum: int, what: str) -> Condition:
    severity = _severity(count > maximum, count > CRITICAL_FACTOR * maximum)
    return _condition(rule, Decimal(count), Decimal(maximum), severity, f"{count} {what} (threshold {maximum})")


def _failure_rate(m: Measurements, t: Thresholds) -> Condition:
    threshold = t.failure_rate_pct
    if m.finished_payouts < t.failure_min_payouts:
        return _condition(Rule.FAILURE_RATE, None, threshold, None,
                          f"not judged: {m.finished_payouts} payouts finished in the window, "
                          f"{t.failure_min_payouts} needed")
    # Compared as failed * 100 > pct * finished: exact, whatever the rounding of the shown percentage.
    failed_pct_times_finished = Decimal(m.failed_payouts * 100)
    severity = _severity(failed_pct_times_finished > threshold * m.finished_payouts,
                         failed_pct_times_finished > CRITICAL_FACTOR * threshold * m.finished_payouts)
    rate = _quantize(failed_pct_times_finished / m.finished_payouts, "0.01")
    return _condition(Rule.FAILURE_RATE, rate, threshold, severity,
                      f"{rate}% of payouts failed ({m.failed_payouts} of {m.finished_payouts}; threshold {threshold}%)")


def _processing_delay(m: Measurements, t: Thresholds) -> Condition:
    if m.oldest_open_age_s is None:
        return _condition(Rule.PROCESSING_DELAY, Decimal(0), t.processing_delay_h, None, "no open payout")
    limit_s = t.processing_delay_h * 3600
    severity = _severity(m.oldest_open_age_s > limit_s, m.oldest_open_age_s > CRITICAL_FACTOR * limit_s)
    hours = _quantize(Decimal(m.oldest_open_age_s) / 3600, "0.01")
    return _condition(Rule.PROCESSING_DELAY, hours, t.processing_delay_h, severity,
                      f"the oldest open payout was requested {hours} h ago (threshold {t.processing_delay_h} h)")


def _run_totals(m: Measurements, t: Thresholds) -> list[Condition]:
    conditions = []
    for code in sorted(m.requested_minor):
        total = Money.of(m.requested_minor[code], code)
        limit = Money.from_major(t.run_total_major, code)  # exact, with the currency's exponent
        severity = _severity(total.amount_minor > limit.amount_minor,
                             total.amount_minor > CRITICAL_FACTOR * limit.amount_minor)
        conditions.append(_condition(
            Rule.RUN_TOTAL, Decimal(total.to_major_string()), Decimal(limit.to_major_string()), severity,
            f"{total} of payouts requested in the last 24 h (threshold {limit})", key=code))
    return conditions


def _gateway_latency(m: Measurements, t: Thresholds) -> Condition:
    if m.gateway_latency_p95_s is None or m.gateway_answers == 0:
        return _condition(Rule.GATEWAY_LATENCY, None, t.gateway_latency_s, None,
                          "not judged: no provider answer in the last 15 min")
    p95 = m.gateway_latency_p95_s
    severity = _severity(p95 > t.gateway_latency_s, p95 > CRITICAL_FACTOR * t.gateway_latency_s)
    shown = _quantize(p95, "0.001")
    return _condition(Rule.GATEWAY_LATENCY, shown, t.gateway_latency_s, severity,
                      f"providers answered in {shown} s at p95 over {m.gateway_answers} answers "
                      f"(threshold {t.gateway_latency_s} s)")


def evaluate(m: Measurements, t: Thresholds) -> list[Condition]:
    """Every rule judged on the measurements: one condition per rule, and per currency for run_total."""
    return [
        _failure_rate(m, t),
        _count_rule(Rule.PENDING_PAYOUTS, m.open_payouts, t.pending_max, "payouts open"),
        _processing_delay(m, t),
        *_run_totals(m, t),
        _gateway_latency(m, t),
        _count_rule(Rule.WEBHOOK_BACKLOG, m.awaiting_provider, t.webhook_backlog_max,
                    "payouts await an asynchronous outcome from their provider"),
    ]


def overall_status(conditions: Iterable[Condition]) -> str:
    """healthy, warning or critical: the worst firing condition."""
    ranks = [c.severity.rank for c in conditions if c.firing and c.severity is not None]
    return {0: "healthy", 1: "warning", 2: "critical"}[max(ranks, default=0)]


# --- the lifecycle -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenAlert:
    alert_id: int
    rule: Rule
    key: str
    severity: Severity
    status: AlertStatus
    threshold: Decimal = Decimal(0)


@dataclass(frozen=True)
class Step:
    """What one evaluation does to one (rule, key): transition None only refreshes value and summary."""

    condition: Condition
    transition: Transition | None
    alert_id: int | None  # None: a new alert (FIRED)


def cleared(rule: Rule, key: str, threshold: Decimal) -> Condition:
    """The condition of an open alert whose (rule, key) was not measured at all (a currency with no payouts)."""
    return _condition(rule, None, threshold, None, "no longer measured", key=key)


def plan_steps(open_alerts: Iterable[OpenAlert], conditions: Iterable[Condition]) -> list[Step]:
    """Apply one evaluation to the open alerts: fire, escalate, refresh or resolve (cleared)."""
    by_key: dict[tuple[Rule, str], OpenAlert] = {}
    for alert in open_alerts:
        require(alert.status.open, f"alert {alert.alert_id} is not open")
        require((alert.rule, alert.key) not in by_key, f"two open alerts for {alert.rule.value} {alert.key!r}")
        by_key[(alert.rule, alert.key)] = alert
    steps: list[Step] = []
    seen: set[tuple[Rule, str]] = set()
    for condition in conditions:
        identity = (condition.rule, condition.key)
        require(identity not in seen, f"{condition.rule.value} {condition.key!r} judged twice")
        seen.add(identity)
        alert = by_key.get(identity)
        if alert is None:
            if condition.firing:
                steps.append(Step(condition, Transition.FIRED, None))
        elif not condition.firing:
            steps.append(Step(condition, Transition.RESOLVED, alert.alert_id))
        elif condition.severity is not None and condition.severity.rank > alert.severity.rank:
            steps.append(Step(condition, Transition.ESCALATED, alert.alert_id))
        else:
            steps.append(Step(condition, None, alert.alert_id))
    for identity, alert in by_key.items():
        if identity not in seen:
            steps.append(Step(cleared(alert.rule, alert.key, alert.threshold), Transition.RESOLVED, alert.alert_id))
    return steps


def acknowledge(status: AlertStatus) -> AlertStatus:
    """An operator takes a firing alert in hand."""
    if status is AlertStatus.ACKNOWLEDGED:
        raise AlertTransitionRefused("the alert is already acknowledged")
    if status is AlertStatus.RESOLVED:
        raise AlertTransitionRefused("the alert is resolved: nothing to acknowledge")
    return AlertStatus.ACKNOWLEDGED


def resolve(status: AlertStatus) -> AlertStatus:
    """An operator closes an open alert (a new one fires if the condition still holds at the next evaluation)."""
    if status is AlertStatus.RESOLVED:
        raise AlertTransitionRefused("the alert is already resolved")
    return AlertStatus.RESOLVED
