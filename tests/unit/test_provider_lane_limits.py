"""A lane's limits (which setting wins), its queue of calls behind the running ones, and what the circuit
withdraws from it; the rate limit counts provider requests, not calls."""

from __future__ import annotations

import queue
import threading
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from connectors.base import Outcome, TransferRequest, TransferResult
from connectors.circuit_breaker import CircuitBreaker
from connectors.manual import ManualConnector
from connectors.stripe_connector import StripeConnector
from ledger.money import Money
from processors.provider_lane import ProviderLane, TokenBucket
from runtime.providers import LaneLimits, lane_limits
from runtime.settings import Settings
from tests.unit.test_provider_lane import FakeTime




def stripe(key: str = "sk_test_x") -> StripeConnector:
    return StripeConnector(key, api_base="http://127.0.0.1:9")  # nothing is called


@pytest.mark.parametrize(("changes", "connector", "expected"), [
    ({}, stripe(), LaneLimits(16, 25.0, 200)),  # Stripe test mode: 25 requests/s
    ({}, stripe("sk_live_x"), LaneLimits(64, 100.0, 512)),  # live: 100/s; the window grows with the calls
    ({}, ManualConnector(), LaneLimits(4, 20.0, 200)),  # a provider without documented limits
    ({"provider_concurrency": 8, "provider_rate_per_s": 5.0}, stripe(), LaneLimits(8, 5.0, 200)),  # every lane
    ({"provider_concurrency": 8, "provider_limits": {"stripe": {"concurrency": 32}}}, stripe(),
     LaneLimits(32, 25.0, 256)),  # the provider's own override first, its default rate still
    ({"provider_limits": {"stripe": {"rate_per_s": 50}}}, ManualConnector(), LaneLimits(4, 20.0, 200)),
    ({"provider_window": 30}, stripe(), LaneLimits(16, 25.0, 30)),
])
def test_the_first_limit_set_wins(changes, connector, expected):
    assert lane_limits(Settings(**changes), connector) == expected


@pytest.mark.parametrize("limits", [{"stripe": {"threads": 4}}, {"stripe": {"concurrency": 0}},
                                    {"stripe": {"concurrency": 2.5}}, {"stripe": {"rate_per_s": 0}}])
def test_a_bad_per_provider_limit_names_the_provider(limits):
    with pytest.raises(ValidationError, match="stripe"):
        Settings(provider_limits=limits)


def test_per_provider_limits_come_from_json_in_the_environment(monkeypatch):
    monkeypatch.setenv("LEDGER_PROVIDER_LIMITS", '{"stripe": {"concurrency": 24, "rate_per_s": 40}}')
    monkeypatch.setenv("LEDGER_PROVIDER_QUICK_RETRIES", "4")
    settings = Settings()
    assert lane_limits(settings, stripe()) == LaneLimits(24, 40.0, 200)
    assert settings.provider_quick_retries == 4


def test_an_instant_payout_takes_two_tokens():
    clock = FakeTime()
    bucket = TokenBucket(10.0, burst=2, monotonic=clock.monotonic, sleep=clock.sleep)
    bucket.acquire(2)
    assert clock.slept == []
    bucket.acquire(2)  # empty: two tokens at 10/s
    assert abs(clock.now - 0.2) < 1e-9


class Held:
    """Each call waits until released; counts the calls that started."""

    name = "held"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.started: list[str] = []
        self._lock = threading.Lock()

    def submit(self, request: TransferRequest) -> TransferResult:
        with self._lock:
            self.started.append(request.payout_id)
        self.release.wait(10)
        return TransferResult(Outcome.SETTLED, provider_reference=request.payout_id)

    def lookup(self, request: TransferRequest) -> TransferResult | None:
        return None


def payment(i: int) -> TransferRequest:
    return TransferRequest(f"po-{i}", "payee", Money.of(100, "USD"), "manual", "", 1)


def test_queued_calls_behind_the_running_ones_are_withdrawn_before_they_start():
    connector, results = Held(), queue.Queue()
    lane = ProviderLane(connector, concurrency=2, rate_per_s=1000.0, window=100, results=results,
                        breaker=CircuitBreaker(lambda: datetime.now(timezone.utc)))
    assert lane.capacity == 4  # two running, two queued behind them
    for i in range(4):
        lane.submit([payment(i)])
    assert lane.free_slots == 0
    deadline = threading.Event()
    while len(connector.started) < 2 and not deadline.wait(0.01):
        pass
    withdrawn = lane.cancel_queued()  # the circuit opened: what has not started never reaches the provider
    assert sorted(withdrawn) == [("po-2", 1, "submit"), ("po-3", 1, "submit")]
    assert lane.busy == {"po-0", "po-1"} and lane.free_slots == 2
    connector.release.set()
    answered = sorted(results.get(timeout=10).payout_id for _ in range(2))
    lane.shutdown()
    assert answered == ["po-0", "po-1"] and sorted(connector.started) == ["po-0", "po-1"]
    assert results.empty()


