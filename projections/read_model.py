"""The read models as rows, folded from ledger events in memory (no SQL here).

The projector applies each event and writes the rows it changed (absolute values, not increments:
writing the same row twice is harmless); `ledger verify` folds the whole log into a fresh ReadModel
and compares every row with the tables. The money follows the domain folds (ledger/earnings.py for
balances, ledger/payouts.py for payouts), so the tables say what the ledger says.

Every row belongs to one payee, and so to one partition of ledger.events, except the daily totals,
which sum over payees: they are kept per partition (`daily_totals_by_partition`, the partition the
events were read from; the view `daily_totals` sums them). A fold of some partitions only (an instance
of `ledger projector --partitioned`) then writes exactly the rows of those partitions, and a fold of
all of them writes the same rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Mapping

from ledger.earnings import PayeeEarnings
from ledger.events import Event
from ledger.hashchain import event_hash
from ledger.money import Money
from ledger.payouts import Payout, PayoutBook, PayoutStatus

TABLES = ("payees", "payee_balances", "earnings", "payout_periods", "payouts", "payout_attempts",
          "daily_totals_by_partition")
KEYS = {
    "payees": ("payee_id",), "payee_balances": ("payee_id", "currency"), "earnings": ("event_id",),
    "payout_periods": ("payee_id", "period_id", "currency"), "payouts": ("payout_id",),
    "payout_attempts": ("payout_id", "attempt"), "daily_totals_by_partition": ("day", "currency", "partition"),
    "projection_heads": ("payee_id",),
}
# What a payout's row needs of its request (the rest, such as its payment ids, is not kept in memory).
REQUEST_FIELDS = ("plan", "gross", "services", "rate_bp", "payee_share", "fee", "carry_over", "net", "deductions",
                  "payment_count")
DAILY_FIELDS = ("payments", "payments_minor", "refunds", "refunds_minor", "adjustments_minor", "payouts_requested",
                "payouts_requested_minor", "payouts_settled", "payouts_settled_minor", "payouts_failed",
                "payouts_failed_minor", "fees_minor")


def _money(prefix: str, amount: Money) -> dict[str, int]:
    return {f"{prefix}_minor": amount.amount_minor}


@dataclass
class _PayeeFacts:
    events: int = 0
    first_event_at: datetime | None = None
    last_event_at: datetime | None = None
    hold_reason: str = ""
    schedule: dict[str, Any] = field(default_factory=dict)


class ReadModel:
    def __init__(self, retain_rows: bool = True) -> None:
        # Earnings and period rows never change once written: a projector (retain_rows=False) forgets them
        # after taking them, so its memory grows with payees and payouts, not with every payment.
        self.retain_rows = retain_rows
        self.earnings: dict[str, PayeeEarnings] = {}
        self.book = PayoutBook()
        self.facts: dict[str, _PayeeFacts] = {}
        self.heads: dict[str, tuple[int, str, str]] = {}  # payee -> (sequence, event id, hash of stored bytes)
        self.earning_rows: dict[str, dict[str, Any]] = {}
        self.period_rows: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.daily: dict[tuple[date, str, int], dict[str, int]] = {}  # (day, currency, partition) -> totals
        self.events = 0
        self._prior_status: PayoutStatus | None = None
        self._partition = 0  # the ledger.events partition of the event being applied
        self._dirty: dict[str, set] = {table: set() for table in (*TABLES, "projection_heads")}

    # --- folding -----------------------------------------------------------------------------

    def apply(self, event: Event, encoded: bytes, record: bool = True, *, partition: int) -> bool:
        """Fold one sequenced event, read from `partition` of ledger.events (skipped when its payee already
        has it: False). With record=False the rows it changes are not marked for writing (the tables already
        hold them: a projector restarting)."""
        if not record:
            saved, self._dirty = self._dirty, {table: set() for table in self._dirty}
            try:
                return self.apply(event, encoded, partition=partition)
            finally:
                if not self.retain_rows:
                    for (event_id,) in self._dirty["earnings"]:
                        self.earning_rows.pop(event_id, None)
                    for key in self._dirty["payout_periods"]:
                        self.period_rows.pop(key, None)
                self._dirty = saved
        payee, sequence = event.payee_id, event.envelope.sequence
        head = self.heads.get(payee)
        if head is not None and sequence <= head[0]:
            return False
        self.earnings.setdefault(payee, PayeeEarnings(payee)).apply(event)
        payout_id = event.payload.get("payout_id") if event.event_type.startswith("Payout") else None
        prior = self.book.get(payout_id) if payout_id else None
        self._prior_status = prior.status if prior is not None else None
        changed_payout = self.book.apply(event)
        if changed_payout and event.event_type == "PayoutRequested":
            self.book.requests[payout_id] = _request(self.book.requests[payout_id])
        self.heads[payee] = (sequence, event.envelope.event_id, event_hash(encoded))
        self.events += 1
        self._partition = partition
        self._facts(event)
        self._dirty["projection_heads"].add((payee,))
        self._dirty["payees"].add((payee,))
        # every event of a payee can move its balances (a cancel carries no amount, yet returns money), and
        # each balance row carries the payee's last event time: all of the payee's currencies are rewritten
        for currency in self.earnings[payee].currencies() | self._currencies(event):
            self._dirty["payee_balances"].add((payee, currency))
        kind = event.event_type
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(event)
        if changed_payout and "payout_id" in event.payload and event.payload["payout_id"] in self.book.payouts:
            payout_id = event.payload["payout_id"]
            self._dirty["payouts"].add((payout_id,))
            for attempt in self.book.payouts[payout_id].attempts:
                self._dirty["payout_attempts"].add((payout_id, attempt.number))
        return True

    def _facts(self, event: Event) -> None:
        facts = self.facts.setdefault(event.payee_id, _PayeeFacts())
        facts.events += 1
        at = event.envelope.occurred_at
        facts.first_event_at = at if facts.first_event_at is None else min(facts.first_event_at, at)
        facts.last_event_at = at if facts.last_event_at is None else max(facts.last_event_at, at)
        if event.event_type == "PayeeHoldSet":
            facts.hold_reason = event.payload["reason"] if event.payload["held"] else ""
        elif event.event_type == "PayeeScheduleSet":
            p = event.payload
            minimum = p["minimum_payout"]
            facts.schedule = {
                "frequency": p["frequency"], "day_of_week": p["day_of_week"], "day_of_month": p["day_of_month"],
                "cutoff_time": p["cutoff_time"], "timezone": p["timezone"], "plan": p["plan"],
                "payout_method": p["payout_method"], "destination": p["destination"],
                "minimum_payout_minor": minimum.amount_minor if minimum else None,
                "minimum_payout_currency": minimum.currency.code if minimum else None}

    @staticmethod
    def _currencies(event: Event) -> set[str]:
        return {value.currency.code for value in event.payload.values() if isinstance(value, Money)}

    def _day(self, at: datetime, currency: str) -> dict[str, int]:
        key = (at.date(), currency, self._partition)
        self._dirty["daily_totals_by_partition"].add(key)
        return self.daily.setdefault(key, dict.fromkeys(DAILY_FIELDS, 0))

    def _earning(self, event: Event, kind: str, business_id: str, amount: Money, signed: int, **extra: Any) -> None:
        envelope = event.envelope
        self.earning_rows[envelope.event_id] = {
            "event_id": envelope.event_id, "payee_id": event.payee_id, "sequence": envelope.sequence, "kind": kind,
            "business_id": business_id, "payment_id": extra.get("payment_id"), "name": extra.get("name"),
            "currency": amount.currency.code, "exponent": amount.currency.exponent, "amount_minor": amount.amount_minor,
            "signed_amount_minor": signed, "services": extra.get("services", 0), "source": extra.get("source", ""),
            "occurred_at": envelope.occurred_at, "recorded_at": envelope.recorded_at}
        self._dirty["earnings"].add((envelope.event_id,))

    def _on_PaymentCompleted(self, event: Event) -> None:
        p = event.payload
        self._earning(event, "payment", p["payment_id"], p["amount"], p["amount"].amount_minor,
                      services=p["services"], source=p["source"])
        day = self._day(event.envelope.occurred_at, p["amount"].currency.code)
        day["payments"] += 1
        day["payments_minor"] += p["amount"].amount_minor

    def _on_PaymentRefunded(self, event: Event) -> None:
        p = event.payload
        self._earning(event, "refund", p["refund_id"], p["amount"], -p["amount"].amount_minor, payment_id=p["payment_id"])
        day = self._day(event.envelope.occurred_at, p["amount"].currency.code)
        day["refunds"] += 1
        day["refunds_minor"] += p["amount"].amount_minor

    def _on_EarningsAdjusted(self, event: Event) -> None:
        p = event.payload
        signed = p["amount"].amount_minor if p["kind"] == "BONUS" else -p["amount"].amount_minor
        self._earning(event, p["kind"].lower(), p["adjustment_id"], p["amount"], signed, name=p["name"])
        self._day(event.envelope.occurred_at, p["amount"].currency.code)["adjustments_minor"] += signed

    def _period(self, event: Event, decision: str, carried_reason: str, payout_id: str | None) -> None:
        p = event.payload
        net = p["net"]
        key = (event.payee_id, p["period_id"], net.currency.code)
        self.period_rows[key] = {
            "payee_id": event.payee_id, "period_id": p["period_id"], "currency": net.currency.code,
            "exponent": net.currency.exponent, "period_start": p["period_start"], "period_end": p["period_end"],
            "decision": decision, "carried_reason": carried_reason, **_money("gross", p["gross"]),
            **_money("fee", p["fee"]), "deductions_minor": sum(line["amount"].amount_minor for line in p["deductions"]),
            **_money("carry_over", p["carry_over"]), **_money("net", net), "payment_count": p["payment_count"],
            "late_payment_count": p["late_payment_count"], "payout_id": payout_id,
            "closed_at": event.envelope.occurred_at}
        self._dirty["payout_periods"].add(key)

    def _on_PayoutRequested(self, event: Event) -> None:
        p = event.payload
        self._period(event, "payout", "", p["payout_id"])
        day = self._day(event.envelope.occurred_at, p["net"].currency.code)
        day["payouts_requested"] += 1
        day["payouts_requested_minor"] += p["net"].amount_minor
        day["fees_minor"] += p["fee"].amount_minor

    def _on_BalanceCarried(self, event: Event) -> None:
        self._period(event, "carried", event.payload["reason"], None)

    def _on_PayoutSettled(self, event: Event) -> None:
        self._outcome(event, "payouts_settled", PayoutStatus.SETTLED)

    def _on_PayoutFailed(self, event: Event) -> None:
        if not event.payload["retryable"]:
            self._outcome(event, "payouts_failed", PayoutStatus.FAILED)

    def _outcome(self, event: Event, counter: str, status: PayoutStatus) -> None:
        """Counted when the payout's status became `status` here: an outcome the lifecycle ignored (settled
        after it had failed, a second copy) moves no money and is not counted."""
        payout = self.book.get(event.payload["payout_id"])
        if payout is None or payout.status is not status or self._prior_status is status:
            return
        day = self._day(event.envelope.occurred_at, payout.amount.currency.code)
        day[counter] += 1
        day[f"{counter}_minor"] += payout.amount.amount_minor

    # --- finished payouts out of memory ---------------------------------------------------------

    def evict_finished(self) -> dict[str, tuple[Payout, dict[str, Any], tuple[str, int] | None]]:
        """Take every settled, failed or cancelled payout out of memory (with its request, and the settled
        amount its payee keeps for a later reversal); the caller stores them. Their rows must be written."""
        finished = [payout_id for payout_id, payout in self.book.payouts.items() if payout.status.terminal]
        evicted = {}
        for payout_id in finished:
            payout, request = self.book.evict(payout_id)
            paid_out = self.earnings[payout.payee_id].paid_out.pop(payout_id, None)
            evicted[payout_id] = (payout, request, paid_out)
        return evicted

    def restore(self, evicted: Mapping[str, tuple[Payout, dict[str, Any], tuple[str, int] | None]]) -> None:
        """Put back payouts taken out by evict_finished() (before applying an event that names them)."""
        for payout_id, (payout, request, paid_out) in evicted.items():
            if payout_id in self.book.payouts:
                continue
            self.book.restore(payout, request)
            if paid_out is not None:
                self.earnings[payout.payee_id].paid_out[payout_id] = paid_out

    # --- rows --------------------------------------------------------------------------------

    def take_changes(self) -> dict[str, list[dict[str, Any]]]:
        """The rows changed since the last call, per table (absolute values)."""
        changes = {table: [self.row(table, key) for key in sorted(keys, key=repr)] for table, keys in self._dirty.items()}
        if not self.retain_rows:
            for (event_id,) in self._dirty["earnings"]:
                del self.earning_rows[event_id]
            for key in self._dirty["payout_periods"]:
                del self.period_rows[key]
        for keys in self._dirty.values():
            keys.clear()
        return {table: [row for row in rows if row is not None] for table, rows in changes.items()}

    def all_rows(self) -> dict[str, dict[tuple, dict[str, Any]]]:
        """Every row of every table, keyed by primary key (for `ledger verify`)."""
        keys: dict[str, list[tuple]] = {
            "payees": [(p,) for p in self.facts], "projection_heads": [(p,) for p in self.heads],
            "payee_balances": [(p, c) for p, e in self.earnings.items() for c in e.currencies()],
            "earnings": [(i,) for i in self.earning_rows], "payout_periods": list(self.period_rows),
            "payouts": [(i,) for i in self.book.payouts],
            "payout_attempts": [(i, a.number) for i, p in self.book.payouts.items() for a in p.attempts],
            "daily_totals_by_partition": list(self.daily)}
        return {table: {key: self.row(table, key) for key in table_keys} for table, table_keys in keys.items()}

    def row(self, table: str, key: tuple) -> dict[str, Any] | None:
        return getattr(self, f"_row_{table}")(*key)

    def _row_projection_heads(self, payee_id: str) -> dict[str, Any]:
        sequence, event_id, digest = self.heads[payee_id]
        return {"payee_id": payee_id, "last_sequence": sequence, "last_event_id": event_id, "last_hash": digest}

    def _row_payees(self, payee_id: str) -> dict[str, Any]:
        facts, earnings = self.facts[payee_id], self.earnings[payee_id]
        schedule = facts.schedule or dict.fromkeys((
            "frequency", "day_of_week", "day_of_month", "cutoff_time", "timezone", "plan", "payout_method",
            "destination", "minimum_payout_minor", "minimum_payout_currency"))
        return {"payee_id": payee_id, **schedule, "held": earnings.held, "hold_reason": facts.hold_reason,
                "events": facts.events, "first_event_at": facts.first_event_at, "last_event_at": facts.last_event_at}

    def _row_payee_balances(self, payee_id: str, currency: str) -> dict[str, Any] | None:
        earnings = self.earnings[payee_id]
        if currency not in earnings.currencies():
            return None
        balance = earnings.balance(currency)
        unclosed = sum(line.gross_minor for line in earnings.lines if line.currency == currency)
        return {"payee_id": payee_id, "currency": currency, "exponent": balance.earned_net.currency.exponent,
                **_money("earned_net", balance.earned_net), **_money("settled", balance.settled),
                **_money("in_flight", balance.in_flight), **_money("unpaid", balance.unpaid),
                "unclosed_gross_minor": unclosed, "updated_at": self.facts[payee_id].last_event_at}

    def _row_earnings(self, event_id: str) -> dict[str, Any]:
        return self.earning_rows[event_id]

    def _row_payout_periods(self, payee_id: str, period_id: str, currency: str) -> dict[str, Any]:
        return self.period_rows[(payee_id, period_id, currency)]

    def _row_payouts(self, payout_id: str) -> dict[str, Any]:
        return payout_row(self.book.payouts[payout_id], self.book.requests[payout_id])

    def _row_payout_attempts(self, payout_id: str, number: int) -> dict[str, Any]:
        payout = self.book.payouts[payout_id]
        a = payout.attempt(number)
        return {"payout_id": payout_id, "attempt": number, "payee_id": payout.payee_id, "provider": a.provider,
                "submitted_at": a.submitted_at, "outcome": a.outcome, "provider_reference": a.provider_reference,
                "reason_code": a.reason_code, "message": a.message, "retryable": a.retryable,
                "finished_at": a.finished_at}

    def _row_daily_totals_by_partition(self, day: date, currency: str, partition: int) -> dict[str, Any]:
        from ledger.currencies import currency as currency_of

        return {"day": day, "currency": currency, "partition": partition, "exponent": currency_of(currency).exponent,
                **self.daily[(day, currency, partition)]}


def _plain(value: Any) -> Any:
    """A frozen event value as plain dicts and lists (picklable, for checkpoints)."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _request(payload: Mapping[str, Any]) -> dict[str, Any]:
    return {name: _plain(payload[name]) for name in REQUEST_FIELDS}


