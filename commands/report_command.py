"""`ledger report payouts`: a reconciliation export of payouts from the read models."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from datetime import date, datetime, timezone
from pathlib import Path

import click

from commands.output import fail
from ledger.payouts import PayoutStatus
from projections.reports import PAYOUT_COLUMNS, TOTAL_COLUMNS, PayoutReport, payout_report
from runtime.settings import Settings
from runtime.stack import connections

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _day_start(option: str, value: str) -> datetime:
    """00:00 UTC of a YYYY-MM-DD date; anything else is one clear error naming the option."""
    try:
        if not _DATE.fullmatch(value):
            raise ValueError
        day = date.fromisoformat(value)
    except ValueError:
        fail(f"{option} {value!r} is not a date: give YYYY-MM-DD (a UTC day)")
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def _cell(value: object) -> object:
    """As JSON spells it: '' for null, true/false."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _csv(rows: list[dict], columns: tuple[str, ...]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: _cell(row[column]) for column in columns})
    return buffer.getvalue()


def _write(text: str, output: Path | None) -> None:
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")


@click.group(short_help="Reports from the read models: reconciliation exports.")
def report() -> None:
    """Exports for finance and reconciliation, read from the PostgreSQL read models (docs/analytics.md)."""


@report.command("payouts", short_help="Payouts requested in [--from, --to): CSV or JSON, with totals.")
@click.option("--from", "from_", required=True, metavar="DATE", help="First UTC day included (YYYY-MM-DD).")
@click.option("--to", "to", required=True, metavar="DATE", help="First UTC day NOT included (YYYY-MM-DD).")
@click.option("--format", "output_format", type=click.Choice(["csv", "json"]), default="csv", show_default=True)
@click.option("--status", "statuses", multiple=True, type=click.Choice([s.value for s in PayoutStatus]),
              help="Only payouts in this status (repeatable).")
@click.option("--output", type=click.Path(dir_okay=False, writable=True, path_type=Path), default=None,
              help="Write the export to FILE instead of stdout.")
def payouts(from_: str, to: str, output_format: str, statuses: tuple[str, ...], output: Path | None) -> None:
    """Every payout whose requested_at is in [--from 00:00 UTC, --to 00:00 UTC): ids, payee, period, method,
    provider and its reference, status, gross/fee/net in minor units and as exact major-unit strings,
    attempts, reason, requested and finished instants; and totals per currency and status.

    JSON: {"payouts": [...], "totals": [...]}. CSV: the payout rows only (to stdout or --output), and the
    totals as a second CSV table on stderr, so the export stays one clean table.
    """
    start, end = _day_start("--from", from_), _day_start("--to", to)
    if start >= end:
        fail(f"--from {from_} is not before --to {to}: the range is [--from, --to), at least one day")
    _, database_url = connections(Settings())
    result: PayoutReport = payout_report(database_url, start, end, statuses)
    if output_format == "json":
        _write(json.dumps(result.as_dict(), indent=2, sort_keys=True) + "\n", output)
        return
    _write(_csv(result.payouts, PAYOUT_COLUMNS), output)
    sys.stderr.write(_csv(result.totals, TOTAL_COLUMNS))
