"""The measured phases of bench/run_all.py: (b) append, (c) end to end, (e) rebuild ((d) payouts: bench_payouts.py).

Every wait is bounded: a phase that does not finish by its deadline, or whose worker process died,
raises BenchFailure naming the phase, how far it got, and the worker's last log lines.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import sqlalchemy
from rich.progress import Progress, TaskID

from bench_processes import BenchFailure, LedgerProcess
from bench_reading import LogTail, TailRecord
from processors.ledger_client import LedgerClient
from runtime.database import make_engine
from runtime.settings import Settings

CURRENCIES = ("USD", "EUR", "XOF")
FOLLOW_EVERY_S = 0.2
ROW_POLL_S = 0.05


@dataclass
class BenchContext:
    settings: Settings
    bootstrap: str
    database_url: str  # the benchmark's own schema
    progress: Progress
    workers: dict[str, LedgerProcess] = field(default_factory=dict)  # running workers, checked while waiting
    run_id: str = ""

    def check_workers(self, during: str) -> None:
        for worker in self.workers.values():
            if worker.popen.returncode is None:
                worker.check_alive(during)


def deadline_s(count: int, floor_per_s: float, base_s: float = 60.0) -> float:
    """A generous bound: base_s plus the time `count` items take at a rate far below any seen here."""
    return base_s + count / floor_per_s


def payments(run_id: str, label: str, count: int, payees: int, occurred_at: datetime) -> list[dict]:
    stamp = occurred_at.isoformat()
    return [{"payment_id": f"{run_id}-{label}-{i}", "payee_id": f"bench-{label}-{i % payees}",
             "amount_minor": 1_000 + i % 9_000, "currency": CURRENCIES[i % 3], "occurred_at": stamp,
             "source": "bench"} for i in range(count)]


def follow(ctx: BenchContext, tail: LogTail, want: int, timeout_s: float, what: str, task: TaskID,
           keep: Callable[[TailRecord], bool] = lambda _: True) -> list[TailRecord]:
    """Drain the tail until `want` kept records have arrived; bounded by timeout_s."""
    kept: list[TailRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(kept) < want:
        kept.extend(record for record in tail.drain() if keep(record))
        ctx.progress.update(task, completed=min(len(kept), want))
        if len(kept) >= want:
            break
        ctx.check_workers(what)
        if time.monotonic() > deadline:
            raise BenchFailure(f"{what}: {len(kept)} of {want} after {timeout_s:.0f} s (`ledger dlq list` "
                               f"with LEDGER_TOPIC_DLQ={ctx.settings.topic_dlq} shows refused records)")
        time.sleep(FOLLOW_EVERY_S)
    return kept


def append_throughput(ctx: BenchContext, count: int, payees: int) -> dict[str, float]:
    """(b) LedgerClient -> payments.incoming -> sequencer -> ledger.events, records chained per second."""
    records = payments(ctx.run_id, "b", count, payees, datetime.now(timezone.utc) - timedelta(hours=1))
    tail = LogTail(ctx.bootstrap, ctx.settings.topic_events)
    sending = ctx.progress.add_task("(b) append: LedgerClient sends", total=count)
    started = time.time()
    with LedgerClient(ctx.bootstrap, ctx.settings) as client:
        for index, record in enumerate(records, 1):
            client.send(client.validate(record))
            if index % 1000 == 0:
                ctx.progress.update(sending, completed=index)
        client.flush(timeout_s=deadline_s(count, 100))
    sent_s = time.time() - started
    ctx.progress.update(sending, completed=count)
    chaining = ctx.progress.add_task("(b) append: sequencer chains", total=count)
    try:
        chained = follow(ctx, tail, count, deadline_s(count, 50), "(b) append: events chained", chaining)
    finally:
        tail.close()
    chained_s = max(record.timestamp_s for record in chained) - started
    return {"records": count, "payees": payees, "client_send_s": round(sent_s, 3),
            "client_records_per_s": count / sent_s, "chained_s": round(chained_s, 3),
            "chained_records_per_s": count / chained_s}


class RowWatcher(threading.Thread):
    """Polls the earnings table for payments sent and not yet seen; a row's time is the poll that saw it."""

    def __init__(self, database_url: str) -> None:
        super().__init__(name="bench-row-watcher", daemon=True)
        self._engine = make_engine(database_url)
        self._lock = threading.Lock()
        self._pending: dict[str, float] = {}  # event id -> time sent
        self.latencies_s: list[float] = []
        self.first_sent = float("inf")
        self.last_seen = 0.0
        self.polls = 0
        self.largest_poll_rows = 0  # rows that appeared between two polls, at most: the projector's batches show here
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def add(self, event_id: str, sent_at: float) -> None:
        with self._lock:
            self._pending[event_id] = sent_at
            self.first_sent = min(self.first_sent, sent_at)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)
        self._engine.dispose()

    def run(self) -> None:
        query = sqlalchemy.text("SELECT event_id FROM earnings WHERE event_id = ANY(:ids)")
        try:
            with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                while not self._halt.is_set():
                    with self._lock:
                        ids = list(self._pending)
                    if ids:
                        # a row this statement sees was committed before it started: before polled_at (+ <1 ms)
                        polled_at = time.time()
                        found = connection.execute(query, {"ids": ids}).scalars().all()
                        self.polls += 1
                        self.largest_poll_rows = max(self.largest_poll_rows, len(found))
                        with self._lock:
                            for event_id in found:
                                self.latencies_s.append(polled_at - self._pending.pop(event_id))
                            if found:
                                self.last_seen = max(self.last_seen, polled_at)
                    self._halt.wait(ROW_POLL_S)
        except BaseException as exc:  # reported by the phase, which then fails with it
            self.error = exc


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def end_to_end(ctx: BenchContext, label: str, count: int, payees: int, rate_per_s: float | None) -> dict[str, float]:
    """(c) append -> sequencer -> projector -> a row in `earnings`: payments/s, and latency per payment.

    rate_per_s None sends as fast as LedgerClient can (the capacity); a rate paces the sends evenly, so
    the latency is that of a system keeping up rather than the time spent queued behind a burst.
    """
    records = payments(ctx.run_id, label, count, payees, datetime.now(timezone.utc) - timedelta(hours=1))
    name = "burst" if rate_per_s is None else f"paced at {rate_per_s:,.0f}/s"
    sending = ctx.progress.add_task(f"(c) end to end, {name}: sends", total=count)
    watcher = RowWatcher(ctx.database_url)
    watcher.start()
    try:
        with LedgerClient(ctx.bootstrap, ctx.settings) as client:
            started = time.monotonic()
            for index, record in enumerate(records):
                if rate_per_s is not None:
                    delay = started + index / rate_per_s - time.monotonic()
                    if delay > 0.002:
                        time.sleep(delay)  # pacing the load generator, not waiting for the system
                sent_at = time.time()
                watcher.add(client.send(client.validate(record)), sent_at)
                if index % 500 == 0:
                    ctx.progress.update(sending, completed=index)
            client.flush(timeout_s=deadline_s(count, 100))
        ctx.progress.update(sending, completed=count)
        projected = ctx.progress.add_task(f"(c) end to end, {name}: rows in earnings", total=count)
        deadline = time.monotonic() + deadline_s(count, 50)
        while len(watcher.latencies_s) < count:
            ctx.progress.update(projected, completed=len(watcher.latencies_s))
            if watcher.error is not None:
                raise BenchFailure(f"(c) end to end: polling the earnings table failed: {watcher.error}")
            ctx.check_workers("(c) end to end")
            if time.monotonic() > deadline:
                raise BenchFailure(f"(c) end to end ({name}): {len(watcher.latencies_s)} of {count} payments "
                                   f"projected into earnings after {deadline_s(count, 50):.0f} s")
            time.sleep(FOLLOW_EVERY_S)
        ctx.progress.update(projected, completed=count)
    finally:
        watcher.stop()
    latencies, elapsed = watcher.latencies_s, watcher.last_seen - watcher.first_sent
    return {"payments": count, "offered_per_s": rate_per_s, "elapsed_s": round(elapsed, 3),
            "payments_per_s": count / elapsed, "latency_p50_s": percentile(latencies, 0.50),
            "latency_p99_s": percentile(latencies, 0.99), "latency_max_s": max(latencies),
            "latency_mean_s": statistics.fmean(latencies), "row_polls": watcher.polls,
            "largest_poll_rows": watcher.largest_poll_rows,
            "poll_interval_s": ROW_POLL_S}


def rebuild(ctx: BenchContext, env: dict[str, str], log_dir: Path, events: int) -> tuple[dict[str, float], LedgerProcess]:
    """(e) `ledger projections rebuild --json` as a process: truncate the read models, project the whole ledger."""
    task = ctx.progress.add_task("(e) projections rebuild", total=None)
    process = LedgerProcess("rebuild", ["projections", "rebuild", "--json"], env, log_dir)
    code = process.wait_exit(deadline_s(events, 100), "the rebuild")
    ctx.progress.update(task, total=1, completed=1)
    if code != 0:
        raise BenchFailure(f"`ledger projections rebuild` exited with {code}:\n{process.tail()}")
    report = json.loads(process.stdout())
    work_s = report["seconds"] - 0.5  # the command waits 0.5 s idle to know it is done: not work
    return {"events": report["events"], "written": report["written"], "command_seconds": report["seconds"],
            "command_events_per_s": report["events_per_s"], "events_per_s": report["events"] / work_s}, process
