"""`ledger payouts list|show|retry|cancel|confirm|fail`: operators look at payouts and act on one.

Every action is a ledger event sent to ledger.commands; the sequencer checks it against the payout's
lifecycle (a cancel after the provider took the payout is refused), and the command waits (bounded)
to say whether it was chained or refused, and why.
"""

from __future__ import annotations

from typing import Callable

import click
from rich.table import Table

from commands.output import console, emit_json, fail
from commands.payouts_command import payouts
from ledger.payouts import Payout, PayoutBook, PayoutStatus
from processors.operations import (
    ActionResult,
    OperationRefused,
    Operations,
    PayoutsPaused,
)
from processors.payout_state import payout_book, payout_detail, payout_summary
from runtime.database import make_engine
from runtime.settings import Settings
from runtime.stack import connections

STATUSES = [status.value for status in PayoutStatus]
WAIT_OPTION = click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=15.0, show_default=True,
                           help="Seconds to wait for the sequencer's verdict (0: send and return).")


def _operations(settings: Settings) -> Operations:
    bootstrap, database_url = connections(settings)
    return Operations(settings, bootstrap, database_url)


def _book(settings: Settings, **which: str | None) -> PayoutBook:
    """Payouts from the projector's archive plus the log's tail (processors/payout_state.payout_book)."""
    bootstrap, database_url = connections(settings)
    engine = make_engine(database_url)
    try:
        return payout_book(bootstrap, engine, settings.topic_events, **which)
    finally:
        engine.dispose()


def _find(settings: Settings, payout_id: str) -> Payout:
    payout = _book(settings, payout_id=payout_id).get(payout_id)
    if payout is None:
        fail(f"payout {payout_id!r} is not in the ledger")
    return payout


def act(action: Callable[[], ActionResult], as_json: bool, done: Callable[[ActionResult], str]) -> None:
    """Run an operator action and report its verdict; refusals exit 1 (3 while payouts are paused)."""
    try:
        result = action()
    except OperationRefused as exc:
        fail(exc.reason, code=3 if isinstance(exc, PayoutsPaused) else 1)
    if as_json:
        emit_json(result.as_dict())
    elif result.verdict == "chained":
        console.print(done(result), highlight=False)
    elif result.verdict == "waiting":
        console.print(f"sent {result.event_type} {result.event_id}; not chained yet: is `ledger sequencer` "
                      "running?", highlight=False)
    if result.verdict == "refused":
        fail(f"refused by the ledger: {result.reason}")


@payouts.command("list", short_help="List payouts (newest first), filtered by status, payee or method.")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES), help="Repeatable.")
@click.option("--payee", default=None)
@click.option("--method", default=None, help="stripe_standard, stripe_instant, bank_transfer, mobile_money, manual")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def list_payouts(statuses: tuple[str, ...], payee: str | None, method: str | None, limit: int, as_json: bool) -> None:
    """Payouts folded from the ledger, newest request first."""
    settings = Settings()
    found = [p for p in _book(settings, payee_id=payee).payouts.values()
             if (not statuses or p.status.value in statuses) and (payee is None or p.payee_id == payee)
             and (method is None or p.method == method)]
    found.sort(key=lambda p: (p.requested_at, p.payout_id), reverse=True)
    rows = [payout_summary(p) for p in found[:limit]]
    if as_json:
        emit_json({"payouts": rows, "total": len(found)})
        return
    table = Table(title=f"{len(rows)} of {len(found)} payouts")
    table.add_column("payout", overflow="fold")
    for column in ("payee", "amount", "method", "status", "tries", "reason", "requested"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["payout_id"], row["payee_id"], f"{row['amount']} {row['currency']}", row["method"],
                      row["status"] + (" (reversed)" if row["reversed"] else ""), str(row["attempts"]),
                      row["reason_code"], row["requested_at"][:10])
    console.print(table)


