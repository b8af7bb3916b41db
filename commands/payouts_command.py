"""`ledger payouts pause|resume|status`: the platform-wide emergency stop for new payout requests."""

from __future__ import annotations

import sys

import click

from commands.output import console, emit_json
from projections.payout_controls import PauseState, read_pause, set_pause
from runtime.settings import Settings
from runtime.stack import connections


def _show(state: PauseState, as_json: bool) -> None:
    if as_json:
        emit_json({"paused": state.paused, "reason": state.reason, "actor": state.actor,
                   "changed_at": state.changed_at.isoformat() if state.changed_at else None})
    elif state.paused:
        console.print(f"[red]payouts PAUSED[/] since {state.changed_at} by {state.actor or '?'}: {state.reason}")
    else:
        console.print("payouts running")


@click.group(short_help="Payouts: list, show, retry, cancel, confirm, fail; pause or resume them all.")
def payouts() -> None:
    """Payouts one by one (commands/payout_ops.py), and the platform-wide emergency stop."""


@payouts.command(short_help="Stop all new payout requests; earnings keep accruing.")
@click.option("--reason", required=True, help="Why (kept with the history).")
@click.option("--actor", default="", help="Who.")
@click.option("--json", "as_json", is_flag=True)
def pause(reason: str, actor: str, as_json: bool) -> None:
    """Emergency stop: `ledger run` and the aggregator request nothing, and `ledger transfers` starts no new
    attempt, until `ledger payouts resume` (attempts already at a provider still get their outcome)."""
    _show(set_pause(connections(Settings())[1], True, reason, actor), as_json)


@payouts.command(short_help="Resume payout requests; the next run catches up on due periods.")
@click.option("--reason", default="", help="Why (kept with the history).")
@click.option("--actor", default="", help="Who.")
@click.option("--json", "as_json", is_flag=True)
def resume(reason: str, actor: str, as_json: bool) -> None:
    """Resume payout requests; periods that came due while paused close at the next run or tick."""
    _show(set_pause(connections(Settings())[1], False, reason, actor), as_json)


@payouts.command("status", short_help="Say whether payouts are paused. Exit 0 running, 3 paused.")
@click.option("--json", "as_json", is_flag=True)
def payouts_status(as_json: bool) -> None:
    """Whether payout requests are paused, since when, by whom and why."""
    state = read_pause(connections(Settings())[1])
    _show(state, as_json)
    if state.paused:
        sys.exit(3)
