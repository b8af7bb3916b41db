"""Operator actions shared by the CLI and the HTTP API: each is a ledger event, judged by the sequencer.

An action is refused here when the ledger already says it cannot happen (OperationRefused and its
subclasses, each with the HTTP status the API answers); otherwise its event goes to ledger.commands
and the caller waits (bounded) for the sequencer's verdict: chained, refused (with its reason), or
still waiting. Nothing here prints or exits.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import sqlalchemy

from ledger import payouts as records
from ledger.codec import EventCodec
from ledger.currencies import UnknownCurrency, currency
from ledger.earnings import ManualPayoutRefused, PayeeEarnings, close_id
from ledger.events import Event
from ledger.payouts import Payout, PayoutBook, PayoutStatus
from processors.payout_run import ledger_for_decisions, requested_totals, send_commands
from processors.payout_state import await_verdict, payout_book
from projections.payout_controls import read_pause
from runtime.database import make_engine
from runtime.plans import plan_book
from runtime.settings import Settings


class OperationRefused(Exception):
    """The ledger's state does not allow the action; `reason` says why. HTTP 409."""

    status = 409

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotFound(OperationRefused):
    status = 404


class PayoutsPaused(OperationRefused):
    """The emergency stop is on: nothing new is requested. CLI exit code 3."""

    status = 409


class LedgerBehind(OperationRefused):
    """Earlier decisions still wait for the sequencer: try again shortly. HTTP 503."""

    status = 503


class InvalidRequest(OperationRefused):
    """A field of the request is not valid; the reason names it. HTTP 422."""

    status = 422


@dataclass(frozen=True)
class ActionResult:
    """An operator event sent (or found sent before), and what the sequencer said of it."""

    payout_id: str | None
    payee_id: str
    event_id: str
    event_type: str
    verdict: str  # chained | refused | waiting
    reason: str = ""
    amount: str = ""  # of a payout requested: "40.00 USD"
    net_minor: int | None = None
    period_id: str | None = None

    @classmethod
    def of(cls, event: Event, verdict: str, reason: str = "") -> "ActionResult":
        net = event.payload.get("net") if event.event_type == "PayoutRequested" else None
        return cls(event.payload.get("payout_id"), event.payee_id, event.envelope.event_id, event.event_type,
                   verdict, reason, f"{net.to_major_string()} {net.currency.code}" if net is not None else "",
                   net.amount_minor if net is not None else None, event.payload.get("period_id"))

    def as_dict(self) -> dict[str, Any]:
        return {"payout_id": self.payout_id, "payee_id": self.payee_id, "event_id": self.event_id,
                "event_type": self.event_type, "verdict": self.verdict, "reason": self.reason,
                "amount": self.amount, "net": self.net_minor, "period_id": self.period_id}


@dataclass
class RunResult:
    """A payout run as the cron endpoint reports it (ids, totals, errors, the next cutoff)."""

    run_id: str
    at: datetime
    dry_run: bool
    force_run: bool
    payees: int
    closes: list[Event]
    errors: list[dict[str, str]] = field(default_factory=list)
    next_scheduled_time: datetime | None = None
    duration_ms: int = 0

    @property
    def payouts(self) -> list[Event]:
        return [event for event in self.closes if event.event_type == "PayoutRequested"]

    def totals_minor(self) -> dict[str, int]:
        return requested_totals(self.payouts)

    def as_dict(self) -> dict[str, Any]:
        totals = self.totals_minor()
        return {
            "run_id": self.run_id, "at": self.at.isoformat(), "dry_run": self.dry_run, "force_run": self.force_run,
            "payees": self.payees, "payouts_requested": len(self.payouts),
            "balances_carried": len(self.closes) - len(self.payouts), "totals_minor": totals,
            "totals": {code: _major(code, minor) for code, minor in totals.items()},
            "errors": self.errors, "duration_ms": self.duration_ms,
            "next_scheduled_time": self.next_scheduled_time.isoformat() if self.next_scheduled_time else None,
            "closes": [close_row(event) for event in self.closes],
        }


def _major(code: str, minor: int) -> str:
    from ledger.money import Money

    return Money.of(minor, code).to_major_string()


def close_row(event: Event) -> dict[str, Any]:
    requested = event.event_type == "PayoutRequested"
    return {"payee_id": event.payee_id, "decision": event.event_type, "period_id": event.payload["period_id"],
            "currency": event.payload["gross"].currency.code, "gross": event.payload["gross"].amount_minor,
            "net": event.payload["net"].amount_minor if requested else 0,
            "carried": 0 if requested else event.payload["balance"].amount_minor,
            "reason": event.payload.get("reason"), "payout_id": event.payload.get("payout_id"),
            "late_payments": event.payload["late_payment_count"]}


