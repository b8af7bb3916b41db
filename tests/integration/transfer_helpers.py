"""Helpers for transfer tests: payees with requested payouts, a sequencer running beside, ledger outcome counts."""

from __future__ import annotations

import threading
import time
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Callable

from ledger.codec import EventCodec
from ledger.payouts import PayoutBook
from processors.ledger_client import LedgerClient
from processors.payout_run import fold_ledger, plan_run, send_commands
from processors.sequencer import Sequencer
from processors.transfer_processor import TransferProcessor
from runtime.providers import build_connectors
from runtime.plans import plan_book
from runtime.settings import Settings
from tests.integration.sequencing_helpers import ledger_events, run_sequencer

TWO_DAYS_AGO = (datetime.now(timezone.utc) - timedelta(days=2)).replace(microsecond=0)


def request_payouts(settings: Settings, payees: dict[str, tuple[str, str]], minor: int = 5_000,
                    currency: str = "USD") -> list:
    """One PayoutRequested per payee (payee -> (method, destination)), chained; returns them."""
    with LedgerClient(settings.kafka_bootstrap, settings) as client:
        for payee_id, (method, destination) in payees.items():
            client.set_schedule(payee_id, frequency="DAILY", cutoff_time="23:59", timezone="UTC", plan="flat-80",
                                method=method, destination=destination, wait=False)
        client.record_batch([{"payment_id": f"pay-{payee_id}", "payee_id": payee_id, "amount_minor": minor,
                              "currency": currency, "occurred_at": TWO_DAYS_AGO.isoformat()} for payee_id in payees])
    chained = lambda kind: {e.payee_id for e, _ in ledger_events(settings) if e.event_type == kind}  # noqa: E731
    sequence_until(settings, lambda: set(payees) <= chained("PaymentCompleted"), "the payments chained")
    codec = EventCodec()
    plan = plan_run(fold_ledger(settings.kafka_bootstrap, settings.topic_events, codec).values(),
                    datetime.now(timezone.utc), plan_book(settings), settings.payout_policy())
    send_commands(settings.kafka_bootstrap, settings.topic_commands, plan.closes, codec)
    close_ids = {close.envelope.event_id for close in plan.closes}
    sequence_until(settings, lambda: close_ids <= {e.envelope.event_id for e, _ in ledger_events(settings)},
                   "the closes chained")
    return plan.payouts


def sequence_until(settings: Settings, condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Run the sequencer until idle, again while `condition` does not hold: under load a sequencer can go
    idle before its first fetch returns anything."""
    deadline = time.monotonic() + timeout_s
    run_sequencer(settings, idle_exit_s=1.0)
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        run_sequencer(settings, idle_exit_s=1.0)


@contextmanager
def running(worker):  # noqa: ANN001 - anything with run(handle_signals=) and stop()
    """Run a worker (sequencer, transfer processor) in a thread for the duration of the block."""
    thread = threading.Thread(target=worker.run, kwargs={"handle_signals": False}, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), f"{type(worker).__name__} did not stop within 30 s"


def sequencer_running(settings: Settings):
    return running(Sequencer(settings, settings.kafka_bootstrap))


def processor_running(settings: Settings, *, clock=None, database_url=None, log_lines=None):  # noqa: ANN001
    kwargs = {"database_url": database_url}
    if clock is not None:
        kwargs["clock"] = clock
    if log_lines is not None:
        kwargs["log"] = log_lines.append
    return running(TransferProcessor(settings, settings.kafka_bootstrap, build_connectors(settings), **kwargs))


def types_of(settings: Settings, payout_id: str) -> list[tuple[str, int | None]]:
    """The payout's lifecycle events in ledger order, with their attempt."""
    return [(e.event_type, e.payload.get("attempt", e.payload.get("next_attempt"))) for e, _ in ledger_events(settings)
            if e.event_type.startswith("Payout") and e.payload.get("payout_id") == payout_id]


def book_of(settings: Settings) -> PayoutBook:
    book = PayoutBook()
    for event, _ in ledger_events(settings):
        book.apply(event)
    return book


def outcome_counts(settings: Settings) -> Counter:
    """(event type, payout id) -> how many times it is chained (final failures only for PayoutFailed)."""
    counts: Counter = Counter()
    for event, _ in ledger_events(settings):
        if event.event_type == "PayoutSettled" or (event.event_type == "PayoutFailed" and not event.payload["retryable"]):
            counts[(event.event_type, event.payload["payout_id"])] += 1
    return counts


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.3) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)  # polling with a bounded deadline


def all_final(settings: Settings, payout_ids: set[str]) -> bool:
    book = book_of(settings)
    return all(book.get(pid) is not None and book.get(pid).status.terminal for pid in payout_ids)
