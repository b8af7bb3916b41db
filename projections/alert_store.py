"""Alerts in PostgreSQL: their lifecycle rows, operator actions, and the outbox of their deliveries.

The public functions (list_alerts, get_alert, acknowledge_alert, resolve_alert) are what the HTTP API
and the CLI call; AlertNotFound and AlertTransitionRefused come from ledger/alerts.py. The rest serves
processors/alerter.py and takes an open connection, so an evaluation is one transaction.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Iterable

import sqlalchemy
from sqlalchemy import Connection, text

from ledger.alerts import (AlertNotFound, AlertStatus, OpenAlert, Resolution, Rule, Severity, Step,
                           Transition, acknowledge, resolve)
from runtime.database import make_engine

STATUS_FILTERS = {"open": ("firing", "acknowledged"), "firing": ("firing",),
                  "acknowledged": ("acknowledged",), "resolved": ("resolved",)}
LIMIT_MAX = 1000
COLUMNS = ("id, rule, key, severity, status, summary, value, threshold, fired_at, last_evaluated_at, "
           "acknowledged_at, acknowledged_by, resolved_at, resolved_by, resolution")


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat() if value is not None else None


def _number(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def alert_dict(row: Any) -> dict[str, Any]:
    """An alert row as JSON-serialisable data: ISO timestamps, numbers as exact strings."""
    return {"id": row.id, "rule": row.rule, "key": row.key, "severity": row.severity, "status": row.status,
            "summary": row.summary, "value": _number(row.value), "threshold": _number(row.threshold),
            "fired_at": _iso(row.fired_at), "last_evaluated_at": _iso(row.last_evaluated_at),
            "acknowledged_at": _iso(row.acknowledged_at), "acknowledged_by": row.acknowledged_by,
            "resolved_at": _iso(row.resolved_at), "resolved_by": row.resolved_by, "resolution": row.resolution}


def _engine(database_url: str) -> sqlalchemy.Engine:
    return make_engine(database_url, poolclass=sqlalchemy.pool.NullPool)


def list_alerts(database_url: str, *, status: str | None = None, limit: int = 100) -> list[dict]:
    """Alerts newest first; status: open (firing + acknowledged), firing, acknowledged, resolved, or None for all."""
    if status is not None and status not in STATUS_FILTERS:
        raise ValueError(f"status: must be one of {', '.join(STATUS_FILTERS)}, got {status!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= LIMIT_MAX:
        raise ValueError(f"limit: must be an integer from 1 to {LIMIT_MAX}, got {limit!r}")
    where = "WHERE status = ANY(:statuses)" if status else ""
    engine = _engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text(f"SELECT {COLUMNS} FROM alerts {where} ORDER BY fired_at DESC, id DESC "
                                           "LIMIT :limit"),
                                      {"statuses": list(STATUS_FILTERS.get(status or "", ())), "limit": limit})
            return [alert_dict(row) for row in rows]
    finally:
        engine.dispose()


def get_alert(database_url: str, alert_id: int) -> dict:
    """One alert; raises AlertNotFound."""
    engine = _engine(database_url)
    try:
        with engine.connect() as connection:
            return alert_dict(_locked(connection, alert_id, lock=False))
    finally:
        engine.dispose()


def _locked(connection: Connection, alert_id: int, *, lock: bool = True) -> Any:
    row = connection.execute(text(f"SELECT {COLUMNS} FROM alerts WHERE id = :id{' FOR UPDATE' if lock else ''}"),
                             {"id": alert_id}).one_or_none()
    if row is None:
        raise AlertNotFound(f"no alert with id {alert_id}")
    return row


def _operator_action(database_url: str, alert_id: int, actor: str, action: str) -> dict:
    if not isinstance(actor, str) or not actor.strip():
        raise ValueError("actor: must name who acts (a non-empty string)")
    engine = _engine(database_url)
    try:
        with engine.begin() as connection:
            row = _locked(connection, alert_id)
            if action == "acknowledge":
                acknowledge(AlertStatus(row.status))  # raises AlertTransitionRefused
                connection.execute(text("UPDATE alerts SET status = 'acknowledged', acknowledged_at = now(), "
                                        "acknowledged_by = :actor WHERE id = :id"), {"id": alert_id, "actor": actor})
            else:
                resolve(AlertStatus(row.status))
                connection.execute(text("UPDATE alerts SET status = 'resolved', resolved_at = now(), resolved_by = :actor, "
                                        "resolution = :resolution WHERE id = :id"),
                                   {"id": alert_id, "actor": actor, "resolution": Resolution.OPERATOR.value})
            return alert_dict(_locked(connection, alert_id, lock=False))
    finally:
        engine.dispose()


def acknowledge_alert(database_url: str, alert_id: int, actor: str) -> dict:
    """Firing -> acknowledged by `actor`; raises AlertNotFound or AlertTransitionRefused."""
    return _operator_action(database_url, alert_id, actor, "acknowledge")


def resolve_alert(database_url: str, alert_id: int, actor: str) -> dict:
    """Firing or acknowledged -> resolved by `actor` (resolution 'operator'); raises AlertNotFound or
    AlertTransitionRefused. If the condition still holds at the next evaluation, a new alert fires."""
    return _operator_action(database_url, alert_id, actor, "resolve")


# --- the evaluator's side (one transaction, processors/alerter.py) -----------------------------------------


def lock_evaluation(connection: Connection) -> None:
    """Serialise evaluations of this schema's alerts (two `ledger alerts watch` may run for availability)."""
    connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '/ledger-alerts'))"))


