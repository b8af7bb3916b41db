"""LossWatch: payments are declared lost only once the sequencer committed past everything and the ledger stayed
quiet for QUIET_S, and never while records are still uncommitted or the ledger still grows."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from demo import loss_watch
from demo.loss_watch import EVERY_S, QUIET_S, LossWatch


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(monkeypatch):
    lag = {"value": 0}
    monkeypatch.setattr(loss_watch, "sequencer_lag", lambda settings, bootstrap: lag["value"])
    tail = SimpleNamespace(payment_ids={"p1"}, counts=Counter(PaymentCompleted=1))
    clock = Clock()
    watch = LossWatch(SimpleNamespace(), "broker", tail, clock=clock)  # type: ignore[arg-type]
    watch.expect({"p1", "p2"})
    return SimpleNamespace(lag=lag, tail=tail, clock=clock, watch=watch)


def run_for(world, seconds: float) -> str | None:
    verdict = None
    end = world.clock.now + seconds
    while world.clock.now <= end and verdict is None:
        verdict = world.watch()
        world.clock.now += EVERY_S / 2
    return verdict


def test_a_payment_missing_after_the_commit_passed_it_is_lost_once_the_ledger_stayed_quiet(world):
    assert run_for(world, QUIET_S - EVERY_S) is None  # quiet, but not for long enough yet
    verdict = run_for(world, 3 * EVERY_S)
    assert verdict is not None and "1 payments lost" in verdict and "p2" in verdict


def test_nothing_is_lost_while_the_sequencer_has_records_left_to_commit(world):
    world.lag["value"] = 5
    assert run_for(world, 10 * QUIET_S) is None


def test_a_growing_ledger_restarts_the_quiet_period(world):
    assert run_for(world, QUIET_S - 2 * EVERY_S) is None
    world.tail.counts["PaymentRefunded"] += 1  # something was chained: not quiet
    assert run_for(world, QUIET_S - 2 * EVERY_S) is None
    assert run_for(world, 3 * EVERY_S) is not None


def test_nothing_is_lost_when_every_expected_payment_arrived(world):
    world.tail.payment_ids.add("p2")
    assert run_for(world, 10 * QUIET_S) is None
