"""`ledger run`: decide the payouts due at a time (now, or a simulated --at), and request them."""

from __future__ import annotations

from datetime import datetime, timezone

import click
from rich.table import Table

from commands.output import console, emit_json, fail
from processors.operations import OperationRefused, Operations, PayoutsPaused
from runtime.settings import Settings
from runtime.stack import connections


def _instant(text: str | None) -> datetime:
    if text is None:
        return datetime.now(timezone.utc)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        fail(f"--at: {text!r} is not an ISO 8601 timestamp (e.g. 2026-11-22T23:59:00+00:00)")
    if value.tzinfo is None:
        fail(f"--at: {text!r} has no UTC offset; add one, e.g. +00:00 or Z")
    return value.astimezone(timezone.utc)


@click.command(short_help="Decide the payouts due now (or --at T) and request them.")
@click.option("--at", "at_text", default=None, help="Decide as of this instant (ISO 8601 with offset); default now.")
@click.option("--dry-run", is_flag=True, help="Show what would be requested; emit nothing.")
@click.option("--force", "force_run", is_flag=True,
              help="Also pay every balance that reaches the minimum now, whatever the schedule (early payouts).")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
def run(at_text: str | None, dry_run: bool, force_run: bool, as_json: bool) -> None:
    """Close every payee's periods whose cutoff has passed: PayoutRequested when something is owed,
    BalanceCarried otherwise. Safe to repeat: a period is closed once, whatever is re-run."""
    settings = Settings()
    bootstrap, database_url = connections(settings)
    at = _instant(at_text)
    try:
        result = Operations(settings, bootstrap, database_url).run(at, dry_run=dry_run, force_run=force_run)
    except OperationRefused as exc:
        fail(exc.reason + (" (--dry-run shows what is due)" if isinstance(exc, PayoutsPaused) else ""),
             code=3 if isinstance(exc, PayoutsPaused) else 1)
    summary = result.as_dict()
    rows = summary["closes"]
    if as_json:
        emit_json(summary)
        return
    table = Table(title=f"payout run as of {at.isoformat()}{' (dry run: nothing emitted)' if dry_run else ''}")
    for column in ("payee", "period end (UTC)", "currency", "gross", "decision", "amount"):
        table.add_column(column)
    for row in rows:
        amount = row["net"] if row["decision"] == "PayoutRequested" else row["carried"]
        decision = "payout" if row["decision"] == "PayoutRequested" else f"carry ({row['reason']})"
        table.add_row(row["payee_id"], row["period_id"], row["currency"], str(row["gross"]), decision, str(amount))
    console.print(table)
    verb = "would request" if dry_run else "requested"
    console.print(f"{result.payees} payees, {verb} {summary['payouts_requested']} payouts "
                  f"({', '.join(f'{code} {minor}' for code, minor in result.totals_minor().items()) or 'nothing'}, minor units), "
                  f"{summary['balances_carried']} balances carried", highlight=False)
