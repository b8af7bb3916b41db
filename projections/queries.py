"""Reads of the read models for the API and the operator page (payouts, attempts, schedules, counts)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy
from sqlalchemy import text

from ledger.money import Money

OPEN_STATUSES = ("requested", "submitted", "at_provider", "retry_wait")


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _payout(row: Any) -> dict[str, Any]:
    data = {key: _iso(value) for key, value in row._mapping.items()}
    data["amount"] = Money.of(data["net_minor"], data["currency"]).to_major_string()
    return data


PAYOUT_COLUMNS = ("payout_id, payee_id, period_id, trigger, plan, method, currency, exponent, gross_minor, "
                  "fee_minor, net_minor, status, attempts, provider, provider_reference, reason_code, message, "
                  "reversed, next_attempt_due, requested_at, accepted_at, finished_at, updated_at")


def list_payouts(engine: sqlalchemy.Engine, *, statuses: list[str] | None = None, payee_id: str | None = None,
                 method: str | None = None, currency: str | None = None, limit: int = 50,
                 offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Payouts newest request first, filtered; with the total count of the filter."""
    where, params = [], {"limit": limit, "offset": offset}
    if statuses:
        where.append("status = ANY(:statuses)")
        params["statuses"] = list(statuses)
    for column, value in (("payee_id", payee_id), ("method", method), ("currency", currency)):
        if value is not None:
            where.append(f"{column} = :{column}")
            params[column] = value
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    with engine.connect() as connection:
        total = connection.execute(text(f"SELECT count(*) FROM payouts {clause}"), params).scalar_one()
        rows = connection.execute(text(f"SELECT {PAYOUT_COLUMNS} FROM payouts {clause} "
                                       "ORDER BY requested_at DESC, payout_id DESC LIMIT :limit OFFSET :offset"),
                                  params).all()
    return [_payout(row) for row in rows], total


def get_payout(engine: sqlalchemy.Engine, payout_id: str) -> dict[str, Any] | None:
    """A payout with its attempt timeline, or None."""
    with engine.connect() as connection:
        row = connection.execute(text(f"SELECT {PAYOUT_COLUMNS} FROM payouts WHERE payout_id = :id"),
                                 {"id": payout_id}).first()
        if row is None:
            return None
        attempts = connection.execute(text(
            "SELECT attempt, provider, submitted_at, outcome, provider_reference, reason_code, message, retryable, "
            "finished_at FROM payout_attempts WHERE payout_id = :id ORDER BY attempt"), {"id": payout_id}).all()
    payout = _payout(row)
    payout["timeline"] = [{key: _iso(value) for key, value in attempt._mapping.items()} for attempt in attempts]
    return payout


def get_schedule(engine: sqlalchemy.Engine, payee_id: str) -> dict[str, Any] | None:
    with engine.connect() as connection:
        row = connection.execute(text(
            "SELECT payee_id, frequency, day_of_week, day_of_month, cutoff_time, timezone, plan, payout_method, "
            "destination, minimum_payout_minor, minimum_payout_currency, held, hold_reason, last_event_at "
            "FROM payees WHERE payee_id = :id"), {"id": payee_id}).first()
    return None if row is None else {key: _iso(value) for key, value in row._mapping.items()}


def payout_counts(engine: sqlalchemy.Engine) -> dict[str, int]:
    """Payouts per status."""
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT status, count(*) FROM payouts GROUP BY status")).all()
    return {status: count for status, count in rows}


def projector_positions(engine: sqlalchemy.Engine, topic: str) -> dict[int, int]:
    """The projector's next offset per partition of `topic`."""
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT partition, next_offset FROM projection_positions WHERE topic = :t"),
                                  {"t": topic}).all()
    return {partition: offset for partition, offset in rows}
