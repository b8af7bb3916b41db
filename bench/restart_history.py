"""The history of the restart benchmark: payments over N payees and payout rounds settled through the Stripe sandbox.

History grows to a target number of ledger.events records in steps, so one stack can be measured at
10,000 events and then grown to 110,000. Each payout round dates its payments on its own past day, closes
that day for every payee (as `ledger run` would: plan_run + send_commands) and waits until every payout
settled or failed; the rest of the target is filled with payments dated today, which stay open. The
benchmark keeps its own fold of ledger.events (a LogTail from offset 0), so deciding a round never reads
the whole log again.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Callable

from bench_processes import BenchFailure
from bench_reading import LogTail
from ledger.codec import EventCodec
from ledger.earnings import PayeeEarnings
from processors.ledger_client import LedgerClient
from processors.payout_run import CLOSE_TYPES, plan_run, send_commands
from runtime.plans import plan_book
from runtime.settings import Settings

FINAL = ("PayoutSettled", "PayoutFailed")
WAIT_EVERY_S = 0.2


def deadline_s(count: int, floor_per_s: float, base_s: float = 120.0) -> float:
    """A generous bound: base_s plus the time `count` items take at a rate far below any seen here."""
    return base_s + count / floor_per_s


class History:
    """Writes the benchmark's history and follows ledger.events from its first record."""

    def __init__(self, settings: Settings, bootstrap: str, payees: int, run_id: str, rounds_planned: int,
                 check: Callable[[str], None], say: Callable[[str], None]) -> None:
        self.settings, self.bootstrap, self.run_id = settings, bootstrap, run_id
        self.payees = [f"restart-{run_id}-{i}" for i in range(payees)]
        self.check, self.say = check, say  # check(during) raises when a worker died
        self.codec = EventCodec()
        self.tail = LogTail(bootstrap, settings.topic_events)  # the topic is new: this follows it from offset 0
        self.earnings: dict[str, PayeeEarnings] = {}
        self.counts: Counter[str] = Counter()
        self.close_ids: set[str] = set()
        self.events = 0
        self.payments_sent = 0
        self.rounds_done = 0
        self.rounds_planned = max(1, rounds_planned)
        self.round_events: list[int] = []  # events each round added (its payments not counted)
        today = datetime.now(timezone.utc).replace(hour=12, minute=0, second=0, microsecond=0)
        self.first_day = today - timedelta(days=self.rounds_planned + 1)

    def close(self) -> None:
        self.tail.close()

    def follow(self) -> None:
        for record in self.tail.drain():
            event = self.codec.decode(record.value)
            self.earnings.setdefault(event.payee_id, PayeeEarnings(event.payee_id)).apply(event)
            self.counts[event.event_type] += 1
            if event.event_type in CLOSE_TYPES:
                self.close_ids.add(event.envelope.event_id)
            self.events += 1

    def wait(self, done: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.follow()
            if done():
                return
            self.check(what)
            if time.monotonic() > deadline:
                raise BenchFailure(f"restart history: {what} not done after {timeout_s:.0f} s "
                                   f"({self.events:,} events, {dict(self.counts)})")
            time.sleep(WAIT_EVERY_S)

    def schedules(self, accounts: dict[str, str]) -> None:
        """Every payee is paid daily (cutoff 23:59 UTC) through stripe_standard to its sandbox account."""
        with LedgerClient(self.bootstrap, self.settings) as client:
            for payee_id in self.payees:
                client.set_schedule(payee_id, frequency="DAILY", cutoff_time="23:59", timezone="UTC",
                                    plan="flat-80", method="stripe_standard", destination=accounts[payee_id],
                                    wait=False)
            client.flush(timeout_s=deadline_s(len(self.payees), 100))
        self.wait(lambda: self.counts["PayeeScheduleSet"] >= len(self.payees), deadline_s(len(self.payees), 20),
                  "the payees' schedules chained")

    def pay(self, count: int, occurred_at: datetime, label: str) -> list[str]:
        """`count` payments over the payees, all dated occurred_at; waits until chained; returns their event ids."""
        if count <= 0:
            return []
        stamp = occurred_at.isoformat()
        first = self.payments_sent
        records = [{"payment_id": f"restart-{self.run_id}-{first + i}",
                    "payee_id": self.payees[(first + i) % len(self.payees)],
                    "amount_minor": 1_000 + (first + i) % 9_000, "currency": "USD", "occurred_at": stamp,
                    "source": "bench"} for i in range(count)]
        with LedgerClient(self.bootstrap, self.settings) as client:
            sent = [client.send(client.validate(record)) for record in records]
            client.flush(timeout_s=deadline_s(count, 100))
        self.payments_sent += count
        want = self.payments_sent
        self.wait(lambda: self.counts["PaymentCompleted"] >= want, deadline_s(count, 50),
                  f"{label}: {count:,} payments chained")
        return sent

    def send_waiting(self) -> str:
        """One new payment into payments.incoming, not waited for (the sequencer is stopped); its event id."""
        index = self.payments_sent
        record = {"payment_id": f"restart-{self.run_id}-{index}", "payee_id": self.payees[index % len(self.payees)],
                  "amount_minor": 1_234, "currency": "USD", "source": "bench",
                  "occurred_at": (datetime.now(timezone.utc) - timedelta(minutes=5)).isoformat()}
        with LedgerClient(self.bootstrap, self.settings) as client:
            event_id = client.send(client.validate(record))
            client.flush(timeout_s=30)
        self.payments_sent += 1
        return event_id

    def payout_round(self) -> int:
        """Close the due periods of every payee (plan_run at now) and wait until each payout ended."""
        before, finals_before = self.events, sum(self.counts[kind] for kind in FINAL)
        plan = plan_run(list(self.earnings.values()), datetime.now(timezone.utc), plan_book(self.settings),
                        self.settings.payout_policy())
        send_commands(self.bootstrap, self.settings.topic_commands, plan.closes, self.codec)
        ids = {close.envelope.event_id for close in plan.closes}
        payouts = len(plan.payouts)
        self.wait(lambda: ids <= self.close_ids and sum(self.counts[k] for k in FINAL) >= finals_before + payouts,
                  deadline_s(payouts, 5), f"payout round {self.rounds_done + 1}: {payouts} payouts ended")
        self.rounds_done += 1
        self.round_events.append(self.events - before)
        return payouts

    def grow_to(self, target: int, rounds_by_then: int) -> dict[str, int]:
        """Payments and payout rounds until ledger.events holds about `target` records (at least, when the
        payouts alone take more). Returns what this step added."""
        self.follow()
        start_events, start_sent = self.events, self.payments_sent
        rounds = max(0, min(rounds_by_then, self.rounds_planned) - self.rounds_done)
        payouts = 0
        for index in range(rounds):
            left = rounds - index
            guess = (sum(self.round_events) // len(self.round_events)) if self.round_events else 3 * len(self.payees)
            payments = max(len(self.payees), (target - self.events - left * guess) // left)
            day = self.first_day + timedelta(days=self.rounds_done)
            self.say(f"round {self.rounds_done + 1}: {payments:,} payments dated {day.date()}, then their payouts")
            self.pay(payments, day, f"round {self.rounds_done + 1}")
            payouts += self.payout_round()
        rest = target - self.events
        if rest > 0:
            self.say(f"{rest:,} payments dated today (left open)")
            self.pay(rest, datetime.now(timezone.utc) - timedelta(minutes=5), "top-up")
        self.follow()
        return {"events_added": self.events - start_events, "payments_added": self.payments_sent - start_sent,
                "payout_rounds": rounds, "payouts": payouts}

    def summary(self) -> dict[str, object]:
        return {"events": self.events, "payees": len(self.payees), "payments": self.counts["PaymentCompleted"],
                "payout_rounds": self.rounds_done, "payouts_settled": self.counts["PayoutSettled"],
                "payouts_failed": self.counts["PayoutFailed"], "by_type": dict(sorted(self.counts.items()))}
