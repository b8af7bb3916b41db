"""The demo from start to finish: stack, sandboxes, processors, inputs, simulated days, payouts, quiet, verify.

The simulated clock runs over the last D days: payments occur across them, and ledger.clock is ticked
every TICK_STEP from D days ago to now, so the aggregator closes each period as its cutoff passes. After
each tick the demo waits until, folding the ledger as it stands, the domain sees nothing more due at that
tick (the same decision the aggregator makes), so the next tick never overtakes the closes of this one.
Payouts are paid at once, through the sandboxes, on the wall clock; retries wait seconds, not minutes.
"""

from __future__ import annotations

import random
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import sqlalchemy

from demo.data import DemoInputs, make_inputs, make_payees
from demo.drain import wait_quiet
from demo.loss_watch import LossWatch
from demo.operator import DemoOperator
from demo.processes import EVENT_MAKERS, Processors
from demo.sandboxes import Sandboxes
from demo.tail import LedgerTail
from ledger.codec import EventCodec
from processors.clock import send_tick
from processors.dead_letters import read_dead_letters
from processors.kafka_io import DeliveryTracker, flush_or_raise, make_producer
from processors.ledger_client import LedgerClient
from processors.operations import Operations
from processors.payout_run import fold_ledger
from projections.payout_controls import read_pause
from projections.verify import verify
from runtime import stack
from runtime.database import make_engine
from runtime.plans import plan_book
from runtime.settings import Settings
from runtime.single_instance import AlreadyRunning, single_instance

TICK_STEP = timedelta(hours=6)
BATCH = 500  # records per LedgerClient.record_batch
CLOSE_WAIT_S = 90.0  # for the closes of one tick (the first waits for the aggregator to start)
RETICK_S = 5.0  # a tick whose closes have not all come is sent again (same ids: no double close)
SETTLE_WAIT_S = 120.0
QUIET_WAIT_S = 60.0
LOCKED_PROCESSORS = ("sequencer", "projector", "transfers", "notifier")


class PaymentsLost(RuntimeError):
    """The sequencer committed past payments that never reached the ledger."""


class DemoRefused(RuntimeError):
    """The demo cannot run on this ledger; the message says why and what to do."""


@dataclass(frozen=True)
class DemoOptions:
    payees: int = 40
    payments: int = 2_000
    days: int = 7
    seed: int | None = None


class Reporter:
    """Progress of the demo's phases: the command shows it with rich; tests ignore it."""

    def phase(self, name: str, total: int | None = None) -> None: ...

    def advance(self, done: int) -> None: ...

    def note(self, text: str) -> None: ...


@dataclass
class Counts:
    started: float = field(default_factory=time.monotonic)
    records_sent: int = 0
    rejected_at_intake: int = 0
    ticks: int = 0
    reticks: int = 0


def run_demo(settings: Settings, options: DemoOptions, reporter: Reporter | None = None) -> dict[str, Any]:
    reporter = reporter or Reporter()
    seed = options.seed if options.seed is not None else random.randrange(2**31)
    rng = random.Random(seed)
    run_id = uuid.uuid4().hex[:8]  # not from the seed: the same seed twice is two runs, not 2,000 duplicates
    counts = Counts()

    reporter.phase("starting the embedded stack")
    stack.up(settings)
    bootstrap, database_url = stack.connections(settings)
    _refuse_unsafe(settings, database_url)
    earlier_held = _hold_earlier_payees(settings, bootstrap)

    now = datetime.now(timezone.utc).replace(microsecond=0)
    start = (now - timedelta(days=options.days)).replace(minute=0, second=0)
    payees = make_payees(run_id, options.payees, rng)
    with Sandboxes(settings.data_dir.resolve()) as sandboxes:
        payees = sandboxes.set_up(payees)
        inputs = make_inputs(run_id, payees, options.payments, start, now - timedelta(minutes=2), rng)
        by_id = {payee.payee_id: payee for payee in payees}
        env = {"LEDGER_KAFKA_BOOTSTRAP": bootstrap, "LEDGER_DATABASE_URL": database_url,
               "LEDGER_DATA_DIR": str(settings.data_dir.resolve())}
        reporter.phase("starting the processors")
        tail = LedgerTail(bootstrap, settings.topic_events, set(by_id))
        try:
            with Processors(settings.data_dir.resolve() / "demo" / "logs", env, sandboxes.transfer_env()) as processors, \
                    LedgerClient(bootstrap, settings) as client:
                operator = DemoOperator(client, Operations(settings, bootstrap, database_url), sandboxes, by_id)
                _append(settings, bootstrap, client, inputs, tail, processors, reporter, counts)
                sandboxes.inject_trouble()
                _simulate_days(settings, bootstrap, tail, operator, processors, start, now, reporter, counts)
                _append_late(client, inputs, tail, processors, operator, reporter)
                _settle(tail, operator, processors, reporter)
                reporter.phase("waiting for the projections")
                peaks = _peak_memory(processors.pids())
                processors.stop(EVENT_MAKERS)
                wait_quiet(settings, bootstrap, database_url, QUIET_WAIT_S, alive=processors.check)
                tail.poll()
                peaks.update(_peak_memory(processors.pids()))
            reporter.phase("verifying the read models against the ledger")
            report = verify(settings, bootstrap, database_url)
            dead = [entry for entry in read_dead_letters(bootstrap, settings.topic_dlq)
                    if entry.value in set(inputs.malformed)]
            summary = _summary(run_id, seed, options, inputs, tail, operator, sandboxes, report, dead, counts, peaks)
            return {**summary, "earlier_demo_payees_held": earlier_held}
        finally:
            tail.close()


