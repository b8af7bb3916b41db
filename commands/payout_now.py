"""`ledger payout now PAYEE`: an early payout on request (a manual payout)."""

from __future__ import annotations

import click

from commands.output import console, emit_json, fail
from processors.operations import InvalidRequest, OperationRefused, Operations, PayoutsPaused
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
    settings = Settings()
    bootstrap, database_url = connections(settings)
    try:
        result = Operations(settings, bootstrap, database_url).pay_now(payee_id, code, request_id, wait_s=0)
    except OperationRefused as exc:
        fail(exc.reason if not isinstance(exc, InvalidRequest) else f"--{exc.reason}",
             code=3 if isinstance(exc, PayoutsPaused) else 1)
    if as_json:
        emit_json({**result.as_dict(), "currency": code})
    else:
        console.print(f"early payout {result.payout_id} of {result.amount} requested for {payee_id}; "
                      "the sequencer chains it", highlight=False)
