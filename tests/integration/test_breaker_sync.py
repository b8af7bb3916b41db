"""Circuit breakers shared through PostgreSQL by partitioned transfer processors (processors/breaker_sync.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from connectors.circuit_breaker import BreakerState, CircuitBreaker
from processors.breaker_sync import BreakerSync
from runtime.database import make_engine


def test_a_breaker_opened_by_one_instance_opens_in_the_others_for_the_rest_of_its_cooldown(db_url):
    engine = make_engine(db_url)
    now = [datetime.now(timezone.utc)]
    clock = lambda: now[0]  # noqa: E731
    a = {"stripe": CircuitBreaker(clock, failure_threshold=2, cooldown_s=60), "manual": CircuitBreaker(clock)}
    b = {"stripe": CircuitBreaker(clock, failure_threshold=2, cooldown_s=60), "manual": CircuitBreaker(clock)}
    sync_a, sync_b = BreakerSync(engine, "a"), BreakerSync(engine, "b")
    try:
        assert sync_a.sync(a) == [] and sync_b.sync(b) == []
        a["stripe"].record_failure(True)
        a["stripe"].record_failure(True)  # opens in a
        assert sync_a.sync(a) == []  # published
        assert sync_b.sync(b) == ["stripe"]  # adopted by b, from a's moment
        assert b["stripe"].state is BreakerState.OPEN and b["stripe"].opened_at == a["stripe"].opened_at
        assert b["manual"].state is BreakerState.CLOSED and not b["manual"].is_open()
        assert sync_b.sync(b) == [] and sync_a.sync(a) == []  # nothing new either way, nothing echoed back

        # after the cooldown both try again; b's trial fails: b opens again and a follows
        now[0] += timedelta(seconds=61)
        assert a["stripe"].allow() and b["stripe"].allow()
        a["stripe"].record_success()
        b["stripe"].record_failure(True)
        assert sync_b.sync(b) == []
        assert sync_a.sync(a) == ["stripe"] and a["stripe"].opened_at == now[0]

        # an opening older than the cooldown is history: a newcomer does not adopt it
        now[0] += timedelta(seconds=61)
        c = {"stripe": CircuitBreaker(clock, failure_threshold=2, cooldown_s=60)}
        assert BreakerSync(engine, "c").sync(c) == [] and c["stripe"].state is BreakerState.CLOSED
    finally:
        engine.dispose()
