"""A provider lane paces calls (token bucket) and bounds how many run at once."""

from __future__ import annotations

import queue
import threading
from datetime import datetime, timezone

from connectors.base import Outcome, TransferRequest, TransferResult
from connectors.circuit_breaker import CircuitBreaker
from ledger.money import Money
from processors.provider_lane import ProviderLane, TokenBucket


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_the_bucket_allows_a_burst_then_paces_calls_at_the_rate() -> None:
    clock = FakeTime()
    bucket = TokenBucket(10.0, burst=3, monotonic=clock.monotonic, sleep=clock.sleep)
    for _ in range(3):
        bucket.acquire()
    assert clock.now == 0.0  # the burst needs no wait
    for _ in range(10):
        bucket.acquire()
    assert abs(clock.now - 1.0) < 1e-9  # ten more at 10 per second take one second


def test_the_bucket_refills_while_idle_but_never_beyond_its_burst() -> None:
    clock = FakeTime()
    bucket = TokenBucket(2.0, burst=2, monotonic=clock.monotonic, sleep=clock.sleep)
    bucket.acquire(), bucket.acquire()
    clock.now += 60.0  # a long idle time refills only up to the burst
    for _ in range(2):
        bucket.acquire()
    assert clock.slept == []
    bucket.acquire()
    assert clock.slept == [0.5]


class Blocking:
    name = "blocking"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.running = 0
        self.peak = 0
        self.lock = threading.Lock()

    def submit(self, request: TransferRequest) -> TransferResult:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        self.release.wait(10)
        with self.lock:
            self.running -= 1
        return TransferResult(Outcome.SETTLED, provider_reference=request.payout_id)

    def lookup(self, request: TransferRequest) -> TransferResult | None:
        return None


def test_no_more_calls_run_at_once_than_the_lane_allows() -> None:
    connector, results = Blocking(), queue.Queue()
    lane = ProviderLane(connector, concurrency=3, rate_per_s=1000.0, window=100, results=results,
                        breaker=CircuitBreaker(lambda: datetime.now(timezone.utc)))
    for i in range(8):
        lane.submit([TransferRequest(f"po-{i}", "payee", Money.of(100, "USD"), "manual", "", 1)])
    # 3 running and 3 queued behind them: the processor asks free_slots before handing out more
    assert lane.capacity == 6 and lane.free_slots == 6 - 8
    deadline = threading.Event()
    while connector.peak < 3 and not deadline.wait(0.01):
        pass
    connector.release.set()
    answers = [results.get(timeout=10) for _ in range(8)]
    lane.shutdown()
    assert connector.peak == 3
    assert sorted(a.payout_id for a in answers) == sorted(f"po-{i}" for i in range(8))
    assert all(a.result.outcome is Outcome.SETTLED for a in answers)
