"""Per-client token buckets for the ingestion endpoint: refuse (429 + Retry-After), never queue."""

from __future__ import annotations

import threading
import time
from typing import Callable

CLIENTS_MAX = 10_000  # bound the table; the oldest client is forgotten first


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self._monotonic = rate_per_s, float(burst), monotonic
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last refill)
        self._lock = threading.Lock()

    def admit(self, client: str, cost: float = 1.0) -> float:
        """0.0 when admitted; otherwise the seconds until `cost` tokens will be there."""
        with self._lock:
            now = self._monotonic()
            tokens, last = self._buckets.pop(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens >= cost:
                self._buckets[client] = (tokens - cost, now)
                return 0.0
            self._buckets[client] = (tokens, now)
            if len(self._buckets) > CLIENTS_MAX:
                self._buckets.pop(next(iter(self._buckets)))
            return (cost - tokens) / self.rate
