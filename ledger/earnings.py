"""The earnings fold: one payee's unclosed earnings, carried balance and payouts, from their events.

Periods are not pre-bucketed. A close at cutoff C takes every unclosed line that occurred at or
before C and was sequenced at or before the decision's `through_sequence`; lines that occurred
before an earlier cutoff but arrived after it close with the next period, counted as late. Every
close is itself an event (PayoutRequested, or BalanceCarried when nothing is paid), so replaying the
log reproduces every balance without a clock. Per currency, at every point:
earned_net = settled + in_flight + unpaid.

Refunds reduce the gross of the period they close with, at that period's rate; bonuses are
deduction lines with a negative amount; a plan's recurring deductions apply to periods with activity.
"""

from __future__ import annotations

import copy
import hashlib
import operator
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ledger.commission import PlanBook, major_to_minor
from ledger.events import Event, new_envelope
from ledger.guards import require
from ledger.money import Money
from ledger.schedules import DEFAULT_SCHEDULE, Frequency, Schedule, cutoff_at_or_after, cutoff_before

PAYOUT_NAMESPACE = uuid.UUID("4f7a2c1e-93b5-4d0a-8e6f-5a1c2b3d4e5f")
PAYMENT_IDS_INLINE_MAX = 50
MAX_CLOSES_PER_DECISION = 1_000
MICROSECOND = timedelta(microseconds=1)


def close_id(payee_id: str, period_id: str, currency: str) -> str:
    """One id per (payee, period, currency): the payout id, and the close event's id."""
    return str(uuid.uuid5(PAYOUT_NAMESPACE, f"{payee_id}\x1f{period_id}\x1f{currency}"))


class ManualPayoutRefused(ValueError):
    """An early payout cannot be made; the message says why."""


@dataclass(frozen=True)
class PayoutPolicy:
    """Defaults for payees that have not set their own (settings)."""

    plan: str = "flat-80"
    method: str = "manual"
    minimum_major: str = "25.00"
    schedule: Schedule = DEFAULT_SCHEDULE


@dataclass(frozen=True)
class EarningLine:
    sequence: int
    occurred_at: datetime
    currency: str
    gross_minor: int = 0  # payments positive, refunds negative
    services: int = 0
    payment_id: str | None = None
    deduction: tuple[str, int] | None = None  # (name, minor): a bonus is negative


@dataclass(frozen=True)
class Balance:
    earned_net: Money
    settled: Money
    in_flight: Money
    unpaid: Money

    @property
    def balanced(self) -> bool:
        return self.earned_net == self.settled + self.in_flight + self.unpaid


_LINE_CURRENCY = operator.attrgetter("currency")


