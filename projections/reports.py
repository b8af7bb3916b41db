"""Reconciliation exports from the read models: payouts requested in a time range, with totals.

Amounts are integer minor units with the exponent beside them, and the same amounts as exact major-unit
strings (ledger.money); nothing here is a float. The rows are what the projector wrote: run it (or
`ledger verify`) first when the export must include the newest events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy

from ledger.guards import require
from ledger.money import Money
from runtime.database import make_engine

MONEY_FIELDS = ("gross", "fee", "net")
PAYOUT_COLUMNS = ("payout_id", "payee_id", "period_id", "method", "provider", "provider_reference", "status",
                  "reversed", "currency", "exponent", "gross_minor", "gross", "fee_minor", "fee", "net_minor", "net",
                  "attempts", "reason_code", "requested_at", "finished_at")
TOTAL_COLUMNS = ("currency", "exponent", "status", "payouts", "gross_minor", "gross", "fee_minor", "fee",
                 "net_minor", "net")

_PAYOUTS = """
    SELECT payout_id, payee_id, period_id, method, provider, provider_reference, status, reversed, currency,
           exponent, gross_minor, fee_minor, net_minor, attempts, reason_code, requested_at, finished_at
    FROM payouts
    WHERE requested_at >= :start AND requested_at < :end {status_filter}
    ORDER BY requested_at, payout_id
"""


@dataclass
class PayoutReport:
    start: datetime
    end: datetime
    payouts: list[dict[str, Any]] = field(default_factory=list)
    totals: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"payouts": self.payouts, "totals": self.totals}


def _major(amount_minor: int, code: str, exponent: int) -> str:
    money = Money.of(amount_minor, code)
    require(money.currency.exponent == exponent,
            f"{code} has exponent {money.currency.exponent} here but {exponent} in the payouts table")
    return money.to_major_string()


def _instant(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat()


def _payout(row: Any) -> dict[str, Any]:
    code, exponent = row["currency"], row["exponent"]
    out: dict[str, Any] = {}
    for column in PAYOUT_COLUMNS:
        if column in MONEY_FIELDS:
            out[column] = _major(row[f"{column}_minor"], code, exponent)
        elif column in ("requested_at", "finished_at"):
            out[column] = _instant(row[column])
        else:
            out[column] = row[column]
    return out


def _totals(payouts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    sums: dict[tuple[str, str], dict[str, Any]] = {}
    for payout in payouts:
        key = (payout["currency"], payout["status"])
        total = sums.setdefault(key, {"currency": key[0], "exponent": payout["exponent"], "status": key[1],
                                      "payouts": 0, **{f"{name}_minor": 0 for name in MONEY_FIELDS}})
        total["payouts"] += 1
        for name in MONEY_FIELDS:
            total[f"{name}_minor"] += payout[f"{name}_minor"]
    rows = []
    for key in sorted(sums):
        total = sums[key]
        for name in MONEY_FIELDS:
            total[name] = _major(total[f"{name}_minor"], total["currency"], total["exponent"])
        rows.append({column: total[column] for column in TOTAL_COLUMNS})
    return rows


def payout_report(database_url: str, start: datetime, end: datetime, statuses: tuple[str, ...] = ()) -> PayoutReport:
    """Payouts requested in [start, end) (optionally only these statuses), oldest request first, and their
    totals per currency and status."""
    require(start.tzinfo is not None and end.tzinfo is not None, "report bounds must be aware instants")
    require(start < end, f"report range is empty: {start.isoformat()} is not before {end.isoformat()}")
    parameters: dict[str, Any] = {"start": start, "end": end}
    if statuses:
        query = sqlalchemy.text(_PAYOUTS.format(status_filter="AND status IN :statuses")).bindparams(
            sqlalchemy.bindparam("statuses", expanding=True))
        parameters["statuses"] = list(statuses)
    else:
        query = sqlalchemy.text(_PAYOUTS.format(status_filter=""))
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(query, parameters).mappings().all()
    finally:
        engine.dispose()
    payouts = [_payout(row) for row in rows]
    return PayoutReport(start, end, payouts, _totals(payouts))
