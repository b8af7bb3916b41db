"""Alert rules and the alert lifecycle (ledger/alerts.py): pure, no database."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from ledger.alerts import (AlertStatus, AlertTransitionRefused, Condition, Measurements, OpenAlert, Rule, Severity,
                           Thresholds, Transition, acknowledge, evaluate, overall_status, plan_steps, resolve)
from ledger.money import InvalidAmount

DEFAULTS = Thresholds()


def by_rule(conditions: list[Condition]) -> dict[tuple[str, str], Condition]:
    return {(c.rule.value, c.key): c for c in conditions}


def judged(**measured) -> dict[tuple[str, str], Condition]:
    return by_rule(evaluate(Measurements(**measured), DEFAULTS))


def test_nothing_measured_is_healthy_and_every_rule_is_judged():
    conditions = evaluate(Measurements(), DEFAULTS)
    assert [c.rule for c in conditions] == [Rule.FAILURE_RATE, Rule.PENDING_PAYOUTS, Rule.PROCESSING_DELAY,
                                            Rule.GATEWAY_LATENCY, Rule.WEBHOOK_BACKLOG]
    assert not any(c.firing for c in conditions) and overall_status(conditions) == "healthy"
    assert by_rule(conditions)[("failure_rate", "")].value is None  # not judged on zero payouts


@pytest.mark.parametrize("failed, finished, severity", [
    (1, 10, None),                     # exactly 10 %: not more than the threshold
    (11, 100, Severity.WARNING),       # 11 %
    (20, 100, Severity.WARNING),       # exactly 2x: still a warning
    (21, 100, Severity.CRITICAL),
    (1, 4, Severity.CRITICAL),         # 25 %
])
def test_failure_rate_fires_above_the_threshold_and_is_critical_above_twice_it(failed, finished, severity):
    condition = judged(failed_payouts=failed, finished_payouts=finished)[("failure_rate", "")]
    assert condition.severity is severity and condition.firing is (severity is not None)
    assert condition.value == (Decimal(failed * 100) / finished).quantize(Decimal("0.01"))
    assert condition.threshold == Decimal("10")


def test_failure_rate_is_not_judged_below_the_minimum_of_finished_payouts():
    thresholds = Thresholds(failure_min_payouts=5)
    condition = evaluate(Measurements(failed_payouts=4, finished_payouts=4), thresholds)[0]
    assert not condition.firing and condition.value is None and "5 needed" in condition.summary


def test_failure_rate_compares_exactly_not_on_the_rounded_percentage():
    # 1 of 3 is 33.333...%: a threshold of 33.33 fires, one of 33.34 does not
    assert evaluate(Measurements(failed_payouts=1, finished_payouts=3), Thresholds(failure_rate_pct=Decimal("33.33")))[0].firing
    assert not evaluate(Measurements(failed_payouts=1, finished_payouts=3),
                        Thresholds(failure_rate_pct=Decimal("33.34")))[0].firing


def test_counts_and_delay_fire_above_their_thresholds():
    c = judged(open_payouts=51, oldest_open_age_s=24 * 3600 + 1, awaiting_provider=101)
    assert c[("pending_payouts", "")].severity is Severity.WARNING and c[("pending_payouts", "")].value == 51
    assert c[("processing_delay", "")].severity is Severity.WARNING
    assert c[("processing_delay", "")].value == Decimal("24.00")
    assert c[("webhook_backlog", "")].severity is Severity.CRITICAL
    quiet = judged(open_payouts=50, oldest_open_age_s=24 * 3600, awaiting_provider=50)
    assert not any(condition.firing for condition in quiet.values())
    assert judged(oldest_open_age_s=48 * 3600 + 1)[("processing_delay", "")].severity is Severity.CRITICAL


def test_run_total_is_judged_per_currency_in_minor_units_with_its_exponent():
    c = judged(requested_minor={"USD": 1_000_001, "XOF": 10_000, "BHD": 20_000_001, "JPY": 25_000})
    assert c[("run_total", "USD")].severity is Severity.WARNING      # 10,000.01 > 10,000.00
    assert c[("run_total", "USD")].value == Decimal("10000.01")
    assert c[("run_total", "USD")].threshold == Decimal("10000.00")
    assert not c[("run_total", "XOF")].firing                        # 10,000 XOF is not more than 10,000
    assert c[("run_total", "BHD")].severity is Severity.CRITICAL     # 20,000.001 > 2 x 10,000.000
    assert c[("run_total", "BHD")].threshold == Decimal("10000.000")
    assert c[("run_total", "JPY")].severity is Severity.CRITICAL
    assert "USD 10000.01" in c[("run_total", "USD")].summary


def test_a_run_total_threshold_finer_than_a_currency_is_refused_naming_it():
    with pytest.raises(InvalidAmount, match="XOF"):
        evaluate(Measurements(requested_minor={"XOF": 1}), Thresholds(run_total_major="10000.50"))


def test_gateway_latency_is_judged_only_with_answers():
    assert not judged(gateway_latency_p95_s=Decimal("9"), gateway_answers=0)[("gateway_latency", "")].firing
    c = judged(gateway_latency_p95_s=Decimal("3.2"), gateway_answers=7)[("gateway_latency", "")]
    assert c.severity is Severity.WARNING and c.value == Decimal("3.200") and "7 answers" in c.summary


def test_overall_status_is_the_worst_firing_condition():
    assert overall_status(evaluate(Measurements(open_payouts=51), DEFAULTS)) == "warning"
    assert overall_status(evaluate(Measurements(open_payouts=51, failed_payouts=1, finished_payouts=2),
                                   DEFAULTS)) == "critical"


# --- the lifecycle ----------------------------------------------------------------------------------------


def pending(n: int) -> list[Condition]:
    return evaluate(Measurements(open_payouts=n), DEFAULTS)


def open_alert(alert_id=1, rule=Rule.PENDING_PAYOUTS, key="", severity=Severity.WARNING,
               status=AlertStatus.FIRING) -> OpenAlert:
    return OpenAlert(alert_id, rule, key, severity, status, Decimal(50))


def test_a_firing_condition_without_an_open_alert_fires_one():
    steps = plan_steps([], pending(60))
    assert [(s.condition.rule, s.transition, s.alert_id) for s in steps] == [
        (Rule.PENDING_PAYOUTS, Transition.FIRED, None)]


def test_an_open_alert_is_refreshed_escalated_or_resolved_when_cleared():
    assert [(s.transition, s.alert_id) for s in plan_steps([open_alert()], pending(60))] == [(None, 1)]
    assert [(s.transition, s.alert_id) for s in plan_steps([open_alert()], pending(101))] == [
        (Transition.ESCALATED, 1)]
    critical = open_alert(severity=Severity.CRITICAL, status=AlertStatus.ACKNOWLEDGED)
    assert [(s.transition, s.alert_id) for s in plan_steps([critical], pending(60))] == [(None, 1)]  # eases quietly
    assert [(s.transition, s.alert_id) for s in plan_steps([critical], pending(3))] == [(Transition.RESOLVED, 1)]


def test_an_open_alert_whose_key_is_no_longer_measured_resolves():
    usd = open_alert(7, Rule.RUN_TOTAL, "USD")
    steps = plan_steps([usd], evaluate(Measurements(), DEFAULTS))
    assert [(s.condition.rule, s.condition.key, s.transition, s.alert_id) for s in steps] == [
        (Rule.RUN_TOTAL, "USD", Transition.RESOLVED, 7)]


def test_operator_transitions_and_refusals():
    assert acknowledge(AlertStatus.FIRING) is AlertStatus.ACKNOWLEDGED
    assert resolve(AlertStatus.FIRING) is AlertStatus.RESOLVED
    assert resolve(AlertStatus.ACKNOWLEDGED) is AlertStatus.RESOLVED
    with pytest.raises(AlertTransitionRefused, match="already acknowledged"):
        acknowledge(AlertStatus.ACKNOWLEDGED)
    with pytest.raises(AlertTransitionRefused, match="resolved"):
        acknowledge(AlertStatus.RESOLVED)
    with pytest.raises(AlertTransitionRefused, match="already resolved"):
        resolve(AlertStatus.RESOLVED)


class Model:
    """An in-memory alert store driven by plan_steps and operator actions: the lifecycle's reference."""

    def __init__(self) -> None:
        self.alerts: dict[int, dict] = {}
        self.fired = 0

    def open(self) -> list[OpenAlert]:
        return [OpenAlert(i, a["rule"], a["key"], a["severity"], a["status"], Decimal(50))
                for i, a in self.alerts.items() if a["status"].open]

    def evaluate(self, conditions: list[Condition]) -> None:
        for step in plan_steps(self.open(), conditions):
            if step.transition is Transition.FIRED:
                self.fired += 1
                self.alerts[len(self.alerts) + 1] = {"rule": step.condition.rule, "key": step.condition.key,
                                                     "severity": step.condition.severity, "status": AlertStatus.FIRING}
            elif step.transition is Transition.RESOLVED:
                self.alerts[step.alert_id]["status"] = AlertStatus.RESOLVED
            else:
                self.alerts[step.alert_id]["severity"] = step.condition.severity

    def operator(self, action: str) -> None:
        for alert in self.alerts.values():
            if alert["status"].open:
                try:
                    alert["status"] = (acknowledge if action == "ack" else resolve)(alert["status"])
                except AlertTransitionRefused:
                    assert action == "ack" and alert["status"] is AlertStatus.ACKNOWLEDGED


@hypothesis_settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.integers(min_value=0, max_value=150), st.sampled_from(["ack", "resolve"])),
                min_size=1, max_size=40))
def test_lifecycle_keeps_one_open_alert_exactly_while_the_condition_holds(script):
    model, was_firing, expected_fired = Model(), False, 0
    for item in script:
        if isinstance(item, str):
            had_open = bool(model.open())
            model.operator(item)
            if item == "resolve" and had_open:
                was_firing = False  # the next evaluation that still finds it firing raises a new alert
            continue
        conditions = pending(item)
        firing = conditions[1].firing
        expected_fired += firing and not was_firing
        model.evaluate(conditions)
        opened = model.open()
        assert len(opened) == (1 if firing else 0)
        if firing:  # escalated, or eased back by a refresh
            assert opened[0].severity is conditions[1].severity
        was_firing = firing
    assert model.fired == expected_fired
    assert all(len([a for a in model.open() if a.rule is rule]) <= 1 for rule in Rule)