def _refuse_unsafe(settings: Settings, database_url: str) -> None:
    """The demo pays through sandboxes: it must not run beside real processors or real payees."""
    for name in LOCKED_PROCESSORS:
        try:
            with single_instance(database_url, f"{name}:{settings.topic_events}"):
                pass
        except AlreadyRunning:
            raise DemoRefused(f"a `ledger {name}` is already running on this ledger: the demo starts its own "
                              "processors, configured for its sandboxes; stop it first") from None
    if read_pause(database_url).paused:
        raise DemoRefused("payouts are paused on this ledger: `ledger payouts resume` first")
    engine = make_engine(database_url)
    try:
        with engine.connect() as connection:
            foreign = connection.execute(sqlalchemy.text(
                "SELECT count(*) FROM payees WHERE payee_id NOT LIKE 'demo-%'")).scalar_one()
    finally:
        engine.dispose()
    if foreign:
        raise DemoRefused(f"this ledger has {foreign} payees that are not the demo's; the demo's transfer processor "
                          "would pay them through its sandboxes. Run the demo on its own stack: "
                          "LEDGER_DATA_DIR=.ledger-demo LEDGER_EMBEDDED_KAFKA_PORT=19192 "
                          "LEDGER_EMBEDDED_POSTGRES_PORT=15532 ledger demo")


def _hold_earlier_payees(settings: Settings, bootstrap: str) -> int:
    """Hold the payees of earlier demo runs: their sandbox accounts went with their run, so this run's
    providers must not be asked to pay them (their periods still close; balances carry while held)."""
    earlier = [payee for payee, earnings in fold_ledger(bootstrap, settings.topic_events, EventCodec()).items()
               if payee.startswith("demo-") and not earnings.held]
    with LedgerClient(bootstrap, settings) as client:
        for payee in earlier:
            client.set_hold(payee, held=True, actor="ledger demo", wait=False,
                            reason="a payee of an earlier demo run: its sandbox accounts are gone")
        client.flush()
    return len(earlier)


def _wait(condition: Callable[[], bool], timeout_s: float, what: str, tail: LedgerTail, processors: Processors,
          operator: DemoOperator | None = None, every: Callable[[], None] = lambda: None,
          detail: Callable[[], str] = lambda: "", lost: Callable[[], str | None] = lambda: None) -> None:
    """Fold the ledger and let the operator act until `condition`; TimeoutError naming `what` otherwise,
    PaymentsLost as soon as `lost` (demo/loss_watch.py) proves that payments will never arrive."""
    deadline = time.monotonic() + timeout_s
    while True:
        tail.poll()
        if operator is not None:
            operator.act(tail)
        if condition():
            return
        processors.check()
        gone = lost()
        if gone:
            raise PaymentsLost(gone)
        if time.monotonic() > deadline:
            missing = detail()
            raise TimeoutError(f"the demo waited {timeout_s:.0f} s for {what}{f' ({missing})' if missing else ''};"
                               f" processor logs are in {processors.log_dir}")
        every()  # tail.poll() blocks up to 0.2 s when nothing arrives: this loop does not spin


