"""`ledger schedule set` and `ledger payee hold|release`: operator actions, chained as ledger events."""

from __future__ import annotations

from datetime import datetime, timezone

import click

from commands.output import console, emit_json, fail
from ledger.codec import EventCodec
from ledger.commission import UnknownPlan
from ledger.events import Event
from ledger.money import InvalidAmount, Money
from ledger.currencies import UnknownCurrency
from ledger.schedules import InvalidSchedule
from processors.payee_actions import hold_event, schedule_event
from processors.payout_run import send_commands
from runtime.plans import plan_book
from runtime.settings import Settings
from runtime.stack import connections


def _send(settings: Settings, event: Event, as_json: bool, message: str) -> None:
    bootstrap, _ = connections(settings)
    send_commands(bootstrap, settings.topic_commands, [event], EventCodec())
    if as_json:
        emit_json({"event_id": event.envelope.event_id, "event_type": event.event_type, "payee_id": event.payee_id})
    else:
        console.print(f"{message} (event {event.envelope.event_id}; the sequencer chains it)", highlight=False)


@click.group(short_help="Payout schedules: set a payee's schedule, plan and method.")
def schedule() -> None:
    """A payee's payout schedule, commission plan and payout method."""


@schedule.command("set", short_help="Set a payee's schedule, plan, method and minimum.")
@click.argument("payee_id")
@click.option("--frequency", required=True, type=click.Choice(["DAILY", "WEEKLY", "BIWEEKLY", "MONTHLY", "MANUAL"],
                                                              case_sensitive=False))
@click.option("--cutoff", "cutoff_time", default="23:59", show_default=True, help="Local HH:MM at which periods close.")
@click.option("--timezone", "zone", default="UTC", show_default=True, help="IANA zone, e.g. Africa/Abidjan.")
@click.option("--day-of-week", type=int, default=None, help="0 = Monday .. 6 = Sunday (WEEKLY, BIWEEKLY).")
@click.option("--day-of-month", type=int, default=None, help="1..31, clamped to the month's end (MONTHLY).")
@click.option("--plan", "plan_name", required=True, help="Commission plan, e.g. flat-80.")
@click.option("--method", required=True, help="Payout method, e.g. mobile_money.")
@click.option("--destination", default="", help="Provider account reference (connected account, IBAN, MSISDN).")
@click.option("--minimum", default=None, help="Minimum payout as CODE:MAJOR, e.g. USD:25.00 (default: settings).")
@click.option("--actor", default="", help="Who makes the change (recorded in the ledger).")
@click.option("--json", "as_json", is_flag=True)
def set_schedule(payee_id: str, frequency: str, cutoff_time: str, zone: str, day_of_week: int | None,
                 day_of_month: int | None, plan_name: str, method: str, destination: str, minimum: str | None,
                 actor: str, as_json: bool) -> None:
    """Record a PayeeScheduleSet for PAYEE_ID; the next payout run uses it."""
    settings = Settings()
    try:
        minimum_money = None
        if minimum is not None:
            code, separator, major = minimum.partition(":")
            if not separator:
                fail(f"--minimum {minimum!r}: expected CODE:MAJOR, e.g. USD:25.00")
            minimum_money = Money.from_major(major, code)
        event = schedule_event(payee_id, frequency=frequency, cutoff_time=cutoff_time, timezone=zone, plan=plan_name,
                               method=method, book=plan_book(settings), now=datetime.now(timezone.utc),
                               day_of_week=day_of_week, day_of_month=day_of_month, destination=destination,
                               minimum=minimum_money, actor=actor)
    except (InvalidSchedule, UnknownPlan, InvalidAmount, UnknownCurrency) as exc:
        fail(str(exc))
    _send(settings, event, as_json, f"schedule of {payee_id}: {frequency.upper()} at {cutoff_time} {zone}, "
                                    f"{plan_name}, {method}")


@click.group(short_help="Payee actions: hold or release a payee's payouts.")
def payee() -> None:
    """Hold a payee's payouts (earnings keep accruing) or release them."""


def _hold(payee_id: str, held: bool, reason: str, actor: str, as_json: bool) -> None:
    try:
        event = hold_event(payee_id, held=held, now=datetime.now(timezone.utc), reason=reason, actor=actor)
    except InvalidSchedule as exc:
        fail(str(exc))
    _send(Settings(), event, as_json, f"{payee_id} {'held' if held else 'released'}")


@payee.command("hold", short_help="Hold a payee's payouts; balances carry until release.")
@click.argument("payee_id")
@click.option("--reason", required=True, help="Why (recorded in the ledger).")
@click.option("--actor", default="")
@click.option("--json", "as_json", is_flag=True)
def hold(payee_id: str, reason: str, actor: str, as_json: bool) -> None:
    """Hold PAYEE_ID: its periods still close, as BalanceCarried (HELD), until released."""
    _hold(payee_id, True, reason, actor, as_json)


@payee.command("release", short_help="Release a held payee; the next run pays what carried.")
@click.argument("payee_id")
@click.option("--reason", default="")
@click.option("--actor", default="")
@click.option("--json", "as_json", is_flag=True)
def release(payee_id: str, reason: str, actor: str, as_json: bool) -> None:
    """Release PAYEE_ID: the next run pays the carried balance if it reaches the minimum."""
    _hold(payee_id, False, reason, actor, as_json)
