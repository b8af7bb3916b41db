"""`ledger alerts evaluate|watch|list|ack|resolve`: alerts evaluated in the service (docs/operations.md)."""

from __future__ import annotations

import logging

import getpass
from datetime import datetime, timezone

import click
from rich.table import Table

from commands.output import start_logging, console, emit_json, errors, fail, metrics_port_option
from ledger.alerts import AlertNotFound, AlertTransitionRefused
from processors.alert_measurements import InvalidAlertSetting
from processors.alerter import AlertWatcher, deliver_pending, evaluate_alerts
from projections.alert_store import STATUS_FILTERS, acknowledge_alert, list_alerts, resolve_alert
from runtime.metrics import mark_ready, start_metrics_server
from runtime.settings import Settings
from runtime.stack import connections

SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow"}


def _database() -> tuple[Settings, str]:
    settings = Settings()
    return settings, connections(settings)[1]


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


@click.group(short_help="Alerts: evaluate, watch, list, acknowledge, resolve.")
def alerts() -> None:
    """Alerts on failure rate, open payouts, processing delay, run totals, provider latency and the
    backlog of provider outcomes; thresholds are LEDGER_ALERT_* settings (docs/operations.md)."""


@alerts.command(short_help="Evaluate every rule once, store transitions, send what is due.")
@click.option("--json", "as_json", is_flag=True)
def evaluate(as_json: bool) -> None:
    """Judge every rule now; fire, escalate or resolve alerts; then send due deliveries once.
    Exit 0 when healthy, 3 when any rule fires (warning or critical), 1 on an error."""
    settings, database_url = _database()
    now = datetime.now(timezone.utc)
    try:
        result = evaluate_alerts(settings, database_url, now)
    except InvalidAlertSetting as exc:
        fail(str(exc))
    sent = deliver_pending(settings, database_url, now)
    if as_json:
        emit_json({**result.as_dict(), "deliveries": {"sent": sent.sent, "retrying": sent.retrying,
                                                      "given_up": sent.given_up}})
    else:
        table = Table("rule", "key", "value", "threshold", "state", "summary")
        for c in result.conditions:
            state = c.severity.value if c.severity else "ok"
            table.add_row(c.rule.value, c.key, "-" if c.value is None else str(c.value), str(c.threshold),
                          f"[{SEVERITY_STYLE.get(state, 'green')}]{state}[/]", c.summary)
        console.print(table)
        console.print(f"status: {result.status}; fired {result.fired or '-'}, escalated {result.escalated or '-'}, "
                      f"resolved {result.resolved or '-'}; deliveries {sent.sent} sent, {sent.retrying} to retry, "
                      f"{sent.given_up} given up", highlight=False)
    if result.status != "healthy":
        raise SystemExit(3)


@alerts.command(short_help="Evaluate every S seconds and deliver, until SIGTERM/Ctrl-C.")
@click.option("--every", "every_s", type=click.FloatRange(min=0.1), default=None,
              help="Seconds between evaluations (default: LEDGER_ALERT_INTERVAL_S).")
@metrics_port_option
def watch(every_s: float | None, metrics_port: int | None) -> None:
    """The alerting loop: several may run (evaluations are serialised in PostgreSQL, each delivery is sent by one)."""
    settings, database_url = _database()
    start_logging(settings, "alerts")
    start_metrics_server(metrics_port)
    log = logging.getLogger("ledger.alerts")
    watcher = AlertWatcher(settings, database_url, interval_s=every_s, log=log.info)
    mark_ready()  # /ready: its evaluation loop starts now
    try:
        evaluations = watcher.run()
    except InvalidAlertSetting as exc:
        fail(str(exc))
    errors.print(f"alerts watch stopped after {evaluations} evaluations", highlight=False)


@alerts.command("list", short_help="Alerts, newest first.")
@click.option("--status", type=click.Choice(list(STATUS_FILTERS)), default=None,
              help="open = firing + acknowledged (default: all).")
@click.option("--limit", type=click.IntRange(1, 1000), default=100)
@click.option("--json", "as_json", is_flag=True)
def list_command(status: str | None, limit: int, as_json: bool) -> None:
    rows = list_alerts(_database()[1], status=status, limit=limit)
    if as_json:
        emit_json(rows)
        return
    table = Table("id", "rule", "key", "severity", "status", "fired at", "summary")
    for row in rows:
        table.add_row(str(row["id"]), row["rule"], row["key"],
                      f"[{SEVERITY_STYLE[row['severity']]}]{row['severity']}[/]", row["status"], row["fired_at"],
                      row["summary"])
    console.print(table if rows else "no alerts")


def _operator_action(action, alert_id: int, actor: str, as_json: bool) -> None:  # noqa: ANN001
    try:
        row = action(_database()[1], alert_id, actor)
    except AlertNotFound as exc:
        fail(str(exc))
    except (AlertTransitionRefused, ValueError) as exc:
        fail(f"alert {alert_id}: {exc}")
    if as_json:
        emit_json(row)
    else:
        console.print(f"alert {row['id']} ({row['rule']}{' ' + row['key'] if row['key'] else ''}) is {row['status']}",
                      highlight=False)


@alerts.command(short_help="Acknowledge a firing alert.")
@click.argument("alert_id", type=int)
@click.option("--actor", default=_default_actor, show_default="the current user", help="Who.")
@click.option("--json", "as_json", is_flag=True)
def ack(alert_id: int, actor: str, as_json: bool) -> None:
    """Firing -> acknowledged: someone has it in hand. It still resolves by itself once the condition clears."""
    _operator_action(acknowledge_alert, alert_id, actor, as_json)


@alerts.command(short_help="Resolve an open alert by hand.")
@click.argument("alert_id", type=int)
@click.option("--actor", default=_default_actor, show_default="the current user", help="Who.")
@click.option("--json", "as_json", is_flag=True)
def resolve(alert_id: int, actor: str, as_json: bool) -> None:
    """Open -> resolved (resolution 'operator'). If the condition still holds at the next evaluation, a new
    alert fires."""
    _operator_action(resolve_alert, alert_id, actor, as_json)