def _append(settings: Settings, bootstrap: str, client: LedgerClient, inputs: DemoInputs, tail: LedgerTail,
            processors: Processors, reporter: Reporter, counts: Counts, watch: LossWatch | None = None) -> None:
    for payee in inputs.payees:
        client.set_schedule(payee.payee_id, frequency=payee.frequency, cutoff_time="23:59", timezone=payee.timezone,
                            plan=payee.plan, method=payee.method, day_of_week=payee.day_of_week,
                            destination=payee.destination, actor="demo", wait=False)
    client.flush()
    sending = inputs.records + inputs.duplicates
    reporter.phase(f"appending {len(inputs.records):,} payments, refunds and adjustments "
                   f"(+{len(inputs.duplicates)} redelivered, {len(inputs.malformed)} malformed)", len(sending))
    for index in range(0, len(sending), BATCH):
        result = client.record_batch(sending[index:index + BATCH])
        counts.records_sent += len(result.sent)
        counts.rejected_at_intake += len(result.rejected)
        reporter.advance(len(sending[index:index + BATCH]))
    producer, tracker = make_producer(bootstrap), DeliveryTracker()
    key = inputs.payees[0].payee_id.encode()
    for value in inputs.malformed:  # straight onto the topic, as a broken upstream producer would
        producer.produce(settings.topic_incoming, key=key, value=value, on_delivery=tracker)
    flush_or_raise(producer, tracker, len(inputs.malformed))
    if watch is not None:
        watch.expect({record["payment_id"] for record in inputs.records if record.get("type", "payment") == "payment"})
    expected = len(inputs.records) + len(inputs.payees)  # each record once, and each payee's schedule
    reporter.phase("sequencing: chaining each payee's events", expected)
    seen = [0]

    def chained() -> bool:
        total = sum(tail.counts.values())
        reporter.advance(total - seen[0])
        seen[0] = total
        return total >= expected

    _wait(chained, 120.0, f"{expected} events to be chained", tail, processors, lost=watch or (lambda: None))


def _simulate_days(settings: Settings, bootstrap: str, tail: LedgerTail, operator: DemoOperator,
                   processors: Processors, start: datetime, now: datetime, reporter: Reporter, counts: Counts) -> None:
    ticks = []
    at = start + TICK_STEP
    while at < now:
        ticks.append(at)
        at += TICK_STEP
    ticks.append(now)
    book, policy = plan_book(settings), settings.payout_policy()
    reporter.phase(f"moving the clock from {start:%a %d %b %H:%M} to now ({len(ticks)} ticks)", len(ticks))
    for at in ticks:
        send_tick(bootstrap, settings.topic_clock, at)
        counts.ticks += 1
        sent = [time.monotonic()]

        def retick() -> None:
            if time.monotonic() - sent[0] > RETICK_S:
                send_tick(bootstrap, settings.topic_clock, at)
                counts.reticks += 1
                sent[0] = time.monotonic()

        def due() -> list:  # from the ledger as it is now: an operator's early payout may have closed some
            return [close for payee in tail.earnings.values() for close in payee.decide_closes(at, book, policy)]

        def missing() -> str:
            return ", ".join(f"{close.event_type} of {close.payee_id} for {close.payload['period_id']}"
                             for close in due())

        _wait(lambda: not due(), CLOSE_WAIT_S, f"the closes due at {at.isoformat()}", tail, processors, operator,
              retick, detail=missing)
        reporter.advance(1)
        reporter.note(_payout_line(tail))


def _append_late(client: LedgerClient, inputs: DemoInputs, tail: LedgerTail, processors: Processors,
                 operator: DemoOperator, reporter: Reporter, watch: LossWatch | None = None) -> None:
    """Payments that arrive after their period closed: chained, and carried into the next period."""
    reporter.phase(f"appending {len(inputs.late)} late payments (their periods are closed)")
    before = tail.counts["PaymentCompleted"]
    client.record_batch(inputs.late)
    if watch is not None:
        watch.expect({record["payment_id"] for record in inputs.late})
    _wait(lambda: tail.counts["PaymentCompleted"] >= before + len(inputs.late), 60.0, "the late payments", tail,
          processors, operator, lost=watch or (lambda: None))


def _settle(tail: LedgerTail, operator: DemoOperator, processors: Processors, reporter: Reporter) -> None:
    reporter.phase("settling payouts (Stripe, bank, mobile money, manual)", len(tail.payouts()))
    done = [0]

    def all_final() -> bool:
        final = sum(1 for payout in tail.payouts() if payout.status.terminal)
        reporter.advance(final - done[0])
        done[0] = final
        return final == len(tail.payouts())

    _wait(all_final, SETTLE_WAIT_S, "every payout to be settled or failed", tail, processors, operator)


def _payout_line(tail: LedgerTail) -> str:
    payouts = tail.payouts()
    settled = sum(1 for payout in payouts if payout.status.value == "settled")
    failed = sum(1 for payout in payouts if payout.status.value == "failed")
    return f"payouts requested {len(payouts)}, settled {settled}, failed {failed}"


def _peak_memory(pids: dict[str, int]) -> dict[str, int]:
    """Each processor's peak resident memory (VmHWM, KiB), read just before it is stopped."""
    peaks = {}
    for name, pid in pids.items():
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as handle:
                peaks[name] = next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:"))
        except (OSError, StopIteration):
            continue
    return peaks


