"""The Prometheus rules and the Grafana dashboard name only metrics that exist, with their labels, and the
rules' thresholds are the LEDGER_ALERT_* defaults."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from ledger.alerts import CRITICAL_FACTOR, Rule
from runtime import metrics
from runtime.settings import Settings

ROOT = Path(__file__).resolve().parents[2] / "monitoring"
RULES = yaml.safe_load((ROOT / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
DASHBOARD = json.loads((ROOT / "grafana" / "payout-ledger.json").read_text())
METRIC_NAME = re.compile(r"\bledger_[a-z_]+\b")
SELECTOR = re.compile(r"(ledger_[a-z_]+)\{([^}]*)\}")
GROUPING = re.compile(r"\bby \(([^)]*)\) \((?:rate|increase)?\(?(ledger_[a-z_]+)")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported() -> dict[str, tuple[str, ...]]:
    """Every sample name runtime.metrics exports -> its label names (read from the metric objects)."""
    names = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            labels = tuple(value._labelnames) + (("le",) if value._type == "histogram" else ())
            for suffix in SUFFIXES[value._type]:
                names[value._name + suffix] = labels
    return names


def expressions() -> list[str]:
    rules = [rule["expr"] for rule in RULES]
    panels = [target["expr"] for panel in DASHBOARD["panels"] for target in panel["targets"]]
    return rules + panels


@pytest.mark.parametrize("expr", expressions())
def test_every_metric_and_label_used_exists(expr):
    known = exported()
    used = METRIC_NAME.findall(expr)
    assert used, f"no ledger metric in {expr!r}"
    for name in used:
        assert name in known, f"{name} is not exported by runtime/metrics.py"
    for name, matchers in SELECTOR.findall(expr):
        for label in re.findall(r"(\w+)\s*=~?", matchers):
            assert label in known[name], f"{name} has no label {label!r}"
    for labels, name in GROUPING.findall(expr):
        for label in (part.strip() for part in labels.split(",")):
            assert label in known[name], f"{name} has no label {label!r} to group by"


def test_the_rules_cover_the_six_alerts_and_consumer_lag():
    rules = {rule["labels"]["rule"] for rule in RULES}
    assert {r.value for r in Rule} | {"consumer_lag"} <= rules
    assert all(rule["labels"]["severity"] in ("warning", "critical") for rule in RULES)
    assert len({rule["alert"] for rule in RULES}) == len(RULES)


def test_rule_thresholds_are_the_settings_defaults():
    checked = 0
    for rule in RULES:
        annotations = rule["annotations"]
        if "setting" not in annotations:
            continue
        assert annotations["setting"] in Settings.model_fields, annotations["setting"]
        if "threshold_factor" not in annotations:
            continue  # judged by the service itself (ledger_alerts_open)
        default = Decimal(str(Settings.model_fields[annotations["setting"]].default))
        factor = int(annotations["threshold_factor"])
        assert factor in (1, CRITICAL_FACTOR) and (factor == 2) == (rule["labels"]["severity"] == "critical")
        compared = Decimal(re.search(r">\s*([0-9.]+)\s*$", rule["expr"].strip()).group(1))
        assert compared == default * factor, f"{rule['alert']}: {compared} is not {factor} x {default}"
        checked += 1
    assert checked == 8


def test_the_dashboard_shows_what_operators_watch():
    used = {name for expr in expressions()[len(RULES):] for name in METRIC_NAME.findall(expr)}
    assert {"ledger_events_appended_total", "ledger_dead_letters_total", "ledger_payouts_settled_total",
            "ledger_payouts_failed_total", "ledger_payout_amount_minor_total", "ledger_provider_call_seconds_bucket",
            "ledger_retry_queue_depth", "ledger_open_payouts", "ledger_consumer_lag_seconds",
            "ledger_alerts_open"} <= used
    assert DASHBOARD["uid"] == "payout-ledger" and len({p["id"] for p in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])
