"""SoakOperator: pauses every payout now and then, cancels a few payouts requested while paused, rides out a
database that does not answer, and lifts a pause in force when asked."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import sqlalchemy.exc

from demo import soak_operator
from demo.soak_operator import CANCELS_PER_PAUSE, PAUSE_EVERY_S, PAUSE_S, SoakOperator
from ledger.payouts import PayoutStatus


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(monkeypatch):
    pauses: list[bool] = []
    down = {"value": False}

    def set_pause(url, paused, reason, actor):  # noqa: ANN001, ANN202
        if down["value"]:
            raise sqlalchemy.exc.OperationalError("SET", {}, Exception("the database is restarting"))
        pauses.append(paused)

    monkeypatch.setattr(soak_operator, "set_pause", set_pause)
    cancelled: list[str] = []
    operations = SimpleNamespace(cancel=lambda payout_id, reason, actor, wait_s: cancelled.append(payout_id))
    clock = Clock()
    operator = SoakOperator(None, operations, None, {}, database_url="db", rng=random.Random(1), clock=clock)
    payouts = [SimpleNamespace(payout_id=f"po-{n}", payee_id="nobody", status=PayoutStatus.REQUESTED, method="x")
               for n in range(5)]
    tail = SimpleNamespace(payouts=lambda: payouts)
    return SimpleNamespace(operator=operator, clock=clock, pauses=pauses, cancelled=cancelled, tail=tail, down=down)


def test_it_pauses_cancels_a_few_requested_payouts_then_resumes(world):
    world.operator.act(world.tail)
    assert world.pauses == []  # not before PAUSE_EVERY_S
    world.clock.now = PAUSE_EVERY_S
    world.operator.act(world.tail)
    assert world.pauses == [True] and world.operator.paused
    for _ in range(5):
        world.operator.act(world.tail)
    assert len(world.cancelled) == CANCELS_PER_PAUSE == len(set(world.cancelled))
    world.clock.now += PAUSE_S
    world.operator.act(world.tail)
    assert world.pauses == [True, False] and not world.operator.paused and world.operator.pauses == 1


def test_a_database_that_does_not_answer_is_tried_again_and_resume_lifts_the_pause(world):
    world.clock.now = PAUSE_EVERY_S
    world.down["value"] = True
    world.operator.act(world.tail)
    assert world.pauses == [] and not world.operator.paused
    world.down["value"] = False
    world.operator.act(world.tail)
    assert world.operator.paused
    world.operator.resume()
    assert world.pauses == [True, False] and not world.operator.paused