class Failing:
    """Every call fails retryably (the provider is down); counts the calls that reached it."""

    name = "failing"

    def __init__(self) -> None:
        self.calls = 0

    def submit(self, request: TransferRequest) -> TransferResult:
        self.calls += 1
        return TransferResult(Outcome.FAILED, reason_code="provider_error", retryable=True)

    def lookup(self, request: TransferRequest) -> TransferResult | None:
        return None


def test_a_queued_call_never_starts_after_the_failure_that_opened_the_circuit():
    connector, results = Failing(), queue.Queue()
    breaker = CircuitBreaker(lambda: datetime.now(timezone.utc), failure_threshold=1, cooldown_s=300.0)
    lane = ProviderLane(connector, concurrency=1, rate_per_s=1000.0, window=100, results=results, breaker=breaker)
    for i in range(3):  # one running, two queued behind it: all handed over while the circuit was closed
        lane.submit([payment(i)])
    answers = [results.get(timeout=10) for _ in range(3)]
    lane.shutdown()
    # the first failure opens the circuit (threshold 1) before the thread takes the next call, which does not start
    assert breaker.state.value == "open" and connector.calls == 1
    assert [(a.payout_id, a.withdrawn, a.result is None) for a in answers] == [
        ("po-0", False, False), ("po-1", True, True), ("po-2", True, True)]


@pytest.mark.parametrize(("members", "expected"), [
    (1, LaneLimits(16, 25.0, 64)), (2, LaneLimits(8, 12.5, 32)), (3, LaneLimits(5, 25.0 / 3, 21)),
    (40, LaneLimits(1, 0.625, 1))])
def test_instances_sharing_a_provider_each_take_their_part_of_its_limits(members, expected):
    shared = LaneLimits(16, 25.0, 64).shared_by(members)
    assert shared == expected
    assert shared.concurrency * members <= 16 or shared.concurrency == 1
    assert shared.rate_per_s * members == pytest.approx(25.0)


class Counting:
    name = "counting"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def submit(self, request: TransferRequest) -> TransferResult:
        self.calls.append(request.payout_id)
        return TransferResult(Outcome.SETTLED, provider_reference=f"ref-{request.payout_id}")

    def lookup(self, request: TransferRequest) -> TransferResult | None:
        self.calls.append(f"lookup {request.payout_id}")
        return None


def test_a_call_the_gate_refuses_never_reaches_the_provider_and_is_reported_fenced():
    from runtime.partition_leases import Fenced

    def gate(payee_id: str) -> None:
        if payee_id == "lost":
            raise Fenced(3, "the lease of epoch 7 is lost")

    connector, results = Counting(), queue.Queue()
    lane = ProviderLane(connector, concurrency=1, rate_per_s=1000.0, window=10, results=results, gate=gate,
                        breaker=CircuitBreaker(lambda: datetime.now(timezone.utc)))
    lane.submit([TransferRequest("po-kept", "kept", Money.of(100, "USD"), "manual", "", 1)])
    lane.submit([TransferRequest("po-lost", "lost", Money.of(100, "USD"), "manual", "", 1)])
    lane.resolve(TransferRequest("po-lost-2", "lost", Money.of(100, "USD"), "manual", "", 2), "resolve")
    answers = {answer.payout_id: answer for answer in (results.get(timeout=10) for _ in range(3))}
    lane.shutdown()
    assert connector.calls == ["po-kept"]
    assert answers["po-kept"].result.outcome is Outcome.SETTLED and not answers["po-kept"].fenced
    for payout_id in ("po-lost", "po-lost-2"):
        assert answers[payout_id].fenced and answers[payout_id].partition == 3 and answers[payout_id].result is None
        assert "epoch 7" in answers[payout_id].error


def test_a_breaker_tripped_by_another_instance_opens_from_that_moment_and_keeps_a_later_local_opening():
    now = [datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)]
    breaker = CircuitBreaker(lambda: now[0], failure_threshold=3, cooldown_s=60.0)
    elsewhere = datetime(2026, 12, 5, 11, 59, 30, tzinfo=timezone.utc)
    assert breaker.trip(elsewhere) and breaker.is_open() and breaker.opened_at == elsewhere
    assert not breaker.allow()
    now[0] = datetime(2026, 12, 5, 12, 0, 31, tzinfo=timezone.utc)  # the cooldown counts from the other's opening
    assert breaker.allow() and breaker.state.value == "half_open"
    breaker.record_failure(True)  # the trial fails: open again, from now
    assert not breaker.trip(elsewhere) and breaker.opened_at == now[0]
