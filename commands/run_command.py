"""`ledger run`: decide the payouts due at a time (now, or a simulated --at), and request them."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import click
from rich.table import Table

from commands.output import console, emit_json, fail
from ledger.codec import EventCodec
from processors.payout_run import ledger_for_decisions, plan_run, send_commands
from projections.payout_controls import read_pause
from runtime.plans import plan_book
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
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
def run(at_text: str | None, dry_run: bool, as_json: bool) -> None:
    """Close every payee's periods whose cutoff has passed: PayoutRequested when something is owed,
    BalanceCarried otherwise. Safe to repeat: a period is closed once, whatever is re-run."""
    settings = Settings()
    bootstrap, database_url = connections(settings)
    at = _instant(at_text)
    pause = read_pause(database_url)
    if pause.paused and not dry_run:
        fail(f"payouts are paused since {pause.changed_at} by {pause.actor or '?'} ({pause.reason}): "
             "nothing requested; `ledger payouts resume` to continue, or --dry-run to see what is due", code=3)
    codec = EventCodec()
    payees, waiting = ledger_for_decisions(bootstrap, settings.topic_events, settings.topic_commands, codec)
    if waiting and not dry_run:
        fail(f"{len(waiting)} close decisions from an earlier run are not in the ledger yet "
             f"(e.g. {waiting[0].payee_id} {waiting[0].payload['period_id']}): run `ledger sequencer` and try again")
    plan = plan_run(payees.values(), at, plan_book(settings), settings.payout_policy())
    run_id = str(uuid.uuid4())
    if not dry_run and plan.closes:
        send_commands(bootstrap, settings.topic_commands, plan.closes, codec)
    rows = [{
        "payee_id": event.payee_id, "decision": event.event_type, "period_id": event.payload["period_id"],
        "currency": event.payload["gross"].currency.code, "gross": event.payload["gross"].amount_minor,
        "net": event.payload["net"].amount_minor if event.event_type == "PayoutRequested" else 0,
        "carried": event.payload["balance"].amount_minor if event.event_type == "BalanceCarried" else 0,
        "reason": event.payload.get("reason"), "payout_id": event.payload.get("payout_id"),
        "late_payments": event.payload["late_payment_count"],
    } for event in plan.closes]
    summary = {"run_id": run_id, "at": at.isoformat(), "dry_run": dry_run, "payees": len(payees),
               "payouts_requested": len(plan.payouts), "balances_carried": len(plan.closes) - len(plan.payouts),
               "totals_minor": plan.totals(), "closes": rows}
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
    console.print(f"{len(payees)} payees, {verb} {summary['payouts_requested']} payouts "
                  f"({', '.join(f'{code} {minor}' for code, minor in plan.totals().items()) or 'nothing'}, minor units), "
                  f"{summary['balances_carried']} balances carried", highlight=False)