def _summary(run_id: str, seed: int, options: DemoOptions, inputs: DemoInputs, tail: LedgerTail,
             operator: DemoOperator, sandboxes: Sandboxes, report, dead: list, counts: Counts,  # noqa: ANN001
             peaks: dict[str, int]) -> dict[str, Any]:
    payouts = tail.payouts()
    by_status = {status: sum(1 for payout in payouts if payout.status.value == status)
                 for status in ("settled", "failed", "cancelled")}
    currencies = sorted({payee.currency for payee in inputs.payees})
    per_currency: dict[str, dict[str, int]] = {}
    unbalanced = []
    for code in currencies:
        row = {"earned_net": 0, "settled": 0, "in_flight": 0, "unpaid": 0}
        for earnings in tail.earnings.values():
            balance = earnings.balance(code)
            if not balance.balanced:
                unbalanced.append(f"{earnings.payee_id} {code}")
            for name in row:
                row[name] += getattr(balance, name).amount_minor
        row["payouts_settled_minor"] = sum(payout.amount.amount_minor for payout in payouts
                                           if payout.status.value == "settled" and payout.amount.currency.code == code)
        per_currency[code] = row
    reconciliation = _reconcile(payouts, sandboxes.paid_minor({payout.payout_id for payout in payouts}))
    unique_payments = {record["payment_id"] for record in inputs.records if record["type"] == "payment"}
    unique_payments |= {record["payment_id"] for record in inputs.late}
    chained_records = sum(tail.counts[kind] for kind in ("PaymentCompleted", "PaymentRefunded", "EarningsAdjusted"))
    balanced = (not unbalanced and report.chain_breaks == 0 and report.unbalanced == 0
                and all(row["in_flight"] == 0 for row in per_currency.values())
                and all(row["ok"] for row in reconciliation.values()) and sandboxes.paid_twice() == 0
                and tail.payment_ids == unique_payments)
    return {
        "run_id": run_id, "seed": seed, "payees": len(inputs.payees), "days": options.days,
        "payments_appended": tail.counts["PaymentCompleted"],
        "refunds_appended": tail.counts["PaymentRefunded"], "adjustments_appended": tail.counts["EarningsAdjusted"],
        "late_payments": len(inputs.late),
        "duplicates": len(inputs.duplicates),
        "duplicates_dropped": counts.records_sent + len(inputs.late) - chained_records,
        "rejected_at_intake": counts.rejected_at_intake,
        "malformed_sent": len(inputs.malformed), "dead_letters": len(dead),
        "dead_letter_reasons": sorted({entry.reason.split(":")[0] for entry in dead}),
        "ticks": counts.ticks, "ticks_resent": counts.reticks,
        "periods_closed": tail.counts["PayoutRequested"] + tail.counts["BalanceCarried"],
        "balances_carried": tail.counts["BalanceCarried"],
        "payouts_requested": len(payouts), "payouts_settled": by_status["settled"],
        "payouts_failed": by_status["failed"], "payouts_cancelled": by_status["cancelled"],
        "retries": tail.counts["PayoutRetryScheduled"], "operator_retries": operator.retries,
        "operator_confirmed": operator.confirmed, "operator_failed": operator.failed_by_hand,
        "payees_held": operator.holds, "provider_faults_injected": sandboxes.faults_injected,
        "paid_twice": sandboxes.paid_twice(),
        "failure_reasons": sorted({payout.reason_code for payout in payouts if payout.status.value == "failed"}),
        "per_currency": per_currency, "providers": reconciliation,
        "verify_events": report.events, "verify_mismatches": report.mismatches,
        "verify_differences": report.differences[:5], "chain_breaks": report.chain_breaks,
        "peak_memory_kib": peaks,
        "ledger_balanced": balanced,
        "elapsed_s": round(time.monotonic() - counts.started, 1),
    }


def _reconcile(payouts: list, paid: dict[str, dict[str, int]]) -> dict[str, dict[str, Any]]:
    """Per provider: what the ledger says was settled there against what the sandbox really paid."""
    provider_of = {"stripe_standard": "stripe", "bank_transfer": "bank_transfer", "mobile_money": "mobile_money"}
    rows: dict[str, dict[str, Any]] = {}
    for provider in ("stripe", "bank_transfer", "mobile_money"):
        ledger: dict[str, int] = {}
        for payout in payouts:
            if payout.status.value == "settled" and provider_of.get(payout.method) == provider:
                code = payout.amount.currency.code
                ledger[code] = ledger.get(code, 0) + payout.amount.amount_minor
        rows[provider] = {"ledger_settled_minor": ledger, "provider_paid_minor": paid[provider],
                          "ok": ledger == paid[provider]}
    return rows