class Operations:
    """The actions of `ledger payouts ...`, `ledger run`, `ledger payout now` and the API, on one ledger."""

    def __init__(self, settings: Settings, bootstrap: str, database_url: str,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.settings, self.bootstrap, self.database_url, self.clock = settings, bootstrap, database_url, clock
        self.codec = EventCodec()
        self._engine: sqlalchemy.Engine | None = None

    @property
    def engine(self) -> sqlalchemy.Engine:
        if self._engine is None:
            self._engine = make_engine(self.database_url)
        return self._engine

    def _ledger_for_decisions(self) -> tuple[dict[str, PayeeEarnings], list[Event]]:
        return ledger_for_decisions(self.bootstrap, self.engine, self.settings.topic_events,
                                    self.settings.topic_commands, self.settings.sequencer_group, self.codec)

    # --- reading -------------------------------------------------------------------------------

    def book(self, payout_id: str | None = None) -> PayoutBook:
        """Payouts from the projector's archive plus the tail of the log (those of one payout's payee if given)."""
        return payout_book(self.bootstrap, self.engine, self.settings.topic_events, self.codec, payout_id=payout_id)

    def find(self, payout_id: str, book: PayoutBook | None = None) -> Payout:
        payout = (book or self.book(payout_id)).get(payout_id)
        if payout is None:
            raise NotFound(f"payout {payout_id!r} is not in the ledger")
        return payout

    # --- sending -------------------------------------------------------------------------------

    def submit(self, event: Event, wait_s: float) -> ActionResult:
        """Send the event to ledger.commands and wait up to wait_s for the sequencer's verdict."""
        send_commands(self.bootstrap, self.settings.topic_commands, [event], self.codec)
        if wait_s <= 0:
            return ActionResult.of(event, "waiting")
        verdict, reason = await_verdict(self.settings, self.bootstrap, event.envelope.event_id, wait_s)
        return ActionResult.of(event, verdict, reason)

    def _require_running(self) -> None:
        pause = read_pause(self.database_url)
        if pause.paused:
            raise PayoutsPaused(f"payouts are paused since {pause.changed_at} by {pause.actor or '?'} "
                                f"({pause.reason}): resume them first")

    def _earnings_of(self, payee_id: str) -> PayeeEarnings:
        payees, waiting = self._ledger_for_decisions()
        if any(event.payee_id == payee_id for event in waiting):
            raise LedgerBehind(f"{payee_id} has close decisions not in the ledger yet: is `ledger sequencer` running?")
        return payees.get(payee_id, PayeeEarnings(payee_id))

    # --- payouts -------------------------------------------------------------------------------

    def retry(self, payout_id: str, actor: str, wait_s: float) -> ActionResult:
        """Waiting for a retry: attempt now. Failed: request a new early payout of the returned money,
        once per failed payout (request id retry:PAYOUT_ID), so repeating never pays twice."""
        book = self.book(payout_id)  # also holds the payee's earlier retry payouts
        payout = self.find(payout_id, book)
        now = self.clock()
        if payout.status is PayoutStatus.RETRY_WAIT:
            provider = payout.current.provider if payout.current else payout.method
            return self.submit(records.retry_scheduled(payout, payout.next_attempt, provider, now, "operator_retry",
                                                       f"retried by {actor or 'an operator'}", now,
                                                       event_id=str(uuid.uuid4())), wait_s)
        if payout.status is not PayoutStatus.FAILED:
            raise OperationRefused(f"payout {payout_id} is {payout.status.value}: only a failed payout or one "
                                   "waiting for a retry can be retried")
        request_id = f"retry:{payout_id}"
        earlier = book.get(close_id(payout.payee_id, f"manual:{request_id}", payout.amount.currency.code))
        if earlier is not None:  # asked before: the same answer
            return ActionResult(earlier.payout_id, earlier.payee_id, earlier.payout_id, "PayoutRequested", "chained",
                                "already requested by an earlier retry",
                                f"{earlier.amount.to_major_string()} {earlier.amount.currency.code}")
        self._require_running()
        try:
            event = self._earnings_of(payout.payee_id).decide_manual_payout(
                now, payout.amount.currency.code, request_id, plan_book(self.settings), self.settings.payout_policy())
        except ManualPayoutRefused as exc:
            raise OperationRefused(f"cannot pay {payout.payee_id} again: {exc}") from None
        return self.submit(event, wait_s)

    def cancel(self, payout_id: str, reason: str, actor: str, wait_s: float) -> ActionResult:
        if not reason.strip():
            raise InvalidRequest("reason: must not be empty")
        payout = self.find(payout_id)
        if payout.status not in (PayoutStatus.REQUESTED, PayoutStatus.RETRY_WAIT):
            raise OperationRefused(f"payout {payout_id} is {payout.status.value}: only a requested payout or one "
                                   "waiting for a retry can be cancelled")
        return self.submit(records.cancelled(payout, reason, actor, self.clock()), wait_s)

    def _at_provider(self, payout_id: str) -> Payout:
        payout = self.find(payout_id)
        if payout.status not in (PayoutStatus.AT_PROVIDER, PayoutStatus.SUBMITTED) or payout.current is None:
            raise OperationRefused(f"payout {payout_id} is {payout.status.value}: only a payout at its provider "
                                   "(manual, bank file) can be confirmed or failed by hand")
        return payout

    def confirm(self, payout_id: str, reference: str, wait_s: float) -> ActionResult:
        if not reference.strip():
            raise InvalidRequest("reference: must not be empty")
        payout = self._at_provider(payout_id)
        return self.submit(records.settled(payout, payout.current.number, payout.current.provider, reference,
                                           self.clock()), wait_s)

    def fail(self, payout_id: str, reason_code: str, message: str, wait_s: float) -> ActionResult:
        if not reason_code.strip():
            raise InvalidRequest("reason_code: must not be empty")
        payout = self._at_provider(payout_id)
        return self.submit(records.failed(payout, payout.current.number, payout.current.provider, reason_code,
                                          message or "failed by an operator", False, self.clock()), wait_s)

    def pay_now(self, payee_id: str, code: str, request_id: str | None, wait_s: float) -> ActionResult:
        """An early (manual) payout of everything the payee earned so far in one currency."""
        try:
            currency(code)
        except UnknownCurrency as exc:
            raise InvalidRequest(f"currency: {exc}") from None
        self._require_running()
        try:
            event = self._earnings_of(payee_id).decide_manual_payout(
                self.clock(), code, request_id or str(uuid.uuid4()), plan_book(self.settings),
                self.settings.payout_policy())
        except ManualPayoutRefused as exc:
            raise OperationRefused(str(exc)) from None
        return self.submit(event, wait_s)

    # --- runs ----------------------------------------------------------------------------------

    def _decisions_settled(self, settle_s: float) -> tuple[dict[str, PayeeEarnings], list[Event]]:
        """The ledger's earnings, once no close decision waits for the sequencer (or after settle_s)."""
        deadline = time.monotonic() + settle_s
        while True:
            payees, waiting = self._ledger_for_decisions()
            if not waiting or time.monotonic() >= deadline:
                return payees, waiting
            time.sleep(0.5)  # the sequencer chains within milliseconds when it runs; bounded by settle_s

    def run(self, at: datetime | None = None, *, dry_run: bool = False, force_run: bool = False,
            run_id: str | None = None, settle_s: float = 0.0) -> RunResult:
        """Close every period due at `at` (default now); forced, also pay every balance that reaches the
        minimum now. Safe to repeat: a period closes once, and a forced payout folds what it paid."""
        started = time.monotonic()
        at = at or self.clock()
        run_id = run_id or f"run_{uuid.uuid4().hex[:16]}"
        if not dry_run:
            self._require_running()
        payees, waiting = self._decisions_settled(0.0 if dry_run else settle_s)
        if waiting and not dry_run:
            raise LedgerBehind(f"{len(waiting)} close decisions from an earlier run are not in the ledger yet "
                               f"(e.g. {waiting[0].payee_id} {waiting[0].payload['period_id']}): "
                               "is `ledger sequencer` running?")
        book, policy = plan_book(self.settings), self.settings.payout_policy()
        closes: list[Event] = []
        errors: list[dict[str, str]] = []
        for earnings in sorted(payees.values(), key=lambda p: p.payee_id):
            if force_run:
                decided, skipped = earnings.decide_forced_payouts(at, f"force:{run_id}", book, policy)
                errors.extend({"payee_id": earnings.payee_id, "reason": reason} for reason in skipped)
            else:
                decided = earnings.decide_closes(at, book, policy)
            closes.extend(decided)
        if closes and not dry_run:
            send_commands(self.bootstrap, self.settings.topic_commands, closes, self.codec)
        upcoming = [cutoff for cutoff in (p.next_cutoff_after(at, policy) for p in payees.values()) if cutoff]
        return RunResult(run_id, at, dry_run, force_run, len(payees), closes, errors,
                         min(upcoming, default=None), int((time.monotonic() - started) * 1000))

