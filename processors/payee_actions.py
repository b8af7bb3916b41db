"""Operator actions on a payee as validated ledger events: schedule set, hold and release."""

from __future__ import annotations

from datetime import datetime

from ledger.commission import PlanBook
from ledger.events import Event, new_envelope
from ledger.intake import ID_PATTERN, ID_RULE
from ledger.money import Money
from ledger.schedules import InvalidSchedule, Schedule


def _check_payee(payee_id: str) -> None:
    if not ID_PATTERN.fullmatch(payee_id):
        raise InvalidSchedule(f"payee_id: {payee_id!r} is not a valid id: {ID_RULE}")


def schedule_event(payee_id: str, *, frequency: str, cutoff_time: str, timezone: str, plan: str, method: str,
                   book: PlanBook, now: datetime, day_of_week: int | None = None, day_of_month: int | None = None,
                   destination: str = "", minimum: Money | None = None, actor: str = "") -> Event:
    """A PayeeScheduleSet, after checking the schedule, plan and method (InvalidSchedule / UnknownPlan)."""
    _check_payee(payee_id)
    Schedule.create(frequency.upper(), cutoff_time=cutoff_time, timezone=timezone, day_of_week=day_of_week,
                    day_of_month=day_of_month)
    book.plan(plan)
    book.fee_rule(method)
    return Event(new_envelope("PayeeScheduleSet", payee_id=payee_id, occurred_at=now, recorded_at=now), {
        "frequency": frequency.upper(), "day_of_week": day_of_week, "day_of_month": day_of_month,
        "cutoff_time": cutoff_time, "timezone": timezone, "plan": plan, "payout_method": method,
        "destination": destination, "minimum_payout": minimum, "actor": actor})


def hold_event(payee_id: str, *, held: bool, now: datetime, reason: str = "", actor: str = "") -> Event:
    _check_payee(payee_id)
    return Event(new_envelope("PayeeHoldSet", payee_id=payee_id, occurred_at=now, recorded_at=now),
                 {"held": held, "reason": reason, "actor": actor})
