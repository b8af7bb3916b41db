"""`ledger payout now PAYEE`: an early payout on request (seed 001's manual payout)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import click

from commands.output import console, emit_json, fail
from ledger.codec import EventCodec
from ledger.currencies import UnknownCurrency, currency
from ledger.earnings import ManualPayoutRefused, PayeeEarnings
from processors.payout_run import ledger_for_decisions, send_commands
from projections.payout_controls import read_pause
from runtime.plans import plan_book
from runtime.settings import Settings
from runtime.stack import connections


@click.group(short_help="Payout on request: pay a payee early.")
def payout() -> None:
    """Payouts made on request rather than at a cutoff."""


@payout.command("now", short_help="Pay a payee everything earned so far, now (early payout).")
@click.argument("payee_id")
@click.option("--currency", "code", required=True, help="Which currency's balance to pay out.")
@click.option("--request-id", default=None, help="Idempotency: the same id never pays twice (default: new).")
@click.option("--json", "as_json", is_flag=True)
def now(payee_id: str, code: str, request_id: str | None, as_json: bool) -> None:
    """Request a MANUAL payout of PAYEE_ID's balance in CURRENCY: everything earned up to now, plus what
    carried, paid if positive (the minimum does not apply to a request)."""
    try:
        currency(code)
    except UnknownCurrency as exc:
        fail(f"--currency: {exc}")
    settings = Settings()
    bootstrap, database_url = connections(settings)
    if read_pause(database_url).paused:
        fail("payouts are paused: `ledger payouts resume` first", code=3)
    codec = EventCodec()
    payees, waiting = ledger_for_decisions(bootstrap, settings.topic_events, settings.topic_commands, codec)
    if any(event.payee_id == payee_id for event in waiting):
        fail(f"{payee_id} has close decisions not in the ledger yet: run `ledger sequencer` and try again")
    earnings = payees.get(payee_id, PayeeEarnings(payee_id))
    try:
        event = earnings.decide_manual_payout(datetime.now(timezone.utc), code, request_id or str(uuid.uuid4()),
                                              plan_book(settings), settings.payout_policy())
    except ManualPayoutRefused as exc:
        fail(str(exc))
    send_commands(bootstrap, settings.topic_commands, [event], codec)
    if as_json:
        emit_json({"payout_id": event.payload["payout_id"], "payee_id": payee_id, "currency": code,
                   "net": event.payload["net"].amount_minor, "period_id": event.payload["period_id"]})
    else:
        console.print(f"early payout {event.payload['payout_id']} of {event.payload['net']} requested for "
                      f"{payee_id}; the sequencer chains it", highlight=False)
