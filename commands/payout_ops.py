"""`ledger payouts list|show|retry|cancel|confirm|fail`: operators look at payouts and act on one.

Every action is a ledger event sent to ledger.commands; the sequencer checks it against the payout's
lifecycle (a cancel after the provider took the payout is refused), and the command waits (bounded)
to say whether it was chained or refused, and why.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import click
from rich.table import Table

from commands.output import console, emit_json, fail
from commands.payouts_command import payouts
from ledger import payouts as records
from ledger.codec import EventCodec
from ledger.earnings import ManualPayoutRefused, PayeeEarnings, close_id
from ledger.events import Event
from ledger.payouts import Payout, PayoutBook, PayoutStatus
from processors.payout_run import ledger_for_decisions, send_commands
from processors.payout_state import await_verdict, load_book, payout_detail, payout_summary
from projections.payout_controls import read_pause
from runtime.plans import plan_book
from runtime.settings import Settings
from runtime.stack import connections

STATUSES = [status.value for status in PayoutStatus]
WAIT_OPTION = click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=15.0, show_default=True,
                           help="Seconds to wait for the sequencer's verdict (0: send and return).")


def _find(settings: Settings, bootstrap: str, payout_id: str, book: PayoutBook | None = None) -> Payout:
    payout = (book or load_book(bootstrap, settings.topic_events)).get(payout_id)
    if payout is None:
        fail(f"payout {payout_id!r} is not in the ledger")
    return payout


def _send_and_wait(settings: Settings, bootstrap: str, event: Event, wait_s: float, as_json: bool, done: str) -> None:
    send_commands(bootstrap, settings.topic_commands, [event], EventCodec())
    verdict, reason = ("waiting", "") if wait_s == 0 else await_verdict(settings, bootstrap, event.envelope.event_id, wait_s)
    if as_json:
        emit_json({"payout_id": event.payload["payout_id"], "event_id": event.envelope.event_id,
                   "event_type": event.event_type, "verdict": verdict, "reason": reason})
    elif verdict == "chained":
        console.print(done, highlight=False)
    elif verdict == "waiting":
        console.print(f"sent {event.event_type} {event.envelope.event_id}; not chained yet: is `ledger sequencer` "
                      "running?", highlight=False)
    if verdict == "refused":
        fail(f"refused by the ledger: {reason}")


@payouts.command("list", short_help="List payouts (newest first), filtered by status, payee or method.")
@click.option("--status", "statuses", multiple=True, type=click.Choice(STATUSES), help="Repeatable.")
@click.option("--payee", default=None)
@click.option("--method", default=None, help="stripe_standard, stripe_instant, bank_transfer, mobile_money, manual")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def list_payouts(statuses: tuple[str, ...], payee: str | None, method: str | None, limit: int, as_json: bool) -> None:
    """Payouts folded from the ledger, newest request first."""
    settings = Settings()
    bootstrap, _ = connections(settings)
    found = [p for p in load_book(bootstrap, settings.topic_events).payouts.values()
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
    settings = Settings()
    bootstrap, _ = connections(settings)
    detail = payout_detail(_find(settings, bootstrap, payout_id))
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
    settings = Settings()
    bootstrap, database_url = connections(settings)
    book = load_book(bootstrap, settings.topic_events)
    payout = _find(settings, bootstrap, payout_id, book)
    now = datetime.now(timezone.utc)
    if payout.status is PayoutStatus.RETRY_WAIT:
        provider = payout.current.provider if payout.current else payout.method
        event = records.retry_scheduled(payout, payout.next_attempt, provider, now, "operator_retry",
                                        f"retried by {actor or 'an operator'}", now, event_id=str(uuid.uuid4()))
        _send_and_wait(settings, bootstrap, event, wait_s, as_json, f"payout {payout_id}: attempt "
                       f"{payout.next_attempt} is due now; `ledger transfers` makes it")
        return
    if payout.status is not PayoutStatus.FAILED:
        fail(f"payout {payout_id} is {payout.status.value}: only a failed payout or one waiting for a retry can be retried")
    request_id = f"retry:{payout_id}"
    earlier = close_id(payout.payee_id, f"manual:{request_id}", payout.amount.currency.code)
    if book.get(earlier) is not None:  # asked before: the same answer
        if as_json:
            emit_json({"payout_id": earlier, "event_id": earlier, "event_type": "PayoutRequested",
                       "verdict": "chained", "reason": "already requested by an earlier retry"})
        else:
            console.print(f"payout {payout_id} was already retried as payout {earlier}", highlight=False)
        return
    if read_pause(database_url).paused:
        fail("payouts are paused: `ledger payouts resume` first", code=3)
    payees, waiting = ledger_for_decisions(bootstrap, settings.topic_events, settings.topic_commands, EventCodec())
    if any(event.payee_id == payout.payee_id for event in waiting):
        fail(f"{payout.payee_id} has close decisions not in the ledger yet: run `ledger sequencer` and try again")
    try:
        event = payees.get(payout.payee_id, PayeeEarnings(payout.payee_id)).decide_manual_payout(
            now, payout.amount.currency.code, request_id, plan_book(settings), settings.payout_policy())
    except ManualPayoutRefused as exc:
        fail(f"cannot pay {payout.payee_id} again: {exc}")
    _send_and_wait(settings, bootstrap, event, wait_s, as_json,
                   f"payout {payout_id} failed; new payout {event.payload['payout_id']} of {event.payload['net']} "
                   f"requested for {payout.payee_id}")


@payouts.command("cancel", short_help="Cancel a payout not yet at the provider; its money returns to the payee.")
@click.argument("payout_id")
@click.option("--reason", required=True)
@click.option("--actor", default="")
@WAIT_OPTION
@click.option("--json", "as_json", is_flag=True)
def cancel(payout_id: str, reason: str, actor: str, wait_s: float, as_json: bool) -> None:
    """Only a payout that is requested, or waiting for a retry, can be cancelled; the ledger refuses it
    once an attempt is at the provider (even if that attempt started a moment ago)."""
    settings = Settings()
    bootstrap, _ = connections(settings)
    payout = _find(settings, bootstrap, payout_id)
    if payout.status not in (PayoutStatus.REQUESTED, PayoutStatus.RETRY_WAIT):
        fail(f"payout {payout_id} is {payout.status.value}: only a requested payout or one waiting for a retry "
             "can be cancelled")
    event = records.cancelled(payout, reason, actor, datetime.now(timezone.utc))
    _send_and_wait(settings, bootstrap, event, wait_s, as_json,
                   f"payout {payout_id} cancelled; {payout.amount} {payout.amount.currency.code} is "
                   f"{payout.payee_id}'s unpaid balance again")


def _outcome_target(settings: Settings, bootstrap: str, payout_id: str) -> Payout:
    payout = _find(settings, bootstrap, payout_id)
    if payout.status not in (PayoutStatus.AT_PROVIDER, PayoutStatus.SUBMITTED) or payout.current is None:
        fail(f"payout {payout_id} is {payout.status.value}: only a payout at its provider (manual, bank file) "
             "can be confirmed or failed by hand")
    return payout


@payouts.command("confirm", short_help="Confirm a payout was paid (manual payouts, bank files).")
@click.argument("payout_id")
@click.option("--reference", required=True, help="Your reference for the payment (receipt, bank statement line).")
@WAIT_OPTION
@click.option("--json", "as_json", is_flag=True)
def confirm(payout_id: str, reference: str, wait_s: float, as_json: bool) -> None:
    settings = Settings()
    bootstrap, _ = connections(settings)
    payout = _outcome_target(settings, bootstrap, payout_id)
    event = records.settled(payout, payout.current.number, payout.current.provider, reference,
                            datetime.now(timezone.utc))
    _send_and_wait(settings, bootstrap, event, wait_s, as_json, f"payout {payout_id} settled ({reference})")


@payouts.command("fail", short_help="Record that a payout failed (manual payouts, bank files); its money returns.")
@click.argument("payout_id")
@click.option("--reason-code", required=True, help="e.g. invalid_account_number, account_closed, declined")
@click.option("--message", default="", help="What happened.")
@WAIT_OPTION
@click.option("--json", "as_json", is_flag=True)
def fail_payout(payout_id: str, reason_code: str, message: str, wait_s: float, as_json: bool) -> None:
    settings = Settings()
    bootstrap, _ = connections(settings)
    payout = _outcome_target(settings, bootstrap, payout_id)
    event = records.failed(payout, payout.current.number, payout.current.provider, reason_code,
                           message or "failed by an operator", False, datetime.now(timezone.utc))
    _send_and_wait(settings, bootstrap, event, wait_s, as_json,
                   f"payout {payout_id} failed ({reason_code}); its money is {payout.payee_id}'s unpaid balance again")