def open_alerts(connection: Connection) -> list[OpenAlert]:
    rows = connection.execute(text("SELECT id, rule, key, severity, status, threshold FROM alerts "
                                   "WHERE status <> 'resolved' ORDER BY id FOR UPDATE"))
    return [OpenAlert(r.id, Rule(r.rule), r.key, Severity(r.severity), AlertStatus(r.status), r.threshold) for r in rows]


def apply_step(connection: Connection, step: Step, now: datetime) -> tuple[int, Transition | None]:
    """Write one planned step; returns the alert id and the transition it made."""
    c = step.condition
    values = {"rule": c.rule.value, "key": c.key, "summary": c.summary, "value": c.value, "threshold": c.threshold,
              "now": now, "severity": c.severity.value if c.severity else None, "id": step.alert_id}
    if step.transition is Transition.FIRED:
        alert_id = connection.execute(text(
            "INSERT INTO alerts (rule, key, severity, status, summary, value, threshold, fired_at, last_evaluated_at) "
            "VALUES (:rule, :key, :severity, 'firing', :summary, :value, :threshold, :now, :now) RETURNING id"),
            values).scalar_one()
        return alert_id, step.transition
    if step.transition is Transition.RESOLVED:
        # The summary keeps what fired; the cleared value is the latest measurement.
        connection.execute(text(
            "UPDATE alerts SET status = 'resolved', resolution = 'cleared', resolved_at = :now, value = :value, "
            "last_evaluated_at = :now WHERE id = :id"), values)
    else:  # escalated, or a refresh (severity may also ease back without a delivery)
        connection.execute(text(
            "UPDATE alerts SET severity = :severity, summary = :summary, value = :value, threshold = :threshold, "
            "last_evaluated_at = :now WHERE id = :id"), values)
    return step.alert_id, step.transition  # type: ignore[return-value]


def enqueue_deliveries(connection: Connection, alert_id: int, transition: Transition,
                       targets: Iterable[tuple[str, str]], now: datetime) -> int:
    """One outbox row per (channel, target) with the alert as it is now; returns how many were new."""
    payload = {"transition": transition.value, "occurred_at": _iso(now),
               "alert": alert_dict(_locked(connection, alert_id, lock=False))}
    added = 0
    for channel, target in targets:
        added += connection.execute(text(
            "INSERT INTO alert_deliveries (alert_id, transition, channel, target, payload, next_attempt_at, created_at) "
            "VALUES (:alert_id, :transition, :channel, :target, CAST(:payload AS jsonb), :now, :now) "
            "ON CONFLICT ON CONSTRAINT alert_deliveries_once DO NOTHING"),
            {"alert_id": alert_id, "transition": transition.value, "channel": channel, "target": target,
             "payload": json.dumps(payload), "now": now}).rowcount
    return added


def claim_due_delivery(connection: Connection, now: datetime) -> Any | None:
    """The oldest pending delivery due at `now`, locked; another deliverer skips it."""
    return connection.execute(text(
        "SELECT id, alert_id, transition, channel, target, payload, attempts FROM alert_deliveries "
        "WHERE status = 'pending' AND next_attempt_at <= :now ORDER BY next_attempt_at, id "
        "LIMIT 1 FOR UPDATE SKIP LOCKED"), {"now": now}).one_or_none()


def record_sent(connection: Connection, delivery_id: int, now: datetime) -> None:
    connection.execute(text("UPDATE alert_deliveries SET status = 'sent', attempts = attempts + 1, sent_at = :now, "
                            "last_error = '' WHERE id = :id"), {"id": delivery_id, "now": now})


def record_failure(connection: Connection, delivery_id: int, error: str, next_attempt_at: datetime | None) -> None:
    """A failed attempt: retried at next_attempt_at, or given up when None."""
    connection.execute(text(
        "UPDATE alert_deliveries SET attempts = attempts + 1, last_error = :error, "
        "status = CASE WHEN CAST(:next AS timestamptz) IS NULL THEN 'given_up' ELSE 'pending' END, "
        "next_attempt_at = coalesce(CAST(:next AS timestamptz), next_attempt_at) WHERE id = :id"),
        {"id": delivery_id, "error": error[:2000], "next": next_attempt_at})


def next_delivery_due(connection: Connection) -> datetime | None:
    return connection.execute(text("SELECT min(next_attempt_at) FROM alert_deliveries WHERE status = 'pending'")).scalar()


def deliveries(database_url: str, alert_id: int | None = None) -> list[dict]:
    """Deliveries (of one alert, or all), oldest first: for operators and tests."""
    engine = _engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text(
                "SELECT id, alert_id, transition, channel, target, status, attempts, next_attempt_at, last_error, "
                "sent_at FROM alert_deliveries WHERE CAST(:alert_id AS bigint) IS NULL OR alert_id = :alert_id "
                "ORDER BY id"), {"alert_id": alert_id}).mappings()
            return [{**row, "next_attempt_at": _iso(row["next_attempt_at"]), "sent_at": _iso(row["sent_at"])}
                    for row in rows]
    finally:
        engine.dispose()


def open_counts(connection: Connection) -> Counter:
    """(rule, severity) -> open alerts: the ledger_alerts_open gauge."""
    rows = connection.execute(text("SELECT rule, severity, count(*) AS n FROM alerts WHERE status <> 'resolved' "
                                   "GROUP BY rule, severity"))
    return Counter({(r.rule, r.severity): r.n for r in rows})


def retry_at(now: datetime, attempts_made: int, delays_s: list[int]) -> datetime | None:
    """When to try again after `attempts_made` failed attempts; None once every delay is used (give up)."""
    if attempts_made > len(delays_s):
        return None
    return now + timedelta(seconds=delays_s[attempts_made - 1])
