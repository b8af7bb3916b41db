"""A circuit breaker per provider: after repeated retryable failures, stop calling it for a while.

CLOSED: calls go through. After `failure_threshold` consecutive retryable failures it OPENs: no calls
for `cooldown_s`. Then HALF_OPEN: one trial call; success closes it, failure opens it again.
Permanent failures (a bad account) say nothing about the provider's health and are not counted.

Thread-safe: a provider lane's threads record each answer as soon as they have it, and do not start a
call handed to them before the circuit opened (`is_open`); the transfer processor's loop asks `allow`
before handing one over.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Callable


class BreakerState(str, Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    clock: Callable[[], datetime]
    failure_threshold: int = 5
    cooldown_s: float = 60.0
    state: BreakerState = BreakerState.CLOSED
    consecutive_failures: int = 0
    opened_at: datetime | None = None
    _trial_in_flight: bool = field(default=False, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    def allow(self) -> bool:
        """Whether a call may be made now (in HALF_OPEN, only one trial at a time)."""
        with self._lock:
            if self.state is BreakerState.OPEN:
                assert self.opened_at is not None
                if self.clock() - self.opened_at < timedelta(seconds=self.cooldown_s):
                    return False
                self.state = BreakerState.HALF_OPEN
            if self.state is BreakerState.HALF_OPEN:
                if self._trial_in_flight:
                    return False
                self._trial_in_flight = True
            return True

    def is_open(self) -> bool:
        """OPEN (cooldown over or not): a call allowed before it opened should not start now."""
        return self.state is BreakerState.OPEN

    def record_success(self) -> None:
        with self._lock:
            self.state, self.consecutive_failures, self.opened_at = BreakerState.CLOSED, 0, None
            self._trial_in_flight = False

    def trip(self, opened_at: datetime) -> bool:
        """Open because another instance's breaker for the same provider opened at `opened_at` (shared through
        PostgreSQL); True if that changed anything. A later local opening is kept."""
        with self._lock:
            if self.state is BreakerState.OPEN and self.opened_at is not None and self.opened_at >= opened_at:
                return False
            self.state, self.opened_at, self._trial_in_flight = BreakerState.OPEN, opened_at, False
            self.consecutive_failures = max(self.consecutive_failures, self.failure_threshold)
            return True

    def record_failure(self, retryable: bool) -> None:
        """Count a retryable failure (provider trouble); a permanent one ends a trial like a success."""
        with self._lock:
            if not retryable:
                if self.state is BreakerState.HALF_OPEN:
                    self.record_success()
                return
            self.consecutive_failures += 1
            if self.state is BreakerState.HALF_OPEN or self.consecutive_failures >= self.failure_threshold:
                self.state, self.opened_at, self._trial_in_flight = BreakerState.OPEN, self.clock(), False