def payout_row(payout: Payout, request: Any) -> dict[str, Any]:
    """A payout's row: its request's breakdown and its lifecycle."""
    p = request
    finished = max((a.finished_at for a in payout.attempts if a.finished_at), default=None) if payout.status.terminal else None
    return {
        "payout_id": payout.payout_id, "payee_id": payout.payee_id, "period_id": payout.period_id,
        "trigger": payout.trigger, "plan": p["plan"], "method": payout.method, "currency": payout.amount.currency.code,
        "exponent": payout.amount.currency.exponent, **_money("gross", p["gross"]), "services": p["services"],
        "rate_bp": p["rate_bp"], **_money("payee_share", p["payee_share"]), **_money("fee", p["fee"]),
        **_money("carry_over", p["carry_over"]), **_money("net", p["net"]),
        "deductions": [{"name": line["name"], "amount_minor": line["amount"].amount_minor} for line in p["deductions"]],
        "payment_count": p["payment_count"], "status": payout.status.value, "attempts": len(payout.attempts),
        "provider": payout.current.provider if payout.current else "", "provider_reference": payout.provider_reference,
        "reason_code": payout.reason_code, "message": payout.message, "reversed": payout.reversed,
        "next_attempt_due": payout.due_at, "requested_at": payout.requested_at, "accepted_at": payout.accepted_at,
        "finished_at": finished or (payout.updated_at if payout.status.terminal else None),
        "updated_at": payout.updated_at}