@payouts.command("show", short_help="One payout with its attempt timeline.")
@click.argument("payout_id")
@click.option("--json", "as_json", is_flag=True)
def show(payout_id: str, as_json: bool) -> None:
    """A payout: amounts, status, provider reference and every attempt."""
    detail = payout_detail(_find(Settings(), payout_id))
    if as_json:
        emit_json(detail)
        return
    console.print(f"payout {detail['payout_id']} for {detail['payee_id']}: {detail['amount']} {detail['currency']} "
                  f"by {detail['method']}, [bold]{detail['status']}[/]"
                  + (f" ({detail['reason_code']}: {detail['message']})" if detail["reason_code"] else ""),
                  highlight=False)
    if detail["next_attempt_due"]:
        console.print(f"next attempt due {detail['next_attempt_due']}", highlight=False)
    for step in detail["timeline"]:
        console.print(f"  attempt {step['attempt']} via {step['provider']} at {step['submitted_at'][:19]}: "
                      f"{step['outcome']} {step['provider_reference']} {step['reason_code']} {step['message']}".rstrip(),
                      highlight=False)


@payouts.command("retry", short_help="Retry now (waiting for a retry) or pay a failed payout's money again.")
@click.argument("payout_id")
@click.option("--actor", default="")
@WAIT_OPTION
@click.option("--json", "as_json", is_flag=True)
def retry(payout_id: str, actor: str, wait_s: float, as_json: bool) -> None:
    """A payout waiting for its next attempt is attempted now. A failed one cannot be re-sent (its money is
    back in the payee's balance): a new early payout of that balance is requested instead, once per
    failed payout (request id retry:PAYOUT_ID), so repeating the command never pays twice."""
    act(lambda: _operations(Settings()).retry(payout_id, actor, wait_s), as_json,
        lambda r: f"payout {payout_id}: {r.reason}; it is payout {r.payout_id}" if r.reason else
        f"payout {payout_id}: the next attempt is due now; `ledger transfers` makes it"
        if r.event_type == "PayoutRetryScheduled" else
        f"payout {payout_id} failed; new payout {r.payout_id} of {r.amount} requested for {r.payee_id}")


@payouts.command("cancel", short_help="Cancel a payout not yet at the provider; its money returns to the payee.")
@click.argument("payout_id")
@click.option("--reason", required=True)
@click.option("--actor", default="")
@WAIT_OPTION
@click.option("--json", "as_json", is_flag=True)
def cancel(payout_id: str, reason: str, actor: str, wait_s: float, as_json: bool) -> None:
    """Only a payout that is requested, or waiting for a retry, can be cancelled; the ledger refuses it
    once an attempt is at the provider (even if that attempt started a moment ago)."""
    act(lambda: _operations(Settings()).cancel(payout_id, reason, actor, wait_s), as_json,
        lambda r: f"payout {payout_id} cancelled; its money is {r.payee_id}'s unpaid balance again")


@payouts.command("confirm", short_help="Confirm a payout was paid (manual payouts, bank files).")
@click.argument("payout_id")
@click.option("--reference", required=True, help="Your reference for the payment (receipt, bank statement line).")
@WAIT_OPTION
@click.option("--json", "as_json", is_flag=True)
def confirm(payout_id: str, reference: str, wait_s: float, as_json: bool) -> None:
    act(lambda: _operations(Settings()).confirm(payout_id, reference, wait_s), as_json,
        lambda r: f"payout {payout_id} settled ({reference})")


@payouts.command("fail", short_help="Record that a payout failed (manual payouts, bank files); its money returns.")
@click.argument("payout_id")
@click.option("--reason-code", required=True, help="e.g. invalid_account_number, account_closed, declined")
@click.option("--message", default="", help="What happened.")
@WAIT_OPTION
@click.option("--json", "as_json", is_flag=True)
def fail_payout(payout_id: str, reason_code: str, message: str, wait_s: float, as_json: bool) -> None:
    act(lambda: _operations(Settings()).fail(payout_id, reason_code, message, wait_s), as_json,
        lambda r: f"payout {payout_id} failed ({reason_code}); its money is {r.payee_id}'s unpaid balance again")