@dataclass
class PayeeEarnings:
    """Everything the aggregator knows of one payee, folded from that payee's events in sequence order."""

    payee_id: str
    last_sequence: int = 0
    schedule: Schedule | None = None
    plan: str | None = None
    method: str | None = None
    minimum: Money | None = None
    held: bool = False
    closed_through: datetime | None = None
    lines: list[EarningLine] = field(default_factory=list)
    unpaid: dict[str, int] = field(default_factory=dict)
    earned_net: dict[str, int] = field(default_factory=dict)
    settled: dict[str, int] = field(default_factory=dict)
    in_flight: dict[str, tuple[str, int]] = field(default_factory=dict)  # payout id -> (currency, minor)
    paid_out: dict[str, tuple[str, int]] = field(default_factory=dict)  # settled payouts, for later reversal

    # --- folding events -------------------------------------------------------------------------

    def apply(self, event: Event) -> bool:
        """Fold one sequenced event; an event already applied is skipped (False). A gap stops everything."""
        require(event.payee_id == self.payee_id, f"event of {event.payee_id} folded into {self.payee_id}")
        sequence = event.envelope.sequence
        require(sequence is not None, f"unsequenced event {event.envelope.event_id} in the earnings fold")
        if sequence <= self.last_sequence:
            return False
        require(sequence == self.last_sequence + 1,
                f"payee {self.payee_id}: sequence {sequence} follows {self.last_sequence} (events are missing)")
        handler = getattr(self, f"_on_{event.event_type}", None)
        if handler is not None:
            handler(event.payload, event.envelope)
        self.last_sequence = sequence
        return True

    def _line(self, envelope: Any, amount: Money, **fields: Any) -> None:
        self.lines.append(EarningLine(envelope.sequence, envelope.occurred_at, amount.currency.code, **fields))

    def _on_PaymentCompleted(self, payload: Any, envelope: Any) -> None:
        self._line(envelope, payload["amount"], gross_minor=payload["amount"].amount_minor,
                   services=payload["services"], payment_id=payload["payment_id"])

    def _on_PaymentRefunded(self, payload: Any, envelope: Any) -> None:
        self._line(envelope, payload["amount"], gross_minor=-payload["amount"].amount_minor)

    def _on_EarningsAdjusted(self, payload: Any, envelope: Any) -> None:
        minor = payload["amount"].amount_minor
        self._line(envelope, payload["amount"],
                   deduction=(payload["name"], minor if payload["kind"] == "DEDUCTION" else -minor))

    def _on_PayeeScheduleSet(self, payload: Any, envelope: Any) -> None:
        self.schedule = Schedule.create(payload["frequency"], cutoff_time=payload["cutoff_time"],
                                        timezone=payload["timezone"], day_of_week=payload["day_of_week"],
                                        day_of_month=payload["day_of_month"])
        self.plan, self.method, self.minimum = payload["plan"], payload["payout_method"], payload["minimum_payout"]

    def _on_PayeeHoldSet(self, payload: Any, envelope: Any) -> None:
        self.held = payload["held"]

    # A close moves amounts rather than setting balances: an outcome chained between the decision and
    # its close (a failed payout returning money, say) must survive the close.
    def _on_PayoutRequested(self, payload: Any, envelope: Any) -> None:
        currency, paid = payload["net"].currency.code, payload["net"].amount_minor
        carried_in = payload["carry_over"].amount_minor
        self._close(payload["period_end"], payload["through_sequence"], currency, paid - carried_in)
        self.in_flight[payload["payout_id"]] = (currency, paid)
        self.unpaid[currency] = self.unpaid.get(currency, 0) - carried_in

    def _on_BalanceCarried(self, payload: Any, envelope: Any) -> None:
        currency = payload["balance"].currency.code
        self._close(payload["period_end"], payload["through_sequence"], currency, payload["net"].amount_minor)
        self.unpaid[currency] = self.unpaid.get(currency, 0) + payload["net"].amount_minor

    def _close(self, period_end: datetime, through_sequence: int, currency: str, period_net: int) -> None:
        self.lines = [line for line in self.lines if not (
            line.currency == currency and line.occurred_at <= period_end and line.sequence <= through_sequence)]
        self.closed_through = max(self.closed_through or period_end, period_end)
        self.earned_net[currency] = self.earned_net.get(currency, 0) + period_net

    def _on_PayoutSettled(self, payload: Any, envelope: Any) -> None:
        payout_id = payload["payout_id"]
        if payout_id in self.in_flight:
            currency, minor = self.in_flight.pop(payout_id)
            self.settled[currency] = self.settled.get(currency, 0) + minor
            self.paid_out[payout_id] = (currency, minor)

    def _on_PayoutFailed(self, payload: Any, envelope: Any) -> None:
        if payload["retryable"]:
            return  # an attempt failed; a retry is scheduled and the payout is still in flight
        payout_id = payload["payout_id"]
        if payout_id in self.in_flight:
            currency, minor = self.in_flight.pop(payout_id)
        elif payout_id in self.paid_out:  # a paid payout that failed days later
            currency, minor = self.paid_out.pop(payout_id)
            self.settled[currency] -= minor
        else:
            return
        self.unpaid[currency] = self.unpaid.get(currency, 0) + minor

    def _on_PayoutCancelled(self, payload: Any, envelope: Any) -> None:
        if payload["payout_id"] in self.in_flight:
            currency, minor = self.in_flight.pop(payload["payout_id"])
            self.unpaid[currency] = self.unpaid.get(currency, 0) + minor

    # --- reading ------------------------------------------------------------------------------

    def balance(self, currency: str) -> Balance:
        in_flight = sum(minor for code, minor in self.in_flight.values() if code == currency)
        return Balance(*(Money.of(value, currency) for value in (
            self.earned_net.get(currency, 0), self.settled.get(currency, 0), in_flight, self.unpaid.get(currency, 0))))

    def currencies(self) -> set[str]:
        return (set(map(_LINE_CURRENCY, self.lines)) | set(self.unpaid) | set(self.earned_net)
                | {code for code, _ in self.in_flight.values()})

    # --- deciding closes ---------------------------------------------------------------------

    def decide_closes(self, now: datetime, book: PlanBook, policy: PayoutPolicy) -> list[Event]:
        """The close events due at `now` (PayoutRequested or BalanceCarried), oldest cutoff first."""
        schedule = self.schedule or policy.schedule
        if schedule.frequency is Frequency.MANUAL:
            return []
        draft = copy.deepcopy(self)
        events: list[Event] = []
        while len(events) < MAX_CLOSES_PER_DECISION:
            cutoff = draft._next_cutoff(schedule, policy)
            if cutoff is None or cutoff > now:
                break
            closes = draft._closes_at(cutoff, cutoff_before(schedule, cutoff), now, book, policy)
            for close in closes:
                draft._fold_decision(close)
            events.extend(closes)
            draft.closed_through = max(draft.closed_through or cutoff, cutoff)
        return events

    def _next_cutoff(self, schedule: Schedule, policy: PayoutPolicy) -> datetime | None:
        """The first cutoff at which something would close: the earliest unclosed line's, or right
        after the last close for late lines and for a carried balance that has become payable."""
        after = min((line.occurred_at for line in self.lines), default=None)
        if self.closed_through is not None:
            if any(self._payable_carry(code, policy) for code in self.unpaid):
                after = self.closed_through
            if after is not None and after <= self.closed_through:
                after = self.closed_through + MICROSECOND
        return None if after is None else cutoff_at_or_after(schedule, after)

    def _minimum(self, currency: str, policy: PayoutPolicy) -> Money:
        if self.minimum is not None and self.minimum.currency.code == currency:
            return self.minimum
        return major_to_minor(policy.minimum_major, currency)

    def _payable_carry(self, currency: str, policy: PayoutPolicy) -> bool:
        carried = self.unpaid.get(currency, 0)
        return not self.held and carried > 0 and carried >= self._minimum(currency, policy).amount_minor

    def _closes_at(self, cutoff: datetime, start: datetime, now: datetime, book: PlanBook,
                   policy: PayoutPolicy) -> list[Event]:
        events = []
        for currency in sorted({line.currency for line in self.lines if line.occurred_at <= cutoff}
                               | {code for code in self.unpaid if self._payable_carry(code, policy)}):
            lines = [line for line in self.lines if line.currency == currency and line.occurred_at <= cutoff]
            events.append(self._close_event(currency, lines, start, cutoff, now, book, policy))
        return events

    def decide_manual_payout(self, now: datetime, currency: str, request_id: str, book: PlanBook,
                             policy: PayoutPolicy) -> Event:
        """An early payout on request: everything earned up to now in one currency, paid if
        positive, whatever the minimum. Raises ManualPayoutRefused when nothing can be paid."""
        if self.held:
            raise ManualPayoutRefused(f"{self.payee_id} is on hold: release it first")
        lines = [line for line in self.lines if line.currency == currency and line.occurred_at <= now]
        start = self.closed_through or min((line.occurred_at for line in lines), default=now)
        event = self._close_event(currency, lines, start, now, now, book, policy,
                                  period_id=f"manual:{request_id}", manual=True)
        if event.event_type != "PayoutRequested":
            owed = event.payload["balance"]
            raise ManualPayoutRefused(f"{self.payee_id} is owed {owed} in {currency}: nothing to pay out")
        return event

    def decide_forced_payouts(self, now: datetime, request_id: str, book: PlanBook,
                              policy: PayoutPolicy) -> tuple[list[Event], list[str]]:
        """A forced run (forceRun): the closes due now, then an early payout of each currency
        whose balance reaches the minimum, whatever the schedule. Returns (events, why others were not paid)."""
        events = self.decide_closes(now, book, policy)
        draft = copy.deepcopy(self)
        for close in events:
            draft._fold_decision(close)
        skipped = []
        for currency in sorted({line.currency for line in draft.lines} | set(draft.unpaid)):
            try:
                early = draft.decide_manual_payout(now, currency, request_id, book, policy)
            except ManualPayoutRefused as exc:
                skipped.append(str(exc))
                continue
            minimum = draft._minimum(currency, policy)
            if early.payload["net"] < minimum:
                skipped.append(f"{self.payee_id} is owed {early.payload['net']} in {currency}: below the minimum {minimum}")
                continue
            draft._fold_decision(early)
            events.append(early)
        return events, skipped

    def next_cutoff_after(self, instant: datetime, policy: PayoutPolicy) -> datetime | None:
        """The payee's first cutoff strictly after `instant` (None on a MANUAL schedule)."""
        schedule = self.schedule or policy.schedule
        if schedule.frequency is Frequency.MANUAL:
            return None
        return cutoff_at_or_after(schedule, instant + MICROSECOND)

    def _close_event(self, currency: str, lines: list[EarningLine], start: datetime, cutoff: datetime,
                     now: datetime, book: PlanBook, policy: PayoutPolicy, *, period_id: str | None = None,
                     manual: bool = False) -> Event:
        plan, method = self.plan or policy.plan, self.method or policy.method
        gross = Money.of(sum(line.gross_minor for line in lines), currency)
        deductions: dict[str, Money] = {}
        for line in lines:
            if line.deduction is not None:
                name, minor = line.deduction
                deductions[name] = deductions.get(name, Money.zero(currency)) + Money.of(minor, currency)
        breakdown = book.breakdown(plan, method, gross, sum(line.services for line in lines), deductions,
                                   recurring=bool(lines))
        carry_in = Money.of(self.unpaid.get(currency, 0), currency)
        total = carry_in + breakdown.net
        payment_ids = sorted(line.payment_id for line in lines if line.payment_id is not None)
        period_id = period_id or cutoff.strftime("%Y-%m-%dT%H:%MZ")
        common = {
            "period_id": period_id, "period_start": start, "period_end": cutoff, "plan": plan,
            "payout_method": method, "gross": gross, "services": breakdown.services, "rate_bp": breakdown.rate_bp,
            "payee_share": breakdown.payee_share, "fee": breakdown.fee, "carry_over": carry_in,
            "deductions": [{"name": name, "amount": amount} for name, amount in breakdown.deductions],
            "payment_count": len(payment_ids),
            "payment_digest": hashlib.sha256("\n".join(payment_ids).encode()).hexdigest(),
            "late_payment_count": sum(1 for line in lines if line.payment_id is not None
                                      and self.closed_through is not None and line.occurred_at <= self.closed_through),
            "through_sequence": self.last_sequence,
        }
        identity = close_id(self.payee_id, period_id, currency)
        minimum = self._minimum(currency, policy)
        reason = "HELD" if self.held else "NOT_POSITIVE" if total.amount_minor <= 0 else (
            "BELOW_MINIMUM" if total < minimum and not manual else None)
        if reason is None:
            event_type = "PayoutRequested"
            payload = {**common, "payout_id": identity, "trigger": "MANUAL" if manual else "SCHEDULE", "net": total,
                       "payment_ids": payment_ids if len(payment_ids) <= PAYMENT_IDS_INLINE_MAX else []}
        else:
            event_type = "BalanceCarried"
            payload = {**common, "reason": reason, "net": breakdown.net, "balance": total}
        envelope = new_envelope(event_type, payee_id=self.payee_id, occurred_at=cutoff, recorded_at=now,
                                event_id=identity, correlation_id=f"close:{period_id}")
        return Event(envelope, payload)

    def _fold_decision(self, event: Event) -> None:
        getattr(self, f"_on_{event.event_type}")(event.payload, event.envelope)


